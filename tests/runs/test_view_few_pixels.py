"""The page's canvas (real headless Chromium) draws every cell of a map on a side with fewer pixels than
cells, as the PNG overlays do (each pixel the mean of the cells over its span; bilinear read only two
cells a pixel: a 5000 x 40 image's 448 x 4 canvas drew a word's evidence on row 3 as nothing)."""
import matplotlib
import numpy as np
import pytest
import torch

from dcam.render.html import page_html, record_data, viewer_config
from dcam.render.overlay import map_on_image

#: as tests/runs/test_view.py: a neighbouring colour where a value falls on a bin's edge
TOL = 6
JET = matplotlib.colormaps["jet"]



def _open(browser, tmp_path, maps, size, box=None, cells=None):
    rec = record_data("thin", "a b", [{"text": "a", "number": 0}], maps, None, size, maps.shape[-2:])
    if box is not None:
        rec["box"], rec["cells"] = box, cells
    (tmp_path / "p.html").write_text(page_html(viewer_config([rec], alpha=1.0)))
    browser.open("file://" + str(tmp_path / "p.html"))
    assert browser.problems() == []
    return browser.canvas()


def _jet(v):
    return np.rint(JET(np.minimum(np.floor(np.clip(v, 0, 1) * 256), 255).astype(int))[..., :3] * 255)


@pytest.mark.parametrize("size, canvas, cell", [((5000, 40), (4, 448), (3, 12)), ((32, 5), (70, 448), (0, 5))])
def test_a_one_hot_cell_shows_on_a_thin_images_canvas(browser, tmp_path, size, canvas, cell):
    maps = torch.zeros(1, 16, 16)
    maps[0, cell[0], cell[1]] = 1.0
    px = _open(browser, tmp_path, maps, list(size))
    assert px.shape[:2] == canvas and (px[..., 3] == 255).all()
    H, W = canvas
    # worked here: columns (448 pixels over 16 cells) bilinear, pixel x reads cell (x + 0.5) / 28 - 0.5
    wx = np.clip(1 - np.abs((np.arange(W) + 0.5) * 16 / W - 0.5 - cell[1]), 0, None)
    if H < 16:  # 4 rows: pixel i the mean of cells 4i .. 4i + 3
        wy = np.array([0.25 if 4 * i <= cell[0] < 4 * i + 4 else 0.0 for i in range(H)])
    else:  # 70 rows over 16 cells: bilinear, clamped at the edges
        u = np.clip((np.arange(H) + 0.5) * 16 / H - 0.5, 0, 15)
        wy = np.clip(1 - np.abs(u - cell[0]), 0, None)
    want = _jet(wy[:, None] * wx[None, :])
    assert np.abs(px[..., :3].astype(int) - want).max() <= TOL
    assert px[..., :3].max() > 188  # (the hot cell is there: jet(0) is [0, 0, 128])
    if size == (5000, 40):  # row 0, pixels 349 and 350: 0.25 (1 - 0.5 / 28) = 0.2455, jet's bin 62
        np.testing.assert_array_equal(px[0, 349:351, :3], [np.rint(np.array(JET(62)[:3]) * 255)] * 2)


def test_the_page_draws_a_stitched_map_on_fewer_pixels_as_the_overlays_do(browser, tmp_path):
    # an image 6 x 400 (canvas 7 x 448): the stitched map's 8 columns (anyres tiles of 36 px read 32 px,
    # as tests/runs/test_view_cells.py) in a box 68 / 72 of the image: 7 pixels for 8 columns
    centres = [(36 * (f // 4) + 8 * (f % 4) + 4) / 72 for f in range(8)]
    box = [0.0, 0.0, 68 / 72, 68 / 72]
    rows = [(k + 0.5) / 8 * 68 / 72 for k in range(8)]
    cells = {"x": centres, "y": rows}
    m = torch.from_numpy(np.random.default_rng(5).random((1, 8, 8)).astype(np.float32))
    px = _open(browser, tmp_path, m, [6, 400], box, cells)
    assert px.shape[:2] == (448, 7)
    q = (np.rint(m[0].numpy() * 255) / 255).astype(np.float32)  # as the page stores it
    want = _jet(map_on_image(q, (448, 7), tuple(box), cells))
    assert np.abs(px[..., :3].astype(int) - want).max() <= TOL
    # worked by hand: column 2 alone (every row) on an image 3 x 400 (canvas 3 x 448, the box 3 pixels wide).
    # The centres in pixels of the box are 72 c / 68 * 3: columns 1, 2, 3 at 12, 20, 28 / 72 of the image,
    # so column 2 spans from (12 + 20) / 2 / 68 * 3 = 12 / 17 to (20 + 28) / 2 / 68 * 3 = 18 / 17 pixels:
    # 5 / 17 of pixel 0 and 1 / 17 of pixel 1 (bilinear read columns 0-1, 3-4 and 6-7: none of it)
    one = torch.zeros(1, 8, 8)
    one[0, :, 2] = 1.0
    px = _open(browser, tmp_path, one, [3, 400], box, cells)
    assert px.shape[:2] == (448, 3)
    want = _jet(np.array([5 / 17, 1 / 17, 0]))  # bins 75 and 15
    assert np.abs(px[200, :, :3].astype(int) - want).max() <= TOL
