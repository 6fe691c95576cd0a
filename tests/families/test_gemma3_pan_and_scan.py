"""Gemma 3 with pan-and-scan: a wide or tall image is also shown to the model as crops along its long
side, each with its own span of ``mm_tokens_per_image`` tokens after the whole image's. dcam gives the
views ``"highres"`` (the crops stitched in their places; default) and ``"base"`` (the whole image).

The references are worked here: the crop boxes by hand from the processor's published rule (transformers
5.24, ``Gemma3ImageProcessor.pan_and_scan_batched``: ``k = clamp(min(floor(long / short + 0.5),
floor(long / min_crop)), 2, max_crops)`` crops of ``ceil(long / k)`` pixels, the last one cut at the
edge), the tokens of each crop by tagging its features in the model's own forward, the raw maps by one
autograd backward per word through the whole model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dcam.errors import InputError
from dcam.explain import Explainer
from dcam.probe import auto_adapter, batch_key
from dcam.probe.adapters.pan_and_scan import pan_and_scan_crops
from dcam.testing.hf_tiny import tiny_gemma3

S = 4  # tokens per side of every view: mm_tokens_per_image 16
PROMPT = "<start_of_image> describe"  # the marker given: the processor's text is this prompt itself
#: (width, height) -> the crops' pixel boxes (left, top, right, bottom), by hand with min_crop 16, max 4:
#: 100 x 40: floor(2.5 + 0.5) = 3 crops of ceil(100 / 3) = 34 px, the last 32; 40 x 90: floor(2.25 + 0.5) = 2
#: of 45; 70 x 40: floor(1.75 + 0.5) = 2 of 35; 50 x 50: ratio 1 < 1.2, none
CROPS = {(100, 40): [(0, 0, 34, 40), (34, 0, 68, 40), (68, 0, 100, 40)],
         (40, 90): [(0, 0, 40, 45), (0, 45, 40, 90)],
         (70, 40): [(0, 0, 35, 40), (35, 0, 70, 40)],
         (50, 50): []}
#: the column centres of the 100 x 40 image's stitched map: S cells spread over each crop (crops of 34, 34, 32 px)
WIDE_X = [(x0 + (j + 0.5) * (x1 - x0) / S) / 100 for x0, _, x1, _ in CROPS[(100, 40)] for j in range(S)]


def _image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def with_pan_and_scan(processor):
    """``processor`` with pan-and-scan on (transformers 5.24 reads it from the processor's images_kwargs or
    the call's keywords, not from the image processor's attributes)."""
    processor.images_kwargs = dict(processor.images_kwargs, do_pan_and_scan=True, pan_and_scan_min_crop_size=16,
                                   pan_and_scan_max_num_crops=4, pan_and_scan_min_ratio_to_activate=1.2)
    return processor


@pytest.fixture(scope="module")
def gemma():
    model, proc = tiny_gemma3()
    return model, with_pan_and_scan(proc)


def _hand_views(ids, image_token_id, crops):
    """The positions of the base view and of the stitched crops, from the sequence alone: the image tokens
    in spans of S*S, the whole image's first, then each crop's (raster order), stitched row by row."""
    pos = torch.nonzero(ids.reshape(-1) == image_token_id).reshape(-1)
    spans = pos.reshape(-1, S, S)
    assert len(spans) == 1 + len(crops)
    if not crops:
        return spans[0].reshape(-1), None, (S, S)
    lefts, tops = sorted({b[0] for b in crops}), sorted({b[1] for b in crops})
    rows, cols = len(tops), len(lefts)
    grid = torch.empty(rows * S, cols * S, dtype=torch.long)
    for k, (x0, y0, _, _) in enumerate(crops):  # the processor's order: row-major
        r, c = tops.index(y0), lefts.index(x0)
        grid[r * S:(r + 1) * S, c * S:(c + 1) * S] = spans[1 + k]
    return spans[0].reshape(-1), grid.reshape(-1), (rows * S, cols * S)


@pytest.mark.parametrize("wh", sorted(CROPS))
def test_the_processors_crops_are_the_hand_worked_boxes(gemma, wh):
    _, proc = gemma
    img = _image(*wh)
    pix = proc(images=img, text=PROMPT, return_tensors="pt")["pixel_values"]
    plain = proc.image_processor  # each crop alone, resized as the processor resizes the whole image
    assert pix.shape[0] == 1 + len(CROPS[wh])
    for k, box in enumerate(CROPS[wh]):
        alone = plain(images=img.crop(box), return_tensors="pt", do_pan_and_scan=False)["pixel_values"]
        torch.testing.assert_close(pix[1 + k:2 + k], alone, atol=1e-5, rtol=0)

    if CROPS[wh]:
        assert pan_and_scan_crops(wh, len(CROPS[wh])).boxes() == CROPS[wh]


def _tagged_embeddings(model, enc):
    """The first block's input of the model's forward on ``enc`` with every image token's features replaced by
    a tag, ``1000 * (entry + 1) + token``: entry 0 the whole image, 1.. the crops; token in raster order."""
    seen = {}

    def tag(_, __, out):
        n, t, d = out.shape
        return (1000.0 * (torch.arange(n)[:, None] + 1) + torch.arange(t)[None, :])[..., None].expand(n, t, d) \
            .to(out.dtype).clone()

    def grab(_, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).detach()
    hooks = [model.model.multi_modal_projector.register_forward_hook(tag),
             model.model.language_model.layers[0].register_forward_pre_hook(grab, with_kwargs=True)]
    try:
        with torch.no_grad():
            model(**enc)
    finally:
        for h in hooks:
            h.remove()
    return seen["h"][0, :, 0]


@pytest.mark.parametrize("wh", [(100, 40), (40, 90)])
def test_each_view_holds_the_tokens_of_its_pixels(gemma, wh):
    model, proc = gemma
    a = auto_adapter(model, proc)
    img = _image(*wh)
    prep = a.prepare(img, PROMPT)
    tags = _tagged_embeddings(model, {k: v for k, v in proc(images=img, text=PROMPT, return_tensors="pt").items()})
    crops = CROPS[wh]
    rows, cols = (1, len(crops)) if wh[0] >= wh[1] else (len(crops), 1)
    assert set(prep.views) == {"highres", "base"} and prep.grid == (rows * S, cols * S)
    assert prep.view(None).name == "highres"  # the default view
    base = tags[prep.views["base"].positions].reshape(S, S)
    assert base.tolist() == [[1000.0 + r * S + c for c in range(S)] for r in range(S)]
    hi = tags[prep.views["highres"].positions].reshape(rows * S, cols * S)
    # cell (y, x) of the stitched map: crop (y // S, x // S) (its entry: row-major + 1), token (y % S, x % S)
    want = [[1000.0 * (1 + (y // S) * cols + x // S + 1) + (y % S) * S + x % S for x in range(cols * S)]
            for y in range(rows * S)]
    assert hi.tolist() == want


def test_the_stitched_cells_lie_on_their_crops_pixels(gemma):
    model, proc = gemma
    a = auto_adapter(model, proc)
    hi = a.prepare(_image(100, 40), PROMPT).views["highres"]
    assert hi.box == (0.0, 0.0, 1.0, 1.0)
    # crops 0..34, 34..68 (8.5 px per cell), 68..100 (8 px per cell); rows: 40 px, 10 per cell
    assert hi.cells.x == pytest.approx(WIDE_X, abs=1e-12) and hi.cells.y == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert a.prepare(_image(70, 40), PROMPT).views["highres"].cells is None  # two crops of 35: even


def _raw_reference(model, enc, resp, layer, positions):
    """Raw maps by the math contract (../shared/SPEC.md, section 1), one full backward per word."""
    ids = torch.cat([enc["input_ids"], torch.tensor([resp])], 1)
    types = torch.cat([enc["token_type_ids"], torch.zeros(1, len(resp), dtype=torch.long)], 1)  # the response: text
    inputs = dict(enc, input_ids=ids, token_type_ids=types)
    inputs.pop("attention_mask")
    start = enc["input_ids"].shape[1]
    out = []
    for i, tok in enumerate(resp):
        seen = {}

        def keep(_, __, o):
            h = o[0] if isinstance(o, tuple) else o
            h.retain_grad()
            seen["h"] = h
        hook = model.model.language_model.layers[layer].register_forward_hook(keep)
        try:
            with torch.enable_grad():
                logits = model(**inputs, use_cache=False).logits
                logits[0, start + i - 1, tok].backward()
        finally:
            hook.remove()
        A, G = seen["h"][0, positions].detach(), seen["h"].grad[0, positions]
        w = G.clamp(min=0).mean(0)
        raw = (A * w).clamp(min=0).mean(1)
        out.append((raw - raw.min()) / (raw.max() - raw.min() + 1e-8))
    model.zero_grad(set_to_none=True)
    return torch.stack(out)


@pytest.mark.parametrize("view", ["highres", "base"])
def test_raw_maps_are_one_backward_per_word(gemma, view):
    model, proc = gemma
    img = _image(100, 40)
    exp = Explainer(model, proc, view=None if view == "highres" else view)
    e = exp.explain(img, PROMPT, response="a red circle")
    enc = dict(proc(images=img, text=PROMPT, return_tensors="pt"))
    resp = proc.tokenizer("a red circle", add_special_tokens=False)["input_ids"]
    base, hi, grid = _hand_views(enc["input_ids"], model.config.image_token_index, CROPS[(100, 40)])
    positions, grid = (hi, grid) if view == "highres" else (base, (S, S))
    want = _raw_reference(model, enc, resp, e.hooked_layer, positions)
    assert bool((want.amax(1) > 0.99).all())  # no degenerate (flat) map
    assert e.raw_maps.shape == (3, *grid) and e.grid == grid
    torch.testing.assert_close(e.raw_maps.reshape(3, -1), want, atol=1e-5, rtol=0)


def test_a_batch_of_other_crop_counts_is_each_image_alone(gemma):
    model, proc = gemma
    images = [_image(100, 40, 1), _image(40, 90, 2), _image(50, 50, 3), _image(70, 40, 4)]
    responses = ["a red circle", "the blue square", "a dog", "two cats"]
    a = auto_adapter(model, proc)
    preps = [a.prepare(im, PROMPT, a.encode_response(r)) for im, r in zip(images, responses)]
    assert [int(q.model_inputs["pixel_values"].shape[0]) for q in preps] == [4, 3, 1, 3]
    assert len({batch_key(q, a) for q in preps}) == 1  # other crop counts, one padded forward can take them
    for slack in (0.25, math.inf):  # the default split, and one padded batch of all four
        exp = Explainer(model, proc, batch_slack=slack)
        ones = [exp.explain(im, PROMPT, response=r) for im, r in zip(images, responses)]
        batch = exp.explain_batch(images, [PROMPT] * 4, responses)
        assert [e.grid for e in ones] == [(4, 12), (8, 4), (4, 4), (4, 8)]
        for e, one in zip(batch, ones):
            assert e.tokens == one.tokens and e.grid == one.grid and e.box == one.box and e.cells == one.cells
            torch.testing.assert_close(e.raw_maps, one.raw_maps, atol=1e-4, rtol=0)
            torch.testing.assert_close(e.maps, one.maps, atol=2e-4, rtol=0)


def test_an_image_without_crops_is_explained_as_before(gemma):
    model, proc = gemma
    plain_model, plain_proc = tiny_gemma3()  # pan-and-scan off
    img = _image(50, 50)
    got = Explainer(model, proc).explain(img, PROMPT, response="a red circle")
    want = Explainer(plain_model, plain_proc).explain(img, PROMPT, response="a red circle")
    assert got.grid == want.grid == (S, S) and got.view == want.view and got.box == want.box
    assert torch.equal(got.maps, want.maps) and torch.equal(got.raw_maps, want.raw_maps)
    # its one view is the whole image, "base", as for a cropped one (it was refused: a batch holding one
    # uncropped image failed whole with view="base")
    base = Explainer(model, proc, view="base").explain(img, PROMPT, response="a red circle")
    assert base.view == "base" and torch.equal(base.maps, got.maps)
    wide = _image(100, 40)
    batch = Explainer(model, proc, view="base").explain_batch([wide, img], [PROMPT] * 2, ["a red circle"] * 2)
    one = Explainer(model, proc, view="base").explain(wide, PROMPT, response="a red circle")
    torch.testing.assert_close(batch[0].maps, one.maps, atol=1e-6, rtol=0)
    torch.testing.assert_close(batch[1].maps, got.maps, atol=1e-6, rtol=0)


def test_view_all_and_a_view_it_has_not(gemma):
    model, proc = gemma
    img = _image(100, 40)
    e = Explainer(model, proc, view="all").explain(img, PROMPT, response="a red circle")
    assert {v: tuple(m.shape[1:]) for v, m in e.view_maps.items()} == {"highres": (4, 12), "base": (4, 4)}
    alone = Explainer(model, proc).explain(img, PROMPT, response="a red circle")
    torch.testing.assert_close(e.view_maps["highres"], alone.maps, atol=1e-6, rtol=0)
    with pytest.raises(InputError, match=r"^view: this model's images have no view 'tiles' \(views: default, "
                                         r"highres, base, all\)$"):
        Explainer(model, proc, view="tiles")


@pytest.mark.parametrize("view, grid", [("base", [4, 4]), ("highres", [4, 12]), ("all", [4, 12])])
def test_the_cli_explains_each_view(gemma, tmp_path, monkeypatch, view, grid):
    # the model and its cropping processor are handed to the CLI here (a checkpoint folder that chose crops:
    # tests/cli/test_pan_and_scan_option.py), the rest is the CLI's own run
    import dcam.models
    from dcam.cli import main

    monkeypatch.setattr(dcam.models, "load_model", lambda *a, **k: gemma)
    path = tmp_path / "wide.png"
    _image(100, 40).save(path)
    out = tmp_path / "out"
    assert main(["explain", str(path), "--model", str(tmp_path), "--prompt", PROMPT, "--response", "a red circle",
                 "--view", view, "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["view"] == ("highres" if view == "all" else view) and meta["grid"] == grid
    assert meta["box"] == [0.0, 0.0, 1.0, 1.0]
    if view == "base":
        assert meta["cells"] is None
    else:
        assert meta["cells"]["x"] == pytest.approx(WIDE_X, abs=1e-12)
        assert meta["cells"]["y"] == [0.125, 0.375, 0.625, 0.875]
    if view == "all":
        assert meta["views"] == {"highres": [4, 12], "base": [4, 4]}
        assert meta["view_boxes"] == {"highres": [0.0, 0.0, 1.0, 1.0], "base": [0.0, 0.0, 1.0, 1.0]}
        assert set(meta["view_cells"]) == {"highres"}
