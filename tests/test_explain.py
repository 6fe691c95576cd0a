"""Explainer, gradient probe and Explanation outputs, on a tiny random zoo model."""
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from dcam.probe.adapters import auto_adapter
from dcam.probe.gradients import LastLayerError, build_probe_inputs, probe, published_gradients
from dcam.ops.config import CamConfig
from dcam.zoo.data import generate_sample
from dcam.errors import InputError
from dcam.explain import Explainer, repeat_ratio
from dcam.methods import METHODS
from dcam.testing import tiny_toy

CAPTION = None


def tiny_zoo(seed=0, layers=3):
    return tiny_toy(seed, layers)


@pytest.fixture(scope="module")
def zoo():
    return tiny_zoo()


@pytest.fixture(scope="module")
def sample():
    return generate_sample((0, 2, 3), image_size=48, n_objects=2)


@pytest.fixture(scope="module")
def prepared(zoo, sample):
    model, proc = zoo
    a = auto_adapter(model, proc)
    prep = a.prepare(sample.image, None, a.encode_response(sample.caption))
    return a, prep


def _targets(prep, idx):
    return [prep.response_start + i for i in idx], [prep.response_ids[i] for i in idx]


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("mode", ["full", "masked", "remask"])
@pytest.mark.parametrize("score", ["logit", "contrastive"])
def test_batched_cotangents_equal_one_at_a_time(prepared, mode, score):
    a, prep = prepared
    pos, ids = _targets(prep, [0, 1, 2, 4, 5])
    r = probe(a, prep, pos, ids, 1, probe=mode, target_score=score, chunk_size=2)
    ref = published_gradients(a, prep, pos, ids, 1, probe=mode, target_score=score)
    got = r.per_target_grads()
    assert got.shape == ref.shape == (5, 64, 32)
    assert ref.abs().max() > 0
    torch.testing.assert_close(got, ref, atol=1e-7, rtol=1e-5)


def test_probe_freezes_parameters_and_restores_them(prepared):
    a, prep = prepared
    model = a.model
    model.train()
    pos, ids = _targets(prep, [1, 2])
    seen = []
    h = model.lm_head.register_forward_hook(lambda m, i, o: seen.append((m.weight.requires_grad, m.training)))
    try:
        probe(a, prep, pos, ids, 1)
    finally:
        h.remove()
        model.eval()
    assert seen == [(False, False)]
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_graph_starts_at_the_hooked_block(prepared):
    """Blocks below the hooked one run without autograd; above it, with (the
    blocks' MLPs are hooked: the bundled model runs its last block at the
    scored rows without calling the block module itself)."""
    a, prep = prepared
    modes = []
    hooks = [b.mlp.register_forward_pre_hook(lambda m, args: modes.append(torch.is_grad_enabled()))
             for b in a.blocks()]
    try:
        pos, ids = _targets(prep, [1])
        probe(a, prep, pos, ids, 1)
    finally:
        for h in hooks:
            h.remove()
    assert modes == [False, False, True]


def test_last_block_gradients_are_zero_and_refused(zoo, prepared, sample):
    a, prep = prepared
    pos, ids = _targets(prep, [1, 2])
    last = len(a.blocks()) - 1
    r = probe(a, prep, pos, ids, last, allow_last_layer=True)
    assert torch.count_nonzero(r.grads) == 0
    ref = published_gradients(a, prep, pos, ids, last)
    assert torch.count_nonzero(ref) == 0
    with pytest.raises(LastLayerError):
        probe(a, prep, pos, ids, last)
    with pytest.raises(LastLayerError, match="last block"):
        Explainer(*zoo, layer=-1)
    # an earlier block has non-zero gradients
    assert probe(a, prep, pos, ids, last - 1).grads.abs().max() > 0


def test_views_the_model_lacks_are_refused_before_any_work(zoo, sample):
    # the toy's images have only the default view; a per-call view is checked like the explainer's
    exp = Explainer(*zoo)
    with pytest.raises(InputError, match=r"^view: this model's images have no view 'base' \(views: default, all\)$"):
        exp.explain(sample.image, response=sample.caption, view="base")
    with pytest.raises(InputError, match=r"^view must be a view name, got int$"):
        Explainer(*zoo, view=3)
    named = exp.explain(sample.image, response=sample.caption, targets=[0], view="default")
    assert torch.equal(named.maps, exp.explain(sample.image, response=sample.caption, targets=[0]).maps)


def test_declared_views_of_a_subclass_that_makes_its_own_images_are_unknown(zoo):
    from dcam.explain import declared_image_views
    from dcam.probe.adapters import ShapesAdapter

    class Renamed(ShapesAdapter):  # images made as the toy's: its declaration holds
        name = "renamed"

    class OwnViews(ShapesAdapter):  # images made its own way: views not known before one is made
        def prepare(self, *args, **kwargs):
            return super().prepare(*args, **kwargs)

    class OwnViewsDeclared(OwnViews):
        image_views = ("top", "bottom")

    assert declared_image_views(Renamed(*zoo)) == ()
    assert declared_image_views(OwnViews(*zoo)) is None
    assert Explainer(adapter=OwnViews(*zoo), view="top").view == "top"  # the image decides
    assert declared_image_views(OwnViewsDeclared(*zoo)) == ("top", "bottom")


# --------------------------------------------------------------------------- probe inputs

def test_probe_inputs_are_what_they_claim(prepared):
    a, prep = prepared
    s, n = prep.response_start, prep.response_length
    mask = a.mask_token_id
    idx = [0, 2, 5]
    pos, _ = _targets(prep, idx)
    full = build_probe_inputs(a, prep, pos, "full")
    assert torch.equal(full, prep.input_ids)
    assert not (full[0, s:s + n] == mask).any()
    masked = build_probe_inputs(a, prep, pos, "masked")
    assert masked.shape == (1, prep.input_ids.shape[1])
    assert (masked[0, s:s + n] == mask).all()
    assert torch.equal(masked[0, :s], prep.input_ids[0, :s])
    remask = build_probe_inputs(a, prep, pos, "remask")
    assert remask.shape == (3, prep.input_ids.shape[1])
    is_mask = remask == mask
    assert is_mask.sum(1).tolist() == [1, 1, 1]
    assert [int(torch.nonzero(row)[0]) for row in is_mask] == pos
    keep = ~is_mask
    assert torch.equal(remask[keep], prep.input_ids.expand(3, -1)[keep])
    # and the probe really runs on those inputs (the image is encoded once for the 3 rows)
    calls = []
    h = a.model.vision_tower.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        r = probe(a, prep, pos, [prep.response_ids[i] for i in idx], 1, probe="remask")
    finally:
        h.remove()
    assert len(calls) == 1
    assert torch.equal(r.input_ids, remask)
    assert r.acts.shape[0] == 3 and r.grads.shape[:2] == (3, 1)


def test_span_located_from_image_token_id(zoo, sample):
    """The image span is found from the image token id: a sequence shifted by
    masked left padding gives the same activations, gradients and maps."""
    from dcam import ops
    from dcam.probe.adapters.base import Prepared

    model, proc = zoo
    a = auto_adapter(model, proc)
    base = a.prepare(sample.image, None, a.encode_response(sample.caption))
    k = 5
    pad = torch.full((1, k), model.config.pad_token_id, dtype=torch.long)
    ids = torch.cat([pad, base.input_ids], 1)
    keep = torch.cat([torch.zeros(1, k, dtype=torch.long), torch.ones_like(base.input_ids)], 1)
    shifted = Prepared(input_ids=ids, model_inputs=dict(base.model_inputs, attention_mask=keep),
                       response_start=base.response_start + k, response_length=base.response_length,
                       image_positions=a.locate(ids, a.grid), grid=base.grid, image=base.image)
    assert torch.equal(shifted.image_positions, base.image_positions + k)
    idx = [1, 2, 5]
    r0 = probe(a, base, *_targets(base, idx), 1)
    r1 = probe(a, shifted, *_targets(shifted, idx), 1)
    torch.testing.assert_close(r1.acts, r0.acts, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(r1.grads, r0.grads, atol=1e-7, rtol=1e-3)
    m0 = ops.diffusion_cam(r0.acts, r0.grads, base.grid).maps
    m1 = ops.diffusion_cam(r1.acts, r1.grads, shifted.grid).maps
    torch.testing.assert_close(m1, m0, atol=1e-4, rtol=0)
    # different prompt lengths: the span moves with the prompt
    p2 = a.prepare(sample.image, "what is in this image", a.encode_response(sample.caption))
    assert int(p2.image_positions[0]) == int(base.image_positions[0]) + 2
    assert torch.equal(p2.input_ids[0, p2.image_positions], torch.full((64,), a.image_token_id))


# --------------------------------------------------------------------------- explainer

def test_explain_all_tokens(zoo, sample):
    e = Explainer(*zoo).explain(sample.image, response=sample.caption)
    words = sample.caption.split()
    assert e.tokens == words
    assert e.word_numbers == e.response_indices == list(range(len(words)))
    assert e.maps.shape == (len(words), 8, 8) and e.maps.dtype == torch.float32
    assert float(e.maps.min()) >= 0 and float(e.maps.max()) <= 1
    assert set(e.stats) == {"kernel_size", "dacg_strategy", "dacg_threshold", "cba_threshold", "sicd_alpha",
                            "degenerate"}
    assert all(v.shape == (len(words),) for v in e.stats.values())
    assert e.steps == zoo[0].config.response_length and e.steps_source == "default"
    assert e.repeat_ratio == pytest.approx(repeat_ratio([1, 2, 3, 4, 1, 5, 6]))  # "a" repeats
    from dcam.explain import DEFAULT_DMLLM_PROBE

    assert e.probe == DEFAULT_DMLLM_PROBE and e.layer == 1 and e.target_score == "logit"
    # the maps are the reference pooling and refinement of an independent probe, refined with the
    # model's response length as steps, the image height and the caption's repeat ratio (1/7: "a")
    from dcam.ops import reference as R

    model, proc = zoo
    a = auto_adapter(model, proc)
    prep = a.prepare(sample.image, None, a.encode_response(sample.caption))
    r = probe(a, prep, *_targets(prep, list(range(len(words)))), 1, probe=DEFAULT_DMLLM_PROBE)
    raw, deg = R.pool_gradients_reference(r.acts, r.grads, 8, 8, e.config.grad_relu)
    o = e.config.op_args()
    scalar = lambda v: torch.tensor([float(v)])  # noqa: E731
    want = R.refine_reference(raw, deg, scalar(model.config.response_length), scalar(sample.image.height),
                              scalar(1 / 7), None, None, o["akd_kernel"], o["akd"], o["dacg"], o["cba"], o["sicd"],
                              o["dacg_params"], o["cba_params"])[0]
    torch.testing.assert_close(e.maps, want[0], atol=1e-5, rtol=0)


def test_explain_generates_and_records_steps(zoo, sample):
    model, proc = zoo
    exp = Explainer(model, proc)
    e = exp.explain(sample.image, steps=4)
    assert e.steps == 4 and e.steps_source == "generation"
    assert len(e.response_ids) == model.config.response_length
    eos = model.config.eos_token_id
    assert eos not in e.token_ids and model.config.pad_token_id not in e.token_ids
    e2 = exp.explain(sample.image, steps=40)  # more steps than slots: only Lr steps do anything
    assert e2.steps == model.config.response_length
    assert any("40 requested" in n for n in e2.notes)  # the clamp is stated, not silent


def test_targets_by_index_and_word(zoo, sample):
    exp = Explainer(*zoo)
    words = sample.caption.split()  # a <c1> <s1> and a <c2> <s2>
    e = exp.explain(sample.image, response=sample.caption, targets=[2, 1])
    assert e.word_numbers == [1, 2] and e.tokens == [words[1], words[2]]
    e = exp.explain(sample.image, response=sample.caption, targets=[words[6].upper(), "a"], probe="full")
    assert e.word_numbers == [0, 4, 6]
    assert exp.explain(sample.image, response=sample.caption, targets=-1).word_numbers == [6]  # the last word
    full = exp.explain(sample.image, response=sample.caption, probe="full")
    torch.testing.assert_close(e.maps[2], full.maps[6])  # full probe: a token's map ignores the others
    with pytest.raises(InputError, match="'purple'"):
        exp.explain(sample.image, response=sample.caption, targets=["a", "purple"])
    # word numbers count the 7 words, not the eos/pad slots after them
    with pytest.raises(InputError, match="word number 7 is out of range for a response of 7 words"):
        exp.explain(sample.image, response=sample.caption, targets=[len(words)])
    with pytest.raises(InputError, match="targets"):
        exp.explain(sample.image, response=sample.caption, targets=None)


def test_contrastive_differs_from_logit(zoo, sample):
    exp = Explainer(*zoo)
    e1 = exp.explain(sample.image, response=sample.caption, target_score="logit")
    e2 = exp.explain(sample.image, response=sample.caption, target_score="contrastive")
    assert e2.target_score == "contrastive"
    assert e2.extra["distractor"] is not None
    assert not torch.equal(e1.scores, e2.scores)
    assert (e1.maps - e2.maps).abs().max() > 1e-3


def test_probe_modes_and_unknown_probe(zoo, sample):
    exp = Explainer(*zoo)
    maps = {m: exp.explain(sample.image, response=sample.caption, probe=m).maps for m in ("full", "masked", "remask")}
    assert all(v.shape == maps["full"].shape for v in maps.values())
    assert (maps["full"] - maps["masked"]).abs().max() > 1e-4
    with pytest.raises(InputError, match="probe"):
        exp.explain(sample.image, response=sample.caption, probe="half")


def test_context_sicd_and_weights(zoo, sample, prepared):
    a, prep = prepared
    idx = list(range(7))
    pos, ids = _targets(prep, idx)
    r = probe(a, prep, pos, ids, 1)
    W = r.context_weights
    assert W.shape == (7, 7) and (W >= 0).all()
    assert torch.count_nonzero(torch.diagonal(W)) == 0
    assert W[0, 4] == 0 and W[4, 0] == 0  # both "a"
    e = Explainer(*zoo, config=CamConfig(sicd="context")).explain(sample.image, response=sample.caption)
    assert e.maps.shape == (7, 8, 8)


@pytest.mark.parametrize("method", ["grad-cam", "llava-cam", "tam"])
def test_baseline_methods(zoo, sample, method):
    assert method in METHODS
    e = Explainer(*zoo, method=method).explain(sample.image, response=sample.caption)
    assert e.method == method and e.maps.shape == (7, 8, 8)
    assert float(e.maps.max()) <= 1 and float(e.maps.min()) >= 0
    if method == "llava-cam":
        assert e.target_score == "contrastive"


def test_tam_of_a_phrase_is_the_class_of_all_its_tokens(zoo, sample, prepared):
    # TAM took the first token's LM-head row alone: "red circle" was explained as "red"
    from dcam.ops.reference import rank_gaussian_filter

    a, prep = prepared
    words = sample.caption.split()
    e = Explainer(*zoo, method="tam").explain(sample.image, response=sample.caption,
                                              targets=[f"{words[1]} {words[2]}"], probe="full")
    with torch.no_grad():
        out = a.model(input_ids=prep.input_ids, output_hidden_states=True, **prep.model_inputs)
    H = out.hidden_states[-1][0, prep.image_positions].float()
    W = a.lm_head_weight().detach().float()
    act = torch.relu(H @ (W[prep.response_ids[1]] + W[prep.response_ids[2]]))  # one item: nothing to subtract
    h, w = e.maps.shape[1:]
    f = rank_gaussian_filter(act.reshape(1, h, w), torch.tensor([3]))[0]
    torch.testing.assert_close(e.maps[0], (f - f.min()) / (f.max() - f.min() + 1e-8), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["grad-cam", "llava-cam", "tam"])
def test_baselines_refuse_a_model_state_that_is_not_finite(zoo, sample, method):
    # the baselines' min-max turned a NaN row into an all-zero map, scored as a real one
    model, _ = zoo
    a = auto_adapter(*zoo)

    def overflow(module, args, output):
        t = (output[0] if isinstance(output, tuple) else output).clone()
        t[0, 5, 3] = float("inf")
        return (t,) + tuple(output[1:]) if isinstance(output, tuple) else t

    hook = a.blocks()[0].register_forward_hook(overflow)
    try:
        # named as the model's doing (no float16 cure offered to a float32 model)
        with pytest.raises(InputError, match=r"^model: its (scores|acts|grads|image_hidden) came out NaN/Inf "
                                             r"\(\d+ value\(s\), run in float32\)$"):
            Explainer(*zoo, method=method).explain(sample.image, response=sample.caption, probe="full")
    finally:
        hook.remove()
    from dcam import methods as BL

    acts, grads = torch.randn(1, 4, 3), torch.randn(1, 2, 4, 3)
    acts[0, 1, 2] = float("nan")
    for f in (BL.grad_cam, BL.llava_cam):
        with pytest.raises(InputError, match=r"^acts contains 1 NaN/Inf value\(s\)$"):
            f(acts, grads, (2, 2))
    with pytest.raises(InputError, match="their product overflows float32"):
        BL.grad_cam(torch.full((1, 4, 3), 1e30), torch.full((1, 2, 4, 3), 1e30), (2, 2))
    lw = torch.ones(2, 2)
    lw[0, 1] = float("nan")
    with pytest.raises(InputError, match=r"^logit_weights contains 1 NaN/Inf value\(s\)$"):
        BL.tam(torch.randn(4, 3), torch.randn(2, 3), [1, 2], lw, (2, 2))
    for k in (0, 2, -1, 2.5, True):
        with pytest.raises(InputError, match=r"^kernel_size must be an odd int >= 1"):
            BL.tam(torch.randn(4, 3), torch.randn(2, 3), [1, 2], torch.ones(2, 2), (2, 2), kernel_size=k)


def test_tam_uses_last_hidden_states(prepared):
    a, prep = prepared
    pos, ids = _targets(prep, [1, 2])
    r = probe(a, prep, pos, ids, 1, want_grads=False, want_last_hidden=True)
    assert r.grads is None
    with torch.no_grad():
        out = a.model(input_ids=prep.input_ids, output_hidden_states=True, **prep.model_inputs)
    torch.testing.assert_close(r.last_hidden[0], out.hidden_states[-1][0, prep.image_positions])


def test_unknown_method_and_bad_config(zoo):
    with pytest.raises(InputError, match="unknown method"):
        Explainer(*zoo, method="saliency")
    with pytest.raises(InputError, match="config must be a dcam.CamConfig"):
        Explainer(*zoo, config={"sicd": "off"})


# --------------------------------------------------------------------------- outputs

def test_overlay_and_save(zoo, sample, tmp_path):
    from safetensors.torch import load_file

    e = Explainer(*zoo).explain(sample.image, response=sample.caption)
    words = sample.caption.split()
    ov = e.overlay(words[2], alpha=0.5)
    assert isinstance(ov, Image.Image) and ov.size == sample.image.size and ov.mode == "RGB"
    # alpha 0 is the image itself, alpha 1 the pure heatmap
    assert np.array_equal(np.asarray(e.overlay(1, alpha=0.0)), np.asarray(sample.image))
    assert not np.array_equal(np.asarray(e.overlay(1, alpha=1.0)), np.asarray(sample.image))
    paths = e.save(str(tmp_path))
    assert len(paths["overlays"]) == len(words)
    for p in paths["overlays"]:
        assert os.path.exists(p) and Image.open(p).size == (288, 288)  # 48 px scaled x6 to >= 256
    assert os.path.basename(paths["overlays"][2]) == f"02_{words[2]}.png"
    sheet = Image.open(paths["contact_sheet"])
    from dcam.render import sheet_layout

    grid = sheet_layout(len(words) + 1, (288, 288), label_height=28)
    assert sheet.size[0] == grid[0] and sheet.size[1] > grid[1]  # plus the title and the colour bar
    t = load_file(paths["maps"])
    torch.testing.assert_close(t["maps"], e.maps, atol=0, rtol=0)
    assert t["token_ids"].tolist() == e.token_ids
    torch.testing.assert_close(t["stats.sicd_alpha"], e.stats["sicd_alpha"], atol=0, rtol=0)
    meta = json.load(open(paths["meta"]))
    assert meta["tokens"] == words and meta["steps"] == e.steps and meta["grid"] == [8, 8]
    assert set(meta["stats"]) == set(e.stats) and len(meta["stats"]["kernel_size"]) == len(words)
    assert meta["method"] == "diffusion-cam" and meta["probe"] == e.probe


def test_contrastive_distractor_choice(prepared):
    from dcam.probe.gradients import pick_distractor

    a, prep = prepared
    s = prep.response_start
    assert pick_distractor(prep, [s, s + 1], a) == s + 2  # the first non-target response slot
    # every slot a target: the last prompt token outside the image span ("image" of "describe the image")
    d = pick_distractor(prep, list(range(s, s + prep.response_length)), a)
    assert d == int(prep.image_positions[0]) - 1
    assert a.token_strings([int(prep.input_ids[0, d])]) == ["image"]


def test_fallback_when_vmapped_backward_fails(prepared, monkeypatch):
    """An op without a batching rule: one backward per token, same gradients, a warning."""
    a, prep = prepared
    pos, ids = _targets(prep, [1, 2, 5])
    ref = probe(a, prep, pos, ids, 1).grads
    real = torch.autograd.grad

    def no_vmap(*args, **kw):
        if kw.get("is_grads_batched"):
            raise RuntimeError("Batching rule not implemented for aten::something")
        return real(*args, **kw)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    with pytest.warns(RuntimeWarning, match="one backward per token"):
        got = probe(a, prep, pos, ids, 1, chunk_size=2).grads
    torch.testing.assert_close(got, ref, atol=1e-8, rtol=1e-6)


def test_toy_response_length_other_than_its_slots_is_refused(zoo, sample):
    # the toy processor lays out a fixed number of response slots: response_length=5 generated into
    # the last 5 of them (after 7 [MASK]s) and explained the ids at the first 5, a context the model
    # never saw; with trajectory=True it ended in a RuntimeError
    model, proc = zoo
    exp = Explainer(model, proc)
    n = proc.response_length
    for kw in (dict(response_length=5), dict(response_length=5, trajectory=True), dict(response_length=n + 1)):
        with pytest.raises(InputError) as info:
            exp.explain(sample.image, **kw)
        assert str(info.value) == (f"response_length: this model writes exactly {n} response slots (its "
                                   f"processor's response_length; shorter responses end in eos), "
                                   f"got {kw['response_length']}")
    assert len(exp.explain(sample.image, response_length=n).response_ids) == n


def test_response_ids_outside_the_vocabulary_are_refused(zoo, sample):
    # an unknown id ended in the tokenizer's AttributeError (None.startswith) or OverflowError (-1)
    model, proc = zoo
    exp = Explainer(model, proc)
    V = model.lm_head.weight.shape[0]
    for bad in (V, 999999, -1):
        with pytest.raises(InputError) as info:
            exp.explain(sample.image, response=[6, bad])
        assert str(info.value) == f"response: token id {bad} is not in the model's vocabulary (ids 0..{V - 1})"


def test_response_ids_must_be_whole_numbers(zoo, sample):
    # int() read 6.9 as id 6, True as id 1 and the bytes b"\x06\n" as ids 6 and 10, all explained
    import numpy as np

    exp = Explainer(*zoo)
    refused = {"response: token ids must be whole numbers, got 6.9 at position 0": [6.9, 7],
               "response: token ids must be whole numbers, got True at position 1": [6, True],
               "response: token ids must be whole numbers, got np.float32(6.5) at position 0":
                   np.array([6.5, 7], np.float32),
               "response: token ids must be whole numbers, got tensor(True) at position 0": torch.tensor([True]),
               "response must be text or a list of token ids, got bytes (decode it to text first)": b"\x06\n",
               "response: token ids must be one row, got a tensor of shape (1, 2)": torch.tensor([[6, 7]]),
               "response must be text or a list of token ids, got int": 6}
    for message, response in refused.items():
        with pytest.raises(InputError) as info:
            exp.explain(sample.image, response=response)
        assert str(info.value) == message
    ids = [6, 7, 8]  # integers of any kind are ids
    want = exp.explain(sample.image, response=ids).response_ids
    for given in (np.array(ids), torch.tensor(ids), [np.int64(6), torch.tensor(7), 8]):
        assert exp.explain(sample.image, response=given).response_ids == want
    assert want[:3] == ids


def test_a_single_view_model_reports_no_view_even_with_view_all(zoo, sample):
    # view="all" on a model without named views reported view "default" (run index lines too),
    # where the docs say None for a single-view model
    e = Explainer(*zoo, view="all").explain(sample.image, response=sample.caption)
    assert e.view is None and e.view_maps == {}


def test_inference_mode_around_explain_gives_the_same_maps(zoo, sample):
    """Under torch.inference_mode() no score could carry a gradient: every map came out
    all zero and 'degenerate', with no error. inference_mode is now off inside explain."""
    exp = Explainer(*zoo)
    want = exp.explain(sample.image, response=sample.caption)
    with torch.inference_mode():
        got = exp.explain(sample.image, response=sample.caption)
    torch.testing.assert_close(got.maps, want.maps, rtol=0, atol=0)
    assert not bool(got.stats["degenerate"].any())


def test_one_explainer_from_two_threads(zoo, sample):
    """Two calls at once shared the model's hooks ("the hooked block ran 2 times") and its
    frozen flags: afterwards the user's model was in eval mode with no parameter requiring
    grad. Calls on one model now take turns; each gets its own maps."""
    import threading

    model, proc = tiny_zoo(seed=3)
    model.train()
    exp = Explainer(model, proc)
    want = exp.explain(sample.image, response=sample.caption).maps
    results, errors = [], []

    def work():
        try:
            for _ in range(3):
                results.append(exp.explain(sample.image, response=sample.caption).maps)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 6
    for maps in results:
        torch.testing.assert_close(maps, want, rtol=0, atol=0)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_explanations_compare_by_identity_and_repr_briefly(zoo, sample):
    import copy

    e = Explainer(*zoo).explain(sample.image, response=sample.caption)
    assert e == e and e != copy.deepcopy(e)  # compared tensor by tensor it raised "ambiguous"
    r = repr(e)
    assert r.startswith("Explanation(method='diffusion-cam', tokens=") and len(r) < 400


def test_words_are_looked_up_as_targets_are_matched(zoo, sample):
    # a target accepted by explain() ("RED  circle", "Red,Square") could not be looked up by the same text
    e = Explainer(*zoo).explain(sample.image, response="a red circle and a blue square",
                                targets=["RED  circle", "Blue,Square"])
    assert e.tokens == ["red circle", "blue square"]
    assert e.index("RED  circle") == 0 and e.index("Blue,Square") == 1
    torch.testing.assert_close(e.map("red, circle"), e.maps[0])
    with pytest.raises(InputError, match="word 'red' is not among the explained tokens"):
        e.index("red")  # a part of a phrase names no item


def _bundled_model_that_overflows_in_float16():
    """(model, processor, a grey image): the bundled model in float16 with one weight scaled so
    its hidden states pass 65504 (fine in float32)."""
    import numpy as np

    from dcam.models import load_model

    model, proc = load_model(None)
    model = model.half()
    with torch.no_grad():
        model.language_model.layers[0].mlp.down_proj.weight.mul_(3e4)
    return model, proc, np.full((64, 64, 3), 128, np.uint8)


def test_a_model_that_overflows_in_float16_is_named_with_the_cure():
    # the refusal named the operators' tensor ("grads contains 98304 NaN/Inf value(s); pass
    # check_finite=False", an argument no explainer takes), and tam's "image_hidden"
    from dcam import Explainer
    from dcam.errors import InputError

    model, proc, image = _bundled_model_that_overflows_in_float16()
    for method, what in (("diffusion-cam", "scores"), ("grad-cam", "scores"), ("tam", "image_hidden")):
        with pytest.raises(InputError, match=rf"^model: its {what} came out NaN/Inf \(\d+ value\(s\), run in "
                                             r"float16\); float16 overflows .*: load it in bfloat16 or float32"):
            Explainer(model, proc, method=method).explain(image, response="a red circle")


def test_a_model_that_overflows_while_it_generates_is_named_with_the_cure():
    # the model's own generation decoded its NaN logits as end-of-text: "the response has no word
    # to explain (only eos/pad tokens)", as if the model had nothing to say
    from dcam import Explainer
    from dcam.errors import InputError

    model, proc, image = _bundled_model_that_overflows_in_float16()
    exp = Explainer(model, proc)
    for trajectory in (False, True):
        with pytest.raises(InputError, match=r"^model: its hidden states during generation came out NaN/Inf "
                                             r"\(\d+ value\(s\), run in float16\); float16 overflows .*: load it "
                                             r"in bfloat16 or float32 \(--dtype\)$"):
            exp.explain(image, trajectory=trajectory)
    assert not model.training and all(not m._forward_hooks for m in model.modules())  # the watch is gone
    with pytest.raises(InputError, match=r"^model: its scores came out NaN/Inf"):  # a given response: the probe's
        exp.explain(image, response="a red circle")


def test_an_overflow_in_the_lm_head_or_a_decoder_while_generating_is_named_too():
    # logits past float16's range from finite hidden states (the last block alone was watched),
    # and DiffusionGemma, whose sampler raised "probability tensor contains either inf, nan or
    # element < 0" from its decoder (the blocks are the encoder's): a traceback, exit 1
    import numpy as np

    from dcam import Explainer
    from dcam.errors import InputError
    from dcam.models import load_model
    from dcam.testing.standins import STANDINS

    image = np.full((64, 64, 3), 128, np.uint8)
    model, proc = load_model(None)
    model = model.half()
    with torch.no_grad():
        model.lm_head.weight.mul_(3e4)
    cases = [(model, proc, {})]
    dg, dg_proc = STANDINS["diffusion-gemma"](seed=0)
    dg = dg.half()
    with torch.no_grad():
        dg.model.decoder.layers[0].mlp.down_proj.weight.mul_(1e6)
    cases.append((dg, dg_proc, {"response_length": 8, "steps": 4}))
    for m, p, kw in cases:
        with pytest.raises(InputError, match=r"^model: its hidden states during generation came out NaN/Inf "
                                             r"\(\d+ value\(s\), run in float16\); float16 overflows"):
            Explainer(m, p).explain(image, **kw)
        assert not any(mod._forward_hooks for mod in (m.lm_head if hasattr(m, "lm_head") else m,))



def test_what_a_method_never_uses_is_refused_or_recorded_as_none(zoo, sample, tmp_path):
    # tam took target_score="contrastive" (its scores became contrastive sums while meta.json said none) and
    # recorded layer 0; "" or 0 as a probe or target score became the default without a word; a list as a
    # method name or SICD mode was a TypeError
    from dcam import CamConfig
    from dcam.runs.folder import run_identity

    tam = Explainer(*zoo, method="tam")
    with pytest.raises(InputError, match="^target_score: the tam method differentiates no score; leave "
                                         "target_score out$"):
        tam.explain(sample.image, response=sample.caption, target_score="contrastive")
    e = tam.explain(sample.image, response=sample.caption, probe="full")
    meta = e.meta()
    assert meta["layer"] is None and meta["target_score"] is None and meta["config"] is None
    ident = run_identity(tam, {"name": "bundled"}, None, None, None)
    assert ident["layer"] is None and ident["target_score"] is None and ident["config"] is None
    exp = Explainer(*zoo)
    for kw, match in ((dict(probe=""), "^probe must be one of full, masked, remask, got ''$"),
                      (dict(probe=0), "^probe must be one of full, masked, remask, got 0$"),
                      (dict(target_score=""), "target_score"), (dict(target_score=False), "target_score")):
        with pytest.raises(InputError, match=match):
            exp.explain(sample.image, response=sample.caption, **kw)
    with pytest.raises(InputError, match=r"^method: unknown method \['tam'\]"):
        Explainer(*zoo, method=["tam"])
    with pytest.raises(InputError, match=r"^CamConfig\.sicd must be one of"):
        CamConfig(sicd=["off"])


def test_a_falsy_granularity_is_refused_not_replaced_by_the_default(zoo, sample):
    # explain(granularity="") / 0 / False / [] was `granularity or self.granularity`: the explainer's "words"
    # without a word, while Explainer(granularity="") was refused
    exp = Explainer(*zoo)
    for bad in ("", 0, False, []):
        said = rf"^granularity must be one of words, tokens, got {re.escape(repr(bad))}$"
        with pytest.raises(InputError, match=said):
            exp.explain(sample.image, response="a red circle", granularity=bad)
        with pytest.raises(InputError, match=said):
            exp.explain_batch([sample.image], responses=["a red circle"], granularity=bad)
    # None is the explainer's own; "tokens" overrides it
    assert exp.explain(sample.image, response="a red circle", granularity=None).granularity == "words"
    assert exp.explain(sample.image, response="a red circle", granularity="tokens").granularity == "tokens"


def test_a_missing_or_wrong_processor_is_named_when_the_explainer_is_made(zoo):
    # Explainer(model, None) / (model, "processor") / (model, model) were accepted and explain() failed with an
    # AttributeError ('NoneType' object has no attribute 'encode_response')
    model, _ = zoo
    for proc, kind in ((None, "NoneType"), ("processor", "str"), (model, type(model).__name__)):
        with pytest.raises(InputError, match=rf"^processor: the shapes model needs its ShapesProcessor "
                                             rf"\(dcam\.zoo\.load_default\(\) returns both\), got {kind} \(no build\)$"):
            Explainer(model, proc)


def test_a_backend_is_checked_when_the_explainer_is_made(zoo, monkeypatch):
    # backend="triton" on a CPU model without Triton's interpreter was refused only after the whole probe had
    # run; with grad-cam, llava-cam or tam any backend was taken and ignored
    model, proc = zoo
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises((InputError, RuntimeError), match="backend='triton'"):
        Explainer(model, proc, backend="triton")
    for method in ("grad-cam", "llava-cam", "tam"):
        with pytest.raises(InputError, match=rf"^backend: the {method} method computes its maps in PyTorch itself"):
            Explainer(model, proc, method=method, backend="torch")
    assert Explainer(model, proc, backend="cpp" if "cpp" in __import__("dcam").available_backends() else "torch")


def test_a_misspelt_option_is_named_as_the_callers(zoo):
    # Explainer(model, proc, chunksize=4) was "TypeError: ShapesAdapter.__init__() got an unexpected keyword
    # argument", naming an internal class; with adapter= given, adapter options were taken and ignored
    model, proc = zoo
    with pytest.raises(InputError, match=r"^chunksize: not an option of the explainer or of the shapes model's "
                                         r"adapter \(the adapter's: newline_column, newline_token_id\)$"):
        Explainer(model, proc, chunksize=4)
    adapter = Explainer(model, proc).adapter
    with pytest.raises(InputError, match=r"^newline_column: an option of the adapter dcam makes; with adapter= given"):
        Explainer(adapter=adapter, newline_column=True)
