"""The adapters' options given through ``Explainer(model, processor, **options)`` are checked
like the per-call ones: ``steps=0`` silently became the default, ``steps=-3`` ran one step
(LaViDa) or raised torch's RuntimeError (Dream-VL), ``steps=2.5`` was truncated,
``response_length=0`` ended in a ZeroDivisionError while generating, and ``block_length=`` on
Dream-VL was a TypeError from a parent's ``__init__``. And ``explain(..., response=...,
response_length=N)`` ignored N, which the CLI refuses."""
import numpy as np
import pytest
from PIL import Image

from dcam.errors import InputError
from dcam.explain import Explainer

IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 72, 3), dtype=np.uint8))


def _refusal(models, family, **options):
    with pytest.raises(InputError) as info:
        Explainer(*models(family), **options)
    return str(info.value)


@pytest.mark.parametrize("family", ["lavida", "mmada", "dream-vl"])
@pytest.mark.parametrize("name, value", [("steps", 0), ("steps", -3), ("steps", 2.5), ("steps", "x"),
                                         ("response_length", 0), ("response_length", -1)])
def test_bad_diffusion_options_are_refused_naming_them(models, family, name, value):
    assert _refusal(models, family, **{name: value}) == f"{name} must be an int >= 1, got {value!r}"


@pytest.mark.parametrize("family", ["llava", "diffusion-gemma"])
def test_bad_response_length_is_refused_on_the_other_families(models, family):
    assert _refusal(models, family, response_length=0) == "response_length must be an int >= 1, got 0"


def test_block_length_on_dream_vl_is_named_as_an_option_it_lacks(models):
    assert _refusal(models, "dream-vl", block_length=4).startswith(
        "block_length: not an option of the explainer or of the dream-vl model's adapter (the adapter's: alg, ")
    assert _refusal(models, "lavida", block_length=0) == "block_length must be an int >= 1, got 0"


def test_good_options_still_reach_the_adapter(models):
    a = Explainer(*models("lavida"), steps=3, response_length=6, block_length=2).adapter
    assert (a.given_steps, a.response_length, a.block_length) == (3, 6, 2)


def test_a_response_length_beside_given_responses_is_refused(models):
    exp = Explainer(*models("lavida"))
    message = r"^response_length: sets a generated response's length; every response is given$"
    with pytest.raises(InputError, match=message):
        exp.explain(IMAGE, response="a red circle", response_length=2)
    with pytest.raises(InputError, match=message):  # explain is a batch of one: the batch says the same
        exp.explain_batch([IMAGE, IMAGE], responses=["a red circle", "a blue square"], response_length=2)
    # a batch that generates one of its responses takes the length for that one
    got = exp.explain_batch([IMAGE, IMAGE], responses=["a red circle", None], response_length=3, steps=3)
    assert len(got[1].response_ids) <= 3 and got[0].response == "a red circle"


def test_response_length_none_is_the_adapters_default(models):
    for family, default in (("lavida", 64), ("dream-vl", 64), ("llava", 16)):
        assert Explainer(*models(family), response_length=None).adapter.response_length == default


def test_a_registered_adapter_that_keeps_its_own_options_in_kwargs_gets_them(registry):
    from dcam.probe.adapters import register_adapter
    from dcam.probe.adapters.shapes import ShapesAdapter
    from dcam.testing import tiny_toy

    class KeepsOptions(ShapesAdapter):  # a user's adapter: its own option arrives through **options
        def __init__(self, model, processor=None, **options):
            self.answer_len = options.pop("answer_len", None)
            super().__init__(model, processor, **options)

    model, proc = tiny_toy(seed=1)
    register_adapter(lambda m: m is model, KeepsOptions, name="keeps-options")
    assert Explainer(model, proc, answer_len=4).adapter.answer_len == 4
