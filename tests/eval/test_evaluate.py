"""dcam.eval (runner, faithfulness, report) and dcam.words: word alignment,
deletion/insertion curves on a hand-checkable fake model, and the whole runner
end to end on a tiny random-init toy model."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dcam.eval import faithfulness as FA
from dcam.eval import runner as EV
from dcam.errors import InputError
from dcam.explain import DEFAULT_DMLLM_PROBE, Explainer  # noqa: F401
from dcam.probe import ModelAdapter
from dcam.testing import tiny_toy
from dcam.words import align_words


# ----------------------------------------------------------------- alignment

def test_align_word_level():
    words = ["a", "red", "circle"]
    assert align_words(words, ["a", "red", "circle", "[EOS]", "[PAD]"]) == [[0], [1], [2]]


def test_align_subwords_punctuation_and_unknown():
    words = ["a", "traffic", "light", "near", "dogs"]
    toks = ["\u2581a", "\u2581tra", "ffic", "\u2581light", ",", "[UNK]", "\u2581dogs", "</s>"]
    # "[UNK]" has letters but matches no word boundary where it stands: skipped, and "near" stays unaligned
    assert align_words(words, toks) == [[0], [1, 2], [3], [], [6]]
    assert align_words(["hotdog"], ["hot", "dog"]) == [[0, 1]]
    assert align_words(["a", "b"], ["ab"]) == [[0], [0]]


def test_ablation_configs():
    cfgs = EV.ablation_configs()
    assert list(cfgs) == list(EV.ABLATION_ROWS)
    b = cfgs["baseline"]
    assert (b.akd, b.dacg, b.cba, b.sicd) == (False, False, False, "off")
    assert (cfgs["+AKD"].akd, cfgs["+AKD"].dacg, cfgs["+AKD"].cba, cfgs["+AKD"].sicd) == (True, False, False, "off")
    assert cfgs["+SICD"].sicd == "reference" and not cfgs["+SICD"].akd
    f = cfgs["full"]
    assert (f.akd, f.dacg, f.cba, f.sicd) == (True, True, True, "reference")
    assert cfgs["full (SICD context)"].sicd == "context"


# ----------------------------------------------------------------- faithfulness on a fake model

class FakePrep:
    def __init__(self, image, response_ids):
        self.input_ids = torch.tensor([[7, 7, 9, 9]])
        self.model_inputs = {"pixel_values": torch.from_numpy(np.asarray(image, dtype=np.float32))[None]}
        self.response_start = 2
        self.response_length = 2
        self.response_ids = list(response_ids)


class FakeAdapter(ModelAdapter):
    """A model whose probabilities are worked out by hand: token 0's
    probability is the mean brightness of the top-left quadrant, token 1's of
    the bottom-right quadrant (as logits over a 2-word vocabulary)."""

    name = "fake"
    probes = ("full", "masked")
    calls = 0

    def __init__(self):
        super().__init__(model=None, processor=None)

    @property
    def mask_token_id(self):
        return 5

    def prepare(self, image, prompt, response_ids):
        return FakePrep(image, response_ids)

    def logits_at(self, ids, inputs, positions, response_start):
        FakeAdapter.calls += 1
        assert bool((ids[:, 2:] == 5).all())  # masked probe
        px = inputs["pixel_values"][..., 0] / 255.0  # [B, H, W]
        H, W = px.shape[1:]
        q = torch.stack([px[:, :H // 2, :W // 2].mean((1, 2)), px[:, H // 2:, W // 2:].mean((1, 2))], 1)
        q = q.clamp(1e-6, 1 - 1e-6)
        # vocabulary {0, 1}: p(id 0) = q -> logits (log q, log(1-q)); ask for positions in order
        logit = torch.stack([q.log(), (1 - q).log()], dim=2)  # [B, 2 positions, 2 ids]
        return logit[:, [int(p) - 2 for p in positions]]

    logits_at_rows = logits_at  # what perturbation_curves calls (it reads the logits only)


def test_perturbation_curves_hand_case():
    img = Image.new("RGB", (8, 8), (255, 255, 255))
    orders = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]])
    FakeAdapter.calls = 0
    d, i = FA.perturbation_curves(FakeAdapter(), img, [0, 0], orders, [[0], [0], [1]], (2, 2), steps=4,
                                  fill=(0, 0, 0), batch_size=3)
    # row 0: top-left cell blanked first -> token 0 (top-left) probability drops at once
    np.testing.assert_allclose(d[0], [1, 0, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(i[0], [0, 1, 1, 1, 1], atol=1e-5)
    # row 1: top-left last
    np.testing.assert_allclose(d[1], [1, 1, 1, 1, 0], atol=1e-5)
    np.testing.assert_allclose(i[1], [0, 0, 0, 0, 1], atol=1e-5)
    # row 2: token 1 looks at the bottom-right cell, blanked last in this order
    np.testing.assert_allclose(d[2], [1, 1, 1, 1, 0], atol=1e-5)
    np.testing.assert_allclose(FA.curve_auc(d), [0.125, 0.875, 0.875], atol=1e-5)
    np.testing.assert_allclose(FA.curve_auc(i), [0.875, 0.125, 0.125], atol=1e-5)
    # 2 shared images + 3 rows x 3 interior steps x 2 curves = 20 images in batches of 3
    assert FakeAdapter.calls == 7


def test_perturbation_curves_on_the_crop_the_model_saw():
    """A model that sees only the right half of the image (box (0.5, 0, 1, 1)): its 2 x 2
    grid lies over that half, and the left half is never changed. The curves ran on the maps
    pasted onto the whole image, and failed ("Expected size 8192 but got size 64").
    Hand-worked on a white 8 x 8 image blanked black: token 1 reads the bottom-right quadrant,
    which cells 2 (columns 4-5) and 3 (6-7) cover; token 0 reads the top-left one, outside."""
    img = Image.new("RGB", (8, 8), (255, 255, 255))
    orders = torch.tensor([[2, 3, 0, 1], [2, 3, 0, 1]])
    d, i = FA.perturbation_curves(FakeAdapter(), img, [0, 0], orders, [[1], [0]], (2, 2), steps=4,
                                  fill=(0, 0, 0), box=(0.5, 0.0, 1.0, 1.0))
    np.testing.assert_allclose(d[0], [1, 0.5, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(i[0], [0, 0.5, 1, 1, 1], atol=1e-5)
    np.testing.assert_allclose(d[1], [1, 1, 1, 1, 1], atol=1e-5)  # outside the box: never blanked
    np.testing.assert_allclose(i[1], [1, 1, 1, 1, 1], atol=1e-5)
    assert FA._cell_index(2, 8, (1, 2), (0.25, 0.0, 0.75, 1.0)).tolist() == [[-1, -1, 0, 0, 1, 1, -1, -1]] * 2


def test_perturbation_mean_fill_and_orders():
    img = np.zeros((8, 8, 3), np.uint8)
    img[:4, :4] = 200  # mean colour = 50
    d, _ = FA.perturbation_curves(FakeAdapter(), Image.fromarray(img), [0, 0], torch.tensor([[0, 1, 2, 3]]),
                                  [[0]], (2, 2), steps=2)
    np.testing.assert_allclose(d[0], [200 / 255, 50 / 255, 50 / 255], atol=1e-4)
    o = FA.patch_orders(torch.tensor([[[0.1, 0.9], [0.5, 0.9]]]))
    assert o.tolist() == [[1, 3, 2, 0]]  # ties in raster order
    assert FA.curve_auc(np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)


# ----------------------------------------------------------------- end to end on a tiny toy model

def _tiny_model():
    """A small random-init toy model: 64 px images, an 8x8 grid, 3 narrow blocks."""
    return tiny_toy(0, layers=3, image_size=64)


@pytest.fixture(scope="module")
def tiny():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is faster on one thread, and cores are shared
    yield _tiny_model()
    torch.set_num_threads(threads)


def test_sweep_counts_the_records_it_scored_and_says_which_it_skipped(tiny, tmp_path):
    # a record the sweep could not explain was dropped in silence, and its row still said
    # records: sweep_n
    model, proc = tiny
    calls = []

    def factory(method, cfg, layer):
        ex = Explainer(model, proc, layer=layer, config=cfg, method=method)
        orig = ex.explain

        def second_masked_sweep_call_refused(*a, **k):
            if k.get("probe") == "masked" and k.get("targets") == "all":
                calls.append(1)
                if len(calls) == 2:
                    raise InputError("response: refused for this test")
            return orig(*a, **k)

        ex.explain = second_masked_sweep_call_refused
        return ex

    rep = EV.evaluate(factory, dataset="shapes", methods="diffusion-cam", n=2, probe="full",
                      out_dir=str(tmp_path / "ev"), sweep_probes=["full", "masked"], sweep_n=2, n_examples=0)
    full, masked = rep["sweep"]
    assert full["records"] == 2 and "skipped" not in full
    assert masked["records"] == 1 and len(masked["skipped"]) == 1
    assert masked["skipped"][0].endswith(": response: refused for this test")
    table = open(tmp_path / "ev" / "sweep_table.md").read()
    assert "1 record(s) skipped (report.json)" in table


@pytest.mark.parametrize("kwargs,message", [
    ({"dataset": 5}, "dataset must be 'shapes', a data folder, an EvalDataset or a list of EvalRecords, got int"),
    ({"dataset": (1, 2)}, "dataset[0] must be an EvalRecord, got int"),  # was an AttributeError mid-run
    ({"n": 1.5}, "n must be an int >= 1, got 1.5"),  # was "size must be ...", an argument evaluate() lacks
    ({"batch_size": 0, "faithfulness": True}, "batch_size must be an int >= 1, got 0"),  # was range()'s ValueError
    ({"sweep_n": True}, "sweep_n must be an int >= 1, got True"),
    # checked before any record: (300, -5, 0) wrapped round to (44, 251, 0) in the image, (1, 2) and seed -1 ended in
    # numpy's errors after the comparison had run
    ({"faith_fill": (300, -5, 0), "faithfulness": True},
     "faith_fill must be 'mean' or an (r, g, b) colour of numbers in 0..255, got (300, -5, 0)"),
    ({"faith_fill": (1, 2), "faithfulness": True},
     "faith_fill must be 'mean' or an (r, g, b) colour of numbers in 0..255, got (1, 2)"),
    ({"faith_fill": "grey", "faithfulness": True}, "faith_fill must be 'mean' or an (r, g, b) colour, got 'grey'"),
    ({"seed": -1, "faithfulness": True}, "seed must be an int >= 0, got -1"),
    # taken (-1 meaning 0), an error row of the sweep table, and every record failing alone
    ({"n_examples": -1}, "n_examples must be an int >= 0, got -1"),
    ({"sweep_probes": ["full", "foo"]}, "sweep_probes: 'foo' is not a probe (full, masked, remask)"),
    ({"probe": "foo"}, "probe must be one of full, masked, remask, got 'foo'"),
])
def test_evaluate_refuses_bad_arguments_by_name(tiny, kwargs, message):
    model, proc = tiny
    with pytest.raises(InputError) as info:
        EV.evaluate(model, proc, **{"n": 1, **kwargs})
    assert str(info.value) == message


def test_evaluate_end_to_end(tiny, tmp_path):
    model, proc = tiny
    out = str(tmp_path / "ev")
    passes = []

    def factory(method, cfg, layer):
        ex = Explainer(model, proc, layer=layer, config=cfg, method=method)
        orig = ex.explain

        def counted(*a, **k):
            passes.append((method, ex.config.sicd, k.get("probe")))
            return orig(*a, **k)

        ex.explain = counted
        return ex

    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # the caller's backend: writing the charts switched it to Agg
    try:
        rep = EV.evaluate(factory, dataset="shapes", methods="all", n=2, ablation=True, faithfulness=True,
                          out_dir=out, sweep_probes=["full", "masked"], sweep_n=1, faith_n=1, faith_steps=2,
                          n_examples=1)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    # one pass per image per method; the ablation re-uses the Diffusion-CAM pass's raw maps; sweep: 2 passes
    assert len(passes) == 2 * 4 + 2
    assert rep["records"] == 2 and rep["skipped"] == []
    layer = Explainer(model, proc).layer
    # the explainer's default probe for a diffusion model (every method shares it)
    assert rep["layer"] == layer and rep["probe"] == DEFAULT_DMLLM_PROBE and rep["target_score"] == "logit"
    assert list(rep["main"]) == list(EV.ALL_METHODS)
    for m, s in rep["main"].items():
        assert s["n_obj"] > 0 and s["n_func"] > 0 and 0 <= s["obj_iou"] <= 1, m
    # every ablation variant refines the same raw maps: "full" is the comparison's Diffusion-CAM row
    assert list(rep["ablation"]) == list(EV.ABLATION_ROWS)
    for k in ("obj_iou", "contrast", "concentration", "f3", "func_iou"):
        assert rep["ablation"]["full"][k] == pytest.approx(rep["main"]["diffusion-cam"][k], rel=1e-6, abs=1e-9)
    assert [(r["probe"], r["layer"]) for r in rep["sweep"]] == [("full", layer), ("masked", layer)]
    fa = rep["faithfulness"]
    assert set(fa["methods"]) == set(EV.ALL_METHODS) | {"random"} and fa["probe"] == "masked"
    assert len(fa["methods"]["random"]["deletion_curve"]) == 3
    for name in ("main_table", "ablation_table", "sweep_table", "faithfulness_table"):
        assert os.path.exists(os.path.join(out, name + ".md")) and os.path.exists(os.path.join(out, name + ".json"))
    for name in ("bars.png", "ablation_bars.png", "examples/example_00.png", "report.json", "per_map.jsonl"):
        assert os.path.exists(os.path.join(out, name)), name
    md = open(os.path.join(out, "main_table.md")).read()
    assert "Diffusion-CAM" in md and "TAM" in md and f"probe `{DEFAULT_DMLLM_PROBE}`" in md and f"layer {layer}" in md
    with open(os.path.join(out, "report.json")) as f:
        written = json.load(f)
    assert written["records"] == 2
    # its files, relative to its folder (dcam eval writes the folder under a temporary name and renames it:
    # absolute paths pointed into that temporary folder, gone)
    assert written["files"]["main_table"] == ["main_table.md", "main_table.json"]
    assert written["files"]["examples"][0] == os.path.join("examples", "example_00.png")
    assert written["files"]["report"] == "report.json" and written["files"]["per_map"] == "per_map.jsonl"

    # the runner's per-map numbers are the metrics of the explainer's own maps
    from dcam.eval.datasets import load_shapes
    from dcam.eval.metrics import object_metrics

    rec = next(load_shapes("test", 1).records())
    e = Explainer(model, proc).explain(rec.image, response=rec.caption, probe="full", target_score="logit")
    wt = align_words(rec.words, e.response_tokens)
    i = rec.object_indices[0]
    want = object_metrics(e.maps[wt[i]].mean(0)[None], rec.word_mask(i)[None])["obj_iou"][0].item()
    rows = [json.loads(line) for line in open(os.path.join(out, "per_map.jsonl"))]
    got = [r for r in rows if r["table"] == "main" and r["variant"] == "diffusion-cam" and r["record"] == rec.record_id
           and r["word_index"] == i]
    assert got and got[0]["obj_iou"] == pytest.approx(want)
    # the context-SICD row (refine with the explanation's context weights) matches a direct pass
    ctx_cfg = EV.ablation_configs()["full (SICD context)"]
    e = Explainer(model, proc, config=ctx_cfg).explain(rec.image, response=rec.caption, probe="full")
    want = object_metrics(e.maps[wt[i]].mean(0)[None], rec.word_mask(i)[None])["obj_iou"][0].item()
    got = [r for r in rows if r["variant"] == "full (SICD context)" and r["record"] == rec.record_id
           and r["word_index"] == i]
    assert got and got[0]["obj_iou"] == pytest.approx(want)


def test_ablation_without_raw_maps_falls_back_to_extra_passes(tiny):
    model, proc = tiny
    passes = []

    def factory(method, cfg, layer, strip):
        ex = Explainer(model, proc, layer=layer, config=cfg, method=method)
        orig = ex.explain

        def wrapped(*a, **k):
            e = orig(*a, **k)
            passes.append(ex.config.sicd)
            if strip:  # an explainer that exposes neither raw maps nor context weights
                e.raw_maps = None
                e.extra = {}
            return e

        ex.explain = wrapped
        return ex

    kw = dict(dataset="shapes", methods="diffusion-cam", n=1, ablation=True, n_examples=0)
    a = EV.evaluate(lambda m, c, l: factory(m, c, l, False), **kw)
    assert len(passes) == 1
    passes.clear()
    b = EV.evaluate(lambda m, c, l: factory(m, c, l, True), **kw)
    assert passes == ["reference", "off", "context"]
    for row in EV.ABLATION_ROWS:
        for k in ("obj_iou", "contrast", "concentration", "func_iou"):
            assert b["ablation"][row][k] == pytest.approx(a["ablation"][row][k], rel=1e-6, abs=1e-9), (row, k)


def test_evaluate_tam_folder_reports_bad_records(tiny, tmp_path):
    model, proc = tiny
    root = tmp_path / "tam"
    (root / "m").mkdir(parents=True)
    Image.new("RGB", (40, 40), (120, 120, 120)).save(root / "img.png")
    lab = np.zeros((40, 40), np.uint8)
    lab[5:20, 5:20] = 1
    Image.fromarray(lab).save(root / "m" / "0.png")
    anno = [{"id": "ok", "image": "img.png", "caption": "a red circle", "mask": "m/0.png",
             "categories": {"red": 1, "circle": 1}},
            {"id": "gone", "image": "nope.png", "caption": "a red circle", "mask": "m/0.png",
             "categories": {"circle": 1}}]
    (root / "anno.json").write_text(json.dumps(anno))
    with pytest.warns(UserWarning, match="gone"):
        rep = EV.evaluate(model, proc, str(root), methods="diffusion-cam,tam", n=5, n_examples=0)
    assert rep["records"] == 1 and rep["dataset"].startswith("tam:")
    assert [s["record"] for s in rep["skipped"]] == ["gone"] and "no such file" in rep["skipped"][0]["reason"]
    assert rep["main"]["tam"]["n_obj"] == 2 and rep["main"]["tam"]["n_func"] == 1


def test_evaluate_rejects_bad_arguments(tiny):
    model, proc = tiny
    with pytest.raises(InputError, match="unknown method"):
        EV.evaluate(model, proc, "shapes", methods="nope", n=1)
    with pytest.raises(InputError, match="does not support probe"):
        EV.evaluate(model, proc, "shapes", methods="tam", probe="remask", n=1)


def test_faithfulness_on_a_model_that_sees_a_crop():
    """MMaDA sees the centre square of a 128 x 64 image: dcam eval --faithfulness failed on it
    (the curves got the maps pasted onto the whole image). Now every object word gets curves."""
    from PIL import ImageDraw

    from dcam.eval.datasets.base import make_record
    from dcam.testing.vq_dmllm import tiny_mmada

    model, proc = tiny_mmada()
    img = Image.new("RGB", (128, 64), (200, 200, 200))
    d = ImageDraw.Draw(img)
    d.ellipse((40, 10, 70, 40), fill=(220, 45, 40))
    d.rectangle((72, 20, 100, 50), fill=(45, 85, 230))
    mask = np.zeros((64, 128), np.int64)
    mask[10:41, 40:71] = 1
    mask[20:51, 72:101] = 2
    words = "a red circle and a blue square".split()
    rec = make_record("r0", img, " ".join(words), words, mask, [(), (1,), (1,), (), (), (2,), (2,)])
    rep = EV.evaluate(model, proc, dataset=[rec], methods="grad-cam", n=1, faithfulness=True, faith_n=1,
                      faith_steps=2)
    fa = rep["faithfulness"]["methods"]
    assert fa["grad-cam"]["words"] == fa["random"]["words"] == 4  # red, circle, blue, square
    assert len(fa["grad-cam"]["deletion_curve"]) == 3


def test_report_names_the_layer_the_gradient_methods_hooked(tiny):
    # tam listed first gave the report its layer (0, the default) while grad-cam ran at --layer 1
    model, proc = tiny
    rep = EV.evaluate(model, proc, "shapes", methods="tam,grad-cam", layer=1, n=1, n_examples=0)
    assert rep["layer"] == 1 and rep["target_score"] == "logit"
    rep = EV.evaluate(model, proc, "shapes", methods="tam", n=1, n_examples=0)
    assert rep["layer"] is None and rep["target_score"] is None
    # and no config: nothing of the comparison applied one (the default config was reported as used)
    assert rep["config"] is None
    assert EV.evaluate(model, proc, "shapes", methods="grad-cam", n=1, n_examples=0)["config"] is None
    with pytest.raises(InputError, match=r"^target_score: none of the methods \(tam\) differentiates a score"):
        EV.evaluate(model, proc, "shapes", methods="tam", target_score="logit", n=1)
    with pytest.raises(InputError, match=r"^layer: none of the methods \(tam\) hooks a layer"):
        EV.evaluate(model, proc, "shapes", methods="tam", layer=1, n=1)


def test_n_counts_records_evaluated_and_a_failed_one_is_replaced(tiny):
    # a record whose explanation failed used up one of the n: n=1 with a bad first record said "no
    # record could be evaluated" though good ones followed
    from dataclasses import replace

    from dcam.eval.datasets import load_shapes

    model, proc = tiny
    good = list(load_shapes(split="test", size=3, image_size=64).records())
    bad = replace(good[0], record_id="bad", caption="a zebra")  # not in the toy model's vocabulary
    with pytest.warns(UserWarning, match="skipped record bad"):
        rep = EV.evaluate(model, proc, [bad] + good[1:], methods="diffusion-cam", n=1, n_examples=0)
    assert rep["records"] == 1 and [s["record"] for s in rep["skipped"]] == ["bad"]
    with pytest.warns(UserWarning), pytest.raises(InputError, match="^dataset: no record of records could be"):
        EV.evaluate(model, proc, [bad], methods="diffusion-cam", n=1, n_examples=0)


def test_out_dir_is_checked_first_and_written_whole(tiny, tmp_path):
    # a file given as out_dir failed once everything had run; a second run into the same folder left the
    # first one's faithfulness tables beside its own report
    model, proc = tiny
    kw = dict(methods="diffusion-cam", n=1, n_examples=0)
    (tmp_path / "file").write_text("mine")
    explained = []
    orig = Explainer.explain
    try:
        Explainer.explain = lambda self, *a, **k: explained.append(1) or orig(self, *a, **k)
        with pytest.raises(InputError, match="^out_dir: .* exists and is not a folder"):
            EV.evaluate(model, proc, out_dir=str(tmp_path / "file"), **kw)
    finally:
        Explainer.explain = orig
    assert explained == [] and (tmp_path / "file").read_text() == "mine"
    out = tmp_path / "ev"
    first = EV.evaluate(model, proc, out_dir=str(out), faithfulness=True, faith_n=1, faith_steps=2, **kw)
    assert "faithfulness_table.md" in os.listdir(out)
    assert all(os.path.exists(p) for v in first["files"].values() for p in (v if isinstance(v, list) else [v])
               if isinstance(p, str))
    before = sorted(os.listdir(out))
    with pytest.raises(InputError, match="^out_dir: .* is not empty; choose a new folder or pass overwrite=True"):
        EV.evaluate(model, proc, out_dir=str(out), **kw)
    assert sorted(os.listdir(out)) == before
    EV.evaluate(model, proc, out_dir=str(out), overwrite=True, **kw)
    assert "faithfulness_table.md" not in os.listdir(out) and "report.json" in os.listdir(out)


def test_token_probabilities_of_images_with_other_layouts():
    # the first image's sequence and response positions were used for every image of a batch: images
    # of other sizes (another number of image tokens) failed with an expand() RuntimeError
    from dcam.probe import auto_adapter
    from dcam.testing.hf_tiny import tiny_diffusion_gemma

    a = auto_adapter(*tiny_diffusion_gemma(0, 128))
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 72), (60, 30))]
    resp = a.encode_response("a red circle")
    assert len({a.prepare(im, None, resp).input_ids.shape[1] for im in ims}) == 2
    both = FA.token_probabilities(a, ims, resp, [0, 2], probe="full")
    alone = torch.cat([FA.token_probabilities(a, [im], resp, [0, 2], probe="full") for im in ims])
    assert both.shape == (2, 2) and torch.equal(both, alone)


class _WatchedShapes:
    """A shapes data set that notes every record it is asked for."""

    def __init__(self):
        from dcam.eval.datasets import load_shapes

        self.ds, self.loaded = load_shapes(split="test", size=2, image_size=64), []
        orig = self.ds.load

        def load(i):
            self.loaded.append(i)
            return orig(i)

        self.ds.load = load


@pytest.mark.parametrize("kwargs,message", [
    # a TypeError traceback, a TypeError, and every record tried and skipped ("dataset: no record ... could be
    # evaluated")
    ({"methods": 5}, "methods must be a comma list or a list of method names, got int"),
    ({"methods": "diffusion-cam", "sweep_layers": 5}, "sweep_layers must be a list of layer indices, got int"),
    ({"methods": "diffusion-cam", "sweep_layers": "0,1"}, "sweep_layers must be a list of layer indices, got str"),
    ({"prompt": 5}, "prompt must be a string or None, got int"),
    ({"sweep_probes": 5}, "sweep_probes must be a comma list or a list of probe names, got int"),
    ({"sweep_probes": " , "}, "sweep_probes: none given; probes: full, masked, remask"),
    ({"sweep_probes": "full,foo"}, "sweep_probes: 'foo' is not a probe (full, masked, remask)"),
    # taken: a string image size (unused by a given data set, int()-ed for shapes), a string for verbose
    ({"image_size": "64"}, "image_size must be an int >= 32, got '64'"),
    ({"image_size": 16}, "image_size must be an int >= 32, got 16"),
    ({"image_size": True}, "image_size must be an int >= 32, got True"),
    ({"verbose": "yes"}, "verbose must be a bool, got 'yes'"),
    ({"verbose": 1}, "verbose must be a bool, got 1"),
])
def test_evaluate_refuses_bad_argument_types_before_reading_a_record(tiny, kwargs, message):
    model, proc = tiny
    watched = _WatchedShapes()
    with pytest.raises(InputError) as info:
        EV.evaluate(model, proc, **{"methods": "grad-cam", "n": 1, "dataset": watched.ds, **kwargs})
    assert str(info.value) == message and watched.loaded == []


@pytest.mark.parametrize("empty", [[], ()])
def test_evaluate_refuses_an_empty_list_of_records_by_name(tiny, empty):
    # was "dataset: no record of records could be evaluated", as if every record had failed
    model, proc = tiny
    with pytest.raises(InputError) as info:
        EV.evaluate(model, proc, methods="grad-cam", n=1, dataset=empty)
    assert str(info.value) == "dataset is an empty list: no record to evaluate"


def test_evaluate_takes_the_smallest_shapes_image_size(tiny, monkeypatch):
    # 32 is generate_sample's lower bound: taken, and the record evaluated is a 32 x 32 scene
    model, proc = tiny
    opened, real_open = [], EV.open_dataset

    def open_dataset(*args, **kwargs):
        opened.append(real_open(*args, **kwargs))
        return opened[-1]
    monkeypatch.setattr(EV, "open_dataset", open_dataset)
    rep = EV.evaluate(model, proc, dataset="shapes", methods="grad-cam", n=1, n_examples=0, image_size=32)
    assert rep["records"] == 1
    assert opened[0].load(0).image.size == (32, 32)


def test_evaluate_takes_sweep_probes_as_a_comma_list_like_methods(tiny):
    # "masked" was read one character at a time ("'m' is not a probe")
    model, proc = tiny
    rep = EV.evaluate(model, proc, dataset="shapes", methods="diffusion-cam", n=1, sweep_probes="masked",
                      sweep_n=1, n_examples=0)
    assert [(row["probe"], row["records"]) for row in rep["sweep"]] == [("masked", 1)]
    rep = EV.evaluate(model, proc, dataset="shapes", methods="diffusion-cam", n=1, sweep_probes="full, masked",
                      sweep_n=1, n_examples=0)
    assert [row["probe"] for row in rep["sweep"]] == ["full", "masked"]


def test_the_layer_sweep_counts_a_negative_default_layer_from_the_end():
    # worked by hand: 8 blocks, default -3 is block 5; the picks 0, 8//4, 8//2, 3*8//4, 5, 8-2 -> 0 2 4 5 6
    # (int(default_layer()) kept -3, which the range filter then dropped)
    from types import SimpleNamespace

    from dcam.eval.runner import _auto_layers
    from dcam.probe.adapters.base import ModelAdapter

    stub = SimpleNamespace(blocks=lambda: [None] * 8, default_layer=lambda: -3)
    stub.resolve_layer = lambda layer: ModelAdapter.resolve_layer(stub, layer)
    assert _auto_layers(stub) == [0, 2, 4, 5, 6]
