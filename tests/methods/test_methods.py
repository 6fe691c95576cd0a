"""The baseline methods (dcam.methods: grad-cam, llava-cam, tam) on small hand-checkable cases."""
import pytest
import torch

from dcam import methods as BL
from dcam.ops.reference import pool_gradients_reference, rank_gaussian_filter


def test_grad_cam_hand_case():
    # 4 image tokens on a 2x2 grid, 2 channels
    acts = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 3.0]]])
    # channel weights = mean gradient over tokens = [1, -0.5] (negative gradients count)
    g = torch.tensor([[2.0, -1.0], [0.0, 0.0], [2.0, -1.0], [0.0, 0.0]])
    cam = BL.grad_cam(acts, g[None, None], (2, 2))
    # sum_d w_d A = [1, -0.5, 1, -2.5] -> relu [1, 0, 1, 0] -> min-max
    assert cam.shape == (1, 1, 2, 2)
    torch.testing.assert_close(cam[0, 0], torch.tensor([[1.0, 0.0], [1.0, 0.0]]), atol=1e-6, rtol=0)
    # three levels: w = [1, 0.5]: [1, .5, 3, .5] -> [(1-.5)/2.5, 0, 1, 0]
    g2 = torch.tensor([[1.0, 0.5]]).expand(4, 2)
    cam2 = BL.grad_cam(acts[0], g2[None], (2, 2))  # unbatched acts / grads accepted
    torch.testing.assert_close(cam2[0, 0].flatten(), torch.tensor([0.2, 0.0, 1.0, 0.0]), atol=1e-6, rtol=0)


def test_grad_cam_constant_map_is_zero():
    acts = torch.ones(1, 4, 3)
    grads = torch.ones(1, 2, 4, 3)
    assert BL.grad_cam(acts, grads, (2, 2)).abs().sum() == 0


def test_llava_cam_threshold():
    acts = torch.tensor([[[0.0], [1.0], [2.0], [3.0]]])
    grads = torch.ones(1, 1, 4, 1)
    cam = BL.llava_cam(acts, grads, (2, 2))
    # pooled: [0, 1/3, 2/3, 1]; below 0.4 -> 0
    torch.testing.assert_close(cam[0, 0].flatten(), torch.tensor([0.0, 0.0, 2 / 3, 1.0]), atol=1e-6, rtol=0)


def test_llava_cam_is_pooling_plus_threshold():
    torch.manual_seed(0)
    acts, grads = torch.randn(2, 12, 5), torch.randn(2, 3, 12, 5)
    ref, _ = pool_gradients_reference(acts, grads, 3, 4, True)
    got = BL.llava_cam(acts, grads, (3, 4), threshold=0.0)
    torch.testing.assert_close(got, ref)
    got = BL.llava_cam(acts, grads, (3, 4))
    torch.testing.assert_close(got, torch.where(ref < 0.4, torch.zeros_like(ref), ref))


def _tam_inputs():
    H_img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    return H_img, W


def test_tam_causal_inference_hand_case():
    H_img, W = _tam_inputs()
    # class maps: token 0 -> [1, 0, 1, 0], token 1 -> [0, 1, 1, 0]
    lw = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    out = BL.tam(H_img, W, [5, 7], lw, (2, 2), kernel_size=1)
    # token 0: I = map1, <m, I> = 1, <I, I> = 2 -> alpha 0.5 -> [1, 0, .5, 0]
    torch.testing.assert_close(out[0].flatten(), torch.tensor([1.0, 0.0, 0.5, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1].flatten(), torch.tensor([0.0, 1.0, 0.5, 0.0]), atol=1e-6, rtol=0)


def test_tam_same_id_and_zero_weights_leave_maps():
    H_img, W = _tam_inputs()
    lw = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    same = BL.tam(H_img, W, [5, 5], lw, (2, 2), kernel_size=1)  # same id: no subtraction
    torch.testing.assert_close(same[0].flatten(), torch.tensor([1.0, 0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    none = BL.tam(H_img, W, [5, 7], torch.zeros(2, 2), (2, 2), kernel_size=1)
    torch.testing.assert_close(none, same)


def test_tam_alpha_clamped_to_one():
    # token 0's map is 3x token 1's: LS scale 3 is clamped to 1 -> m - I = 2 I
    H_img = torch.tensor([[1.0], [2.0], [0.0], [4.0]])
    W = torch.tensor([[3.0], [1.0]])
    out = BL.tam(H_img, W, [1, 2], torch.tensor([[0.0, 2.0], [0.0, 0.0]]), (2, 2), kernel_size=1)
    torch.testing.assert_close(out[0].flatten(), torch.tensor([0.25, 0.5, 0.0, 1.0]), atol=1e-6, rtol=0)


def test_tam_weights_are_normalised_and_rank_filter_applied():
    torch.manual_seed(1)
    N, Hd, T = 20, 6, 3
    H_img, W = torch.randn(N, Hd), torch.randn(T, Hd)
    lw = torch.rand(T, T)
    a = BL.tam(H_img, W, [1, 2, 3], lw, (4, 5))
    b = BL.tam(H_img, W, [1, 2, 3], lw * 7.0, (4, 5))  # only relative weights matter
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # k=3 == kernel-1 maps (before normalising) through the rank Gaussian filter, then min-max
    pre = BL.tam(H_img, W, [1, 2, 3], lw, (4, 5), kernel_size=1)
    maps = (W @ H_img.T).clamp(min=0)
    wts = lw * (1 - torch.eye(T))
    wts = wts / wts.sum(1, keepdim=True)
    I = wts @ maps
    al = ((maps * I).sum(1) / (I * I).sum(1)).clamp(0, 1)
    m = (maps - al[:, None] * I).clamp(min=0)
    lo, hi = m.min(1, keepdim=True).values, m.max(1, keepdim=True).values
    torch.testing.assert_close(pre.reshape(T, -1), (m - lo) / (hi - lo + 1e-8), atol=1e-5, rtol=0)
    f = rank_gaussian_filter(m.reshape(T, 4, 5), torch.full((T,), 3)).reshape(T, -1)
    lo, hi = f.min(1, keepdim=True).values, f.max(1, keepdim=True).values
    torch.testing.assert_close(a.reshape(T, -1), (f - lo) / (hi - lo + 1e-8), atol=1e-5, rtol=0)
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_tam_one_row_grid_and_errors():
    H_img, W = torch.randn(5, 3), torch.randn(2, 3)
    out = BL.tam(H_img, W, [1, 2], torch.ones(2, 2), (1, 5))  # k capped to 1
    assert out.shape == (2, 1, 5)
    with pytest.raises(ValueError):
        BL.tam(H_img, W, [1, 2], torch.ones(2, 2), (2, 2))
    with pytest.raises(ValueError):
        BL.tam(H_img, W, [1, 2], -torch.ones(2, 2), (1, 5))
    with pytest.raises(ValueError):
        BL.grad_cam(torch.randn(1, 4, 2), torch.randn(1, 1, 4, 3), (2, 2))


def test_the_baseline_functions_check_their_inputs_as_the_operators_do():
    # grid (4.5, 4) was cut to 4 and "44" taken, (-4, -4) and (4,) were raw errors, numpy arrays an
    # AttributeError, T=0 torch's RuntimeError; llava_cam's threshold was never checked (NaN turned it off,
    # 5 zeroed every map) and finite inputs whose product overflowed float32 gave all-zero maps
    import numpy as np

    from dcam.errors import InputError

    acts, grads = torch.rand(1, 16, 8), torch.rand(1, 2, 16, 8)
    for fn in (BL.grad_cam, BL.llava_cam):
        for grid, match in (((4.5, 4), r"^grid must be a pair of ints \(h, w\), got \(4\.5, 4\)$"),
                            ("44", r"^grid must be a pair of ints"), ((4,), r"^grid must be a pair of ints"),
                            ((-4, -4), r"^grid must be positive, got \(-4, -4\)$"),
                            ((4, 5), r"^grid 4x5 = 20 tokens does not match the image-token span of 16 tokens$")):
            with pytest.raises(InputError, match=match):
                fn(acts, grads, grid)
        with pytest.raises(InputError, match=r"^acts must be a torch\.Tensor, got ndarray$"):
            fn(acts.numpy(), grads, (4, 4))
        with pytest.raises(InputError, match=r"^grads is empty \(shape \(1, 0, 16, 8\)\)$"):
            fn(acts, grads[:, :0], (4, 4))
    for bad in (float("nan"), -1, 5, "0.4", True):
        with pytest.raises(InputError, match=r"^threshold must be a number in \[0, 1\]"):
            BL.llava_cam(acts, grads, (4, 4), threshold=bad)
    huge_a, huge_g = torch.rand(1, 16, 8) * 1e20 + 1e19, torch.rand(1, 2, 16, 8) * 1e20
    with pytest.raises(InputError, match="^acts: finite, but pooled with grads it overflows float32"):
        BL.llava_cam(huge_a, huge_g, (4, 4))
    assert np.isfinite(BL.llava_cam(acts, grads, (4, 4)).numpy()).all()
