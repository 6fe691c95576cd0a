"""A phrase is consecutive words of the response: a word of symbols alone standing between spaces
("🐱" of "a 🐱 cat", a spaced "-") breaks it unless the phrase writes it; punctuation written against a
word ("a, cat", '"cat"', "cat.") does not. Dashes, curly quotes and full-width letters compare as a
keyboard types them.

The response's items and the runs a phrase covers are worked out by hand from each text; the text of a
run is cut from the response by a plain search for its items, in order (as the explainer's text_of gives
it)."""
import pytest

import dcam
from dcam.errors import InputError
from dcam.phrases import find_item, find_phrase
from dcam.testing.support import byte_level_llada_v


def reading(text, words):
    """run_text for find_phrase: the characters of ``text`` from item ``start``'s first to item
    ``stop - 1``'s last, each item found after the one before."""
    spans, at = [], 0
    for w in words:
        a = text.index(w, at)
        spans.append((a, a + len(w)))
        at = a + len(w)
    return lambda start, stop: text[spans[start][0]:spans[stop - 1][1]]


@pytest.mark.parametrize("text, words, phrase, runs", [
    # a word of symbols alone between the phrase's words: not the phrase (all were found, the symbol kept)
    ("a 🐱 cat", ["a", "🐱", "cat"], "a cat", []),
    ("a - cat", ["a", "-", "cat"], "a cat", []),
    ("rock & roll", ["rock", "&", "roll"], "rock roll", []),
    ("blue – green", ["blue", "–", "green"], "blue green", []),
    # ... unless the phrase writes it, spaced or inside its word
    ("a 🐱 cat", ["a", "🐱", "cat"], "A 🐱 CAT", [(0, 3)]),
    ("a - cat", ["a", "-", "cat"], "a-cat", [(0, 3)]),
    ("rock & roll", ["rock", "&", "roll"], "rock & roll", [(0, 3)]),
    ("a 🐶 dog", ["a", "🐶", "dog"], "a 🐶", [(0, 2)]),
    # punctuation written against a word is part of that word: kept inside the run, no break
    ("a, cat", ["a", ",", "cat"], "a cat", [(0, 3)]),
    ('a "cat" sat', ["a", '"', "cat", '"', "sat"], "a cat", [(0, 3)]),
    ('a "cat" sat', ["a", '"', "cat", '"', "sat"], "cat sat", [(2, 5)]),
    ("a cat. the cat", ["a", "cat", ".", "the", "cat"], "cat the", [(1, 4)]),
    ("a🐱 cat", ["a", "🐱", "cat"], "a cat", [(0, 3)]),
    # kept as session 29 left them: a symbol the phrase spaces, written inside the response's word
    ("blue-green sky", ["blue-green", "sky"], "blue - green", [(0, 1)]),
    ("rock&roll", ["rock&roll"], "rock & roll", [(0, 1)]),
    ("$5 bill", ["$", "5", "bill"], "$ 5", [(0, 2)]),
    ("$5 bill", ["$5", "bill"], "$ 5", [(0, 1)]),
    ("a cat and a 🐶 and a cat", ["a", "cat", "and", "a", "🐶", "and", "a", "cat"], "A CAT.", [(0, 2), (6, 8)]),
    # dashes and the minus sign are one "-", curly quotes straight ones, full-width letters the usual ones
    # (none was found)
    ("blue – green", ["blue", "–", "green"], "blue - green", [(0, 3)]),
    ("x − 5", ["x", "−", "5"], "x - 5", [(0, 3)]),
    ("she said “ hi", ["she", "said", "“", "hi"], 'said " hi', [(1, 4)]),
    ("a cat", ["a", "cat"], "ａ ｃａｔ", [(0, 2)]),
    ("ｃａｔ ＆ dog", ["ｃａｔ", "＆", "dog"], "cat & dog", [(0, 3)]),
    # kept: an em dash the phrase writes as "-", a curly apostrophe inside a word, spaces around and
    # between the phrase's words
    ("blue — green", ["blue", "—", "green"], "blue-green", [(0, 3)]),
    ("don’t stop", ["don’t", "stop"], "don't stop", [(0, 2)]),
    ("a red circle", ["a", "red", "circle"], "  red   circle ", [(1, 3)]),
])
def test_a_phrase_is_consecutive_words_of_the_response(text, words, phrase, runs):
    assert find_phrase(words, phrase, reading(text, words)) == runs


def test_an_explained_phrase_is_named_as_a_target_would_be():
    items = ["a, cat", "a 🐱 cat", "blue - green"]
    assert [find_item(items, q) for q in ("A cat", "a 🐱 cat", "blue-green", "blue – green")] == [0, 1, 2, 2]
    assert find_item(["a 🐱 cat"], "a cat") is None  # the emoji is a word the query does not name


PIECES = ["a", "\u0120\u00f0", "\u0141\u0132", "\u00b1", "\u0120cat", "\u0120and", "\u0120a", "\u0120-",
          "\u0120dog", ",", "\u0120a", "\u0120cat"]
# "a 🐱 cat and a - dog, a cat": the items a [0], 🐱 [1, 2, 3], cat [4], and [5], a [6], - [7], dog [8], "," [9],
# a [10], cat [11]


def test_phrases_through_the_explainer_and_the_command_line_reading():
    explain = byte_level_llada_v(PIECES)

    assert explain("all").tokens == ["a", "🐱", "cat", "and", "a", "-", "dog", ",", "a", "cat"]
    e = explain(["a cat"])  # the last "a cat" only: the first has the emoji between its words (it was found too)
    assert e.tokens == ["a cat"] and e.pieces == [[10, 11]] and e.word_numbers == [8]
    e = explain(["dog a"])  # the "," written against "dog" is no word: kept inside the phrase
    assert e.tokens == ["dog, a"] and e.pieces == [[8, 9, 10]]
    assert explain(["a 🐱 cat", "a - dog"]).pieces == [[0, 1, 2, 3, 4], [6, 7, 8]]
    with pytest.raises(InputError, match="^targets: phrase 'a dog' is not in the response; the response writes "
                                         "'a - dog' \\(give it as written: the punctuation or symbols standing "
                                         "alone between the words must be the response's\\) "
                                         "\\(words: a 🐱 cat and a - dog , a cat\\)$"):
        explain(["a dog"])  # (it was "a - dog"; the line named it only in the response's words)
    # dcam explain --tokens and a run manifest's "targets" string read the same phrases
    assert explain(dcam.targets.parse_target_text('a cat, "a - dog"')).pieces == [[6, 7, 8], [10, 11]]
