"""What only the C++ backend (dcam._C through dcam.ops.cpp) has: its AKD test
hook, the per-window sort path it picks by itself for large maps, the NaN/Inf
flag of its gradient pass at every position of its blocked loops, the flag
raised by huge finite gradients, and the fallback (with one warning) when the
extension is not built. Its agreement with the reference on every scenario
and every AKD implementation is in test_scenarios.py and test_fuzz.py."""
import warnings

import numpy as np
import pytest
import torch

import dcam
from dcam.ops import cpp as C
from dcam.ops import library, reference

NEEDS_CPP = pytest.mark.skipif(not C.is_available(), reason=f"dcam._C is not built ({C.unavailable_reason()})")


@NEEDS_CPP
def test_extension_version_is_the_packages():
    assert C._C.version() == dcam.__version__


@NEEDS_CPP
def test_akd_path_hook_rejects_unknown_paths():
    for bad in (-1, 4):
        with pytest.raises(ValueError, match="path must be 0"):
            C._C._set_akd_path(bad)
    C._C._set_akd_path(0)


def _refine_args(raw, **over):
    cfg = dcam.CamConfig(**over).op_args()
    B, T = raw.shape[:2]
    return (raw, torch.zeros(B, T, dtype=torch.bool), torch.full((B,), 64.0), torch.full((B,), 512.0),
            torch.full((B,), 0.1), None, None, cfg["akd_kernel"], cfg["akd"], cfg["dacg"], cfg["cba"], cfg["sicd"],
            cfg["dacg_params"], cfg["cba_params"])


@NEEDS_CPP
def test_large_map_takes_the_sort_path_and_matches_the_reference():
    # the automatic AKD choice for k = 13 (above the sorting networks' k <= 11) on a map whose
    # padded grid (188 x 202 cells, 594 64-bit words) is too large for the rank bitsets (512
    # words): the per-window sort, which test_scenarios.py otherwise only reaches by force
    g = torch.Generator().manual_seed(19)
    yy, xx = torch.meshgrid(torch.arange(176.0), torch.arange(190.0), indexing="ij")
    raw = torch.exp(-((yy - 80) ** 2 + (xx - 100) ** 2) / 2000.0) + 0.15 * torch.rand(176, 190, generator=g)
    raw = ((raw - raw.min()) / (raw.max() - raw.min())).reshape(1, 1, 176, 190)
    args = _refine_args(raw, akd_kernel=13, dacg=False, cba=False, sicd="off")  # k = 13: no sorting network
    ref = reference.refine_reference(*args)
    got = C.refine_cpp(*args)
    assert got[1].item() == 13
    assert (got[0] - ref[0]).abs().max().item() <= 1e-5


@NEEDS_CPP
def test_nonfinite_maps_are_an_error_type_of_their_own():
    # refine_cpp tells NaN/Inf maps (an InputError naming the argument) from the extension's other refusals
    # by this type; it matched the message text before
    raw = torch.rand(1, 2, 4, 5)
    raw[0, 1, 2, 3] = float("inf")
    args = _refine_args(raw)
    arrays = (C._f32(raw), np.zeros((1, 2), np.bool_), *(np.full(1, v, np.float32) for v in (64.0, 512.0, 0.1)))
    options = (None, None, *(args[7:12]), [float(v) for v in args[12]], [float(v) for v in args[13]])
    with pytest.raises(C._C.NonFiniteMapsError) as err:
        C._C.refine(*arrays, *options)
    assert isinstance(err.value, ValueError) and str(err.value) == "dcam_refine: NaN or Inf in the maps"
    with pytest.raises(dcam.InputError) as err:
        C.refine_cpp(*args)
    assert str(err.value) == ("dcam::refine: raw holds NaN or Inf, which the C++ kernel refuses (dcam.refine "
                              "checks values before any kernel)")
    # another refusal of the extension (here a parameter list one short, which the op's checks keep from it)
    # is its plain ValueError, raised as it is: a bug of the caller, not bad input
    with pytest.raises(ValueError, match="^dacg_params must have 8 values and cba_params 5$") as err:
        C._C.refine(*arrays, *options[:-2], options[-2][:7], options[-1])
    assert type(err.value) is ValueError
    short = args[:12] + (args[12][:7], args[13])
    with pytest.raises(ValueError, match="^dacg_params must have 8 values and cba_params 5$") as err:
        C.refine_cpp(*(a.nan_to_num(posinf=0.5) if i == 0 else a for i, a in enumerate(short)))
    assert type(err.value) is ValueError


@NEEDS_CPP
def test_refine_cpp_needs_context_weights_in_context_mode():
    with pytest.raises(ValueError, match="context_weights"):
        C.refine_cpp(*_refine_args(torch.rand(1, 2, 8, 8), sicd="context"))


def _pool_inputs(B, T, h, w, D, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, h * w, D, generator=g), torch.randn(B, T, h * w, D, generator=g) + 0.3


@NEEDS_CPP
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("grad_relu", [True, False])
def test_pooling_pass_finds_every_nonfinite_gradient(dtype, grad_relu):
    # the checked pass flags a NaN/+Inf/-Inf wherever it sits: vector body, column tails,
    # 8-row groups and their remainder rows (-Inf under grad_relu is the case a plain relu
    # would hide); the unchecked pass does not look
    gen = torch.Generator().manual_seed(36)
    for T, h, w, D in ((2, 3, 3, 37), (1, 4, 5, 64), (3, 1, 1, 17)):
        acts, grads = _pool_inputs(1, T, h, w, D, seed=37)
        acts, grads = acts.to(dtype), grads.to(dtype)
        N = h * w
        assert not C.pool_gradients_cpp(acts, grads, h, w, grad_relu, check_grads=True)[2]
        spots = {(0, 0, 0), (T - 1, N - 1, D - 1), (0, N - 1, 0), (T - 1, 0, D - 1)}
        spots |= {tuple(int(torch.randint(k, (1,), generator=gen)) for k in (T, N, D)) for _ in range(6)}
        for bad in (float("nan"), float("inf"), float("-inf")):
            for t, n, d in spots:
                g = grads.clone()
                g[0, t, n, d] = bad
                assert C.pool_gradients_cpp(acts, g, h, w, grad_relu, check_grads=True)[2], (bad, t, n, d)
                assert not C.pool_gradients_cpp(acts, g, h, w, grad_relu)[2]
                assert C.channel_weights_cpp(g, grad_relu, check_grads=True)[1], (bad, t, n, d)
                assert not C.channel_weights_cpp(g, grad_relu)[1]


@NEEDS_CPP
def test_huge_finite_gradients_raise_the_pass_flag_not_the_nan_error():
    # finite gradients so large that a float32 partial sum of the pass overflows raise its
    # flag; the API's exact recount finds no NaN/Inf, so the error is the overflow's (the
    # weights are infinite), not a NaN/Inf count of grads
    acts, grads = _pool_inputs(1, 1, 4, 4, 8, seed=7)
    grads = grads.abs().clamp(0.5, 1.0) * 3e38
    assert bool(torch.isfinite(grads).all())
    assert bool(C.pool_gradients_cpp(acts, grads, 4, 4, True, True)[2])
    with pytest.raises(dcam.InputError, match="^grads: finite, but summed over the image tokens they overflow float32"):
        dcam.pool_gradients(acts, grads, (4, 4), backend="cpp")


def test_missing_cpp_extension_warns_once_and_uses_the_reference(monkeypatch):
    from dcam.ops.backends import cpp_backend

    monkeypatch.setattr(cpp_backend, "is_available", lambda: False)
    monkeypatch.setattr(cpp_backend, "unavailable_reason", lambda: "ImportError: simulated")
    monkeypatch.setattr(library, "_warned", {})

    def forbidden(*args, **kw):
        raise AssertionError("the C++ kernel ran although the extension is 'missing'")
    monkeypatch.setattr(C, "pool_gradients_cpp", forbidden)
    monkeypatch.setattr(C, "refine_cpp", forbidden)
    g = torch.Generator().manual_seed(5)
    a, gr = torch.randn(2, 20, 8, generator=g), torch.randn(2, 3, 20, 8, generator=g)
    ref = dcam.diffusion_cam(a, gr, (5, 4), backend="torch")
    with pytest.warns(RuntimeWarning, match=r"C\+\+ CPU backend is not available .*simulated"):
        got = dcam.diffusion_cam(a, gr, (5, 4))
    torch.testing.assert_close(got.maps, ref.maps, atol=0, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dcam.diffusion_cam(a, gr, (5, 4))  # warned once only
    assert "cpp" not in dcam.available_backends()
    with pytest.raises(RuntimeError, match="backend='cpp' is not available"):
        dcam.pool_gradients(a, gr, (5, 4), backend="cpp")


def _np_raw_weighted(A, w):
    """float64 oracle of the raw pooled sums from channel weights: A [N, D], w [T, D] -> [T, N]."""
    A, w = A.astype(np.float64), w.astype(np.float64)
    return np.maximum(A[None, :, :] * w[:, None, :], 0).mean(axis=2)


def _np_raw(A, G, grad_relu):
    """float64 oracle of the raw pooled sums: A [N, D], G [T, N, D] -> [T, N]."""
    G = G.astype(np.float64)
    return _np_raw_weighted(A, (np.maximum(G, 0) if grad_relu else G).mean(axis=1))


def _np_normalised(raw):
    """Min-max normalised oracle maps [T, N] (a constant map all 0) and the degenerate flags [T]."""
    lo, hi = raw.min(axis=1, keepdims=True), raw.max(axis=1, keepdims=True)
    return np.where(hi > lo, (raw - lo) / (hi - lo + 1e-8), 0.0), ~(hi > lo)[:, 0]


@NEEDS_CPP
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grad_relu", [True, False])
def test_both_product_kernels_and_their_tails_match_float64(dtype, grad_relu):
    # Tables of up to 16 tokens take the dot-product kernel on AVX2 CPUs, larger ones the
    # compacting kernel (64 tokens a table; 65 leaves a 1-token table). The shapes put
    # features past the 16-wide vector body and past a 256-feature run, rows past the
    # 3- and 4-row blocks and the 32-row tasks, and tokens past the 2- and 4-token groups.
    # Each run is summed in float32 and the runs in float64, so the raw sums stay within a
    # few 1e-7 of the float64 oracle, relative: 2e-6 on maps normalised to [0, 1].
    gen = torch.Generator().manual_seed(41)
    for T, (h, w), D in ((1, (5, 7), 16), (3, (2, 3), 17), (5, (7, 5), 271), (16, (6, 6), 33),
                         (17, (5, 7), 15), (40, (9, 8), 530), (65, (3, 3), 64)):
        N = h * w
        A = torch.randn(1, N, D, generator=gen)
        A[torch.rand(1, N, D, generator=gen) < 0.2] = 0.0  # exact zeros: skipped or multiplied
        G = torch.randn(1, T, N, D, generator=gen) + 0.1
        A, G = A.to(dtype), G.to(dtype)
        maps = C.pool_gradients_cpp(A, G, h, w, grad_relu)[0].reshape(T, N).numpy()
        want, _ = _np_normalised(_np_raw(A[0].float().numpy(), G[0].float().numpy(), grad_relu))
        np.testing.assert_allclose(maps, want, atol=2e-6, rtol=0, err_msg=f"T={T} N={N} D={D}")


@NEEDS_CPP
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("signs", ["mixed", "nonneg", "nonpos"])
def test_product_from_given_weights_matches_float64(dtype, signs):
    # dcam_weighted_maps takes weights of any sign and picks the table kind from them:
    # non-negative weights the one-sided tables, any negative weight the two-sided ones;
    # both kernels (by table size) and their tails, as above, against the formula itself
    gen = torch.Generator().manual_seed(44)
    for T, (h, w), D in ((1, (5, 7), 16), (5, (7, 5), 271), (17, (5, 7), 15), (40, (9, 8), 530),
                         (65, (3, 3), 64)):
        N = h * w
        A = torch.randn(1, N, D, generator=gen)
        A[torch.rand(1, N, D, generator=gen) < 0.2] = 0.0
        W = torch.randn(1, T, D, generator=gen)
        W = {"mixed": W, "nonneg": W.abs(), "nonpos": -W.abs()}[signs]
        A = A.to(dtype)
        maps, deg = C.weighted_maps_cpp(A, W, h, w)
        want, want_deg = _np_normalised(_np_raw_weighted(A[0].float().numpy(), W[0].numpy()))
        np.testing.assert_allclose(maps.reshape(T, N).numpy(), want, atol=2e-6, rtol=0, err_msg=f"T={T} D={D}")
        assert deg[0].tolist() == want_deg.tolist()


@NEEDS_CPP
@pytest.mark.parametrize("at", [0, 2047, 2048, 3 * 3000 - 1])
def test_one_negative_weight_anywhere_makes_the_product_signed(at):
    # weighted_maps looks for a negative weight in blocks of 2048 (the last one short): one
    # anywhere, first or last of a block or of the whole [T, D], must select the two-sided
    # tables, or that token's negative activations would be skipped (a wrong map)
    gen = torch.Generator().manual_seed(at)
    T, h, w, D = 3, 4, 5, 3000
    A = torch.randn(1, h * w, D, generator=gen)
    W = torch.rand(1, T, D, generator=gen)
    W.view(-1)[at] = -4.0
    maps, _ = C.weighted_maps_cpp(A, W, h, w)
    want, _ = _np_normalised(_np_raw_weighted(A[0].numpy(), W[0].numpy()))
    np.testing.assert_allclose(maps.reshape(T, h * w).numpy(), want, atol=2e-6, rtol=0)
    skipped, _ = _np_normalised(_np_raw_weighted(A[0].numpy(), np.maximum(W[0].numpy(), 0)))
    assert np.abs(want - skipped).max() > 1e-3  # the negative weight matters to the map


@NEEDS_CPP
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grad_relu", [True, False])
def test_weights_in_chunks_then_one_product_equal_one_call_exactly(dtype, grad_relu):
    # the explainer's streamed path: the weights of each chunk of tokens as it arrives, one
    # product for all tokens at the end; the same sums in the same order as one call (with
    # signed weights one call uses tables of 32 tokens and given weights tables of 64, but at
    # T=70 every token takes the same kernel in both: the compacting one for the first 64,
    # the dot-product one for the 6 left)
    gen = torch.Generator().manual_seed(45)
    T, h, w, D = 70, 6, 7, 100
    A = torch.randn(2, h * w, D, generator=gen).to(dtype)
    G = torch.randn(2, T, h * w, D, generator=gen).to(dtype)
    one_call = C.pool_gradients_cpp(A, G, h, w, grad_relu)
    for chunk in (1, 8, 16, 70):
        W = torch.cat([C.channel_weights_cpp(G[:, c:c + chunk], grad_relu)[0] for c in range(0, T, chunk)], 1)
        maps, deg = C.weighted_maps_cpp(A, W, h, w)
        torch.testing.assert_close(maps, one_call[0], atol=0, rtol=0, msg=f"chunk {chunk}")
        assert torch.equal(deg, one_call[1])


@NEEDS_CPP
def test_pooling_from_several_threads_at_once_equals_one_at_a_time():
    # each calling thread keeps its own scratch block between calls (grown by a larger call);
    # calls from several threads at once, of changing sizes, give the maps of sequential calls
    from concurrent.futures import ThreadPoolExecutor

    gen = torch.Generator().manual_seed(43)
    jobs = []
    for i, (T, h, w, D) in enumerate([(3, 4, 5, 40), (20, 6, 6, 70), (1, 2, 2, 8), (70, 5, 5, 33)] * 3):
        A = torch.randn(1, h * w, D, generator=gen).to(torch.bfloat16 if i % 2 else torch.float32)
        G = torch.randn(1, T, h * w, D, generator=gen).to(A.dtype)
        jobs.append((A, G, h, w, i % 3 != 0))
    alone = [C.pool_gradients_cpp(*job)[0] for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as ex:
        for _ in range(3):
            together = list(ex.map(lambda job: C.pool_gradients_cpp(*job)[0], jobs))
            for a, b in zip(alone, together):
                torch.testing.assert_close(b, a, atol=0, rtol=0)


def test_a_backend_that_will_not_load_says_why(monkeypatch):
    # "dcam.ops.cpp.is_available() is false" hid the extension's own ImportError ("file too short")
    from dcam.ops.backends import LazyBackend

    monkeypatch.setattr(C, "is_available", lambda: False)
    monkeypatch.setattr(C, "unavailable_reason", lambda: "ImportError: _C.so: file too short")
    assert LazyBackend("dcam.ops.cpp", "is_available").unavailable_reason() == "ImportError: _C.so: file too short"


OUT_OF_MEMORY = r"""
import resource, torch, dcam
raw = torch.rand(1, 1, 3072, 3072)
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
cap = vm + (200 << 20)  # the input is in; AKD's scratch for a 3072 x 3072 map is not
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
try:
    dcam.refine(raw, dcam.CamConfig(akd_kernel=3), backend="cpp", check_finite=False)
    print("no error")
except MemoryError as exc:
    print("MemoryError", exc)
small = torch.rand(1, 2, 6, 6)
print(float((dcam.refine(small, backend="cpp").maps - dcam.refine(small, backend="torch").maps).abs().max()))
"""


@NEEDS_CPP
def test_out_of_memory_in_refine_is_a_memory_error_and_the_process_goes_on():
    # bad_alloc crossed the multi-versioned kernels uncaught: std::terminate (a segfault from Python);
    # and DCAM_ENOMEM came back as a ValueError, as if an argument were wrong
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0] == "MemoryError dcam_refine: out of memory" and float(lines[1]) == 0.0


STALE = r"""
import sys, warnings, torch
import dcam._C as ext
if sys.argv[1] == "none":
    del ext.INTERFACE_VERSION      # as a dcam._C built before its interface had a version
else:
    ext.INTERFACE_VERSION = int(sys.argv[1])
import dcam
from dcam.ops import cpp
print(cpp.is_available())
print(cpp.unavailable_reason())
raw = torch.rand(1, 2, 4, 5)
try:
    dcam.refine(raw, backend="cpp")
except RuntimeError as exc:
    print(exc)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    same = torch.equal(dcam.refine(raw).maps, dcam.refine(raw, backend="torch").maps)
print(same, len(caught), caught[0].message if caught else None)
raw[0, 1, 2, 3] = float("nan")
try:
    cpp.refine_cpp(raw, torch.zeros(1, 2, dtype=torch.bool), *[torch.ones(1)] * 3, None, None, 3, True, True,
                   True, 0, [0.0] * 8, [0.0] * 5)
except RuntimeError as exc:
    print(exc)
"""


@NEEDS_CPP
@pytest.mark.parametrize("built", ["none", "0"])
def test_an_extension_of_another_interface_version_counts_as_not_built(built):
    # a dcam._C left from older sources (an editable install not rebuilt) lacked NonFiniteMapsError: every
    # ValueError of refine_cpp became AttributeError "module 'dcam._C' has no attribute 'NonFiniteMapsError'"
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", STALE, built], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    why = (f"stale build: {C._C.__file__} has interface version "
           f"{'none (built before versions)' if built == 'none' else built}, these sources need "
           f"{C.INTERFACE_VERSION}; rebuild: python setup.py build_ext --inplace")
    assert C.INTERFACE_VERSION == C._C.INTERFACE_VERSION == 2  # (this process's extension: built from these sources)
    assert res.stdout.splitlines() == [
        "False", why, f"backend='cpp' is not available: {why}",
        # the reference runs, said once
        f"True 1 dcam: the C++ CPU backend is not available ({why}); CPU tensors use the slower PyTorch reference.",
        f"dcam._C is not available ({why})"]  # (the NaN map reached the extension: AttributeError)
