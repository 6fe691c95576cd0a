"""``explain_batch(..., errors="return")``: a bad example's InputError takes its place and the others are
explained as a batch without it. One bad example used to lose the whole batch, found after every
generation (8 generated responses, one with targets ["zebra"]: an InputError after 4 of 6 s, nothing
returned), and dcam's callers redid the batch one record at a time, generating each response again."""
import numpy as np
import pytest
import torch

import dcam
from dcam.errors import InputError

N = 5
BAD = 3  # its targets name a word the generated response cannot hold


@pytest.fixture(scope="module")
def toy():
    model, processor = dcam.zoo.load_default()
    return dcam.Explainer(model, processor)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(N)]


def _targets():
    return ["all"] * BAD + [["zebra"]] + ["all"] * (N - BAD - 1)


def _counting_generations(toy, monkeypatch):
    calls = []
    generate = toy.adapter.generate

    def counted(*args, **kwargs):
        calls.append(1)
        return generate(*args, **kwargs)

    monkeypatch.setattr(toy.adapter, "generate", counted)
    return calls


def test_a_bad_example_is_returned_in_its_place_after_one_generation_each(toy, images, monkeypatch):
    generations = _counting_generations(toy, monkeypatch)
    got = toy.explain_batch(images, targets_per_image=_targets(), errors="return")
    assert len(generations) == N  # each response generated once: none again for the good ones
    assert [type(e) for e in got] == [dcam.Explanation] * BAD + [InputError] + [dcam.Explanation] * (N - BAD - 1)
    assert str(got[BAD]).startswith(f"example {BAD} of the batch (images[{BAD}]): targets: ")
    assert "'zebra'" in str(got[BAD])
    good = [i for i in range(N) if i != BAD]
    # the others equal a batch without the bad one, and explain() one image at a time (same size: no padding)
    without = toy.explain_batch([images[i] for i in good])
    for i, w in zip(good, without):
        assert got[i].response == w.response and got[i].tokens == w.tokens
        assert torch.equal(got[i].maps, w.maps)
        alone = toy.explain(images[i])
        assert got[i].response == alone.response
        # (a batch's reductions round apart from one example's: 1.3e-5 measured here; explain_batch's
        # docstring says maps may differ by ~1e-4 and more)
        torch.testing.assert_close(got[i].maps, alone.maps, atol=1e-4, rtol=0)


def test_the_default_still_raises_for_the_whole_batch(toy, images):
    with pytest.raises(InputError, match=rf"^example {BAD} of the batch \(images\[{BAD}\]\): targets: "):
        toy.explain_batch(images, targets_per_image=_targets())


def test_errors_caught_before_any_model_work_are_returned_too(toy, images):
    # a NaN image (found when the images are read) and a given response without the target (found before
    # any generation); the rest generated and explained
    nan = images[1].astype(np.float32)
    nan[0, 0, 0] = np.nan
    got = toy.explain_batch([images[0], nan, images[2]], responses=[None, None, "a red circle"],
                            targets_per_image=["all", "all", ["square"]], errors="return")
    assert isinstance(got[0], dcam.Explanation)
    assert isinstance(got[1], InputError) and str(got[1]).startswith("example 1 of the batch (images[1]): ")
    assert isinstance(got[2], InputError) and str(got[2]).startswith("example 2 of the batch (images[2]): ")
    torch.testing.assert_close(got[0].maps, toy.explain(images[0]).maps, atol=1e-4, rtol=0)


def test_a_batch_of_only_bad_examples_returns_only_errors(toy, images):
    got = toy.explain_batch(images[:2], responses=["a red circle"] * 2, targets="zebra", errors="return")
    assert [type(e) for e in got] == [InputError, InputError]


def test_the_batchs_own_arguments_still_raise(toy, images):
    with pytest.raises(InputError, match=r"^responses must have one entry per image \(2\), got 1$"):
        toy.explain_batch(images[:2], responses=["a red circle"], errors="return")
    with pytest.raises(InputError, match=r"^errors must be one of 'raise', 'return', got 'skip'$"):
        toy.explain_batch(images[:2], errors="skip")


def test_an_example_refused_inside_the_batched_probe_is_returned_in_its_place():
    """The one refusal only the batched probe meets (every example's load, response and targets pass first):
    target_score="contrastive" needs a response slot that is not a target on a model without prompt logits
    (DiffusionGemma), and example 1 targets every word. batch_slack=math.inf puts the three in one batch (by
    default example 1, of more words, gets one of its own and fails alone). The batch is refused, then each
    example is explained alone: example 1's error in its place, the others each exactly what explain() gives
    (a batched forward rounds them otherwise, ~1e-6)."""
    import math

    from PIL import Image

    from dcam.testing.standins import STANDINS

    model, processor = STANDINS["diffusion-gemma"](seed=0)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 72, 3), dtype=np.uint8)) for _ in range(3)]
    responses = ["a red circle and a blue square"] * 3
    targets = [[0], "all", [5, 6]]
    exp = dcam.Explainer(model, processor, batch_slack=math.inf)
    got = exp.explain_batch(images, responses=responses, targets_per_image=targets, target_score="contrastive",
                            errors="return")
    with pytest.raises(InputError) as alone:
        exp.explain(images[1], response=responses[1], target_score="contrastive")
    assert isinstance(got[1], InputError)
    assert str(got[1]) == f"example 1 of the batch (images[1]): {alone.value}"
    assert str(alone.value).startswith("target_score='contrastive' needs a response slot that is not a target on "
                                       "diffusion-gemma")
    for i, words in ((0, ["a"]), (2, ["blue", "square"])):
        want = exp.explain(images[i], response=responses[i], targets=targets[i], target_score="contrastive")
        assert got[i].tokens == want.tokens == words
        assert torch.equal(got[i].maps, want.maps), i
        assert all(torch.equal(got[i].stats[k], want.stats[k]) for k in want.stats), i
