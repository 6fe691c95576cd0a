"""pytest-benchmark of the evaluation metrics (run: `pytest bench/bench_metrics.py`).

`dcam.eval.metrics.object_metrics` (vectorised over the batch in torch) is timed
by pytest-benchmark; a per-map numpy implementation (one map at a time:
numpy bilinear resize, bincount histogram, cumulative-sum Otsu, per-label
IoU) is timed in the same process and `extra_info` records both medians and
the speed-up. Set DCAM_BENCH_QUICK=1 for the small cases."""
import os

import numpy as np
import pytest
import torch

from dcam.ops.bench import time_call
from dcam.eval.metrics import function_metrics, object_metrics

QUICK = os.environ.get("DCAM_BENCH_QUICK", "0") == "1"

# (name, maps, grid, mask size, objects per mask)
CASES = [
    ("shapes-64", 64 if QUICK else 512, (16, 16), (64, 64), 3),
    ("coco-like", 8 if QUICK else 48, (24, 24), (480, 640), 4),
]


def _inputs(M, grid, size, n_obj, seed=0):
    rng = np.random.default_rng(seed)
    h, w = grid
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    cy, cx = rng.random((M, 1, 1)), rng.random((M, 1, 1))
    maps = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05) + 0.3 * rng.random((M, h, w))
    maps = (maps - maps.min((1, 2), keepdims=True)) / np.ptp(maps, axis=(1, 2), keepdims=True)
    H, W = size
    masks = np.zeros((M, H, W), np.int64)
    for i in range(M):
        for c in range(1, n_obj + 1):
            y0, x0 = rng.integers(0, H // 2), rng.integers(0, W // 2)
            masks[i, y0:y0 + H // 4, x0:x0 + W // 4] = c
    return torch.from_numpy(maps.astype(np.float32)), torch.from_numpy(masks)


def _axis(n_out, n_in):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def numpy_per_map(maps: np.ndarray, masks: np.ndarray):
    """The same metrics, one map at a time with numpy."""
    H, W = masks.shape[1:]
    y0, y1, ly = _axis(H, maps.shape[1])
    x0, x1, lx = _axis(W, maps.shape[2])
    lev = np.arange(256)
    out = []
    for m, mask in zip(maps, masks):
        top = m[y0][:, x0] * (1 - lx) + m[y0][:, x1] * lx
        bot = m[y1][:, x0] * (1 - lx) + m[y1][:, x1] * lx
        hm = np.clip(top * (1 - ly)[:, None] + bot * ly[:, None], 0, 1)
        u8 = np.floor(hm * 255).astype(np.int64)
        hist = np.bincount(u8.ravel(), minlength=256)
        n0, s0 = np.cumsum(hist), np.cumsum(hist * lev)
        N, S = n0[-1], s0[-1]
        den = (n0 * (N - n0)).astype(np.float64)
        var = np.where(den > 0, (N * s0 - n0 * S).astype(np.float64) ** 2 / np.where(den > 0, den, 1), 0)
        t = int(np.argmax(var >= var.max() * (1 - 1e-10)))
        p = u8 > t
        ious = [(p & (mask == c)).sum() / (p | (mask == c)).sum() for c in np.unique(mask) if c > 0]
        fg = mask > 0
        out.append((max(ious), hm[fg].mean() / (hm[~fg].mean() + 1e-8), hm[fg].sum() / (hm.sum() + 1e-8)))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_object_metrics(benchmark, case):
    name, M, grid, size, n_obj = case
    maps, masks = _inputs(M, grid, size, n_obj)
    res = benchmark(object_metrics, maps, masks)
    ref = numpy_per_map(maps.numpy(), masks.numpy())
    np.testing.assert_allclose(res["obj_iou"].numpy(), [r[0] for r in ref], atol=1e-3)
    t_vec = time_call(lambda: object_metrics(maps, masks), min_time=0.3, max_reps=5)
    t_np = time_call(lambda: numpy_per_map(maps.numpy(), masks.numpy()), min_time=0.3, max_reps=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same footing as the single-threaded numpy loop (and robust to busy cores)
    try:
        t_vec1 = time_call(lambda: object_metrics(maps, masks), min_time=0.3, max_reps=5)
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info.update(maps=M, mask=f"{size[0]}x{size[1]}", threads=threads, vectorised_s=t_vec,
                                vectorised_1thread_s=t_vec1, numpy_loop_s=t_np, speedup=t_np / t_vec,
                                speedup_1thread=t_np / t_vec1, maps_per_s=M / t_vec)
    print(f"\n{name}: {M} maps -> {size[0]}x{size[1]}: vectorised {t_vec * 1e3:.1f} ms ({threads} threads), "
          f"{t_vec1 * 1e3:.1f} ms (1 thread); per-map numpy {t_np * 1e3:.1f} ms; "
          f"speed-up x{t_np / t_vec:.1f} / x{t_np / t_vec1:.1f}")


def test_function_metrics(benchmark):
    maps, _ = _inputs(64 if QUICK else 512, (16, 16), (64, 64), 1)
    res = benchmark(function_metrics, maps, (64, 64))
    assert res["func_iou"].shape == (maps.shape[0],)
