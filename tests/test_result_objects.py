"""What an explanation gives back and draws on its own: a folder written by the dcam before pieces were kept
(commit 572c085) loads; a saved image comes back pixel for pixel where image.png enlarged it by a whole factor;
file names keep the words (NFC, any script, emoji as code points); Explanation.contact_sheet() and the
Trajectory's picture methods are the pictures save() writes, each checked against values worked here."""
import json
import os

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import dcam
from dcam.errors import InputError
from dcam.explain import Explainer
from dcam.explanation import word_file_names
from dcam.ops.config import CamConfig
from dcam.testing import tiny_toy


@pytest.fixture(scope="module")
def explainer():
    return Explainer(*tiny_toy(seed=2))


def _noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_a_folder_saved_before_pieces_were_kept_loads_one_token_per_item(tmp_path):
    # the writer of 572c085^ (git show 572c085^:dcam/explanation.py): meta() without pieces, granularity, view,
    # box, digests, cells; maps.safetensors with maps, ids, scores, stats; image.png enlarged for the overlays
    folder = tmp_path / "old"
    folder.mkdir()
    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    save_file({"maps": maps, "token_ids": torch.tensor([7, 9]), "word_numbers": torch.tensor([0, 2]),
               "response_indices": torch.tensor([0, 2]), "scores": torch.tensor([1.5, -0.5]),
               "stats.peak": torch.tensor([0.9, 0.8])}, str(folder / "maps.safetensors"))
    small = _noise(8, 8)
    small.resize((256, 256), Image.BICUBIC).save(folder / "image.png")  # as that writer rendered it
    meta = {"tokens": ["red", "circle"], "token_ids": [7, 9], "word_numbers": [0, 2], "response_indices": [0, 2],
            "response": "red big circle", "response_ids": [7, 8, 9], "response_tokens": ["red", "big", "circle"],
            "prompt": None, "steps": 4, "steps_source": "given", "method": "diffusion-cam", "probe": "masked",
            "layer": 1, "target_score": "logit", "grid": [4, 4], "image_size": [8, 8], "repeat_ratio": 0.0,
            "scores": [1.5, -0.5], "stats": {"peak": [0.9, 0.8]}, "config": CamConfig().as_dict(),
            "model": "ShapesDMLLM", "notes": [], "rendered_size": [256, 256]}
    (folder / "meta.json").write_text(json.dumps(meta))
    e = dcam.load_explanation(folder)
    assert e.pieces == [[0], [2]] and e.granularity == "tokens"  # one token per item then
    assert torch.equal(e.maps, maps) and e.tokens == ["red", "circle"] and e.word_numbers == [0, 2]
    assert e.image.size == (8, 8) and e.layer == 1
    # and it saves again, now with its pieces
    e.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "meta.json").read_text())["pieces"] == [[0], [2]]


def test_a_folder_without_pieces_is_still_checked(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"tokens": ["red"], "token_ids": [7], "word_numbers": [0],
                                                  "response_indices": [5], "response": "red",
                                                  "response_ids": [7], "response_tokens": ["red"], "steps": 4,
                                                  "method": "diffusion-cam", "probe": "masked", "grid": [4, 4]}))
    with pytest.raises(InputError, match=r"pieces\[0\] must be slots of the 1-token response"):
        dcam.load_explanation(folder)


@pytest.mark.parametrize("w, h, factor", [(64, 64, 4), (100, 3, 10), (300, 300, 1)])
def test_a_saved_image_comes_back_pixel_for_pixel_where_the_factor_is_whole(explainer, tmp_path, w, h, factor):
    img = _noise(w, h, seed=w)
    e = explainer.explain(img, response="a red circle", probe="full")
    e.save(tmp_path / "x")
    orig = np.asarray(img)
    png = np.asarray(Image.open(tmp_path / "x" / "image.png"))
    # each pixel a factor x factor block of itself (np.repeat, not a Pillow resize)
    assert np.array_equal(png, np.repeat(np.repeat(orig, factor, axis=0), factor, axis=1))
    back = dcam.load_explanation(tmp_path / "x")
    assert back.image.size == (w, h) and np.array_equal(np.asarray(back.image), orig)


def test_an_overlay_at_a_whole_factor_keeps_the_pixels_crisp():
    img = _noise(5, 3)
    cam = np.zeros((3, 5), dtype=np.float32)
    out = np.asarray(dcam.render.overlay(img, cam, alpha=0.0, size=(15, 9)))  # alpha 0: the image alone
    assert np.array_equal(out, np.repeat(np.repeat(np.asarray(img), 3, axis=0), 3, axis=1))


def test_file_names_keep_the_words(tmp_path):
    words = ["😀", "e\u0301", "猫", 'a/b\\c:d*e?f"g<h>i|j', "👨\u200d👩\u200d👧", "❤\ufe0f", "Straße", "é"]
    names = word_file_names([0, 1, 2, 3, 4, 5, 6, 1], words, "png")
    assert names == ["00_u1f600.png", "01_\u00e9.png", "02_猫.png", "03_a_b_c_d_e_f_g_h_i_j.png",
                     "04_u1f468_u1f469_u1f467.png", "05_u2764.png", "06_straße.png", "01_\u00e9-2.png"]
    for name in names:  # every one a file of its own
        (tmp_path / name).write_bytes(b"")
    assert len(os.listdir(tmp_path)) == len(words)


def test_the_contact_sheet_in_memory_is_the_saved_one(explainer, tmp_path):
    e = explainer.explain(_noise(64, 64, seed=5), response="a red circle", probe="full")
    paths = e.save(tmp_path / "x", alpha=0.3, colormap="viridis")
    sheet = e.contact_sheet(alpha=0.3, colormap="viridis")
    assert isinstance(sheet, Image.Image)
    assert np.array_equal(np.asarray(sheet), np.asarray(Image.open(paths["contact_sheet"]).convert("RGB")))
    with pytest.raises(InputError, match="^alpha must be"):
        e.contact_sheet(alpha=2)


def _one_hot_trajectory(traj, hot):
    """``traj`` with every map zero but cell ``hot`` (row, column) of each."""
    import dataclasses

    maps = torch.zeros_like(traj.maps)
    maps[:, :, hot[0], hot[1]] = 1.0
    return dataclasses.replace(traj, maps=maps, image=Image.new("RGB", traj.image.size, (128, 128, 128)))


@pytest.fixture(scope="module")
def traj(explainer):
    return explainer.explain(_noise(32, 32, seed=9), steps=4, trajectory=True).trajectory


def test_the_trajectory_sheet_has_a_title_a_colour_bar_and_each_hot_cell_in_place(traj, tmp_path):
    from dcam.trajectory.render import sheet_geometry

    h, w = traj.grid
    t = _one_hot_trajectory(traj, (1, w - 2))
    sheet = t.sheet(alpha=1.0)
    S, T = t.maps.shape[:2]
    g = sheet_geometry(S, T)
    assert sheet.size == g["size"]
    px = np.asarray(sheet).astype(int)
    jet = matplotlib.colormaps["jet"]
    low, high = (np.rint(np.array(jet(v)[:3]) * 255) for v in (0.0, 1.0))
    bar_y = g["bar"] + 2  # the bar's ramp starts 10 pixels into the bar, which starts 4 pixels in
    assert np.abs(px[bar_y, 14] - low).max() <= 2 and np.abs(px[bar_y, 14 + 2] - low).max() <= 8
    assert not (px[2:18, 4:200] == 255).all()  # the title's ink
    (cw, ch), pad, left, top, row = g["cell"], g["pad"], g["left"], g["top"], g["row"]
    # the hot cell's pixels in a tile, worked by hand: columns [c, c + 1) * cw / w, rows likewise
    x0, x1, y0, y1 = (w - 2) * cw / w, (w - 1) * cw / w, 1 * ch / h, 2 * ch / h
    for s in range(S):
        for k in range(T):
            x, y = left + pad + k * (cw + pad), top + pad + s * (row + pad) + (row - ch) // 2
            tile = px[y:y + ch, x:x + cw]
            far = np.abs(tile - high).max(axis=2)  # how far from jet's 1 (alpha 1: the heatmap alone)
            yy, xx = np.unravel_index(np.argmin(far), far.shape)
            assert x0 <= xx < x1 and y0 <= yy < y1, (s, k, yy, xx)
            # its value there, bilinear with half-pixel centres by hand: the pixel centres lie half a pixel
            # off the cell's centre
            value = (1 - abs((xx + 0.5) * w / cw - 0.5 - (w - 2))) * (1 - abs((yy + 0.5) * h / ch - 0.5 - 1))
            assert np.abs(tile[yy, xx] - np.rint(np.array(jet(value)[:3]) * 255)).max() <= 3, (s, k, value)
            assert np.abs(tile[ch - 2, 2] - low).max() <= 8, (s, k)  # far from it: jet's 0
    saved = Image.open(t.save(tmp_path / "t", alpha=0.3)["sheet"]).convert("RGB")
    assert np.array_equal(np.asarray(t.sheet(alpha=0.3)), np.asarray(saved))


def test_the_trajectory_gif_and_frames_are_the_saved_ones(traj, tmp_path):
    t = _one_hot_trajectory(traj, (0, 0))
    word = t.word_numbers[0]
    frames = t.frames(word)
    assert len(frames) == t.steps
    path = t.gif(word, tmp_path / "w.gif")
    saved = t.save(tmp_path / "t")["animations"][0]
    assert open(path, "rb").read() == open(saved, "rb").read()
    with Image.open(path) as im:
        assert im.n_frames == t.steps
    strip = t.strip(word)
    W = frames[0].width
    assert strip.size == (t.steps * (W + 4) - 4, frames[0].height)
    assert np.array_equal(np.asarray(strip)[:, :W], np.asarray(frames[0]))
    with pytest.raises(InputError, match="^path: .* exists"):
        t.gif(word, path)
    with pytest.raises(InputError, match="is not among the traced words"):
        t.gif("zebra", tmp_path / "z.gif")
    assert not (tmp_path / "z.gif").exists()
