"""Words of Chinese text, and of Chinese mixed with English, full-width punctuation and numbers.

A script written without spaces has no word boundary but the tokenizer's: a word is the
characters one token spans (a character cut into byte pieces is one word, never half of
one); full-width punctuation parts words; text read without a tokenizer (a caption, a
manifest's response) has each such character a word. Expected words are written by hand."""
import pytest
from tokenizers import decoders

from dcam.errors import InputError
from dcam.eval.datasets.base import PhraseMatcher, phrase
from dcam.runs.sources import _check_entry
from dcam.targets import parse_target_text
from dcam.testing.support import byte_level_llada_v
from dcam.testing.vocab import word_tokenizer
from dcam.words import align_words, split_words, token_spans, word_pieces


def _byte_level(text: str) -> str:
    """``text`` spelled as GPT-2's byte-level vocabulary spells it (a byte per character)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return "".join(table[b] for b in text.encode())


# 一个红色圆圈和一个蓝色方块，鳄鱼！ red circle。“猫”: 鳄 is three tokens of one byte each
TEXTS = ["一个", "红色", "圆", "圈", "和", "一个", "蓝色", "方块", "，", "鳄", "鱼", "！", " red", " circle", "。", "“", "猫",
         "”"]
PIECES = [p for t in TEXTS for p in (list(_byte_level(t)) if t == "鳄" else [_byte_level(t)])]
WORDS = ["一个", "红色", "圆", "圈", "和", "一个", "蓝色", "方块", "，", "鳄", "鱼", "！", "red", "circle", "。", "“",
         "猫", "”"]
TOKENS = [[0], [1], [2], [3], [4], [5], [6], [7], [8], [9, 10, 11], [12], [13], [14], [15], [16], [17], [18], [19]]


def _words(pieces):
    tok = word_tokenizer({"<eos>": 1000}, words=list(dict.fromkeys(pieces)), named={"eos_token": "<eos>"},
                         decoder=decoders.ByteLevel())
    ids = tok.convert_tokens_to_ids(list(pieces))
    return word_pieces(*token_spans(tok.decode, ids), list(pieces))


def test_each_token_of_chinese_is_a_word_and_full_width_punctuation_parts_words():
    got = _words(PIECES)
    # "circle。“" was one word: the full-width full stop and the quote glued to the English word before them,
    # as the "-" of "blue-green" does, so "。" could not be asked for and "red circle" was named "red circle。“"
    assert [w for _, w in got] == WORDS
    assert [t for t, _ in got] == TOKENS


@pytest.mark.parametrize("pieces,words", [
    (["red", "ï¼Į", "blue"], ["red", "，", "blue"]),  # red，blue: a full-width comma is no "3,000"
    (["3", ".", "5", "åħĥ"], ["3.5", "元"]),  # 3.5元: the ASCII point between digits still glues
    (["it", "'s", "çĮ«"], ["it's", "猫"]),
    (["circle", "âĢľ", "çĮ«"], ["circle", "“", "猫"]),  # a quote before a Chinese character parts it from circle
    (["T", "æģ¤"], ["t", "恤"]),
])
def test_punctuation_glues_only_between_letters_of_spaced_scripts(pieces, words):
    assert [w for _, w in _words(pieces)] == words


def test_captions_without_a_tokenizer_have_each_chinese_character_a_word():
    # the whole sentence was one word: a manifest's labels had one entry for it, and no label word matched
    assert split_words("一只红色的猫坐在桌子上。") == ["一", "只", "红", "色", "的", "猫", "坐", "在", "桌", "子", "上"]
    assert split_words("一个red circle，和Blue方块 3.5元") == ["一", "个", "red", "circle", "和", "blue", "方", "块",
                                                         "3.5", "元"]
    assert split_words("a red circle, and (a) square.") == ["a", "red", "circle", "and", "a", "square"]
    # a caption's characters take the map of the token that spans them
    assert align_words(split_words("一只红色的猫"), ["一只", "红色", "的", "猫"]) == [[0], [0], [1], [1], [2], [3]]
    # a label's words: a phrase of characters
    hits = PhraseMatcher({phrase("猫"): 1, phrase("红色"): 2}).match(split_words("一只红色的猫"))
    assert hits == [None, None, 2, 2, None, 1]


def test_a_manifest_labels_each_chinese_character():
    entry = {"id": "1", "image": "a.png", "response": "一只红色的猫", "mask": "m.png", "labels": [0, 0, 1, 1, 0, 2]}
    _check_entry(entry)  # was: 'labels' has 6 entries but the response has 1 words (一只红色的猫)
    with pytest.raises(ValueError, match="has 1 entries but the response has 6 words"):
        _check_entry(dict(entry, labels=[1]))


def test_targets_text_separates_at_full_width_and_ideographic_commas():
    # "红色，圆圈" typed with a Chinese keyboard was one phrase, one map, where "红色, 圆圈" is two
    assert parse_target_text("红色，圆圈") == ["红色", "圆圈"]
    assert parse_target_text("红色、圆圈, 2") == ["红色", "圆圈", 2]
    assert parse_target_text("红色圆圈") == ["红色圆圈"]
    assert parse_target_text("０，－1") == [0, -1] and parse_target_text("²") == ["²"]
    assert parse_target_text('"1，000", 3') == ["1，000", 3]


def test_chinese_targets_of_a_byte_level_model():
    explain = byte_level_llada_v(PIECES)
    e = explain("words")
    assert e.tokens == WORDS and e.response == "一个红色圆圈和一个蓝色方块，鳄鱼！ red circle。“猫”"
    assert explain(["。"]).tokens == ["。"] and explain(["red circle"]).tokens == ["red circle"]
    assert explain("红色，圆圈").tokens == ["红色圆圈"]  # in Python one item as written: the phrase, named by the response
    assert explain(["红色圆圈"]).tokens == ["红色圆圈"] and explain(["一 个"]).word_numbers == [0, 5]
    # a phrase's score is the sum of its tokens' scores, the three byte pieces of 鳄 summed into one word
    pieces = explain("tokens").scores
    assert float(explain(["红色圆圈"]).scores[0]) == pytest.approx(float(pieces[1] + pieces[2] + pieces[3]), abs=1e-6)
    assert float(explain(["鳄"]).scores[0]) == pytest.approx(float(pieces[9] + pieces[10] + pieces[11]), abs=1e-6)


def test_a_character_inside_a_token_is_refused_with_the_word_that_holds_it():
    explain = byte_level_llada_v(PIECES)
    # the line said only "not in the response" of a character the response visibly holds
    with pytest.raises(InputError, match=r"^targets: word '红' is not in the response: it is part of the word '红色' "
                                         r"\(in text without spaces a word is the characters one token spans"):
        explain(["红"])
    with pytest.raises(InputError, match=r"^targets: word '狗' is not in the response \(words: 一个 红色"):
        explain(["狗"])
    e = explain("words")
    assert e.index("红色") == 1 and e.index("“猫”") == 16
    with pytest.raises(InputError, match=r"^word '色' is not among the explained tokens: it is part of the word '红色'"):
        e.map("色")


def test_text_the_tokenizer_cannot_spell_is_said_in_a_note():
    import numpy as np

    from dcam.explain import Explainer
    from dcam.testing.llava_dmllm import tiny_llada_v

    # the stand-in's English word vocabulary: 猫 was explained as the word "<unk>" without a word said
    exp = Explainer(*tiny_llada_v(0, layers=2))
    image = np.full((28, 28, 3), 200, dtype=np.uint8)
    e = exp.explain(image, prompt="describe the image", response="a red 猫 circle", steps=2)
    assert e.tokens == ["a", "red", "<unk>", "circle"]
    assert e.notes == ["response: the tokenizer has no token for 1 piece(s) of the given text, each explained as "
                       "the unknown token '<unk>'"]
    assert exp.explain(image, prompt="describe the image", response="a red circle", steps=2).notes == []


def test_an_emoji_between_letters_is_not_full_width_punctuation():
    # the wide-character test for full-width punctuation also took emoji (East Asian width W) as one
    assert [w for _, w in _words(["a", "ðŁĲ±", "b"])] == ["a🐱b"]
