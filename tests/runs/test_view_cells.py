"""The viewer page (real headless Chromium) draws a stitched anyres map's cells on the pixels they were
read from, as the PNG overlays do: record data carries ``cells`` ({"x": column centres, "y": row centres},
fractions of the image) beside ``box``, and a run's index keeps them for ``dcam view``."""
import json
import os

import matplotlib
import numpy as np
import torch
from PIL import Image

import dcam
from dcam.cli import main
from dcam.render.overlay import map_on_image

#: as tests/runs/test_view.py: premultiplied-alpha rounding, a neighbouring colour at a bin's edge
TOL = 6
# 36-px tiles of 8-px patches (a tower reading 32 of 36 px), 2 x 2 tiles on a 72 x 72 image: stitched cell f
# was read from pixels 36 * (f // 4) + 8 * (f % 4) onwards, 8 of them; its centre 4 px in; the box ends at 68
CENTRES = [(36 * (f // 4) + 8 * (f % 4) + 4) / 72 for f in range(8)]
BOX = [0.0, 0.0, 68 / 72, 68 / 72]


def _canvas(browser):
    data = browser.js("(function(){var c=document.querySelector('canvas.ov');"
                      "return [c.width,c.height,Array.from(c.getContext('2d').getImageData(0,0,c.width,c.height)"
                      ".data)];})()")
    return np.asarray(data[2], np.uint8).reshape(data[1], data[0], 4)


def _heat(m, size_hw, cells):
    """The colours the page should draw (its canvas holds them under its opacity): the byte-quantised map placed as the PNG overlays place it."""
    q = (np.rint(np.clip(m, 0, 1) * 255) / 255).astype(np.float32)
    up = map_on_image(q, size_hw, tuple(BOX), cells)
    return np.rint(matplotlib.colormaps["jet"](up)[..., :3] * 255)


def test_run_page_draws_stitched_cells_where_they_were_read(browser, tmp_path):
    from safetensors.torch import save_file

    folder = str(tmp_path / "run")
    os.makedirs(os.path.join(folder, "shards"))
    maps = torch.zeros(1, 8, 8)
    maps[0, 3, 4] = 1.0  # the top tiles' last row, the right tiles' first column
    save_file({"r000000": maps}, os.path.join(folder, "shards", "a.safetensors"))
    image = str(tmp_path / "img.png")
    Image.new("RGB", (72, 72), (128, 128, 128)).save(image)
    cells = {"x": CENTRES, "y": CENTRES}
    entry = {"id": "r0", "n": 0, "where": "line 1", "image": image, "image_size": [72, 72], "prompt": None,
             "response": "circle", "tokens": ["circle"], "word_numbers": [0], "grid": [8, 8], "stats": {},
             "steps": 1, "shard": "shards/a.safetensors", "key": "r000000", "part": "x", "maps_shape": [1, 8, 8],
             "box": BOX, "cells": cells}
    with open(os.path.join(folder, "index.jsonl"), "w") as f:
        f.write(json.dumps(entry) + "\n")
    r = next(iter(dcam.load_run(folder)))
    assert r.cells == (tuple(CENTRES), tuple(CENTRES))
    assert main(["view", folder, "--quiet"]) == 0
    browser.open("file://" + os.path.join(folder, "index.html"))
    assert browser.problems() == []
    rgb = _canvas(browser)[..., :3].astype(int)
    H, W = rgb.shape[:2]
    assert (H, W) == (256, 256)  # 72 px scaled up to the page's 256
    assert np.abs(rgb - _heat(maps[0].numpy(), (H, W), cells)).max() <= TOL
    # drawn evenly over the box (the page before cells), the hot cell sits ~0.22 of a cell off: far colours
    assert np.abs(rgb - _heat(maps[0].numpy(), (H, W), None)).max() > 50


def test_explanation_and_run_records_carry_the_cells():
    import dataclasses

    from dcam.render.cells import Cells
    from dcam.render.html import explanation_record
    from dcam.runs.runner import index_entry
    from dcam.testing.hf_tiny import tiny_llava_onevision

    model, proc = tiny_llava_onevision(tile=36)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 72, 3), dtype=np.uint8))
    e = dcam.Explainer(model, proc).explain(img, response="a red circle")
    np.testing.assert_allclose(e.cells.x, CENTRES, atol=1e-12)
    assert explanation_record(e)["cells"] == {"x": list(e.cells.x), "y": list(e.cells.y)}
    rec = type("Rec", (), dict(id="s1", n=0, where="line 1", image_path=None, notes=[], meta=None))()
    assert index_entry(rec, e, None)["cells"] == {"x": list(e.cells.x), "y": list(e.cells.y)}
    even = dataclasses.replace(e, cells=None)
    assert "cells" not in explanation_record(even) and "cells" not in index_entry(rec, even, None)
    assert isinstance(e.cells, Cells)


def test_load_run_gives_each_views_cells(tmp_path):
    # a --view all run's index keeps view_cells beside view_boxes; load_run gave the boxes alone, so a reader
    # placing the highres map by its box drew it evenly (up to 0.21 of a cell off on 2 tiles a side)
    from safetensors.torch import save_file

    folder = str(tmp_path / "run")
    os.makedirs(os.path.join(folder, "shards"))
    save_file({"r000000": torch.zeros(1, 8, 8), "r000000.view.highres": torch.zeros(1, 8, 8),
               "r000000.view.base": torch.zeros(1, 4, 4)}, os.path.join(folder, "shards", "a.safetensors"))
    entry = {"id": "r0", "n": 0, "where": "line 1", "image": "img.png", "image_size": [72, 72], "prompt": None,
             "response": "circle", "tokens": ["circle"], "word_numbers": [0], "grid": [8, 8], "stats": {},
             "steps": 1, "shard": "shards/a.safetensors", "key": "r000000", "part": "x", "maps_shape": [1, 8, 8],
             "box": BOX, "cells": {"x": CENTRES, "y": CENTRES}, "view": "highres",
             "view_shapes": {"highres": [1, 8, 8], "base": [1, 4, 4]},
             "view_boxes": {"highres": BOX, "base": [0.0, 0.0, 1.0, 1.0]},
             "view_cells": {"highres": {"x": CENTRES, "y": CENTRES}}}
    with open(os.path.join(folder, "index.jsonl"), "w") as f:
        f.write(json.dumps(entry) + "\n")
    r = next(iter(dcam.load_run(folder)))
    assert r.view_cells == {"highres": (tuple(CENTRES), tuple(CENTRES))}  # the base view: evenly, no entry
    assert r.view_boxes == {"highres": tuple(BOX), "base": (0.0, 0.0, 1.0, 1.0)}
