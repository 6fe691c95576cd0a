"""dcam.metrics against independent per-map numpy implementations and hand
examples (docs/ALGORITHM.md section 8)."""
import math

import numpy as np
import pytest
import torch

from dcam.errors import InputError
from dcam.eval import metrics as M


# ----------------------------------------------------------------- independent numpy implementation

def np_bilinear(a, H, W):
    """Half-pixel-centre bilinear resize of one 2-D array, written from the
    definition (source coordinate (i + 0.5) * in / out - 0.5, clamped at 0)."""
    h, w = a.shape

    def coords(n_out, n_in):
        out = []
        for i in range(n_out):
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = int(math.floor(src))
            i0 = min(i0, n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            lam = src - i0
            out.append((i0, i1, lam))
        return out

    ys, xs = coords(H, h), coords(W, w)
    res = np.zeros((H, W), dtype=np.float64)
    for y, (y0, y1, ly) in enumerate(ys):
        for x, (x0, x1, lx) in enumerate(xs):
            top = (1 - lx) * a[y0, x0] + lx * a[y0, x1]
            bot = (1 - lx) * a[y1, x0] + lx * a[y1, x1]
            res[y, x] = (1 - ly) * top + ly * bot
    return res


def np_otsu(u8):
    """Loop over every threshold; variance w0 * w1 * (mu0 - mu1)^2 of the
    split u8 <= t / u8 > t (0 for an empty class); first (tied) maximum."""
    v = u8.ravel().astype(np.float64)
    best, vals = -1.0, []
    for t in range(256):
        c0, c1 = v[v <= t], v[v > t]
        if len(c0) == 0 or len(c1) == 0:
            vals.append(0.0)
            continue
        w0, w1 = len(c0) / len(v), len(c1) / len(v)
        vals.append(w0 * w1 * (c0.mean() - c1.mean()) ** 2)
    best = max(vals)
    for t, s in enumerate(vals):
        if s >= best * (1 - 1e-9):
            return t


def np_metrics(hm, mask):
    u8 = np.floor(hm * 255).astype(np.int64)
    t = np_otsu(u8)
    p = u8 > t
    ious = []
    for c in np.unique(mask):
        if c == 0:
            continue
        g = mask == c
        ious.append((p & g).sum() / (p | g).sum())
    obj = max(ious)
    fg = mask > 0
    mean_bg = hm[~fg].mean() if (~fg).any() else 0.0
    contrast = hm[fg].mean() / (mean_bg + 1e-8)
    conc = hm[fg].sum() / (hm.sum() + 1e-8)
    terms = [obj, min(contrast / 20, 1), conc]
    f3 = 0.0 if min(terms) == 0 else 3 / sum(1 / x for x in terms)
    func = float((hm.astype(np.float64) < t / 255.0).mean())
    return dict(obj_iou=obj, contrast=contrast, concentration=conc, f3=f3, threshold=t, func_iou=func)


def dyadic_maps(rng, n, h, w):
    """Maps with values k/64: bilinear upsampling by 2 or 4 is then exact in
    float32 and float64, so u8 (a floor) cannot differ between implementations."""
    return (rng.integers(0, 65, size=(n, h, w)) / 64.0).astype(np.float32)


def random_mask(rng, H, W, n_obj):
    mask = np.zeros((H, W), dtype=np.int64)
    for c in range(1, n_obj + 1):
        y0, x0 = rng.integers(0, H - 2), rng.integers(0, W - 2)
        y1, x1 = rng.integers(y0 + 1, H + 1), rng.integers(x0 + 1, W + 1)
        mask[y0:y1, x0:x1] = c
    if not (mask > 0).any():
        mask[0, 0] = 1
    return mask


# ----------------------------------------------------------------- tests

def test_resize_matches_definition():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 5, 7)).astype(np.float32)
    for H, W in [(5, 7), (16, 9), (3, 4), (23, 31)]:
        got = M.resize_maps(torch.from_numpy(maps), (H, W)).numpy()
        for i in range(3):
            np.testing.assert_allclose(got[i], np_bilinear(maps[i].astype(np.float64), H, W), atol=2e-6)


def test_a_constant_map_stays_constant_when_resized_and_gets_otsu_zero():
    # resized in float32 a 16x16 map of 0.2 came out an ulp below 0.2 in places: floor(hm*255) gave 50 and 51 and
    # Otsu split on that noise (t = 50, IoU 0.4678); hand-worked: u8 = floor(float32(0.2) * 255) = 51 everywhere,
    # t = 0, every pixel predicted, the top half's IoU = 2048 / 4096 = 0.5
    for value, (h, w), (H, W) in ((0.2, (16, 16), (64, 64)), (1.0, (4, 4), (20, 31)), (1 / 3, (5, 7), (33, 17)),
                                  (0.6, (3, 3), (50, 41))):
        hm = M.resize_maps(torch.full((1, h, w), value), (H, W))
        assert bool((hm == torch.tensor(value, dtype=torch.float32)).all()), value
    mask = np.zeros((64, 64), dtype=np.int64)
    mask[:32] = 1
    r = M.object_metrics(torch.full((1, 16, 16), 0.2), [mask])
    assert int(r["threshold"][0]) == 0 and float(r["obj_iou"][0]) == 0.5


def test_resize_is_identity_at_same_size_and_maps_outside_0_1_are_refused():
    x = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])
    assert M.resize_maps(x, (2, 2)).tolist() == x.tolist()
    # values past [0, 1] were clamped (a map of 5s scored as a map of 1s; negatives as 0s) without a word
    for bad, shown in ((torch.tensor([[[0.0, 0.5], [1.0, 1.25]]]), "[0.0, 1.25]"),
                       (torch.tensor([[[-0.5, 0.5], [1.0, 0.25]]]), "[-0.5, 1.0]")):
        with pytest.raises(InputError) as info:
            M.object_metrics(bad, [np.ones((4, 4), dtype=np.int64)])
        assert str(info.value) == f"maps must lie in [0, 1] (dcam's maps do), got values in {shown}"


def test_metric_functions_refuse_bad_input_by_name():
    # each ended in a torch/numpy error (or, for f3_score, a number) instead of one line naming the argument
    cases = [(lambda: M.object_metrics(torch.ones(1, 4, 4, dtype=torch.complex64), [np.ones((4, 4), int)]),
              "maps must hold real numbers, got dtype torch.complex64"),
             (lambda: M.object_metrics(torch.rand(1, 4, 4), [np.zeros((0, 0), int)]),
              "label masks must have sides >= 1, got shape (0, 0)"),
             (lambda: M.object_metrics(torch.rand(1, 0, 4), [np.ones((4, 4), int)]),
              "maps must have sides >= 1, got shape (1, 0, 4)"),
             (lambda: M.otsu_threshold(np.array(5)), "u8 must be [M, ...] maps (or one map of [n] values), got a "
                                                      "single number"),
             (lambda: M.f3_score(-0.5, 20, 0.5), "f3_score: obj_iou, contrast and concentration are >= 0, got "
                                                 "-0.5, 20, 0.5"),
             (lambda: M.summarize({"obj_iou": [0.5]}), "obj must hold obj_iou, contrast, concentration, f3 (as "
                                                       "object_metrics / function_metrics return); missing contrast, "
                                                       "concentration, f3")]
    for call, message in cases:
        with pytest.raises(InputError) as info:
            call()
        assert str(info.value) == message
    from dcam.eval.faithfulness import curve_auc
    with pytest.raises(InputError, match=r"^values must be numbers, got \['a', 'b'\]"):
        curve_auc(["a", "b"])


def test_otsu_hand_examples():
    # {0, 50, 200, 200}: t in [0, 49] splits {0} | {50, 200, 200}:
    #   1/4 * 3/4 * (0 - 150)^2 = 4218.75
    # t in [50, 199] splits {0, 50} | {200, 200}: 1/2 * 1/2 * (25 - 200)^2 = 7656.25
    # -> first maximum t = 50, prediction {200, 200}
    assert M.otsu_threshold(torch.tensor([[0, 50, 200, 200]])).tolist() == [50]
    # {0, 0, 100, 200}: [0,99] -> 1/4 * 150^2 = 5625 > [100,199] -> 3/16 * (200 - 100/3)^2 = 5208.3
    assert M.otsu_threshold(torch.tensor([[0, 0, 100, 200]])).tolist() == [0]
    # {0, 100, 200}: both splits give 2/9 * 150^2 = 5000 exactly: the first wins
    assert M.otsu_threshold(torch.tensor([[0, 100, 200]])).tolist() == [0]
    # constant map: every split has an empty class -> 0
    assert M.otsu_threshold(torch.tensor([[7, 7, 7], [0, 0, 0]])).tolist() == [0, 0]


def test_otsu_refuses_what_is_not_a_byte_map():
    # 300 and 1000 were clamped to 255 and floats truncated, silently
    from dcam.errors import InputError

    with pytest.raises(InputError, match=r"^u8 must hold ints in \[0, 255\], got values in \[0, 1000\]"):
        M.otsu_threshold(np.array([[0, 0, 300, 300, 1000]]))
    with pytest.raises(InputError, match="got dtype torch.float64"):
        M.otsu_threshold(np.array([[0.2, 0.7, 0.9, 0.1]]))


def test_object_metrics_depend_on_which_pixels_share_a_label_not_on_its_number():
    # counts were sized by the largest label: 16,777,215 (an RGB instance id) asked for 5 GB
    rng = np.random.default_rng(3)
    maps = rng.random((5, 4, 4)).astype(np.float32)
    small = np.zeros((5, 4, 4), np.int64)
    small[:, 1:3, 1:3], small[:, 0, :2] = 1, 2
    big = np.where(small == 1, 16777215, np.where(small == 2, 70000, 0))
    a, b = M.object_metrics(maps, small), M.object_metrics(maps, big)
    for k in ("obj_iou", "contrast", "concentration"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True)


def test_otsu_matches_loop():
    rng = np.random.default_rng(1)
    u = rng.integers(0, 256, size=(6, 40))
    u[3] = rng.choice([3, 90, 250], size=40)  # sparse histogram with gaps
    u[4, :] = 17
    got = M.otsu_threshold(torch.from_numpy(u)).tolist()
    assert got == [np_otsu(u[i]) for i in range(6)]


def test_obj_metrics_hand_example():
    # 4x4 map, mask: object 1 = top-left 2x2
    hm = np.array([[1.0, 1.0, 0.0, 0.0],
                   [1.0, 0.5, 0.0, 0.0],
                   [0.0, 0.0, 0.0, 0.0],
                   [0.0, 0.0, 0.0, 0.5]], dtype=np.float32)
    mask = np.zeros((4, 4), dtype=np.int64)
    mask[:2, :2] = 1
    r = M.object_metrics(torch.from_numpy(hm)[None], torch.from_numpy(mask)[None])
    # u8: 255 x3, 127 x2, 0 x11; Otsu: t in [0,126]: {0 x11} | {127,127,255,255,255}
    #   mean0 = 0, mean1 = 203.8, w0 w1 = 11/16 * 5/16 -> 8923
    # t in [127, 254]: {0 x11, 127 x2} mean 19.54 | {255 x3}: 13/16 * 3/16 * 235.46^2 = 8446
    # -> t = 0, p = the 5 non-zero pixels; IoU = 4 / 5
    assert int(r["threshold"][0]) == 0
    assert float(r["obj_iou"][0]) == pytest.approx(0.8)
    # contrast = mean(1,1,1,.5)=0.875 / mean(12 pixels summing to .5)=1/24 -> 21
    assert float(r["contrast"][0]) == pytest.approx(0.875 / (0.5 / 12 + 1e-8))
    # concentration = 3.5 / 4
    assert float(r["concentration"][0]) == pytest.approx(3.5 / 4.0)
    f3 = 3 / (1 / 0.8 + 1 / 1.0 + 1 / 0.875)
    assert float(r["f3"][0]) == pytest.approx(f3)


def test_paper_row_f3():
    # COCO Diffusion-CAM row: Obj-IoU 30.10 %, contrast 2.58x, concentration 51.41 % -> F3 23.04 %
    assert round(100 * M.f3_score(0.3010, 2.58, 0.5141), 2) == 23.04
    # the baselines' rows give their F3 the same way; any zero term gives 0
    assert M.f3_score(0.0, 3.0, 0.5) == 0.0
    assert M.f3_score(0.3, 0.0, 0.5) == 0.0
    assert M.f3_score(0.3, 50.0, 0.5) == pytest.approx(3 / (1 / 0.3 + 1 + 1 / 0.5))
    t = M.f3_score(torch.tensor([0.301, 0.0]), torch.tensor([2.58, 1.0]), torch.tensor([0.5141, 0.5]))
    assert t[0].item() == pytest.approx(0.2304263, abs=1e-6) and t[1].item() == 0.0


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_object_and_function_metrics_match_numpy(scale):
    rng = np.random.default_rng(10 + scale)
    n, h, w = 12, 6, 5
    maps = dyadic_maps(rng, n, h, w)
    maps[0] = 0.0  # all-zero map: t = 0, nothing predicted
    maps[1] = 0.5  # constant map
    H, W = h * scale, w * scale
    masks = np.stack([random_mask(rng, H, W, 1 + i % 3) for i in range(n)])
    masks[2] = 0
    masks[2, :, :] = 1  # object covers the whole image: empty background
    r = M.object_metrics(torch.from_numpy(maps), torch.from_numpy(masks))
    fr = M.function_metrics(torch.from_numpy(maps), (H, W))
    for i in range(n):
        hm = np_bilinear(maps[i].astype(np.float64), H, W)
        ref = np_metrics(hm, masks[i])
        assert int(r["threshold"][i]) == ref["threshold"], i
        for k in ("obj_iou", "concentration", "f3"):
            assert float(r[k][i]) == pytest.approx(ref[k], rel=1e-6, abs=1e-9), (i, k)
        assert float(r["contrast"][i]) == pytest.approx(ref["contrast"], rel=1e-6), i
        assert float(fr["func_iou"][i]) == pytest.approx(ref["func_iou"]), i


def test_list_of_masks_of_different_sizes():
    rng = np.random.default_rng(3)
    maps = dyadic_maps(rng, 4, 4, 4)
    masks = [random_mask(rng, 8, 8, 2), random_mask(rng, 16, 12, 1), random_mask(rng, 8, 8, 3),
             random_mask(rng, 4, 4, 1)]
    r = M.object_metrics(maps, masks)
    for i, mk in enumerate(masks):
        one = M.object_metrics(maps[i:i + 1], mk[None])
        for k in ("obj_iou", "contrast", "concentration", "f3", "threshold"):
            assert r[k][i].item() == one[k][0].item()
    fr = M.function_metrics(maps, [m.shape for m in masks])
    assert fr["func_iou"][1].item() == M.function_metrics(maps[1:2], (16, 12))["func_iou"][0].item()


def test_empty_mask_is_invalid_and_left_out():
    maps = torch.rand(2, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[0, :2, :2] = 3
    r = M.object_metrics(maps, masks)
    assert math.isfinite(r["obj_iou"][0].item()) and math.isnan(r["obj_iou"][1].item())
    s = M.summarize(r)
    assert s["n_obj"] == 1 and s["n_invalid"] == 1
    assert s["obj_iou"] == pytest.approx(r["obj_iou"][0].item())


def test_summarize_f3_of_means_vs_mean_of_f3():
    obj = {"obj_iou": [0.2, 0.4], "contrast": [1.0, 5.0], "concentration": [0.3, 0.7], "f3": [0.1, 0.3]}
    s = M.summarize(obj, {"func_iou": [0.5, 0.7, 0.9]})
    assert s["obj_iou"] == pytest.approx(0.3) and s["contrast"] == pytest.approx(3.0)
    assert s["concentration"] == pytest.approx(0.5)
    assert s["f3"] == pytest.approx(3 / (1 / 0.3 + 1 / 0.15 + 1 / 0.5))
    assert s["f3_per_map"] == pytest.approx(0.2)
    assert s["func_iou"] == pytest.approx(0.7) and s["n_func"] == 3 and s["n_obj"] == 2


def test_accumulator():
    rng = np.random.default_rng(4)
    acc = M.MetricAccumulator()
    maps = dyadic_maps(rng, 5, 4, 4)
    masks = np.stack([random_mask(rng, 8, 8, 2) for _ in range(5)])
    acc.add_object(maps[:3], masks[:3])
    acc.add_object(maps[3:], list(masks[3:]))
    acc.add_function(maps, (8, 8))
    s = acc.summary()
    full = M.object_metrics(maps, masks)
    assert s["obj_iou"] == pytest.approx(full["obj_iou"].mean().item())
    assert s["n_obj"] == 5 and s["n_func"] == 5


def test_bad_inputs():
    # the one input-error type of the library (an InputError is a ValueError)
    from dcam.errors import InputError

    with pytest.raises(InputError, match=r"^got 2 maps but 3 masks$"):
        M.object_metrics(torch.rand(2, 3, 3), torch.zeros(3, 3, 3, dtype=torch.long))
    with pytest.raises(InputError, match=r"^label masks must be >= 0 \(0 is background\)$"):
        M.object_metrics(torch.rand(1, 3, 3), -torch.ones(1, 3, 3, dtype=torch.long))
    with pytest.raises(InputError, match=r"^label masks must hold integers$"):
        M.object_metrics(torch.rand(1, 3, 3), torch.full((1, 3, 3), 0.5))
    # labels past int64 wrapped round in the cast and were refused as negative
    for big in (np.full((1, 3, 3), 2 ** 63 + 5, dtype=np.uint64), np.full((1, 3, 3), 1e19)):
        with pytest.raises(InputError, match=r"^label masks: label 9\.22337e\+18 is past int64's range$|"
                                             r"^label masks: label 1e\+19 is past int64's range$"):
            M.object_metrics(torch.rand(1, 3, 3), big)


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(5)
    maps = dyadic_maps(rng, 9, 4, 4)
    masks = np.stack([random_mask(rng, 8, 8, 2) for _ in range(9)])
    full = M.object_metrics(maps, masks)
    ffull = M.function_metrics(maps, (8, 8))
    monkeypatch.setattr(M, "_CHUNK_PIXELS", 130)  # 2 maps of 8x8 per chunk
    part = M.object_metrics(maps, masks)
    fpart = M.function_metrics(maps, (8, 8))
    for k in full:
        assert torch.equal(full[k], part[k]) or torch.allclose(full[k], part[k], equal_nan=True)
    assert torch.equal(ffull["func_iou"], fpart["func_iou"])


def test_metric_inputs_that_used_to_end_in_tracebacks_are_input_errors():
    from dcam.errors import InputError
    from dcam.eval.faithfulness import curve_auc

    mask = torch.zeros(8, 8, dtype=torch.long)
    mask[2:5, 2:5] = 1
    cases = [(lambda: M.object_metrics(torch.full((1, 4, 4), float("nan")), [mask]),
              "maps contains 16 NaN/Inf value(s)"),  # bincount's RuntimeError
             (lambda: M.function_metrics(torch.rand(1, 4, 4), (0, 0)), "size must be (H, W) ints >= 1"),
             (lambda: M.function_metrics(torch.rand(1, 4, 4), (-1, 8)), "size must be (H, W) ints >= 1"),
             (lambda: M.function_metrics(torch.rand(1, 4, 4), (8.0, 8.0)), "size must be (H, W) ints >= 1"),
             (lambda: curve_auc(np.array([])), "values must hold at least one point per curve")]
    for call, message in cases:
        with pytest.raises(InputError) as info:
            call()
        assert str(info.value).startswith(message)
    # one [h, w] map with its one [H, W] mask: the mask's 8 rows were read as 8 masks
    one = torch.zeros(4, 4)
    one[1:3, 1:3] = 1.0
    both = M.object_metrics(one[None], [mask])
    single = M.object_metrics(one, mask)
    for k in both:
        torch.testing.assert_close(single[k], both[k], atol=0, rtol=0)
