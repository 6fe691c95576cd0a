"""A trajectory's GIF frames and sheet of a very wide image draw every row of the map.

A 16000 x 40 image is drawn 1024 x 3 in the frames and 96 x 1 in the sheet; the toy's maps have 8 rows.
Bilinear resampling read rows 0-1, 3-4, 6-7 for 3 pixels and rows 3-4 for 1 pixel, so a word whose
evidence lay on row 2 drew nothing; now each pixel is the mean of the rows it covers (worked below)."""
import dataclasses

import numpy as np
import torch
from PIL import Image

from dcam.trajectory.render import sheet, sheet_geometry, word_frames


def _wide(traj, row, col, step=1):
    maps = torch.zeros_like(traj.maps)
    maps[step, 0, row, col] = 1.0
    return dataclasses.replace(traj, image=Image.new("RGB", (16000, 40), (0, 0, 0)), maps=maps)


def test_frames_of_a_wide_image_show_a_row_bilinear_skipped(traj):
    S, T, h, w = traj.maps.shape
    assert (h, w) == (8, 8)
    frames = word_frames(_wide(traj, 2, 4), 0, alpha=1.0, colormap="gray")
    fr = np.asarray(frames[1])[:3, :, 0].astype(int)  # the image part (1024 x 3), the caption below it
    assert fr.shape == (3, 1024)
    # rows: pixel 0 spans rows [0, 8/3), so row 2 weighs (8/3 - 2) / (8/3) = 1/4; pixel 1 spans [8/3, 16/3):
    # (3 - 8/3) / (8/3) = 1/8; pixel 2 none.
    # columns: 1024 pixels over 8 cells, cell 4 centred at 576: pixels 575, 576 give it 1 - 0.5 / 128;
    # gray bins v at floor(256 v)
    v = 1 - 0.5 / 128
    assert fr[0, 575] == fr[0, 576] == int(0.25 * v * 256) and fr[0].max() == fr[0, 575]
    assert fr[1, 575] == fr[1, 576] == int(0.125 * v * 256) and fr[1].max() == fr[1, 575] and fr[2].max() == 0
    assert np.asarray(frames[0])[:3, :, 0].max() == 0  # step 0: no heat


def test_sheet_of_a_wide_image_shows_a_row_bilinear_skipped(traj):
    S, T, h, w = traj.maps.shape
    g = sheet_geometry(S, T, aspect=16000 / 40)
    (cw, ch), row, pad, left, top = g["cell"], g["row"], g["pad"], g["left"], g["top"]
    assert ch == 1
    img = np.asarray(sheet(_wide(traj, 2, 4), alpha=1.0, colormap="gray"))[..., 0].astype(int)
    # step 1's row, word 0's column: one pixel tall, the mean of all 8 rows: 1/8 of the column's weight
    y = top + pad + 1 * (row + pad) + (row - ch) // 2
    x = left + pad
    line = img[y, x:x + cw]
    # columns: cw pixels over 8 cells, bilinear: cell 4 centred at cw / 2 + cw / 16 pixels
    u = (np.arange(cw) + 0.5) * 8 / cw - 0.5
    weight = np.clip(1 - np.abs(u - 4), 0, None)
    np.testing.assert_array_equal(line, np.floor(weight / 8 * 256).astype(int))
    assert line.max() > 0
