"""Words as a reader sees them, from the tokenizers' own decoders.

Each case is a token sequence as a published tokenizer style spells it, decoded
by the real ``tokenizers`` decoder of that style; the expected words and their
tokens are worked out by hand from the text."""
import numpy as np
import torch
import pytest
from tokenizers import decoders

from dcam.errors import InputError
from dcam.targets import Item, select_items
from dcam.testing.vocab import word_tokenizer
from dcam.phrases import find_phrase
from dcam.words import token_spans, word_pieces

BYTE_LEVEL = decoders.ByteLevel()  # GPT-2, Qwen2 (Dream), LLaMA-3
BYTE_FALLBACK = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])  # LLaMA-2 / sentencepiece with byte fallback
METASPACE = decoders.Metaspace()  # sentencepiece unigram
WORDPIECE = decoders.WordPiece()  # BERT

# (decoder, tokens, words, token indices of each word)
CASES = [
    # byte-level BPE: a word with no space marker (the first, or the only one) is still one word
    (BYTE_LEVEL, ["circle", "s"], ["circles"], [[0, 1]]),
    (BYTE_LEVEL, ["caf", "\u00c3", "\u00a9", "\u0120rouge"], ["café", "rouge"], [[0, 1, 2], [3]]),
    # 日 is three bytes: the first token holds two of them and completes nothing alone
    (BYTE_LEVEL, ["\u00e6\u0139", "\u00a5\u00e6\u013e\u00ac", "\u0120caf", "\u00c3\u00a9"], ["日本", "café"],
     [[0, 1], [2, 3]]),
    (BYTE_LEVEL, ["red", "\u010a", "circle"], ["red", "circle"], [[0], [2]]),  # a newline parts two words
    (BYTE_LEVEL, ["there", "\u0120are", "\u0120", "4", "2", "\u0120shapes"], ["there", "are", "42", "shapes"],
     [[0], [1], [3, 4], [5]]),  # the lone space token belongs to no word
    (BYTE_LEVEL, ["a", "\u0120blue", "-", "green", "\u0120square", "."], ["a", "blue-green", "square", "."],
     [[0], [1, 2, 3], [4], [5]]),
    (BYTE_LEVEL, ["circle", "\u00f0\u0141", "\u013b\u0124", "\u0120Red"], ["circle", "🙂", "red"],
     [[0], [1, 2], [3]]),
    # GPT-2's " 🙂" and " 日": the first token holds the space and the character's first bytes (it was
    # left out of the word, its score out of the word's)
    (BYTE_LEVEL, ["red", "\u0120\u00f0\u0141", "\u013b", "\u0124", "\u0120\u00e6", "\u0139\u00a5"],
     ["red", "🙂", "日"], [[0], [1, 2, 3], [4, 5]]),
    # sentencepiece with byte fallback
    (BYTE_FALLBACK, ["\u2581red", "<0x0A>", "circle"], ["red", "circle"], [[0], [2]]),
    (BYTE_FALLBACK, ["\u2581caf", "<0xC3>", "<0xA9>", "\u2581rouge"], ["café", "rouge"], [[0, 1, 2], [3]]),
    (BYTE_FALLBACK, ["\u2581it", "'", "s", "\u2581red"], ["it's", "red"], [[0, 1, 2], [3]]),
    (BYTE_FALLBACK, ["\u2581", "4", "2", "\u2581", "3", ".", "5"], ["42", "3.5"], [[1, 2], [4, 5, 6]]),
    (METASPACE, ["\u2581a", "\u2581tra", "ffic", "\u2581light", ",", "\u2581dogs"],
     ["a", "traffic", "light", ",", "dogs"], [[0], [1, 2], [3], [4], [5]]),
    (METASPACE, ["\u2581\u65e5", "\u672c", "\u8a9e", "\u2581red"], ["日", "本", "語", "red"],
     [[0], [1], [2], [3]]),  # an unspaced script: a word per token
    (WORDPIECE, ["the", "play", "##ing", "field", "##s", "."], ["the", "playing", "fields", "."],
     [[0], [1, 2], [3, 4], [5]]),
    (WORDPIECE, ["red", "circle"], ["red", "circle"], [[0], [1]]),
]


def _tokenizer(decoder, tokens):
    return word_tokenizer({"<eos>": 1000}, words=list(dict.fromkeys(tokens)), named={"eos_token": "<eos>"},
                          decoder=decoder)


@pytest.mark.parametrize("decoder,tokens,words,pieces", CASES)
def test_words_follow_the_decoded_text(decoder, tokens, words, pieces):
    tok = _tokenizer(decoder, tokens)
    ids = tok.convert_tokens_to_ids(tokens)
    got = word_pieces(*token_spans(lambda x: tok.decode(x), ids), tokens)
    assert [w for _, w in got] == words
    assert [g for g, _ in got] == pieces


def test_token_spans_give_each_token_the_characters_it_completes():
    tok = _tokenizer(BYTE_LEVEL, ["caf", "\u00c3", "\u00a9", "\u0120rouge", "\u0120"])
    text, spans, blank = token_spans(tok.decode, tok.convert_tokens_to_ids(["caf", "\u00c3", "\u00a9", "\u0120rouge",
                                                                          "\u0120"]))
    assert text == "café rouge "
    # "Ã" is the first byte of é: nothing complete yet; "©" completes é
    assert spans == [(0, 3), (3, 3), (3, 4), (4, 10), (10, 11)]
    assert blank == ["caf", "\ufffd", "\ufffd", " rouge", " "]


def test_an_id_without_text_is_a_word_of_its_own():
    # a random model's id past the tokenizer's vocabulary decodes to nothing: named by its token string
    tok = _tokenizer(BYTE_LEVEL, ["red", "\u0120circle"])
    ids = tok.convert_tokens_to_ids(["red"]) + [5000] + tok.convert_tokens_to_ids(["\u0120circle"])
    strings = [str(t) for t in tok.convert_ids_to_tokens(ids)]
    assert word_pieces(*token_spans(tok.decode, ids), strings) == [([0], "red"), ([1], "none"), ([2], "circle")]


def test_find_phrase_matches_letters_across_punctuation_and_scripts():
    words = ["a", "red", "circle", "and", "a", "red", "square"]
    assert find_phrase(words, "Red circle.") == [(1, 3)]
    assert find_phrase(words, "red") == [(1, 2), (5, 6)]
    assert find_phrase(["red", "&", "circle", "square"], "red & circle") == [(0, 3)]  # the phrase's own words only
    assert find_phrase(["a", "blue", "-", "green", "square"], "blue-green") == [(1, 4)]  # a spacing decoder
    assert find_phrase(["it", "'", "s", "red"], "it's") == [(0, 3)]
    assert find_phrase(["日本", "café"], "日本") == [(0, 1)] and find_phrase(["日本", "café"], "CAFÉ") == [(1, 2)]
    assert find_phrase(["red", "circle"], "circ") == [] and find_phrase(["red"], "&") == []


def test_punctuation_with_a_map_of_its_own_is_found_by_its_text():
    # "," was refused as "not in the response" while the response's items listed it
    words = ["a", "circle", ",", "red", "circles", "!", "red", ","]
    assert find_phrase(words, ",") == [(2, 3), (7, 8)] and find_phrase(words, " ! ") == [(5, 6)]
    assert find_phrase(words, "?") == [] and find_phrase(words, "") == [] and find_phrase(words, "  ") == []
    items = [Item(w, n, [n]) for n, w in enumerate(words)]
    assert [it.number for it in select_items(items, ["!", ","])] == [2, 5, 7]
    with pytest.raises(InputError, match="targets: word '\\?' is not in the response"):
        select_items(items, "?")


def test_a_phrase_covers_exactly_its_words():
    items = [Item(w, n, [n]) for n, w in enumerate(["red", "&", "circle", "square"])]
    got = select_items(items, ["red & circle"])
    assert [(i.text, i.slots) for i in got] == [("red & circle", [0, 1, 2])]
    with pytest.raises(InputError, match="word 'круг' is not in the response"):
        select_items(items, "круг")


def test_explainer_words_with_a_byte_level_tokenizer():
    """Through the whole explainer: LLaDA-V's ids with a byte-level vocabulary."""
    import dcam
    from dcam.testing.llada import LLADA_EOS_ID, LLADA_MASK_ID
    from dcam.testing.llava_dmllm import tiny_llada_v

    model, proc = tiny_llada_v(0, layers=2)
    pieces = ["caf", "\u00c3", "\u00a9", "\u0120rouge", "\u0120", "circle", "s", "describe", "the", "image", "."]
    proc.tokenizer = word_tokenizer({"<|endoftext|>": LLADA_EOS_ID, "<|mdm_mask|>": LLADA_MASK_ID}, words=pieces,
                                    named={"eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"},
                                    decoder=BYTE_LEVEL)
    ids = proc.tokenizer.convert_tokens_to_ids(["caf", "\u00c3", "\u00a9", "\u0120rouge", "\u0120"])
    exp = dcam.Explainer(model, proc)
    image = np.full((28, 28, 3), 200, dtype=np.uint8)
    e = exp.explain(image, prompt="describe the image", response=ids)
    assert e.tokens == ["café", "rouge"] and e.pieces == [[0, 1, 2], [3]]
    assert exp.explain(image, prompt="describe the image", response=ids, targets="CAFÉ").pieces == [[0, 1, 2]]
    # targets="tokens" / "words": every piece / every word, whatever granularity says (they were read as
    # the words "tokens" and "words", not in the response)
    pieces_e = exp.explain(image, prompt="describe the image", response=ids, targets="tokens")
    assert pieces_e.pieces == [[0], [1], [2], [3], [4]] and pieces_e.granularity == "tokens"  # the space too
    words_e = exp.explain(image, prompt="describe the image", response=ids, targets="words", granularity="tokens")
    assert words_e.pieces == [[0, 1, 2], [3]] and torch.equal(words_e.maps, e.maps)
    one = proc.tokenizer.convert_tokens_to_ids(["circle", "s"])
    assert exp.explain(image, prompt="describe the image", response=one).tokens == ["circles"]
    # whitespace only: it said "only eos/pad tokens" and did not name the argument
    space = proc.tokenizer.convert_tokens_to_ids(["\u0120", "\u0120"])
    with pytest.raises(InputError, match=r"^response: \[\d+, \d+\] has no word to explain \(its tokens are "
                                         r"whitespace only\)$"):
        exp.explain(image, prompt="describe the image", response=space)


def test_targets_match_across_unicode_forms_and_case_folding():
    # "café" typed as one character did not find "cafe" + U+0301 in the response; "STRASSE" missed "straße"
    items = [Item(w, n, [n]) for n, w in enumerate(["cafe\u0301", "rouge", "straße"])]
    assert [i.text for i in select_items(items, "café")] == ["cafe\u0301"]
    assert [i.text for i in select_items(items, "STRASSE")] == ["straße"]
    assert find_phrase(["café"], "cafe\u0301") == [(0, 1)]


def test_combining_marks_stay_with_their_letter_in_unspaced_scripts():
    # Thai ดี and か + U+3099 were split into a letter and a lone mark, each its own "word"
    tok = _tokenizer(METASPACE, ["\u2581\u0e14", "\u0e35", "\u2581\u304b", "\u3099"])
    ids = tok.convert_tokens_to_ids(["\u2581\u0e14", "\u0e35", "\u2581\u304b", "\u3099"])
    got = word_pieces(*token_spans(tok.decode, ids), ["\u2581\u0e14", "\u0e35", "\u2581\u304b", "\u3099"])
    assert got == [([0, 1], "\u0e14\u0e35"), ([2, 3], "\u304b\u3099")]


def test_special_tokens_and_unexplained_slots_part_words():
    # "red<|eot_id|>blue" was one word of three tokens; so was red [MASK] blue (the mask not explained)
    pieces = ["red", "<|eot_id|>", "blue"]
    tok = _tokenizer(BYTE_LEVEL, pieces)
    ids = tok.convert_tokens_to_ids(pieces)
    got = word_pieces(*token_spans(lambda x: tok.decode(x), ids, [False, True, False]), pieces)
    assert got == [([0], "red"), ([1], "<|eot_id|>"), ([2], "blue")]
    got = word_pieces(*token_spans(lambda x: tok.decode(x), [ids[0], ids[2]], [False, "gap"]), ["red", "blue"])
    assert got == [([0], "red"), ([1], "blue")]


def test_token_labels_come_from_the_decoded_text():
    # tokens granularity labelled a newline token "ċ" and a partial byte "ã": letters not in the response
    from dcam.targets import response_items

    pieces = ["red", "\u010a", "caf", "\u00c3", "\u00a9", "\u0120"]
    tok = _tokenizer(BYTE_LEVEL, pieces)
    ids = tok.convert_tokens_to_ids(pieces)
    items = response_items(list(range(6)), pieces, "tokens", *token_spans(tok.decode, ids))
    assert [i.text for i in items] == ["red", "\u2423", "caf", "\ufffd", "é", "\u2423"]
    # a sentencepiece space token decodes to "" alone: it was labelled by its token string "▁"
    for pieces, labels in ((["\u2581red", "\u2581", "\u2581circle"], ["red", "\u2423", "circle"]),
                           (["\u2581", "\u2581red"], ["\u2423", "red"])):
        tok = _tokenizer(METASPACE, pieces)
        ids = tok.convert_tokens_to_ids(pieces)
        items = response_items(list(range(len(ids))), pieces, "tokens", *token_spans(tok.decode, ids))
        assert [i.text for i in items] == labels


def test_explainer_parts_words_at_special_tokens_and_masked_slots():
    import dcam
    from dcam.testing.llada import LLADA_EOS_ID, LLADA_EOT_ID, LLADA_MASK_ID
    from dcam.testing.llava_dmllm import tiny_llada_v

    model, proc = tiny_llada_v(0, layers=2)
    header = 126340  # a special token that ends nothing (LLaMA-3's <|start_header_id|> kind)
    proc.tokenizer = word_tokenizer({"<|endoftext|>": LLADA_EOS_ID, "<|mdm_mask|>": LLADA_MASK_ID,
                                     "<|eot_id|>": LLADA_EOT_ID, "<|start_header_id|>": header},
                                    words=["red", "blue", "describe", "the", "image"],
                                    named={"eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"},
                                    decoder=BYTE_LEVEL)
    red, blue = proc.tokenizer.convert_tokens_to_ids(["red", "blue"])
    exp = dcam.Explainer(model, proc)
    image = np.full((28, 28, 3), 200, dtype=np.uint8)
    # a given response may not hold a special token (tests/families/test_special_tokens.py); the model may
    # write one: a sampler that does, a user's adapter of the family
    from dcam.probe.adapters.base import Generation

    class Writer(type(exp.adapter)):
        def generate(self, prep, steps=None, response_length=None, record=False):
            return Generation([red, header, blue, LLADA_EOS_ID], 1)

    written = dcam.Explainer(adapter=Writer(model, proc))
    e = written.explain(image, prompt="describe the image", targets="tokens")
    assert e.tokens == ["red", "<|start_header_id|>", "blue"] and e.pieces == [[0], [1], [2]]
    # the response text shows every token with a map (it was decoded without special tokens)
    assert e.response == proc.tokenizer.decode([red, header, blue], skip_special_tokens=False)
    assert "<|start_header_id|>" in e.response
    # as words, the special token is left out, with a note, and still parts the words around it
    e = written.explain(image, prompt="describe the image")
    assert e.tokens == ["red", "blue"] and e.pieces == [[0], [2]] and e.notes == [
        "targets: 1 special token of the response ('<|start_header_id|>') is not a word: left out (targets='tokens' "
        "explains it)"]
    assert e.response == proc.tokenizer.decode([red, header, blue], skip_special_tokens=False)
    e = exp.explain(image, prompt="describe the image", response=[red, LLADA_MASK_ID, blue])
    assert e.tokens == ["red", "blue"] and e.pieces == [[0], [2]]
    # a row of the padded LM head past the tokenizer: a word named by its id, shown in the response; the
    # text ends at the first eos (it went on after it)
    past = int(model.get_output_embeddings().weight.shape[0]) - 1
    assert proc.tokenizer.convert_ids_to_tokens(past) is None
    e = exp.explain(image, prompt="describe the image", response=[red, past, blue, LLADA_EOS_ID, red])
    assert e.tokens == ["red", f"<id {past}>", "blue"] and e.pieces == [[0], [1], [2]]
    assert e.response == f"{proc.tokenizer.decode([red])} <id {past}> {proc.tokenizer.decode([blue])}"
    # an end or mask token written in a text response cut or dropped words without a word; at its end it is fine
    from dcam.errors import InputError

    for text, tok, tid in (("red <|endoftext|> blue", "<|endoftext|>", LLADA_EOS_ID),
                           ("red <|mdm_mask|> blue", "<|mdm_mask|>", LLADA_MASK_ID)):
        with pytest.raises(InputError) as info:
            exp.explain(image, prompt="describe the image", response=text)
        assert str(info.value) == (f"response: holds {tok!r} (id {tid}), which ends a response or marks an empty "
                                   "slot; give the text without it (or token ids)")
    ended = exp.explain(image, prompt="describe the image", response="red blue <|endoftext|>")
    assert ended.tokens == exp.explain(image, prompt="describe the image", response="red blue").tokens


def test_a_phrase_is_named_by_the_response_text_it_covers():
    # under granularity="tokens" a phrase over "red" "circ" "le" was named "red circ le" (also its file name and
    # label, and e.index("red circle") failed); a phrase of an unspaced script got spaces inserted
    from dcam.targets import Item, select_items

    def text_of(text, spans):
        return lambda slots: " ".join(text[min(spans[s][0] for s in slots):max(spans[s][1] for s in slots)].split())

    items = [Item("a", 0, [0]), Item("red", 1, [1]), Item("circ", 2, [2]), Item("le", 3, [3])]
    spans = [(0, 1), (1, 5), (5, 10), (10, 12)]  # " red", " circ", "le" of "a red circle"
    got = select_items(items, ["red circle"], text_of("a red circle", spans))
    assert [(it.text, it.slots) for it in got] == [("red circle", [1, 2, 3])]
    # without the text the items are words apart (nothing says "circ" "le" is one word), named by their texts joined
    assert select_items(items, ["red circ le"])[0].text == "red circ le"
    with pytest.raises(InputError, match="phrase 'red circle' is not in the response"):
        select_items(items, ["red circle"])
    cjk = [Item("日本", 0, [0]), Item("の", 1, [1]), Item("猫", 2, [2])]
    got = select_items(cjk, ["日本の猫"], text_of("日本の猫", [(0, 2), (2, 3), (3, 4)]))
    assert got[0].text == "日本の猫"


def test_common_prefix_agrees_with_a_character_walk():
    import os
    import random
    from dcam.words import _common_prefix
    rng = random.Random(3)
    for _ in range(500):
        a = "".join(rng.choice("ab\ufffd ") for _ in range(rng.randrange(0, 12)))
        b = a[:rng.randrange(0, len(a) + 1)] + "".join(rng.choice("ab ") for _ in range(rng.randrange(0, 5)))
        assert _common_prefix(a, b) == len(os.path.commonprefix([a, b]))


def _spans_by_definition(decode, ids):
    """token_spans of one run, as defined: token t ends where decode(ids[:t+1]) stops agreeing
    with the whole text, character by character (never before the previous token's end)."""
    text, out, done = decode(ids), [], 0
    for t in range(len(ids)):
        prefix = decode(ids[:t + 1])
        k = 0
        while k < min(len(prefix), len(text)) and prefix[k] == text[k]:
            k += 1
        out.append((done, max(k, done)))
        done = max(k, done)
    return text, out


@pytest.mark.parametrize("decoder,tokens", [
    (BYTE_LEVEL, ["red", "\u0120circle", "\u0120", "4", "\u00c3", "\u00a9", "\u0120caf", "\u00e6\u0139", "\u00a5",
                  "\u010a", ".", "\u0120\u00f0\u0141", "\u013b", "\u0124", "s"]),
    (BYTE_FALLBACK, ["\u2581red", "<0x0A>", "circle", "\u2581caf", "<0xC3>", "<0xA9>", "\u2581", "'", "s", "."]),
    (METASPACE, ["\u2581a", "\u2581tra", "ffic", "\u2581light", ",", "\u2581\u65e5", "\u672c", "\u2581dogs"]),
    (WORDPIECE, ["the", "play", "##ing", "field", "##s", ".", ",", "red"]),
])
def test_long_runs_read_piece_by_piece_give_the_spans_as_defined(decoder, tokens, monkeypatch):
    # a long run is cut into pieces (pieces of 3 tokens here, so that short sequences are cut many times);
    # the spans must be those of a decode of every prefix, for every decoder style
    import random

    import dcam.words as words

    monkeypatch.setattr(words, "SPAN_PIECE", 3)
    tok = _tokenizer(decoder, tokens)
    vocab = tok.convert_tokens_to_ids(tokens)
    rng = random.Random(7)
    cut = 0
    for n in (1, 5, 7, 12, 40, 90):
        for _ in range(6):
            ids = [rng.choice(vocab) for _ in range(n)]
            text, spans, _ = token_spans(tok.decode, ids)
            assert (text, spans) == _spans_by_definition(tok.decode, ids), ids
            cut += len(words._cuts(tok.decode, ids, text)) > 2 if n > 6 else 0
    assert cut > 0  # the pieces were used, not only the fallback


def test_pieces_follow_the_clean_up_of_spaces_before_punctuation(monkeypatch):
    # transformers' clean_up_tokenization_spaces joins " ." " ," " 's" " n't" across tokens
    import random

    import dcam.words as words

    monkeypatch.setattr(words, "SPAN_PIECE", 3)
    tokens = ["do", "n't", "it", "'s", ".", ",", "red", "?", "'"]
    tok = _tokenizer(WORDPIECE, tokens)
    decode = lambda x: tok.decode(x, clean_up_tokenization_spaces=True)  # noqa: E731
    vocab = tok.convert_tokens_to_ids(tokens)
    rng = random.Random(11)
    for n in (8, 30, 75):
        for _ in range(8):
            ids = [rng.choice(vocab) for _ in range(n)]
            text, spans, _ = token_spans(decode, ids)
            assert (text, spans) == _spans_by_definition(decode, ids), ids


@pytest.mark.parametrize("decoder,tokens,cleanup", [
    # a LLaMA-style decoder (the first space stripped) with transformers' clean-up: " ' " and " 're" are
    # joined across a cut, so the text after a cut is not the piece decoded alone
    (decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)]),
     ["\u2581a", "\u2581b", "\u2581'", "\u2581're", "'", "\u2581,", "\u2581n't", "."], True),
    # byte fallback: an invalid byte run is one U+FFFD per byte, read differently when a cut splits it
    (BYTE_FALLBACK, ["\u2581a", "\u2581b", "<0xFD>", "<0x4F>", "<0x9A>", "<0xC3>", "<0xA9>"], False),
])
def test_a_cut_is_taken_only_where_the_text_restarts_cleanly(decoder, tokens, cleanup, monkeypatch):
    # pieces cut where a cross-cut effect hid itself gave token 64 of "a a ... ' 're a" the "'" of the
    # next token, and a byte of an invalid run another token's character (found by a reviewer's fuzz)
    import random

    import dcam.words as words
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    monkeypatch.setattr(words, "SPAN_PIECE", 3)
    tok = _tokenizer(decoder, tokens)
    decode = (lambda x: PreTrainedTokenizerBase.clean_up_tokenization(None, tok.decode(x))) if cleanup \
        else tok.decode
    vocab = tok.convert_tokens_to_ids(tokens)
    rng = random.Random(5)
    for n in (10, 25, 60):
        for _ in range(40):
            ids = [rng.choice(vocab[:2]) if rng.random() < 0.6 else rng.choice(vocab) for _ in range(n)]
            text, spans, _ = token_spans(decode, ids)
            assert (text, spans) == _spans_by_definition(decode, ids), ids
