"""Real sizes on a tiny model: words and phrases as one gradient each, gradients
streamed chunk by chunk, batches of images, views of an image."""
import json

import numpy as np
import pytest
from PIL import Image
import torch

from dcam.errors import InputError
from dcam.explain import Explainer
from dcam.ops import reference as R
from dcam.probe import Targets, probe, probe_batch
from dcam.probe.adapters import ShapesAdapter
from dcam.probe.memory import parse_size
from dcam.targets import parse_target_text
from dcam.testing import tiny_toy
from dcam.testing.views import TwoViewAdapter
from dcam.zoo.data import generate_sample


@pytest.fixture(scope="module")
def toy():
    return tiny_toy(seed=1)


@pytest.fixture(scope="module")
def samples():
    return [generate_sample((0, 2, 10 + i), image_size=32, n_objects=2) for i in range(3)]


def _full_probe(model, proc, s):
    """An independent full-probe result of every word of ``s``'s caption and its repeat ratio."""
    a = ShapesAdapter(model, proc)
    prep = a.prepare(s.image, None, a.encode_response(s.caption))
    n = len(s.caption.split())
    res = probe(a, prep, [prep.response_start + i for i in range(n)], prep.response_ids[:n], 1, probe="full")
    ids = prep.response_ids[:n]
    return res, sum(1 for t in set(ids) if ids.count(t) > 1) / n


def _reference_maps(res, grid, config, steps, height, rho):
    """Reference pooling + refinement of a full-probe result (acts [1,N,D], grads [1,T,N,D])."""
    h, w = grid
    raw, deg = R.pool_gradients_reference(res.acts, res.grads, h, w, config.grad_relu)
    o = config.op_args()
    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    return R.refine_reference(raw, deg, t(steps), t(height), t(rho), None, None, o["akd_kernel"], o["akd"], o["dacg"],
                              o["cba"], o["sicd"], o["dacg_params"], o["cba_params"])[0][0]


# ------------------------------------------------------------------ words

def test_targets_written_as_text():
    # --tokens and a manifest's "targets" string: commas separate targets, spaces join a phrase
    cases = {"all": "all", " all ": "all", "red circle": ["red circle"], "red, circle": ["red", "circle"],
             " red   circle ,2,": ["red circle", 2], "0 -1": [0, -1], "-3": [-3], "a-1, 4x": ["a-1", "4x"],
             "--5": ["--5"], "all, red": ["all", "red"], "\u00b2": ["\u00b2"],
             # in double quotes a target is its text: "1,000" was the word numbers 1 and 0
             '"1,000", 3': ["1,000", 3], '"3"': ["3"], '"all"': ["all"], ' "red,  circle" ': ["red, circle"]}
    for text, want in cases.items():
        assert parse_target_text(text) == want, text
    for text in ("", " ", ",", " , ,"):
        with pytest.raises(ValueError, match="names no word, phrase or word number"):
            parse_target_text(text)
    with pytest.raises(ValueError, match="opens a double quote it does not close"):
        parse_target_text('"1,000')


def test_phrase_gradient_is_the_sum_of_its_tokens_gradients(toy, samples):
    """A phrase's score is the sum of its tokens' scores: its gradient is the
    sum of the tokens' gradients (computed one token at a time here)."""
    model, proc = toy
    a = ShapesAdapter(model, proc)
    s = samples[0]
    prep = a.prepare(s.image, None, a.encode_response(s.caption))
    pos = [prep.response_start + i for i in (1, 2, 5, 6)]
    ids = [prep.response_ids[i] for i in (1, 2, 5, 6)]
    for mode in ("full", "masked", "remask"):
        single = probe(a, prep, pos, ids, 1, probe=mode).per_target_grads()
        grouped = probe(a, prep, pos, ids, 1, probe=mode, groups=[[0, 1], [2, 3]])
        assert grouped.scores.shape == (2,)
        if mode != "remask":  # remask masks both tokens of the phrase in one row: a different input
            torch.testing.assert_close(grouped.per_target_grads(), torch.stack([single[0] + single[1],
                                                                              single[2] + single[3]]),
                                       atol=1e-6, rtol=1e-5)


def test_phrase_targets(toy, samples):
    exp = Explainer(*toy)
    s = samples[0]
    words = s.caption.split()
    phrase = f"{words[1]} {words[2]}"
    e = exp.explain(s.image, response=s.caption, targets=[phrase.upper(), words[6]])
    assert e.tokens == [phrase, words[6]] and e.pieces == [[1, 2], [6]] and e.word_numbers == [1, 6]
    assert e.maps.shape == (2, 8, 8)
    with pytest.raises(InputError, match="phrase 'red purple'"):
        exp.explain(s.image, response=s.caption, targets=["red purple"])


# ------------------------------------------------------------------ streaming and batches

def test_streamed_maps_equal_the_reference_pipeline(toy, samples):
    """chunk_size=1 streams every gradient into the pooling as it comes; the maps
    equal the reference pooling and refinement of one unstreamed probe."""
    model, proc = toy
    s = samples[1]
    e = Explainer(model, proc, chunk_size=1).explain(s.image, response=s.caption, probe="full")
    res, rho = _full_probe(model, proc, s)
    want = _reference_maps(res, (8, 8), e.config, model.config.response_length, s.image.height, rho)
    torch.testing.assert_close(e.maps, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("probe_mode", ["masked", "full", "remask"])
def test_explain_batch_equals_one_at_a_time(toy, samples, probe_mode):
    exp = Explainer(*toy, chunk_size=3)
    images = [s.image for s in samples]
    responses = [s.caption for s in samples]
    prompts = [None, None, "what is in this image"]  # the third has another layout: its own forward
    batch = exp.explain_batch(images, prompts, responses, probe=probe_mode)
    for img, p, r, e in zip(images, prompts, responses, batch):
        one = exp.explain(img, prompt=p, response=r, probe=probe_mode)
        assert e.tokens == one.tokens and e.response == one.response
        torch.testing.assert_close(e.maps, one.maps, atol=1e-5, rtol=0)
        torch.testing.assert_close(e.scores, one.scores, atol=1e-5, rtol=1e-5)
        for k in e.stats:
            torch.testing.assert_close(e.stats[k], one.stats[k], atol=1e-5, rtol=0)


def test_explain_batch_refuses_what_is_not_a_list_per_image(toy, samples):
    # a text was read one character per image ("aa" -> responses 'a', 'a'); a lone image hit len()
    exp = Explainer(*toy)
    images = [s.image for s in samples[:2]]
    cases = [(dict(images=samples[0].image), "images must be a list with one entry per image, got Image; "
                                            "explain() takes one image"),
             (dict(images="x.png"), "images must be a list with one entry per image, got str; explain() takes "
                                    "one image"),
             (dict(images=iter(images)), "images must be a list with one entry per image, got list_iterator; "
                                         "explain() takes one image"),
             (dict(images=images, responses="aa"), "responses must be a list with one entry per image, got str"),
             (dict(images=images, prompts="ab"), "prompts must be a list with one entry per image, got str"),
             (dict(images=images, targets_per_image="red"),
              "targets_per_image must be a list with one entry per image, got str"),
             (dict(images=images, targets=["red"], targets_per_image=[["red"], ["blue"]]),
              "targets: give targets (shared by every image) or targets_per_image, not both")]
    for kwargs, message in cases:
        with pytest.raises(InputError) as info:
            exp.explain_batch(**kwargs)
        assert str(info.value) == message
    assert exp.explain_batch(tuple(images[:1]), responses=(samples[0].caption,))[0].tokens == \
        exp.explain(images[0], response=samples[0].caption).tokens


def test_explain_batch_says_which_example_is_wrong(toy, samples):
    # "image: the float32 image holds NaN" alone left the caller guessing which of the images
    exp = Explainer(*toy)
    good = np.asarray(samples[0].image, dtype=np.float32) / 255.0
    bad = good.copy()
    bad[3, 3, 0] = np.nan
    with pytest.raises(InputError) as info:
        exp.explain_batch([good, bad], responses=[samples[0].caption] * 2)
    assert str(info.value) == ("example 1 of the batch (images[1]): image: the float32 image holds NaN or "
                               "infinite values")
    with pytest.raises(InputError) as info:
        exp.explain_batch([good, good], responses=[samples[0].caption] * 2, targets_per_image=[["red"], ["zebra"]])
    assert str(info.value).startswith("example 1 of the batch (images[1]): ")
    with pytest.raises(InputError) as info:  # one image: the message as explain() gives it
        exp.explain_batch([bad], responses=[samples[0].caption])
    assert str(info.value) == "image: the float32 image holds NaN or infinite values"


def test_a_batch_checks_every_example_before_the_first_generation(toy, samples):
    # a bad fourth image (or prompt, or shared targets) was found after the first three responses were
    # generated, minutes each on a real dMLLM, and the work thrown away
    exp = Explainer(*toy)
    generated = []
    generate = exp.adapter.generate
    exp.adapter.generate = lambda *a, **k: generated.append(1) or generate(*a, **k)
    good = samples[0].image
    bad = np.full((8, 8, 3), np.nan, dtype=np.float32)
    try:
        with pytest.raises(InputError, match=r"^example 3 of the batch \(images\[3\]\): image: "):
            exp.explain_batch([good, good, good, bad])
        with pytest.raises(InputError, match=r"^example 1 of the batch \(images\[1\]\): prompt: must be a string"):
            exp.explain_batch([good, good], prompts=[None, 5])
        with pytest.raises(InputError, match=r"^example 1 of the batch \(images\[1\]\): targets is empty$"):
            exp.explain_batch([good, good], targets_per_image=["all", []])
        with pytest.raises(InputError, match=r"^example 2 of the batch \(images\[2\]\): response"):
            exp.explain_batch([good, good, good], responses=[None, None, [10 ** 9]])  # (out of the vocabulary)
        # what needs the prepared example (no generation either): a target not in a given response
        with pytest.raises(InputError, match=r"^example 2 of the batch \(images\[2\]\): targets: word 'zebra'"):
            exp.explain_batch([good, good, good], responses=[None, None, "a red circle"],
                              targets_per_image=["all", "all", ["zebra"]])
        # shared targets are the call's argument, not example 0's fault
        for targets, message in ((None, "targets must be 'all', word numbers or words, got None"),
                                 ([], "targets is empty"), ([1.5], "targets must be 'all', word numbers or words, "
                                                                   "got 1.5")):
            with pytest.raises(InputError) as info:
                exp.explain_batch([good, good], targets=targets)
            assert str(info.value) == message
        assert generated == []
    finally:
        del exp.adapter.generate


def test_a_batch_with_examples_past_the_budget_is_refused_before_any_probe(toy, samples):
    # example 0 was probed whole (a forward and every backward), then example 1 refused and 0 thrown away;
    # and of several examples too large only the first was named
    from dcam.probe.memory import BudgetError

    model, proc = toy
    caption = samples[0].caption
    weights = sum(p.numel() for p in model.parameters()) * 4
    budget = next(b for b in range(weights, weights + 50_000_000, 2000) if _fits(model, proc, b, samples[0], caption))
    exp = Explainer(model, proc, memory_budget=budget)
    calls = []
    handle = exp.adapter.blocks()[exp.layer].register_forward_hook(lambda *a: calls.append(1))
    long_prompt = "describe the image " * 30
    try:
        with pytest.raises(BudgetError, match=r"^example 1 of the batch \(images\[1\]\): memory_budget: "):
            exp.explain_batch([samples[0].image] * 2, prompts=[None, long_prompt], responses=[caption] * 2)
        assert calls == []
        with pytest.raises(BudgetError, match=r"^examples 1, 2 of the batch \(images\[1\], images\[2\]\) do not fit "
                                              r"memory_budget alone; the first: memory_budget: "):
            exp.explain_batch([samples[0].image] * 3, prompts=[None, long_prompt, long_prompt],
                              responses=[caption] * 3)
        assert calls == []
    finally:
        handle.remove()


def _fits(model, proc, budget, sample, caption):
    from dcam.probe.memory import BudgetError

    try:
        Explainer(model, proc, memory_budget=budget).explain(sample.image, response=caption, targets=[0])
        return True
    except BudgetError:
        return False


def test_one_backward_serves_every_example(toy, samples):
    """probe_batch's cotangent k is item k of every example: its gradients equal
    each example probed alone."""
    model, proc = toy
    a = ShapesAdapter(model, proc)
    preps = [a.prepare(s.image, None, a.encode_response(s.caption)) for s in samples[:2]]
    tg = [Targets.of([p.response_start + i for i in range(3)], p.response_ids[:3]) for p in preps]
    both = probe_batch(a, preps, tg, 1, probe="masked", chunk_size=2)
    for p, t, r in zip(preps, tg, both):
        alone = probe(a, p, t.positions, t.token_ids, 1, probe="masked")
        torch.testing.assert_close(r.grads, alone.grads, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(r.context_weights, alone.context_weights, atol=1e-6, rtol=1e-5)


def test_memory_budget_picks_a_chunk_and_refuses_too_little(toy, samples):
    model, proc = toy
    s = samples[0]
    e = Explainer(model, proc, memory_budget="2GB").explain(s.image, response=s.caption)
    ref = Explainer(model, proc).explain(s.image, response=s.caption)
    torch.testing.assert_close(e.maps, ref.maps, atol=1e-5, rtol=0)
    # below the parameters' own bytes: refused when the explainer is made, before any input or output
    weights = sum(p.numel() for p in model.parameters()) * 4  # float32
    with pytest.raises(InputError, match=f"too small for this model: its parameters alone take {weights / 1e9:.3g} GB"):
        Explainer(model, proc, memory_budget=weights - 1)
    # room for the parameters, not the sequence: refused at the first input
    ok = Explainer(model, proc, memory_budget=weights + 1)
    with pytest.raises(InputError, match="memory_budget: .* too small for this model and sequence"):
        ok.explain(s.image, response=s.caption)
    with pytest.raises(InputError, match="memory_budget must be a size"):
        Explainer(model, proc, memory_budget="lots")
    # TAM takes no gradient: its budget was refused by the gradients' estimate
    tam = Explainer(model, proc, method="tam", memory_budget=weights + 1).explain(s.image, response=s.caption)
    torch.testing.assert_close(tam.maps, Explainer(model, proc, method="tam").explain(s.image, response=s.caption).maps)


def test_a_batch_too_wide_for_the_budget_is_split_not_refused(toy, samples):
    # a budget every example fits alone refused the 3-row forward as "too small for this model and
    # sequence"; it now takes the batch in parts that fit
    from dcam.probe.memory import BudgetError, chunk_for_budget

    model, proc = toy
    exp = Explainer(model, proc)
    caption = samples[0].caption
    alone = [exp.explain(s.image, response=caption) for s in samples]
    a = exp.adapter
    prep = a.prepare(samples[0].image, None, a.encode_response(caption))
    L, above, words = prep.input_ids.shape[1], len(a.blocks()) - 1 - exp.layer, len(alone[0])

    def fits(budget, rows):
        try:
            return chunk_for_budget(model, L, above, words, budget, rows=rows, scored_rows=len(prep.response_ids) + 1)
        except BudgetError:
            return 0

    budget = next(b for b in range(200_000, 50_000_000, 1000) if fits(b, 1))  # the least one example takes
    with pytest.raises(BudgetError):  # the budget does not hold the three rows at once
        chunk_for_budget(model, L, above, words, budget, rows=3, scored_rows=len(prep.response_ids) + 1)
    got = Explainer(model, proc, memory_budget=budget).explain_batch([s.image for s in samples],
                                                                     responses=[caption] * 3)
    for e, want in zip(got, alone):
        torch.testing.assert_close(e.maps, want.maps, atol=1e-5, rtol=0)
        assert e.tokens == want.tokens
    # an example whose own sequence does not fit is named (a longer prompt: a longer sequence)
    with pytest.raises(BudgetError, match=r"^example 1 of the batch \(images\[1\]\): memory_budget: "):
        Explainer(model, proc, memory_budget=budget).explain_batch(
            [s.image for s in samples[:2]], prompts=[None, "describe the image " * 30], responses=[caption] * 2)


def test_a_refusal_inside_the_batched_probe_names_the_example():
    # the contrastive score needs a distractor outside the targets: example 1 explains every word, so
    # it has none; the batched probe's refusal did not say which of the images it was about
    from dcam.testing.standins import STANDINS

    model, proc = STANDINS["diffusion-gemma"](seed=0)
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 72, 3), dtype=np.uint8))
    exp = Explainer(model, proc)
    r = "a red circle and a blue square"
    exp.explain(im, response=r, targets=[0], target_score="contrastive")  # example 0 alone is fine
    with pytest.raises(InputError) as alone:
        exp.explain(im, response=r, target_score="contrastive")
    with pytest.raises(InputError) as info:
        exp.explain_batch([im, im], responses=[r, r], targets_per_image=[[0], "all"], target_score="contrastive")
    assert str(info.value) == f"example 1 of the batch (images[1]): {alone.value}"


def test_memory_budget_sizes_are_read_exactly_or_refused():
    # hand-worked byte counts; before, a float went through int() (1.5 -> 1), inf and 2**1100
    # overflowed (OverflowError), "1e30GB" was "not a size" while a longer "99...9TB" passed
    good = {8: 8, 1.0: 1, "8GB": 8 * 10 ** 9, "1.5 gb": 1_500_000_000, "512MiB": 512 * 2 ** 20, "1e3GB": 10 ** 12,
            " 2 kib ": 2048, "0.5KB": 500, "9223372036854775808": 2 ** 63,
            "0.99999999999999999999999999999kb": 999}  # rounded down exactly (28-digit Decimal made it 1000)
    for value, want in good.items():
        assert parse_size(value) == want, value
    refused = {1.5: "must be a whole number of bytes", float("inf"): "must be a whole number of bytes",
               float("nan"): "must be a whole number of bytes", 2 ** 1100: "must be at most 2**63 bytes",
               "1e30GB": "must be at most 2**63 bytes", "1" + "0" * 400 + "GB": "must be at most 2**63 bytes",
               "1e999999999GB": "must be at most 2**63 bytes", 2 ** 63 + 1: "must be at most 2**63 bytes",
               "0": "must be a positive size", "0.0001B": "must be a whole number of bytes", True: "must be a size",
               "1.5": "must be a whole number of bytes", "1.5B": "must be a whole number of bytes",
               "-3GB": "must be a size like 8GB", "8 parsecs": "must be a size like 8GB",
               # exponents past Decimal's own range ended in decimal.InvalidOperation tracebacks
               "1e99999999999999999999GB": "must be at most 2**63 bytes",
               "1E-99999999999999999999GB": "must be a positive size",
               # a lower-case b after an upper-case prefix is bits: "8Gb" was read as 8 GB, 8 x the memory
               "8Gb": "must be a size in bytes; 'Gb' is bits (a lower-case b): write GB",
               "512Mib": "must be a size in bytes; 'Mib' is bits (a lower-case b): write MiB"}
    for value, message in refused.items():
        with pytest.raises(InputError) as info:
            parse_size(value)
        assert str(info.value).startswith(f"memory_budget {message}") and str(info.value).endswith(f"{value!r}")


def test_memory_budget_counts_the_logits_gradient_of_every_scored_row():
    # one cotangent also carries a dense rows x vocabulary gradient through the LM head: left out,
    # a 1 GB budget peaked at 1.5 GB with LLaDA's vocabulary and 128 words
    from types import SimpleNamespace

    from dcam.probe.memory import chunk_for_budget

    model = torch.nn.Linear(10, 10)  # 110 float32 parameters: 440 bytes
    model.config = SimpleNamespace(hidden_size=8, intermediate_size=16, num_attention_heads=2, vocab_size=1000)
    blocks = 10 * (8 * 8 + 3 * 16) * 4 + 2 * 10 * 10 * 4  # L=10, one block: 5,280 bytes per cotangent
    head = 2 * 5 * 1000 * 4  # 5 scored rows of 1,000 logits, twice, float32
    budget = 440 + blocks + 3 * (blocks + head) + 100
    assert chunk_for_budget(model, 10, 0, 99, budget, scored_rows=5) == 3
    assert chunk_for_budget(model, 10, 0, 2, budget, scored_rows=5) == 2  # at most the items
    with pytest.raises(InputError) as info:
        chunk_for_budget(model, 10, 0, 99, 440 + blocks + blocks + head - 1, scored_rows=5)
    assert f"it needs at least {(440 + 2 * blocks + head) / 1e9:.3g} GB" in str(info.value)


# ------------------------------------------------------------------ views


def test_memory_estimate_of_a_model_without_a_config_reads_its_layers():
    # a user's own nn.Module has no config: the estimate took hidden 1024, MLP 4096 and 8 heads (~50x too large
    # for this 24-wide model, whose "1MB" budget was refused); its sizes are read off its modules
    from torch import nn

    from dcam.probe.memory import head_cotangent_bytes, per_cotangent_bytes

    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(40, 24)
            self.pos = nn.Embedding(16, 24)  # a smaller table: not the vocabulary
            self.layers = nn.ModuleList(nn.TransformerEncoderLayer(24, 2, 48, batch_first=True) for _ in range(3))
            self.out = nn.Linear(24, 40)

    L, above = 31, 2
    per_block = L * (8 * 24 + 3 * 48) * 4 + 2 * L * L * 4  # D=24, I=48, 2 heads, float32; the formula by hand
    assert per_cotangent_bytes(Mine(), L, above) == (above + 1) * per_block == 148056
    assert head_cotangent_bytes(Mine(), 5) == 2 * 5 * 40 * 4  # V=40 from the token embedding


def test_views(toy, samples):
    model, proc = toy
    s = samples[0]
    exp = Explainer(adapter=TwoViewAdapter(model, proc))
    e_all = exp.explain(s.image, response=s.caption, probe="full", view="all")
    assert set(e_all.view_maps) == {"top", "bottom"} and e_all.view_maps["top"].shape[1:] == (4, 8)
    res, rho = _full_probe(model, proc, s)
    for name, sl in (("top", slice(0, 32)), ("bottom", slice(32, 64))):
        one = exp.explain(s.image, response=s.caption, probe="full", view=name)
        assert one.view == name and one.grid == (4, 8)
        want = _reference_maps(res.sliced(sl), (4, 8), exp.config, model.config.response_length, s.image.height, rho)
        torch.testing.assert_close(one.maps, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(e_all.view_maps[name], one.maps, atol=1e-6, rtol=0)
    with pytest.raises(InputError, match="no view 'left'"):
        exp.explain(s.image, response=s.caption, view="left")


def test_a_view_of_default_is_the_explained_view_as_everywhere_else(toy, samples):
    # map/overlay refused view="default" ("not among this explanation's views (bottom, top)") while explain takes it
    s = samples[0]
    exp = Explainer(adapter=TwoViewAdapter(*toy))
    e_all = exp.explain(s.image, response=s.caption, probe="full", view="all")
    top = exp.explain(s.image, response=s.caption, probe="full", view="top")  # the adapter's first view
    assert e_all.view == "top" and torch.equal(e_all.map(0, view="default"), e_all.view_maps["top"][0])
    torch.testing.assert_close(e_all.map(0, view="default"), top.maps[0], atol=1e-6, rtol=0)
    # placed on the top half of the image, as the explained view's own overlay is
    assert np.array_equal(np.asarray(e_all.overlay(0, view="default")), np.asarray(e_all.overlay(0, view="top")))
    assert not np.array_equal(np.asarray(e_all.overlay(0, view="default")),
                              np.asarray(e_all.overlay(0, view="bottom")))
    assert torch.equal(top.map(0, view="default"), top.maps[0])  # one view explained: its maps
    with pytest.raises(InputError, match=r"^view: 'all' is not among this explanation's views \(bottom, top\)$"):
        e_all.map(0, view="all")


def test_every_view_is_written_with_view_all(toy, samples, tmp_path):
    # Explanation.save and dcam run wrote only the default view's maps: view="all" computed the
    # others and dropped them
    from safetensors.torch import load_file

    from dcam.runs.reader import load_run
    from dcam.runs.runner import run_dataset
    from dcam.runs.sources import ManifestSource

    model, proc = toy
    exp = Explainer(adapter=TwoViewAdapter(model, proc), view="all")
    s = samples[0]
    e = exp.explain(s.image, response=s.caption, probe="full")
    e.save(str(tmp_path / "one"))
    saved = load_file(str(tmp_path / "one" / "maps.safetensors"))
    with open(tmp_path / "one" / "meta.json") as f:
        meta = json.load(f)
    assert meta["view"] == "top" and meta["views"] == {"top": [4, 8], "bottom": [4, 8]}
    for name in ("top", "bottom"):
        torch.testing.assert_close(saved[f"view_maps.{name}"], e.view_maps[name], atol=0, rtol=0)
    torch.testing.assert_close(saved["maps"], e.view_maps["top"], atol=0, rtol=0)

    lines = []
    for i, smp in enumerate(samples[:2]):
        smp.image.save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"id": i, "image": f"{i}.png", "response": smp.caption}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    run_dataset(exp, ManifestSource(str(tmp_path / "m.jsonl")), str(tmp_path / "run"))
    records = list(load_run(str(tmp_path / "run")))
    assert len(records) == 2
    for r in records:
        alone = exp.explain(str(tmp_path / f"{r.id}.png"), response=r.response)
        assert r.view == "top" and set(r.view_maps) == {"top", "bottom"}
        for name in ("top", "bottom"):
            torch.testing.assert_close(r.view_maps[name], alone.view_maps[name], atol=1e-5, rtol=0)


def test_a_batch_of_other_word_counts_runs_as_batches_of_similar_counts(toy, samples):
    """A one-word response beside two longer ones: not one forward where the short one would
    ride along as zero rows through every backward, but [1-word] and [the two longer]; each
    example's maps are still explain()'s."""
    exp = Explainer(*toy)
    images = [s.image for s in samples]
    responses = [samples[0].caption, "red", samples[2].caption]
    assert len(responses[0].split()) > 3 and len(responses[2].split()) > 3
    seen = []
    h = exp.adapter.blocks()[exp.layer].register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    exp.explain(images[0], response="red")  # (the rows-only check runs its forwards once, here)
    seen.clear()
    try:
        batch = exp.explain_batch(images, responses=responses)
    finally:
        h.remove()
    assert sorted(seen) == [1, 2]
    for img, r, e in zip(images, responses, batch):
        one = exp.explain(img, response=r)
        assert e.tokens == one.tokens
        torch.testing.assert_close(e.maps, one.maps, atol=1e-5, rtol=0)


def test_a_batch_has_at_most_chunk_size_examples_without_a_budget(toy, samples):
    """chunk_size counts the gradients of one backward (cotangents x examples): 5 examples with
    chunk_size=2 run as batches of 2, 2 and 1 (each one cotangent at a time), not as one batch
    of 5 holding 5 gradients per backward."""
    import dcam.probe.gradients as G

    seen = []
    orig = G.batched_grad

    def spy(scores, leaf, chunk_size, select, on_chunk, **kw):
        seen.append((scores.shape[0], chunk_size))
        return orig(scores, leaf, chunk_size, select, on_chunk, **kw)

    exp = Explainer(*toy, chunk_size=2)
    images, responses = [s.image for s in samples] * 2, [s.caption for s in samples] * 2
    G.batched_grad = spy
    try:
        batch = exp.explain_batch(images[:5], responses=responses[:5])
    finally:
        G.batched_grad = orig
    assert all(rows * chunk <= 2 for rows, chunk in seen) and sum(rows for rows, _ in seen) == 5
    for img, r, e in zip(images, responses, batch):
        torch.testing.assert_close(e.maps, exp.explain(img, response=r).maps, atol=1e-5, rtol=0)


def test_each_view_of_view_all_is_placed_where_it_lies(toy, samples, tmp_path):
    # with view="all" only the explained view's box was kept: the other views' maps could not be put on the image
    import matplotlib
    import torch.nn.functional as F

    from dcam.runs.reader import load_run
    from dcam.runs.runner import run_dataset
    from dcam.runs.sources import ManifestSource
    from dcam.saved import load_explanation

    model, proc = toy
    exp = Explainer(adapter=TwoViewAdapter(model, proc), view="all")
    s = samples[0]
    e = exp.explain(s.image, response=s.caption, probe="full")
    assert e.view_boxes == {"top": (0, 0, 1, 0.5), "bottom": (0, 0.5, 1, 1)}  # dcam.testing.views' halves
    W, H = s.image.size
    img = np.asarray(s.image.convert("RGB"), dtype=np.float32) / 255
    # worked here: the bottom map bilinearly upsampled into the lower half, zero above, jet, blended at 0.5
    heat = np.zeros((H, W), np.float32)
    lower = F.interpolate(e.view_maps["bottom"][2][None, None], size=(H - H // 2, W), mode="bilinear",
                          align_corners=False)[0, 0].clamp(0, 1).numpy()
    heat[H // 2:] = lower
    rgb = np.rint(matplotlib.colormaps["jet"](heat)[..., :3] * 255) / 255
    want = np.clip(np.rint((0.5 * img + 0.5 * rgb) * 255), 0, 255).astype(np.uint8)
    got = np.asarray(e.overlay(2, view="bottom"))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert torch.equal(e.map(2, view="bottom"), e.view_maps["bottom"][2])
    assert torch.equal(e.map(2, view="top"), e.maps[2])
    with pytest.raises(InputError, match=r"^view: 'left' is not among this explanation's views \(bottom, top\)$"):
        e.overlay(2, view="left")
    single = exp.explain(s.image, response=s.caption, probe="full", view="top")
    with pytest.raises(InputError, match=r"^view: 'bottom' is not among this explanation's views \(none"):
        single.map(0, view="bottom")
    # kept by a save and by a run
    e.save(str(tmp_path / "one"))
    back = load_explanation(str(tmp_path / "one"))
    assert back.view_boxes == e.view_boxes
    s.image.save(tmp_path / "0.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": 0, "image": "0.png", "response": s.caption}) + "\n")
    run_dataset(exp, ManifestSource(str(tmp_path / "m.jsonl")), str(tmp_path / "run"))
    r, = list(load_run(str(tmp_path / "run")))
    assert r.view_boxes == {"top": (0, 0, 1, 0.5), "bottom": (0, 0.5, 1, 1)}
