"""A multi-view model on the bundled toy dMLLM, for tests of views (``view="all"``,
per-view maps, saves of them): its 8x8 grid presented as two views."""
from __future__ import annotations

import dataclasses

from ..probe.adapters.base import ImageView
from ..probe.adapters.shapes import ShapesAdapter


class TwoViewAdapter(ShapesAdapter):
    """The toy model with its 8x8 grid presented as two views, the top and bottom halves."""

    def prepare(self, image, prompt=None, response_ids=None, response_length=None):
        p = super().prepare(image, prompt, response_ids, response_length)
        pos = p.image_positions
        views = {"top": ImageView("top", pos[:32], (4, 8), (0, 0, 1, 0.5)),
                 "bottom": ImageView("bottom", pos[32:], (4, 8), (0, 0.5, 1, 1))}
        return dataclasses.replace(p, views=views)
