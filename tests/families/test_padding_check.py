"""The once-per-adapter check of ``pads_batches`` (:func:`dcam.probe.padding.check_padding`): an adapter
that sets the flag but whose ``forward_logits()`` drops the keep mask let real tokens attend to the padding,
and its ``explain_batch`` maps differed from ``explain()``'s by up to 0.16 without a word. It is warned about
once and its examples of other layouts then run apart; an adapter that pads right keeps its shared forward.

The references are ``explain()`` of each example alone (one forward of its own sequence, never padded)."""
import warnings
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from dcam.explain import Explainer
from dcam.probe.adapters.shapes import ShapesAdapter
from dcam.probe.padding import PAD_MASK
from dcam.runs.runner import RunOptions, explain_records
from dcam.testing import tiny_toy

#: no two of one layout: other image sizes, prompts and response lengths (as tests/families/test_padded_batches.py)
IMAGES = [Image.fromarray(np.random.default_rng(s).integers(0, 256, (h, w, 3), dtype=np.uint8))
          for s, (h, w) in enumerate([(40, 72), (60, 30), (40, 72)])]
PROMPTS = [None, "name the objects in this image", "what"]
RESPONSES = ["a red circle", "a blue square and", "a green circle"]


class DropsMask(ShapesAdapter):
    """A user's adapter that says it pads, but hands the model no keep mask."""

    def _embeddings(self, input_ids, model_inputs):
        return super()._embeddings(input_ids, {k: v for k, v in model_inputs.items() if k != PAD_MASK})


def _explainer(adapter_class):
    model, proc = tiny_toy(seed=1)
    return Explainer(adapter=adapter_class(model, proc))


def _padding_warnings(caught):
    return [w for w in caught if issubclass(w.category, RuntimeWarning) and "pads_batches" in str(w.message)]


def _batch(exp, hooked_batch_sizes):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, sizes = hooked_batch_sizes(exp, lambda: exp.explain_batch(IMAGES, PROMPTS, RESPONSES))
    return out, sizes, _padding_warnings(caught)


def test_an_adapter_that_drops_the_mask_is_warned_about_once_and_explained_apart(hooked_batch_sizes):
    exp = _explainer(DropsMask)
    ones = [exp.explain(im, prompt=p, response=r) for im, p, r in zip(IMAGES, PROMPTS, RESPONSES)]
    batch, sizes, found = _batch(exp, hooked_batch_sizes)
    assert len(found) == 1
    msg = str(found[0].message)
    assert "DropsMask" in msg and "forward_logits" in msg and "explained apart" in msg
    # the check (the first two examples padded together, the shorter alone), then one forward per layout
    assert sizes == [2, 1, 1, 1, 1]
    for e, one in zip(batch, ones):
        assert e.tokens == one.tokens
        torch.testing.assert_close(e.scores, one.scores, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(e.raw_maps, one.raw_maps, atol=1e-4, rtol=0)
        torch.testing.assert_close(e.maps, one.maps, atol=2e-4, rtol=0)
    # checked once: a second batch runs no check and says nothing again
    again, sizes, found = _batch(exp, hooked_batch_sizes)
    assert found == [] and sizes == [1, 1, 1]
    for e, one in zip(again, ones):
        torch.testing.assert_close(e.maps, one.maps, atol=2e-4, rtol=0)


def test_the_check_is_needed_padded_rows_without_the_mask_are_not_the_examples(hooked_batch_sizes):
    # what the check guards against: the same adapter's rows, padded anyway, give other maps
    exp = _explainer(DropsMask)
    exp.adapter._padding_ok = True  # (as if the check had passed: one padded forward)
    ones = [exp.explain(im, prompt=p, response=r) for im, p, r in zip(IMAGES, PROMPTS, RESPONSES)]
    batch, sizes, _ = _batch(exp, hooked_batch_sizes)
    assert sizes == [3]
    assert max(float((e.maps - one.maps).abs().max()) for e, one in zip(batch, ones)) > 1e-2


def test_an_adapter_that_pads_right_passes_and_keeps_one_shared_forward(hooked_batch_sizes):
    exp = _explainer(ShapesAdapter)
    ones = [exp.explain(im, prompt=p, response=r) for im, p, r in zip(IMAGES, PROMPTS, RESPONSES)]
    assert getattr(exp.adapter, "_padding_ok", None) is None  # one example at a time pads nothing: no check
    batch, sizes, found = _batch(exp, hooked_batch_sizes)
    assert found == []
    assert sizes == [2, 1, 3]  # the check once, then all three in one padded forward
    for e, one in zip(batch, ones):
        torch.testing.assert_close(e.maps, one.maps, atol=2e-4, rtol=0)
    _, sizes, found = _batch(exp, hooked_batch_sizes)
    assert found == [] and sizes == [3]  # no second check


def test_a_batch_of_one_length_runs_no_check(hooked_batch_sizes):
    exp = _explainer(DropsMask)
    same = [IMAGES[0], IMAGES[2]]  # one layout: nothing is padded, so nothing to check yet
    _, sizes = hooked_batch_sizes(exp, lambda: exp.explain_batch(same, responses=["a red circle", "a green circle"]))
    assert sizes == [2] and getattr(exp.adapter, "_padding_ok", None) is None


def test_remask_pads_nothing_and_runs_no_check():
    exp = _explainer(DropsMask)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp.explain_batch(IMAGES[:2], PROMPTS[:2], RESPONSES[:2], probe="remask")
    assert _padding_warnings(caught) == [] and getattr(exp.adapter, "_padding_ok", None) is None


def test_dcam_run_takes_the_same_path():
    # dcam run explains each batch of records with explain_batch (dcam.runs.runner.explain_records)
    exp = _explainer(DropsMask)
    recs = [SimpleNamespace(image=im, prompt=p, response=r, targets="all")
            for im, p, r in zip(IMAGES, PROMPTS, RESPONSES)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = explain_records(exp, recs, RunOptions())
    assert len(_padding_warnings(caught)) == 1
    for (rec, e, err), im, p, r in zip(out, IMAGES, PROMPTS, RESPONSES):
        assert err is None
        torch.testing.assert_close(e.maps, exp.explain(im, prompt=p, response=r).maps, atol=2e-4, rtol=0)


def test_the_warning_names_the_callers_line_and_probe_batch_checks_too():
    # the warning named dcam/explain.py (a fixed stacklevel); dcam.probe.probe_batch called directly took a
    # mask-dropping adapter's padded rows as exact (no check): it now warns and refuses the padded batch
    import pytest

    from dcam import InputError
    from dcam.probe import Targets, probe_batch

    exp = _explainer(DropsMask)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp.explain_batch(IMAGES, PROMPTS, RESPONSES)
    assert [w.filename for w in _padding_warnings(caught)] == [__file__]
    exp = _explainer(DropsMask)
    from dcam.example import ExampleBuilder  # (the examples' inputs, built as explain_batch builds them)

    build = ExampleBuilder(exp, None, None, (255, 255, 255), "words", None)
    exs = [build(im, p, r, "all") for im, p, r in zip(IMAGES[:2], PROMPTS[:2], RESPONSES[:2])]
    assert exs[0].prep.input_ids.shape[1] != exs[1].prep.input_ids.shape[1]
    with warnings.catch_warnings(record=True) as caught, pytest.raises(InputError, match="group them by batch_key"):
        warnings.simplefilter("always")
        probe_batch(exp.adapter, [ex.prep for ex in exs], [Targets.of(ex.positions, ex.token_ids, ex.groups)
                                                         for ex in exs], exp.layer)
    assert len(_padding_warnings(caught)) == 1
