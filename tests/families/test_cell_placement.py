"""Every cell of a stitched anyres map is drawn on the pixels its tile's tokens were read from.

A tower whose patches do not fill the tile (SigLIP at 384 px with 14-px patches reads 378 px) leaves
an unread strip at the end of every tile side; between two tiles the strip lies inside the stitched
map's box, so a map drawn evenly over the box put inner cells up to 0.21 of a cell (2 tiles a side)
away from where they were read. The column and row centres (``Cells``) place each cell; the pixel
spans here are worked out from the tile geometry (tile side, patch side), not by the code under test.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dcam
from dcam.errors import InputError
from dcam.eval.alignment import on_image
from dcam.eval.faithfulness import _cell_index
from dcam.probe.adapters import auto_adapter
from dcam.probe.adapters.anyres import anyres_layout
from dcam.render.cells import Cells, even_cells, upsample_through
from dcam.render.overlay import colorize, map_on_image
from dcam.testing.hf_tiny import tiny_llava_onevision

SIGLIP = dict(tile=384, patch=14, unit=27)  # so400m-patch14-384: 27 patches of 14 px, 378 of 384 px read


def _read_spans(tiles: int, tile: int, patch: int, unit: int) -> np.ndarray:
    """[tiles * unit, 2]: first and last-plus-one canvas pixel each stitched cell was read from."""
    f = np.arange(tiles * unit)
    start = tile * (f // unit) + patch * (f % unit)
    return np.stack([start, start + patch], axis=1)


def _tent(n: int, centres: np.ndarray, k: int) -> np.ndarray:
    """The weight of cell k at the centre of each of n pixels when interpolating linearly between
    neighbouring cells' centres (hand formula: rising from the previous centre, falling to the next)."""
    p = np.arange(n) + 0.5
    w = np.zeros(n)
    if k > 0:
        a, b = centres[k - 1], centres[k]
        rise = (p >= a) & (p <= b)
        w[rise] = (p[rise] - a) / (b - a)
    else:
        w[p <= centres[0]] = 1.0
    if k < len(centres) - 1:
        b, c = centres[k], centres[k + 1]
        fall = (p >= b) & (p <= c)
        w[fall] = (c - p[fall]) / (c - b)
    else:
        w[p >= centres[-1]] = 1.0
    return w


def test_siglip_2x2_cells_sit_on_the_pixels_they_read():
    # a 768 x 768 image fills the 768 x 768 pinpoint (2 x 2 tiles) exactly: image pixels are canvas pixels
    lay = anyres_layout((768, 768), [[768, 768]], SIGLIP["tile"], SIGLIP["unit"], wh_pinpoints=False,
                        rounding="hf", seen=378 / 384)
    spans = _read_spans(2, **SIGLIP)
    assert spans[26].tolist() == [364, 378] and spans[27].tolist() == [384, 398]  # the strip 378..383 unread
    centres = spans.mean(axis=1)
    assert lay.grid == (54, 54) and lay.box == pytest.approx((0.0, 0.0, 762 / 768, 762 / 768), abs=1e-12)
    np.testing.assert_allclose(np.asarray(lay.cells.x) * 768, centres, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(lay.cells.y) * 768, centres, rtol=0, atol=1e-9)
    # the worst offset from the pixels read, in cells: 0.21 drawn evenly over the box, 0 now
    even = np.asarray(even_cells(lay.box, lay.grid).x) * 768
    assert np.abs(even - centres).max() / 14 == pytest.approx((26.5 * 762 / 54 - 371) / 14, abs=1e-9)
    assert (26.5 * 762 / 54 - 371) / 14 == pytest.approx(0.21, abs=0.005)
    assert np.abs(np.asarray(lay.cells.x) * 768 - centres).max() / 14 < 1e-9


def test_siglip_cells_of_an_unpadded_image_keep_its_kept_rows():
    # 768 wide x 500 high into the 768 x 768 pinpoint: scaled 768 x 500 from canvas row 134. Of the 54
    # feature rows the unpad keeps int(round(500 * 54 / 768)) = 35 rounded to (54 - 35) // 2 = 9 cut a side:
    # rows 9..44, read from canvas rows 14 * 9 = 126 on (tile 1) to 384 + 14 * 17 + 14 = 636 (tile 2)
    lay = anyres_layout((500, 768), [[768, 768]], SIGLIP["tile"], SIGLIP["unit"], wh_pinpoints=False,
                        rounding="hf", seen=378 / 384)
    spans = _read_spans(2, **SIGLIP)[9:45]
    assert lay.grid == (36, 54)
    np.testing.assert_allclose(np.asarray(lay.cells.y) * 500 + 134, spans.mean(axis=1), rtol=0, atol=1e-9)
    assert lay.box[1] * 500 + 134 == pytest.approx(126) and lay.box[3] * 500 + 134 == pytest.approx(636)


def test_a_resized_map_and_a_wholly_read_tile_keep_the_even_box():
    # anyres_max_1 shrinks the 54 x 54 map to 27 x 27: its cells mix tiles, so the even box stays;
    # a tower that reads whole tiles (CLIP 336/14) has even cells already
    lay = anyres_layout((768, 768), [[768, 768]], 384, 27, wh_pinpoints=False, rounding="hf", seen=378 / 384,
                        max_tiles=1)
    assert lay.grid == (27, 27) and lay.cells is None and lay.box == pytest.approx((0, 0, 762 / 768, 762 / 768))
    lay = anyres_layout((672, 672), [[672, 672]], 336, 24, wh_pinpoints=False, rounding="hf", seen=1.0)
    assert lay.cells is None and lay.box == (0.0, 0.0, 1.0, 1.0)


def test_one_hot_cell_lands_on_the_pixels_it_read():
    lay = anyres_layout((768, 768), [[768, 768]], 384, 27, wh_pinpoints=False, rounding="hf", seen=378 / 384)
    centres = _read_spans(2, **SIGLIP).mean(axis=1)
    m = np.zeros((54, 54), dtype=np.float32)
    m[26, 27] = 1.0  # the last row of the top tiles, the first column of the right ones
    up = map_on_image(m, (768, 768), lay.box, lay.cells)
    want = np.zeros((768, 768))
    want[:762, :762] = np.outer(_tent(762, centres, 26), _tent(762, centres, 27))  # the box is 762 px a side
    np.testing.assert_allclose(up, want, rtol=0, atol=1e-6)
    y, x = np.unravel_index(np.argmax(up), up.shape)
    assert 364 <= y < 378 and 384 <= x < 398  # the peak on the cell's own pixels
    # hand-worked: row 26 is centred at 371 (row 25 at 357), column 27 at 391 (its neighbours at 371 and 405)
    assert up[370, 380] == pytest.approx((370.5 - 357) / 14 * (380.5 - 371) / 20, abs=1e-6)
    assert up[370, 400] == pytest.approx((370.5 - 357) / 14 * (405 - 400.5) / 14, abs=1e-6)


@pytest.mark.parametrize("hw, size, box", [((4, 4), (64, 64), (0.0, 0.0, 1.0, 1.0)),
                                           ((54, 54), (768, 768), (0.0, 0.0, 762 / 768, 762 / 768)),
                                           ((7, 5), (100, 37), (0.1, -0.2, 0.93, 1.1)),
                                           ((3, 9), (13, 211), (0.05, 0.07, 0.77, 0.99)),
                                           ((1, 6), (20, 20), (0.0, 0.0, 1.0, 1.0))])
def test_even_centres_give_exactly_todays_bilinear(hw, size, box):
    # evenly spaced centres: F.interpolate(bilinear, align_corners=False) over the box, here in float64
    # (torch's float32 kernel rounds its own source coordinates: up to ~6e-6 off float64 for 54 -> 762)
    m = np.random.default_rng(0).random(hw)
    from dcam.render.overlay import box_pixels

    x0, y0, x1, y1 = box_pixels(box, size)
    ref = F.interpolate(torch.tensor(m)[None, None], size=(y1 - y0, x1 - x0), mode="bilinear",
                        align_corners=False)[0, 0].numpy()
    got = upsample_through(m, (y1 - y0, x1 - x0), box, even_cells(box, hw))
    np.testing.assert_allclose(got, ref.astype(np.float32), rtol=0, atol=1e-7)
    # and the placed map: the even path's float32 result within float32 rounding of it
    even = map_on_image(m.astype(np.float32), size, box)
    placed = map_on_image(m.astype(np.float32), size, box, even_cells(box, hw))
    np.testing.assert_allclose(placed, even, rtol=0, atol=1e-5)


def test_bad_cells_are_refused_naming_them():
    m = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(InputError, match=r"^cells\.x must be 3 finite increasing centres"):
        map_on_image(m, (8, 8), (0, 0, 1, 1), Cells((0.1, 0.5), (0.2, 0.7)))
    with pytest.raises(InputError, match=r"^cells\.y must be 2 finite increasing centres"):
        map_on_image(m, (8, 8), (0, 0, 1, 1), {"x": [0.1, 0.5, 0.9], "y": [0.7, 0.2]})
    with pytest.raises(InputError, match=r"^cells\.x .* inside the box"):
        map_on_image(m, (8, 8), (0, 0, 0.5, 1), {"x": [0.1, 0.3, 0.6], "y": [0.2, 0.7]})


# ------------------------------------------------------------------ a model's explanation, end to end

def _tiny_onevision_explanation():
    # 36-px tiles of 8-px patches read 32 px each (SigLIP's 378 of 384, small); a 72 x 72 image is 2 x 2
    # tiles, its stitched map 8 x 8: cell f read pixels 36 * (f // 4) + 8 * (f % 4) onwards, 8 of them
    model, proc = tiny_llava_onevision(tile=36)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 72, 3), dtype=np.uint8))
    return dcam.Explainer(model, proc).explain(img, response="a red circle")


@pytest.fixture(scope="module")
def onevision():
    return _tiny_onevision_explanation()


def _hot(e, row, col):
    maps = torch.zeros_like(e.maps)
    maps[0, row, col] = 1.0
    return dataclasses.replace(e, maps=maps)


def test_an_explanations_overlay_draws_its_cells_where_they_were_read(onevision):
    e = onevision
    spans = _read_spans(2, tile=36, patch=8, unit=4)
    centres = spans.mean(axis=1)
    assert centres.tolist() == [4, 12, 20, 28, 40, 48, 56, 64]
    assert e.grid == (8, 8) and e.box == pytest.approx((0, 0, 68 / 72, 68 / 72))
    np.testing.assert_allclose(np.asarray(e.cells.x) * 72, centres, atol=1e-9)
    h = _hot(e, 3, 4)  # the top tiles' last row, the right tiles' first column
    want = np.zeros((72, 72))
    want[:68, :68] = np.outer(_tent(68, centres, 3), _tent(68, centres, 4))
    got = np.asarray(h.overlay(0, alpha=1.0))
    np.testing.assert_array_equal(got, colorize(want.astype(np.float32)))
    # drawn evenly over the box (the old drawing), column 4 was centred at 4.5 * 68 / 8 = 38.25, not 40
    even = map_on_image(h.maps[0], (72, 72), e.box)
    assert np.abs(even - want).max() > 0.1
    # the metrics place the maps the same way
    np.testing.assert_allclose(on_image(h, h.maps)[0].numpy(), want, rtol=0, atol=1e-6)


def test_faithfulness_blanks_the_cell_a_pixel_was_read_for(onevision):
    e = onevision
    cell = _cell_index(72, 72, e.grid, e.box, e.cells)
    col = cell[0]  # row 0 of the image: cells 0..7 of the first map row
    spans = _read_spans(2, tile=36, patch=8, unit=4)
    for f, (a, b) in enumerate(spans):
        assert (col[a:b] == f).all(), f
    # the unread strip 32..35 goes to the nearer centre (28 or 40: pixels 32, 33 to cell 3; 34, 35 to 4);
    # past the last pixel read (68..71) nothing is the model's
    assert col[32:36].tolist() == [3, 3, 4, 4] and (col[68:] == -1).all() and (cell[68:] == -1).all()
    # the rows likewise
    assert cell[:, 0][36:44].tolist() == [32] * 8
    # drawn evenly, pixel 25 (read for cell 3) went to cell 2
    assert _cell_index(72, 72, e.grid, e.box)[0, 25] == 2 and col[25] == 3


def test_saved_and_loaded_cells(onevision, tmp_path):
    e = _hot(onevision, 3, 4)
    paths = e.save(str(tmp_path / "x"))
    back = dcam.load_explanation(str(tmp_path / "x"))
    assert back.cells == e.cells and isinstance(back.cells, Cells)
    # at alpha 1 an overlay is the placed heatmap alone (the loaded image is image.png scaled back, not the
    # original's pixels, so at 0.5 the image under it differs)
    np.testing.assert_array_equal(np.asarray(back.overlay(0, alpha=1.0)),
                                  np.asarray(e.overlay(0, alpha=1.0, size=back.image.size)))
    meta = json.load(open(paths["meta"]))
    assert meta["cells"] == {"x": list(e.cells.x), "y": list(e.cells.y)}
    # a folder saved before cells were kept loads, drawn evenly; a wrong entry is refused naming it
    meta.pop("cells")
    json.dump(meta, open(paths["meta"], "w"))
    assert dcam.load_explanation(str(tmp_path / "x")).cells is None
    meta["cells"] = {"x": [0.5], "y": list(e.cells.y)}
    json.dump(meta, open(paths["meta"], "w"))
    with pytest.raises(InputError, match=r"meta\.json.*cells must be null or \{x: 8 centres, y: 8 centres\}"):
        dcam.load_explanation(str(tmp_path / "x"))


def test_view_all_keeps_each_views_cells():
    model, proc = tiny_llava_onevision(tile=36)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 72, 3), dtype=np.uint8))
    views = auto_adapter(model, proc).prepare(img, "describe", response_ids=[5, 6]).views
    assert views["base"].cells is None and views["highres"].cells is not None
    e = dcam.Explainer(model, proc).explain(img, response="a red circle", view="all")
    assert set(e.view_cells) == {"highres"} and e.view_cells["highres"] == views["highres"].cells


@pytest.mark.parametrize("kind", ["idefics3", "smolvlm"])
def test_idefics3_tiles_cells_sit_on_the_pixels_they_read(kind):
    # the image stretched to 2 x 2 tiles of 36 px; 8-px patches read 32 px a tile, the pixel shuffle makes
    # 2 cells of 16 px of them: centres 8, 24 in the first tile, 36 + 8, 36 + 24 in the second
    from dcam.testing.hf_tiny import tiny_idefics3

    model, proc = tiny_idefics3(kind, tile=36)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 72, 3), dtype=np.uint8))
    hi = auto_adapter(model, proc).prepare(img, "describe", response_ids=[5, 6]).views["highres"]
    np.testing.assert_allclose(np.asarray(hi.cells.x) * 72, [8, 24, 44, 60], rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(hi.cells.y) * 72, [8, 24, 44, 60], rtol=0, atol=1e-9)
    model, proc = tiny_idefics3(kind)  # 32-px tiles: read whole, drawn evenly
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert auto_adapter(model, proc).prepare(img, "describe", response_ids=[5, 6]).views["highres"].cells is None


def test_a_trajectory_keeps_its_maps_cells(tmp_path):
    # LaViDa: 30-px tiles of 7-px patches read 28 px; its 2x2 bilinear pooling spreads 2 cells over them
    # (14 px each): a 60 x 60 image on 2 x 2 tiles has cells centred at 7, 21 and 30 + 7, 30 + 21
    from dcam.testing.llava_dmllm import tiny_lavida

    model, proc = tiny_lavida(vision_size=30, patch_size=7, image_grid_pinpoints=[[30, 60], [60, 30], [60, 60]])
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8))
    e = dcam.Explainer(model, proc).explain(img, trajectory=True, steps=2, response_length=4)
    np.testing.assert_allclose(np.asarray(e.trajectory.cells.x) * 60, [7, 21, 37, 51], rtol=0, atol=1e-9)
    assert e.trajectory.cells == e.cells
    e.save(str(tmp_path / "x"))
    back = dcam.load_explanation(str(tmp_path / "x"))
    assert back.trajectory.cells == e.cells and back.cells == e.cells
