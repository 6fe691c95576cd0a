"""How often a failing forward is run again to diagnose it (dcam.probe.adapters.checks.diagnosed): at most
once per adapter, and never after an out-of-memory error. The model's forwards are counted by a pre-hook on
its first block, which the model runs once per forward."""
import pytest
import torch


@pytest.fixture()
def failing_toy():
    """(a fresh Explainer of the tiny toy, its image, the hook's state): while ``state["error"]`` is set, every
    forward raises it; ``state["n"]`` counts the forwards."""
    import dcam
    from dcam.testing import tiny_toy
    from dcam.zoo.data import generate_sample

    model, proc = tiny_toy()
    state = {"n": 0, "error": None}

    def pre(module, args, kwargs):
        state["n"] += 1
        if state["error"] is not None:
            raise state["error"]
    exp = dcam.Explainer(model, proc)
    handle = exp.adapter.blocks()[0].register_forward_pre_hook(pre, with_kwargs=True)
    yield exp, generate_sample((0, 2, 1), image_size=32, n_objects=2).image, state
    handle.remove()


def _forwards_of_failing_calls(exp, image, state, error, calls=3):
    """The forwards each of ``calls`` explain calls ran while every forward raises ``error``."""
    state["error"] = error
    counts = []
    for _ in range(calls):
        state["n"] = 0
        with pytest.raises(type(error), match="^boom$"):
            exp.explain(image, response="a blue triangle and a green circle")
        counts.append(state["n"])
    state["error"] = None
    return counts


def test_a_failing_forward_is_diagnosed_once_per_adapter(failing_toy):
    exp, image, state = failing_toy
    # the first failure: its forward and one diagnosis forward; later ones: their forward only (was 2, 2, 2)
    assert _forwards_of_failing_calls(exp, image, state, RuntimeError("boom")) == [1 + 1, 1, 1]
    assert len(exp.explain(image, response="a blue triangle and a green circle")) == 7  # the adapter still works


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("boom"), MemoryError("boom")])
def test_an_out_of_memory_forward_is_not_run_again(failing_toy, error):
    exp, image, state = failing_toy
    assert _forwards_of_failing_calls(exp, image, state, error) == [1, 1, 1]  # (was 2, 2, 2)
    # no diagnosis was spent on it: a later error of another kind is still diagnosed, once
    assert _forwards_of_failing_calls(exp, image, state, RuntimeError("boom"), calls=2) == [2, 1]
