"""Typed reads of the JSON objects dcam writes and reads back: a saved explanation's ``meta.json``
(:mod:`dcam.saved`) and a run's index lines (:mod:`dcam.runs.reader`). A field of the wrong kind is an
:class:`~dcam.errors.InputError` on one line naming the file, the place in it and the field."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

from .errors import InputError, one_line, shown
from .render.cells import check_cells

#: ``default`` of a field that must be there
MISSING = object()


def whole(x) -> bool:
    """A JSON whole number (``true`` is not one)."""
    return isinstance(x, int) and not isinstance(x, bool)


def finite_number(x) -> bool:
    """A finite JSON number (``true`` is not one)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class Fields:
    """Typed reads of one JSON object dcam wrote (``where``: the file and place it is read from, which
    begins every message): a value of the wrong kind is an InputError naming that place and the
    field (it was a bare TypeError or ValueError, or a float step count silently truncated)."""

    def __init__(self, obj: Dict[str, Any], where: str):
        self.obj, self.where = obj, where

    def bad(self, key: str, want: str):
        return InputError(f"{self.where}: {key} must be {want}, got {shown(self.obj.get(key))}")

    def value(self, key: str, default=MISSING):
        if key not in self.obj:
            if default is MISSING:
                raise InputError(f"{self.where} lacks {key!r}")
            return default
        return self.obj[key]

    def int(self, key: str, default=MISSING, none: bool = False, lo: Optional[int] = None) -> Optional[int]:
        v = self.value(key, default)
        if v is None and none:
            return None
        if not whole(v) or (lo is not None and v < lo):
            raise self.bad(key, "a whole number" + (f" >= {lo}" if lo is not None else "")
                            + (" or null" if none else ""))
        return v

    def text_lists(self, key: str) -> List[List[str]]:
        v = self.value(key, [])
        if not isinstance(v, list) or not all(isinstance(p, list) and all(isinstance(x, str) for x in p)
                                              for p in v):
            raise self.bad(key, "a list of lists of texts")
        return [list(p) for p in v]

    def counts(self, key: str) -> Dict[str, int]:
        v = self.value(key, {})
        if not isinstance(v, dict) or not all(whole(x) for x in v.values()):
            raise self.bad(key, "an object of whole numbers")
        return dict(v)

    def number(self, key: str, default=MISSING, lo: Optional[float] = None, hi: Optional[float] = None) -> float:
        v = self.value(key, default)
        if not finite_number(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.bad(key, "a finite number" + (f" in [{lo:g}, {hi:g}]" if lo is not None else ""))
        return float(v)

    def text(self, key: str, default=MISSING, none: bool = False) -> Optional[str]:
        v = self.value(key, default)
        if (v is None and none) or isinstance(v, str):
            return v
        raise self.bad(key, "a text" + (" or null" if none else ""))

    def texts(self, key: str, default=MISSING) -> List[str]:
        v = self.value(key, default)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.bad(key, "a list of texts")
        return list(v)

    def ints(self, key: str) -> List[int]:
        v = self.value(key)
        if not isinstance(v, list) or not all(whole(x) for x in v):
            raise self.bad(key, "a list of whole numbers")
        return list(v)

    def int_lists(self, key: str) -> List[List[int]]:
        v = self.value(key)
        if not isinstance(v, list) or not all(isinstance(p, list) and all(whole(x) for x in p) for p in v):
            raise self.bad(key, "a list of lists of whole numbers")
        return [list(p) for p in v]

    def grid(self) -> Tuple[int, int]:
        v = self.value("grid")
        if not isinstance(v, list) or len(v) != 2 or not all(whole(x) and x > 0 for x in v):
            raise self.bad("grid", "two positive whole numbers [h, w]")
        return (v[0], v[1])

    def box(self, key: str = "box", default=(0.0, 0.0, 1.0, 1.0)) -> Tuple[float, float, float, float]:
        v = self.value(key, list(default))
        if not isinstance(v, list) or len(v) != 4 or not all(finite_number(x) for x in v) \
                or not (v[0] < v[2] and v[1] < v[3]):
            raise self.bad(key, "4 finite numbers [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
        return tuple(float(x) for x in v)

    def cells(self, key: str, grid, box):
        """A stitched map's column and row centres inside its ``box`` (none saved: an even map, or a save
        from before they were kept)."""
        try:
            return check_cells(self.value(key, None), grid, box, key)
        except InputError:
            raise self.bad(key, f"null or {{x: {grid[1]} centres, y: {grid[0]} centres}} inside the box") from None

    def choice(self, key: str, choices, default=MISSING, none: bool = False):
        v = self.value(key, default)
        if (v is None and none) or (isinstance(v, str) and v in choices):
            return v
        raise self.bad(key, f"one of {', '.join(sorted(choices))}" + (" or null" if none else ""))

    def response_ids(self) -> List[int]:
        """The response's ids, one per token of ``response_tokens`` (the texts of those ids)."""
        ids, tokens = self.ints("response_ids"), self.texts("response_tokens")
        if len(ids) != len(tokens):
            raise InputError(f"{self.where}: response_ids must have one id per token of response_tokens "
                             f"({len(tokens)}), got {len(ids)}")
        return ids

    def items(self, what: str, response_ids: List[int], one_token_items: bool = False):
        """(tokens, {token_ids, word_numbers, response_indices}, pieces) of the explained items
        (``what``: what they are, for messages), one entry each; each item's pieces are slots of the
        response (``response_ids``), the first its ``response_indices`` entry. ``one_token_items``: an
        object without ``pieces`` is one written when every item was one token (a saved explanation
        before dcam kept pieces): each item's pieces are its ``response_indices`` slot alone."""
        tokens = self.texts("tokens")
        ids = {k: self.ints(k) for k in ("token_ids", "word_numbers", "response_indices")}
        if one_token_items and "pieces" not in self.obj:
            pieces = [[slot] for slot in ids["response_indices"]]
        else:
            pieces = self.int_lists("pieces")
        if any(len(v) != len(tokens) for v in (*ids.values(), pieces)):
            raise InputError(f"{self.where}: tokens, token_ids, word_numbers, response_indices and pieces must have "
                             f"one entry per {what}")
        # (no order is asked of an item's slots: a phrase's are its words' slots word after word, and
        # a word's need not be next to each other, a token with no text of its own between them)
        L = len(response_ids)
        for k, slots in enumerate(pieces):
            if not slots or not all(0 <= s < L for s in slots) or slots[0] != ids["response_indices"][k]:
                raise InputError(f"{self.where}: pieces[{k}] must be slots of the {L}-token response starting at "
                                 f"response_indices[{k}] ({ids['response_indices'][k]}), got {slots}")
        return tokens, ids, pieces

    def config(self, key: str = "config") -> Optional[CamConfig]:
        from .ops.config import CamConfig

        v = self.value(key, None)
        if v is None:
            return None
        if not isinstance(v, dict):
            raise self.bad(key, "an object of CamConfig fields")
        try:
            return CamConfig(**v)
        except InputError as exc:
            raise InputError(f"{self.where}: {key}: {one_line(exc)}") from None


__all__ = ["Fields", "MISSING", "whole", "finite_number"]
