"""Where the image tokens of one sequence are (:func:`locate_image_positions`)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ...errors import InputError


class SpanCountError(InputError):
    """An image span of ``found`` tokens where a grid needs ``needed`` (:func:`locate_image_positions`).
    An InputError where the grid or the sequence is the caller's input (a processor of another checkpoint,
    a ``grid=`` given by hand); :func:`located` turns it into the adapter's own mistake."""

    def __init__(self, found: int, needed: int, layout: str):
        super().__init__(f"image span has {found} tokens; {layout} needs {needed}")
        self.found, self.needed, self.layout = int(found), int(needed), layout


def located(adapter, input_ids: Tensor, grid: Tuple[int, int]) -> Tensor:
    """:meth:`ModelAdapter.locate`: :func:`locate_image_positions` with the adapter's own ids. Its grid
    and the sequence its ``prepare()`` built are both the adapter's (a prompt or response that holds
    the image token is refused before, or by the adapter), so a span of another count is a bug of the
    adapter, not bad input: a RuntimeError naming it and both counts. But for a span that fits the grid
    with the other ``newline_column``, an option the caller gives the adapter: an InputError naming it."""
    try:
        return locate_image_positions(input_ids, adapter.image_token_id, grid, adapter.newline_column,
                                      adapter.newline_token_id)
    except SpanCountError as exc:
        h, w = int(grid[0]), int(grid[1])
        if adapter.newline_column and exc.found == h * w:
            raise InputError(f"newline_column: True, but the image span has {exc.found} tokens, a {h}x{w} grid "
                             "without a newline slot; leave newline_column out") from None
        if not adapter.newline_column and exc.found == h * (w + 1):
            raise InputError(f"newline_column: the image span has {exc.found} tokens, {h} rows of {w} and a newline "
                             "slot each; pass newline_column=True") from None
        newline = " with a newline column" if adapter.newline_column else ""
        raise RuntimeError(f"{type(adapter).__name__}.locate(): the grid it was given, {h}x{w}{newline}, needs "
                           f"{exc.needed} image tokens, but the sequence holds {exc.found} (image token id "
                           f"{int(adapter.image_token_id)}): the adapter's grid and the sequence its prepare() built "
                           "disagree") from None


def no_image_token(image_token_id: int) -> InputError:
    """The error of an input sequence without the model's image token: the processor that made it
    put another model's tokens where the image goes."""
    return InputError(f"processor: the input sequence it made holds no image token of this model (id "
                      f"{image_token_id}); pass the processor of the model's own checkpoint")


def locate_image_positions(input_ids: Tensor, image_token_id: int, grid: Tuple[int, int],
                           newline_column: bool = False, newline_token_id: Optional[int] = None) -> Tensor:
    """Positions (int64 ``[h*w]``, raster order) of the image tokens of one sequence.

    The span is found from ``image_token_id`` alone. With ``newline_column``
    (LaViDa / LLaVA-NeXT style grids that append an image-newline token after
    every row), the span holds ``h * (w + 1)`` tokens, either all with the image
    token id (the newline embedding is scattered into the last slot of each
    row) or with ``newline_token_id`` on the newline slots (those of the image
    block alone: between its first and last image token and right after the
    last; that id elsewhere is text); the span is viewed
    as ``h x (w + 1)`` and its last column dropped before the reshape to
    ``h x w``. Raises :class:`SpanCountError` (an InputError) when the count does not match the grid.
    """
    ids = input_ids.reshape(-1)
    h, w = int(grid[0]), int(grid[1])
    is_img = ids == int(image_token_id)
    n_img = int(is_img.sum())
    if newline_column and newline_token_id is not None and n_img and n_img != h * (w + 1):
        # only the newline tokens of the image block (from its first image token to the slot right after
        # its last): text before or after it may hold that id too (a response's own newline word)
        first, last = torch.nonzero(is_img, as_tuple=False).reshape(-1)[[0, -1]].tolist()
        in_block = torch.zeros_like(is_img)
        in_block[first:last + 2] = True
        is_img = is_img | ((ids == int(newline_token_id)) & in_block)
    pos = torch.nonzero(is_img, as_tuple=False).reshape(-1)
    if pos.numel() == 0:
        raise no_image_token(image_token_id)
    if newline_column:
        if pos.numel() != h * (w + 1):
            raise SpanCountError(pos.numel(), h * (w + 1), f"a {h}x{w} grid with a newline column")
        return pos.reshape(h, w + 1)[:, :w].reshape(-1).clone()
    if pos.numel() != h * w:
        raise SpanCountError(pos.numel(), h * w, f"a {h}x{w} grid")
    return pos


__all__ = ["SpanCountError", "locate_image_positions", "located", "no_image_token"]
