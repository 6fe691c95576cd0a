"""Batches of examples of different lengths (other prompts, responses and image
sizes): the families that pad share one right-padded forward, the others run
one forward per layout; either way every example gets what it gets alone.

The reference for the gradients is the slow published procedure (one full
forward and backward per word, on the example's own unpadded sequence,
:func:`dcam.probe.published_gradients`), not the batched probe itself."""
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dcam.errors import InputError
from dcam.explain import Explainer
from dcam.probe import Targets, auto_adapter, batch_key, layout_key, probe_batch, published_gradients
from dcam.probe.adapters.base import ModelAdapter
from dcam.probe.padding import padding_id
from dcam.probe.rows import supports_rows
from dcam.testing import tiny_toy
from dcam.testing.hf_tiny import tiny_diffusion_gemma

#: (not lavida nor lumina-dimoo: their LLaDA blocks read no mask; tests/families/test_lavida_published.py,
#: tests/families/test_vq_published.py)
PADDED = ["toy", "lavida-dream", "llada-v", "mmada", "dream-vl", "llava", "llava-next",
          "llava-onevision", "qwen-vl", "qwen2.5-vl", "qwen3-vl", "idefics3", "smolvlm", "gemma3", "gemma4",
          "diffusion-gemma"]
CAUSAL = ("llava", "qwen", "idefics3", "smolvlm", "gemma", "diffusion-gemma")  # DiffusionGemma: "full" probe only
#: the 40 x 72 and 60 x 30 images have other numbers of anyres tiles: padded with zero tiles too
TILED = {"llava-next", "llava-onevision", "idefics3", "smolvlm"}
#: three examples, no two of one layout: other image sizes, prompts and response lengths
PROMPTS = [None, "name the objects in this image", "what"]
RESPONSES = ["a red circle", "a blue square and", "a green circle"]  # 3, 4, 3 words


def _image(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


IMAGES = [_image(40, 72, 0), _image(60, 30, 1), _image(40, 72, 2)]


_WIDE_WINDOW = {}


def _model(name, models):
    if name == "diffusion-gemma":
        # prompts within the sliding window (the stand-in's default window, 64, is shorter than these
        # examples' prompts: see test_diffusion_gemma_pads_only_prompts_within_its_sliding_window)
        if not _WIDE_WINDOW:
            _WIDE_WINDOW["model"] = tiny_diffusion_gemma(seed=0, sliding_window=128)
        return _WIDE_WINDOW["model"]
    return tiny_toy(seed=1) if name == "toy" else models(name)


@pytest.mark.parametrize("name", PADDED)
def test_examples_of_other_lengths_share_one_padded_forward(name, models, hooked_batch_sizes):
    # their padded work is 15-40% over their own: one batch only with the slack opened (the default
    # splits them, tests/test_batch_partition.py); what is tested here is the padding
    exp = Explainer(*_model(name, models), batch_slack=math.inf)
    assert exp.adapter.pads_batches
    ones = [exp.explain(im, prompt=p, response=r) for im, p, r in zip(IMAGES, PROMPTS, RESPONSES)]
    preps = [exp.adapter.prepare(im, p, exp.adapter.encode_response(r)) for im, p, r in zip(IMAGES, PROMPTS, RESPONSES)]
    assert len({layout_key(p, exp.adapter) for p in preps}) == 3  # no two share a layout ...
    assert len({batch_key(p, exp.adapter) for p in preps}) == 1  # ... and one padded batch takes them all
    if name in TILED:
        tiles = {int(p.model_inputs["pixel_values"].shape[1]) for p in preps}
        assert len(tiles) == 2, tiles
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch, sizes = hooked_batch_sizes(exp, lambda: exp.explain_batch(IMAGES, PROMPTS, RESPONSES))
    assert not [w for w in caught if "pads_batches" in str(w.message)]  # its padded rows pass the check
    # the once-per-adapter padding check (the first two examples padded together, the shorter alone), then
    # one forward of all three; where the last block can run at the scored rows only (dcam.probe.rows), the
    # once-per-adapter check of that on a padded batch first (the full block and the rows, both of three)
    generic_rows = type(exp.adapter).logits_at_rows is ModelAdapter.logits_at_rows and \
        supports_rows(exp.adapter.blocks()[-1])
    assert sizes == [2, 1] + ([3, 3] if generic_rows else []) + [3]
    if generic_rows:  # the padded batch's last block ran at the scored rows (it ran every row: ~16x slower)
        assert exp.adapter._rows_only_ok_padded is True
    for e, one in zip(batch, ones):
        assert e.tokens == one.tokens and e.response == one.response and e.grid == one.grid
        torch.testing.assert_close(e.scores, one.scores, atol=1e-5, rtol=1e-5)
        # the maps are min-max normalised: a rounding difference of the padded forward (reductions of
        # another length, ~5e-7 relative in the gradients) is divided by each map's range. The tiny random
        # Dream-VL's pooled maps are nearly flat (range ~1/200 of their mean), so there it comes out at
        # 8e-5 in the raw maps and 2.1e-4 after the refinements (measured on a Zen 4); elsewhere <= 3e-5
        atol = 1e-3 if name == "dream-vl" else 2e-4
        torch.testing.assert_close(e.raw_maps, one.raw_maps, atol=atol / 2, rtol=0)
        torch.testing.assert_close(e.maps, one.maps, atol=atol, rtol=0)


@pytest.mark.parametrize("name,mode", [(n, m) for n in PADDED for m in ("full", "masked")
                                       if m == "full" or not n.startswith(CAUSAL)])  # causal VLMs: full only
def test_padded_rows_have_the_published_gradients(name, mode, models):
    a = auto_adapter(*_model(name, models))
    preps = [a.prepare(im, p, a.encode_response(r)) for im, p, r in zip(IMAGES, PROMPTS, RESPONSES)]
    tg = [Targets.of([p.response_start + i for i in range(min(2, p.response_length))],
                     p.response_ids[:min(2, p.response_length)]) for p in preps]
    results = probe_batch(a, preps, tg, 1, probe=mode, chunk_size=1)
    for p, t, r in zip(preps, tg, results):
        ref = published_gradients(a, p, t.positions, t.token_ids, 1, probe=mode)
        assert ref.abs().max() > 0
        torch.testing.assert_close(r.per_target_grads(), ref, atol=1e-6, rtol=1e-4)
        assert torch.equal(r.input_ids[:, :p.input_ids.shape[1]], r.input_ids)
        assert r.input_ids.shape[1] == p.input_ids.shape[1]  # handed back without its padding
        assert r.acts.shape[1] == p.image_positions.numel()


def test_the_padding_token_is_never_read(monkeypatch):
    """Another padding id (any text token) gives the same maps: the padded keys are hidden."""
    model, proc = tiny_toy(seed=1)
    exp = Explainer(model, proc)
    a = exp.adapter
    first = exp.explain_batch(IMAGES[:2], PROMPTS[:2], RESPONSES[:2])
    pad = padding_id(a)
    other = a.encode_response("red")[0]  # a word
    assert other != pad
    import dcam.probe.padding as padding

    monkeypatch.setattr(padding, "padding_id", lambda adapter: other)
    again = exp.explain_batch(IMAGES[:2], PROMPTS[:2], RESPONSES[:2])
    for x, y in zip(first, again):
        torch.testing.assert_close(x.maps, y.maps, atol=1e-6, rtol=0)


def test_diffusion_gemma_pads_only_prompts_within_its_sliding_window(models, monkeypatch, hooked_batch_sizes):
    """The encoder's sliding-window layers hand the decoder their last ``window - 1`` prompt keys
    (63 here). Prompts of 61 and 59 tokens pad together; one of 72 runs alone (padding it would
    push real keys out of those layers' cache, and its rows would differ: checked below)."""
    model, proc = models("diffusion-gemma")
    exp = Explainer(model, proc)
    a = exp.adapter
    assert model.config.get_text_config().sliding_window == 64
    images, prompts, responses = [IMAGES[1], IMAGES[1], IMAGES[0]], [None, "what", None], RESPONSES
    preps = [a.prepare(im, p, a.encode_response(r)) for im, p, r in zip(images, prompts, responses)]
    assert [p.response_start for p in preps] == [61, 59, 72]
    assert batch_key(preps[0], a) == batch_key(preps[1], a) != batch_key(preps[2], a)
    ones = [exp.explain(im, prompt=p, response=r) for im, p, r in zip(images, prompts, responses)]
    batch, sizes = hooked_batch_sizes(exp, lambda: exp.explain_batch(images, prompts, responses))
    assert sorted(sizes) == [1, 1, 2, 2]  # the padding check's pair and its shorter example alone, then 2 and 1
    for e, one in zip(batch, ones):
        torch.testing.assert_close(e.maps, one.maps, atol=2e-4, rtol=0)
    tg = [Targets.of([p.response_start], p.response_ids[:1]) for p in preps]
    with pytest.raises(InputError, match="group them by batch_key"):
        probe_batch(a, [preps[0], preps[2]], [tg[0], tg[2]], 1)
    # the rule is needed: padded past the window, the shorter prompt's gradients are not its own
    monkeypatch.setattr(type(a), "_cached_prompt_length", lambda self: None)
    forced = probe_batch(a, [preps[0], preps[2]], [tg[0], tg[2]], 1, chunk_size=1)[0]
    ref = published_gradients(a, preps[0], tg[0].positions, tg[0].token_ids, 1)
    assert (forced.per_target_grads() - ref).abs().max() > 1e-2 * ref.abs().max()


def test_the_families_page_lists_which_families_pad(models):
    """docs/FAMILIES.md's two lists are the adapters' own ``pads_batches``."""
    import pathlib

    from dcam.probe.adapters import FAMILIES
    from dcam.testing.standins import STANDINS

    text = (pathlib.Path(__file__).parents[2] / "docs" / "FAMILIES.md").read_text()
    listed = {}
    for line in text.splitlines():
        for kind in ("padded", "one forward per layout"):
            if line.startswith(f"- {kind}: "):
                listed[kind] = set(line.split(": ", 1)[1].split(", ")) - {"none"}
    assert {f.name for f in FAMILIES} == listed["padded"] | listed["one forward per layout"]
    for name in STANDINS:
        a = auto_adapter(*models(name))
        assert a.pads_batches == (a.family in listed["padded"]), a.family
    a = auto_adapter(*tiny_toy(seed=1))
    assert a.pads_batches and a.family in listed["padded"]


@pytest.mark.parametrize("name", ["qwen-vl", "llava"])
def test_the_padding_token_is_never_the_image_placeholder(name):
    """A checkpoint without pad and bos tokens: the adapter's never-explained ids are the image
    token alone, which padding must not take (the model counted one image token per padded
    position more than it had features, and failed)."""
    from dcam.testing.standins import STANDINS

    model, proc = STANDINS[name](seed=0)
    proc.tokenizer.pad_token = None
    for c in (model.config, getattr(model.config, "text_config", None)):
        if c is not None:
            c.pad_token_id = c.bos_token_id = None
    exp = Explainer(model, proc)
    a = exp.adapter
    assert a.image_token_id in a.pad_token_ids and padding_id(a) != a.image_token_id
    assert padding_id(a) in a.eos_token_ids
    images, prompts, responses = IMAGES[:2], ["what is in this image", "what"], ["a red circle", "red"]
    for e, im, p, r in zip(exp.explain_batch(images, prompts, responses), images, prompts, responses):
        torch.testing.assert_close(e.maps, exp.explain(im, prompt=p, response=r).maps, atol=2e-4, rtol=0)

