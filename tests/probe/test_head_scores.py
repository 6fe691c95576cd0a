"""Word scores differentiated through the LM head's input (dcam.probe.gradients.head_scores).

A word's score reads one logit, but through the logits autograd hands the head a
dense rows x vocabulary gradient per cotangent: memory grew with the response.
Through the head's input the gradients must be those of the published procedure
(one forward and backward per word, scored off the logits: an independent path),
for the logit and the contrastive score, and a head that is more than a linear
map (soft-capped logits) must keep the logits' own gradient."""
import numpy as np
import pytest
import torch
from PIL import Image

import dcam.probe.gradients as G
from dcam.probe import auto_adapter
from dcam.probe.gradients import probe, published_gradients
from dcam.testing.standins import STANDINS

RESPONSE = "a red circle and a blue square"


def _image():
    return Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8))


def _setup(name):
    model, proc = STANDINS[name](seed=0)
    a = auto_adapter(model, proc)
    prep = a.prepare(_image(), None, a.encode_response(RESPONSE))
    s = prep.response_start
    pos = [s + 3, s + 1, s + 2]
    return a, prep, pos, [prep.response_ids[k - s] for k in pos]


@pytest.mark.parametrize("name", ["llada-v", "lavida-dream", "mmada"])
@pytest.mark.parametrize("score", ["logit", "contrastive"])
def test_gradients_through_the_head_input_are_the_published_ones(name, score, monkeypatch):
    a, prep, pos, ids = _setup(name)
    used = []
    real = G.head_scores

    def spy(*args):
        out = real(*args)
        used.append(out is not args[-1])  # the surrogate replaced the logits' scores
        return out
    monkeypatch.setattr(G, "head_scores", spy)
    mode = "masked" if "masked" in a.probes else "full"
    r = probe(a, prep, pos, ids, 1, probe=mode, target_score=score, chunk_size=2)
    assert used and all(used)
    ref = published_gradients(a, prep, pos, ids, 1, probe=mode, target_score=score)
    assert ref.abs().max() > 0
    # float32 rounding of two summation orders (the old path through the logits was 7.5e-6 off the
    # published gradients of the contrastive score, whose largest value is 1.7)
    torch.testing.assert_close(r.per_target_grads(), ref, atol=1e-5 * float(ref.abs().max()), rtol=0)


@pytest.mark.parametrize("name,dtype", [("llada-v", torch.float32), ("qwen2.5-vl", torch.bfloat16)])
def test_a_head_that_soft_caps_keeps_the_logits_gradient(monkeypatch, name, dtype):
    # in bfloat16 a soft-cap inside the head's call passed the value check: gradients 3-11% off
    a, prep, pos, ids = _setup(name)
    a.model.to(dtype)
    head = a.output_head()
    cap = 0.05 if dtype == torch.float32 else 30.0  # tanh soft-capping, as Gemma 2 does (30)
    if dtype == torch.bfloat16:
        with torch.no_grad():
            head.weight.mul_(30)  # logits of a few units: within the old check's bf16 tolerance of the cap
    hook = head.register_forward_hook(lambda m, i, o: cap * torch.tanh(o / cap))
    used = []
    real = G.head_scores
    monkeypatch.setattr(G, "head_scores", lambda *args: used.append(real(*args) is not args[-1]) or real(*args))
    try:
        mode = "masked" if "masked" in a.probes else "full"
        r = probe(a, prep, pos, ids, 1, probe=mode, chunk_size=2)
        ref = published_gradients(a, prep, pos, ids, 1, probe=mode)
    finally:
        hook.remove()
    assert used == [False]  # a head with a hook of anyone's: not used
    torch.testing.assert_close(r.per_target_grads().float(), ref.float(), atol=1e-6, rtol=1e-4)


def test_trajectory_maps_through_the_head_input_equal_those_through_the_logits(monkeypatch):
    # the trajectories' batched backward over (state, item) pairs takes the same route
    import dcam.trajectory.probing as P
    from dcam.explain import Explainer
    from dcam.trajectory import explain_trajectory

    model, proc = STANDINS["lavida-dream"](seed=0)
    exp = Explainer(model, proc)
    used = []
    real = P.head_logit_scores
    monkeypatch.setattr(P, "head_logit_scores", lambda a, ids, tok: used.append(real(a, ids, tok) is not tok)
                        or real(a, ids, tok))
    new = explain_trajectory(exp, _image(), steps=3, response_length=6)
    assert used and all(used)
    monkeypatch.setattr(P, "head_logit_scores", lambda a, ids, tok: tok)
    old = explain_trajectory(exp, _image(), steps=3, response_length=6)
    assert new.response_ids == old.response_ids
    torch.testing.assert_close(new.maps, old.maps, atol=1e-5, rtol=0)
