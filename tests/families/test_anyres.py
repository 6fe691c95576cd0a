"""Anyres geometry: hand-worked cases, and the layout against the token counts
that transformers' processors (LLaVA-NeXT, LLaVA-OneVision) and the
``llava``-package stand-ins (LLaDA-V, LaViDa) produce over many image sizes."""
import numpy as np
import pytest
import torch
from PIL import Image

from dcam.probe import auto_adapter
from dcam.probe.adapters.anyres import (anyres_layout, anyres_max_shape, anyres_views, parse_pinpoints,
                                        select_best_resolution, unpadded_shape)

SIZES = [(40, 72), (72, 40), (96, 96), (33, 97), (97, 33), (50, 51), (120, 30), (30, 120), (64, 32), (17, 200),
         (200, 17), (61, 89)]


def test_best_resolution_hand_worked():
    # 72 x 40 (w x h) into (64, 64): scale 0.889 -> 64 x 35 = 2240 px kept; (96, 96) keeps all 2880
    assert select_best_resolution((72, 40), [(64, 64), (96, 96), (32, 96)]) == (96, 96)
    # equal pixels kept -> the least padding
    assert select_best_resolution((32, 32), [(64, 64), (32, 64), (64, 32)]) == (32, 64)


def test_unpad_hand_worked():
    # 12 x 12 map of a 40 x 72 (h x w) image: rows kept int(40 * 12 / 72) = 6, 3 off each side
    assert unpadded_shape(12, 12, (40, 72), "hf") == (6, 12) == unpadded_shape(12, 12, (40, 72), "llava")
    # a 2 x 3 map of a square image: width 49 * (2 / 49) = 1.9999999999999998 in floating point;
    # transformers rounds to 2 (pad (3 - 2) // 2 = 0, 3 columns), the llava package truncates to 1
    # (pad 1 each side, 1 column)
    assert unpadded_shape(2, 3, (49, 49), "hf") == (2, 3) and unpadded_shape(2, 3, (49, 49), "llava") == (2, 1)
    # an image wider than the map: 24 / 7 > 12 / 4, rows 7 * 12 / 24 = 3.5 -> 3, pad 0 -> all 4 kept
    assert unpadded_shape(4, 12, (7, 24), "llava") == (4, 12)
    assert anyres_max_shape(12, 12, 9, 4) == (12, 12) and anyres_max_shape(12, 12, 1, 4) == (4, 4)
    assert anyres_max_shape(12, 12, None, 4) == (12, 12)


def test_pinpoint_forms():
    assert parse_pinpoints("(1x1),...,(2x3)", 10) == [(10, 10), (10, 20), (10, 30), (20, 10), (20, 20), (20, 30)]
    assert parse_pinpoints("[(384, 768), (768, 384)]", 384) == [(384, 768), (768, 384)]
    assert parse_pinpoints([[1, 2]], 7) == [(1, 2)]


def test_a_count_that_does_not_fit_names_both_counts():
    lay = anyres_layout((40, 72), [[96, 96]], 32, 4, wh_pinpoints=False, rounding="hf")
    assert lay.total == 16 + 6 * 13
    with pytest.raises(ValueError, match=r"image span has 50 tokens .* needs 94"):
        anyres_views(torch.arange(50), lay)
    pos, grid, views = anyres_views(torch.arange(100, 100 + lay.total), lay)
    assert grid == (6, 12) and views["base"].positions.tolist() == list(range(100, 116))
    assert pos[:13].tolist() == list(range(116, 128)) + [129]  # row 0, then row 1 after the newline slot


@pytest.mark.parametrize("pinpoints", [[[96, 96]], [[64, 128], [128, 64], [96, 96]]])
def test_the_highres_box_is_where_transformers_puts_the_kept_rows(pinpoints):
    # the stitched map was laid over the whole image; the unpad keeps whole feature rows, so its
    # edges miss the image's by up to a row (past it where padding rows stay, short where image
    # rows go). Worked out here with transformers' own resize, padding and unpad.
    from transformers.image_processing_utils import get_patch_output_size
    from transformers.image_processing_utils import select_best_resolution as hf_best
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    tile, unit = 32, 4
    for h, w in SIZES:
        bh, bw = hf_best((h, w), pinpoints)
        nh, nw = get_patch_output_size(np.zeros((h, w, 3)), (bh, bw), "channels_last")
        top, left = (bh - nh) // 2, (bw - nw) // 2
        H, W = bh // tile * unit, bw // tile * unit
        index = torch.stack(torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")).double()
        kept = unpad_image(index, (h, w))
        r0, r1, c0, c1 = kept[0, 0, 0], kept[0, -1, 0] + 1, kept[1, 0, 0], kept[1, 0, -1] + 1
        px = tile / unit  # canvas pixels per feature row or column
        want = ((c0 * px - left) / nw, (r0 * px - top) / nh, (c1 * px - left) / nw, (r1 * px - top) / nh)
        lay = anyres_layout((h, w), pinpoints, tile, unit, wh_pinpoints=False, rounding="hf")
        assert lay.grid == tuple(kept.shape[1:])
        assert lay.box == pytest.approx([float(v) for v in want], abs=1e-12), (h, w)
        pos, grid, views = anyres_views(torch.arange(lay.total), lay)
        assert views["highres"].box == lay.box and views["base"].box == (0.0, 0.0, 1.0, 1.0)
    # hand-worked: 40 x 72 into 96 x 96 is 54 x 96 from row 21; of the 12 feature rows (8 canvas
    # rows each) the unpad keeps 3..8, canvas rows 24..72: image rows 3..51 of 54
    lay = anyres_layout((40, 72), [[96, 96]], tile, unit, wh_pinpoints=False, rounding="hf")
    assert lay.box == pytest.approx((0.0, 3 / 54, 1.0, 51 / 54))


@pytest.mark.parametrize("name", ["llava-next", "llava-onevision"])
def test_layout_equals_the_processors_token_count(name, models):
    model, proc = models(name)
    a = auto_adapter(model, proc)
    rng = np.random.default_rng(0)
    for h, w in SIZES:
        img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        enc = proc(images=img, text="<image> describe", return_tensors="pt")
        n = int((enc["input_ids"] == a.image_token_id).sum())
        assert a.layout((h, w)).total == n, (h, w)


@pytest.mark.parametrize("name", ["llada-v", "lavida"])
def test_layout_equals_the_models_own_expansion(name, models):
    model, proc = models(name)
    a = auto_adapter(model, proc)
    rng = np.random.default_rng(1)
    for h, w in SIZES:
        img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        prep = a.prepare(img, None, [5])
        n = int((prep.input_ids == -200).sum())
        layout, _ = a.layout(img.size)
        hh, ww = layout.grid
        assert n == layout.total == layout.unit ** 2 + hh * (ww + 1), (h, w)


@pytest.mark.parametrize("ratio", [2, None, 4])
def test_lavida_pools_at_get_2dpools_stride_whatever_the_config_says(ratio, monkeypatch):
    """LaViDa's encoder pools every tile with ``get_2dPool(feat)``, whose stride is its
    default argument, 2; ``config.mm_pooler_ratio`` is never read there. dcam read the
    stride from that key, so a config without it (or with 4) had every image refused
    ("image span has N tokens ..."). Hand-worked: 28-pixel tiles of 4 x 4 patches pool
    bilinearly to ceil(4 / 2) = 2, a 2 x 2 base view; with NOT_ALWASY_DO_2DPOOL set (the
    published switch) nothing is pooled: 4 x 4."""
    from dcam.testing.llava_dmllm import tiny_lavida

    model, proc = tiny_lavida(seed=0, layers=1, mm_pooler_ratio=ratio)
    a = auto_adapter(model, proc)
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, size=(40, 72, 3), dtype=np.uint8))
    monkeypatch.delenv("NOT_ALWASY_DO_2DPOOL", raising=False)
    prep = a.prepare(img, None, [5])  # checked against the model's own expansion
    assert prep.views["base"].grid == (2, 2)
    monkeypatch.setenv("NOT_ALWASY_DO_2DPOOL", "1")
    prep = a.prepare(img, None, [5])
    assert prep.views["base"].grid == (4, 4)


def test_pad_aspect_pads_to_a_square_and_places_the_map_past_the_edges():
    """image_aspect_ratio="pad" (LLaVA's release): the image centred on a square of its
    longer side in the processor's mean colour. A 72 x 40 image sits at rows 16..56 of a
    72 x 72 square, so the map's box on the image is y from -16/40 = -0.4 to 1.4. Before,
    the image was stretched over the square and its map laid over the whole image."""
    from dcam import Explainer
    from dcam.render.overlay import map_on_image, upsample_map
    from dcam.testing.llava_dmllm import tiny_llada_v

    model, proc = tiny_llada_v(seed=0, layers=2, image_aspect_ratio="pad")
    a = auto_adapter(model, proc)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 72, 3), dtype=np.uint8))
    ip = proc.image_processor
    square = Image.new("RGB", (72, 72), tuple(int(v * 255) for v in ip.image_mean))
    square.paste(img, (0, 16))
    want = ip.preprocess([square], return_tensors="pt")["pixel_values"]
    prep = a.prepare(img, None, [5])
    torch.testing.assert_close(prep.model_inputs["images"].float(), torch.as_tensor(want).float(), atol=0, rtol=0)
    e = Explainer(model, proc).explain(img, response="the cat")
    assert e.box == pytest.approx((0.0, -0.4, 1.0, 1.4))
    tall = a.prepare(img.transpose(Image.Transpose.TRANSPOSE), None, [5])  # 40 x 72: columns -0.4..1.4
    assert tall.view(None).box == pytest.approx((-0.4, 0.0, 1.4, 1.0))
    # on the image: the square's map, rows 16..56
    cam = np.arange(16, dtype=np.float32).reshape(4, 4) / 15  # (a map is in [0, 1]: 0..15 was clamped to mostly 1)
    np.testing.assert_array_equal(map_on_image(cam, (40, 72), e.box), upsample_map(cam, (72, 72))[16:56])
    # faithfulness perturbs the grid cell each pixel falls in: row r of the image is row r + 16 of the square
    from dcam.eval.faithfulness import _cell_index

    cells = _cell_index(40, 72, (4, 4), e.box)
    want_cells = ((np.arange(40) + 16) * 4 // 72)[:, None] * 4 + (np.arange(72) * 4 // 72)[None, :]
    np.testing.assert_array_equal(cells, want_cells)


@pytest.mark.parametrize("build", ["tiny_lavida", "tiny_lavida_dream"])
def test_lavida_builders_take_anyres_max(build):
    """The LaViDa stand-ins take the caller's ``image_aspect_ratio`` (it was a TypeError). A 40 x 120
    image: 2 x 6 high-resolution tokens under plain anyres (base view 2 x 2); anyres_max_N shrinks a
    grid of more than N x 4 tokens by s = sqrt(12 / 4N) when s > 1.1: N=1, s=1.73 -> (1, 3); N=2,
    s=1.22 -> (int(2 / 1.22), int(6 / 1.22)) = (1, 4)."""
    from dcam.probe import auto_adapter
    from dcam.testing import llava_dmllm

    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 120, 3), dtype=np.uint8))
    for ratio, grid in ((None, (2, 6)), ("anyres_max_1", (1, 3)), ("anyres_max_2", (1, 4))):
        model, proc = getattr(llava_dmllm, build)(**({} if ratio is None else {"image_aspect_ratio": ratio}))
        assert model.config.image_aspect_ratio == (ratio or "anyres")
        a = auto_adapter(model, proc)
        prep = a.prepare(im, None, a.encode_response("a red circle"))
        assert tuple(prep.grid) == grid
        assert tuple(prep.views["base"].grid) == (2, 2) and tuple(prep.views["highres"].grid) == grid
