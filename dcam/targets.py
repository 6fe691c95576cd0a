"""Which parts of a response an explanation explains: words, word pieces
(tokens) or phrases.

The explainable tokens of a response are its slots before the first eos that
are not pad/eos/mask ids. They are grouped into *items*, one map each:

* ``granularity="words"`` (the default): the tokens of one word are one item; a
  special token of the tokenizer (``<|im_end|>``, Idefics3's ``<row_2_col_4>``,
  but for the unknown token) is no word: left out as eos/pad slots are, with a
  note that counts them (:class:`dcam.example.ExampleBuilder`)
  (:func:`dcam.words.word_pieces`); its score is the sum of its tokens' scores,
  so one word is one gradient, one map. On a word-level vocabulary a word is
  one token.
* ``granularity="tokens"``: every token its own item, special tokens included.
* phrases: a target string of several words (``"red circle"``) is one item
  made of all their tokens.

``targets``: ``"all"`` (every item), ``"words"`` / ``"tokens"`` (every item of
that granularity, whatever ``granularity`` says; the literal word "words" is
``["words"]``), an int or a list of ints (item numbers
counted from 0, negative from the end), a word or phrase or a list of them
(case-insensitive, the punctuation written against a word ignored, a word of symbols alone such
as an emoji matched by its text, its words breaking where the response's do: "anda" is not
"and a"; a phrase is consecutive words of the response, so "a cat" is not "a 🐱 cat"
(:func:`dcam.phrases.find_phrase`); every occurrence; an empty one is an InputError). Item numbers never
count eos/pad slots, nor special tokens among words. Unknown words and numbers out of range are InputErrors
naming ``targets`` (a special token of the response asked as a word: its line gives the token's number).

Targets written as one text (``dcam explain --tokens``, a run manifest's
``"targets"`` string) are read by :func:`parse_target_text`: commas ("，" and "、" too) separate
the targets, so ``"red circle"`` is one phrase and ``"red, circle"`` two words;
a target in double quotes is that text, commas and digits included
(``"\"1,000\", 3"`` is the word 1,000 and word number 3).
"""
from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from .errors import InputError
from .phrases import closest_run, find_phrase, inside_a_token, written_hint
from .words import token_text, word_pieces

GRANULARITIES = ("words", "tokens")


@dataclass
class Item:
    """One explained item: its text, its number among the response's items of
    that granularity (None for a phrase), and the response indices of its tokens."""

    text: str
    number: int
    slots: List[int]


def repeat_ratio(ids: Sequence[int]) -> float:
    """Distinct ids occurring more than once / number of tokens (0 for none): SICD's rho."""
    ids = list(ids)
    if not ids:
        return 0.0
    counts: dict = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    return sum(1 for c in counts.values() if c > 1) / len(ids)


def explainable_slots(response_ids: Sequence[int], skip_ids, eos_ids) -> List[int]:
    """Response indices of the explainable tokens (before the first eos, no pad/eos/mask id)."""
    out = []
    for i, t in enumerate(response_ids):
        if t in eos_ids:
            break
        if t not in skip_ids:
            out.append(i)
    return out


def check_granularity(granularity) -> str:
    """``granularity`` when it is one of :data:`GRANULARITIES`, else an InputError naming it."""
    if granularity not in GRANULARITIES:
        raise InputError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    return granularity


def items_asked(targets, granularity: str) -> Tuple[str, object]:
    """(granularity, targets) of a request: ``targets="words"`` or ``"tokens"`` asks for
    every item of that granularity (the issue's spelling of ``granularity=``, with ``"all"``)."""
    if isinstance(targets, str) and targets in GRANULARITIES:
        return targets, "all"
    return granularity, targets


def response_items(slots: List[int], token_strings: Sequence[str], granularity: str, text: str,
                   spans: Sequence[Tuple[int, int]], alone: Sequence[str]) -> List[Item]:
    """The response's items from the explainable ``slots``: their ``token_strings`` and
    :func:`dcam.words.token_spans` of their ids (decoded ``text``, ``spans``, ``alone``)."""
    check_granularity(granularity)
    if granularity == "tokens":
        return [Item(token_text(text, spans[k], alone[k], token_strings[k]), k, [slots[k]])
                for k in range(len(slots))]
    groups = word_pieces(text, spans, alone, token_strings)
    return [Item(word, n, [slots[k] for k in toks]) for n, (toks, word) in enumerate(groups)]


def _listed(words: List[str], most: int = 40) -> str:
    """The response's words for a message: the first ``most`` of a long one (a 2,000-token
    response's message ran to 3,400 characters)."""
    if len(words) <= most:
        return " ".join(words)
    return " ".join(words[:most]) + f" ... and {len(words) - most} more"


def select_items(items: List[Item], targets, text_of=None) -> List[Item]:
    """The items ``targets`` asks for, in response order (see the module docstring).
    ``text_of(slots)``: the response's text over those slots, a phrase's name (else its
    items' texts joined with spaces: "red circ le" of the pieces "circ" "le", "日本 の 猫"
    of a phrase written without spaces) and where its words break (else every item is a
    word apart: "circle" finds no "circ" "le")."""
    if not items:
        raise InputError("the response has no word to explain (only eos/pad tokens)")
    words = [it.text for it in items]

    def run_text(start: int, stop: int) -> str:
        return text_of([slot for x in items[start:stop] for slot in x.slots]) if text_of is not None else ""

    wanted = targets_asked(targets)
    if wanted == "all":
        return list(items)
    chosen = {}
    for it in wanted:
        if isinstance(it, numbers.Integral) and not isinstance(it, bool):
            k = int(it)
            if not -len(items) <= k < len(items):
                raise InputError(f"targets: word number {k} is out of range for a response of {len(items)} "
                                 f"words ({_listed(words)})")
            chosen[(k % len(items),)] = items[k % len(items)]
        elif isinstance(it, str):
            runs = find_phrase(words, it, run_text)
            if not runs:
                kind = "phrase" if len(it.split()) > 1 else "word"
                near = written_hint(closest_run(words, it, run_text), it)
                raise InputError(f"targets: {kind} {it!r} is not in the response{inside_a_token(words, it)}{near} "
                                 f"(words: {_listed(words)})")
            for start, stop in runs:
                span = items[start:stop]
                slots = [slot for x in span for slot in x.slots]
                name = (text_of(slots) if text_of is not None else "") or " ".join(x.text for x in span)
                chosen[tuple(range(start, stop))] = span[0] if len(span) == 1 else Item(name, span[0].number, slots)
    return [chosen[k] for k in sorted(chosen)]


def targets_asked(targets):
    """``"all"`` or the list of word numbers and words ``targets`` names, checked as far as
    no response is needed (a batch checks its shared targets once, before any generation)."""
    if isinstance(targets, str) and targets == "all":
        return "all"
    if isinstance(targets, (str, numbers.Integral)):
        wanted = [targets]
    elif isinstance(targets, (bytes, bytearray, memoryview)):  # (read as word numbers: b"red" as 114, 101, 100)
        raise InputError(f"targets must be 'all', word numbers or words, got {type(targets).__name__}; decode the "
                         "bytes to text")
    else:
        try:
            wanted = list(targets)
        except TypeError:  # None, a float, ...: not truncated to a word number
            raise InputError(f"targets must be 'all', word numbers or words, got {targets!r}") from None
    if not wanted:
        raise InputError("targets is empty")
    for it in wanted:
        if not (isinstance(it, str) or (isinstance(it, numbers.Integral) and not isinstance(it, bool))):
            raise InputError(f"targets must be 'all', word numbers or words, got {it!r}")
        if isinstance(it, str) and not it.strip():  # (it was "word '' is not in the response")
            raise InputError(f"targets: {it!r} is an empty target; give a word, a phrase or a word number")
    return wanted


def parse_target_text(text: str):
    """``targets`` written as one text -> ``"all"`` or a list for :func:`select_items`.

    ``"all"`` alone is every item. Otherwise commas separate the targets (the full-width
    "，" and the ideographic "、" too: :data:`TARGET_SEPARATORS`); each is
    a word, a phrase (words separated by spaces: ``"red circle"`` is one map),
    or word numbers (``"0"``, ``"-1"``; ``"0 -1"`` is two numbers, as there is
    no phrase of numbers to mean). A target in double quotes is its text as
    written: ``"1,000"`` the number word (commas and digits were read as the
    word numbers 1 and 0), ``"3"`` the word 3. Empty pieces between commas are
    skipped. A text with no target at all is a ValueError, for the caller to name
    its own argument: an empty ``--tokens ""`` asks for nothing, not for all."""
    parts = [(" ".join(p.split()), quoted) for p, quoted in _comma_pieces(text)]
    parts = [(p, quoted) for p, quoted in parts if p]
    if not parts:
        raise ValueError(f"{text!r} names no word, phrase or word number (\"all\" explains every word)")
    if parts == [("all", False)]:
        return "all"
    out: list = []
    for p, quoted in parts:
        words = p.split(" ")
        as_numbers = [w.translate(_FULL_WIDTH_NUMBER) for w in words]  # a full-width "０" or "－１" too, not "²"
        if not quoted and all(re.fullmatch(r"-?[0-9]+", w) for w in as_numbers):
            out.extend(int(w) for w in as_numbers)
        else:
            out.append(p)
    return out


#: the full-width digits and minus of an East Asian keyboard as the ASCII ones of a word number
_FULL_WIDTH_NUMBER = str.maketrans({**{chr(0xFF10 + d): str(d) for d in range(10)}, "\uff0d": "-"})

#: what separates targets written as one text: the comma, and the full-width comma and the
#: ideographic (enumeration) comma a Chinese or Japanese keyboard types for it ("红色，圆圈", "红色、圆圈")
TARGET_SEPARATORS = (",", "\uff0c", "\u3001")


def _comma_pieces(text: str) -> List[Tuple[str, bool]]:
    """(piece, quoted) of ``text`` split at the commas (:data:`TARGET_SEPARATORS`) outside double quotes."""
    out: List[Tuple[str, bool]] = []
    cur: List[str] = []
    quoted = inside = False
    for ch in text:
        if ch == '"':
            inside, quoted = not inside, True
        elif ch in TARGET_SEPARATORS and not inside:
            out.append(("".join(cur), quoted))
            cur, quoted = [], False
        else:
            cur.append(ch)
    if inside:
        raise ValueError(f"{text!r} opens a double quote it does not close")
    out.append(("".join(cur), quoted))
    return out


__all__ = ["parse_target_text", "Item", "GRANULARITIES", "check_granularity", "repeat_ratio", "explainable_slots", "response_items", "select_items",
           "targets_asked"]
