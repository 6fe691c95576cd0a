"""What only the Triton backend has: the NaN/Inf flag of its gradient pass
across D blocks and N tiles, its own argument errors, launchers that trace
into nothing but allocations and kernel launches, and kernels that compile
for an H100 (sm_90) ahead of time. Its agreement with the reference is in
test_scenarios.py and test_fuzz.py.

Where there is no GPU the kernels run in Triton's CPU interpreter
(TRITON_INTERPRET=1, set by tests/conftest.py before triton is imported)."""
import inspect

import numpy as np
import pytest
import torch

import dcam
from dcam.errors import InputError

pytestmark = pytest.mark.skipif("triton" not in dcam.available_backends(),
                                reason="the Triton backend needs the triton package and a GPU or TRITON_INTERPRET=1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def TL():
    from dcam.ops import triton_launch

    yield triton_launch


def _inputs(B, T, h, w, D, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, h * w, D, generator=g).to(DEVICE), torch.randn(B, T, h * w, D, generator=g).to(DEVICE)


def test_interpreter_or_gpu():
    """The kernels run compiled on a GPU, and in the interpreter only where there is none."""
    from dcam.kernels import refine

    interpreted = type(refine._refine_kernel).__name__ == "InterpretedFunction"
    assert interpreted == (not torch.cuda.is_available())


@pytest.mark.parametrize("grad_relu", [True, False])
def test_pool_pass_flags_nonfinite_gradients(TL, grad_relu):
    # several D blocks (D = 150 > 128) and N tiles: a NaN/Inf anywhere raises the flag,
    # -Inf under grad_relu included; the checked pass returns the unchecked pass's maps
    acts, grads = _inputs(1, 2, 5, 8, 150, seed=9)
    m0, d0, f0 = TL.pool_gradients_triton(acts, grads, 5, 8, grad_relu)
    m1, d1, f1 = TL.pool_gradients_triton(acts, grads, 5, 8, grad_relu, True)
    assert torch.equal(m0, m1) and torch.equal(d0, d1) and not bool(f0) and not bool(f1)
    for bad, where in ((float("nan"), (0, 1, 39, 149)), (float("-inf"), (0, 0, 33, 130)),
                       (float("inf"), (0, 1, 0, 0)), (float("nan"), (0, 0, 0, 127))):
        g = grads.clone()
        g[where] = bad
        assert bool(TL.pool_gradients_triton(acts, g, 5, 8, grad_relu, True)[2]), (bad, where)
        assert not bool(TL.pool_gradients_triton(acts, g, 5, 8, grad_relu)[2])  # unchecked: not looked at


def test_weighted_maps_negative_side_per_tile(TL):
    # the product runs the negative side only for the (token, feature) tiles that hold a
    # negative weight (64 tokens x 32 features): here one tile does, the others must skip
    # it without changing a value; checked against the formula in float64
    g = torch.Generator().manual_seed(12)
    N, D, T = 20, 96, 70  # 3 feature tiles, 2 token tiles
    A = torch.randn(1, N, D, generator=g)
    W = torch.rand(1, T, D, generator=g)
    W[0, 5, 40] = -2.0  # token tile 0, feature tile 1
    maps, deg = TL.weighted_maps_triton(A.to(DEVICE), W.to(DEVICE), 4, 5)
    a64, w64 = A[0].double().numpy(), W[0].double().numpy()
    raw = np.maximum(a64[None] * w64[:, None], 0).mean(axis=2)
    lo, hi = raw.min(axis=1, keepdims=True), raw.max(axis=1, keepdims=True)
    np.testing.assert_allclose(maps.cpu().reshape(T, N).numpy(), (raw - lo) / (hi - lo + 1e-8), atol=2e-6)
    assert not deg.any()
    # the negative weight matters: without its negative side token 5's map would differ
    W2 = W.clone()
    W2[0, 5, 40] = 0.0
    assert not torch.allclose(maps[0, 5], TL.weighted_maps_triton(A.to(DEVICE), W2.to(DEVICE), 4, 5)[0][0, 5],
                              atol=1e-3)


def _refine_args(B=1, T=2, h=4, w=4, **over):
    cfg = dcam.CamConfig(**over).op_args()
    raw = torch.rand(B, T, h, w, generator=torch.Generator().manual_seed(20)).to(DEVICE)
    return (raw, torch.zeros(B, T, dtype=torch.bool, device=DEVICE), torch.full((B,), 16.0, device=DEVICE),
            torch.full((B,), 512.0, device=DEVICE), torch.zeros(B, device=DEVICE), None, None,
            cfg["akd_kernel"], cfg["akd"], cfg["dacg"], cfg["cba"], cfg["sicd"], cfg["dacg_params"], cfg["cba_params"])


def test_refine_launcher_argument_errors(TL):
    args = list(_refine_args(sicd="context"))
    with pytest.raises(InputError, match="context_weights"):
        TL.refine_triton(*args)
    args = list(_refine_args())
    args[11] = 3
    with pytest.raises(InputError, match="sicd must be 0"):
        TL.refine_triton(*args)
    args = list(_refine_args())
    args[12] = args[12][:7]
    with pytest.raises(InputError, match="dacg_params"):
        TL.refine_triton(*args)


def test_launchers_are_traceable_shapes_only():
    """No host sync or data-dependent Python in the launchers (torch.compile
    traces them inside torch.library.triton_op)."""
    from dcam.ops import triton_launch

    for fn in (triton_launch.pool_gradients_triton, triton_launch.channel_weights_triton,
               triton_launch.weighted_maps_triton, triton_launch._grad_mean, triton_launch._maps_from_weights,
               triton_launch.refine_triton):
        src = inspect.getsource(fn)
        for bad in (".item(", ".tolist(", ".cpu(", ".numpy(", "synchronize"):
            assert bad not in src, (fn.__name__, bad)
    for fn in (triton_launch._grad_mean, triton_launch._maps_from_weights, triton_launch.refine_triton):
        assert "wrap_triton(" in inspect.getsource(fn)


def test_launchers_trace_and_build_for_sm90(sm90_build_check):
    """tests/ops/sm90_build_check.py in a fresh Python without the interpreter: the
    launchers trace (make_fx, fake tensors) into nothing but allocations and kernel
    launches, and every launch they make compiles for an H100 (sm_90) down to a
    cubin. No GPU is needed. With a cold Triton cache the compiles take ~20 s here,
    so conftest.py starts it in the background when the session starts and this
    test collects its result."""
    returncode, out = sm90_build_check()
    assert returncode == 0, out
    if out.startswith("SKIP"):
        pytest.skip(out.strip())
    assert "traced 7" in out and "compiled 14" in out, out


@pytest.mark.parametrize("over", [dict(), dict(akd_kernel=3, dacg=False), dict(sicd="context")],
                         ids=["adaptive", "fixed-akd-only", "context"])
def test_refine_runs_without_floating_point_warnings(over):
    # under TRITON_INTERPRET=1 every AKD refine warned "divide by zero" (1 / (2 sigma^2) = inf, intended, on
    # constant windows and masked-off lanes) and "invalid value" (inf * 0, 0 / 0): with warnings as errors
    # (pytest's filterwarnings = error) the interpreter raised InterpreterError. A map with a constant block
    # (sigma = 0) and odd sizes (masked-off lanes); the values are the reference's
    import warnings

    raw = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(4))
    raw[0, 1, :3, :4] = 0.25
    raw[1, 0] = 0.0
    kw = dict(context_weights=(torch.ones(2, 3, 3) - torch.eye(3)).to(DEVICE)) if over.get("sicd") else {}
    config = dcam.CamConfig(**over)
    with warnings.catch_warnings(), np.errstate(divide="warn", over="warn", invalid="warn", under="ignore"):  # numpy's
        warnings.simplefilter("error")
        got = dcam.refine(raw.to(DEVICE), config=config, backend="triton", **kw)
    want = dcam.refine(raw, config=config, backend="torch", **{k: v.cpu() for k, v in kw.items()})
    torch.testing.assert_close(got.maps.cpu(), want.maps, atol=1e-5, rtol=0)
    assert torch.equal(got.kernel_size.cpu(), want.kernel_size)
