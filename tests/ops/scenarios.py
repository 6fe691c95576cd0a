"""The scenario lists of the operator tests: one list per op.

Every scenario runs on every available backend other than the reference
(test_scenarios.py; the parametrisation is made in conftest.py) and is
compared with the PyTorch reference: maps at atol 1e-5, integer statistics
exactly, float statistics at atol 1e-5. A scenario may also carry ``expect``,
a property of the reference's result that says the scenario really reaches the
branch it is named after (a DACG strategy, the SICD range guard, a kernel
cap...); those are checked against hand-known values, never against another
backend.

This module is loaded by conftest.py (test modules never import each other):
tests reach it through the ``scenarios`` fixture.

Sizes: Triton runs in its CPU interpreter where there is no GPU, which is
slow, so scenarios stay small (maps <= 12x12, one 27x20, D <= 64). The few
``heavy`` ones (many 24x24 maps, a 1500-feature pooling) run on the C++
backend and on compiled Triton only.
"""
from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from dcam.ops.config import CamConfig

ATOL = 1e-5

#: The refine op's outputs, by name.
Out = namedtuple("Out", "maps kernel_size dacg_strategy dacg_threshold cba_threshold sicd_alpha")
#: The pooling op's outputs.
PoolOut = namedtuple("PoolOut", "maps degenerate grads_nonfinite")


# ------------------------------------------------------------------ the scenario types

@dataclass(frozen=True)
class RefineCase:
    id: str
    build: Callable[[], Dict]  # -> inputs(...) dict
    config: CamConfig = field(default_factory=CamConfig)
    heavy: bool = False  # too slow for Triton's interpreter
    gpu_tile: bool = False  # also run the Triton kernel with its GPU tile size
    expect: Optional[Callable[[Dict, Out], None]] = None  # asserts on the reference result

    def args(self) -> Tuple:
        """The op's positional arguments (the signature shared by every kernel)."""
        x = self.build()
        o = self.config.op_args()
        return (x["raw"], x["degenerate"], x["steps"], x["image_size"], x["repeat_ratio"], x["context_maps"],
                x["context_weights"], o["akd_kernel"], o["akd"], o["dacg"], o["cba"], o["sicd"],
                o["dacg_params"], o["cba_params"])


@dataclass(frozen=True)
class PoolCase:
    id: str
    build: Callable[[], Tuple[torch.Tensor, torch.Tensor, int, int]]  # -> (acts, grads, h, w)
    grad_relu: bool = True
    heavy: bool = False
    expect: Optional[Callable[[PoolOut], None]] = None


# ------------------------------------------------------------------ comparison

def compare(ref, got, names, what: str = "") -> None:
    """Assert that ``got`` matches the reference output ``ref`` field by field:
    same dtype and shape; float32 tensors at atol 1e-5, everything else exactly."""
    problems = []
    for name, r, g in zip(names, ref, got):
        g = g.detach().cpu()
        if g.dtype != r.dtype or g.shape != r.shape:
            problems.append(f"{name}: {g.dtype}{tuple(g.shape)} != reference {r.dtype}{tuple(r.shape)}")
            continue
        if r.dim() == 0 and r.dtype == torch.bool:
            if bool(g) != bool(r):
                problems.append(f"{name}: {bool(g)} != reference {bool(r)}")
            continue
        if r.is_floating_point():
            diff = (g.double() - r.double()).abs()
            bad = ~(diff <= ATOL)  # NaN counts as bad
        else:
            bad = g != r
        if bool(bad.any()):
            idx = tuple(bad.nonzero()[0].tolist())
            problems.append(f"{name}: {int(bad.sum())} of {bad.numel()} differ; first at {idx}: "
                            f"{g[idx].item()!r} != reference {r[idx].item()!r}")
    assert not problems, f"{what} disagrees with the reference:\n  " + "\n  ".join(problems)


# ------------------------------------------------------------------ input builders

def inputs(raw, degenerate=None, steps=64.0, image_size=512.0, repeat_ratio=0.1, context_maps=None,
           context_weights=None) -> Dict:
    """The refine op's tensors: per-image scalars become float32 [B]; the
    degenerate flags default to "constant map" (what the public API computes)."""
    B, T = raw.shape[:2]
    per_image = lambda v: torch.as_tensor(v, dtype=torch.float32).expand(B).contiguous()  # noqa: E731
    if degenerate is None:
        flat = raw.float().reshape(B, T, -1)
        degenerate = ~(flat.amax(dim=2) > flat.amin(dim=2))
    return dict(raw=raw, degenerate=degenerate, steps=per_image(steps), image_size=per_image(image_size),
                repeat_ratio=per_image(repeat_ratio), context_maps=context_maps, context_weights=context_weights)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def normalised(x):
    B, T = x.shape[:2]
    f = x.reshape(B, T, -1)
    lo, hi = f.min(dim=2, keepdim=True).values, f.max(dim=2, keepdim=True).values
    return ((f - lo) / (hi - lo + 1e-8)).reshape(x.shape)


def blobs(B, T, h, w, seed, noise=0.15):
    """Smooth CAM-like maps: a few Gaussian blobs plus noise, normalised to [0, 1]."""
    g = gen(seed)
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


def uniform(B, T, h, w, seed):
    return torch.rand(B, T, h, w, generator=gen(seed))


def field_map(value, noise, seed, h=12, w=12):
    """value +- noise/2, uniform."""
    return value + noise * (torch.rand(1, 1, h, w, generator=gen(seed)) - 0.5)


def context_weights(B, T, seed):
    """Non-negative [B,T,T] weights, zero diagonal, token 0 without any context."""
    W = torch.rand(B, T, T, generator=gen(seed)) * (1 - torch.eye(T))
    W[:, 0, :] = 0
    return W


def tiny_pair(tiny, orient, h=8, w=8):
    """Zeros with 1.0 at one pixel and `tiny` two pixels away (same row or same column);
    orient "block": a 3x3 block of `tiny` whose nearest pixel is two pixels away."""
    m = torch.zeros(1, 1, h, w)
    m[0, 0, 3, 2] = 1.0
    if orient == "row":
        m[0, 0, 3, 4] = tiny
    elif orient == "col":
        m[0, 0, 5, 2] = tiny
    else:
        m[0, 0, 2:5, 4:7] = tiny
    assert m[m > 0].min().item() > 0, "the tiny value must be representable in float32"
    return m


def pool_inputs(B, T, h, w, D, seed, dtype=torch.float32, acts_scale=1.0, grads_scale=1.0):
    """Activations with a spatial bump (raw maps with a real range) and gradients with a positive bias."""
    g = gen(seed)
    N = h * w
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    bump = torch.exp(-((yy - h / 3) ** 2 + (xx - w / 2) ** 2) / (0.2 * N + 1)).reshape(1, N, 1)
    acts = (torch.randn(B, N, D, generator=g) + 3.0 * bump) * acts_scale
    grads = (torch.randn(B, T, N, D, generator=g) + 0.3) * grads_scale
    return acts.to(dtype), grads.to(dtype), h, w


# ------------------------------------------------------------------ expectations (hand-known properties)

def expect_strategies(codes):
    def check(x, out):
        assert out.dacg_strategy.flatten().tolist() == codes
    return check


def expect_kernel(k):
    def check(x, out):
        assert (out.kernel_size == k).all(), out.kernel_size.tolist()
    return check


def expect_kernel_capped(x, out):
    h, w = x["raw"].shape[2:]
    assert (out.kernel_size <= 2 * min(h, w) - 1).all() and (out.kernel_size % 2 == 1).all()


def expect_alpha_zero(x, out):
    assert (out.sicd_alpha == 0).all(), out.sicd_alpha.tolist()


def expect_degenerate_zero(x, out):
    deg = x["degenerate"]
    assert deg.any()
    assert (out.maps[deg] == 0).all() and (out.dacg_strategy[deg] == -1).all()
    assert (out.dacg_threshold[deg] == 0).all() and (out.cba_threshold[deg] == 0).all()
    assert (out.sicd_alpha[deg] == 0).all()


# ------------------------------------------------------------------ refine scenarios

REFINE: List[RefineCase] = []


def refine_case(id, build, config=None, **kw):
    REFINE.append(RefineCase(id, build, config or CamConfig(), **kw))


# -- shapes, batches, strides
refine_case("random-B2T3-12x12",
            lambda: inputs(uniform(2, 3, 12, 12, 0), steps=[64.0, 32.0], image_size=[512.0, 768.0],
                           repeat_ratio=[0.1, 0.4]),
            expect=lambda x, out: set(out.kernel_size.flatten().tolist()) <= {3, 5, 7, 9, 11})
refine_case("blobs-B2T2-12x11", lambda: inputs(blobs(2, 2, 12, 11, 3), steps=[64.0, 16.0], image_size=[512.0, 1024.0]))
refine_case("non-square-27x20",
            lambda: inputs(blobs(1, 2, 27, 20, 14), steps=48.0, image_size=900.0, repeat_ratio=0.2))
refine_case("non-square-20x27-k11", lambda: inputs(uniform(1, 2, 20, 27, 15)), CamConfig(akd_kernel=11),
            expect=expect_kernel(11))
refine_case("non-square-9x11-sparse", lambda: inputs(normalised(uniform(1, 3, 9, 11, 5) ** 6)))
refine_case("T1-B3", lambda: inputs(uniform(3, 1, 12, 12, 11), steps=[16.0, 32.0, 64.0],
                                    image_size=[512.0, 600.0, 700.0]))
refine_case("B1-T5-9x13", lambda: inputs(blobs(1, 5, 9, 13, 6), steps=24.0, image_size=640.0, repeat_ratio=0.3))
refine_case("non-contiguous", lambda: inputs(blobs(2, 3, 10, 7, 27).transpose(2, 3)),
            expect=lambda x, out: _assert(not x["raw"].is_contiguous(), "raw is contiguous"))
refine_case("expanded-per-image-scalars",
            lambda: dict(inputs(blobs(2, 2, 8, 8, 9)), steps=torch.tensor(40.0).expand(2),
                         image_size=torch.tensor(800.0).expand(2), repeat_ratio=torch.tensor(0.25).expand(2)))
refine_case("float16-raw", lambda: inputs(blobs(2, 2, 8, 8, 10).half()))
refine_case("1x1", lambda: inputs(torch.tensor([[[[0.3]], [[0.0]]], [[[1.0]], [[0.5]]]]),
                                  degenerate=torch.tensor([[False, True], [False, False]])),
            expect=lambda x, out: (expect_kernel(1)(x, out), expect_degenerate_zero(x, out)))
for _h, _w in [(1, 17), (13, 1), (1, 2), (2, 1), (2, 2), (3, 3), (2, 9), (3, 30)]:
    _build = (lambda h=_h, w=_w: inputs(normalised(uniform(2, 3, h, w, h * 31 + w)),
                                        steps=64.0, image_size=1024.0))
    refine_case(f"strip-{_h}x{_w}", _build, expect=expect_kernel_capped)
    refine_case(f"strip-{_h}x{_w}-k9", _build, CamConfig(akd_kernel=9),
                expect=lambda x, out, h=_h, w=_w: expect_kernel(min(9, 2 * min(h, w) - 1))(x, out))

# -- tile remainders (sizes that are no multiple of the C++ 8-pixel lanes or the Triton blocks);
#    a few also with Triton's GPU tile size (chunked AKD / rank loops, run in the interpreter too)
refine_case("remainder-17x3", lambda: inputs(blobs(1, 2, 17, 3, 30)))
refine_case("remainder-5x13-k5", lambda: inputs(blobs(2, 1, 5, 13, 31)), CamConfig(akd_kernel=5))
refine_case("gpu-tile-9x9-k7", lambda: inputs(blobs(1, 1, 9, 9, 21)), CamConfig(akd_kernel=7), gpu_tile=True)
refine_case("gpu-tile-9x9-adaptive", lambda: inputs(uniform(1, 1, 9, 9, 21), image_size=1024.0), gpu_tile=True)
refine_case("gpu-tile-5x7-B1T2-context",
            lambda: inputs(blobs(1, 2, 5, 7, 22), context_weights=torch.tensor([[[0.0, 1.0], [0.5, 0.0]]])),
            CamConfig(sicd="context", akd_kernel=5), gpu_tile=True)
refine_case("gpu-tile-3x17-ties", lambda: inputs(torch.randint(0, 4, (1, 1, 3, 17), generator=gen(23)).float() / 3),
            gpu_tile=True)

# -- degenerate and constant maps
def _degenerate_mix():
    raw = blobs(2, 4, 8, 8, 12)
    raw[0, 1] = 0.0
    raw[1, 2] = 0.0
    raw[1, 3] = 0.7  # constant, not flagged: goes through every step
    raw[0, 3] = 0.0  # all zero, not flagged: every nz() set is empty
    deg = torch.zeros(2, 4, dtype=torch.bool)
    deg[0, 1] = deg[1, 2] = True
    return inputs(raw, degenerate=deg)


def _expect_degenerate_mix(x, out):
    expect_degenerate_zero(x, out)
    assert (out.kernel_size[x["degenerate"]] == 3).all()  # std 0 -> k0 = 0 -> 3
    assert out.dacg_strategy[0, 3] == -1 and out.dacg_threshold[0, 3] == 0 and out.cba_threshold[0, 3] == 0


refine_case("degenerate-mixed", _degenerate_mix, expect=_expect_degenerate_mix)
refine_case("degenerate-flag-on-nonconstant",
            lambda: inputs(uniform(1, 2, 12, 12, 13), degenerate=torch.tensor([[True, False]])),
            expect=lambda x, out: (expect_degenerate_zero(x, out),
                                   _assert(out.kernel_size[0, 0] == out.kernel_size[0, 1])))
refine_case("constant-maps", lambda: inputs(torch.full((2, 2, 8, 8), 0.7),
                                            degenerate=torch.tensor([[True, False], [False, True]])),
            expect=expect_degenerate_zero)

# -- ties
def _ties():
    raw = torch.randint(0, 5, (2, 2, 10, 10), generator=gen(14)).float() / 4  # exact in float32
    raw[1, 1, :, :5] = 0.5  # a large constant patch
    return inputs(raw)


# map 0 comes out of AKD (k = 11) with a range of 4e-4: the final normalisation magnifies a
# one-ulp difference of DACG's blur ~2400x (found here: the reference rounded its blur
# weights differently from C++ and Triton)
refine_case("ties-5-levels", _ties)
refine_case("ties-5-levels-akd-off", _ties, CamConfig(akd=False))
for _k in (3, 5, 11):
    refine_case(f"ties-5-levels-akd-only-k{_k}", _ties, CamConfig(dacg=False, cba=False, sicd="off", akd_kernel=_k))
refine_case("ties-3-levels-k5",
            lambda: inputs(torch.randint(0, 3, (1, 3, 12, 12), generator=gen(18)).float() / 2), CamConfig(akd_kernel=5))

# -- DACG: every branch (high_var, high_mean, low_mean, default, no positive pixel)
def _dacg_branches():
    maps = torch.cat([
        torch.cat([torch.zeros(1, 1, 6, 12), torch.ones(1, 1, 6, 12)], dim=2),  # sd 0.5: high_var
        field_map(0.55, 0.3, 1),  # mean .55, sd .09: high_mean
        field_map(0.175, 0.25, 2),  # mean .175: low_mean
        field_map(0.30, 0.2, 3),  # mean .30: default
        torch.zeros(1, 1, 12, 12),  # no positive value
    ], dim=1)
    return inputs(maps, degenerate=torch.zeros(1, 5, dtype=torch.bool))


def _expect_dacg_branches(x, out):
    assert out.dacg_strategy.flatten().tolist() == [0, 1, 2, 3, -1]
    assert out.dacg_threshold[0, 4] == 0 and (out.dacg_threshold[0, :4] > 0).all()


refine_case("dacg-every-branch-akd-off", _dacg_branches, CamConfig(akd=False, cba=False, sicd="off"),
            expect=_expect_dacg_branches)
refine_case("dacg-every-branch-akd-k3", _dacg_branches, CamConfig(akd_kernel=3, cba=False, sicd="off"),
            expect=_expect_dacg_branches)
refine_case("dacg-every-branch-full", _dacg_branches, CamConfig(akd_kernel=3))


def _dacg_floor():
    m = torch.zeros(1, 1, 10, 10)
    m[0, 0, 2:8, 2:8] = 1e-7
    m[0, 0, 5, 5] = 1.0
    return inputs(m)


def _near_constant():
    # maps within a few ulps of a constant (and one 0): DACG blurs nearly every pixel, and the
    # final normalisation of the result magnifies a one-ulp difference of the blur ~1e6x. Only
    # bit-identical blur weights (one definition: reference.gaussian_weights3_values) agree.
    g = gen(77)
    base = torch.tensor([0.3, 0.125]).reshape(1, 2, 1, 1)
    raw = base + torch.randint(-3, 4, (1, 2, 6, 5), generator=g).float() * base * 2.0 ** -23
    raw[:, :, 0, 0] = 0.0
    return inputs(raw)


for _sigma in (0.3, 0.45, 1.45, 2.75):
    refine_case(f"dacg-blur-near-constant-sigma-{_sigma}", _near_constant,
                CamConfig(akd_kernel=3, sicd="off", dacg_sigma=_sigma))
    refine_case(f"dacg-blur-near-constant-sigma-{_sigma}-akd-off", _near_constant,
                CamConfig(akd=False, cba=False, sicd="off", dacg_sigma=_sigma))
refine_case("dacg-zeta-floor", _dacg_floor, CamConfig(akd=False, cba=False, sicd="off"),
            expect=lambda x, out: _assert(abs(out.dacg_threshold.item() - 1e-6) < 1e-12))
refine_case("non-default-parameters", lambda: inputs(blobs(1, 4, 10, 10, 26)),
            CamConfig(dacg_std=0.1, dacg_mean_high=0.5, dacg_mean_low=0.05, dacg_percentiles=(50.0, 33.3, 12.5, 99.9),
                      dacg_sigma=0.7, cba_weights=(0.3, 0.1, 0.1, 0.1), cba_floor=0.25))

# -- CBA
def _cba_maps():
    return inputs(torch.cat([field_map(0.95, 0.1, 4), torch.zeros(1, 1, 12, 12), field_map(0.2, 0.4, 5).clamp(0, 1)],
                            dim=1), degenerate=torch.zeros(1, 3, dtype=torch.bool))


def _expect_cba(x, out):
    tau = out.cba_threshold[0]
    assert tau[1] == 0  # no positive value
    assert 0 < tau[0] < x["raw"][0, 0].min()  # nothing below tau in map 0
    assert (x["raw"][0, 2] < tau[2]).any()  # map 2 has a background


refine_case("cba-nothing-below-and-empty", _cba_maps, CamConfig(akd=False, dacg=False, sicd="off"), expect=_expect_cba)

# -- SICD
refine_case("sicd-reference-rho", lambda: inputs(blobs(2, 3, 10, 10, 21), repeat_ratio=[0.0, 0.5]),
            expect=lambda x, out: _assert((out.sicd_alpha[1] > 0).all()))


def _two_valued():
    m = torch.zeros(1, 1, 8, 8)
    m[0, 0, :, 4:] = 1.0  # nothing above mean + 2 std
    return inputs(m, repeat_ratio=0.0)


refine_case("sicd-reference-zero-interference", _two_valued, CamConfig(akd=False, dacg=False, cba=False),
            expect=expect_alpha_zero)


def _tiny_range():
    # raw maps whose range (1e-9) is far below EPS_NORM: normalised, their range is only
    # 1e-9 / (1e-9 + 1e-8) = 0.09, so removing the scaled interference (rho = 1: alpha capped
    # at 0.5, I = 0.05) shrinks it to 0.066 < 0.9 * 0.09: the guard undoes SICD
    m = torch.zeros(1, 2, 6, 6)
    m[0, 0, :3] = 1e-9
    m[0, 1, :, 2:] = 1e-9
    return inputs(m, repeat_ratio=1.0)


refine_case("sicd-reference-range-guard", _tiny_range, CamConfig(akd=False, dacg=False, cba=False),
            expect=expect_alpha_zero)
refine_case("sicd-reference-range-guard-full", _tiny_range)


def _sicd_underflow():
    # a non-degenerate raw map that AKD turns into zeros (a lone 1e-45) and a tiny repeat ratio:
    # I = 5e-32, I*I underflows to 0 in float32; the least-squares scale of a zero map is 0, not 0/0
    m = torch.zeros(1, 2, 5, 5)
    m[0, :, 2, 2] = 1e-45
    m[0, 1, 0, 0] = 1.0
    return inputs(m, repeat_ratio=1e-30)


refine_case("sicd-reference-ii-underflow", _sicd_underflow,
            expect=lambda x, out: _assert(torch.isfinite(out.maps).all() and out.sicd_alpha[0, 0] == 0
                                          and out.sicd_alpha[0, 1] == 0.5))
refine_case("sicd-reference-ii-underflow-akd-off", _sicd_underflow, CamConfig(akd=False, dacg=False, cba=False))
refine_case("sicd-context", lambda: inputs(blobs(2, 4, 8, 8, 22), context_weights=context_weights(2, 4, 23)),
            CamConfig(sicd="context"), expect=lambda x, out: _assert((out.sicd_alpha[:, 0] == 0).all()))


def _context_degenerate():
    # token 1's raw map is constant (degenerate: 0 everywhere in section 1) but holds 0.05, and it is
    # token 0's whole context: token 0 has no interference, so no change and alpha 0 (it took the 0.05)
    raw = torch.full((1, 2, 8, 8), 0.05)
    raw[0, 0] = normalised(blobs(1, 1, 8, 8, 25))[0, 0]
    return inputs(raw, context_weights=torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))


def _expect_as_without_sicd(x, out):
    from dcam.ops.reference import refine_reference

    o = CamConfig(sicd="off").op_args()
    off = refine_reference(x["raw"], x["degenerate"], x["steps"], x["image_size"], x["repeat_ratio"], None, None,
                           *o.values())
    _assert((out.sicd_alpha == 0).all() and x["degenerate"][0].tolist() == [False, True])
    torch.testing.assert_close(out.maps[0, 0], off[0][0, 0], atol=1e-6, rtol=0)


refine_case("sicd-context-degenerate-context", _context_degenerate, CamConfig(sicd="context"),
            expect=_expect_as_without_sicd)


def _context_low():
    x = inputs(blobs(2, 3, 8, 8, 18), context_weights=context_weights(2, 3, 18))
    x["context_maps"] = (1 - x["raw"]) ** 4  # interference mostly where the map is low: the step is kept
    return x


refine_case("sicd-context-maps", _context_low, CamConfig(sicd="context"),
            expect=lambda x, out: _assert(((out.sicd_alpha > 0) & (out.sicd_alpha < 1)).any()))


def _context_uniform():
    x = inputs(blobs(2, 3, 8, 8, 19), context_weights=context_weights(2, 3, 19))
    x["context_maps"] = 0.02 + 0.04 * torch.rand(2, 3, 8, 8, generator=gen(19))
    return x


refine_case("sicd-context-alpha-clamped-to-1", _context_uniform, CamConfig(sicd="context"),
            expect=lambda x, out: _assert((out.sicd_alpha == 1).any()))


def _context_same():
    # both tokens have the same map (min 0, max 1) and each is the other's whole context:
    # alpha ~ 1 would wipe the map out, so the guard undoes the step
    one = normalised(torch.rand(1, 1, 8, 8, generator=gen(19)))
    raw = one.expand(2, 2, 8, 8).contiguous()
    return inputs(raw, context_weights=torch.tensor([[0.0, 1.0], [1.0, 0.0]]).expand(2, 2, 2).contiguous())


refine_case("sicd-context-range-guard", _context_same, CamConfig(sicd="context", akd=False, dacg=False, cba=False),
            expect=expect_alpha_zero)
refine_case("sicd-context-range-guard-full", _context_same, CamConfig(sicd="context"))
refine_case("sicd-context-tiny-weights",
            lambda: inputs(blobs(1, 3, 8, 8, 24), context_weights=torch.full((1, 3, 3), 1e-8) * (1 - torch.eye(3))),
            CamConfig(sicd="context", akd=False, dacg=False, cba=False))

# -- module switches
for _name, _cfg in [("akd-off", CamConfig(akd=False)), ("dacg-off", CamConfig(dacg=False)),
                    ("cba-off", CamConfig(cba=False)), ("sicd-off", CamConfig(sicd="off")),
                    ("all-off", CamConfig(akd=False, dacg=False, cba=False, sicd="off"))]:
    def _expect_switch(x, out, cfg=_cfg):
        assert (out.kernel_size >= 3).all()  # reported even without AKD
        if not cfg.dacg:
            assert (out.dacg_strategy == -1).all() and (out.dacg_threshold == 0).all()
        if not cfg.cba:
            assert (out.cba_threshold == 0).all()
        if cfg.sicd == "off":
            assert (out.sicd_alpha == 0).all()
    refine_case(f"switch-{_name}", lambda: inputs(blobs(2, 3, 12, 12, 25), steps=[24.0, 64.0]), _cfg,
                expect=_expect_switch)

# -- kernel sizes
for _k in (1, 3, 5, 7, 9, 11, 13):
    refine_case(f"fixed-kernel-{_k}", lambda k=_k: inputs(blobs(1, 3, 12, 12, k)), CamConfig(akd_kernel=_k),
                expect=expect_kernel(_k))
refine_case("fixed-kernel-capped-4x6", lambda: inputs(blobs(1, 2, 4, 6, 16)), CamConfig(akd_kernel=11),
            expect=expect_kernel(7))
refine_case("fixed-kernel-capped-6x8-k15", lambda: inputs(blobs(1, 2, 6, 8, 13)), CamConfig(akd_kernel=15),
            expect=expect_kernel(11))
refine_case("fixed-kernel-capped-3x30", lambda: inputs(blobs(1, 2, 3, 30, 17)), CamConfig(akd_kernel=9),
            expect=expect_kernel(5))


def _adaptive_varied():
    raw = torch.cat([blobs(4, 1, 12, 12, 7), uniform(4, 1, 12, 12, 8)], dim=1)
    return inputs(raw, steps=[8.0, 16.0, 32.0, 64.0], image_size=[256.0, 512.0, 768.0, 1024.0],
                  repeat_ratio=[0.0, 0.1, 0.5, 1.0])


refine_case("adaptive-kernel-varied", _adaptive_varied,
            expect=lambda x, out: _assert(len(set(out.kernel_size.flatten().tolist())) >= 3))


def _two_valued(std, h=12, w=12):
    m = torch.full((1, 1, h, w), 0.5 - std)
    m[0, 0, : h // 2] = 0.5 + std
    return m


# 3 * min(32/16, 2) * min(5 * 0.2, 2) * 1 = 6 in real numbers, but the float32 map's std is
# 0.19999999: 5.9999996 -> 5. Every backend must round the way the reference does.
refine_case("adaptive-kernel-rounding-edge", lambda: inputs(_two_valued(0.2), steps=32.0, image_size=512.0),
            expect=expect_kernel(5))
refine_case("adaptive-kernel-0.3-10-700", lambda: inputs(_two_valued(0.3), steps=10.0, image_size=700.0),
            expect=expect_kernel(3))  # 3 * 0.625 * 1.5 * 1.367 = 3.84 -> 3


def _unnormalised():
    g = gen(20)
    raw = torch.randn(1, 3, 10, 10, generator=g) * 0.2 + 0.3  # some values below 0
    raw[0, 2] *= 7.0  # and some far above 1
    return inputs(raw)


# the public API refuses raw maps outside [0, 1]; the registered op takes them as they come,
# and every kernel must still give the reference's result
refine_case("op-level-raw-outside-unit-range", _unnormalised)
refine_case("op-level-raw-outside-unit-range-k5", _unnormalised, CamConfig(akd_kernel=5))

# -- tiny values: zeros with 1.0 at one pixel and a tiny value two pixels away (a
#    float32 normal, the smallest normal's neighbourhood, a denormal, the smallest
#    denormal); windows that hold the tiny value but not the 1.0 have a positive mean
#    (a lone 1e-45 comes out 0 after rounding, a block of them does not), so DACG's and
#    CBA's nz() sets count them
for _tiny in (1e-30, 1e-38, 1e-40, 1e-45):
    for _orient in ("row", "col", "block"):
        for _cname, _cfg in (("default", CamConfig()), ("dacg-off", CamConfig(dacg=False)),
                             ("k5-dacg-off", CamConfig(akd_kernel=5, dacg=False))):
            refine_case(f"tiny-{_tiny:g}-{_orient}-{_cname}", lambda t=_tiny, o=_orient: inputs(tiny_pair(t, o)),
                        _cfg)


def _dynamic_range():
    g = gen(40)
    e = -30.0 * torch.rand(1, 2, 12, 12, generator=g)
    m = torch.pow(10.0, e)
    m[torch.rand(m.shape, generator=g) < 0.3] = 0.0
    m[0, :, 6, 6] = 1.0
    return inputs(m)


def _denormals():
    g = gen(41)
    tiny = torch.finfo(torch.float32).tiny  # 1.18e-38, the smallest normal
    m = torch.rand(1, 3, 10, 10, generator=g) * tiny  # denormals everywhere
    m[0, 0, 4, 5] = 1.0  # one large value among them
    m[0, 1, 0, 0] = 0.0
    assert (m[0, 2] < tiny).all() and (m[0, 2] > 0).all()
    return inputs(m)


for _cname, _cfg in (("default", CamConfig()), ("dacg-off", CamConfig(dacg=False)),
                     ("k3-akd-only", CamConfig(akd_kernel=3, dacg=False, cba=False, sicd="off"))):
    refine_case(f"tiny-dynamic-range-{_cname}", _dynamic_range, _cfg)
    refine_case(f"tiny-denormals-everywhere-{_cname}", _denormals, _cfg)

# -- heavy: many smooth maps (many pixels on AKD's median plateaus and on DACG's percentile)
for _sicd in ("off", "reference", "context"):
    refine_case(f"heavy-smooth-B4T32-24x24-sicd-{_sicd}",
                lambda s=_sicd: inputs(blobs(4, 32, 24, 24, 11), repeat_ratio=[0.1, 0.3, 0.0, 0.6],
                                       context_weights=context_weights(4, 32, 5) if s == "context" else None),
                CamConfig(sicd=_sicd), heavy=True)
refine_case("heavy-random-B2T5-24x24", lambda: inputs(uniform(2, 5, 24, 24, 1), steps=[64.0, 32.0],
                                                      image_size=[512.0, 768.0], repeat_ratio=[0.1, 0.4]), heavy=True)
refine_case("heavy-sparse-24x24", lambda: inputs(normalised(uniform(2, 3, 24, 24, 5) ** 6)), heavy=True)
refine_case("heavy-ties-24x24-k11",
            lambda: inputs(torch.randint(0, 5, (2, 4, 24, 24), generator=gen(18)).float() / 4),
            CamConfig(akd_kernel=11), heavy=True)


# ------------------------------------------------------------------ pooling scenarios

POOL: List[PoolCase] = []


def pool_case(id, build, grad_relu=True, **kw):
    POOL.append(PoolCase(id, build, grad_relu, **kw))


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

for _dn, _dt in _DTYPES.items():
    for _relu in (True, False):
        pool_case(f"dtype-{_dn}-relu-{'on' if _relu else 'off'}",
                  lambda dt=_dt: pool_inputs(2, 3, 6, 8, 64, 30, dt), _relu,
                  expect=lambda out: _assert(not out.degenerate.any()))
for _relu in (True, False):
    pool_case(f"odd-5x7-D37-relu-{'on' if _relu else 'off'}", lambda: pool_inputs(1, 3, 5, 7, 37, 31), _relu)
# remainders of every blocked loop (C++: bf16 16-column pairs, 8-row groups, 4x3 product
# tiles, feature padding to 4; Triton: BLOCK_N/BLOCK_D/BLOCK_T tails)
for _T, _h, _w, _D in [(1, 1, 1, 1), (5, 3, 3, 15), (7, 1, 9, 33), (4, 4, 4, 47), (6, 3, 5, 63)]:
    for _dn in ("fp32", "bf16"):
        for _relu in (True, False):
            pool_case(f"remainder-T{_T}-{_h}x{_w}-D{_D}-{_dn}-relu-{'on' if _relu else 'off'}",
                      lambda T=_T, h=_h, w=_w, D=_D, dt=_DTYPES[_dn]: pool_inputs(2, T, h, w, D, 35 + D, dt), _relu)
pool_case("27x20-D40", lambda: pool_inputs(1, 2, 27, 20, 40, 2))
pool_case("T20-3x5-D24-relu-off", lambda: pool_inputs(1, 20, 3, 5, 24, 3), False)
pool_case("T20-3x5-D24-relu-on", lambda: pool_inputs(1, 20, 3, 5, 24, 3), True)
pool_case("1x1-B2", lambda: pool_inputs(2, 2, 1, 1, 8, 4), expect=lambda out: _assert(out.degenerate.all()))


def _noncontiguous():
    acts, grads, h, w = pool_inputs(2, 2, 6, 4, 16, 5)
    grads = grads.transpose(2, 3).contiguous().transpose(2, 3)
    acts = acts.transpose(1, 2).contiguous().transpose(1, 2)
    assert not grads.is_contiguous() and not acts.is_contiguous()
    return acts, grads, h, w


pool_case("non-contiguous", _noncontiguous)


def _degenerate_pool():
    acts, grads, h, w = pool_inputs(3, 2, 8, 8, 16, 6)
    acts[0] = 0.0  # image 0: raw maps all zero
    acts[1] = acts[1, :1]  # image 1: identical tokens, constant raw maps
    grads[2, 1] = -grads[2, 1].abs()  # image 2, token 1: no positive gradient
    return acts, grads, h, w


pool_case("degenerate-relu-on", _degenerate_pool, True,
          expect=lambda out: _assert(out.degenerate.tolist() == [[True, True], [True, True], [False, True]]))
pool_case("degenerate-relu-off", _degenerate_pool, False,
          expect=lambda out: _assert(out.degenerate[:2].all() and not out.degenerate[2].any()))


def _small_int_pool(relu):
    g = gen(42)
    acts = torch.randint(-2, 3, (2, 30, 12), generator=g).float()
    grads = torch.randint(-1, 3, (2, 3, 30, 12), generator=g).float()
    return acts, grads, 5, 6


pool_case("ties-small-integers-relu-on", lambda: _small_int_pool(True), True)
pool_case("ties-small-integers-relu-off", lambda: _small_int_pool(False), False)
pool_case("magnitude-tiny-1e-30", lambda: pool_inputs(1, 2, 6, 6, 32, 43, acts_scale=1e-20, grads_scale=1e-10))
pool_case("magnitude-huge-1e30", lambda: pool_inputs(1, 2, 6, 6, 32, 44, acts_scale=1e15, grads_scale=1e15))
pool_case("magnitude-huge-1e30-relu-off", lambda: pool_inputs(1, 2, 6, 6, 32, 44, acts_scale=1e15, grads_scale=1e15),
          False)


def _mixed_range():
    acts, grads, h, w = pool_inputs(1, 2, 7, 5, 24, 45)
    scale = torch.pow(10.0, torch.linspace(-15, 15, 24))  # per feature: 1e-15 .. 1e15 (products 1e-30 .. 1e30)
    return acts * scale, grads * scale, h, w


pool_case("dynamic-range-mixed-features", _mixed_range)
pool_case("dynamic-range-mixed-features-relu-off", _mixed_range, False)
pool_case("fp16-small-magnitudes", lambda: pool_inputs(1, 2, 4, 4, 16, 46, torch.float16, 1e-2, 1e-2))
pool_case("heavy-wide-features-D1500", lambda: pool_inputs(1, 2, 12, 12, 1500, 32), heavy=True)
pool_case("heavy-wide-features-D1500-bf16", lambda: pool_inputs(1, 2, 12, 12, 1500, 32, torch.bfloat16), heavy=True)


# ------------------------------------------------------------------ small helpers

def _assert(cond, msg="expectation failed"):
    assert bool(cond), msg


def by_id(cases, id):
    return next(c for c in cases if c.id == id)
