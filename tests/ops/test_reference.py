"""Worked examples of the math, one per stage of the PyTorch reference
(dcam.ops.reference), with expected values derived by hand in this file
(never by the code under test). The same examples through the public API on
every backend are in test_contract.py."""
import math

import numpy as np
import pytest
import torch

from dcam.ops import reference as R
from dcam.ops.config import CamConfig

DACG = CamConfig().op_args()["dacg_params"]
CBA = CamConfig().op_args()["cba_params"]


def test_pooling_worked_example():
    # N=3 tokens on a 1x3 grid, D=2 features, T=1 token
    A = torch.tensor([[1.0, -1.0], [2.0, 3.0], [0.0, 2.0]])
    G = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [0.0, 0.0]]])
    maps, deg = R.pool_gradients_reference(A[None], G[None], 1, 3, grad_relu=True)
    # relu(G) = [[1,0],[3,4],[0,0]] -> w = [4/3, 4/3]
    # raw = [(4/3)/2, (8/3+4)/2, (8/3)/2] = [2/3, 10/3, 4/3]
    raw = np.array([2 / 3, 10 / 3, 4 / 3])
    expect = (raw - raw.min()) / (raw.max() - raw.min() + 1e-8)
    np.testing.assert_allclose(maps.reshape(-1).numpy(), expect, atol=1e-6)
    assert not deg.any()
    # without grad_relu: w = [4/3, 2/3]; raw = [(4/3)/2, (8/3+2)/2, (0+4/3)/2] = [2/3, 7/3, 2/3]
    maps, _ = R.pool_gradients_reference(A[None], G[None], 1, 3, grad_relu=False)
    np.testing.assert_allclose(maps.reshape(-1).numpy(), [0.0, 1.0, 0.0], atol=1e-6)


def test_pooling_degenerate_constant_map():
    A = torch.ones(1, 4, 3)
    G = torch.ones(1, 2, 4, 3)
    maps, deg = R.pool_gradients_reference(A, G, 2, 2)
    assert deg.all() and (maps == 0).all()


def test_reflect_index_matches_numpy_reflect():
    for n in (1, 2, 3, 5):
        offs = torch.arange(-(n - 1), 2 * n - 1) if n > 1 else torch.arange(-2, 3)
        got = R.reflect_index(n, offs)
        padded = np.pad(np.arange(n), n + 2, mode="reflect") if n > 1 else np.zeros(n + 2 * 2 + 1, int)
        want = [padded[o + n + 2] for o in offs.tolist()] if n > 1 else [0] * len(offs)
        assert got.tolist() == want


@pytest.mark.parametrize("std,steps,height,expect", [
    (0.5, 32, 512, 11),   # 3*2*2*1 = 12 -> 13 -> clamped to 11
    (0.5, 8, 512, 3),     # 3*0.5*2*1 = 3
    (0.5, 16, 256, 3),    # 3*1*2*0.5 = 3
    (0.21, 32, 512, 7),   # 3*2*1.05*1 = 6.3 -> 6 -> 7
    (0.1, 32, 512, 3),    # 3*2*0.5*1 = 3
    (0.5, 64, 4096, 11),  # f_step, f_size capped: 3*2*2*1.5 = 18 -> 19 -> 11
])
def test_adaptive_kernel_size(std, steps, height, expect):
    # 12x12 map with population std exactly `std`: half at 0.5-std, half at 0.5+std
    m = torch.full((1, 12, 12), 0.5 - std)
    m[0, :6] = 0.5 + std
    k = R.adaptive_kernel_size(m, torch.tensor([float(steps)]), torch.tensor([float(height)]), 0)
    assert k.item() == expect


def test_kernel_size_capped_by_map():
    m = torch.rand(3, 2, 5)
    k = R.adaptive_kernel_size(m, torch.full((3,), 64.0), torch.full((3,), 512.0), 9)
    assert k.tolist() == [3, 3, 3]  # 2*min(2,5)-1
    k = R.adaptive_kernel_size(torch.rand(1, 1, 7), torch.tensor([64.0]), torch.tensor([512.0]), 0)
    assert k.item() == 1


def test_akd_worked_example():
    # one 0.9 in the corner of a 3x3 map of zeros, k=3
    m = torch.zeros(1, 3, 3)
    m[0, 2, 2] = 0.9
    out = R.rank_gaussian_filter(m, torch.tensor([3]))[0]
    # windows that contain (2,2) once: mu = 0.1, sd = sqrt(0.81/9 - 0.01) = sqrt(0.08),
    # sigma = sd/mu, 2 sigma^2 = 16; the 0.9 sits at rank 8 (d = 4 from the centre rank)
    u = [math.exp(-((j - 4) ** 2) / 16.0) for j in range(9)]
    val = 0.9 * u[8] / sum(u)
    expect = torch.zeros(3, 3)
    # reflect padding: (0,*) and (*,0) windows mirror row/col 1 and never see (2,2)
    for y, x in [(1, 1), (1, 2), (2, 1), (2, 2)]:
        expect[y, x] = val
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=0)


def test_akd_constant_window_and_zero_window():
    m = torch.full((1, 3, 4), 0.3)
    out = R.rank_gaussian_filter(m, torch.tensor([3]))
    torch.testing.assert_close(out, m, atol=1e-7, rtol=0)  # sd == 0 -> mean
    z = torch.zeros(1, 3, 3)
    assert (R.rank_gaussian_filter(z, torch.tensor([3])) == 0).all()  # mu <= 0 -> 0


def test_akd_low_variation_is_median_like():
    # tiny spread: sigma -> 0, the weights collapse onto the centre rank (the median)
    vals = torch.tensor([1.0, 1.001, 1.002, 1.003, 1.004, 1.005, 1.006, 1.007, 1.2])
    m = vals.reshape(1, 3, 3)
    out = R.rank_gaussian_filter(m, torch.tensor([3]))[0, 1, 1]
    assert abs(out.item() - 1.004) < 1e-3


def test_dacg_worked_example():
    f = (torch.arange(1, 10, dtype=torch.float32) / 10).reshape(1, 3, 3)
    out, thr, strat = R.confidence_gate(f, DACG)
    # mean 0.5, std = 0.1*sqrt(60/9) = 0.258 > 0.22 -> high_var, 90th percentile
    assert strat.item() == 0
    # P90 of 0.1..0.9: pos 7.2 -> 0.8 + 0.2*0.1
    assert abs(thr.item() - 0.82) < 1e-6
    e1, e2 = math.exp(-1 / 0.18), math.exp(-2 / 0.18)
    norm = 1 + 4 * e1 + 4 * e2
    # pixel (0,0) = 0.1: reflect window [[.5,.4,.5],[.2,.1,.2],[.5,.4,.5]]
    want00 = (0.1 + e1 * (0.4 + 0.2 + 0.2 + 0.4) + e2 * 4 * 0.5) / norm
    assert abs(out[0, 0, 0].item() - want00) < 1e-6
    assert out[0, 2, 2].item() == pytest.approx(0.9)  # above the threshold: kept
    # the centre is symmetric: its blur equals itself
    assert abs(out[0, 1, 1].item() - 0.5) < 1e-6


@pytest.mark.parametrize("values,strategy,q", [
    ([0.5, 0.52, 0.48, 0.5], 1, 75),    # mean > 0.35, low spread: high_mean, 75th percentile
    ([0.1, 0.12, 0.08, 0.1], 2, 80),    # mean < 0.25: low_mean, 80th
    ([0.3, 0.32, 0.28, 0.3], 3, 85),    # in between: default, 85th
    ([0.0, 0.0, 0.0, 0.0], -1, None),   # nothing positive: no change
])
def test_dacg_strategy_branches(values, strategy, q):
    f = torch.tensor(values).reshape(1, 2, 2)
    out, thr, strat = R.confidence_gate(f, DACG)
    assert strat.item() == strategy
    if strategy == -1:
        assert thr.item() == 0 and torch.equal(out, f)
    else:
        # numpy's percentile of the (float32) values: the q's are typed in above, not read from the config
        want = np.percentile(f.reshape(-1).double().numpy(), q)
        assert thr.item() == pytest.approx(want, rel=1e-6)


def test_dacg_percentiles_differ_per_strategy():
    # the four strategies' percentiles of the same 0.01..1.00 ramp are four different values:
    # P90 = 0.901, P75 = 0.7525, P80 = 0.802, P85 = 0.8515 (pos = q/100 * 99)
    ramp = torch.arange(1, 101, dtype=torch.float32) / 100
    for strategy, want in ((0, 0.901), (1, 0.7525), (2, 0.802), (3, 0.8515)):
        params = list(DACG)
        # force the strategy through the thresholds, keep the config's percentiles
        params[:3] = [(-1.0, 2.0, 2.0, 2.0)[strategy], (2.0, -1.0, 2.0, 2.0)[strategy],
                      (-1.0, -1.0, 2.0, -1.0)[strategy]]
        _, thr, strat = R.confidence_gate(ramp.reshape(1, 10, 10), params)
        assert strat.item() == strategy
        assert thr.item() == pytest.approx(want, rel=1e-6), strategy


def test_blur_weights_worked_example():
    # sigma 0.3: e1 = exp(-1/0.18), e2 = exp(-2/0.18), normalised by 1 + 4 e1 + 4 e2
    e1, e2 = math.exp(-1 / 0.18), math.exp(-2 / 0.18)
    norm = 1 + 4 * e1 + 4 * e2
    want = [e2, e1, e2, e1, 1.0, e1, e2, e1, e2]
    np.testing.assert_allclose(R.gaussian_weights3(0.3).double().numpy(), np.array(want) / norm, rtol=1e-6)
    assert R.gaussian_weights3(0.3).dtype == torch.float32


def test_cba_worked_example():
    e = torch.tensor([[[0.0, 0.2, 0.4, 0.8]]])
    out, tau = R.background_attenuation(e, CBA)
    # P50(nz)=0.4, P60(all): pos 1.8 -> 0.2+0.8*0.2 = 0.36, mean(nz)=1.4/3, max 0.8
    want_tau = 0.15 * 0.4 + 0.15 * 0.36 + 0.2 * (1.4 / 3) + 0.015 * 0.8
    assert tau.item() == pytest.approx(want_tau, abs=1e-6)
    want = [0.0, 0.2 * max(0.2 / want_tau, 0.5), 0.4, 0.8]
    np.testing.assert_allclose(out.reshape(-1).numpy(), want, atol=1e-6)


def test_cba_nothing_below_threshold_and_floor():
    e = torch.full((1, 2, 2), 0.6)  # tau < 0.6: nothing changes
    out, tau = R.background_attenuation(e, CBA)
    assert torch.equal(out, e) and 0 < tau.item() < 0.6
    e = torch.tensor([[[0.01, 1.0, 1.0, 1.0]]])  # a tiny value is halved, never less
    out, tau = R.background_attenuation(e, CBA)
    assert out[0, 0, 0].item() == pytest.approx(0.005, abs=1e-7)


def test_clip_and_normalise():
    c = torch.tensor([[[-0.2, 0.3, 0.9, 1.5]]])
    raw = torch.tensor([[[0.0, 0.5, 1.0, 0.8]]])
    out = R.clip_and_normalise(c, raw)  # clip to [0, 1]: [0, .3, .9, 1]
    np.testing.assert_allclose(out.reshape(-1).numpy(), [0, 0.3, 0.9, 1.0], atol=1e-6)
    const = torch.full((1, 2, 2), 0.4)
    assert torch.equal(R.clip_and_normalise(const, torch.ones(1, 2, 2)), const)


def test_sicd_reference_worked_example():
    m = torch.tensor([[[0.0, 0.25, 0.5, 0.75, 1.0]]])
    out, alpha = R.causal_debias_reference(m, torch.tensor([0.4]))
    # no outlier (mean+2std = 1.207); I = 0.05*0.4 = 0.02 everywhere;
    # alpha = min(0.02*2.5 / (5*0.0004), 0.5) = 0.5
    assert alpha.item() == pytest.approx(0.5)
    np.testing.assert_allclose(out.reshape(-1).numpy(), [0.0, 0.24, 0.49, 0.74, 0.99], atol=1e-6)
    out, alpha = R.causal_debias_reference(m, torch.tensor([0.0]))  # I == 0: no change
    assert alpha.item() == 0 and torch.equal(out, m)


def test_sicd_reference_range_guard():
    # a map with a small range: removing the interference would shrink it by > 10%
    m = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05]]])
    out, alpha = R.causal_debias_reference(m, torch.tensor([0.0]))
    # spike at the last pixel: I = 0.02 there, alpha = min(0.05*0.02/0.0004, .5) = .5
    # -> range 0.05 - 0.01 = 0.04 < 0.9*0.05: undone
    assert alpha.item() == 0 and torch.equal(out, m)


def test_sicd_context_worked_example():
    r = torch.tensor([[[[1.0, 0.5, 0.0]], [[0.0, 0.5, 1.0]]]])  # [1,2,1,3]
    W = torch.tensor([[[0.0, 2.0], [1.0, 0.0]]])
    out, alpha = R.causal_debias_context(r.clone(), r, W)
    # token 0: I = r1 (weight 2/(2+1e-8)); alpha = 0.25/1.25 = 0.2
    np.testing.assert_allclose(alpha.numpy(), [0.2, 0.2], atol=1e-6)
    np.testing.assert_allclose(out.reshape(2, 3).numpy(), [[1.0, 0.4, 0.0], [0.0, 0.4, 1.0]], atol=1e-6)
    # a map equal to its interference: alpha 1 would zero it -> the guard undoes the step
    m = r.flip(1)
    out, alpha = R.causal_debias_context(m.clone(), r, W)
    assert torch.equal(alpha, torch.zeros(2)) and torch.equal(out.reshape(m.shape), m)


def test_percentile_matches_numpy():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 40, generator=g)
    valid = x > 0.3
    for q in (0.0, 17.5, 50.0, 60.0, 90.0, 100.0):
        got = R.percentile(x, valid, torch.full((5,), q))
        want = [np.percentile(x[i][valid[i]].double().numpy(), q) for i in range(5)]
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_refine_degenerate_map_comes_out_zero():
    raw = torch.rand(1, 3, 6, 6)
    raw[0, 1] = 0.7  # constant
    deg = torch.tensor([[False, True, False]])
    out = R.refine_reference(raw, deg, torch.tensor([64.0]), torch.tensor([512.0]), torch.tensor([0.2]),
                             None, None, **CamConfig().op_args())
    maps, ksize, strat, dthr, cthr, alpha = out
    assert (maps[0, 1] == 0).all()
    assert strat[0, 1] == -1 and dthr[0, 1] == 0 and cthr[0, 1] == 0 and alpha[0, 1] == 0
    assert ksize[0, 1] == 3  # std 0 -> k0 = 0 -> clamped to 3
    assert 0.9 < maps[0, 0].max() <= 1.0  # normalised, then lowered a little by SICD
