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
from dcam.phrases import find_item, find_phrase

WORDS = ["a", "red", "circle", "and", "a", "blue", "square"]


def test_a_target_breaks_into_words_where_the_response_does():
    # "anda" found "and" "a" and "redcircle" found "red" "circle": the letters were compared joined across the run
    assert find_phrase(WORDS, "anda") == [] and find_phrase(WORDS, "redcircle") == []
    assert find_phrase(WORDS, "and a") == [(3, 5)] and find_phrase(WORDS, "Red circle.") == [(1, 3)]
    assert find_phrase(WORDS, "Red,") == [(1, 2)] and find_phrase(WORDS, "red, circle") == [(1, 3)]
    assert find_phrase(["circles"], "circle s") == []  # nor is one word two
    # punctuation on either side is no break to match: a comma written against a word, a word spelled with one
    starts, ends = [0, 3, 5], [3, 4, 11]  # of the items in "red, circle"
    read = lambda s, e: "red, circle"[starts[s]:ends[e - 1]]  # noqa: E731
    assert find_phrase(["red", ",", "circle"], "red circle", read) == [(0, 3)]
    assert find_phrase(["red", ",", "circle"], "red circle") == []  # no text known: "," a word apart, not named
    assert find_phrase(["1,000", "circles"], "1,000") == [(0, 1)] and find_phrase(["it's"], "it s") == [(0, 1)]


def test_pieces_of_one_word_and_unspaced_words_join_as_the_response_text_does():
    # the response's own text says where the items break: "circ" "le" of "a red circle" are one word, and
    # "日本" "の" "猫" follow each other with no space
    def text_of(text, spans):
        return lambda slots: " ".join(text[min(spans[s][0] for s in slots):max(spans[s][1] for s in slots)].split())

    items = [Item("a", 0, [0]), Item("red", 1, [1]), Item("circ", 2, [2]), Item("le", 3, [3])]
    read = text_of("a red circle", [(0, 1), (1, 5), (5, 10), (10, 12)])
    assert [(it.text, it.slots) for it in select_items(items, ["circle"], read)] == [("circle", [2, 3])]
    assert [it.slots for it in select_items(items, ["red circle"], read)] == [[1, 2, 3]]
    for split in ("circ le", "redcircle", "ared"):
        with pytest.raises(InputError, match=f"^targets: (word|phrase) '{split}' is not in the response"):
            select_items(items, [split], read)
    cjk = [Item("日本", 0, [0]), Item("の", 1, [1]), Item("猫", 2, [2])]
    for written in ("日本の猫", "日本 の 猫"):  # the breaks of an unspaced script are the tokenizer's, not the text's
        got = select_items(cjk, [written], text_of("日本の猫", [(0, 2), (2, 3), (3, 4)]))
        assert [it.slots for it in got] == [[0, 1, 2]]


def test_a_target_run_together_is_refused_through_the_explainer():
    exp = dcam.Explainer(*tiny_toy(0))
    image = np.zeros((32, 32, 3), np.uint8)
    response = "a red circle and a blue square"
    for joined, spaced in (("anda", "and a"), ("redcircle", "red circle")):
        with pytest.raises(InputError, match=f"^targets: word '{joined}' is not in the response; the response "
                                             f"writes '{spaced}' \\(give it as written: where the words break must "
                                             r"be the response's\) \(words: a red circle and a blue square\)$"):
            exp.explain(image, response=response, targets=joined)
    e = exp.explain(image, response=response, targets=["and a", "Red,"])
    assert e.tokens == ["red", "and a"] and e.pieces == [[1], [3, 4]]


def test_an_item_is_looked_up_by_the_words_its_target_would_match():
    # e.index("redcircle") found the item "red circle", e.index("anda") the item "and a": letters joined across a break
    items = ["red circle", "and a", "it's", "blue-green", "日本の猫"]
    assert [find_item(items, q) for q in ("Red, Circle", "RED  circle", "and a", "its", "blue green", "bluegreen",
                                          "日本 の 猫")] == [0, 0, 1, 2, 3, 3, 4]
    assert [find_item(items, q) for q in ("redcircle", "anda", "red circ le", "it s s", "")] == [None] * 5
    exp = dcam.Explainer(*tiny_toy(0))
    e = exp.explain(np.zeros((32, 32, 3), np.uint8), response="a red circle and a blue square",
                    targets=["red circle", "and a"])
    assert e.index("Red, Circle") == 0 and e.index("and a") == 1
    assert np.array_equal(np.asarray(e.map("red circle")), np.asarray(e.map(0)))
    for joined in ("redcircle", "anda"):
        with pytest.raises(InputError, match=f"^word '{joined}' is not among the explained tokens"):
            e.index(joined)
        with pytest.raises(InputError, match=f"^word '{joined}' is not among the explained tokens"):
            e.map(joined)


def _llada_with(pieces):
    model, proc = tiny_llada_v(0, layers=2)
    proc.tokenizer = word_tokenizer({"<|endoftext|>": LLADA_EOS_ID, "<|mdm_mask|>": LLADA_MASK_ID},
                                    words=list(dict.fromkeys(pieces + ["describe", "the", "image"])),
                                    named={"eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"},
                                    decoder=decoders.Metaspace())
    return dcam.Explainer(model, proc), proc.tokenizer.convert_tokens_to_ids(pieces)


def test_phrases_are_lower_case_and_break_where_the_words_do_on_a_subword_tokenizer():
    # "A Red Circle." in sentencepiece pieces: a phrase was named "Red Circle" among the words "red" and "circle"
    exp, ids = _llada_with(["\u2581A", "\u2581Red", "\u2581Circ", "le", "."])
    image = np.full((28, 28, 3), 200, np.uint8)
    e = exp.explain(image, prompt="describe the image", response=ids, targets=["red", "red circle", "circle"])
    assert e.tokens == ["red", "red circle", "circle"] and e.pieces == [[1], [1, 2, 3], [2, 3]]
    # each piece an item: the pieces of "circle" still make the word, and no space is read between them
    t = exp.explain(image, prompt="describe the image", response=ids, granularity="tokens",
                    targets=["RED Circle", "circle", "a"])
    assert t.tokens == ["a", "red circle", "circle"] and t.pieces == [[0], [1, 2, 3], [2, 3]]
    for split in ("circ le", "acircle", "ared"):
        with pytest.raises(InputError, match=f"^targets: (word|phrase) '{split}' is not in the response"):
            exp.explain(image, prompt="describe the image", response=ids, granularity="tokens", targets=split)


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
