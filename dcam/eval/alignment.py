"""From an explanation's items to the maps of a caption's words.

An explanation has one map per item (a word, a word piece or a phrase); a
data set scores the words of its caption. :func:`word_items` aligns the two
(:func:`dcam.words.align_words` on the items' texts, which are read off the
tokenizer's decoding: a token string is the tokenizer's internal spelling,
"çĮ«" for "猫" in byte-level BPE) and :func:`word_maps` gives every caption
word the mean of the maps of the items that cover it. Maps
of a model that saw a crop of the image (``explanation.box``) are placed on
the whole image first (a stitched map's cells on the pixels they were read
from, ``explanation.cells``), so a word's map is scored where the model looked.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from ..render.overlay import FULL_BOX, map_on_image
from ..words import align_words


def item_slots(e) -> List[List[int]]:
    """Response slots of each explained item (a word of several tokens has several)."""
    pieces = getattr(e, "pieces", None)
    if pieces:
        return [list(p) for p in pieces]
    return [[int(i)] for i in e.response_indices]


def on_image(e, maps: Tensor) -> Tensor:
    """``maps [T, h, w]`` as the explanation's image sees them: unchanged when they
    cover the whole image evenly, else placed in ``e.box`` (each cell at ``e.cells``, a stitched
    map's) of a map the image's size."""
    box, cells = tuple(getattr(e, "box", FULL_BOX)), getattr(e, "cells", None)
    if box == FULL_BOX and cells is None:
        return maps
    W, H = e.image.size
    return torch.stack([torch.from_numpy(map_on_image(m, (H, W), box, cells)) for m in maps])


def word_items(e, words: Sequence[str]) -> List[List[int]]:
    """Indices of the explained items that cover each word of ``words``."""
    return align_words(list(words), list(e.tokens))


def word_slots(e, words: Sequence[str]) -> List[List[int]]:
    """Response slots of each word of ``words`` (those of the items covering it)."""
    slots = item_slots(e)
    return [sorted({s for k in ks for s in slots[k]}) for ks in word_items(e, words)]


def word_maps(e, words: Sequence[str], maps: Optional[Tensor] = None, placed: bool = True) -> Dict[int, Tensor]:
    """Map of every word of ``words`` the explanation covers (index -> ``[h, w]``):
    the mean of the maps of its items. ``maps``: other maps of the same items
    (e.g. an ablation's refinement of ``e.raw_maps``). ``placed``: as the image sees
    them (:func:`on_image`); False: on the token grid, as the model produced them."""
    maps = (e.maps if maps is None else maps).float()
    maps = on_image(e, maps) if placed else maps
    return {i: maps[ks].mean(dim=0) for i, ks in enumerate(word_items(e, words)) if ks}


__all__ = ["word_maps", "word_items", "word_slots", "item_slots", "on_image"]
