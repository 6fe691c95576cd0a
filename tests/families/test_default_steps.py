"""Without ``steps``, a generation takes half of the slots it generates, the length of this call included.

MMaDA's ``inference_mmu.py`` runs ``mmu_generate(steps=L // 2, block_length=L // 4)`` for ``L`` new
tokens. dcam fixed the default once, from the Explainer's ``response_length`` (64): a per-call
``explain(..., response_length=8)`` ran 32 steps (8x the forwards of MMaDA's and Dream-VL's samplers,
and one token per step instead of two). The expected counts are worked by hand below: 8 slots, 4 steps;
MMaDA and Lumina-DiMOO decode them in 4 blocks of 2 (one forward each), Dream-VL runs one forward per step.
"""
import numpy as np
import pytest
from PIL import Image

from dcam.explain import Explainer

IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 72, 3), dtype=np.uint8))
FAMILIES = ["mmada", "lumina-dimoo", "dream-vl"]


def _generation_forwards(exp, monkeypatch):
    """A list that receives, per generation, how many forwards the model's first block ran in it."""
    adapter, counts = exp.adapter, []
    generate = adapter.generate

    def counted(*args, **kwargs):
        seen = []
        hook = adapter.blocks()[0].register_forward_hook(lambda m, a, o: seen.append(1))
        try:
            return generate(*args, **kwargs)
        finally:
            hook.remove()
            counts.append(len(seen))

    monkeypatch.setattr(adapter, "generate", counted)
    return counts


@pytest.mark.parametrize("name", FAMILIES)
def test_a_per_call_length_takes_half_its_slots_in_steps(name, models, monkeypatch):
    model, proc = models(name)
    exp = Explainer(model, proc)  # response_length 64: the old default was 32 steps for any length
    assert exp.adapter.response_length == 64
    counts = _generation_forwards(exp, monkeypatch)
    e = exp.explain(IMAGE, response_length=8, targets="tokens", probe="full")
    assert len(e.response_ids) == 8
    assert counts == [4]  # 8 // 2 steps
    assert e.steps <= 4
    if name != "dream-vl":  # (Dream's schedule may commit nothing at a step, which is not counted)
        assert e.steps == 4
    # the Explainer's own length: half of it too
    exp8 = Explainer(model, proc, response_length=8)
    counts8 = _generation_forwards(exp8, monkeypatch)
    exp8.explain(IMAGE, targets="tokens", probe="full")
    assert counts8 == [4]


@pytest.mark.parametrize("name", FAMILIES)
def test_steps_given_to_the_adapter_are_kept_for_any_length(name, models, monkeypatch):
    model, proc = models(name)
    exp = Explainer(model, proc, steps=8)
    counts = _generation_forwards(exp, monkeypatch)
    exp.explain(IMAGE, response_length=8, targets="tokens", probe="full")
    assert counts == [8]  # 8 steps: MMaDA / DiMOO 2 per block of 2, Dream-VL one forward each


def test_mmada_hands_mmu_generate_the_released_settings(models, monkeypatch):
    """``inference_mmu.py``: ``steps = L // 2``, ``block_length = L // 4`` (L = 8: 4 and 2)."""
    model, proc = models("mmada")
    calls = []
    mmu_generate = model.mmu_generate

    def recorded(idx, **kwargs):
        calls.append({k: kwargs[k] for k in ("max_new_tokens", "steps", "block_length")})
        return mmu_generate(idx, **kwargs)

    monkeypatch.setattr(model, "mmu_generate", recorded)
    Explainer(model, proc).explain(IMAGE, response_length=8, targets="tokens", probe="full")
    Explainer(model, proc).explain(IMAGE, response_length=16, targets="tokens", probe="full")
    assert calls == [dict(max_new_tokens=8, steps=4, block_length=2), dict(max_new_tokens=16, steps=8, block_length=4)]
