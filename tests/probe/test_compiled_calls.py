"""Blocks whose ``forward`` calls a ``torch.compile``'d function (:mod:`dcam.probe.compiled`).
Such a model was not seen as compiled, so its compiled backward ran in the probe: once that
backward had been compiled by an earlier backward that kept nothing (a training step's), it
donated its buffers and dcam's batched backward and per-word fallback both ended in torch's
"This backward function was compiled with non-empty donated buffers". A function the block
names is now found before the probe; one further down fails the probe, which runs once more
with the compiled code eager."""
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch._dynamo import eval_frame
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from dcam.explain import Explainer
from dcam.probe import compiled
from dcam.probe.compiled import has_compiled_parts
from dcam.testing.llava_dmllm import tiny_llada_v

IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 72, 3), dtype=np.uint8))
RESPONSE = "a red circle"


# each compiled function its own code (dynamo's compiled graphs hang on the code object); dynamic, so the
# warm-up's shape and the probe's share one graph, and the warm-up's backward compiles the one the probe meets
def _mix(h):
    return h + torch.softmax(h, -1) * h  # (the softmax is saved for the backward: a buffer to donate)


def _mix_deep(h):
    return h + torch.softmax(h, -1) * h


mix = torch.compile(_mix, dynamic=True)
mix_deep = torch.compile(_mix_deep, dynamic=True)


def _through_helper(h):
    return mix_deep(h)  # two calls below the block's forward: not seen before the probe


class PlainBlock(LlamaDecoderLayer):
    def forward(self, hidden_states, *args, **kwargs):
        return _mix(super().forward(hidden_states, *args, **kwargs))


class CompiledCallBlock(LlamaDecoderLayer):
    def forward(self, hidden_states, *args, **kwargs):
        return mix(super().forward(hidden_states, *args, **kwargs))


class DeepCompiledCallBlock(LlamaDecoderLayer):
    def forward(self, hidden_states, *args, **kwargs):
        return _through_helper(super().forward(hidden_states, *args, **kwargs))


class AttributeCallBlock(LlamaDecoderLayer):
    def forward(self, hidden_states, *args, **kwargs):
        return self.fused(super().forward(hidden_states, *args, **kwargs))


def _model(block_class=None):
    """A tiny LLaDA-V whose middle blocks (above the hooked block 0, below the plain last one) are
    ``block_class``."""
    model, proc = tiny_llada_v(seed=0, layers=4)
    if block_class is not None:
        for layer in model.model.layers[1:3]:
            layer.__class__ = block_class
    return model, proc


def _warm(fn, model):
    """An earlier backward that kept nothing (a training step's): the compiled backward donates its buffers."""
    fn(torch.randn(1, 5, model.config.hidden_size, requires_grad=True)).sum().backward()


def _stance():
    return eval_frame._stance.stance


def _explain_recording_stances(model, proc):
    stances = []
    hook = model.model.layers[2].register_forward_hook(lambda m, i, o: stances.append(_stance()))
    try:
        got = Explainer(model, proc, layer=0).explain(IMAGE, response=RESPONSE)
    finally:
        hook.remove()
    return got, stances


@pytest.fixture(scope="module")
def uncompiled_twin():
    """The maps of the same model with the plain function: no compiled code anywhere."""
    model, proc = _model(PlainBlock)
    return Explainer(model, proc, layer=0).explain(IMAGE, response=RESPONSE)


def _assert_same_maps(got, want):
    torch.testing.assert_close(got.raw_maps, want.raw_maps, atol=0, rtol=0)
    torch.testing.assert_close(got.maps, want.maps, atol=0, rtol=0)


def test_compiled_functions_a_forward_names_are_found_without_running_anything():
    plain, _ = _model()
    assert not has_compiled_parts(plain)  # (transformers' wrapped forwards followed, nothing compiled there)
    assert not has_compiled_parts(_model(PlainBlock)[0])
    assert has_compiled_parts(_model(CompiledCallBlock)[0])  # a global of the forward's code
    by_attribute, _ = _model(AttributeCallBlock)
    by_attribute.model.layers[1].fused = _mix
    assert not has_compiled_parts(by_attribute)
    by_attribute.model.layers[1].fused = torch.compile(_mix)  # an attribute of the module
    assert has_compiled_parts(by_attribute)
    assert not has_compiled_parts(_model(DeepCompiledCallBlock)[0])  # further down: left to the probe


def test_a_block_calling_a_compiled_function_is_explained_as_the_same_model_uncompiled(uncompiled_twin):
    model, proc = _model(CompiledCallBlock)
    _warm(mix, model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the batched backward ran first time: no fallback, no retry
        got, stances = _explain_recording_stances(model, proc)
    assert stances and set(stances) == {"force_eager"} and _stance() == "default"
    _assert_same_maps(got, uncompiled_twin)


def test_a_compiled_function_two_calls_down_fails_the_probe_once_then_runs_eagerly(uncompiled_twin):
    model, proc = _model(DeepCompiledCallBlock)
    _warm(_through_helper, model)
    assert not has_compiled_parts(model)
    with pytest.warns(RuntimeWarning, match="donated buffers"):  # the first try's batched backward
        got, stances = _explain_recording_stances(model, proc)
    # the first try's forward compiled, the second's eager; the model now remembered as compiled
    assert stances[-1] == "force_eager" and "default" in stances and _stance() == "default"
    _assert_same_maps(got, uncompiled_twin)
    assert has_compiled_parts(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        again, stances = _explain_recording_stances(model, proc)  # eager at once: no failed try first
    assert stances and set(stances) == {"force_eager"}
    _assert_same_maps(again, uncompiled_twin)


def test_an_ordinary_model_never_takes_the_stance():
    model, proc = _model(PlainBlock)
    holders = []
    hook = model.model.layers[2].register_forward_hook(
        lambda m, i, o: holders.append((_stance(), compiled._holders)))
    try:
        Explainer(model, proc, layer=0).explain(IMAGE, response=RESPONSE)
    finally:
        hook.remove()
    assert holders and set(holders) == {("default", 0)}
    assert _stance() == "default" and compiled._holders == 0


def test_another_error_of_the_models_forward_propagates_unchanged_and_is_not_retried():
    model, proc = _model(PlainBlock)
    explainer = Explainer(model, proc, layer=0)
    raised, probe_forwards = [], []

    def fail(m, i, o):
        if torch.is_grad_enabled() and threading.current_thread() is threading.main_thread():  # the probe's forward
            probe_forwards.append(1)
            raised.append(RuntimeError("the model's own failure"))
            raise raised[-1]

    hook = model.model.layers[2].register_forward_hook(fail)
    try:
        for call in range(2):  # (the first call's failure also runs the adapter's one vocabulary diagnosis)
            probe_forwards.clear()
            with pytest.raises(RuntimeError) as caught:
                explainer.explain(IMAGE, response=RESPONSE)
            assert caught.value is raised[0] and str(caught.value) == "the model's own failure"
            raised.clear()
    finally:
        hook.remove()
    assert len(probe_forwards) == 1  # the second call: one forward, no second try
    assert not has_compiled_parts(model)


def test_a_trajectory_meeting_compiled_code_first_retries_it_eagerly():
    # the trajectory's own probe (dcam.trajectory.probing.trajectory_gradients) is retried as probe_batch
    # is: a model whose compiled code two calls down it met first ended in torch's error
    from dcam.testing import tiny_toy
    from dcam.trajectory import explain_trajectory

    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8))

    def toy(block_class):  # (seed 0: a response of words on this image, as tests/trajectory's fixture)
        model, proc = tiny_toy(seed=0)
        model.language_model.layers[1].__class__ = block_class
        return model, proc

    twin = explain_trajectory(Explainer(*toy(PlainBlock), layer=0), image, steps=4)
    model, proc = toy(DeepCompiledCallBlock)
    _through_helper(torch.randn(1, 5, 32, requires_grad=True)).sum().backward()  # (the warm-up: hidden 32)
    assert not has_compiled_parts(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (the first try's batched backward)
        got = explain_trajectory(Explainer(model, proc, layer=0), image, steps=4)
    assert has_compiled_parts(model) and _stance() == "default"
    assert list(got.response_ids) == list(twin.response_ids)
    torch.testing.assert_close(got.maps, twin.maps, atol=0, rtol=0)
