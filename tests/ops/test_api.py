"""The public engine API: validation errors, backend choice, the registered
ops (opcheck, torch.compile), and agreement of every available backend."""

import pytest
import torch

import dcam
from dcam import reference as R


def _inputs(B=2, T=3, h=5, w=4, D=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(B, h * w, D, generator=g).to(dtype)
    grads = torch.randn(B, T, h * w, D, generator=g).to(dtype)
    return acts, grads, (h, w)


# ------------------------------------------------------------------ errors name the argument

@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a, g: (a.long(), g), TypeError, "acts"),
    (lambda a, g: (a, g.int()), TypeError, "grads"),
    (lambda a, g: (a[0, 0], g), ValueError, "acts must have 2 or 3"),
    (lambda a, g: (a, g[0, 0]), ValueError, "grads must have 3 or 4"),
    (lambda a, g: (a, g[0]), ValueError, r"grads must be \[B,T,N,D\]"),
    (lambda a, g: (a[:1], g), ValueError, "batch size"),
    (lambda a, g: (a, g[:, :, :-1]), ValueError, "image tokens"),
    (lambda a, g: (a, g[..., :-1]), ValueError, "hidden size"),
    (lambda a, g: (a.half(), g), TypeError, "share one dtype"),
    (lambda a, g: (a[:, :0], g[:, :, :0]), ValueError, "empty"),
    (lambda a, g: (a.index_fill(2, torch.tensor([1]), float("nan")), g), ValueError, "acts contains"),
    (lambda a, g: (a, g.index_fill(3, torch.tensor([0]), float("inf"))), ValueError, "grads contains"),
    (lambda a, g: ("not a tensor", g), TypeError, "acts must be a torch.Tensor"),
])
def test_pool_errors(mutate, exc, match):
    a, g, grid = _inputs()
    a, g = mutate(a, g)
    with pytest.raises(exc, match=match):
        dcam.pool_gradients(a, g, grid)


def test_grid_must_match_span():
    a, g, _ = _inputs(h=5, w=4)
    with pytest.raises(ValueError, match="grid 4x4 = 16 tokens does not match .* 20 tokens"):
        dcam.pool_gradients(a, g, (4, 4))
    with pytest.raises(TypeError, match="grid"):
        dcam.pool_gradients(a, g, 20)


def test_check_finite_can_be_skipped():
    a, g, grid = _inputs()
    a[0, 0, 0] = float("nan")
    dcam.pool_gradients(a, g, grid, backend="torch", check_finite=False)  # no error raised


def test_unknown_backend_and_cpp_on_wrong_device():
    a, g, grid = _inputs()
    with pytest.raises(ValueError, match="backend must be one of"):
        dcam.pool_gradients(a, g, grid, backend="cuda")
    meta = (a.to("meta"), g.to("meta"))
    with pytest.raises(ValueError, match="backend='cpp' needs CPU tensors"):
        dcam.pool_gradients(*meta, grid, backend="cpp", check_finite=False)


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    a, g, grid = _inputs()
    with pytest.raises((ValueError, RuntimeError), match="triton"):
        dcam.pool_gradients(a, g, grid, backend="triton")


def test_devices_must_match():
    a, g, grid = _inputs()
    with pytest.raises(ValueError, match="one device"):
        dcam.pool_gradients(a, g.to("meta"), grid, check_finite=False)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(repeat_ratio=1.5), ValueError, "repeat_ratio must lie in"),
    (dict(repeat_ratio=-0.1), ValueError, "repeat_ratio"),
    (dict(repeat_ratio=torch.tensor([0.1, 2.0])), ValueError, "repeat_ratio"),
    (dict(steps=0), ValueError, "steps"),
    (dict(image_size=-3), ValueError, "image_size"),
    (dict(steps=torch.tensor([1.0, 2.0, 3.0])), ValueError, r"steps must be a scalar or have shape \[2\]"),
    (dict(steps=float("nan")), ValueError, "steps"),
    (dict(degenerate=torch.zeros(2, 3)), TypeError, "degenerate"),
    (dict(degenerate=torch.zeros(3, 2, dtype=torch.bool)), ValueError, "degenerate"),
    (dict(config=dcam.CamConfig(sicd="context")), ValueError, "context_weights"),
    (dict(config=dcam.CamConfig(sicd="context"), context_weights=-torch.ones(2, 3, 3)), ValueError,
     "non-negative"),
    (dict(config=dcam.CamConfig(sicd="context"), context_weights=torch.ones(2, 3, 2)), ValueError,
     "context_weights must have shape"),
    (dict(context_weights=torch.ones(2, 3, 3)), ValueError, "only used with"),
    (dict(config="fast"), TypeError, "config"),
])
def test_refine_errors(kw, exc, match):
    raw = torch.rand(2, 3, 5, 4)
    with pytest.raises(exc, match=match):
        dcam.refine(raw, **kw)


def test_refine_rejects_bad_maps():
    with pytest.raises(ValueError, match="raw_maps must have 4"):
        dcam.refine(torch.rand(3, 5, 4))
    bad = torch.rand(1, 1, 3, 3)
    bad[0, 0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="raw_maps contains"):
        dcam.refine(bad)
    with pytest.raises(TypeError, match="raw_maps"):
        dcam.refine(torch.ones(1, 1, 3, 3, dtype=torch.int64))


@pytest.mark.parametrize("field,value", [
    ("akd_kernel", 4), ("akd_kernel", 0), ("akd_kernel", "big"), ("akd", 1), ("sicd", "on"),
    ("dacg_percentiles", (90, 75)), ("dacg_percentiles", (90, 75, 80, 150)), ("dacg_sigma", 0.0),
    ("cba_weights", (0.1, float("nan"), 0.1, 0.1)), ("cba_floor", -1.0), ("grad_relu", "yes"),
])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dcam.CamConfig(**{field: value})


@pytest.mark.parametrize("backend", dcam.available_backends() + ["auto"])
@pytest.mark.parametrize("grad_relu", [True, False])
def test_nonfinite_gradients_raise_on_every_backend(backend, grad_relu):
    # the pooling pass checks the gradients itself (C++: within its one read of
    # them); every backend and both entry points raise the same error, -Inf
    # under grad_relu included (a plain relu would turn it into 0)
    a, g, grid = _inputs(B=2, T=3, h=3, w=3, D=20, seed=6)
    cfg = dcam.CamConfig(grad_relu=grad_relu)
    for bad, where in ((float("nan"), (1, 2, 8, 19)), (float("-inf"), (0, 0, 0, 0)), (float("inf"), (1, 1, 4, 7))):
        g2 = g.clone()
        g2[where] = bad
        g2[0, 1, 2, 3] = bad
        with pytest.raises(ValueError, match="grads contains 2 NaN/Inf value"):
            dcam.pool_gradients(a, g2, grid, grad_relu=grad_relu, backend=backend)
        with pytest.raises(ValueError, match="grads contains 2 NaN/Inf value"):
            dcam.diffusion_cam(a, g2, grid, cfg, backend=backend)
        # unchecked: the caller vouched for the input, nothing is looked at
        dcam.pool_gradients(a, g2, grid, grad_relu=grad_relu, backend=backend, check_finite=False)


def _cpp_pass_flag(a, g, grid):
    from dcam.backends import cpp_backend

    if not cpp_backend.is_available():
        return True
    return bool(cpp_backend.module().pool_gradients_cpp(a, g, grid[0], grid[1], True, True)[2])


def test_huge_finite_gradients_are_not_an_error():
    # finite gradients so large that a float32 partial sum of the C++ pass
    # overflows raise its flag; the exact recount clears them, as before
    a, g, grid = _inputs(B=1, T=1, h=4, w=4, D=8, seed=7)
    g = g.abs().clamp(0.5, 1.0) * 3e38
    assert bool(torch.isfinite(g).all())
    assert _cpp_pass_flag(a, g, grid)  # the pass did raise its flag
    out = dcam.pool_gradients(a, g, grid, backend="auto")
    assert out.maps.shape == (1, 1, 4, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_all_finite_matches_isfinite(dtype):
    # the one-pass min/max check finds every NaN/Inf wherever it sits
    from dcam.engine import all_finite

    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 16, 33, 1000, 4099):
        x = torch.randn(n, generator=g).to(dtype)
        assert all_finite(x)
        for bad in (float("nan"), float("inf"), float("-inf")):
            for i in {0, n // 2, n - 1, int(torch.randint(n, (1,), generator=g))}:
                y = x.clone()
                y[i] = bad
                assert not all_finite(y), (n, bad, i)
                assert not all_finite(y.view(1, n)[:, :].t())  # non-contiguous view
    edge = torch.tensor([-0.0, 0.0, torch.finfo(dtype).max, -torch.finfo(dtype).max, torch.finfo(dtype).tiny / 2],
                        dtype=dtype)
    assert all_finite(edge) and bool(torch.isfinite(edge).all())
    assert all_finite(torch.empty(0, dtype=dtype))


def test_config_apply_parses_settings():
    c = dcam.CamConfig().apply(["grad_relu=false", "akd_kernel=5", "dacg_percentiles=90,70,80,85", "sicd=context",
                                "cba_floor=0.25", "akd = no"])
    assert c == dcam.CamConfig(grad_relu=False, akd_kernel=5, dacg_percentiles=(90, 70, 80, 85), sicd="context",
                               cba_floor=0.25, akd=False)
    assert dcam.CamConfig(akd_kernel=7).apply(["akd_kernel=adaptive"]) == dcam.CamConfig()
    for bad, msg in (("grad_relu", "name=value"), ("colour=red", "no field 'colour'"),
                     ("grad_relu=maybe", "CamConfig.grad_relu"), ("akd_kernel=4", "akd_kernel"),
                     ("dacg_std=abc", "CamConfig.dacg_std"), ("dacg_percentiles=90,75", "dacg_percentiles")):
        with pytest.raises(ValueError, match=msg):
            dcam.CamConfig().apply([bad])


def test_config_replace_and_op_args():
    c = dcam.CamConfig().replace(akd_kernel=5, sicd="off")
    assert c.op_args()["akd_kernel"] == 5 and c.op_args()["sicd"] == 0
    assert dcam.CamConfig().op_args()["akd_kernel"] == 0
    with pytest.raises(ValueError, match="no field"):
        dcam.CamConfig().replace(colour="red")


# ------------------------------------------------------------------ results

def test_unbatched_inputs_and_low_precision():
    a, g, grid = _inputs(B=1)
    ref = dcam.pool_gradients(a, g, grid, backend="torch")
    un = dcam.pool_gradients(a[0], g[0], grid, backend="torch")
    assert torch.equal(ref.maps, un.maps)
    for dt in (torch.float16, torch.bfloat16):
        lo = dcam.pool_gradients(a.to(dt), g.to(dt), grid, backend="torch")
        assert lo.maps.dtype == torch.float32
        exp = R.pool_gradients_reference(a.to(dt).float(), g.to(dt).float(), *grid)[0]
        torch.testing.assert_close(lo.maps, exp, atol=1e-5, rtol=0)


def test_fused_equals_two_calls_and_rawmaps_carry_degenerate():
    a, g, grid = _inputs()
    g[1, 2] = 0  # a token with no gradient: degenerate
    cfg = dcam.CamConfig()
    raw = dcam.pool_gradients(a, g, grid)
    assert raw.degenerate.tolist() == [[False] * 3, [False, False, True]]
    two = dcam.refine(raw, cfg, steps=torch.tensor([16.0, 64.0]), image_size=384, repeat_ratio=0.25)
    one = dcam.diffusion_cam(a, g, grid, cfg, steps=torch.tensor([16.0, 64.0]), image_size=384,
                             repeat_ratio=0.25)
    for k in ("maps", "kernel_size", "dacg_strategy", "dacg_threshold", "cba_threshold", "sicd_alpha",
              "degenerate"):
        assert torch.equal(getattr(one, k), getattr(two, k)), k
    assert (one.maps[1, 2] == 0).all() and one.dacg_strategy[1, 2] == -1
    assert set(one.stats()) == {"kernel_size", "dacg_strategy", "dacg_threshold", "cba_threshold",
                                "sicd_alpha", "degenerate"}


@pytest.mark.parametrize("backend", dcam.available_backends())
def test_every_backend_matches_reference(backend):
    a, g, grid = _inputs(B=2, T=3, h=9, w=7, D=16, seed=4)
    cfg = dcam.CamConfig()
    kw = dict(steps=torch.tensor([12.0, 40.0]), image_size=torch.tensor([300.0, 700.0]),
              repeat_ratio=torch.tensor([0.0, 0.5]))
    ref = dcam.diffusion_cam(a, g, grid, cfg, backend="torch", **kw)
    got = dcam.diffusion_cam(a, g, grid, cfg, backend=backend, **kw)
    torch.testing.assert_close(got.maps, ref.maps, atol=1e-5, rtol=0)
    for k in ("kernel_size", "dacg_strategy", "degenerate"):
        assert torch.equal(getattr(got, k), getattr(ref, k)), k
    for k in ("dacg_threshold", "cba_threshold", "sicd_alpha"):
        torch.testing.assert_close(getattr(got, k), getattr(ref, k), atol=1e-5, rtol=0)


def test_auto_on_cpu_matches_reference():
    a, g, grid = _inputs(seed=9)
    ref = dcam.diffusion_cam(a, g, grid, backend="torch")
    got = dcam.diffusion_cam(a, g, grid)
    torch.testing.assert_close(got.maps, ref.maps, atol=1e-5, rtol=0)


def test_available_backends_lists_torch_first():
    names = dcam.available_backends()
    assert names[0] == "torch" and set(names) <= {"torch", "cpp", "triton"}


# ------------------------------------------------------------------ the registered ops

def test_opcheck_both_ops():
    a, g, grid = _inputs()
    for check in (False, True):
        torch.library.opcheck(torch.ops.dcam.pool_gradients.default, (a, g, grid[0], grid[1], True, check))
    raw = dcam.pool_gradients(a, g, grid)
    o = dcam.CamConfig().op_args()
    args = (raw.maps, raw.degenerate, torch.tensor([16.0, 64.0]), torch.tensor([512.0, 512.0]),
            torch.tensor([0.0, 0.1]), None, None, o["akd_kernel"], True, True, True, 1, o["dacg_params"],
            o["cba_params"])
    torch.library.opcheck(torch.ops.dcam.refine.default, args)
    ctx_args = args[:5] + (raw.maps, torch.rand(2, 3, 3)) + args[7:11] + (2,) + args[12:]
    torch.library.opcheck(torch.ops.dcam.refine.default, ctx_args)


def test_torch_compile_fullgraph():
    a, g, grid = _inputs()
    ref = dcam.diffusion_cam(a, g, grid, steps=24, backend="torch")
    fn = torch.compile(lambda a, g: dcam.diffusion_cam(a, g, grid, steps=24, check_finite=False).maps,
                       fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(a, g), ref.maps, atol=1e-5, rtol=0)


def test_missing_cpp_extension_warns_once_and_uses_reference(monkeypatch):
    from dcam import _ops
    from dcam.backends import cpp_backend

    monkeypatch.setattr(cpp_backend, "is_available", lambda: False)
    monkeypatch.setattr(cpp_backend, "unavailable_reason", lambda: "ImportError: simulated")
    monkeypatch.setattr(_ops, "_warned", False)
    a, g, grid = _inputs(seed=5)
    ref = dcam.diffusion_cam(a, g, grid, backend="torch")
    with pytest.warns(RuntimeWarning, match="C\\+\\+ CPU backend is not available .*simulated"):
        got = dcam.diffusion_cam(a, g, grid)
    torch.testing.assert_close(got.maps, ref.maps, atol=0, rtol=0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dcam.diffusion_cam(a, g, grid)  # warned once only
    assert "cpp" not in dcam.available_backends()
