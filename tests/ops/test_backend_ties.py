"""Raw maps an ulp apart on a refinement decision's tie (docs/ALGORITHM.md, "the two steps chained").

Whole-number activations and gradients (as quantised inputs give) pool to maps with exact values and
exact ties, here two pixels of 0.625; a float32 pooling may land one ulp below one of them (the torch
backend's product does on this example, the C++ backend's sums land below on both). Refinement's SICD
step then decides the other way. What the docs promise, and this checks on every backend: the decision follows the raw maps, never
the backend, so refining one backend's raw maps anywhere gives that backend's refined maps.
"""
import torch

import dcam

# one image, 2 words, a 3x3 grid, 8 channels of small whole numbers (found by a stranger embedding dcam)
ACTS = [[[-1, 2, -1, -1, 1, -1, 1, 1], [-1, 1, 0, -1, 0, 1, 1, 1], [1, -1, -2, -1, 2, 0, 0, 0],
         [1, 0, 1, -1, 0, 2, 1, 1], [0, 2, 0, -1, -2, 1, 1, -1], [0, -2, 0, 1, 0, 2, -1, 0],
         [0, -1, -1, 0, -1, 0, 1, 2], [1, 1, -1, 0, 1, 1, -2, 3], [-1, 0, 1, 0, 1, 0, 0, -1]]]
GRADS = [[[[1, -1, 0, 0, 0, 0, 0, -1], [1, 0, 1, -1, -2, -1, -1, 0], [0, 2, 0, 0, -1, 0, -1, 0],
           [0, 1, 2, 0, 1, -1, 0, -1], [2, -1, 0, -1, 0, 0, 2, 0], [0, 0, 2, -1, 1, -1, 1, 0],
           [-1, -1, 3, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 2, 0, -1], [1, -1, 1, 0, 0, 1, -1, 0]],
          [[0, 1, 0, 0, -1, 0, 0, -1], [1, -1, 1, -2, 1, 1, 0, 0], [-1, 2, 1, 1, 0, 0, -1, 0],
           [2, 1, 1, -2, -2, -1, -2, 0], [-1, 1, 2, 0, 1, -2, 0, 1], [-2, 0, 0, 1, 0, -1, -1, -2],
           [0, 0, 0, -1, 0, 0, 1, -1], [-1, 1, 0, -1, -2, 0, 0, 1], [1, -1, -2, 0, 1, 0, -2, -1]]]]
CONFIG = dict(grad_relu=True, akd_kernel=9, akd=True, dacg=False, cba=True, sicd="context")
REFINE = dict(steps=100, image_size=384, context_weights=torch.tensor([[[0.0, 0.11794644594192505],
                                                                        [0.8008263111114502, 0.0]]]))


def exact_raw_maps() -> torch.Tensor:
    """Section 1 in float64 (exact on these whole numbers), min-max normalised, as float32 [1, 2, 3, 3]."""
    a, g = torch.tensor(ACTS, dtype=torch.float64), torch.tensor(GRADS, dtype=torch.float64)
    weights = g.clamp(min=0).mean(2)  # [1, 2, 8]
    raw = (a[:, None] * weights[:, :, None]).clamp(min=0).mean(-1)  # [1, 2, 9]
    lo, hi = raw.amin(-1, keepdim=True), raw.amax(-1, keepdim=True)
    return ((raw - lo) / (hi - lo)).float().reshape(1, 2, 3, 3)


def test_the_exact_maps_hold_the_values_hand_worked():
    m = exact_raw_maps()
    # word 1: pooled sums 2.25, 1.5, 1.5, 2.5, 2.5, 0, 0.25, 4, 1 (over 9 tokens, 8 channels): min 0, max 4
    assert m[0, 1].flatten().tolist() == [0.875, 0.375, 0.375, 0.625, 0.625, 0.0, 0.0625, 1.0, 0.25]


def test_a_tie_is_decided_by_the_raw_maps_not_by_the_backend(any_backend):
    backend, dev = any_backend
    exact = exact_raw_maps()
    # word 1's two pixels of 0.625 are equal in exact arithmetic; the torch backend's product gives the
    # first one ulp less (and the C++ backend's sums both): one ulp off one of them
    below = exact.clone()
    below[0, 1, 1, 0] = torch.nextafter(below[0, 1, 1, 0], torch.tensor(0.0))
    cfg = dcam.CamConfig(**CONFIG)
    kw = {k: v.to(dev) for k, v in REFINE.items() if torch.is_tensor(v)}
    kw.update({k: v for k, v in REFINE.items() if not torch.is_tensor(v)})
    on_exact = dcam.refine(exact.to(dev), cfg, backend=backend, **kw)
    on_below = dcam.refine(below.to(dev), cfg, backend=backend, **kw)
    # the torch backend, the contract's reference, on each input: the same decisions and maps everywhere
    ref_exact = dcam.refine(exact, cfg, backend="torch", **REFINE)
    ref_below = dcam.refine(below, cfg, backend="torch", **REFINE)
    torch.testing.assert_close(on_exact.maps.cpu(), ref_exact.maps, rtol=0, atol=1e-5)
    torch.testing.assert_close(on_below.maps.cpu(), ref_below.maps, rtol=0, atol=1e-5)
    assert on_exact.sicd_alpha.tolist() == ref_exact.sicd_alpha.tolist() == [[1.0, 1.0]]
    assert on_below.sicd_alpha.tolist() == ref_below.sicd_alpha.tolist() == [[1.0, 0.0]]
    # an ulp in the raw maps, far more in the refined ones: the step is kept on one side of the tie only
    assert (exact - below).abs().max().item() < 1.2e-7
    assert (on_exact.maps - on_below.maps).abs().max().item() > 0.25
