"""Targets matched to a response's words: which items a word or phrase given as a target
names (:func:`find_phrase`, for ``targets=``) and which explained item a word names
(:func:`find_item`, for ``Explanation.map("red")`` and the like).

A phrase is consecutive words of the response. Words compare by their letters and digits
(:func:`dcam.words.phrase_key`), broken into words at the same places, the punctuation
written against them ignored; a word of symbols alone (an emoji, "&", "€", a spaced "-") by
its text, and the phrase must write it: "a cat" is not "a 🐱 cat".
"""
from __future__ import annotations

import unicodedata
from typing import Callable, List, Optional, Sequence, Tuple

from .words import _is_word_char, _unspaced, clean_token, folded, is_variation_selector, phrase_key


def find_item(texts: Sequence[str], query: str) -> Optional[int]:
    """Index of the first of ``texts`` (explained items) that ``query`` names: spelled
    alike (:func:`clean_token`), else the words of ``query`` match the whole item as a
    target would (:func:`find_phrase`: alike in letters and digits, broken into words where
    the item is, "RED  circle" and "Red,Circle" name "red circle", "redcircle" does not; a
    word of symbols alone, "🐶", by its text); None if none."""
    want = clean_token(query)
    for k, t in enumerate(texts):
        if clean_token(t) == want:
            return k
    for k, t in enumerate(texts):
        words = t.split()
        if words and (0, len(words)) in find_phrase(words, query):
            return k
    return None


#: quotation marks compared as the straight ones a keyboard types ("’" of "don’t", "“" of a quote),
#: and the minus sign "−" as the "-" typed for it
_AS_TYPED = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                         "\u02bc": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
                         "\u2033": '"', "\u2212": "-"})


def symbol_text(s: str) -> str:
    """A word of symbols alone ("🐶", "&", "€", ","), as words and targets compare it: its
    text (:func:`clean_token`), in one Unicode form (:func:`dcam.words.folded`: the
    full-width "＆" is "&"), case-folded and without variation selectors ("❤" and "❤️" are one
    heart, drawn as text or as an emoji); every dash and the minus sign are "-" (the en dash "–"
    a model writes is the "-" a user types) and curly quotes are straight ones."""
    text = folded(clean_token(s)).translate(_AS_TYPED)
    return "".join("-" if unicodedata.category(ch) == "Pd" else ch for ch in text if not is_variation_selector(ch))


def _phrase_units(phrase: str) -> List[Tuple[bool, str]]:
    """(has letters, key) of each run of ``phrase``'s words: words with a letter or digit
    run together as one key of letters and digits (:func:`phrase_key`; the punctuation
    attached to them, "dog," "U.S.A.", is not matched), a word of symbols alone is a unit
    of its own keyed by its text (:func:`symbol_text`)."""
    units: List[Tuple[bool, str]] = []
    for w in phrase.split():
        key = phrase_key(w)
        if not key:
            units.append((False, symbol_text(w)))
        elif units and units[-1][0]:
            units[-1] = (True, units[-1][1] + key)
        else:
            units.append((True, key))
    return units


def _match_run(keys: Sequence[str], marks: Sequence[str], units: Sequence[Tuple[bool, str]],
               s: int) -> Optional[int]:
    """The stop of the run of items from ``s`` that spells ``units`` (:func:`_phrase_units`),
    or None: letters are matched across the items' keys, a symbol unit by an item's text
    (``marks``), and items without letters between the units (punctuation, symbols the
    phrase does not name) are kept in the run, for :func:`_names_spaced_symbols` to tell
    those written against a word from spaced ones; the run starts and ends on a unit's item."""
    e = s
    for u, (letters, want) in enumerate(units):
        while e < len(keys) and not keys[e] and u > 0 and not (not letters and marks[e] == want):
            e += 1  # an item without letters between two units (a spaced "," or "-"): kept
        if e >= len(keys):
            return None
        if not letters:
            if keys[e] or marks[e] != want:
                return None
            e += 1
            continue
        got = ""
        while e < len(keys) and len(got) < len(want):
            if keys[e]:
                got += keys[e]
                if not want.startswith(got):
                    return None
            elif not got:
                return None
            e += 1
        if got != want:
            return None
    return e


def find_phrase(words: Sequence[str], phrase: str,
                run_text: Optional[Callable[[int, int], str]] = None) -> List[Tuple[int, int]]:
    """``(start, stop)`` of every run of ``words`` (item texts) that is the phrase: consecutive
    words of the response, its letters and digits, joined, spelling the phrase's, and each word
    of symbols alone ("🐶", "&", "€", ",": a word dcam explains as one) an item spelled as it is
    (:func:`symbol_text`), in its place. Case and the punctuation written against a word
    ("dog," "U.S.A." "(dog)") are ignored, so "red circle" finds "red, circle"; but a word of
    the response made of symbols alone between spaces is a word the phrase must write, spaced
    or inside a word (:func:`_names_spaced_symbols`): "a cat" does not find "a 🐱 cat" or "a - cat",
    "blue-green" finds "blue - green" of a tokenizer that spaces punctuation. So "a 🐶" finds the
    "a" before the emoji only, "🐶 dog" the emoji and "dog", "," each ",". A symbol the phrase
    spaces may also be written inside the response's word: "blue - green" finds "blue-green",
    "$ 5" finds "$5" (not "blue green", which lacks the "-"). Dashes are one "-", curly quotes
    straight ones, full-width letters the usual ones (:func:`dcam.words.folded`).

    The words must break where the phrase's do (:func:`_same_breaks`): "anda" is not the
    "and a" of the response, nor "red circle" one word "redcircle". ``run_text(start,
    stop)``: the response's text of ``words[start:stop]`` (pieces of one word under
    ``granularity="tokens"``, words of an unspaced script, follow each other without a
    space; a "," against a word or a spaced one); where it is not given or spells other
    letters, the items are taken as words apart."""
    units = _phrase_units(phrase)
    if not units:
        return []
    want = "".join(key for letters, key in units if letters)
    keys = [phrase_key(w) for w in words]
    marks = [symbol_text(w) if not k else "" for w, k in zip(words, keys)]
    symbols = [key for letters, key in units if not letters]
    # a phrase that spaces a symbol the response writes inside a word ("blue - green" of "blue-green",
    # "rock & roll", "$ 5"): its letters spell a run whose text holds its symbols, in order
    attached = [(True, want)] if symbols and want else None
    out = []
    for s in range(len(keys)):
        for spelled in (units, attached):
            stop = None if spelled is None else _match_run(keys, marks, spelled, s)
            if stop is None or (s, stop) in out:
                continue
            text = run_text(s, stop) if run_text is not None else ""
            if phrase_key(text) != want:  # no text known (tokens that complete no character): words apart
                text = " ".join(words[s:stop])
            if (_same_breaks(text, phrase) and _names_spaced_symbols(text, phrase)
                    and (spelled is units or _holds_in_order(text, symbols))):
                out.append((s, stop))
    return out


def _holds_in_order(text: str, symbols: Sequence[str]) -> bool:
    """Whether ``text`` holds each of ``symbols`` (:func:`symbol_text` forms) one after another."""
    at, folded = 0, symbol_text(text)
    for sym in symbols:
        at = folded.find(sym, at)
        if at < 0:
            return False
        at += len(sym)
    return True


def _gaps(s: str) -> Tuple[str, List[str]]:
    """(:func:`phrase_key` of ``s``, the text before its first letter or digit, between each two
    of them and after the last): "a, 🐱 cat" is ("acat", ["", "", ", 🐱 ", "", "", ""])."""
    key, gaps = "", [""]
    for ch in folded(s):
        if _is_word_char(ch):
            key += ch
            gaps.append("")
        else:
            gaps[-1] += ch
    return key, gaps


def _breaks(s: str) -> Tuple[str, List[str]]:
    """(:func:`phrase_key` of ``s``, what stands between each two of its letters or digits): ``""``
    nothing, ``" "`` whitespace only, ``"."`` punctuation (with or without whitespace) or a
    character of an unspaced script on either side (its words are the tokenizer's: "日本の猫"
    and "日本 の 猫" are alike)."""
    key, gaps = _gaps(s)
    return key, ["." if _unspaced(a) or _unspaced(b) or (gap and not gap.isspace()) else " " if gap else ""
                 for a, b, gap in zip(key, key[1:], gaps[1:-1])]


def _names_spaced_symbols(text: str, phrase: str) -> bool:
    """Whether every word of ``text`` (the response's) made of symbols alone, standing between
    spaces ("🐱" of "a 🐱 cat", "-" of "a - cat"), is one the phrase writes at that place,
    spaced or inside a word ("blue-green" names the "-" of "blue - green"): a phrase is
    consecutive words of the response, and such a word is a word. Punctuation written
    against a word ("cat," "(cat)" "a🐱") is part of that word and needs no naming."""
    (key, gaps), (_, wanted) = _gaps(text), _gaps(phrase)
    for k, (gap, want) in enumerate(zip(gaps, wanted)):
        pieces = gap.split()
        if pieces and k > 0 and not gap[0].isspace():
            pieces = pieces[1:]  # written against the letter before
        if pieces and k < len(key) and not gap[-1].isspace():
            pieces = pieces[:-1]  # written against the letter after
        if pieces and not _holds_in_order(want, [symbol_text(x) for x in pieces]):
            return False
    return True


def _same_breaks(text: str, phrase: str) -> bool:
    """Whether ``text`` (of the response) and ``phrase`` (a target) spell the same letters and
    digits, broken into words at the same places: where one has whitespace between two
    letters, the other has a break too; punctuation on either side is ignored ("it's" is
    "its" and "it s", "blue-green" is "blue green" and "bluegreen")."""
    (key, gaps), (want, wanted) = _breaks(text), _breaks(phrase)
    return key == want and all(a == b or "." in (a, b) for a, b in zip(gaps, wanted))


def inside_a_token(words: Sequence[str], target: str) -> str:
    """Why a target or word asked of an unspaced script ("红" of the word "红色") is no word: its characters are
    part of a word the tokenizer made one token, whose map cannot be split; else ""."""
    key = phrase_key(target)
    if not key or not any(_unspaced(ch) for ch in key):
        return ""
    for w in words:
        if key in phrase_key(w) and key != phrase_key(w):
            return (f": it is part of the word {w!r} (in text without spaces a word is the characters one token "
                    f"spans, and a map is never split below a token)")
    return ""


#: the Unicode blocks of combining diacritical marks: accents ("é" is "e" + U+0301), not the vowel signs of
#: Devanagari or Thai, which make other words
_ACCENTS = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))


def _unaccented(s: str) -> str:
    """``s`` (:func:`folded`) without its accents ("Café" -> "cafe", "Ångström" -> "angstrom"): only to
    name, in a refusal, what a target that matches nothing may have meant; never to match."""
    return unicodedata.normalize("NFC", "".join(ch for ch in unicodedata.normalize("NFD", folded(s))
                                                if not any(a <= ord(ch) <= b for a, b in _ACCENTS)))


def _unaccented_key(s: str) -> str:
    return phrase_key(_unaccented(s))


def closest_run(words: Sequence[str], target: str,
                run_text: Optional[Callable[[int, int], str]] = None) -> str:
    """For a target :func:`find_phrase` does not find: the response's text of the first run of
    ``words`` whose letters and digits, accents left out, are the target's, where its words
    break, its accents or the symbols standing alone between its words differ ("café" for
    "cafe", "red circle" for "redcircle" or "red , circle", "red , circle" for "red circle"),
    holding the symbols other than punctuation the target names ("cat 🐶" is not "cat"); else "".
    A hint for the user, who types it as the response writes it: matching stays exact."""
    want = _unaccented_key(target)
    if not want:
        return ""
    # a symbol the target names alone that is no punctuation ("🐶" of "cat 🐶", "&") is what it asks for
    named = [symbol_text(w) for w in target.split() if not phrase_key(w)
             and not all(unicodedata.category(ch).startswith("P") for ch in symbol_text(w))]
    keys = [_unaccented_key(w) for w in words]
    for s in range(len(keys)):
        if not keys[s] or not want.startswith(keys[s]):
            continue
        got, e = "", s
        while e < len(keys) and len(got) < len(want) and want.startswith(got + keys[e]):
            got, e = got + keys[e], e + 1
            while e < len(keys) and not keys[e] and len(got) < len(want):
                e += 1  # a symbol alone between the words (a spaced ","): part of the run
        if got == want:
            text = run_text(s, e) if run_text is not None else ""
            text = text if phrase_key(text) == phrase_key(" ".join(words[s:e])) and text else " ".join(words[s:e])
            if _holds_in_order(text, named):
                return text
    return ""


def what_differs(written: str, target: str) -> str:
    """What keeps ``target`` from naming ``written`` (the response's text :func:`closest_run`
    found): "accents", "where the words break", "the punctuation or symbols standing alone
    between the words" (each that applies, joined with "and")."""
    why = []
    if phrase_key(written) != phrase_key(target):
        why.append("accents")
    if not _same_breaks(_unaccented(written), _unaccented(target)):
        why.append("where the words break")
    if sorted(symbol_text(w) for w in written.split() if not phrase_key(w)) != sorted(
            symbol_text(w) for w in target.split() if not phrase_key(w)):
        why.append("the punctuation or symbols standing alone between the words")
    return " and ".join(why)


def written_hint(near: str, target: str) -> str:
    """The clause a refusal adds for a target that names nothing when :func:`closest_run` (or
    :func:`closest_item`) found ``near``: "; the response writes 'café' (give it as written:
    accents must be the response's)"; "" when ``near`` is ""."""
    if not near:
        return ""
    why = what_differs(near, target)
    # (the run holds every symbol standing alone between the target's words: "red" and "circle" with 2,000
    # spaced "." between them made a line of 4,300 characters, where the response's words are listed up to 40)
    words = near.split()
    shown, cut = near, ""
    if len(words) > 2 * HINT_WORDS_EACH_END:
        shown = " ".join(words[:HINT_WORDS_EACH_END] + ["..."] + words[-HINT_WORDS_EACH_END:])
        cut = f"{len(words)} words, the middle {len(words) - 2 * HINT_WORDS_EACH_END} left out here; "
    return f"; the response writes {shown!r} ({cut}give it as written" + (
        f": {why} must be the response's)" if why else ")")


#: words of a near miss's run a refusal quotes from each end of a longer one (:func:`written_hint`)
HINT_WORDS_EACH_END = 20


def closest_item(texts: Sequence[str], query: str) -> str:
    """The first of ``texts`` (explained items) that ``query``, which :func:`find_item` does not
    find, spells but for accents, breaks or spaced symbols (:func:`closest_run`), else ""."""
    for t in texts:
        if closest_run(t.split(), query) == " ".join(t.split()):
            return t
    return ""
