"""The public operator API (dcam.pool_gradients, dcam.refine,
dcam.diffusion_cam): argument errors (dcam.InputError naming the argument),
NaN/Inf checks on every backend, CamConfig, backend choice and dispatch, and
the registered ops (opcheck, torch.compile).

Agreement of the backends with the reference is in test_scenarios.py and
test_fuzz.py; hand-worked values in test_contract.py and test_reference.py."""
import dataclasses
import re
import warnings

import numpy as np
import pytest
import torch

import dcam
from dcam.errors import InputError, NonFiniteError
from dcam.ops import api, cpp, library

AVAILABLE = dcam.available_backends()
NON_REFERENCE = [b for b in AVAILABLE if b != "torch"]


def _inputs(B=2, T=3, h=5, w=4, D=8, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(B, h * w, D, generator=g).to(dtype)
    grads = torch.randn(B, T, h * w, D, generator=g).to(dtype)
    return acts.to(device), grads.to(device), (h, w)


def _backends_for(device):
    """Backends that run tensors of `device` here."""
    if device == "cpu":
        return [b for b in AVAILABLE if b != "triton" or not torch.cuda.is_available()] + ["auto"]
    return ["torch", "auto"] + (["triton"] if "triton" in AVAILABLE else [])


@pytest.fixture
def quiet():
    """Triton's interpreter evaluates masked-off lanes too (numpy warnings there mean nothing)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def raises_input_error(name, match=None):
    """pytest.raises(InputError) that also checks the message names the argument."""
    class _Ctx:
        def __enter__(self):
            self._cm = pytest.raises(InputError, match=match)
            self.info = self._cm.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self._cm.__exit__(*exc)
            if suppressed:
                assert name in str(self.info.value), f"the message does not name {name!r}: {self.info.value}"
            return suppressed
    return _Ctx()


# ------------------------------------------------------------------ errors name the argument

def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError) and dcam.InputError is InputError


@pytest.mark.parametrize("mutate,name,match", [
    (lambda a, g: (a.long(), g), "acts", "floating-point"),
    (lambda a, g: (a, g.int()), "grads", "floating-point"),
    (lambda a, g: (a[0, 0], g), "acts", "acts must have 2 or 3"),
    (lambda a, g: (a, g[0, 0]), "grads", "grads must have 3 or 4"),
    (lambda a, g: (a, g[0]), "grads", r"grads must be \[B,T,N,D\]"),
    (lambda a, g: (a[0], g), "grads", r"grads must be \[T,N,D\] when acts is \[N,D\]"),
    (lambda a, g: (a[:1], g), "acts", "batch size"),
    (lambda a, g: (a, g[:, :, :-1]), "acts", "image tokens"),
    (lambda a, g: (a, g[..., :-1]), "grads", "hidden size"),
    (lambda a, g: (a.half(), g), "grads", "share one dtype"),
    (lambda a, g: (a[:, :0], g[:, :, :0]), "acts", "empty"),
    (lambda a, g: (a.index_fill(2, torch.tensor([1]), float("nan")), g), "acts", "acts contains 40 NaN/Inf"),
    (lambda a, g: (a, g.index_fill(3, torch.tensor([0]), float("inf"))), "grads", "grads contains 120 NaN/Inf"),
    (lambda a, g: ("not a tensor", g), "acts", "acts must be a torch.Tensor"),
])
def test_pool_errors(mutate, name, match):
    a, g, grid = _inputs()
    a, g = mutate(a, g)
    with raises_input_error(name, match):
        dcam.pool_gradients(a, g, grid)


@pytest.mark.parametrize("mutate,name,match", [
    (lambda a, w: (a, w.int()), "weights", "floating-point"),
    (lambda a, w: (a, w[0, 0]), "weights", "weights must have 2 or 3"),
    (lambda a, w: (a, w[0]), "weights", "weights has batch size 1 but acts has 2"),  # [T,D]: a batch of one
    (lambda a, w: (a[0], w), "weights", "weights has batch size 2 but acts has 1"),
    (lambda a, w: (a, w[:1]), "weights", "weights has batch size 1 but acts has 2"),
    (lambda a, w: (a, w[..., :-1]), "weights", "weights has hidden size 7 but acts has 8"),
    (lambda a, w: (a, w[:, :0]), "weights", "empty"),
    (lambda a, w: (a, w.index_fill(2, torch.tensor([1]), float("nan"))), "weights", "weights contains 6 NaN/Inf"),
    (lambda a, w: (a.index_fill(2, torch.tensor([1]), float("inf")), w), "acts", "acts contains 40 NaN/Inf"),
    (lambda a, w: (a, [[1.0]]), "weights", "weights must be a torch.Tensor"),
])
def test_weighted_maps_errors(mutate, name, match):
    a, g, grid = _inputs()
    a, w = mutate(a, g.mean(dim=2))
    with raises_input_error(name, match):
        dcam.weighted_maps(a, w, grid)


@pytest.mark.parametrize("bad,match", [
    (lambda g: g.int(), "floating-point"), (lambda g: g[0, 0], "grads must have 3 or 4"),
    (lambda g: g[:, :0], "empty"), (lambda g: "grads", "grads must be a torch.Tensor"),
])
def test_channel_weights_errors(bad, match):
    _, g, _ = _inputs()
    with raises_input_error("grads", match):
        dcam.channel_weights(bad(g))
    with raises_input_error("grad_relu"):
        dcam.channel_weights(g, grad_relu="yes")


@pytest.mark.parametrize("grid,match", [
    ((4, 4), "grid 4x4 = 16 tokens does not match .* 20 tokens"),
    (20, "grid must be a pair"),
    ((5, 4.0), "grid must be a pair"),
    ((True, 20), "grid must be a pair"),
    ((0, 20), "grid must be positive"),
])
def test_grid_errors(grid, match):
    a, g, _ = _inputs(h=5, w=4)
    with raises_input_error("grid", match):
        dcam.pool_gradients(a, g, grid)
    with raises_input_error("grid", match):
        dcam.weighted_maps(a, g.mean(dim=2), grid)


def test_grad_relu_must_be_a_bool():
    a, g, grid = _inputs()
    with raises_input_error("grad_relu"):
        dcam.pool_gradients(a, g, grid, grad_relu=1)


@pytest.mark.parametrize("value", ["no", None, 0])
def test_check_finite_must_be_a_bool(value):
    a, g, grid = _inputs()
    calls = (lambda: dcam.pool_gradients(a, g, grid, check_finite=value),
             lambda: dcam.channel_weights(g, check_finite=value),
             lambda: dcam.weighted_maps(a, g.mean(dim=2), grid, check_finite=value),
             lambda: dcam.diffusion_cam(a, g, grid, check_finite=value),
             lambda: dcam.refine(torch.rand(1, 2, 4, 4), check_finite=value))
    for call in calls:
        with raises_input_error("check_finite", "check_finite must be a bool"):
            call()


def test_one_image_halves_batch_like_pool_gradients():
    # [T,N,D] gradients give [1,T,D] weights, which [N,D] activations take (a batch of one);
    # the maps are [1,T,h,w] as pool_gradients gives them, ready for refine
    a, g, grid = _inputs(B=1)
    w = dcam.channel_weights(g[0])
    assert w.shape == (1, 3, 8)
    torch.testing.assert_close(w, g.float().clamp(min=0).mean(dim=2), atol=1e-6, rtol=0)
    raw = dcam.weighted_maps(a[0], w, grid)
    whole = dcam.pool_gradients(a[0], g[0], grid)
    assert raw.maps.shape == whole.maps.shape == (1, 3, 5, 4)
    torch.testing.assert_close(raw.maps, whole.maps, atol=0, rtol=0)
    assert dcam.weighted_maps(a[0], w[0], grid).maps.shape == (1, 3, 5, 4)
    dcam.refine(raw, steps=64, image_size=512)


@pytest.mark.parametrize("backend", AVAILABLE + ["auto"])
def test_check_finite_false_skips_the_check(backend, monkeypatch, quiet):
    from dcam.ops import validation

    def not_called(name, x):
        raise AssertionError(f"check_finite=False still checked {name}")
    monkeypatch.setattr(validation, "check_finite", not_called)
    a, g, grid = _inputs()
    a[0, 0, 0] = float("nan")
    g[1, 2, 3, 4] = float("inf")
    out = dcam.pool_gradients(a, g, grid, backend=backend, check_finite=False)  # no error: nothing is looked at
    assert out.maps.shape == (2, 3, 5, 4)
    out = dcam.diffusion_cam(a, g, grid, backend=backend, check_finite=False)
    assert out.maps.shape == (2, 3, 5, 4)
    raw = torch.rand(1, 1, 3, 3) + 1.0  # outside [0, 1]: not looked at either
    dcam.refine(raw, backend=backend, check_finite=False)
    with pytest.raises(AssertionError, match="still checked"):  # the spy works: a checked call reaches it
        dcam.pool_gradients(a, g, grid, backend=backend)


def test_unknown_backend_and_cpp_on_wrong_device():
    a, g, grid = _inputs()
    with raises_input_error("backend", "backend must be one of"):
        dcam.pool_gradients(a, g, grid, backend="cuda")
    meta = (a.to("meta"), g.to("meta"))
    with raises_input_error("backend", "backend='cpp' cannot run meta tensors"):
        dcam.pool_gradients(*meta, grid, backend="cpp", check_finite=False)


def test_meta_tensors_give_shapes_through_the_ops_and_clear_errors_elsewhere():
    # a meta tensor has a shape and no values: the value checks and the named backends
    # raised torch's RuntimeError (item() on meta) or NotImplementedError (aten::_unique2)
    a, g, grid = _inputs()
    am, gm = a.to("meta"), g.to("meta")
    assert dcam.pool_gradients(am, gm, grid, check_finite=False).maps.shape == (2, 3, *grid)
    assert dcam.diffusion_cam(am, gm, grid, check_finite=False).maps.device.type == "meta"
    check = re.escape("is a meta tensor (a shape without values): nothing to check for NaN/Inf; "
                      "pass check_finite=False")
    with raises_input_error("acts", f"acts {check}"):
        dcam.pool_gradients(am, gm, grid)
    with raises_input_error("grads", f"grads {check}"):
        dcam.channel_weights(gm)
    with raises_input_error("raw_maps", f"raw_maps {check}"):
        dcam.refine(torch.rand(2, 3, *grid).to("meta"))
    with raises_input_error("backend", "backend='torch' cannot run meta tensors"):
        dcam.refine(torch.rand(2, 3, *grid).to("meta"), backend="torch", check_finite=False)
    with raises_input_error("steps", re.escape("steps is a meta tensor (a shape without values) but the maps "
                                               "are on cpu")):
        dcam.refine(torch.rand(2, 3, *grid), steps=torch.empty(2, device="meta"))



def test_fake_and_vmapped_tensors_ask_for_no_value_check(quiet):
    # a value check branches on the values: a fake tensor (FakeTensorMode, export's tracing) raised
    # torch's DataDependentOutputException, torch.vmap a RuntimeError about data-dependent control flow
    from torch._subclasses.fake_tensor import FakeTensorMode

    a, g, grid = _inputs()
    raw = torch.rand(2, 3, *grid)
    calls = {"acts": lambda a, g, r: dcam.pool_gradients(a, g, grid), "grads": lambda a, g, r: dcam.channel_weights(g),
             "raw_maps": lambda a, g, r: dcam.refine(r, steps=24, image_size=64)}
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (a, g, raw)]
        for name, call in calls.items():
            with raises_input_error(name, re.escape(f"{name} is a fake tensor (a shape without values): nothing "
                                                    "to check for NaN/Inf; pass check_finite=False")):
                call(*fake)
        assert dcam.pool_gradients(*fake[:2], grid, check_finite=False).maps.shape == (2, 3, *grid)
    for name, call in calls.items():
        with raises_input_error(name, re.escape(f"{name} is batched by torch.vmap")):
            torch.vmap(lambda a, g, r: call(a[None], g[None], r[None]))(a, g, raw)
    # without the check vmap runs, equal to one call per example
    per_example = torch.vmap(lambda a, g: dcam.pool_gradients(a[None], g[None], grid, check_finite=False).maps[0])
    torch.testing.assert_close(per_example(a, g), dcam.pool_gradients(a, g, grid).maps, atol=0, rtol=0)

@pytest.mark.parametrize("backend", AVAILABLE)
def test_unchecked_nonfinite_weights_make_their_map_degenerate(backend, quiet):
    # Worked by hand. Every activation of feature 0 is 0, so in the plain formula each pixel of a word whose
    # feature-0 weight is NaN or +-inf meets NaN or 0 * inf: its map is NaN, i.e. degenerate (all 0). The
    # C++ product skips zero activations and the Triton dots relu their operands: both returned a
    # normal-looking map for those words (the C API too). Word 0's weights are finite: raw = a1 / 2.
    acts = torch.tensor([[[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]]])
    nan, inf = float("nan"), float("inf")
    weights = torch.tensor([[[1.0, 1.0], [nan, 1.0], [inf, 1.0], [-inf, 1.0]]])
    out = dcam.weighted_maps(acts, weights, (2, 2), backend=backend, check_finite=False)
    assert out.degenerate.tolist() == [[False, True, True, True]]
    torch.testing.assert_close(out.maps[0, 0].reshape(-1), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]), atol=1e-6, rtol=0)
    assert torch.equal(out.maps[0, 1:], torch.zeros(3, 2, 2))
    # the same through the gradients: a NaN gradient of word 1 makes its (signed) weight NaN
    grads = torch.ones(1, 2, 4, 2)
    grads[0, 1, 2, 0] = nan
    out = dcam.pool_gradients(acts, grads, (2, 2), grad_relu=False, backend=backend, check_finite=False)
    assert out.degenerate.tolist() == [[False, True]] and torch.equal(out.maps[0, 1], torch.zeros(2, 2))
    # a NaN activation: every word's map holds a NaN in the plain formula (the relu keeps it), so all are
    # degenerate; Triton's relu'd operands dropped it (a normal-looking map, found by a fuzz in the interpreter)
    acts[0, 2, 1] = nan
    out = dcam.weighted_maps(acts, weights[:, :1], (2, 2), backend=backend, check_finite=False)
    assert out.degenerate.tolist() == [[True]] and torch.equal(out.maps, torch.zeros(1, 1, 2, 2))


def test_torch_export_with_the_value_check_runs_it_in_the_exported_program(quiet):
    # export traces with fake tensors: the default check reached torch's raw "Could not guard on
    # data-dependent expression", then an InputError asked for check_finite=False; now the check runs
    # inside the exported program (dcam::pool_gradients_checked), with the eager error on NaN input.
    # Without the check the module exports and runs as eager too
    a, g, grid = _inputs()

    class Pool(torch.nn.Module):
        def __init__(self, check):
            super().__init__()
            self.check = check

        def forward(self, a, g):
            return dcam.pool_gradients(a, g, grid, check_finite=self.check).maps

    eager = dcam.pool_gradients(a, g, grid).maps
    checked = torch.export.export(Pool(True), (a, g))
    assert "dcam.pool_gradients_checked" in checked.graph_module.code
    torch.testing.assert_close(checked.module()(a, g), eager, atol=0, rtol=0)
    bad = g.clone()
    bad[1, 2, 0, 5] = float("inf")
    with pytest.raises(InputError) as eager_error:
        dcam.pool_gradients(a, bad, grid)
    with pytest.raises(InputError) as exported_error:
        checked.module()(a, bad)
    assert type(exported_error.value) is type(eager_error.value) is NonFiniteError
    assert str(exported_error.value) == str(eager_error.value) == ("grads contains 1 NaN/Inf value(s); pass "
                                                                   "check_finite=False to skip this check")
    exported = torch.export.export(Pool(False), (a, g))
    torch.testing.assert_close(exported.module()(a, g), eager, atol=0, rtol=0)


def test_reference_backend_outputs_do_not_require_grad():
    # backend="torch" called the reference directly, under autograd: its maps required grad
    a, g, grid = _inputs()
    a, g = a.clone().requires_grad_(), g.clone().requires_grad_()
    raw = torch.rand(2, 3, *grid, requires_grad=True)
    outs = [dcam.pool_gradients(a, g, grid, backend="torch").maps, dcam.channel_weights(g, backend="torch"),
            dcam.diffusion_cam(a, g, grid, backend="torch").maps, dcam.refine(raw, backend="torch").maps]
    assert [o.requires_grad for o in outs] == [False] * 4


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    a, g, grid = _inputs()
    with pytest.raises((InputError, RuntimeError), match="backend='triton'"):
        dcam.pool_gradients(a, g, grid, backend="triton")


def test_devices_must_match():
    a, g, grid = _inputs()
    with raises_input_error("device", "one device"):
        dcam.pool_gradients(a, g.to("meta"), grid, check_finite=False)


@pytest.mark.parametrize("kw,name,match", [
    (dict(repeat_ratio=1.5), "repeat_ratio", r"repeat_ratio must lie in \[0, 1\]"),
    (dict(repeat_ratio=-0.1), "repeat_ratio", "must lie in"),
    (dict(repeat_ratio=torch.tensor([0.1, 2.0])), "repeat_ratio", "must lie in"),
    (dict(repeat_ratio=True), "repeat_ratio", "got a bool"),
    (dict(repeat_ratio="high"), "repeat_ratio", "number or a"),
    (dict(steps=0), "steps", r"steps must lie in \(0, inf\)"),
    (dict(image_size=-3), "image_size", "must lie in"),
    (dict(steps=torch.tensor([1.0, 2.0, 3.0])), "steps", r"steps must be a scalar or have shape \[2\]"),
    (dict(steps=float("nan")), "steps", "must lie in"),
    (dict(steps=torch.tensor([1.0, float("inf")])), "steps", "NaN/Inf"),
    # finite but past float32: a RuntimeError from torch.full, or counted as NaN/Inf
    (dict(steps=1e300), "steps", r"steps must be at most 3.403e\+38 \(float32\), got 1e\+300"),
    (dict(image_size=torch.tensor([1e300, 1.0], dtype=torch.float64)), "image_size",
     r"image_size must be at most 3.403e\+38 \(float32\), got \[1e\+300, 1.0\]"),
    (dict(image_size=torch.tensor([1 + 1j, 2j])), "image_size", "real-valued"),
    (dict(degenerate=torch.zeros(2, 3)), "degenerate", "bool tensor"),
    (dict(degenerate=torch.zeros(3, 2, dtype=torch.bool)), "degenerate", "degenerate must have shape"),
    (dict(config=dcam.CamConfig(sicd="context")), "context_weights", "needs context_weights"),
    (dict(config=dcam.CamConfig(sicd="context"), context_weights=-torch.ones(2, 3, 3)), "context_weights",
     "non-negative"),
    (dict(config=dcam.CamConfig(sicd="context"), context_weights=torch.ones(2, 3, 2)), "context_weights",
     "context_weights must have shape"),
    (dict(config=dcam.CamConfig(sicd="context"), context_weights=torch.ones(2, 3, 3),
          context_maps=torch.rand(2, 3, 4, 5)), "context_maps", "context_maps must have the shape"),
    (dict(config=dcam.CamConfig(sicd="context"), context_weights=torch.full((2, 3, 3), float("nan"))),
     "context_weights", "NaN/Inf"),
    (dict(context_weights=torch.ones(2, 3, 3)), "context_weights", "only used with"),
    (dict(config="fast"), "config", "config must be a dcam.CamConfig"),
    (dict(backend="gpu"), "backend", "backend must be one of"),
])
def test_refine_errors(kw, name, match):
    raw = torch.rand(2, 3, 5, 4)
    with raises_input_error(name, match):
        dcam.refine(raw, **kw)


def test_refine_rejects_bad_maps():
    with raises_input_error("raw_maps", "raw_maps must have 4"):
        dcam.refine(torch.rand(3, 5, 4))
    bad = torch.rand(1, 1, 3, 3)
    bad[0, 0, 1, 1] = float("inf")
    with raises_input_error("raw_maps", "raw_maps contains 1 NaN/Inf"):
        dcam.refine(bad)
    with raises_input_error("raw_maps", "floating-point"):
        dcam.refine(torch.ones(1, 1, 3, 3, dtype=torch.int64))
    with raises_input_error("raw_maps", "torch.Tensor"):
        dcam.refine([[[[0.5]]]])


@pytest.mark.parametrize("low,high", [(-0.1, 0.5), (0.0, 1.5), (-1e-7, 1.0), (0.0, 1.0000001), (2.0, 3.0)])
def test_refine_refuses_raw_maps_outside_unit_range(low, high):
    raw = torch.full((1, 2, 3, 3), 0.5)
    raw[0, 0, 0, 0] = low
    raw[0, 1, 2, 2] = high
    with raises_input_error("raw_maps", r"raw_maps must lie in \[0, 1\]"):
        dcam.refine(raw)
    dcam.refine(raw, check_finite=False)  # the caller vouched for the input: not looked at


def test_refine_accepts_the_unit_range_edges():
    raw = torch.rand(1, 2, 3, 3)
    raw[0, 0, 0, 0], raw[0, 0, 1, 1] = 0.0, 1.0
    assert dcam.refine(raw, backend="torch").maps.shape == (1, 2, 3, 3)


@pytest.mark.skipif("cpp" not in AVAILABLE, reason="the C++ extension is not built")
@pytest.mark.parametrize("name", ["steps", "repeat_ratio"])
def test_refine_nonfinite_tensor_message_on_cpp_says_check_finite_cannot_skip_it(name):
    # the C++ kernels check a per-image tensor whatever check_finite says: the old message told a caller who had
    # passed check_finite=False to pass it; without the flag the usual advice stays (and is true)
    raw = torch.rand(1, 2, 3, 3)
    kw = {name: torch.tensor([float("nan")])}
    with pytest.raises(NonFiniteError) as info:
        dcam.refine(raw, backend="cpp", check_finite=False, **kw)
    assert str(info.value) == (f"{name} contains 1 NaN/Inf value(s); the C++ kernel cannot take NaN/Inf in {name} "
                               "whatever check_finite says")
    with pytest.raises(NonFiniteError) as info:
        dcam.refine(raw, backend="cpp", **kw)
    assert str(info.value) == f"{name} contains 1 NaN/Inf value(s); pass check_finite=False to skip this check"


@pytest.mark.parametrize("backend", AVAILABLE + ["auto"])
def test_refine_output_in_unit_range_with_a_tiny_repeat_ratio(backend, quiet):
    # a non-degenerate map that AKD turns into zeros, and rho = 1e-30: I = 5e-32, I*I underflows
    # to 0; the least-squares scale of the zero map is 0, not 0/0 = NaN
    raw = torch.zeros(1, 2, 5, 5)
    raw[0, :, 2, 2] = 1e-45
    raw[0, 1, 0, 0] = 1.0
    out = dcam.refine(raw, repeat_ratio=1e-30, backend=backend)
    assert torch.isfinite(out.maps).all() and (out.maps >= 0).all() and (out.maps <= 1).all()
    assert out.sicd_alpha[0, 0] == 0 and not out.degenerate.any()


# ------------------------------------------------------------------ CamConfig

@pytest.mark.parametrize("field,value", [
    ("akd_kernel", 4), ("akd_kernel", 0), ("akd_kernel", -3), ("akd_kernel", "big"), ("akd_kernel", True),
    ("akd_kernel", 3.0), ("akd", 1), ("dacg", "yes"), ("cba", None), ("grad_relu", "yes"), ("sicd", "on"),
    ("dacg_percentiles", (90, 75)), ("dacg_percentiles", (90, 75, 80, 150)), ("dacg_percentiles", (90, 75, 80, -1)),
    ("dacg_percentiles", 90), ("dacg_sigma", 0.0), ("dacg_sigma", -0.3), ("dacg_sigma", float("inf")),
    ("dacg_std", 1.5), ("dacg_std", -0.01), ("dacg_std", float("nan")), ("dacg_mean_high", 1.01),
    ("dacg_mean_high", -0.1), ("dacg_mean_low", -0.2), ("dacg_mean_low", "0.2"),
    ("cba_weights", (0.1, float("nan"), 0.1, 0.1)), ("cba_weights", (0.1, -0.1, 0.1, 0.1)),
    ("cba_weights", (0.1, 0.1, 0.1)), ("cba_weights", 0.15), ("cba_floor", -1.0), ("cba_floor", 1.5),
    ("cba_floor", float("nan")),
    # values that passed and broke the maps: a sigma whose 2*sigma^2 is 0 in float32 (NaN maps), weights
    # past float32 (Inf * 0), a dict (its keys taken as the percentiles), a numpy bool
    ("dacg_sigma", 1e-45), ("dacg_sigma", 1e-19), ("cba_weights", (1e300, 0.0, 0.0, 0.0)),
    ("dacg_percentiles", {1: 1, 2: 2, 3: 3, 4: 4}), ("dacg_percentiles", "9075"), ("dacg_std", np.bool_(True)),
])
def test_config_errors_name_the_field(field, value):
    with raises_input_error(f"CamConfig.{field}"):
        dcam.CamConfig(**{field: value})


def test_config_mean_low_must_not_exceed_mean_high():
    with raises_input_error("dacg_mean_low", "must not exceed dacg_mean_high"):
        dcam.CamConfig(dacg_mean_low=0.4, dacg_mean_high=0.3)
    dcam.CamConfig(dacg_mean_low=0.3, dacg_mean_high=0.3)  # equal is allowed


@pytest.mark.parametrize("args,kwargs,needle", [
    ((), {"akd_kernal": 5}, "no field(s) ['akd_kernal']"),  # a typo was a TypeError naming __init__
    ((), {"self": 1}, "no field(s) ['self']"),
    (tuple(range(14)), {}, "at most 13 values"),
    ((3,), {"akd_kernel": 5}, "['akd_kernel'] both as positional values and as keywords"),
])
def test_config_refuses_unknown_or_repeated_fields_as_input_errors(args, kwargs, needle):
    with raises_input_error(needle):
        dcam.CamConfig(*args, **kwargs)
    with raises_input_error("no field(s) ['akd_kernal']"):
        dataclasses.replace(dcam.CamConfig(), akd_kernal=5)


@pytest.mark.parametrize("field,value", [("dacg_std", 0.0), ("dacg_std", 1.0), ("dacg_mean_high", 1.0),
                                         ("dacg_mean_low", 0.0), ("cba_floor", 0.0), ("cba_floor", 1.0),
                                         ("cba_weights", (0.0, 0.0, 0.0, 0.0)), ("dacg_percentiles", (0, 100, 0, 100)),
                                         ("akd_kernel", 1), ("akd_kernel", 13), ("dacg_sigma", 1e-18),
                                         ("cba_weights", (3.4e38, 0.0, 0.0, 0.0))])
def test_config_range_edges_are_accepted(field, value):
    assert getattr(dcam.CamConfig(**{field: value}), field) == (tuple(float(v) for v in value)
                                                                if isinstance(value, tuple) else value)


def test_config_takes_numpy_numbers_as_plain_python_ones():
    # np.float32 and np.int64 were refused (np.float64, a float subclass, passed)
    c = dcam.CamConfig(dacg_std=np.float32(0.25), akd_kernel=np.int64(5), dacg_percentiles=np.array([90, 75, 80, 85]),
                       cba_floor=np.float64(0.5))
    assert (type(c.dacg_std), type(c.akd_kernel), type(c.cba_floor)) == (float, int, float)
    assert (c.dacg_std, c.akd_kernel, c.dacg_percentiles) == (float(np.float32(0.25)), 5, (90.0, 75.0, 80.0, 85.0))
    assert c == dcam.CamConfig(dacg_std=0.25, akd_kernel=5, dacg_percentiles=(90, 75, 80, 85), cba_floor=0.5)


def test_config_defaults_are_the_contracts():
    c = dcam.CamConfig()
    assert (c.akd_kernel, c.akd, c.dacg, c.cba, c.sicd, c.grad_relu) == ("adaptive", True, True, True, "reference",
                                                                          True)
    assert (c.dacg_std, c.dacg_mean_high, c.dacg_mean_low, c.dacg_sigma) == (0.22, 0.35, 0.25, 0.3)
    assert c.dacg_percentiles == (90.0, 75.0, 80.0, 85.0)  # high_var, high_mean, low_mean, default
    assert c.cba_weights == (0.15, 0.15, 0.2, 0.015) and c.cba_floor == 0.5


def test_config_apply_parses_settings():
    c = dcam.CamConfig().apply(["grad_relu=false", "akd_kernel=5", "dacg_percentiles=90,70,80,85", "sicd=context",
                                "cba_floor=0.25", "akd = no", "dacg=0", "cba=yes", "cba_weights=0.1,0.2,0.3,0.4"])
    assert c == dcam.CamConfig(grad_relu=False, akd_kernel=5, dacg_percentiles=(90, 70, 80, 85), sicd="context",
                               cba_floor=0.25, akd=False, dacg=False, cba_weights=(0.1, 0.2, 0.3, 0.4))
    assert dcam.CamConfig(akd_kernel=7).apply(["akd_kernel=adaptive"]) == dcam.CamConfig()
    assert dcam.CamConfig().apply([]) == dcam.CamConfig()
    for bad, name, msg in (("grad_relu", "grad_relu", "name=value"), ("=3", "=3", "name=value"),
                           ("colour=red", "colour", "no field 'colour'"),
                           ("grad_relu=maybe", "CamConfig.grad_relu", "cannot read"),
                           ("akd_kernel=4", "CamConfig.akd_kernel", "odd int"),
                           ("akd_kernel=big", "CamConfig.akd_kernel", "cannot read"),
                           ("dacg_std=abc", "CamConfig.dacg_std", "cannot read"),
                           ("dacg_std=2", "CamConfig.dacg_std", r"\[0, 1\]"),
                           ("dacg_percentiles=90,75", "CamConfig.dacg_percentiles", "4 numbers"),
                           ("cba_weights=1,2,x,4", "CamConfig.cba_weights", "cannot read"),
                           ("sicd=sometimes", "CamConfig.sicd", "one of")):
        with raises_input_error(name, msg):
            dcam.CamConfig().apply([bad])


def test_config_replace_as_dict_changes_and_op_args():
    base = dcam.CamConfig()
    c = base.replace(akd_kernel=5, sicd="off", cba_weights=[0.1, 0.1, 0.1, 0.1])
    assert base == dcam.CamConfig()  # frozen: replace makes a copy
    assert c.cba_weights == (0.1, 0.1, 0.1, 0.1) and hash(c) == hash(base.replace(**c.changes()))
    assert c.changes() == {"akd_kernel": 5, "sicd": "off", "cba_weights": [0.1, 0.1, 0.1, 0.1]}
    assert base.changes() == {}
    d = c.as_dict()
    assert d["dacg_percentiles"] == [90.0, 75.0, 80.0, 85.0] and d["akd_kernel"] == 5 and d["grad_relu"] is True
    assert set(d) == {"akd_kernel", "akd", "dacg", "cba", "sicd", "grad_relu", "dacg_std", "dacg_mean_high",
                      "dacg_mean_low", "dacg_percentiles", "dacg_sigma", "cba_weights", "cba_floor"}
    assert dcam.CamConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}) == c
    o = c.op_args()
    assert o["akd_kernel"] == 5 and o["sicd"] == 0 and o["cba_params"] == [0.1, 0.1, 0.1, 0.1, 0.5]
    o = base.op_args()
    assert o["akd_kernel"] == 0 and o["sicd"] == 1 and (o["akd"], o["dacg"], o["cba"]) == (True, True, True)
    assert o["dacg_params"] == [0.22, 0.35, 0.25, 90.0, 75.0, 80.0, 85.0, 0.3]
    assert o["cba_params"] == [0.15, 0.15, 0.2, 0.015, 0.5]
    assert dcam.CamConfig(sicd="context").op_args()["sicd"] == 2
    with raises_input_error("colour", "no field"):
        base.replace(colour="red")
    with raises_input_error("CamConfig.cba_floor"):
        base.replace(cba_floor=2.0)


# ------------------------------------------------------------------ NaN/Inf on every backend

@pytest.mark.parametrize("backend", AVAILABLE + ["auto"])
@pytest.mark.parametrize("grad_relu", [True, False])
def test_nonfinite_gradients_raise_on_every_backend(backend, grad_relu, quiet):
    # the pooling pass checks the gradients itself (C++ and Triton: within their one read of
    # them); every backend and both entry points raise the same error, -Inf under grad_relu
    # included (a plain relu would turn it into 0)
    a, g, grid = _inputs(B=2, T=3, h=3, w=3, D=20, seed=6)
    cfg = dcam.CamConfig(grad_relu=grad_relu)
    for bad, where in ((float("nan"), (1, 2, 8, 19)), (float("-inf"), (0, 0, 0, 0)), (float("inf"), (1, 1, 4, 7))):
        g2 = g.clone()
        g2[where] = bad
        g2[0, 1, 2, 3] = bad
        with raises_input_error("grads", "grads contains 2 NaN/Inf value"):
            dcam.pool_gradients(a, g2, grid, grad_relu=grad_relu, backend=backend)
        with raises_input_error("grads", "grads contains 2 NaN/Inf value"):
            dcam.diffusion_cam(a, g2, grid, cfg, backend=backend)
        with raises_input_error("grads", "grads contains 2 NaN/Inf value"):
            dcam.channel_weights(g2, grad_relu=grad_relu, backend=backend)
        a2 = a.clone()
        a2[1, 4, 5] = bad
        with raises_input_error("acts", "acts contains 1 NaN/Inf value"):
            dcam.diffusion_cam(a2, g, grid, cfg, backend=backend)
        # unchecked: the caller vouched for the input, nothing is looked at
        dcam.pool_gradients(a, g2, grid, grad_relu=grad_relu, backend=backend, check_finite=False)


@pytest.mark.parametrize("backend", AVAILABLE + ["auto"])
def test_nonfinite_refine_inputs_raise_on_every_backend(backend, quiet):
    raw = torch.rand(1, 2, 4, 4)
    for bad in (float("nan"), float("inf"), float("-inf")):
        r = raw.clone()
        r[0, 1, 2, 2] = bad
        with raises_input_error("raw_maps", "raw_maps contains 1 NaN/Inf"):
            dcam.refine(r, backend=backend)
        with raises_input_error("repeat_ratio"):
            dcam.refine(raw, repeat_ratio=torch.tensor([bad]), backend=backend)


def _refused_by_every_pooling(a, g, grid, backend, name, message):
    """pool_gradients, diffusion_cam and its two halves (channel_weights, then weighted_maps,
    or channel_weights itself when the gradients are refused) refuse (a, g) naming ``name``."""
    # weighted_maps takes no gradients: its message names its weights (it said "scale acts or grads down")
    given = re.escape(message.replace("pooled with grads", "pooled with weights"))
    message = re.escape(message)
    with raises_input_error(name, message):
        dcam.pool_gradients(a, g, grid, backend=backend)
    with raises_input_error(name, message):
        dcam.diffusion_cam(a, g, grid, backend=backend)
    with raises_input_error(name, given):
        dcam.weighted_maps(a, dcam.channel_weights(g, backend=backend), grid, backend=backend)


@pytest.mark.parametrize("backend", AVAILABLE + ["auto"])
def test_huge_finite_gradients_are_refused_never_zeroed(backend, quiet):
    # finite gradients in [1.5e38, 3e38]: their mean over N=16 tokens is a float32 number but
    # their float32 sums are not (the C++ pass's group sums of 8 overflow too), so the channel
    # weights come out infinite. Their maps came out as all-zero "degenerate" maps with no
    # error, indistinguishable from a word without gradient; now every backend refuses
    a, g, grid = _inputs(B=1, T=2, h=4, w=4, D=8, seed=7)
    g = g.abs().clamp(0.5, 1.0) * 3e38
    assert bool(torch.isfinite(g).all())
    _refused_by_every_pooling(a, g, grid, backend, "grads",
                              "grads: finite, but summed over the image tokens they overflow float32")
    # unchecked (check_finite=False looks at no value): the degenerate maps of before
    assert bool(dcam.pool_gradients(a, g, grid, backend=backend, check_finite=False).degenerate.all())
    # 100x smaller, every float32 sum fits: maps equal to an independent float64 pooling (SPEC section 1)
    g = g / 100
    w64 = g.double().clamp(min=0).mean(dim=2)
    raw = (a.double()[:, None] * w64[:, :, None]).clamp(min=0).mean(dim=3)
    lo, hi = raw.amin(-1, keepdim=True), raw.amax(-1, keepdim=True)
    expected = ((raw - lo) / (hi - lo)).reshape(1, 2, 4, 4).float()
    torch.testing.assert_close(dcam.pool_gradients(a, g, grid, backend=backend).maps, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(dcam.channel_weights(g, backend=backend), w64.float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", AVAILABLE + ["auto"])
def test_degenerate_maps_of_small_gradients_are_no_error(backend, quiet):
    # the overflow check above looks again at degenerate maps only; zero gradients (a word
    # the image does not move) stay a plain degenerate map
    a, g, grid = _inputs(B=2, T=3, h=3, w=3, D=5, seed=2)
    g[0, 1] = 0
    g[1, 2] = 0
    out = dcam.pool_gradients(a, g, grid, backend=backend)
    assert out.degenerate.tolist() == [[False, True, False], [False, False, True]]
    assert float(out.maps[0, 1].abs().sum()) == 0.0 and float(out.maps[1, 2].abs().sum()) == 0.0
    assert dcam.diffusion_cam(a, g, grid, backend=backend).degenerate.tolist() == out.degenerate.tolist()


@pytest.mark.parametrize("backend", AVAILABLE + ["auto"])
def test_pooling_that_overflows_float32_is_refused_on_every_backend(backend, quiet):
    # |acts| ~ |grads| ~ 1e20: finite inputs whose products (~1e40) pass float32's 3.4e38. The maps
    # were NaN from pool_gradients with no error, and diffusion_cam gave NaN maps on the reference
    # and zeros on the C++ and Triton backends
    a, g, grid = _inputs(B=1, T=2, h=3, w=3, D=5, seed=1)
    a, g = a * 1e20, g * 1e20
    _refused_by_every_pooling(a, g, grid, backend, "acts", "acts: finite, but pooled with grads it overflows float32")
    with raises_input_error("acts", re.escape("made the maps NaN or infinite); scale acts or weights down")):
        dcam.weighted_maps(a, dcam.channel_weights(g, backend=backend), grid, backend=backend)
    # the same tensors scaled into range pool without complaint
    assert bool(torch.isfinite(dcam.pool_gradients(a * 1e-20, g * 1e-20, grid, backend=backend).maps).all())


@pytest.mark.parametrize("backend", AVAILABLE + ["auto"])
def test_pooling_that_overflows_at_every_pixel_is_refused(backend, quiet):
    # every pixel's pooled value ~1e40 is +Inf in float32: the map is then constant and came out
    # as an all-zero degenerate map with no error (only NaN maps were caught). In exact
    # arithmetic the pixels differ: raw_n = (k * 1e40 + 2e40) / 3 for k = 1..4
    a = torch.full((1, 4, 3), 1e20)
    a[0, :, 0] = torch.tensor([1e20, 2e20, 3e20, 4e20])
    g = torch.full((1, 1, 4, 3), 1e20)
    _refused_by_every_pooling(a, g, (2, 2), backend, "acts", "acts: finite, but pooled with grads it overflows float32")
    # scaled into range: the exact maps [0, 1/3, 2/3, 1]
    expected = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]).reshape(1, 1, 2, 2)
    torch.testing.assert_close(dcam.pool_gradients(a * 1e-20, g * 1e-20, (2, 2), backend=backend).maps, expected,
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_all_finite_matches_isfinite(dtype):
    # the one-pass min/max check finds every NaN/Inf wherever it sits
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 16, 33, 1000, 4099):
        x = torch.randn(n, generator=g).to(dtype)
        assert api.all_finite(x)
        for bad in (float("nan"), float("inf"), float("-inf")):
            for i in {0, n // 2, n - 1, int(torch.randint(n, (1,), generator=g))}:
                y = x.clone()
                y[i] = bad
                assert not api.all_finite(y), (n, bad, i)
                assert not api.all_finite(y.view(1, n)[:, :].t())  # non-contiguous view
    edge = torch.tensor([-0.0, 0.0, torch.finfo(dtype).max, -torch.finfo(dtype).max, torch.finfo(dtype).tiny / 2],
                        dtype=dtype)
    assert api.all_finite(edge) and bool(torch.isfinite(edge).all())
    assert api.all_finite(torch.empty(0, dtype=dtype))
    assert api.all_finite(torch.tensor([1, 2, 3]))  # integers are always finite


# ------------------------------------------------------------------ results of the API

@pytest.mark.parametrize("backend", AVAILABLE + ["auto"])
def test_unbatched_inputs_and_low_precision(backend, quiet):
    a, g, grid = _inputs(B=1)
    batched = dcam.pool_gradients(a, g, grid, backend=backend)
    unbatched = dcam.pool_gradients(a[0], g[0], grid, backend=backend)
    assert torch.equal(batched.maps, unbatched.maps) and torch.equal(batched.degenerate, unbatched.degenerate)
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        low = dcam.pool_gradients(a.to(dt), g.to(dt), grid, backend=backend)
        assert low.maps.dtype == torch.float32 and low.degenerate.dtype == torch.bool
        # accumulated in float32: the same maps as float32 inputs holding the same values
        same = dcam.pool_gradients(a.to(dt).float(), g.to(dt).float(), grid, backend=backend)
        torch.testing.assert_close(low.maps, same.maps, atol=1e-5, rtol=0)


def test_fused_equals_two_calls_and_rawmaps_carry_degenerate(device, quiet):
    for backend in _backends_for(device):
        a, g, grid = _inputs(device=device)
        g[1, 2] = 0  # a token with no gradient: degenerate
        cfg = dcam.CamConfig()
        raw = dcam.pool_gradients(a, g, grid, backend=backend)
        assert raw.degenerate.tolist() == [[False] * 3, [False, False, True]]
        steps = torch.tensor([16.0, 64.0], device=device)
        two = dcam.refine(raw, cfg, steps=steps, image_size=384, repeat_ratio=0.25, backend=backend)
        one = dcam.diffusion_cam(a, g, grid, cfg, steps=steps, image_size=384, repeat_ratio=0.25, backend=backend)
        for k in ("maps", "kernel_size", "dacg_strategy", "dacg_threshold", "cba_threshold", "sicd_alpha",
                  "degenerate"):
            assert torch.equal(getattr(one, k), getattr(two, k)), (backend, k)
        assert (one.maps[1, 2] == 0).all() and one.dacg_strategy[1, 2] == -1
        assert set(one.stats()) == {"kernel_size", "dacg_strategy", "dacg_threshold", "cba_threshold",
                                    "sicd_alpha", "degenerate"}
        assert one.maps.device.type == device and one.kernel_size.dtype == torch.int32


def test_degenerate_default_and_override():
    raw = torch.rand(1, 3, 4, 4)
    raw[0, 1] = 0.4  # constant: degenerate by default
    out = dcam.refine(raw, backend="torch")
    assert out.degenerate.tolist() == [[False, True, False]] and (out.maps[0, 1] == 0).all()
    out = dcam.refine(raw, degenerate=torch.tensor([[True, False, False]]), backend="torch")
    assert out.degenerate.tolist() == [[True, False, False]] and (out.maps[0, 0] == 0).all()


@pytest.mark.skipif(not NON_REFERENCE, reason="only the reference backend is available: nothing to compare it with")
@pytest.mark.parametrize("backend", NON_REFERENCE + ["auto"])
def test_public_api_per_image_arguments_match_the_reference(backend, quiet):
    """Per-image tensors, context mode and the RawMaps hand-over through the public
    functions (the op-level comparisons are in test_scenarios.py)."""
    a, g, grid = _inputs(B=2, T=3, h=9, w=7, D=16, seed=4)
    kw = dict(steps=torch.tensor([12.0, 40.0]), image_size=torch.tensor([300.0, 700.0]),
              repeat_ratio=torch.tensor([0.0, 0.5]))
    W = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(1)) * (1 - torch.eye(3))
    for cfg, extra in ((dcam.CamConfig(), {}), (dcam.CamConfig(sicd="context", grad_relu=False),
                                                 dict(context_weights=W))):
        ref = dcam.diffusion_cam(a, g, grid, cfg, backend="torch", **kw, **extra)
        got = dcam.diffusion_cam(a, g, grid, cfg, backend=backend, **kw, **extra)
        torch.testing.assert_close(got.maps, ref.maps, atol=1e-5, rtol=0)
        for k in ("kernel_size", "dacg_strategy", "degenerate"):
            assert torch.equal(getattr(got, k), getattr(ref, k)), k
        for k in ("dacg_threshold", "cba_threshold", "sicd_alpha"):
            torch.testing.assert_close(getattr(got, k), getattr(ref, k), atol=1e-5, rtol=0)


def test_available_backends_lists_torch_first():
    names = dcam.available_backends()
    assert names[0] == "torch" and set(names) <= {"torch", "cpp", "triton"} and len(set(names)) == len(names)


# ------------------------------------------------------------------ dispatch

def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def spy(*args, **kw):
        calls.append(args)
        return real(*args, **kw)
    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.skipif("cpp" not in AVAILABLE, reason="the C++ extension dcam._C is not built")
def test_auto_on_cpu_runs_the_cpp_kernels(monkeypatch):
    pool_calls = _spy(monkeypatch, cpp, "pool_gradients_cpp")
    refine_calls = _spy(monkeypatch, cpp, "refine_cpp")
    a, g, grid = _inputs(seed=9)
    dcam.pool_gradients(a, g, grid)  # backend="auto"
    assert len(pool_calls) == 1 and len(refine_calls) == 0
    dcam.refine(torch.rand(1, 2, 4, 4))
    assert len(pool_calls) == 1 and len(refine_calls) == 1
    dcam.diffusion_cam(a, g, grid, backend="auto")
    assert len(pool_calls) == 2 and len(refine_calls) == 2
    dcam.diffusion_cam(a, g, grid, backend="cpp")
    assert len(pool_calls) == 3 and len(refine_calls) == 3
    weight_calls = _spy(monkeypatch, cpp, "channel_weights_cpp")
    product_calls = _spy(monkeypatch, cpp, "weighted_maps_cpp")
    dcam.weighted_maps(a, dcam.channel_weights(g), grid)
    assert len(weight_calls) == 1 and len(product_calls) == 1 and len(pool_calls) == 3


def _spy_reference(monkeypatch, op):
    calls = []
    registered, real = library.OPS[op]

    def spy(*args, **kw):
        calls.append(args)
        return real(*args, **kw)
    monkeypatch.setitem(library.OPS, op, (registered, spy))
    return calls


def test_torch_backend_never_calls_the_cpp_kernels(monkeypatch):
    def forbidden(*args, **kw):
        raise AssertionError("backend='torch' called a C++ kernel")
    for op in library.OPS:
        monkeypatch.setattr(cpp, f"{op}_cpp", forbidden)
    calls = {op: _spy_reference(monkeypatch, op) for op in library.OPS}
    a, g, grid = _inputs(seed=9)
    dcam.pool_gradients(a, g, grid, backend="torch")
    dcam.refine(torch.rand(1, 2, 4, 4), backend="torch")
    out = dcam.diffusion_cam(a, g, grid, backend="torch")
    assert out.maps.shape == (2, 3, 5, 4)
    dcam.weighted_maps(a, dcam.channel_weights(g, backend="torch"), grid, backend="torch")
    # the reference ran instead
    assert {op: len(c) for op, c in calls.items()} == {"pool_gradients": 2, "refine": 2, "channel_weights": 1,
                                                       "weighted_maps": 1}


# ------------------------------------------------------------------ the registered ops

# `device` is parametrised by conftest.py: cpu, and cuda when there is one

def test_opcheck_every_op(device, quiet):
    a, g, grid = _inputs(device=device)
    for relu in (True, False):
        for check in (False, True):
            torch.library.opcheck(torch.ops.dcam.pool_gradients.default, (a, g, grid[0], grid[1], relu, check))
            torch.library.opcheck(torch.ops.dcam.channel_weights.default, (g, relu, check))
        w = g.float().mean(dim=2)
        torch.library.opcheck(torch.ops.dcam.weighted_maps.default, (a, w.abs() if relu else w, grid[0], grid[1]))
    raw = dcam.pool_gradients(a, g, grid, backend="torch")
    o = dcam.CamConfig().op_args()
    t = lambda *v: torch.tensor(v, device=device)  # noqa: E731
    args = (raw.maps, raw.degenerate, t(16.0, 64.0), t(512.0, 512.0), t(0.0, 0.1), None, None, o["akd_kernel"],
            True, True, True, 1, o["dacg_params"], o["cba_params"])
    torch.library.opcheck(torch.ops.dcam.refine.default, args)
    no_self = (torch.rand(2, 3, 3) * (1 - torch.eye(3))).to(device)  # SICD context weights: zero diagonal
    ctx_args = args[:5] + (raw.maps, no_self) + args[7:11] + (2,) + args[12:]
    torch.library.opcheck(torch.ops.dcam.refine.default, ctx_args)
    off_args = args[:7] + (5, False, False, False, 0) + args[12:]
    torch.library.opcheck(torch.ops.dcam.refine.default, off_args)


def test_ops_are_not_differentiable(device):
    # maps are not differentiable: an op's outputs never require grad, so a backward through
    # them fails at once instead of quietly leaving the inputs without gradients
    a, g, grid = _inputs(device=device)
    a, g = a.clone().requires_grad_(), g.clone().requires_grad_()
    w = torch.rand(a.shape[0], g.shape[1], a.shape[2], device=device, requires_grad=True)
    outs = (list(torch.ops.dcam.pool_gradients.default(a, g, grid[0], grid[1], True, True))
            + list(torch.ops.dcam.channel_weights.default(g, True, True))
            + list(torch.ops.dcam.weighted_maps.default(a, w, grid[0], grid[1]))
            + [dcam.diffusion_cam(a, g, grid).maps])
    assert [o.requires_grad for o in outs] == [False] * len(outs)
    with pytest.raises(RuntimeError, match="does not require grad"):
        outs[0].sum().backward()
    assert a.grad is None and g.grad is None


def test_torch_compile_fullgraph(device, quiet):
    a, g, grid = _inputs(device=device)
    ref = dcam.diffusion_cam(a, g, grid, steps=24, backend="torch")
    fn = torch.compile(lambda a, g: dcam.diffusion_cam(a, g, grid, steps=24, check_finite=False).maps,
                       fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(a, g), ref.maps, atol=1e-5, rtol=0)
    # the ops one by one
    pool = torch.compile(lambda a, g: dcam.pool_gradients(a, g, grid, check_finite=False).maps, fullgraph=True,
                         backend="aot_eager")
    raw = pool(a, g)
    torch.testing.assert_close(raw, dcam.pool_gradients(a, g, grid, backend="torch").maps, atol=1e-5, rtol=0)
    cfg = dcam.CamConfig(akd_kernel=5, sicd="off")
    refine = torch.compile(lambda r: dcam.refine(r, cfg, check_finite=False).maps, fullgraph=True,
                           backend="aot_eager")
    torch.testing.assert_close(refine(raw), dcam.refine(raw, cfg, backend="torch").maps, atol=1e-5, rtol=0)


def test_values_and_sizes_past_what_the_kernels_take_name_their_argument():
    # float64 past float32's range was called "NaN/Inf values" (grads) or blamed on acts (weights);
    # context maps of 3e38 and context weights whose row sums overflow gave NaN maps; the C++ size
    # limits were the extension's ValueError naming no argument
    g = torch.Generator().manual_seed(0)
    a, gr = torch.rand(1, 6, 4, generator=g), torch.rand(1, 2, 6, 4, generator=g)
    cases = [
        (lambda b: dcam.pool_gradients(a.double(), gr.double() * 1e300, (2, 3), backend=b), "grads: values up to"),
        (lambda b: dcam.pool_gradients(a.double() * 1e300, gr.double(), (2, 3), backend=b), "acts: values up to"),
        (lambda b: dcam.channel_weights(gr.double() * 1e300, backend=b), "grads: values up to"),
        (lambda b: dcam.weighted_maps(a, torch.full((1, 2, 4), 1e39, dtype=torch.float64), (2, 3), backend=b),
         "weights: values up to 1e+39 are past float32's range"),
    ]
    raw = torch.rand(1, 2, 3, 3, generator=g)
    ctx_cfg = dcam.CamConfig(sicd="context")
    cases += [
        (lambda b: dcam.refine(raw, ctx_cfg, context_weights=torch.ones(1, 2, 2), context_maps=raw * 3e38,
                               backend=b), "context_maps must lie in [0, 1]"),
        (lambda b: dcam.refine(raw, ctx_cfg, context_weights=torch.full((1, 2, 2), 3e38), backend=b),
         "context_weights: a row sums past float32's range"),
    ]
    for backend in ("torch",) + (("cpp",) if cpp.is_available() else ()):
        for call, message in cases:
            with pytest.raises(InputError) as info:
                call(backend)
            assert str(info.value).startswith(message), (backend, str(info.value))
    cpu = torch.device("cpu")
    if cpp.is_available():
        for backend in ("auto", "cpp"):
            with pytest.raises(InputError, match=r"^acts: hidden size 16777217 is past the C\+\+ backend's 2\*\*24"):
                api.check_backend(backend, cpu, hidden=2 ** 24 + 1)
            with pytest.raises(InputError, match=r"^raw_maps: 134217728 cells per map is past the C\+\+ backend"):
                api.check_backend(backend, cpu, cells=2 ** 27)
            assert api.check_backend(backend, cpu, hidden=2 ** 24, cells=2 ** 27 - 1) == backend
    assert api.check_backend("torch", cpu, hidden=2 ** 30, cells=2 ** 30) == "torch"


def test_a_backend_loaded_by_several_threads_at_once_is_loaded_for_all(tmp_path, monkeypatch):
    # the first thread marked the backend loaded before its import finished: the others saw no module, so
    # backend="cpp" raised "not available: None" and backend="auto" quietly ran the reference
    import sys
    import threading

    from dcam.ops.backends import LazyBackend

    (tmp_path / "slow_backend_for_test.py").write_text(
        "import time\ntime.sleep(0.5)\ndef is_available():\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slow_backend_for_test", raising=False)
    backend = LazyBackend("slow_backend_for_test", "is_available")
    start, got = threading.Barrier(4), []

    def first_call():
        start.wait()
        got.append((backend.is_available(), backend.unavailable_reason()))
    threads = [threading.Thread(target=first_call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [(True, None)] * 4
    assert backend.module() is sys.modules["slow_backend_for_test"]


@pytest.mark.parametrize("transform", ["grad", "jacrev", "jacfwd"])
def test_torch_func_derivatives_through_the_maps_are_refused(transform):
    # autograd falls through the ops, so torch.func saw them as constants: grad and jacrev returned all-zero
    # derivatives without a word (plain autograd fails at once: "does not require grad")
    g = torch.Generator().manual_seed(3)
    acts, grads = torch.randn(1, 6, 4, generator=g), torch.randn(1, 2, 6, 4, generator=g)
    raw = dcam.pool_gradients(acts, grads, (2, 3)).maps
    calls = {"pool_gradients acts": lambda a: dcam.pool_gradients(a, grads, (2, 3)).maps.sum(),
             "diffusion_cam acts": lambda a: dcam.diffusion_cam(a, grads, (2, 3)).maps.sum(),
             "refine raw_maps": lambda r: dcam.refine(r).maps.sum()}
    for what, f in calls.items():
        x = raw if what.startswith("refine") else acts
        with pytest.raises(InputError) as info:
            getattr(torch.func, transform)(f)(x)
        assert str(info.value).startswith(what.split()[1] + ": dcam's maps are not differentiable")


def test_derivatives_are_refused_under_compile_for_per_image_values_and_on_the_ops_themselves(quiet):
    # the check was skipped while torch.compile traced: a compiled torch.func.grad through dcam gave all-zero
    # derivatives; a repeat_ratio (whose true derivative is not zero: SICD subtracts 0.05 * rho of a map) was
    # never checked; torch.ops.dcam.* called directly were constants under every transform
    g = torch.Generator().manual_seed(3)
    acts, grads = torch.randn(1, 12, 5, generator=g), torch.randn(1, 2, 12, 5, generator=g)
    f = lambda a: dcam.diffusion_cam(a, grads, (3, 4), check_finite=False).maps.sum()  # noqa: E731
    for transform in (torch.func.grad, torch.func.jacrev):
        with pytest.raises(Exception, match="dcam::pool_gradients: dcam's maps are not differentiable"):
            torch.compile(transform(f), backend="aot_eager")(acts)
    assert torch.compile(f, fullgraph=True, backend="aot_eager")(acts) == f(acts)  # no transform: one graph
    raw = torch.rand(1, 3, 5, 5, generator=g)
    rho = lambda r: dcam.refine(raw, repeat_ratio=r).maps.sum()  # noqa: E731
    # the derivative that would have been given as 0, by central differences
    assert abs(float(rho(torch.tensor([0.301])) - rho(torch.tensor([0.299])))) > 1e-4
    with pytest.raises(InputError, match="^repeat_ratio: dcam's maps are not differentiable"):
        torch.func.grad(rho)(torch.tensor([0.3]))
    op = torch.ops.dcam.pool_gradients.default
    direct = lambda a: op(a, grads, 3, 4, True, False)[0].sum()  # noqa: E731
    for name, call in (("grad", lambda: torch.func.grad(direct)(acts)),
                       ("jvp", lambda: torch.func.jvp(direct, (acts,), (acts,))),
                       ("vjp", lambda: torch.func.vjp(direct, acts))):
        with pytest.raises(InputError, match="^dcam::pool_gradients: dcam's maps are not differentiable"):
            call()
    # vmap is no derivative: it still runs, equal to a loop
    batched = torch.func.vmap(lambda a: op(a[None], grads, 3, 4, True, False)[0][0])(acts.expand(2, 12, 5))
    torch.testing.assert_close(batched, op(acts, grads, 3, 4, True, False)[0].expand(2, 2, 3, 4))


@pytest.mark.parametrize("B,T", [(2, 0), (0, 2)])
def test_every_kernel_of_every_op_takes_no_maps(B, T):
    # the public functions refuse empty tensors, but a direct op call reaches the kernels: with no
    # (image, word) slice the reference (the default body on meta, MPS, XPU) raised "cannot reshape
    # tensor of 0 elements" and Triton amax() of no flags, where the C++ kernel gave empty outputs
    h, w, D = 4, 5, 16
    acts, grads, weights = torch.randn(B, h * w, D), torch.randn(B, T, h * w, D), torch.randn(B, T, D)
    refine_args = (torch.rand(B, T, h, w), torch.zeros(B, T, dtype=torch.bool), torch.full((B,), 64.),
                   torch.full((B,), 512.), torch.zeros(B), None, None, 0, True, True, True, 1,
                   [0.22, 0.35, 0.25, 90., 75., 80., 85., 0.3], [0.15, 0.15, 0.2, 0.015, 0.5])
    want = {"pool_gradients": ((acts, grads, h, w, True, True), [(B, T, h, w), (B, T), ()]),
            "channel_weights": ((grads, True, True), [(B, T, D), ()]),
            "weighted_maps": ((acts, weights, h, w), [(B, T, h, w), (B, T)]),
            "refine": (refine_args, [(B, T, h, w)] + [(B, T)] * 5)}
    for name, (args, shapes) in want.items():
        for backend in ["torch"] + [b for b in ("cpp", "triton") if b in dcam.available_backends()]:
            out = library.implementation(name, backend)(*args)
            assert [tuple(o.shape) for o in out] == shapes, (name, backend)
            assert not any(bool(o.any()) for o in out), (name, backend)  # no NaN/Inf flagged, nothing degenerate
        meta = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
        assert [tuple(o.shape) for o in getattr(torch.ops.dcam, name)(*meta)] == shapes  # the reference body


@pytest.mark.parametrize("backend", AVAILABLE + ["auto"])
def test_refine_counts_a_degenerate_context_map_as_zeros(backend):
    # token 1's raw map is constant (degenerate: all zeros in section 1) but holds 0.05, and it is token 0's
    # whole context: no interference, so alpha 0 and token 0's map as without SICD. The public refine
    # handed the raw maps to the kernels as explicit context maps, and their values were used (alpha 1)
    g = torch.Generator().manual_seed(3)
    raw = torch.full((1, 2, 6, 6), 0.05)
    blob = torch.rand(6, 6, generator=g)
    raw[0, 0] = (blob - blob.min()) / (blob.max() - blob.min())
    cw = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    got = dcam.refine(raw, dcam.CamConfig(sicd="context"), context_weights=cw, backend=backend)
    off = dcam.refine(raw, dcam.CamConfig(sicd="off"), backend=backend)
    assert got.degenerate.tolist() == [[False, True]] and got.sicd_alpha.tolist() == [[0.0, 0.0]]
    torch.testing.assert_close(got.maps, off.maps, atol=0, rtol=0)
    # given as explicit context maps, the same values are used as they are
    explicit = dcam.refine(raw, dcam.CamConfig(sicd="context"), context_maps=raw, context_weights=cw, backend=backend)
    assert explicit.sicd_alpha[0, 0] > 0


def test_dir_lists_the_public_names_only():
    # dir(dcam) returned the module's globals: importlib, __builtins__, _LAZY_ATTRS, ...
    names = dir(dcam)
    assert [n for n in names if n.startswith("_") or n == "importlib"] == ["__version__"], names
    assert {"Explainer", "refine", "CamConfig", "load_explanation", "ops", "zoo", "__version__"} <= set(names)
    assert set(dcam.__all__) <= set(names)  # __version__ was dropped with the dunders though __all__ lists it
    assert names == sorted(names)


def test_budget_error_is_public_as_the_readme_names_it():
    # README names BudgetError (explain_batch's memory_budget); dcam.BudgetError did not exist
    from dcam.probe.memory import BudgetError
    assert dcam.BudgetError is BudgetError and issubclass(dcam.BudgetError, dcam.InputError)
    assert "BudgetError" in dcam.__all__


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("grad_relu", [True, False])
def test_identical_token_states_make_degenerate_maps(backend, grad_relu):
    # Section 1 by hand: every image token of image 0 has the same state, so raw_n is the same number for
    # every n whatever the weights: constant, degenerate, all 0. A matrix product rounded identical rows an
    # ulp apart (torch's bmm, Triton's tl.dot by tile position) and normalising made that a map of 0s and
    # ~0.43s (k = 2, 3 below on torch, k = 1, 2 on Triton). Image 1's tokens differ: its maps are untouched.
    N, D = 25, 64
    for k in range(1, 7):
        row = torch.sin(torch.arange(D, dtype=torch.float32) * 0.37 * k)
        same = row.expand(N, D)
        other = torch.sin(torch.arange(N * D, dtype=torch.float32) * 0.23 * k).reshape(N, D)
        acts = torch.stack([same, other])
        grads = torch.cos(torch.arange(2 * 2 * N * D, dtype=torch.float32) * 0.11 * k).reshape(2, 2, N, D)
        for dtype in (torch.float32, torch.bfloat16):
            a, g = acts.to(dtype), grads.to(dtype)
            pooled = dcam.pool_gradients(a, g, (5, 5), grad_relu=grad_relu, backend=backend)
            weights = dcam.channel_weights(g, grad_relu=grad_relu, backend=backend)
            given = dcam.weighted_maps(a, weights, (5, 5), backend=backend)
            alone = dcam.pool_gradients(a[1:], g[1:], (5, 5), grad_relu=grad_relu, backend=backend)
            first = dcam.pool_gradients(a[:1], g[:1, :1], (5, 5), grad_relu=grad_relu, backend=backend)
            assert first.degenerate.tolist() == [[True]] and torch.equal(first.maps, torch.zeros(1, 1, 5, 5))
            for out in (pooled, given):
                assert out.degenerate[0].tolist() == [True, True], (k, dtype)
                assert torch.equal(out.maps[0], torch.zeros(2, 5, 5)), (k, dtype)
            assert not bool(pooled.degenerate[1].any())
            torch.testing.assert_close(pooled.maps[1], alone.maps[0], atol=0, rtol=0)
