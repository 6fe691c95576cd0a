"""The line dcam explain prints about what it explained: "N words" unless phrases were asked for.
An id the tokenizer cannot spell is shown as "<id N>" (dcam.words.decode_shown): one token whose
text holds a space, which was counted as a phrase ("explained 4 targets (2 phrases)" for four
one-token words of a LLaVA-OneVision with a padded LM head)."""
import dataclasses

import pytest

import dcam
from dcam.cli.explain import report
from dcam.zoo.data import generate_sample


@pytest.fixture(scope="module")
def explained():
    x = dcam.Explainer(*dcam.zoo.load_default())
    image = generate_sample(5).image
    e = x.explain(image, response="a blue triangle and a red circle")
    return x, image, e


def _summary(e, capsys):
    report(e, "out")
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("explained "))


def test_one_token_items_shown_with_a_space_are_words(explained, capsys):
    _, _, e = explained
    shown = dataclasses.replace(e, tokens=["<id 7>" if k in (1, 4) else t for k, t in enumerate(e.tokens)])
    assert [len(p) for p in shown.pieces] == [1] * 7  # (every item one token)
    line = _summary(shown, capsys)
    assert line.startswith("explained 7 words with ") and line.endswith(": a <id 7> triangle and <id 7> red circle")


def test_phrases_asked_for_are_counted(explained, capsys):
    x, image, e = explained
    p = x.explain(image, response=e.response, targets=["blue triangle", "circle"])
    assert p.pieces == [[1, 2], [6]]
    line = _summary(p, capsys)
    assert line.startswith("explained 2 targets (1 phrase) with ") and line.endswith(": blue triangle, circle")
