"""The bundled model's processor keeps the words a user gave: sentence punctuation (which it
never writes) is dropped, a mark that reads as a word ("&") or a symbol is refused, naming it."""
import re

import pytest

from dcam.errors import InputError
from dcam.zoo.processing import ShapesProcessor, build_vocab, normalise_words, sentence_punctuation


@pytest.mark.parametrize("text, unknown", [
    ("a red circle & a blue square", ["&"]),      # "&" was dropped: explained as "a red circle a blue square"
    ("a red circle ＆ a blue square", ["＆"]),     # its full-width form
    ("a red circle + a blue square", ["+"]),
    ("a red 🐱 circle", ["🐱"]),
    ("a red circle &a blue square", ["&a"]),      # written against a word: "&a" was read as "a"
    ("red,& blue", ["red,&"]),
    ("(&) red", ["(&)"]),
])
def test_a_mark_that_reads_as_a_word_is_refused_not_dropped(text, unknown):
    words, got = normalise_words(text, build_vocab())
    assert got == unknown
    with pytest.raises(InputError, match="^" + re.escape(f"response: 1 word not in the model's vocabulary: {unknown[0]!r} (known words: a and")):
        ShapesProcessor().encode_response(text)


@pytest.mark.parametrize("text", [
    "a red circle - a blue square", "a red circle — a blue square", "a red circle – a blue square",
    "a red circle , a blue square", "a red circle ... a blue square", "a red circle « a » blue square",
])
def test_sentence_punctuation_alone_is_dropped_as_before(text):
    assert normalise_words(text, build_vocab()) == (["a", "red", "circle", "a", "blue", "square"], [])


@pytest.mark.parametrize("word, punctuation", [
    ("-", True), ("—", True), ("…", True), ("«", True), ("“", True), ("。", True), ("?!", True), ("(", True),
    ("&", False), ("＆", False), ("%", False), ("#", False), ("@", False), ("/", False), ("*", False),
    ("+", False), ("=", False), ("€", False), ("🐱", False), ("-&", False), ("", False),
])
def test_sentence_punctuation(word, punctuation):
    assert sentence_punctuation(word) is punctuation


def test_the_explained_words_are_the_words_given():
    proc = ShapesProcessor()
    ids = proc.encode_response("A red circle — and a blue square.")
    assert proc.decode(ids) == "a red circle and a blue square"
