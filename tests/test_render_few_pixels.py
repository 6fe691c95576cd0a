"""Drawing a map on fewer pixels than it has cells along a side: every cell keeps its share.

Bilinear resampling with no antialiasing reads only the two cells around each pixel's centre: a 16-row
map drawn 5 pixels tall reads rows 1-2, 4-5, 7-8, 10-11 and 13-14, so a word whose evidence lay on
row 0 or 3 drew nothing (a 32 x 5 image's overlay; a 8000 x 40 image's saved overlays, 1024 x 5).
Along such a side each pixel is now the mean of the cells over its span; a side with a pixel per
cell or more is bilinear as before (bit for bit). Values below are worked by hand."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dcam.render.cells import even_cells
from dcam.render.overlay import map_on_image, overlay, upsample_map


def _one_hot(row, col, grid=(16, 16)):
    m = np.zeros(grid, np.float32)
    m[row, col] = 1.0
    return m


def test_a_32_by_5_image_draws_a_cell_of_row_0():
    # rows: 5 pixels over 16 cells, pixel 0 spans cells [0, 3.2): row 0 weighs 1 / 3.2 = 0.3125 there, 0 below.
    # columns: 32 pixels over 16 cells, bilinear: pixel x reads cell 0.5 x - 0.25, so cell 5 weighs
    # 0.25, 0.75, 0.75, 0.25 under pixels 9..12
    up = upsample_map(_one_hot(0, 5), (5, 32))
    want = np.zeros((5, 32))
    want[0, 9:13] = 0.3125 * np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(up, want, atol=1e-7)
    # the overlay at the image's own size (Explanation.overlay's default), grey at full opacity: matplotlib's
    # gray bins v at floor(256 v): 0.234375 -> bin 60, grey 60 (the old overlay was 0 everywhere)
    img = Image.new("RGB", (32, 5), (0, 0, 0))
    px = np.asarray(overlay(img, _one_hot(0, 5), alpha=1.0, colormap="gray"))[..., 0]
    assert px[0, 10] == px[0, 11] == 60 and px[0, 9] == px[0, 12] == 20 and px[1:].max() == 0


def test_a_5000_by_40_image_on_the_pages_448_by_4_canvas():
    # rows: 4 pixels over 16 cells, pixel 0 spans cells 0-3: row 3 weighs 1/4 there.
    # columns: 448 pixels, bilinear: pixel x reads cell (x + 0.5) / 28 - 0.5; cell 12 lies at 349.5,
    # so pixels 349 and 350 give it 1 - 0.5 / 28
    up = upsample_map(_one_hot(3, 12), (4, 448))
    assert up[1:].max() == 0.0
    np.testing.assert_allclose(up[0, 349:351], 0.25 * (1 - 0.5 / 28), atol=1e-7)
    np.testing.assert_allclose(up[0].sum(), 0.25 * 28, atol=1e-5)  # the cell's whole share: 28 pixels' worth


@pytest.mark.parametrize("n", [1, 3, 5, 7, 15])
def test_every_cell_reaches_a_pixel_with_its_share(n):
    from dcam.render.cells import axis_weights

    w = axis_weights(n, 16)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)  # each pixel a mean
    np.testing.assert_allclose(w.sum(axis=0), n / 16)  # each cell spread over n / 16 pixels' worth
    if n >= 8:
        return
    # and through a stitched map's uneven centres (cells spanning halfway to their neighbours)
    centres = [0.05, 0.1, 0.2, 0.5, 0.55, 0.6, 0.9, 0.95]
    w = axis_weights(n, 8, centres)
    edges = np.concatenate([[0.0], (np.array(centres[:-1]) + centres[1:]) / 2, [1.0]]) * n
    np.testing.assert_allclose(w.sum(axis=0), np.diff(edges), atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)


def test_a_stitched_maps_cells_on_fewer_pixels_keep_their_share():
    # 8 columns at uneven centres in a box running to 68 / 72 of the image, drawn 6 pixels wide and 40 tall:
    # the box is round(6 * 68 / 72) = 6 pixels; each column spans halfway to its neighbours' centres
    centres = [(36 * (f // 4) + 8 * (f % 4) + 4) / 72 for f in range(8)]
    box = (0.0, 0.0, 68 / 72, 68 / 72)
    cells = {"x": centres, "y": list(even_cells(box, (8, 8)).y)}
    m = np.zeros((8, 8), np.float32)
    m[:, 4] = 1.0  # the first column of the second tile, centred at 40 / 72 of the image
    up = map_on_image(m, (40, 6), box, cells)
    # the centres in pixels of the box: 72 c / 68 * 6; columns 3, 4, 5 at 28, 40, 48 / 72 of the image, so
    # column 4 spans from (28 + 40) / 2 / 68 * 6 = 3 to (40 + 48) / 2 / 68 * 6 = 66 / 17 pixels: all in pixel 3
    np.testing.assert_allclose(up[20], [0, 0, 0, 66 / 17 - 3, 0, 0], atol=1e-6)
    assert up[38:].max() == 0  # below the box (38 pixels of 40)


@pytest.mark.parametrize("size", [(16, 16), (17, 40), (64, 64), (40, 5000), (300, 20)])
def test_a_side_with_a_pixel_per_cell_or_more_is_bilinear_as_before(size):
    rng = np.random.default_rng(1)
    m = rng.random((16, 16)).astype(np.float32)
    if size[0] >= 16 and size[1] >= 16:  # both sides: bit for bit the old drawing
        old = F.interpolate(torch.from_numpy(m)[None, None], size=size, mode="bilinear",
                            align_corners=False)[0, 0].clamp(0, 1).numpy()
        np.testing.assert_array_equal(upsample_map(m, size), old)
    else:  # the long side still bilinear: a map constant down its rows draws the same as the old along it
        col = np.repeat(m[:1], 16, axis=0)
        old = F.interpolate(torch.from_numpy(col)[None, None], size=size, mode="bilinear",
                            align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(upsample_map(col, size), old, atol=1e-6)


def test_saved_overlays_and_contact_sheet_of_an_8000_by_40_image_show_every_row(bundled, tmp_path):
    # saved at 1024 x 5 (max_side 1024): 16 rows -> 5 pixels; row 3 spans pixels 0.9375 .. 1.25, so it
    # weighs 0.0625 in pixel 0 and 0.25 in pixel 1 (the old overlay read rows 1-2, 4-5, ... and showed none)
    import dcam

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (40, 320, 3), dtype=np.uint8))
    e = dcam.Explainer(*bundled).explain(small, response="a red circle")
    grid = tuple(e.maps.shape[-2:])
    assert grid == (16, 16)
    wide = Image.new("RGB", (8000, 40), (128, 128, 128))
    zero = torch.zeros_like(e.maps)
    hot = zero.clone()
    hot[0, 3, 12] = 1.0
    a = dataclasses.replace(e, image=wide, maps=hot).save(str(tmp_path / "hot"), alpha=1.0, colormap="gray")
    b = dataclasses.replace(e, image=wide, maps=zero).save(str(tmp_path / "zero"), alpha=1.0, colormap="gray")
    px = np.asarray(Image.open(a["overlays"][0]))[..., 0].astype(int)
    assert px.shape == (5, 1024)
    # columns: 1024 pixels, cell 12 centred at 800: pixels 799 and 800 give it 1 - 0.5 / 64
    v = 1 - 0.5 / 64
    assert px[0, 799] == int(0.0625 * v * 256) and px[1, 800] == int(0.25 * v * 256)
    assert px[2:].max() == 0
    sheet_hot, sheet_zero = (np.asarray(Image.open(p["contact_sheet"])).astype(int) for p in (a, b))
    assert np.abs(sheet_hot - sheet_zero).max() >= 16  # the hot cell on the sheet too
