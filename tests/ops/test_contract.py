"""The math contract (shared/SPEC.md) checked against values that dcam does not
compute: hand-worked examples and an independent, straightforward numpy
implementation written here (float64, plain loops, the contract's numbers
typed in as literals, nothing imported from dcam.ops).

Every test runs on every backend, the reference included (here it is checked
against independent values, not against itself), through the public API.

Each contract constant (EPS_NORM, ZETA_MIN, SICD_*, AKD_*, DACG_*, CBA_*) moves
at least one expected value below: a changed constant fails a test here. The
cases that pin each constant say so in a comment.
"""
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

import dcam
from dcam import CamConfig

# ------------------------------------------------------------------ the contract in numpy (float64)

EPS = 1e-8
ZETA_MIN = 1e-6


def np_reflect(i, n):
    if n == 1:
        return 0
    if i < 0:
        return -i
    if i >= n:
        return 2 * n - 2 - i
    return i


def np_percentile(values, q):
    s = np.sort(np.asarray(values, dtype=np.float64))
    n = len(s)
    pos = q / 100.0 * (n - 1)
    lo = math.floor(pos)
    return s[lo] + ((pos - lo) * (s[lo + 1] - s[lo]) if pos > lo else 0.0)


def np_pool(A, G, grad_relu=True):
    """A [N, D], G [T, N, D] -> maps [T, N], degenerate [T]."""
    A, G = np.asarray(A, np.float64), np.asarray(G, np.float64)
    Gp = np.maximum(G, 0) if grad_relu else G
    w = Gp.mean(axis=1)  # [T, D]
    maps, deg = [], []
    for t in range(G.shape[0]):
        raw = np.maximum(A * w[t][None, :], 0).mean(axis=1)
        if raw.max() > raw.min():
            maps.append((raw - raw.min()) / (raw.max() - raw.min() + EPS))
            deg.append(False)
        else:
            maps.append(np.zeros_like(raw))
            deg.append(True)
    return np.array(maps), np.array(deg)


def np_kernel_size(r, steps, height, akd_kernel="adaptive"):
    h, w = r.shape
    if akd_kernel == "adaptive":
        f_step = min(steps / 16.0, 2.0)
        f_std = min(5.0 * r.std(), 2.0)
        f_size = min(height / 512.0, 1.5)
        k = math.floor(3.0 * f_step * f_std * f_size)
        k = k + 1 if k % 2 == 0 else k
        k = min(max(k, 3), 11)
    else:
        k = akd_kernel
    return min(k, 2 * min(h, w) - 1)


def np_akd(r, k):
    h, w = r.shape
    R = (k - 1) // 2
    K = k * k
    out = np.zeros_like(r)
    for y in range(h):
        for x in range(w):
            win = np.array([r[np_reflect(y + dy, h), np_reflect(x + dx, w)]
                            for dy in range(-R, R + 1) for dx in range(-R, R + 1)])
            mu, sd = win.mean(), win.std()
            if mu <= 0:
                out[y, x] = 0.0
            elif sd == 0:
                out[y, x] = mu
            else:
                s = np.sort(win)
                sigma = sd / mu
                u = np.exp(-((np.arange(K) - (K - 1) / 2.0) ** 2) / (2 * sigma ** 2))
                out[y, x] = (u * s).sum() / u.sum()
    return out


def np_blur3(f, sigma):
    h, w = f.shape
    g = np.array([[math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)) for dx in (-1, 0, 1)] for dy in (-1, 0, 1)])
    g /= g.sum()
    out = np.zeros_like(f)
    for y in range(h):
        for x in range(w):
            out[y, x] = sum(g[dy + 1, dx + 1] * f[np_reflect(y + dy, h), np_reflect(x + dx, w)]
                            for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    return out


def np_dacg(f, std_hi=0.22, mean_hi=0.35, mean_lo=0.25, pcts=(90, 75, 80, 85), sigma=0.3):
    nz = f[f > 0]
    if nz.size == 0:
        return f, 0.0, -1
    mu, sd = f.mean(), f.std()
    st = 0 if sd > std_hi else (1 if mu > mean_hi else (2 if mu < mean_lo else 3))
    zeta = max(np_percentile(nz, pcts[st]), ZETA_MIN)
    return np.where(f > zeta, f, np_blur3(f, sigma)), zeta, st


def np_cba(e, weights=(0.15, 0.15, 0.2, 0.015), floor=0.5):
    nz = e[e > 0]
    if nz.size == 0:
        return e, 0.0
    tau = (weights[0] * np_percentile(nz, 50) + weights[1] * np_percentile(e.ravel(), 60)
           + weights[2] * nz.mean() + weights[3] * e.max())
    return np.where(e < tau, e * np.maximum(e / max(tau, 1e-8), floor), e), tau


def np_clip_normalise(c, r):
    c = np.clip(c, 0, r.max())
    return (c - c.min()) / (c.max() - c.min() + EPS) if c.max() > c.min() else c


def _guard(m, I, alpha):
    new = np.maximum(m - alpha * I, 0)
    if new.max() - new.min() < 0.9 * (m.max() - m.min()):
        return m, 0.0
    return new, alpha


def np_sicd_reference(m, rho):
    I = 0.05 * rho + 0.02 * (m > m.mean() + 2 * m.std())
    if I.max() == 0:
        return m, 0.0
    return _guard(m, I, min((m * I).sum() / (I * I).sum(), 0.5))


def np_sicd_context(m, raws, weights_row):
    wts = weights_row / (weights_row.sum() + 1e-8)
    I = sum(wi * ri for wi, ri in zip(wts, raws))
    if (I * I).sum() == 0:
        return m, 0.0
    return _guard(m, I, min(max((m * I).sum() / (I * I).sum(), 0.0), 1.0))


def np_refine(raw, cfg: CamConfig, steps, height, rho, context_weights=None, degenerate=None):
    """raw [B, T, h, w] -> dict of maps [B,T,h,w] and statistics [B,T]."""
    raw = np.asarray(raw, np.float64)
    B, T = raw.shape[:2]
    out = {k: np.zeros((B, T)) for k in ("kernel_size", "dacg_strategy", "dacg_threshold", "cba_threshold",
                                         "sicd_alpha")}
    maps = np.zeros_like(raw)
    for b in range(B):
        for t in range(T):
            r = raw[b, t]
            k = np_kernel_size(r, steps[b], height[b], cfg.akd_kernel)
            out["kernel_size"][b, t] = k
            deg = not (r.max() > r.min()) if degenerate is None else bool(degenerate[b, t])
            out["dacg_strategy"][b, t] = -1
            if deg:
                continue
            x = np_akd(r, k) if cfg.akd else r
            if cfg.dacg:
                x, out["dacg_threshold"][b, t], out["dacg_strategy"][b, t] = np_dacg(
                    x, cfg.dacg_std, cfg.dacg_mean_high, cfg.dacg_mean_low, cfg.dacg_percentiles, cfg.dacg_sigma)
            if cfg.cba:
                x, out["cba_threshold"][b, t] = np_cba(x, cfg.cba_weights, cfg.cba_floor)
            m = np_clip_normalise(x, r)
            if cfg.sicd == "reference":
                m, out["sicd_alpha"][b, t] = np_sicd_reference(m, rho[b])
            elif cfg.sicd == "context":
                m, out["sicd_alpha"][b, t] = np_sicd_context(m, raw[b], np.asarray(context_weights[b, t], np.float64))
            maps[b, t] = m
    out["maps"] = maps
    return out


# ------------------------------------------------------------------ running a backend

def run(any_backend, raw, config=None, **kw):
    backend, device = any_backend
    kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    got = dcam.refine(raw.to(device), config or CamConfig(), backend=backend, **kw)
    return {k: v.cpu() for k, v in vars(got).items()}


def check(got, want, map_atol=1e-5, rtol=1e-5):
    """Maps at atol 1e-5, integer statistics exactly, float statistics at a
    relative 1e-5 (a threshold of 1e-6 must not pass for 1e-7)."""
    np.testing.assert_allclose(got["maps"].double().numpy(), want["maps"], atol=map_atol, rtol=0, err_msg="maps")
    for k in ("kernel_size", "dacg_strategy"):
        assert got[k].tolist() == np.asarray(want[k]).astype(int).tolist(), k
    for k in ("dacg_threshold", "cba_threshold", "sicd_alpha"):
        np.testing.assert_allclose(got[k].double().numpy(), want[k], rtol=rtol, atol=1e-12, err_msg=k)


def two_valued(mean, std, h=12, w=12):
    """A map whose population std is exactly `std`: half at mean - std, half at mean + std."""
    m = torch.full((h, w), mean - std)
    m[: h // 2] = mean + std
    return m


def ramp(lo, hi, h=12, w=12):
    return torch.linspace(lo, hi, h * w).reshape(h, w)


# ------------------------------------------------------------------ the whole pipeline

def _blobs(T, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    m = torch.zeros(T, h, w)
    for _ in range(2):
        cy, cx = torch.rand(T, 1, 1, generator=g) * h, torch.rand(T, 1, 1, generator=g) * w
        m = m + torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0)
    m = m + 0.2 * torch.rand(T, h, w, generator=g)
    lo, hi = m.amin(dim=(1, 2), keepdim=True), m.amax(dim=(1, 2), keepdim=True)
    return ((m - lo) / (hi - lo)).unsqueeze(0)


PIPELINES = {
    "default": (CamConfig(), dict(steps=64, image_size=512, repeat_ratio=0.3)),
    "steps-24-height-900": (CamConfig(), dict(steps=24, image_size=900, repeat_ratio=0.0)),
    "k5-grad-relu-off": (CamConfig(akd_kernel=5, grad_relu=False), dict(repeat_ratio=1.0)),
    "akd-off": (CamConfig(akd=False), {}),
    "dacg-off": (CamConfig(dacg=False), {}),
    "cba-off": (CamConfig(cba=False), {}),
    "sicd-off": (CamConfig(sicd="off"), {}),
    "context": (CamConfig(sicd="context"), dict(context_weights="W")),
    "non-default-parameters": (CamConfig(dacg_std=0.1, dacg_mean_high=0.5, dacg_mean_low=0.05,
                                         dacg_percentiles=(50.0, 33.3, 12.5, 99.9), dacg_sigma=0.7,
                                         cba_weights=(0.3, 0.1, 0.1, 0.1), cba_floor=0.25), {}),
}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_pipeline_matches_independent_numpy(any_backend, name):
    cfg, kw = PIPELINES[name]
    raw = torch.cat([_blobs(2, 9, 8, seed=1), _blobs(2, 9, 8, seed=2)], dim=1)  # [1, 4, 9, 8]
    W = torch.tensor([[[0.0, 1.0, 0.5, 0.0], [0.2, 0.0, 0.0, 0.9], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]]])
    if kw.get("context_weights") == "W":
        kw = dict(kw, context_weights=W)
    steps, height, rho = kw.get("steps", 64), kw.get("image_size", 512), kw.get("repeat_ratio", 0.1)
    got = run(any_backend, raw, cfg, **dict(kw, steps=steps, image_size=height, repeat_ratio=rho))
    want = np_refine(raw.numpy(), cfg, [steps], [height], [rho], context_weights=W.numpy())
    check(got, want)


def test_degenerate_and_one_wide_maps(any_backend):
    raw = torch.zeros(2, 2, 1, 7)
    raw[0, 0, 0] = torch.tensor([0.0, 0.2, 1.0, 0.4, 0.4, 0.1, 0.9])
    raw[1, 0] = 0.5  # constant: degenerate
    raw[1, 1, 0, 3] = 1.0
    got = run(any_backend, raw, repeat_ratio=torch.tensor([0.2, 0.6]))
    want = np_refine(raw.numpy(), CamConfig(), [64, 64], [512, 512], [0.2, 0.6])
    check(got, want)
    assert got["kernel_size"].tolist() == [[1, 1], [1, 1]]  # k = 2*min(h, w) - 1 = 1 on a 1-wide map
    assert got["degenerate"].tolist() == [[False, True], [True, False]]
    assert (got["maps"][1, 0] == 0).all() and (got["maps"][0, 1] == 0).all()


# ------------------------------------------------------------------ section 1: pooling

def test_pooling_worked_example(any_backend):
    backend, device = any_backend
    # N=3 tokens on a 1x3 grid, D=2 features, T=1: relu(G) = [[1,0],[3,4],[0,0]] -> w = [4/3, 4/3];
    # raw = [(4/3)/2, (8/3+4)/2, (8/3)/2] = [2/3, 10/3, 4/3]
    A = torch.tensor([[1.0, -1.0], [2.0, 3.0], [0.0, 2.0]])
    G = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [0.0, 0.0]]])
    out = dcam.pool_gradients(A.to(device), G.to(device), (1, 3), backend=backend)
    raw = np.array([2 / 3, 10 / 3, 4 / 3])
    np.testing.assert_allclose(out.maps.cpu().reshape(-1).numpy(), (raw - raw.min()) / (raw.max() - raw.min() + 1e-8),
                               atol=1e-6)
    # without grad_relu: w = [4/3, 2/3]; raw = [(4/3 + max(-2/3, 0))/2, (8/3 + 2)/2, (0 + 4/3)/2] = [2/3, 7/3, 2/3]
    out = dcam.pool_gradients(A.to(device), G.to(device), (1, 3), grad_relu=False, backend=backend)
    np.testing.assert_allclose(out.maps.cpu().reshape(-1).numpy(), [0.0, 1.0, 0.0], atol=1e-6)
    assert not out.degenerate.any()


def test_pooling_eps_norm(any_backend):
    # EPS_NORM (1e-8) pinned: raw = [0, 1e-8] -> 1e-8 / (1e-8 + 1e-8) = 0.5 (with 1e-9: 0.909)
    backend, device = any_backend
    A = torch.tensor([[[0.0], [1e-8], [0.0], [0.5e-8]]])
    G = torch.ones(1, 1, 4, 1)
    out = dcam.pool_gradients(A.to(device), G.to(device), (2, 2), backend=backend)
    np.testing.assert_allclose(out.maps.cpu().reshape(-1).numpy(), [0.0, 0.5, 0.0, 0.25], atol=1e-6)
    out = dcam.weighted_maps(A.to(device), torch.ones(1, 1, 1, device=device), (2, 2), backend=backend)
    np.testing.assert_allclose(out.maps.cpu().reshape(-1).numpy(), [0.0, 0.5, 0.0, 0.25], atol=1e-6)


def assert_maps_match_numpy(out, A, G, relu):
    """Pooled maps (RawMaps [B,T,h,w]) of A [B,N,D], G [B,T,N,D] against np_pool, image by image."""
    for b in range(A.shape[0]):
        maps, deg = np_pool(A[b].numpy(), G[b].numpy(), relu)
        np.testing.assert_allclose(out.maps[b].cpu().reshape(G.shape[1], -1).numpy(), maps, atol=1e-5)
        assert out.degenerate[b].cpu().tolist() == deg.tolist()


@pytest.mark.parametrize("T,N,D,grid,seed", [(3, 35, 19, (5, 7), 3),
                                         (70, 20, 37, (4, 5), 4)])  # 70: past one 64-token C++ table
def test_pooling_random_matches_numpy(any_backend, T, N, D, grid, seed):
    # the whole pooling, and its two halves (the channel weights checked on their own too)
    backend, device = any_backend
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(2, N, D, generator=g)
    G = torch.randn(2, T, N, D, generator=g) + 0.2
    for relu in (True, False):
        out = dcam.pool_gradients(A.to(device), G.to(device), grid, grad_relu=relu, backend=backend)
        assert_maps_match_numpy(out, A, G, relu)
        w = dcam.channel_weights(G.to(device), grad_relu=relu, backend=backend)
        G64 = G.double().numpy()
        want_w = (np.maximum(G64, 0) if relu else G64).mean(axis=2)
        np.testing.assert_allclose(w.cpu().numpy(), want_w, atol=2e-7, rtol=1e-6)
        assert_maps_match_numpy(dcam.weighted_maps(A.to(device), w, grid, backend=backend), A, G, relu)


def test_pooling_halves_worked_example(any_backend):
    backend, device = any_backend
    # the example above in two halves: channel weights [4/3, 4/3] (grad_relu) and [4/3, 2/3]
    A = torch.tensor([[1.0, -1.0], [2.0, 3.0], [0.0, 2.0]], device=device)
    G = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [0.0, 0.0]]], device=device)
    w = dcam.channel_weights(G, backend=backend)
    np.testing.assert_allclose(w.cpu().numpy(), [[[4 / 3, 4 / 3]]], atol=1e-7)
    np.testing.assert_allclose(dcam.channel_weights(G, grad_relu=False, backend=backend).cpu().numpy(),
                               [[[4 / 3, 2 / 3]]], atol=1e-7)
    # weights [1, -2]: raw = [(1 + 2)/2, (2 + 0)/2, (0 + 0)/2] = [1.5, 1, 0]
    out = dcam.weighted_maps(A, torch.tensor([[1.0, -2.0]], device=device), (1, 3), backend=backend)
    np.testing.assert_allclose(out.maps.cpu().reshape(-1).numpy(), [1.0, 2 / 3, 0.0], atol=1e-6)
    # weights [-1, -1]: raw = [(0 + 1)/2, 0, 0] -> [1, 0, 0]; weights [0, 0]: constant, degenerate
    out = dcam.weighted_maps(A, torch.tensor([[-1.0, -1.0], [0.0, 0.0]], device=device), (1, 3), backend=backend)
    np.testing.assert_allclose(out.maps.cpu().reshape(2, -1).numpy(), [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], atol=1e-6)
    assert out.degenerate.cpu().tolist() == [[False, True]]


# ------------------------------------------------------------------ section 2: AKD kernel size

# Two-valued 12x12 maps with population std `std`; k0 = floor(3 * min(S/16, 2) * min(5 std, 2) * min(H/512, 1.5)),
# made odd, clamped to [3, 11]. The comment is the hand computation; together the cases move
# if any of AKD_BASE, AKD_STEP_SCALE/CAP, AKD_STD_SCALE/CAP, AKD_SIZE_SCALE/CAP changes by 10%
# or AKD_K_MIN/AKD_K_MAX by 2.
KERNEL_CASES = [
    (0.5, 32, 512, 11),   # 3*2*2*1 = 12 -> 13 -> 11 (AKD_K_MAX)
    (0.5, 8, 512, 3),     # 3*0.5*2*1 = 3
    (0.5, 16, 256, 3),    # 3*1*2*0.5 = 3
    (0.21, 32, 512, 7),   # 3*2*1.05*1 = 6.3 -> 6 -> 7
    (0.1, 32, 512, 3),    # 3*2*0.5*1 = 3
    (0.5, 64, 4096, 11),  # 3*2*2*1.5 = 18 -> 19 -> 11 (every cap)
    (0.4, 32, 448, 11),   # 3*2*2*0.875 = 10.5 -> 10 -> 11
    (0.1, 28, 800, 3),    # 3*1.75*0.5*1.5 = 3.9375 -> 3
    (0.1, 40, 640, 3),    # 3*2*0.5*1.25 = 3.75 -> 3
    (0.05, 4, 128, 3),    # 3*0.25*0.25*0.25 = 0.047 -> 0 -> 1 -> 3 (AKD_K_MIN)
    (0.15, 20, 768, 5),   # 3*1.25*0.75*1.5 = 4.21875 -> 4 -> 5
    (0.3, 32, 700, 11),   # 3*2*1.5*1.367 = 12.3 -> 12 -> 13 -> 11 (AKD_K_MAX)
    (0.45, 8, 640, 3),    # 3*0.5*2*1.25 = 3.75 -> 3
    (0.25, 24, 400, 5),   # 3*1.5*1.25*0.78125 = 4.39 -> 4 -> 5
    (0.3, 10, 700, 3),    # 3*0.625*1.5*1.367 = 3.84 -> 3
]


def test_adaptive_kernel_size_worked_examples(any_backend):
    raw = torch.stack([two_valued(0.5, std) for std, _, _, _ in KERNEL_CASES]).unsqueeze(1)  # [B, 1, 12, 12]
    steps = torch.tensor([float(s) for _, s, _, _ in KERNEL_CASES])
    height = torch.tensor([float(hh) for _, _, hh, _ in KERNEL_CASES])
    got = run(any_backend, raw, CamConfig(akd=False, dacg=False, cba=False, sicd="off"), steps=steps,
              image_size=height)
    assert got["kernel_size"][:, 0].tolist() == [k for _, _, _, k in KERNEL_CASES]


def test_kernel_size_capped_by_the_map(any_backend):
    raw = torch.rand(3, 1, 2, 5, generator=torch.Generator().manual_seed(0))
    got = run(any_backend, raw, CamConfig(akd_kernel=9))
    assert got["kernel_size"].flatten().tolist() == [3, 3, 3]  # 2*min(2, 5) - 1


# ------------------------------------------------------------------ section 2: AKD values

def test_akd_worked_example(any_backend):
    # one 0.9 in the corner of a 3x3 map of zeros, k = 3: the windows that hold it (reflect
    # padding: those of (1,1), (1,2), (2,1), (2,2)) have mu = 0.1, sd = sqrt(0.08),
    # 2 sigma^2 = 16; the 0.9 sits at rank 8, four ranks from the centre
    m = torch.zeros(1, 1, 3, 3)
    m[0, 0, 2, 2] = 0.9
    got = run(any_backend, m, CamConfig(akd_kernel=3, dacg=False, cba=False, sicd="off"))
    u = [math.exp(-((j - 4) ** 2) / 16.0) for j in range(9)]
    val = 0.9 * u[8] / sum(u)
    expect = np.zeros((3, 3))
    for y, x in [(1, 1), (1, 2), (2, 1), (2, 2)]:
        expect[y, x] = 1.0  # every positive output equals `val`: normalised to 1
    assert 0 < val < 0.9
    np.testing.assert_allclose(got["maps"][0, 0].numpy(), expect, atol=1e-6)


def test_akd_random_maps_match_numpy(any_backend):
    g = torch.Generator().manual_seed(5)
    raw = torch.rand(1, 3, 7, 6, generator=g) ** 2
    for k in (3, 5, 9):
        cfg = CamConfig(akd_kernel=k, dacg=False, cba=False, sicd="off")
        got = run(any_backend, raw, cfg)
        want = np_refine(raw.numpy(), cfg, [64], [512], [0.0])
        check(got, want)


# ------------------------------------------------------------------ section 3: DACG

# strategy boundaries (AKD off: DACG sees the raw map). Each pair straddles one threshold by
# 0.01-0.02: DACG_STD 0.22, DACG_MEAN_HIGH 0.35, DACG_MEAN_LOW 0.25 are pinned.
STRATEGY_CASES = [
    (0.5, 0.23, 0),   # sd 0.23 > 0.22: high_var
    (0.5, 0.21, 1),   # sd 0.21: not high_var; mean 0.5 > 0.35: high_mean
    (0.37, 0.05, 1),  # mean 0.37 > 0.35: high_mean
    (0.33, 0.05, 3),  # mean 0.33: default
    (0.23, 0.05, 2),  # mean 0.23 < 0.25: low_mean
    (0.27, 0.05, 3),  # mean 0.27: default
]


def test_dacg_strategy_boundaries(any_backend):
    raw = torch.stack([two_valued(mu, sd) for mu, sd, _ in STRATEGY_CASES]).unsqueeze(0)
    got = run(any_backend, raw, CamConfig(akd=False, cba=False, sicd="off"))
    assert got["dacg_strategy"][0].tolist() == [s for _, _, s in STRATEGY_CASES]


# one ramp per strategy; its threshold is the strategy's percentile of the positive values:
# 90 (high_var), 75 (high_mean), 80 (low_mean), 85 (default), typed in here (DACG_PERCENTILES)
PERCENTILE_CASES = [
    ((0.0, 1.0), 0, 90.0),
    ((0.45, 0.65), 1, 75.0),
    ((0.05, 0.15), 2, 80.0),
    ((0.25, 0.35), 3, 85.0),
]


def test_dacg_threshold_is_the_strategys_percentile(any_backend):
    ramps = [ramp(lo, hi) for (lo, hi), _, _ in PERCENTILE_CASES]
    raw = torch.stack(ramps).unsqueeze(0)
    got = run(any_backend, raw, CamConfig(akd=False, cba=False, sicd="off"))
    assert got["dacg_strategy"][0].tolist() == [s for _, s, _ in PERCENTILE_CASES]
    want = [np_percentile(r[r > 0].double().numpy(), q) for r, (_, _, q) in zip(ramps, PERCENTILE_CASES)]
    np.testing.assert_allclose(got["dacg_threshold"][0].double().numpy(), want, rtol=1e-6)
    # and the values: above the threshold kept, at or below it the 3x3 blur (sigma 0.3)
    want = np_refine(raw.numpy(), CamConfig(akd=False, cba=False, sicd="off"), [64], [512], [0.0])
    check(got, want)


def test_dacg_threshold_floor(any_backend):
    # ZETA_MIN pinned: every positive value is below 1e-6, so zeta = 1e-6 (not P80 ~ 4e-7)
    raw = ramp(0.0, 5e-7).reshape(1, 1, 12, 12).clone()
    raw[0, 0, 0, 0] = 1.0
    got = run(any_backend, raw, CamConfig(akd=False, cba=False, sicd="off"))
    assert got["dacg_strategy"].item() == 2
    assert got["dacg_threshold"].item() == pytest.approx(1e-6, rel=1e-6)


def test_dacg_blur_worked_example(any_backend):
    # f = 0.1..0.9 on a 3x3 grid: mean 0.5, std 0.258 > 0.22 -> high_var, P90 = 0.8 + 0.2*0.1 = 0.82.
    # Every pixel but the 0.9 is blurred with the normalised 3x3 Gaussian of sigma 0.3
    # (DACG_SIGMA pinned): e1 = exp(-1/0.18), e2 = exp(-2/0.18)
    f = (torch.arange(1, 10, dtype=torch.float32) / 10).reshape(1, 1, 3, 3)
    got = run(any_backend, f, CamConfig(akd=False, cba=False, sicd="off"))
    assert got["dacg_strategy"].item() == 0
    assert got["dacg_threshold"].item() == pytest.approx(0.82, rel=1e-6)
    e1, e2 = math.exp(-1 / 0.18), math.exp(-2 / 0.18)
    norm = 1 + 4 * e1 + 4 * e2
    # pixel (0,0) = 0.1: its reflect window is [[.5,.4,.5],[.2,.1,.2],[.5,.4,.5]]
    v00 = (0.1 + e1 * (0.4 + 0.2 + 0.2 + 0.4) + e2 * 4 * 0.5) / norm
    v11 = 0.5  # symmetric neighbourhood: its blur is itself
    # clip to [0, 0.9], normalise by the blurred minimum (pixel (0,0)) and the kept 0.9
    lo, hi = v00, 0.9
    np.testing.assert_allclose(got["maps"][0, 0, 0, 0].item(), 0.0, atol=1e-6)
    np.testing.assert_allclose(got["maps"][0, 0, 1, 1].item(), (v11 - lo) / (hi - lo + 1e-8), atol=1e-6)
    np.testing.assert_allclose(got["maps"][0, 0, 2, 2].item(), 1.0, atol=1e-6)
    want = np_refine(f.numpy(), CamConfig(akd=False, cba=False, sicd="off"), [64], [512], [0.0])
    check(got, want)


def test_dacg_no_positive_pixel(any_backend):
    raw = torch.zeros(1, 2, 4, 4)
    raw[0, 1, 1, 1] = 0.5
    got = run(any_backend, raw, CamConfig(akd=False, cba=False, sicd="off"), degenerate=torch.tensor([[False, False]]))
    assert got["dacg_strategy"].tolist() == [[-1, 2]] and got["dacg_threshold"][0, 0] == 0


# ------------------------------------------------------------------ section 4: CBA

def test_cba_worked_example(any_backend):
    # e = [0, 0.2, 0.4, 0.8]: P50(nz) = 0.4, P60(all): pos 1.8 -> 0.2 + 0.8*0.2 = 0.36,
    # mean(nz) = 1.4/3, max 0.8 (CBA_WEIGHTS pinned by tau)
    e = torch.tensor([[[[0.0, 0.2, 0.4, 0.8]]]])
    got = run(any_backend, e, CamConfig(akd=False, dacg=False, sicd="off"))
    tau = 0.15 * 0.4 + 0.15 * 0.36 + 0.2 * (1.4 / 3) + 0.015 * 0.8
    assert got["cba_threshold"].item() == pytest.approx(tau, rel=1e-6)
    c = np.array([0.0, 0.2 * max(0.2 / tau, 0.5), 0.4, 0.8])
    np.testing.assert_allclose(got["maps"].reshape(-1).numpy(), c / (0.8 + 1e-8), atol=1e-6)


def test_cba_floor_worked_example(any_backend):
    # e = [0, 0.05, 0.4, 0.8]: P60(all): pos 1.8 -> 0.05 + 0.8*0.35 = 0.33;
    # 0.05 / tau = 0.24 < 0.5: the pixel is halved, never less (CBA_FLOOR pinned)
    e = torch.tensor([[[[0.0, 0.05, 0.4, 0.8]]]])
    got = run(any_backend, e, CamConfig(akd=False, dacg=False, sicd="off"))
    tau = 0.15 * 0.4 + 0.15 * 0.33 + 0.2 * (1.25 / 3) + 0.015 * 0.8
    assert got["cba_threshold"].item() == pytest.approx(tau, rel=1e-6)
    assert 0.05 / tau < 0.5
    np.testing.assert_allclose(got["maps"].reshape(-1).numpy(), np.array([0.0, 0.025, 0.4, 0.8]) / (0.8 + 1e-8),
                               atol=1e-6)


def test_cba_nothing_below_threshold(any_backend):
    e = torch.full((1, 1, 2, 2), 0.6)
    e[0, 0, 0, 0] = 0.7
    got = run(any_backend, e, CamConfig(akd=False, dacg=False, sicd="off"))
    tau = 0.15 * 0.6 + 0.15 * 0.6 + 0.2 * 0.625 + 0.015 * 0.7
    assert got["cba_threshold"].item() == pytest.approx(tau, rel=1e-6) and tau < 0.6
    np.testing.assert_allclose(got["maps"].reshape(-1).numpy(), [1.0, 0.0, 0.0, 0.0], atol=1e-6)


# ------------------------------------------------------------------ section 5: clip and normalise

def test_clip_to_raw_max_and_normalise(any_backend):
    # nothing switched on: c = r; the map is normalised: (r - min) / (max - min + 1e-8)
    raw = torch.tensor([[[[0.2, 0.3, 0.9, 0.6]]]])
    got = run(any_backend, raw, CamConfig(akd=False, dacg=False, cba=False, sicd="off"))
    np.testing.assert_allclose(got["maps"].reshape(-1).numpy(), (np.array([0.2, 0.3, 0.9, 0.6]) - 0.2) / (0.7 + 1e-8),
                               atol=1e-6)


def test_normalisation_eps_on_a_tiny_range(any_backend):
    # EPS_NORM pinned on the refine side: a raw range of 1e-8 normalises to 1e-8 / 2e-8 = 0.5
    raw = torch.zeros(1, 1, 2, 2)
    raw[0, 0, 0, 1] = 1e-8
    got = run(any_backend, raw, CamConfig(akd=False, dacg=False, cba=False, sicd="off"))
    np.testing.assert_allclose(got["maps"].reshape(-1).numpy(), [0.0, 0.5, 0.0, 0.0], atol=1e-6)


# ------------------------------------------------------------------ section 6: SICD

def test_sicd_reference_worked_example(any_backend):
    # m = [0, .25, .5, .75, 1], rho = 0.4: no outlier (mean + 2 std = 1.207), I = 0.05*0.4 = 0.02;
    # alpha = min(0.02*2.5 / (5*0.0004), 0.5) = 0.5 (SICD_BASE and SICD_ALPHA_MAX pinned)
    raw = torch.tensor([[[[0.0, 0.25, 0.5, 0.75, 1.0]]]])
    got = run(any_backend, raw, CamConfig(akd=False, dacg=False, cba=False), repeat_ratio=0.4)
    assert got["sicd_alpha"].item() == pytest.approx(0.5, rel=1e-6)
    np.testing.assert_allclose(got["maps"].reshape(-1).numpy(), [0.0, 0.24, 0.49, 0.74, 0.99], atol=1e-6)
    got = run(any_backend, raw, CamConfig(akd=False, dacg=False, cba=False), repeat_ratio=0.0)
    assert got["sicd_alpha"].item() == 0  # no interference at all: no change
    np.testing.assert_allclose(got["maps"].reshape(-1).numpy(), [0.0, 0.25, 0.5, 0.75, 1.0], atol=1e-6)


def test_sicd_reference_spike(any_backend):
    # eight zeros, 0.9475 and 1.0: z-scores 2.066 and 1.932, so only the 1.0 is above
    # mean + 2 std (SICD_SPIKE_STDS pinned: 1.9 would add the 0.9475, 2.1 would drop the 1.0);
    # rho = 0: I = 0.02 on the spike (SICD_SPIKE pinned), alpha = min(0.02/0.0004, 0.5) = 0.5
    vals = [0.0] * 8 + [0.9475, 1.0]
    raw = torch.tensor(vals).reshape(1, 1, 2, 5)
    got = run(any_backend, raw, CamConfig(akd=False, dacg=False, cba=False), repeat_ratio=0.0)
    assert got["sicd_alpha"].item() == pytest.approx(0.5, rel=1e-6)
    np.testing.assert_allclose(got["maps"].reshape(-1).numpy(), [0.0] * 8 + [0.9475, 0.99], atol=1e-6)


@pytest.mark.parametrize("b,kept", [(0.295, True), (0.369, False)])
def test_sicd_range_guard_threshold(any_backend, b, kept):
    # context mode, token 0: m = [0, 1, 0], its context (token 1) r1 = [0, b, 1], weight 1:
    # I = r1, alpha = b / (b^2 + 1), m' = [0, 1 - alpha*b, 0]: the range becomes
    # 1/(b^2 + 1) = 0.920 (kept) or 0.880 (< 0.9: undone). SICD_RANGE_GUARD pinned.
    raw = torch.tensor([[[[0.0, 1.0, 0.0]], [[0.0, b, 1.0]]]])
    W = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    got = run(any_backend, raw, CamConfig(akd=False, dacg=False, cba=False, sicd="context"), context_weights=W)
    alpha = b / (b * b + 1)
    if kept:
        assert got["sicd_alpha"][0, 0].item() == pytest.approx(alpha, rel=1e-5)
        np.testing.assert_allclose(got["maps"][0, 0].reshape(-1).numpy(), [0.0, 1 - alpha * b, 0.0], atol=1e-6)
    else:
        assert got["sicd_alpha"][0, 0].item() == 0
        np.testing.assert_allclose(got["maps"][0, 0].reshape(-1).numpy(), [0.0, 1.0, 0.0], atol=1e-6)
    assert got["sicd_alpha"][0, 1].item() == 0  # token 1 has no context


def test_sicd_context_worked_example(any_backend):
    # r0 = [1, .5, 0], r1 = [0, .5, 1], W = [[0, 2], [1, 0]]: token 0's I = r1 * 2/(2 + 1e-8);
    # alpha = 0.25 / 1.25 = 0.2, m' = [1, 0.4, 0] (the range stays 1)
    raw = torch.tensor([[[[1.0, 0.5, 0.0]], [[0.0, 0.5, 1.0]]]])
    W = torch.tensor([[[0.0, 2.0], [1.0, 0.0]]])
    got = run(any_backend, raw, CamConfig(akd=False, dacg=False, cba=False, sicd="context"), context_weights=W)
    np.testing.assert_allclose(got["sicd_alpha"].reshape(-1).numpy(), [0.2, 0.2], rtol=1e-5)
    np.testing.assert_allclose(got["maps"].reshape(2, 3).numpy(), [[1.0, 0.4, 0.0], [0.0, 0.4, 1.0]], atol=1e-6)


def test_sicd_context_diagonal_must_be_zero(any_backend):
    # the worked example above with a weight on the diagonal: W[t, t] = 0 (a word is no context of
    # itself). 5 on token 0's diagonal would give I = (5 r0 + 2 r1) / 7 and alpha = 1.5 / 1.75 = 0.857
    # instead of 0.2; it is refused. A -0.0 diagonal is zero: the worked example's values come back.
    raw = torch.tensor([[[[1.0, 0.5, 0.0]], [[0.0, 0.5, 1.0]]]])
    cfg = CamConfig(akd=False, dacg=False, cba=False, sicd="context")
    with pytest.raises(dcam.InputError, match=r"^context_weights must have a zero diagonal .*got 1 non-zero"):
        run(any_backend, raw, cfg, context_weights=torch.tensor([[[5.0, 2.0], [1.0, 0.0]]]))
    got = run(any_backend, raw, cfg, context_weights=torch.tensor([[[-0.0, 2.0], [1.0, -0.0]]]))
    np.testing.assert_allclose(got["sicd_alpha"].reshape(-1).numpy(), [0.2, 0.2], rtol=1e-5)
    np.testing.assert_allclose(got["maps"].reshape(2, 3).numpy(), [[1.0, 0.4, 0.0], [0.0, 0.4, 1.0]], atol=1e-6)


def test_unchecked_context_weights_are_refused_where_the_cpp_kernels_run(any_backend):
    # check_finite=False skips the value checks, but the C++ kernels (backend "cpp", and "auto" on a CPU
    # with the extension) refuse a non-zero diagonal or a negative weight themselves: they are then the
    # InputError a checked call gives (unchecked, they were the extension's ValueError naming none). The
    # other backends take them unchecked, as the independent numpy pipeline computes them.
    backend, device = any_backend
    raw = torch.tensor([[[[1.0, 0.5, 0.0]], [[0.0, 0.5, 1.0]]]])
    cfg = CamConfig(akd=False, dacg=False, cba=False, sicd="context")
    diagonal, negative = torch.tensor([[[5.0, 2.0], [1.0, 0.0]]]), torch.tensor([[[0.0, -2.0], [1.0, 0.0]]])
    cpp_runs = backend == "cpp" or (backend == "auto" and device == "cpu" and dcam.ops.cpp.is_available())
    if cpp_runs:
        with pytest.raises(dcam.InputError, match=r"^context_weights must have a zero diagonal .*got 1 non-zero"):
            run(any_backend, raw, cfg, context_weights=diagonal, check_finite=False)
        with pytest.raises(dcam.InputError, match=r"^context_weights must be non-negative$"):
            run(any_backend, raw, cfg, context_weights=negative, check_finite=False)
    else:
        got = run(any_backend, raw, cfg, context_weights=diagonal, check_finite=False)
        check(got, np_refine(raw.numpy(), cfg, [64], [512], [0.0], context_weights=diagonal.numpy()))


def test_unchecked_vmap_over_steps_runs_where_the_cpp_kernels_run():
    # the C++ kernels' forced value check skips what vmap batches (it has no values to read): it refused
    # vmapped steps with "pass check_finite=False", which the call had passed; vmap runs them one by one
    raw = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    steps = torch.tensor([10.0, 20.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "no batching rule for dcam::refine: looping" notice
        got = torch.vmap(lambda s: dcam.refine(raw, steps=s.expand(2), image_size=64, backend="auto",
                                               check_finite=False).maps)(steps)
    want = torch.stack([dcam.refine(raw, steps=float(s), image_size=64, backend="torch").maps for s in steps])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_sicd_context_weight_normalisation_eps(any_backend):
    # weights of 1e-8: w = 1e-8 / (1e-8 + 1e-8) = 0.5, so I = r1 / 2 and alpha doubles to 0.4
    raw = torch.tensor([[[[1.0, 0.5, 0.0]], [[0.0, 0.5, 1.0]]]])
    W = torch.tensor([[[0.0, 1e-8], [0.0, 0.0]]])
    got = run(any_backend, raw, CamConfig(akd=False, dacg=False, cba=False, sicd="context"), context_weights=W)
    assert got["sicd_alpha"][0, 0].item() == pytest.approx(0.4, rel=1e-5)
    np.testing.assert_allclose(got["maps"][0, 0].reshape(-1).numpy(), [1.0, 0.4, 0.0], atol=1e-6)


def exact_context_alpha(raw_rows, weights_row, t):
    """SICD context mode's alpha for word t in exact rational arithmetic (SPEC section 6), its map
    min-max normalised (section 5; the other modules off) and the range guard passed."""
    F = [[Fraction(float(v)) for v in row] for row in raw_rows]
    eps = Fraction(1, 10 ** 8)

    def normalised(r):
        lo, hi = min(r), max(r)
        return [(v - lo) / (hi - lo + eps) for v in r] if hi > lo else r
    m = normalised(F[t])
    W = [Fraction(float(v)) for v in weights_row]
    w = [x / (sum(W) + eps) for x in W]
    I = [sum(wi * r[n] for wi, r in zip(w, F)) for n in range(len(m))]
    ii = sum(v * v for v in I)
    if ii == 0:
        return 0.0
    return float(min(max(sum(a * b for a, b in zip(m, I)) / ii, Fraction(0)), Fraction(1)))


@pytest.mark.parametrize("weight,raw0,want", [
    # the worked example's maps with weights of 1e-33: I ~ 1e-25 * r1, alpha = 0.2 / w clamps to 1
    (1e-33, [1.0, 0.5, 0.0, 0.0], 1.0),
    # m = [1, 0, 0, 1e-25] against I = w * [0, 0, 1, 1], w ~ 1e-25: alpha = 1e-25 / (2 w) ~ 0.5
    (1e-33, [1.0, 0.0, 0.0, 1e-25], 0.5),
    (1e-31, [1.0, 0.5, 0.0, 0.0], 1.0),
])
def test_sicd_context_alpha_of_a_tiny_interference_is_exact(any_backend, weight, raw0, want):
    # every float32 I*I (and m*I) underflowed to 0 below weights of ~1e-31: sum(I*I) read 0 and alpha
    # was reported 0 with the map unchanged, where exact arithmetic gives the values below
    r1 = [0.0, 0.5, 1.0, 1.0] if raw0[1] else [0.0, 0.0, 1.0, 1.0]
    raw = torch.tensor([[[raw0], [r1]]], dtype=torch.float32)
    W = torch.tensor([[[0.0, weight], [0.0, 0.0]]])
    got = run(any_backend, raw, CamConfig(akd=False, dacg=False, cba=False, sicd="context"), context_weights=W)
    exact = exact_context_alpha(raw.reshape(2, 4).tolist(), W[0, 0].tolist(), 0)
    assert exact == pytest.approx(want, rel=1e-6)  # the hand-worked value
    assert got["sicd_alpha"][0, 0].item() == pytest.approx(exact, rel=1e-5)
    assert got["sicd_alpha"][0, 1].item() == 0  # token 1 has no context
    # I is ~1e-25: the map minus alpha * I is the normalised map to float32 precision
    np.testing.assert_allclose(got["maps"][0, 0].reshape(-1).numpy(), raw0, atol=1e-6)


def test_dacg_gate_is_decided_as_in_exact_arithmetic(any_backend):
    # 16 positive values, s13 and s14 adjacent float32 numbers, P90 at position 13.5: the exact zeta lies
    # halfway between them and keeps s14. Rounded to float32 (ties to even: s14's mantissa is even) zeta
    # was s14 itself, and every backend blurred the s14 pixel (the map then differed by 4e-3)
    a = np.float32(0.6)
    a = a if a.view(np.int32) & 1 else np.nextafter(a, np.float32(1))
    b = np.nextafter(a, np.float32(1))
    vals = np.linspace(0.05, 0.5, 16).astype(np.float32)
    vals[13], vals[14], vals[15] = a, b, 1.0
    f = vals.reshape(4, 4).copy()
    f[0, 0], f[3, 3] = f[3, 3], f[0, 0]
    raw = torch.from_numpy(f).reshape(1, 1, 4, 4)
    cfg = CamConfig(akd=False, cba=False, sicd="off", dacg_percentiles=(90, 90, 90, 90))
    got = run(any_backend, raw, cfg)
    assert got["dacg_threshold"].item() == float(b)  # reported: the percentile computed in float32 (here s14)
    want = np_refine(raw.numpy(), cfg, [64], [512], [0.0])
    check(got, want)


def test_dacg_strategy_is_decided_as_in_exact_arithmetic(any_backend):
    # [.4,.4,.4,.4,.2,.2,.6,.2] in float32: the exact mean (worked out with fractions) is 0.3500000071, above
    # float32(0.35) = 0.3499999940, so high_mean (1, P75); rounded to float32 first, the mean was float32(0.35)
    # itself, not above it, and every backend chose the default strategy (3)
    from fractions import Fraction

    vals = np.array([.4, .4, .4, .4, .2, .2, .6, .2], dtype=np.float32)
    mean = sum(Fraction(float(v)) for v in vals) / len(vals)
    assert mean > Fraction(float(np.float32(0.35))) and np.float32(float(mean)) == np.float32(0.35)
    raw = torch.from_numpy(vals).reshape(1, 1, 1, 8)
    cfg = CamConfig(akd=False, cba=False, sicd="off", dacg_percentiles=(90, 75, 80, 20))
    got = run(any_backend, raw, cfg)
    assert got["dacg_strategy"].item() == 1
    assert got["dacg_threshold"].item() == pytest.approx(float(np_percentile(vals.astype(np.float64), 75)), rel=1e-6)
