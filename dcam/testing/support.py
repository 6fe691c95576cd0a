"""Small helpers the test suite shares (one copy each, where test files had their own).

* :func:`file_tree`: every file under a folder with its bytes, what a refused or interrupted command must
  leave as it was;
* :func:`single_process_env`: the environment for a child ``dcam`` process that must run alone, without
  torchrun's variables that the test runner itself may have;
* :func:`one_line_refusal`: the message of the :class:`~dcam.errors.InputError` a call raises, checked to be
  one line (any other exception fails the test, as ``pytest.raises`` lets it through);
* :func:`hand_metrics`: a map's object metrics worked out with numpy and exact fractions, apart from
  :mod:`dcam.eval.metrics` (what the metric tests of ``dcam eval`` and ``dcam run`` compare with);
* :func:`byte_level_llada_v`: a tiny LLaDA-V with a byte-level tokenizer, for the word and phrase rules.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Sequence

#: the variables torchrun sets for its processes (a child that sees them joins a process group)
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def file_tree(folder: str) -> Dict[str, bytes]:
    """``{path relative to folder: bytes}`` of every file under ``folder``."""
    out = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def single_process_env() -> Dict[str, str]:
    """This process's environment without torchrun's variables, one OpenMP thread, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def one_line_refusal(fn: Callable[[], object]) -> str:
    """The message of the InputError ``fn()`` raises, asserted to be one line."""
    import pytest

    from ..errors import InputError

    with pytest.raises(InputError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    return message


def hand_otsu(u8):
    """First t maximising the between-class variance (N*s0 - n0*S)^2 / (n0 * (N - n0)), in exact fractions."""
    from fractions import Fraction

    import numpy as np

    v = u8.ravel().astype(np.int64)
    N, S = len(v), int(v.sum())
    best, best_t = Fraction(-1), 0
    for t in range(256):
        n0, s0 = int((v <= t).sum()), int(v[v <= t].sum())
        var = Fraction((N * s0 - n0 * S) ** 2, n0 * (N - n0)) if 0 < n0 < N else Fraction(0)
        if var > best:
            best, best_t = var, t
    return best_t


def hand_metrics(hm, objects) -> Dict[str, float]:
    """Obj-IoU (best of the objects, each whole), contrast, concentration, F3 of a map the image's size
    (``objects``: bool masks of that size)."""
    import numpy as np

    hm = hm.astype(np.float32).astype(np.float64)
    u8 = np.floor(hm * 255).astype(np.int64)
    pred = u8 > hand_otsu(u8)
    iou = max((pred & o).sum() / (pred | o).sum() for o in objects)
    fg = np.any(objects, axis=0)
    contrast = hm[fg].mean() / (hm[~fg].mean() + 1e-8)
    concentration = hm[fg].sum() / (hm.sum() + 1e-8)
    f3 = 3 / (1 / iou + 1 / min(contrast / 20, 1) + 1 / concentration)
    return {"obj_iou": iou, "contrast": contrast, "concentration": concentration, "f3": f3}


def byte_level_llada_v(pieces: Sequence[str]):
    """``explain(targets)`` of a tiny LLaDA-V whose tokenizer holds ``pieces`` (GPT-2's byte-level
    pieces, "Ġ" marking a space) and whose given response is those pieces, as an image-level call:
    how a byte-level tokenizer cuts emoji and punctuation into pieces reaches the word and phrase rules."""
    import numpy as np
    from tokenizers import decoders

    from ..explain import Explainer
    from .llada import LLADA_EOS_ID, LLADA_MASK_ID
    from .llava_dmllm import tiny_llada_v
    from .vocab import word_tokenizer

    model, proc = tiny_llada_v(0, layers=2)
    proc.tokenizer = word_tokenizer({"<|endoftext|>": LLADA_EOS_ID, "<|mdm_mask|>": LLADA_MASK_ID},
                                    words=list(pieces) + ["describe", "the", "image"],
                                    named={"eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"},
                                    decoder=decoders.ByteLevel())
    ids = proc.tokenizer.convert_tokens_to_ids(list(pieces))
    exp = Explainer(model, proc)
    image = np.full((28, 28, 3), 200, dtype=np.uint8)
    return lambda targets: exp.explain(image, prompt="describe the image", response=ids, targets=targets)


__all__ = ["file_tree", "single_process_env", "one_line_refusal", "hand_otsu", "hand_metrics", "byte_level_llada_v",
           "TORCHRUN_VARIABLES"]
