"""A patch embedding whose stride does not divide the tile reads only part of it (SigLIP at
384 px with 14-px patches: 27 patches, 378 px); the maps are placed on the pixels it reads.

The premise is checked on transformers' own SigLIP tower (pixels past the last patch change
nothing); the boxes are worked out by hand from the tile geometry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dcam.probe.adapters import auto_adapter
from dcam.probe.adapters.anyres import anyres_layout, seen_fraction, seen_part
from dcam.testing.hf_tiny import tiny_llava_onevision
from dcam.testing.llava_dmllm import tiny_llada_v


def test_seen_fraction_hand_worked():
    assert seen_fraction(384, 14) == 378 / 384  # SigLIP so400m-patch14-384
    assert seen_fraction(336, 14) == 1.0 and seen_fraction(32, 8) == 1.0  # CLIP-336 reads all of it
    assert seen_fraction(36, 8) == 32 / 36
    assert seen_part((-0.25, 0.0, 1.25, 1.0), 0.5) == (-0.25, 0.0, 0.5, 0.5)


def test_siglip_reads_no_pixel_past_its_last_patch():
    model, _ = tiny_llava_onevision(tile=36)  # 8-px patches: 4 per side, pixels 32..35 unread
    tower = model.model.vision_tower
    x = torch.randn(1, 3, 36, 36)
    with torch.no_grad():
        ref = tower(pixel_values=x).last_hidden_state
        edge = x.clone()
        edge[..., 32:, :] = 5.0
        edge[..., :, 32:] = -5.0
        inner = x.clone()
        inner[..., :, 31] += 1.0
        assert torch.equal(tower(pixel_values=edge).last_hidden_state, ref)
        assert not torch.allclose(tower(pixel_values=inner).last_hidden_state, ref)


def _views(adapter, w, h):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return adapter.prepare(img, "describe", response_ids=[5, 6]).views


@pytest.mark.parametrize("hw, tiles", [((72, 72), (2, 2)), ((36, 72), (1, 2))])
def test_onevision_boxes_end_at_the_last_pixel_read(hw, tiles):
    # 36-px tiles read 32 px each; an image that fills its pinpoint exactly (no padding, no unpad
    # crop): the base view is the whole image squashed to one tile, so it ends at 32/36 of it; the
    # stitched map runs from the first tile's first pixel to the last tile's 32nd: (side - 4) / side
    model, proc = tiny_llava_onevision(tile=36)
    a = auto_adapter(model, proc)
    h, w = hw
    lay = a.layout((h, w))
    assert lay.tiles == tiles and lay.grid == (tiles[0] * 4, tiles[1] * 4)
    views = _views(a, w, h)
    assert views["base"].box == pytest.approx((0.0, 0.0, 32 / 36, 32 / 36), abs=1e-12)
    assert views["highres"].box == pytest.approx((0.0, 0.0, (w - 4) / w, (h - 4) / h), abs=1e-12)


def test_whole_tiles_keep_whole_boxes():
    model, proc = tiny_llava_onevision()  # 32-px tiles of 8-px patches: read whole
    views = _views(auto_adapter(model, proc), 64, 64)
    assert views["base"].box == (0.0, 0.0, 1.0, 1.0) and views["highres"].box == (0.0, 0.0, 1.0, 1.0)


def test_llava_package_towers_place_maps_on_the_pixels_read():
    # the releases' tower keeps its SigLipVisionConfig (patch size) on .config; 30-px tiles of
    # 7-px patches read 28 px. A single tile (no anyres) of a square image: the base view ends at
    # 28/30; the anyres grid of a 60x60 image (2x2 tiles) ends at (60 - 2) / 60
    model, proc = tiny_llada_v(vision_size=30, patch_size=7, image_aspect_ratio="square",
                               image_grid_pinpoints=[[30, 60], [60, 30], [60, 60]])
    a = auto_adapter(model, proc)
    assert _views(a, 30, 30)["base"].box == pytest.approx((0.0, 0.0, 28 / 30, 28 / 30), abs=1e-12)
    model, proc = tiny_llada_v(vision_size=30, patch_size=7, image_grid_pinpoints=[[30, 60], [60, 30], [60, 60]])
    views = _views(auto_adapter(model, proc), 60, 60)
    assert views["base"].box == pytest.approx((0.0, 0.0, 28 / 30, 28 / 30), abs=1e-12)
    assert views["highres"].box == pytest.approx((0.0, 0.0, 58 / 60, 58 / 60), abs=1e-12)


def test_inner_cells_sit_closer_to_the_pixels_they_read():
    # SigLIP geometry (384-px tiles, 27 patches of 14 px), a 768x768 image on 2x2 tiles: the
    # true centre of stitched column f is 384 * (f // 27) + 14 * (f % 27 + 0.5) canvas pixels;
    # a map drawn evenly over its box puts it at x0 + (f + 0.5) * (x1 - x0) / 54
    lay = anyres_layout((768, 768), [[768, 768]], 384, 27, wh_pinpoints=False, rounding="hf", seen=378 / 384)
    f = np.arange(54)
    true = (384 * (f // 27) + 14 * (f % 27 + 0.5)) / 768
    placed = lay.box[0] + (f + 0.5) * (lay.box[2] - lay.box[0]) / 54
    err = np.abs(placed - true).max() * 768 / 14  # in cells
    # worst at the tiles' meeting: column 26 read at 371 px, placed at 26.5 * 762 / 54 = 373.9 px (0.21 cell)
    assert lay.box[2] == pytest.approx(762 / 768) and err == pytest.approx((26.5 * 762 / 54 - 371) / 14, abs=1e-9)
    whole = (f + 0.5) / 54  # spread over the whole canvas (the tower read as whole tiles)
    assert np.abs(whole - true).max() * 768 / 14 == pytest.approx(0.42, abs=0.01)


@pytest.mark.parametrize("mode, read", [("bilinear", 35), ("average", 28)])
def test_lavida_pooling_that_drops_the_odd_patch_shrinks_the_box(mode, read):
    # 37-px tiles of 7-px patches: 5 patches, 35 px read. LaViDa pools every tile 2x2: bilinear
    # spreads ceil(5/2) = 3 cells over all 5 patches (35 px); average pooling keeps 5 // 2 = 2
    # cells of 2 patches, dropping the fifth (28 px)
    from dcam.testing.llava_dmllm import tiny_lavida

    model, proc = tiny_lavida(vision_size=37, patch_size=7, image_aspect_ratio="square", mm_spatial_pool_mode=mode)
    views = _views(auto_adapter(model, proc), 37, 37)
    assert views["base"].box == pytest.approx((0.0, 0.0, read / 37, read / 37), abs=1e-12)


@pytest.mark.parametrize("kind", ["idefics3", "smolvlm"])
def test_idefics3_tiles_end_at_the_last_pixel_read(kind):
    # Idefics3 / SmolVLM: the image's longest edge resized to 72, then stretched to whole 36-px tiles
    # (a 72x72 image: 2x2 tiles); 8-px patches read 32 of each tile's 36 px. The global view is the image
    # squashed to one tile: 32/36 of it; the stitched tiles end 4 px short of the 72-px canvas: 68/72
    from dcam.testing.hf_tiny import tiny_idefics3

    model, proc = tiny_idefics3(kind, tile=36)
    views = _views(auto_adapter(model, proc), 72, 72)
    assert views["base"].box == pytest.approx((0.0, 0.0, 32 / 36, 32 / 36), abs=1e-12)
    assert views["highres"].grid == (4, 4)
    assert views["highres"].box == pytest.approx((0.0, 0.0, 68 / 72, 68 / 72), abs=1e-12)
    views = _views(auto_adapter(model, proc), 72, 36)  # 1 x 2 tiles: 68 of 72 px across, 32 of 36 down
    assert views["highres"].grid == (2, 4)
    assert views["highres"].box == pytest.approx((0.0, 0.0, 68 / 72, 32 / 36), abs=1e-12)
    model, proc = tiny_idefics3(kind)  # 32-px tiles: read whole
    views = _views(auto_adapter(model, proc), 64, 64)
    assert views["base"].box == (0.0, 0.0, 1.0, 1.0) and views["highres"].box == (0.0, 0.0, 1.0, 1.0)
