"""Words and tokens: how a response's tokens become the words a person reads.

* :func:`clean_token`: a token string as a word (sub-word markers removed, lower case);
* :func:`normalise_word`: letters and digits only, for matching across tokenizers;
* :func:`split_words`: a caption's words, punctuation stripped;
* :func:`align_words`: which response tokens make up each word;
* :data:`FUNCTION_WORDS`: closed-class English words (ground truth "nothing" in the evaluation).
"""
from __future__ import annotations

import re
from typing import List, Sequence

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


def split_words(caption: str) -> List[str]:
    """Lower-case words of a caption, punctuation stripped from their ends
    (empty pieces dropped)."""
    out = []
    for tok in caption.lower().split():
        tok = _PUNCT.sub("", tok)
        if tok:
            out.append(tok)
    return out



_ALNUM = re.compile(r"[^0-9a-z]+")


def normalise_word(s: str) -> str:
    """Letters and digits of a word or token, lower case (markers removed)."""
    return _ALNUM.sub("", clean_token(s))


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

_MARKERS = ("\u2581", "\u0120", " ")  # sentencepiece, byte-level BPE, plain space: "a new word starts here"


def is_punctuation(token: str) -> bool:
    """A token with no letter or digit (markers removed)."""
    return not normalise_word(token)


def word_pieces(tokens: Sequence[str]) -> List[List[int]]:
    """Group a response's token strings into words: indices of the tokens of each word.

    A token starts a new word when it carries a word-start marker
    (sentencepiece ``▁``, byte-level BPE ``Ġ``, a leading space), when it or
    the token before it is punctuation, or, for WordPiece, unless it starts
    with ``##``. A tokenizer without markers (word-level vocabularies) gives
    one word per token."""
    marker_style = any(t.startswith(_MARKERS) for t in tokens)
    wordpiece_style = not marker_style and any(t.startswith("##") for t in tokens)
    groups: List[List[int]] = []
    for i, t in enumerate(tokens):
        if not groups or is_punctuation(t) or is_punctuation(tokens[i - 1]):
            starts = True
        elif marker_style:
            starts = t.startswith(_MARKERS)
        elif wordpiece_style:
            starts = not t.startswith("##")
        else:  # word-level vocabulary
            starts = True
        if starts:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def piece_text(tokens: Sequence[str]) -> str:
    """The text of a word made of ``tokens`` (markers removed, lower case)."""
    return "".join(clean_token(t) if k == 0 else clean_token(t).lstrip() for k, t in enumerate(tokens)).strip()


def find_phrase(words: Sequence[str], phrase: str) -> List[int]:
    """Start indices of every run of ``words`` (cleaned word texts) equal to ``phrase``'s words."""
    want = [w for w in (normalise_word(p) for p in phrase.split()) if w]
    have = [normalise_word(w) for w in words]
    if not want:
        return []
    return [i for i in range(len(have) - len(want) + 1) if have[i:i + len(want)] == want]
