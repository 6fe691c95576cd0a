"""The C++ CPU backend (`dcam._C` through `dcam.backends.cpp`) against the
PyTorch reference: maps at float32 atol 1e-5, integer statistics equal, float
statistics at atol 1e-5, on random batches and on the edge cases of the math
contract (degenerate maps, tiny and strip-shaped maps, ties, kernel caps, every
DACG branch, CBA/SICD corner cases, module switches, SICD context mode, pooling
dtypes)."""
import math

import pytest
import torch

from dcam import reference as R
from dcam.backends import cpp as C
from dcam.config import CamConfig

pytestmark = pytest.mark.skipif(not C.is_available(),
                                reason=f"dcam._C is not built ({C.unavailable_reason()})")

ATOL = 1e-5
DEFAULT = CamConfig().op_args()


def _args(raw, deg=None, steps=None, image_size=None, repeat_ratio=None, context_maps=None,
          context_weights=None, **over):
    B, T = raw.shape[:2]
    cfg = dict(DEFAULT)
    cfg.update(over)
    if deg is None:
        deg = torch.zeros(B, T, dtype=torch.bool)
    steps = torch.full((B,), 64.0) if steps is None else torch.as_tensor(steps, dtype=torch.float32)
    image_size = torch.full((B,), 512.0) if image_size is None else torch.as_tensor(image_size, dtype=torch.float32)
    repeat_ratio = (torch.full((B,), 0.1) if repeat_ratio is None
                    else torch.as_tensor(repeat_ratio, dtype=torch.float32))
    return (raw, deg, steps, image_size, repeat_ratio, context_maps, context_weights,
            cfg["akd_kernel"], cfg["akd"], cfg["dacg"], cfg["cba"], cfg["sicd"],
            cfg["dacg_params"], cfg["cba_params"])


NAMES = ["maps", "kernel_size", "dacg_strategy", "dacg_threshold", "cba_threshold", "sicd_alpha"]


def _map_ok(ref, got, tol=ATOL):
    """[B, T] bool: the map (within tol, per map) and its statistics agree."""
    tol = torch.as_tensor(tol)
    ok = (got[0] - ref[0]).abs().flatten(2).max(dim=2).values <= tol
    for r, g in zip(ref[1:], got[1:]):
        ok &= (g == r) if r.dtype == torch.int32 else ((g - r).abs() <= ATOL)
    return ok


def check_refine(raw, **kw):
    """Run both backends, assert agreement, return the C++ outputs.

    Every map must agree with the reference at atol 1e-5, its integer statistics
    exactly and its float statistics at atol 1e-5. Both follow the same rounding
    model (reductions in float64, rounded once; see dcam.reference), so DACG's
    gate and strategy thresholds see the same values in both."""
    args = _args(raw, **kw)
    ref = R.refine_reference(*args)
    got = C.refine_cpp(*args)
    for name, r, g in zip(NAMES, ref, got):
        assert g.dtype == r.dtype, name
        assert g.shape == r.shape, name
    ok = _map_ok(ref, got)
    if not ok.all():
        b, t = (~ok).nonzero()[0].tolist()
        lines = [f"{int((~ok).sum())} of {ok.numel()} maps disagree with the reference; first ({b},{t}):"]
        for name, r, g in zip(NAMES, ref, got):
            lines.append(f"  {name}: max |diff| {(g[b, t].float() - r[b, t].float()).abs().max().item():.3g}")
        raise AssertionError("\n".join(lines))
    return got


def normalised(x):
    B, T = x.shape[:2]
    f = x.reshape(B, T, -1)
    lo, hi = f.min(dim=2, keepdim=True).values, f.max(dim=2, keepdim=True).values
    return ((f - lo) / (hi - lo + 1e-8)).reshape(x.shape)


def blobs(B, T, h, w, seed, noise=0.15):
    """Smooth CAM-like maps: a few Gaussian blobs plus noise, normalised to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    m = torch.zeros(B, T, h, w)
    for _ in range(3):
        cy = torch.rand(B, T, 1, 1, generator=g) * h
        cx = torch.rand(B, T, 1, 1, generator=g) * w
        s = 1.0 + torch.rand(B, T, 1, 1, generator=g) * max(h, w) / 3
        m = m + torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    m = m + noise * torch.rand(B, T, h, w, generator=g)
    return normalised(m)


# ------------------------------------------------------------------ refine: random batches

@pytest.mark.parametrize("seed", [0, 1])
def test_random_uniform_batch(seed):
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(2, 5, 24, 24, generator=g)
    out = check_refine(raw, steps=[64.0, 32.0], image_size=[512.0, 768.0], repeat_ratio=[0.1, 0.4])
    assert set(out[1].flatten().tolist()) <= {3, 5, 7, 9, 11}


def test_random_blobs_batch():
    check_refine(blobs(3, 4, 24, 24, seed=3), steps=[64.0, 16.0, 8.0], image_size=[512.0, 512.0, 1024.0])


@pytest.mark.parametrize("sicd", ["off", "reference", "context"])
def test_many_smooth_maps_every_sicd_mode(sicd):
    # smooth maps put many pixels on AKD's median plateaus and right at DACG's
    # percentile: the case where float32 summation noise used to flip the gate
    B, T = 4, 32
    raw = blobs(B, T, 24, 24, seed=11)
    code = {"off": 0, "reference": 1, "context": 2}[sicd]
    kw = dict(context_weights=_context_weights(B, T, 5)) if sicd == "context" else {}
    check_refine(raw, sicd=code, repeat_ratio=[0.1, 0.3, 0.0, 0.6], **kw)


def test_sparse_maps_wide_rank_weights():
    # mostly near-zero values: large coefficient of variation, nearly uniform rank weights
    g = torch.Generator().manual_seed(5)
    raw = normalised(torch.rand(2, 3, 24, 24, generator=g) ** 6)
    check_refine(raw)


def test_adaptive_kernel_varied_steps_and_image_size():
    raw = torch.cat([blobs(4, 2, 24, 24, seed=7), torch.rand(4, 2, 24, 24, generator=torch.Generator().manual_seed(8))],
                    dim=1)
    out = check_refine(raw, steps=[8.0, 16.0, 32.0, 64.0], image_size=[256.0, 512.0, 768.0, 1024.0],
                       repeat_ratio=[0.0, 0.1, 0.5, 1.0])
    assert len(set(out[1].flatten().tolist())) >= 3  # several kernel sizes in one batch


@pytest.mark.parametrize("std,steps,height,expect", [
    (0.5, 32, 512, 11), (0.5, 8, 512, 3), (0.5, 16, 256, 3), (0.21, 32, 512, 7), (0.1, 32, 512, 3),
    (0.5, 64, 4096, 11), (0.3, 10, 700, 3), (0.25, 24, 400, 5),
    (0.2, 32, 512, 5),  # exactly 3*2*1*1 = 6 in real numbers; float32 std 0.19999999 -> 5.9999996 -> 5
])
def test_adaptive_kernel_size_worked_examples(std, steps, height, expect):
    # two-valued 12x12 maps with population std `std` (products landing on or near integers)
    m = torch.full((1, 1, 12, 12), 0.5 - std)
    m[0, 0, :6] = 0.5 + std
    out = check_refine(m, steps=[float(steps)], image_size=[float(height)])
    assert out[1].item() == expect


@pytest.mark.parametrize("k", [1, 3, 5, 7, 9, 11, 13])
def test_fixed_kernel_sizes(k):
    check_refine(blobs(1, 3, 24, 24, seed=k), akd_kernel=k)


@pytest.fixture
def akd_path(request):
    C._C._set_akd_path(request.param)
    yield request.param
    C._C._set_akd_path(0)


@pytest.mark.parametrize("akd_path", [1, 2, 3], indirect=True, ids=["network", "bitset", "sort"])
def test_every_akd_implementation(akd_path):
    # the automatic choice uses sorting networks for k <= 9 (AVX2), rank bitsets above, and a
    # per-window sort for huge maps: each one must give the reference's maps on its own
    for k in (3, 5, 7, 9, 11):
        check_refine(blobs(1, 2, 13, 11, seed=k), akd_kernel=k)
    g = torch.Generator().manual_seed(41)
    check_refine(torch.randint(0, 4, (1, 2, 12, 12), generator=g).float() / 3, akd_kernel=5)
    check_refine(torch.rand(2, 2, 24, 24, generator=g))
    check_refine(torch.rand(1, 2, 2, 9, generator=g))


def test_t1_and_b_gt_1():
    check_refine(torch.rand(3, 1, 24, 24, generator=torch.Generator().manual_seed(11)),
                 steps=[16.0, 32.0, 64.0], image_size=[512.0, 600.0, 700.0])


# ------------------------------------------------------------------ refine: degenerate and odd shapes

def test_degenerate_constant_and_zero_maps():
    raw = blobs(2, 4, 12, 12, seed=12)
    raw[0, 1] = 0.0
    raw[1, 2] = 0.0
    raw[1, 3] = 0.7  # constant, not flagged: goes through every step
    deg = torch.zeros(2, 4, dtype=torch.bool)
    deg[0, 1] = deg[1, 2] = True
    out = check_refine(raw, deg=deg)
    maps, ks, strat, dthr, cthr, alpha = out
    assert (maps[deg] == 0).all()
    assert (strat[deg] == -1).all() and (dthr[deg] == 0).all() and (cthr[deg] == 0).all()
    assert (alpha[deg] == 0).all()
    assert (ks[deg] == 3).all()  # kernel size still reported (std 0 -> k0 = 1 -> 3)


def test_degenerate_flag_on_nonconstant_map_still_reports_kernel():
    raw = torch.rand(1, 2, 24, 24, generator=torch.Generator().manual_seed(13))
    out = check_refine(raw, deg=torch.tensor([[True, False]]))
    assert out[1][0, 0] == out[1][0, 1] == 9


def test_one_by_one_map():
    raw = torch.tensor([[[[0.3]], [[0.0]]], [[[1.0]], [[0.5]]]])
    check_refine(raw, deg=torch.tensor([[False, True], [False, False]]))


@pytest.mark.parametrize("shape", [(1, 17), (13, 1), (1, 2), (2, 1), (2, 2), (3, 3), (2, 9)])
def test_strips_and_tiny_maps(shape):
    h, w = shape
    g = torch.Generator().manual_seed(h * 31 + w)
    raw = normalised(torch.rand(2, 3, h, w, generator=g)) if h * w > 1 else torch.rand(2, 3, h, w, generator=g)
    out = check_refine(raw)
    assert (out[1] <= 2 * min(h, w) - 1).all()
    check_refine(raw, akd_kernel=9)


def test_non_square_map():
    check_refine(blobs(2, 3, 27, 20, seed=14), steps=[64.0, 32.0], image_size=[512.0, 1024.0])
    check_refine(torch.rand(1, 2, 20, 27, generator=torch.Generator().manual_seed(15)), akd_kernel=11)


def test_fixed_kernel_larger_than_map_allows():
    raw = blobs(1, 2, 4, 6, seed=16)
    out = check_refine(raw, akd_kernel=11)
    assert (out[1] == 7).all()  # capped at 2*min(h,w)-1
    out = check_refine(blobs(1, 2, 3, 30, seed=17), akd_kernel=9)
    assert (out[1] == 5).all()


def test_many_ties_quantised_values():
    g = torch.Generator().manual_seed(18)
    raw = torch.randint(0, 5, (2, 4, 24, 24), generator=g).float() / 4
    check_refine(raw)
    check_refine(raw, akd_kernel=11)
    check_refine((torch.randint(0, 3, (1, 3, 16, 16), generator=g).float() / 2), akd_kernel=5)


def test_large_map_sort_path():
    # padded map too large for the rank bitsets: exercises the per-window sort path
    raw = blobs(1, 1, 176, 190, seed=19)
    check_refine(raw, akd_kernel=11, dacg=False, cba=False, sicd=0)


def test_negative_and_unnormalised_inputs():
    g = torch.Generator().manual_seed(20)
    raw = torch.randn(1, 3, 16, 16, generator=g) * 0.2 + 0.3  # some negative values
    check_refine(raw)
    check_refine(raw * 7.0, akd_kernel=5)


# ------------------------------------------------------------------ refine: module branches

def _field(value, noise, seed, shape=(1, 1, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    return value + noise * (torch.rand(*shape, generator=g) - 0.5)


@pytest.mark.parametrize("akd", [False, True])
def test_every_dacg_strategy(akd):
    maps = torch.cat([
        torch.cat([torch.zeros(1, 1, 8, 16), torch.ones(1, 1, 8, 16)], dim=2),  # sd 0.5 -> high_var
        _field(0.55, 0.3, 1),   # mean .55, sd .09 -> high_mean
        _field(0.175, 0.25, 2),  # mean .175 -> low_mean
        _field(0.30, 0.2, 3),   # mean .30 -> default
        torch.zeros(1, 1, 16, 16),  # no positive value -> -1
    ], dim=1)
    out = check_refine(maps, akd=akd, akd_kernel=3, cba=False, sicd=0)
    assert out[2].flatten().tolist() == [0, 1, 2, 3, -1]
    assert out[3][0, 4] == 0


def test_dacg_threshold_floor():
    # 90th percentile of the positive values is below 1e-6: zeta = 1e-6
    m = torch.zeros(1, 1, 10, 10)
    m[0, 0, 2:8, 2:8] = 1e-7
    m[0, 0, 5, 5] = 1.0
    out = check_refine(m, akd=False, cba=False, sicd=0)
    assert abs(out[3].item() - 1e-6) < 1e-12


def test_cba_nothing_below_threshold_and_empty():
    m = torch.cat([_field(0.95, 0.1, 4), torch.zeros(1, 1, 16, 16), _field(0.2, 0.4, 5)], dim=1)
    out = check_refine(m, akd=False, dacg=False, sicd=0)
    assert out[4][0, 1] == 0  # no positive value
    # nothing below tau for map 0: values unchanged except the final normalisation
    tau = out[4][0, 0].item()
    assert tau < m[0, 0].min().item()


def test_sicd_range_guard_reverts():
    raw = blobs(1, 3, 16, 16, seed=21)
    out = check_refine(raw, repeat_ratio=[5.0])  # huge interference: alpha 0.5, range shrinks -> undone
    assert (out[5] == 0).all()
    out = check_refine(raw, repeat_ratio=[0.0])  # only spikes
    out = check_refine(raw, repeat_ratio=[0.5])
    assert (out[5] > 0).all()


def test_sicd_zero_interference():
    # no repetition and no outlier pixels (two-valued map: nothing above mean + 2 std)
    m = torch.zeros(1, 1, 8, 8)
    m[0, 0, :, 4:] = 1.0
    out = check_refine(m, akd=False, dacg=False, cba=False, repeat_ratio=[0.0])
    assert out[5].item() == 0


def _context_weights(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.rand(B, T, T, generator=g)
    W = W * (1 - torch.eye(T))
    W[:, 0, :] = 0  # a token with no context: interference 0
    return W


def test_sicd_context_mode():
    raw = blobs(2, 4, 16, 16, seed=22)
    W = _context_weights(2, 4, 23)
    out = check_refine(raw, context_weights=W, sicd=2)
    assert (out[5][:, 0] == 0).all()
    ctx = blobs(2, 4, 16, 16, seed=24)
    check_refine(raw, context_maps=ctx, context_weights=W, sicd=2)
    # context equal to the map itself: alpha 1 wipes it out, the range guard undoes it
    same = raw.clone()
    Wd = torch.zeros(2, 4, 4)
    Wd[:, 1, 2] = 1.0
    same[:, 2] = same[:, 1]
    out = check_refine(same, context_weights=Wd, sicd=2, akd=False, dacg=False, cba=False)
    assert (out[5][:, 1] == 0).all()


def test_sicd_context_needs_weights():
    with pytest.raises(ValueError):
        C.refine_cpp(*_args(torch.rand(1, 2, 8, 8), sicd=2))


@pytest.mark.parametrize("off", ["akd", "dacg", "cba", "sicd", "all"])
def test_module_switches(off):
    raw = blobs(2, 3, 24, 24, seed=25)
    kw = {"sicd": 0} if off == "sicd" else ({off: False} if off != "all" else
                                           {"akd": False, "dacg": False, "cba": False, "sicd": 0})
    out = check_refine(raw, **kw)
    if off in ("dacg", "all"):
        assert (out[2] == -1).all() and (out[3] == 0).all()
    if off in ("cba", "all"):
        assert (out[4] == 0).all()
    if off in ("sicd", "all"):
        assert (out[5] == 0).all()
    assert (out[1] >= 3).all()  # kernel size reported even without AKD


def test_non_default_parameters():
    raw = blobs(1, 4, 20, 20, seed=26)
    check_refine(raw, dacg_params=[0.1, 0.5, 0.2, 95.0, 60.0, 70.0, 50.0, 0.8],
                 cba_params=[0.3, 0.1, 0.1, 0.05, 0.25])


def test_non_contiguous_inputs_and_output_types():
    raw = blobs(2, 3, 16, 16, seed=27).transpose(2, 3)
    assert not raw.is_contiguous()
    out = check_refine(raw)
    assert out[0].is_contiguous() and out[1].dtype == torch.int32 and out[5].dtype == torch.float32


# ------------------------------------------------------------------ pooling

def _pool_inputs(B, T, h, w, D, seed):
    g = torch.Generator().manual_seed(seed)
    N = h * w
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    bump = torch.exp(-((yy - h / 3) ** 2 + (xx - w / 2) ** 2) / (0.2 * N + 1)).reshape(1, N, 1)
    acts = torch.randn(B, N, D, generator=g) + 3.0 * bump  # a spatial signal: raw maps with a real range
    grads = torch.randn(B, T, N, D, generator=g) + 0.3
    return acts, grads


def check_pool(acts, grads, h, w, grad_relu):
    ref = R.pool_gradients_reference(acts, grads, h, w, grad_relu)
    maps, deg, bad = C.pool_gradients_cpp(acts, grads, h, w, grad_relu)
    assert maps.dtype == torch.float32 and deg.dtype == torch.bool and not bad
    assert maps.shape == ref[0].shape and deg.shape == ref[1].shape
    assert torch.equal(deg, ref[1])
    err = (maps - ref[0]).abs().max().item()
    assert err <= ATOL, err
    # the pass that also checks the gradients for NaN/Inf gives the same bits
    maps_c, deg_c, bad_c = C.pool_gradients_cpp(acts, grads, h, w, grad_relu, check_grads=True)
    assert torch.equal(maps_c, maps) and torch.equal(deg_c, deg) and not bad_c
    return maps, deg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("grad_relu", [True, False])
def test_pooling_dtypes(dtype, grad_relu):
    acts, grads = _pool_inputs(2, 3, 6, 8, 64, seed=30)
    check_pool(acts.to(dtype), grads.to(dtype), 6, 8, grad_relu)


def test_pooling_odd_sizes_and_tails():
    acts, grads = _pool_inputs(1, 3, 5, 7, 37, seed=31)  # N, D, T not multiples of the tiles
    check_pool(acts, grads, 5, 7, True)
    check_pool(acts, grads, 5, 7, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,h,w,D", [(1, 1, 1, 1), (5, 3, 3, 15), (7, 1, 9, 33), (4, 4, 4, 47), (6, 3, 5, 72)])
def test_pooling_tile_remainders(dtype, T, h, w, D):
    # remainders of every blocked loop: the bf16 path's 16-column pairs and 8-row
    # groups, the 4-row x 3-token product tiles (and their 2- and 1-token ends), the
    # feature padding to 4 and the 16-row blocks of A
    acts, grads = _pool_inputs(2, T, h, w, D, seed=35 + D)
    for relu in (True, False):
        check_pool(acts.to(dtype), grads.to(dtype), h, w, relu)


def test_pooling_wide_features_few_tokens():
    acts, grads = _pool_inputs(1, 2, 12, 12, 1500, seed=32)  # feature-chunked first pass
    check_pool(acts, grads, 12, 12, True)
    check_pool(acts.bfloat16(), grads.bfloat16(), 12, 12, True)


def test_pooling_degenerate():
    acts = torch.ones(2, 6, 5)
    grads = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(33))
    maps, deg = check_pool(acts, grads, 2, 3, True)
    assert deg.all() and (maps == 0).all()
    grads = -grads.abs()  # grad_relu: all weights 0 -> degenerate
    maps, deg = check_pool(torch.randn(1, 6, 5), grads[:1], 3, 2, True)
    assert deg.all()


def test_pooling_worked_example():
    A = torch.tensor([[1.0, -1.0], [2.0, 3.0], [0.0, 2.0]])
    G = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [0.0, 0.0]]])
    maps, deg, _ = C.pool_gradients_cpp(A[None], G[None], 1, 3, True)
    raw = torch.tensor([2 / 3, 10 / 3, 4 / 3])
    torch.testing.assert_close(maps.reshape(-1), (raw - raw.min()) / (raw.max() - raw.min() + 1e-8),
                               atol=1e-6, rtol=0)
    maps, _, _ = C.pool_gradients_cpp(A[None], G[None], 1, 3, False)
    torch.testing.assert_close(maps.reshape(-1), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("grad_relu", [True, False])
def test_pooling_pass_finds_every_nonfinite_gradient(dtype, grad_relu):
    # the checked pass flags a NaN/+Inf/-Inf wherever it sits: vector body, column
    # tails, 8-row groups and their remainder rows (-Inf under grad_relu is the case
    # a plain relu would hide)
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
                assert not C.pool_gradients_cpp(acts, g, h, w, grad_relu)[2]  # unchecked: not looked at


def test_pool_then_refine_end_to_end():
    acts, grads = _pool_inputs(2, 4, 12, 12, 48, seed=34)
    maps, deg = check_pool(acts, grads, 12, 12, True)
    check_refine(maps, deg=deg, steps=[32.0, 64.0], image_size=[336.0, 768.0])


def test_extension_metadata():
    assert C._C.version() == "0.1.0"
    assert math.isfinite(float(len(C._C.version())))
