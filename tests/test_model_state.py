"""What an explanation leaves on the user's model and process: each module's own
train/eval flag, the global RNG, other threads' forwards, and the response it
generates (from the model as it is probed, eval mode)."""
import threading
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import dcam
from dcam.probe.hooks import HeadAtRows, Tap


@pytest.fixture(scope="module")
def toy():
    from dcam.testing import tiny_toy

    return tiny_toy(seed=0)


def _image():
    return (np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8")


def test_each_module_keeps_its_own_train_flag(toy):
    # the probe restored model.train(flag), which gave every submodule the top module's: a model fine-tuned with
    # a frozen (eval) vision tower came back with the tower in train mode
    model, proc = toy
    model.train()
    model.vision_tower.eval()
    want = {name: m.training for name, m in model.named_modules()}
    try:
        dcam.Explainer(model, proc).explain(_image())
        assert {name: m.training for name, m in model.named_modules()} == want
        assert model.training and not model.vision_tower.training
    finally:
        model.eval()


def test_a_response_is_generated_as_the_model_is_probed(toy):
    # generation ran in the caller's train mode: with dropout, each call wrote a new (garbled) response, drew from
    # the global RNG, and the response was then explained with dropout off
    model, proc = toy
    exp = dcam.Explainer(model, proc)
    layers = model.language_model.layers
    before = [layer.self_attn.attention_dropout for layer in layers]
    for layer in layers:
        layer.self_attn.attention_dropout = 0.5
    try:
        want = exp.explain(_image()).response  # eval mode
        model.train()
        for _ in range(2):
            rng = torch.random.get_rng_state().clone()
            assert exp.explain(_image()).response == want
            assert torch.equal(torch.random.get_rng_state(), rng)
    finally:
        model.eval()
        for layer, p in zip(layers, before):
            layer.self_attn.attention_dropout = p


def test_hooks_leave_other_threads_forwards_alone():
    # a thread serving the model during an explanation had its block outputs made grad leaves and grad mode
    # switched on for good, and each of its forwards counted as one more run of the hooked block
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 6))
    tap = Tap(net[0], net[1], make_leaf=True)
    head = HeadAtRows(net[2], torch.tensor([0]), length=3)
    seen = {}

    def serve():
        with torch.no_grad():
            out = net(torch.randn(1, 3, 4))
        seen.update(requires_grad=out.requires_grad, grad_enabled=torch.is_grad_enabled(), shape=tuple(out.shape))
    try:
        t = threading.Thread(target=serve)
        t.start()
        t.join()
        assert seen == {"requires_grad": False, "grad_enabled": True, "shape": (1, 3, 6)}
        assert tap.block_outputs == [] and tap.norm_outputs == [] and head.calls == 0
        out = net(torch.randn(1, 3, 4))  # this thread's forward is the probe's
        assert len(tap.block_outputs) == 1 and head.calls == 1 and tuple(out.shape) == (1, 1, 6)
    finally:
        tap.remove()
        head.remove()


def test_diffusion_gemma_never_writes_the_tokens_it_refuses_and_leaves_the_rng():
    # its sampler drew the <boi>/<eoi>/image tokens dcam places itself (7 seeds of 150: "response: holds
    # '<end_of_image>' ... give the text without it", for a response the user never gave) and advanced the global RNG
    from dcam.probe.adapters.base import config_get
    from dcam.testing.standins import STANDINS

    model, proc = STANDINS["diffusion-gemma"](seed=0)
    exp = dcam.Explainer(model, proc)
    a = exp.adapter
    c = model.config
    placed = {int(v) for v in (config_get(c, "bos_token_id"), c.boi_token_id, c.eoi_token_id, a.image_token_id)
              if v is not None}
    prep = a.prepare(_image(), None, None)
    for seed in range(30):
        torch.manual_seed(seed)
        with torch.random.fork_rng():
            ids = a.generate(prep, 4, 8).response_ids
        assert not placed & set(ids), (seed, ids)
    torch.manual_seed(3)
    rng = torch.random.get_rng_state().clone()
    try:
        first = exp.explain(_image(), response_length=8, steps=4).response
        assert exp.explain(_image(), response_length=8, steps=4).response == first  # the same state, the same draw
    except dcam.InputError as exc:  # a random stand-in may write only ends: nothing to explain, and that is said
        assert "no word to explain" in str(exc)
    assert torch.equal(torch.random.get_rng_state(), rng)


@pytest.fixture(scope="module")
def llava():
    from dcam.testing.standins import STANDINS

    return STANDINS["llava"](seed=0)


def _inf_scores(module, args, out):  # the last block overflows (as float16 may): the probe raises after its forward
    x = out[0] if isinstance(out, tuple) else out
    return (x * float("inf"),) + tuple(out[1:]) if isinstance(out, tuple) else x * float("inf")


def test_no_graph_of_the_probe_is_held_after_explain_returns_or_raises(llava):
    model, proc = llava
    exp = dcam.Explainer(model, proc)
    exp.explain(_image(), response="a red circle")
    # the head's input at the scored rows (and through its graph the hooked block's output) was held
    # by the adapter until the next call: in a server, one graph per Explainer
    assert exp.adapter.scored_rows is None
    handle = model.model.language_model.layers[-1].register_forward_hook(_inf_scores)
    try:
        with pytest.raises(dcam.InputError, match="NaN/Inf"):
            exp.explain(_image(), response="a red circle")
    finally:
        handle.remove()
    assert exp.adapter.scored_rows is None


def test_a_forward_wrapper_the_user_adds_to_the_last_block_stays(llava):
    model, proc = llava
    exp = dcam.Explainer(model, proc)
    first = exp.explain(_image(), response="a red circle")
    assert exp.adapter._rows_only_ok is True  # the last block ran at the scored rows
    block, calls = model.model.language_model.layers[-1], []
    plain = block.forward

    def wrapped(*args, **kwargs):  # as accelerate's add_hook_to_module or a profiler wraps it
        calls.append(1)
        return plain(*args, **kwargs)
    block.forward = wrapped
    try:
        again = exp.explain(_image(), response="a red circle")
        assert vars(block).get("forward") is wrapped  # it was deleted
        assert calls  # the wrapped block ran whole, through the user's wrapper
        torch.testing.assert_close(again.maps, first.maps, atol=1e-5, rtol=0)
    finally:
        del block.forward


@pytest.mark.parametrize("where", ["block", "mlp"])
def test_an_error_of_the_model_during_the_last_block_check_reaches_the_caller(llava, where):
    # on the block: raised after the rows path returned; on its MLP: raised inside it (a reviewer's case,
    # taken for "the optimisation does not fit": warned, and the slower path kept for good)
    model, proc = llava
    block, calls = model.model.language_model.layers[-1], [0]
    hooked = block if where == "block" else block.mlp

    def fails_once(module, args, out):  # the model's own error (out of memory, a hook's) at the check's forward
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("out of memory (simulated)")
    exp = dcam.Explainer(model, proc)
    handle = hooked.register_forward_hook(fails_once)
    try:
        with pytest.raises(RuntimeError, match="out of memory \\(simulated\\)"):  # it was a warning, and ...
            exp.explain(_image(), response="a red circle")
    finally:
        handle.remove()
    assert getattr(exp.adapter, "_rows_only_ok", None) is None  # ... the slower path was kept for good: checked again next call
    exp.explain(_image(), response="a red circle")
    assert exp.adapter._rows_only_ok is True


def test_a_model_made_under_inference_mode_is_refused_and_left_as_found():
    # its weights are inference tensors: the probe froze them all, failed to set requires_grad back on the first
    # (a raw RuntimeError) and left every parameter frozen
    from dcam.testing import tiny_toy

    with torch.inference_mode():
        model, proc = tiny_toy(seed=0)
    with pytest.raises(dcam.InputError, match=r"^model: its weights are inference tensors") as err:
        dcam.Explainer(model, proc)
    assert "\n" not in str(err.value)
    assert all(p.requires_grad for p in model.parameters())  # as built


def test_weights_made_inference_tensors_after_the_explainer_are_refused_before_a_flag_changes():
    from dcam.testing import tiny_toy

    model, proc = tiny_toy(seed=0)
    exp = dcam.Explainer(model, proc)
    model.train()
    model.vision_tower.eval()
    model.vision_tower.requires_grad_(False)
    layer = model.language_model.layers[0].mlp.up_proj
    with torch.inference_mode():  # (as a service reloading weights under inference mode would)
        layer.weight = nn.Parameter(layer.weight.detach().clone())
    assert layer.weight.is_inference()
    flags = [(n, p.requires_grad) for n, p in model.named_parameters()]
    modes = [(n, m.training) for n, m in model.named_modules()]
    for response in (None, "a red square"):  # generated first, or probed at once
        with pytest.raises(dcam.InputError, match=r"^model: its weights are inference tensors"):
            exp.explain(_image(), response=response)
        assert [(n, p.requires_grad) for n, p in model.named_parameters()] == flags
        assert [(n, m.training) for n, m in model.named_modules()] == modes


class _Stubborn(nn.Parameter):
    """A parameter whose requires_grad cannot be set back to True (as an inference tensor's)."""

    def requires_grad_(self, requires_grad=True):
        if requires_grad:
            raise RuntimeError("stubborn parameter")
        return super().requires_grad_(False)


def test_frozen_restores_every_flag_it_can_when_one_fails():
    # the restore loop stopped at its first failure: every later parameter was left frozen
    from dcam.probe.hooks import frozen

    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    net[0].weight = _Stubborn(net[0].weight.detach().clone())
    net[1].bias.requires_grad_(False)
    with pytest.raises(RuntimeError, match="stubborn parameter"):
        with frozen(net):
            assert not any(p.requires_grad for p in net.parameters())
    # weight 0 could not be restored; the others are as they were: True, True, False
    assert [p.requires_grad for p in net.parameters()] == [False, True, True, False]


def test_a_meta_model_is_refused_when_the_explainer_is_made():
    # accepted, then a raw RuntimeError deep inside the vision tower at explain() (the CLI refused --device meta)
    from dcam.testing import tiny_toy

    model, proc = tiny_toy(seed=0)
    model = model.to("meta")
    with pytest.raises(dcam.InputError, match=r"^model: its weights are on the 'meta' device"):
        dcam.Explainer(model, proc)


def _with_dropout(model, p):
    """Every attention dropout of ``model`` set to ``p``; returns the previous values."""
    mods = [m for m in model.modules() if isinstance(getattr(m, "attention_dropout", None), float)]
    before = [m.attention_dropout for m in mods]
    for m in mods:
        m.attention_dropout = p
    return list(zip(mods, before))


def test_the_last_block_check_runs_in_eval_mode_for_a_model_in_train_mode():
    # the one-time check of the last block at the scored rows ran before the probe put the model in eval mode:
    # with dropout it drew from the global RNG, warned "does not reproduce the full block's logits" and kept the
    # slower path for good (the same model in eval mode passes it)
    from dcam.testing.standins import STANDINS

    model, proc = STANDINS["llava"](seed=0)
    saved = _with_dropout(model, 0.3)
    assert saved  # the stand-in has attention dropout to turn on
    try:
        ref = dcam.Explainer(model, proc)
        want = ref.explain(_image(), response="a red circle")  # eval mode
        assert ref.adapter._rows_only_ok is True
        model.train()
        exp = dcam.Explainer(model, proc)
        torch.manual_seed(0)
        rng = torch.random.get_rng_state().clone()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            got = exp.explain(_image(), response="a red circle")
        assert torch.equal(torch.random.get_rng_state(), rng)
        assert exp.adapter._rows_only_ok is True
        torch.testing.assert_close(got.maps, want.maps, rtol=0, atol=0)
        assert all(m.training for m in model.modules())
    finally:
        model.eval()
        for m, p in saved:
            m.attention_dropout = p
