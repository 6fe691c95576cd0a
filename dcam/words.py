"""Words and tokens: how a response's tokens become the words a person reads.

* :func:`clean_token`: a token string as a word (sub-word markers removed, lower case);
* :func:`normalise_word`: letters and digits only, for matching across tokenizers;
* :func:`split_words`: a caption's words, punctuation stripped;
* :func:`align_words`: which response tokens make up each word;
* :data:`FUNCTION_WORDS`: closed-class English words (ground truth "nothing" in the evaluation);
* :func:`token_spans`, :func:`word_pieces`: a response's words read off the
  tokenizer's own decoding (the explained items, :mod:`dcam.targets`);
* :func:`phrase_key`: how words and targets are compared (matched in :mod:`dcam.phrases`).
"""
from __future__ import annotations

import re
import unicodedata
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import InputError

_PUNCT = re.compile(r"^[^\w]+|[^\w]+$")


def clean_token(s: str) -> str:
    """A token string as a word: sentencepiece/BPE space markers, WordPiece's
    ``##`` and surrounding whitespace removed, lower case."""
    return s.replace("\u2581", " ").replace("\u0120", " ").replace("##", "").strip().lower()


#: Closed-class English words scored as function words (ground truth: nothing).
FUNCTION_WORDS = frozenset("""
a an the and or but nor so yet of in on at to with by for from into onto over under above below
behind beside besides between among through across along around near off up down out about against
during before after while as than then there here this that these those it its itself they them their
theirs he him his she her hers we us our you your i me my is are was were be been being am has have
had having do does did can could will would shall should may might must not no some any each every
all both either neither other another such what which who whom whose where when why how very too also
just only while if because until upon within without toward towards via per
""".split())


def strip_punctuation(word: str) -> str:
    """``word`` without the punctuation at its ends: every character that is not a letter, a
    digit or ``_``, in any script ("(and)", "“and”", "square…" -> "and", "and", "square";
    "—" -> "")."""
    return _PUNCT.sub("", word)


def split_words(caption: str) -> List[str]:
    """Lower-case words of a caption, punctuation stripped from their ends
    (:func:`strip_punctuation`; empty pieces dropped). Text of a script written
    without spaces (Chinese, Japanese kana, Thai) has no tokenizer here to group its
    characters: each character is a word ("一只红色的猫" is 一 只 红 色 的 猫, as the
    explained words are the characters each token spans; a label or target names
    several as a phrase), and full-width punctuation parts words (:func:`_segments`)."""
    out = []
    for tok in caption.lower().split():
        if any(_unspaced(ch) or _full_width_mark(ch) for ch in tok):
            out.extend(_segment_words(tok))
            continue
        tok = strip_punctuation(tok)
        if tok:
            out.append(tok)
    return out


def _segment_words(text: str) -> List[str]:
    """The words of :func:`_segments` in ``text``, each unspaced character one."""
    seg = _segments(text)
    out: Dict[int, str] = {}
    for ch, c in zip(text, seg):
        if c is not None and c[1]:
            out[c[0]] = out.get(c[0], "") + ch
    return list(out.values())



def normalise_word(s: str) -> str:
    """Letters and digits of any script of a word or token (markers removed), compared
    as :func:`phrase_key` compares them (a caption's "猫" or "Straße" was reduced to
    nothing or "strae" when only ASCII letters were kept)."""
    return phrase_key(clean_token(s))


def align_words(words: Sequence[str], tokens: Sequence[str]) -> List[List[int]]:
    """Token indices of every word: both sides are lower-cased and reduced to
    letters and digits, then the tokens' characters are matched against the
    words' characters in order. Tokens with no letters or digits belong to no
    word; a token that does not match where the words are (an unknown or
    special token) is skipped and the words it would have covered stay empty."""
    wchars: List[int] = []
    for i, w in enumerate(words):
        wchars.extend([i] * len(normalise_word(w)))
    wstr = "".join(normalise_word(w) for w in words)
    out: List[List[int]] = [[] for _ in words]
    p = 0
    for j, t in enumerate(tokens):
        s = normalise_word(t)
        if not s:
            continue
        if wstr.startswith(s, p):
            for k in range(p, p + len(s)):
                if j not in out[wchars[k]]:
                    out[wchars[k]].append(j)
            p += len(s)
        elif p < len(wstr):
            # resynchronise on a later word boundary where this token matches
            q = wstr.find(s, p)
            starts = {0} | {k for k in range(1, len(wchars)) if wchars[k] != wchars[k - 1]}
            while q != -1 and q not in starts:
                q = wstr.find(s, q + 1)
            if q != -1:
                for k in range(q, q + len(s)):
                    if j not in out[wchars[k]]:
                        out[wchars[k]].append(j)
                p = q + len(s)
    return out


# ------------------------------------------------------------------ word pieces
#
# Words are read off the response's decoded text, not off the token strings: a token
# string is the tokenizer's internal spelling ("Ġcaf" "Ã©" for "café" in byte-level BPE,
# "<0x0A>" for a newline in a byte-fallback vocabulary, no space marker at all on the
# first word), and only the tokenizer's own decoder knows which characters a token adds.

#: ``refuse_ids``'s reason for an image placeholder token
PLACEHOLDER = "is the image placeholder the model fills with image features"

#: ``refuse_ids``'s reason for a token written around an image's features (Gemma 3's <start_of_image>)
IMAGE_MARK = "is part of the image placeholder: it marks where the image features go"

#: ``refuse_ids``'s reason for another special token (a chat turn's or role's mark, another modality's placeholder)
SPECIAL_TOKEN = "is a special token of the tokenizer (a chat, role or modality mark), not text; give the response without it"

#: ``refuse_ids``'s reason for a special token that closes a response (an adapter's ``closing_tokens``) before its end
CLOSING_TOKEN = "closes a response: only the response's end may hold it"

#: what a given TEXT's refusal of a token the model may write (a special token, an image mark) adds: the model's own
#: response is given back as its ids, which are explained as a generation's (those tokens left out of the words)
GIVE_IDS = "; a response the model wrote is given as its token ids (response_ids of its explanation or meta.json)"


def refuse_ids(token_strings: Callable[[Sequence[int]], List[str]], ids, why: str, **seqs) -> None:
    """Refuse a prompt or response (``seqs``: name -> ids) holding one of ``ids``, tokens the
    adapter or the model puts in the sequence itself, or that end it (``why`` says which
    job they do); ``token_strings``: the adapter's, to name the token."""
    for name, seq in seqs.items():
        held = [int(v) for v in seq if int(v) in ids]
        if held:
            raise InputError(f"{name}: holds {token_strings([held[0]])[0]!r} (id {held[0]}), which {why}")


def decode_shown(tokenizer, ids: Sequence[int]) -> str:
    """``ids`` decoded with their special tokens, and an id the tokenizer does not know (a row
    a padded LM head adds, which it decodes to nothing) shown as ``<id N>``: the text of
    every token a reader is shown a map for."""
    ids = [int(i) for i in ids]
    known = [t is not None for t in tokenizer.convert_ids_to_tokens(ids)]
    parts, start = [], 0
    for k in range(len(ids) + 1):
        if k == len(ids) or not known[k]:
            if k > start:
                parts.append(tokenizer.decode(ids[start:k], skip_special_tokens=False))
            if k < len(ids):
                parts.append(f"<id {ids[k]}>")
            start = k + 1
    return " ".join(parts)


def token_spans(decode: Callable[[Sequence[int]], str], ids: Sequence[int],
                breaks: Optional[Sequence[bool]] = None) -> Tuple[str, List[Tuple[int, int]], List[str]]:
    """(text, spans, alone): the decoded text of ``ids``; per token, the characters
    ``[start, end)`` of that text it completes; and each token decoded alone.

    Token i's end is how far the decoded prefix ``ids[:i+1]`` agrees with the whole
    text, so a token holding part of a character's bytes (alone it decodes to
    U+FFFD) completes nothing and the token that finishes the character gets it,
    and the decoder's own clean-ups (a leading space dropped, a space before
    punctuation removed) are respected. ``alone`` tells such a token from a lone
    space marker (sentencepiece's "▁" at the start completes nothing either) and
    from an id the tokenizer has no text for.

    ``breaks[i]``: token i stands apart from its neighbours (a special token, which
    then completes nothing and is a word of its own) or ``"gap"``: text resumes
    after a slot that is not explained (a masked or padded one). The runs between
    breaks are decoded on their own and joined with spaces, so "red<|eot|>blue"
    or "red [MASK] blue" never read as one word."""
    ids = [int(i) for i in ids]
    breaks = list(breaks) if breaks is not None else [False] * len(ids)
    text, spans = "", [(0, 0)] * len(ids)
    i = 0
    while i < len(ids):
        if breaks[i] is True:  # a special token: no text of its own in the words' text
            spans[i] = (len(text), len(text))
            i += 1
            continue
        j = i + 1
        while j < len(ids) and not breaks[j]:
            j += 1
        if text:
            text += " "
        base = len(text)
        run = decode(ids[i:j])
        for t, (a, b) in enumerate(_run_spans(decode, ids[i:j], run), start=i):
            spans[t] = (base + a, base + b)
        text += run
        i = j
    return text, spans, [decode([i]) for i in ids]


#: tokens per piece when the spans of a long run are found piece by piece (:func:`_run_spans`)
SPAN_PIECE = 64


def _run_spans(decode: Callable[[Sequence[int]], str], ids: List[int], run: str) -> List[Tuple[int, int]]:
    """The spans of :func:`token_spans` in one run ``ids`` decoding to ``run``.

    By definition token t's end is where ``decode(ids[:t+1])`` stops agreeing with
    ``run``: a decode of every prefix, quadratic in the run's length (a 2,048-word
    response took seconds). A long run is cut into pieces instead, at tokens where the
    decoder is seen to restart cleanly: the text of the ids before the cut is a prefix
    of ``run``, and decodes across the cut join as the text does
    (:func:`_restarts_cleanly`: a decoder that drops a piece's leading space, a clean-up
    across the cut, or a cut inside a character's bytes fails this and the cut moves
    on). The pieces, decoded on their own, must spell
    ``run`` exactly; then each token's end is found within its piece, as
    ``decode(ids[cut:t+1])`` agrees with ``run`` past the cut. Where no cut holds, the
    whole run is read prefix by prefix, as defined."""
    n = len(ids)
    cuts = _cuts(decode, ids, run) if n > 2 * SPAN_PIECE else [(0, 0), (n, len(run))]
    out, done = [], 0
    for (c0, off), (c1, _) in zip(cuts, cuts[1:]):
        for t in range(c0, c1):
            prefix = decode(ids[c0:t + 1]) if t + 1 < n else run[off:]
            k = max(off + _common_prefix(prefix, run, off), done)
            out.append((done, k))
            done = k
    return out


def _cuts(decode, ids: List[int], run: str) -> List[Tuple[int, int]]:
    """[(token, character offset in run)] of the pieces of :func:`_run_spans`, from (0, 0) to
    (len(ids), len(run)); just those two where no cut holds or the pieces do not spell ``run``."""
    n, cuts = len(ids), [(0, 0)]
    for want in range(SPAN_PIECE, n - SPAN_PIECE // 2, SPAN_PIECE):
        for c in range(want, min(want + 4, n)):  # a few tries near each cut: a failed one costs a decode of c ids
            head = decode(ids[:c])
            if run.startswith(head) and len(head) > cuts[-1][1] and _restarts_cleanly(decode, ids, c, head, run):
                cuts.append((c, len(head)))
                break
    cuts.append((n, len(run)))
    pieces = [decode(ids[a:b]) for (a, _), (b, _) in zip(cuts, cuts[1:])]
    if "".join(pieces) != run or any(len(p) != e - s for p, (_, s), (_, e) in zip(pieces, cuts, cuts[1:])):
        return [(0, 0), (n, len(run))]  # the decoder is not one that restarts cleanly here: as defined
    return cuts


#: tokens on each side of a cut whose decodes are checked to join as the text does
CUT_WINDOW = 8


def _restarts_cleanly(decode, ids: List[int], c: int, head: str, run: str) -> bool:
    """Whether the decoder restarts cleanly at token ``c`` (``head``: the text of ``ids[:c]``,
    a prefix of ``run``): with the ``CUT_WINDOW`` tokens before the cut as context, every
    decode that runs past it is that context's text followed by the text of the tokens
    after the cut alone, and those follow ``head`` in ``run``. A decoder's effects across a
    cut are local (a leading space dropped from a piece, a clean-up of " 're" joining two
    tokens, an invalid byte run read as one U+FFFD per byte): the window shows them."""
    a = max(0, c - CUT_WINDOW)
    before = decode(ids[a:c])
    if not head.endswith(before):
        return False
    after = ""
    for j in range(c + 1, min(len(ids), c + CUT_WINDOW) + 1):
        after = decode(ids[c:j])
        if decode(ids[a:j]) != before + after:
            return False
    return run.startswith(after.rstrip("\ufffd"), len(head))


def _common_prefix(a: str, b: str, start: int = 0) -> int:
    """Length of the longest common prefix of ``a`` and ``b[start:]`` (``b`` is not copied),
    compared by the string methods (a prefix decoded by most tokenizers agrees with the
    whole text but for its last characters; a character loop here made long responses
    quadratic in Python)."""
    if b.startswith(a, start):
        return len(a)
    lo, hi = 0, min(len(a), len(b) - start)  # a[:lo] agrees; a[:hi+1] does not, past the shorter one
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[start + lo:start + mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _is_word_char(ch: str) -> bool:
    """A letter or digit of any script (a combining accent counts with its letter); not a
    variation selector, which only picks how the character before it is drawn (the U+FE0F
    of the emoji "❤️" made it a "word" of that selector and the heart as punctuation)."""
    return ch.isalnum() or (unicodedata.category(ch).startswith("M") and not is_variation_selector(ch))


def is_variation_selector(ch: str) -> bool:
    """U+FE00..FE0F or U+E0100..E01EF: text or emoji presentation of the character before."""
    return "\ufe00" <= ch <= "\ufe0f" or "\U000e0100" <= ch <= "\U000e01ef"


_UNSPACED = ((0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x3040, 0x30FF), (0x3400, 0x4DBF),
             (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FFFF))


def _unspaced(ch: str) -> bool:
    """A character of a script written without spaces between words (Chinese, Japanese
    kana, Thai, Lao, Myanmar, Khmer): there a word is what the tokenizer made one token."""
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in _UNSPACED)


def _breaks_words(gap: str, before: str, after: str) -> bool:
    """Whether ``gap``, characters without letters or digits between the letters ``before``
    and ``after`` of one whitespace-separated run, parts two words rather than gluing them
    into one ("blue-green", "it's", "3.5"): it does next to a character of an unspaced
    script ("日本、東京", "猫”", "“猫") or when it holds full-width punctuation, which Chinese
    and Japanese text writes between clauses without a space ("circle。", "red，blue")."""
    return _unspaced(before) or _unspaced(after) or any(_full_width_mark(ch) for ch in gap)


def _full_width_mark(ch: str) -> bool:
    """Full-width punctuation or symbol ("，" "！" "：" "＄") or wide punctuation ("。" "、" "「"), not an emoji."""
    width = unicodedata.east_asian_width(ch)
    return width == "F" or (width == "W" and unicodedata.category(ch).startswith("P"))


def _breaking_marks(text: str, letters: Sequence[int]) -> set:
    """Indices of ``text`` between two of ``letters`` (the letter and digit positions of one
    whitespace-separated run) that are punctuation of their own (:func:`_breaks_words`)."""
    out = set()
    for i, j in zip(letters, letters[1:]):
        if j > i + 1 and _breaks_words(text[i + 1:j], text[i], text[j]):
            out.update(range(i + 1, j))
    return out


def _segments(text: str) -> List[Optional[Tuple[int, bool]]]:
    """Per character of ``text``: (segment number, is a word) or None for whitespace.

    Each whitespace-separated run is its word (from its first to its last letter or
    digit, so "blue-green", "it's", "3.5" are one word), with the punctuation before
    and after it as segments of their own ("circle." is the word and the dot); a run
    with no letter or digit is one punctuation segment. Characters of unspaced
    scripts are a segment each (merged again by the tokens that span them), and so
    is each character of punctuation that does not glue (:func:`_breaks_words`)."""
    seg: List[Optional[Tuple[int, bool]]] = [None] * len(text)
    n = 0
    for m in re.finditer(r"\S+", text):
        a, b = m.span()
        letters = [i for i in range(a, b) if _is_word_char(text[i])]
        if not letters:
            for i in range(a, b):
                seg[i] = (n, False)
            n += 1
            continue
        first, last = letters[0], letters[-1] + 1
        marks = _breaking_marks(text, letters)
        for lo, hi, word in ((a, first, False), (first, last, True), (last, b, False)):
            if lo == hi:
                continue
            fresh = True
            for i in range(lo, hi):
                ch = text[i]
                if word and unicodedata.category(ch).startswith("M") and i > lo:
                    seg[i] = seg[i - 1]  # a combining mark stays with its letter (Thai ดี, か + U+3099)
                    continue
                mark = word and i in marks
                alone = word and (_unspaced(ch) or mark)
                if fresh or alone:
                    n += 1
                seg[i] = (n, word and not mark)
                fresh = alone
            n += 1
    return seg


def word_pieces(text: str, spans: Sequence[Tuple[int, int]], alone: Sequence[str],
                tokens: Sequence[str]) -> List[Tuple[List[int], str]]:
    """Group tokens into the words a person reads: (token indices, word text) per word,
    in response order, from :func:`token_spans`'s ``text``, ``spans`` and ``alone``
    and the token strings ``tokens``.

    A token belongs to the word whose characters it completes (the first word, if it
    reaches into punctuation too; every word it spans becomes one); a token that
    completes no character yet (part of a character's bytes) goes with the token that
    does; a token of whitespace only belongs to no word; a token the decoder gives
    no text for (an id outside the tokenizer's vocabulary) is a word of its own,
    named by its token string. Punctuation around a word is an item of its own, as
    its tokens carry their own scores. Texts are lower case."""
    seg = _segments(text)
    own: Dict[int, str] = {}  # token -> its text, for tokens that are a word of their own
    parent: Dict[int, int] = {}

    def root(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    extent: Dict[int, List[int]] = {}  # segment -> [first char, last char + 1]
    for i, c in enumerate(seg):
        if c is not None:
            e = extent.setdefault(c[0], [i, i + 1])
            e[1] = i + 1
    pending: List[int] = []
    assigned: Dict[int, int] = {}  # token -> segment
    for t, (a, b) in enumerate(spans):
        mine = []
        for i in range(a, b):
            if seg[i] is not None and seg[i] not in mine:
                mine.append(seg[i])
        if a == b:
            if "\ufffd" in alone[t]:
                pending.append(t)  # part of a character's bytes
            elif alone[t].strip() or (not alone[t] and clean_token(tokens[t])):
                own[t] = token_text(text, (a, b), alone[t], tokens[t])
            continue
        if not mine:  # whitespace only, unless it also holds the first bytes of the next character:
            if "\ufffd" in alone[t]:  # byte-level BPE's " 🙂" as "ĠðŁ" "Ļ" "Ĥ" (the space, then a part)
                pending.append(t)
            continue
        words = [s for s, w in mine if w] or [s for s, _ in mine]
        for s in words[1:]:
            parent[root(s)] = root(words[0])
        for u in pending + [t]:
            assigned[u] = words[0]
        pending = []
    if pending and assigned:  # trailing bytes that never completed a character: the last word's
        last = assigned[max(assigned)]
        for u in pending:
            assigned[u] = last
    groups: Dict[int, List[int]] = {}
    for t in sorted(assigned):
        groups.setdefault(root(assigned[t]), []).append(t)
    words_of: Dict[int, List[int]] = {}  # group -> its words' first and last characters
    for s, (lo, hi) in extent.items():
        if seg[lo][1]:
            words_of.setdefault(root(s), []).extend((lo, hi - 1))
    out = [([t], word) for t, word in own.items()]
    for r, toks in groups.items():
        # the item's text: its words whole, and of punctuation what its own tokens complete
        # ("[UNK]." is the word "unk" and the item "." of the dot's token, not "].")
        chars = [i for t in toks for i in range(*spans[t]) if seg[i] is not None and not seg[i][1]]
        chars += words_of.get(r, [])
        out.append((toks, text[min(chars):max(chars) + 1].lower()))
    return sorted(out, key=lambda g: g[0][0])


def token_text(text: str, span: Tuple[int, int], alone: str, token: str) -> str:
    """One token's own text (lower case, stripped): what it completes of the decoded
    text; else, as it decodes alone: "�" for part of a character's bytes, "␣" for
    whitespace (what it completes of the text, how it decodes alone, or a token string of
    space markers only: "▁" was its label under a sentencepiece decoder, "␣" under
    byte-level BPE); else (no text at all: a special token, an id past the vocabulary)
    its token string."""
    own = text[span[0]:span[1]].strip().lower()
    if own:
        return own
    if "\ufffd" in alone:
        return "\ufffd"
    if (alone and not alone.strip()) or span[1] > span[0]:  # whitespace (a Metaspace "▁" decodes to "" alone)
        return "\u2423"
    if token and not token.replace("\u2581", " ").replace("\u0120", " ").strip():  # a lone space marker
        return "\u2423"
    return alone.strip().lower() or clean_token(token) or token


def folded(s: str) -> str:
    """``s`` in one Unicode form and case-folded, as words and targets are compared: NFKC
    ("é" and "e" + U+0301 alike, and the full-width "ｃａｔ" an East Asian keyboard types is
    "cat"), case-folded ("STRASSE" is "straße")."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", s).casefold())


def phrase_key(s: str) -> str:
    """Letters and digits of any script, :func:`folded`: how words and targets are compared."""
    return "".join(ch for ch in folded(s) if _is_word_char(ch))
