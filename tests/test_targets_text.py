"""Targets given as text: where their words break, how a phrase is named, and an empty one.

Expected items are worked out by hand from the response texts."""
import re

import numpy as np
import pytest
from tokenizers import decoders

import dcam
from dcam.errors import InputError
from dcam.targets import Item, select_items
from dcam.testing import tiny_toy
from dcam.testing.llada import LLADA_EOS_ID, LLADA_MASK_ID
from dcam.testing.llava_dmllm import tiny_llada_v
from dcam.testing.vocab import word_tokenizer
from dcam.words import find_phrase

@pytest.mark.parametrize("targets", ["", "   ", ["red", ""], ["\t"]])
def test_an_empty_target_is_named_as_empty(targets):
    # it was "targets: word '' is not in the response", as if a word had been looked for
    empty = [t for t in ([targets] if isinstance(targets, str) else targets) if not t.strip()][0]
    items = [Item(w, n, [n]) for n, w in enumerate(["a", "red", "circle"])]
    said = f"^targets: {re.escape(repr(empty))} is an empty target; give a word, a phrase or a word number$"
    with pytest.raises(InputError, match=said):
        select_items(items, targets)
    exp = dcam.Explainer(*tiny_toy(0))
    with pytest.raises(InputError, match=said):
        exp.explain_batch([np.zeros((32, 32, 3), np.uint8)], responses=["a red circle"], targets=targets)
