"""Targets holding a word of symbols alone (an emoji, "&", "€"): a phrase is made of all its words.

The phrase's letters were matched and its emoji dropped, so "a 🐶" found every "a", "cat 🐶" (not in the
response) found "cat" and "🐶 dog" found "dog". Expected items and pieces are worked out by hand from the
token strings below (byte-level BPE spelling: "Ġ" a space, "ðŁĲ¶" the four bytes of 🐶)."""
import pytest
from tokenizers import decoders

from dcam.errors import InputError
from dcam.phrases import find_item, find_phrase
from dcam.targets import Item, select_items
from dcam.testing.support import byte_level_llada_v
from dcam.testing.vocab import word_tokenizer
from dcam.words import token_spans, word_pieces

PETS = ["a", "🐱", "cat", "and", "a", "🐶", "dog"]
# "a 🐱 cat and a 🐶 dog" in byte-level pieces: " 🐱" is " " + F0 | 9F 90 | B1, " 🐶" is " " + F0 9F | 90 | B6
PET_PIECES = ["a", "\u0120\u00f0", "\u0141\u0132", "\u00b1", "\u0120cat", "\u0120and", "\u0120a",
              "\u0120\u00f0\u0141", "\u0132", "\u00b6", "\u0120dog"]
# the words' pieces: a [0], 🐱 [1, 2, 3], cat [4], and [5], a [6], 🐶 [7, 8, 9], dog [10]


def test_a_phrase_matches_its_symbol_words_by_their_text():
    assert find_phrase(PETS, "a 🐶") == [(4, 6)]  # the "a" before the dog only (was both "a")
    assert find_phrase(PETS, "🐶 dog") == [(5, 7)] and find_phrase(PETS, "A 🐶 DOG.") == [(4, 7)]
    assert find_phrase(PETS, "cat 🐶") == [] and find_phrase(PETS, "🐶 cat") == []  # (were "cat" alone)
    assert find_phrase(PETS, "a 🐶 🐶") == [] and find_phrase(PETS, "🐶") == [(5, 6)]
    # "&" is a word of the phrase: "red & circle" is not "red circle", it is "red & circle"
    assert find_phrase(["red", "circle", "square"], "red & circle") == []
    assert find_phrase(["red", "&", "circle", "square"], "red & circle") == [(0, 3)]
    assert find_phrase(["cost", "€", "5", "and", "€"], "€") == [(1, 2), (4, 5)]
    assert find_phrase(["cost", "€", "5"], "cost €") == [(0, 2)] and find_phrase(["cost", "5"], "cost €") == []
    # punctuation attached to a word is still not matched: "dog," "U.S.A." "€5" (the "5" item)
    assert find_phrase(PETS, "🐶 dog,") == [(5, 7)] and find_phrase(["u.s.a.", "🐶"], "USA 🐶") == [(0, 2)]
    assert find_phrase(["cost", "€", "5"], "€5") == [(2, 3)]
    # punctuation written against a word between the phrase's words is kept, as between letters; where no
    # text says so, the items are words apart and a spaced "," is a word the phrase does not name
    starts, ends = [0, 1, 3, 5], [1, 2, 4, 8]  # of the items in "a, 🐶 dog"
    read = lambda s, e: "a, 🐶 dog"[starts[s]:ends[e - 1]]  # noqa: E731
    assert find_phrase(["a", ",", "🐶", "dog"], "a 🐶", read) == [(0, 3)]
    assert find_phrase(["a", ",", "🐶", "dog"], "a 🐶") == []


def test_an_emoji_with_a_variation_selector_is_one_symbol_word():
    # "❤️" is U+2764 U+FE0F: the selector counted as a letter, so the response's items were "❤" and a lone
    # U+FE0F, and the target "❤️" found the selector's item only
    tok = word_tokenizer({"<eos>": 1000}, words=["i", "\u0120\u00e2\u013f\u00a4", "\u00ef\u00b8\u0131", "\u0120it"],
                         named={"eos_token": "<eos>"}, decoder=decoders.ByteLevel())
    tokens = ["i", "\u0120\u00e2\u013f\u00a4", "\u00ef\u00b8\u0131", "\u0120it"]
    got = word_pieces(*token_spans(tok.decode, tok.convert_tokens_to_ids(tokens)), tokens)
    assert got == [([0], "i"), ([1, 2], "\u2764\ufe0f"), ([3], "it")]
    words = [w for _, w in got]
    assert find_phrase(words, "\u2764\ufe0f") == [(1, 2)] and find_phrase(words, "\u2764") == [(1, 2)]
    assert find_phrase(words, "i \u2764\ufe0f it") == [(0, 3)]


def test_an_explained_item_is_named_by_all_its_words():
    items = ["a 🐶", "🐶 dog", "cat"]
    assert [find_item(items, q) for q in ("A 🐶", "🐶 DOG", "cat", "a  🐶")] == [0, 1, 2, 0]
    assert [find_item(items, q) for q in ("cat 🐶", "a", "🐶", "dog 🐶")] == [None] * 4  # "cat 🐶" named "cat"


def test_a_phrase_with_an_emoji_is_refused_when_the_response_lacks_it():
    items = [Item(w, n, [n]) for n, w in enumerate(PETS)]
    assert [(it.text, it.slots) for it in select_items(items, ["🐶 dog", "a 🐶"])] == [("a 🐶", [4, 5]),
                                                                                     ("🐶 dog", [5, 6])]
    with pytest.raises(InputError, match="^targets: phrase 'cat 🐶' is not in the response "
                                         "\\(words: a 🐱 cat and a 🐶 dog\\)$"):
        select_items(items, ["cat 🐶"])


def test_emoji_phrases_through_the_explainer_with_byte_level_pieces():
    explain = byte_level_llada_v(PET_PIECES)

    every = explain("all")
    assert every.tokens == PETS and every.pieces == [[0], [1, 2, 3], [4], [5], [6], [7, 8, 9], [10]]
    e = explain(["a 🐶", "🐶 dog"])
    assert e.tokens == ["a 🐶", "🐶 dog"] and e.pieces == [[6, 7, 8, 9], [7, 8, 9, 10]]
    assert e.word_numbers == [4, 5] and e.notes == []
    assert e.index("A 🐶") == 0 and e.index("🐶 Dog") == 1
    with pytest.raises(InputError, match="^word 'cat 🐶' is not among the explained tokens"):
        e.index("cat 🐶")
    with pytest.raises(InputError, match="^targets: phrase 'cat 🐶' is not in the response "
                                         "\\(words: a 🐱 cat and a 🐶 dog\\)$"):
        explain(["cat 🐶"])
    assert explain(["🐶"]).pieces == [[7, 8, 9]] and explain(["Dog."]).pieces == [[10]]


@pytest.mark.parametrize("words, phrase, runs", [
    (["blue-green", "sky"], "blue - green", [(0, 1)]),  # the symbol spaced in the phrase, inside the word
    (["rock&roll"], "rock & roll", [(0, 1)]),
    (["$5", "bill"], "$ 5", [(0, 1)]),
    (["blue", "green"], "blue - green", []),  # no "-" in the response: not all of the phrase's words
    (["a", "🐱", "cat", "and", "a", "🐶", "dog"], "cat 🐶", []),  # the emoji is elsewhere: no run holds both
    (["blue", "-", "green"], "blue - green", [(0, 3)]),
])
def test_a_spaced_symbol_of_a_phrase_finds_the_symbol_written_inside_a_word(words, phrase, runs):
    # session 29 made a phrase all its words, and "blue - green", "rock & roll", "$ 5" stopped finding
    # "blue-green", "rock&roll", "$5" (found before by their letters alone)
    assert find_phrase(words, phrase) == runs
