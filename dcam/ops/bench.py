"""The bench cases of the ops: one table of timings (``dcam bench``, ``python -m bench``).

Every figure is measured in this process, so ratios (to the PyTorch
reference, to the bandwidth of a plain copy) compare like with like. The
cases are those of the issue: refine 1024 maps of 24x24 and 27x27; pooling
B=1, T=64, N=576, D=4096 in float32 and bfloat16; the fused pipeline.
`bench/` runs the same cases under pytest-benchmark.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .config import CamConfig
from . import api as engine
from . import reference
from .backends import available_backends
from .streaming import WeightStream


@dataclass
class Case:
    name: str
    make: Callable[[str], Callable[[], object]]  # backend -> zero-arg callable
    maps: int  # maps produced per call
    bytes_read: int  # gradient bytes one call must read (0 if not meaningful)
    # backend -> the one call this case stands in for (the chunked paths: one whole pooling of
    # the same tensors), timed alternately with it: the "x one call" column
    one_call: Optional[Callable[[str], Callable[[], object]]] = None


def time_call(fn: Callable[[], object], *, min_time: float = 0.5, max_reps: int = 50, warmup: int = 1,
              sync: Optional[Callable[[], None]] = None) -> float:
    """Median wall time of `fn` in seconds (after warm-up), at least `min_time` of
    measurement or `max_reps` repetitions, whichever comes first."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start < min_time or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_refine_inputs(n_maps: int, h: int, w: int, device="cpu", seed: int = 0):
    """Realistic raw maps: smooth blobs plus noise, min-max normalised, as pooling produces them."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    cy, cx = torch.rand(n_maps, 1, 1, generator=g), torch.rand(n_maps, 1, 1, generator=g)
    blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05)
    raw = blob + 0.3 * torch.rand(n_maps, h, w, generator=g)
    raw = reference.minmax_normalise(raw)[0]
    return raw.reshape(1, n_maps, h, w).to(device)


def make_pool_inputs(T: int, N: int, D: int, dtype, device="cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(1, N, D, generator=g).to(dtype)
    grads = torch.randn(1, T, N, D, generator=g).to(dtype)
    return acts.to(device), grads.to(device)


def streamed_pooling(acts, grads, grid, chunk: int, backend: str) -> Callable[[], object]:
    """The explainer's streamed pooling as a zero-argument callable: each chunk of `chunk`
    words' gradients reduced to channel weights into one table (:class:`WeightStream`, as
    dcam/methods/diffusion_cam.py does), then one product for all words."""
    B, T, _, D = grads.shape

    def run():
        stream = WeightStream(B, T, D, backend=backend, device=grads.device, check_finite=False)
        for c in range(0, T, chunk):
            stream.add(grads[:, c:c + chunk])
        return engine.weighted_maps(acts, stream.weights, grid, backend=backend, check_finite=False)
    return run


def per_chunk_calls(acts, grads, grid, chunk: int, backend: str) -> Callable[[], object]:
    """The streamed pooling as it was before :class:`WeightStream` (session 31): one public
    ``channel_weights`` call per chunk, the tables joined by ``torch.cat``."""
    def run():
        w = torch.cat([engine.channel_weights(grads[:, c:c + chunk], backend=backend, check_finite=False)
                       for c in range(0, grads.shape[1], chunk)], 1)
        return engine.weighted_maps(acts, w, grid, backend=backend, check_finite=False)
    return run


def cases(device="cpu", quick: bool = False) -> List[Case]:
    cfg = CamConfig()
    n_maps = 128 if quick else 1024
    T, N, D = (16, 576, 1024) if quick else (64, 576, 4096)
    out: List[Case] = []
    for h in (24, 27):
        raw = make_refine_inputs(n_maps, h, h, device)
        out.append(Case(f"refine {n_maps}x{h}x{h}",
                        lambda b, raw=raw: (lambda: engine.refine(raw, cfg, steps=64, image_size=512,
                                                                  backend=b, check_finite=False)),
                        n_maps, 0))
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        acts, grads = make_pool_inputs(T, N, D, dtype, device)
        out.append(Case(f"pool T={T} N={N} D={D} {label}",
                        lambda b, a=acts, g=grads: (lambda: engine.pool_gradients(a, g, (24, 24), backend=b,
                                                                                  check_finite=False)),
                        T, grads.numel() * grads.element_size()))
    acts, grads = make_pool_inputs(T, N, D, torch.bfloat16, device)
    # the signed channel weights (grad_relu=False, the bundled model's default) and the explainer's
    # streamed path: the same gradients pooled chunk by chunk as a probe hands them over
    out.append(Case(f"pool T={T} N={N} D={D} bf16, grad_relu=False",
                    lambda b, a=acts, g=grads: (lambda: engine.pool_gradients(a, g, (24, 24), grad_relu=False,
                                                                              backend=b, check_finite=False)),
                    T, grads.numel() * grads.element_size()))
    # the explainer's streamed path: each chunk of gradients reduced to its channel weights as a
    # probe hands it over, one product with the activations for all tokens at the end; beside
    # it, one whole pooling per chunk (the streamed path before the pooling was split in two)
    chunk = max(1, T // 8)

    def one_call(b, a=acts, g=grads):
        return lambda: engine.pool_gradients(a, g, (24, 24), backend=b, check_finite=False)
    out.append(Case(f"pool T={T} N={N} D={D} bf16, streamed in chunks of {chunk}",
                    lambda b, a=acts, g=grads: streamed_pooling(a, g, (24, 24), chunk, b),
                    T, grads.numel() * grads.element_size(), one_call))
    out.append(Case(f"pool T={T} N={N} D={D} bf16, pool_gradients per chunk of {chunk}",
                    lambda b, a=acts, g=grads: (lambda: [engine.pool_gradients(a, g[:, c:c + chunk], (24, 24),
                                                                               backend=b, check_finite=False)
                                                         for c in range(0, T, chunk)]),
                    T, grads.numel() * grads.element_size(), one_call))
    # the fused call as users make it by default (inputs checked for NaN/Inf), without the
    # check, and with signed channel weights (grad_relu=False: no factorised product)
    for suffix, c, check in (("", cfg, True), (", unchecked", cfg, False),
                             (", grad_relu=False", cfg.replace(grad_relu=False), False)):
        out.append(Case(f"diffusion_cam T={T} N={N} D={D} bf16{suffix}",
                        lambda b, a=acts, g=grads, c=c, check=check: (
                            lambda: engine.diffusion_cam(a, g, (24, 24), c, backend=b, check_finite=check)),
                        T, grads.numel() * grads.element_size()))
    return out


def copy_bandwidth(nbytes: int, device="cpu", sync=None) -> float:
    """Bytes moved per second (read + write) by a plain tensor copy of `nbytes`."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_call(lambda: dst.copy_(src), sync=sync)
    return 2 * src.numel() * 4 / t


def timed_pairs(fn: Callable[[], object], other: Callable[[], object], sync=None, *, min_time: float = 1.0,
                max_pairs: int = 40, alternate: bool = False) -> List[Tuple[float, float]]:
    """(time of fn, time of other) for pairs of calls made back to back, after one warm-up
    call of each: pairs until `min_time` has passed (5 at least), `max_pairs` at most.
    Each pair calls `other` first, or, with `alternate`, every second pair calls `fn`
    first, so that neither always follows the other's traffic through the caches."""
    sync = sync or (lambda: None)

    def timed(f):
        t0 = time.perf_counter()
        f()
        sync()
        return time.perf_counter() - t0

    fn()
    other()
    sync()
    pairs = []
    start = time.perf_counter()
    while len(pairs) < max_pairs and (time.perf_counter() - start < min_time or len(pairs) < 5):
        if alternate and len(pairs) % 2 == 0:
            t_fn = timed(fn)
            t_other = timed(other)
        else:
            t_other = timed(other)
            t_fn = timed(fn)
        pairs.append((t_fn, t_other))
    return pairs


def copy_size(all_cases: List[Case]) -> int:
    """Bytes of the copy every bandwidth case is timed beside: one size for all, the largest
    gradients' (the fp32 case), so that every case's ratio is to the same copy."""
    return max(c.bytes_read for c in all_cases)


def time_beside_copy(fn: Callable[[], object], bytes_read: int, copy_bytes: int, device="cpu", sync=None, *,
                     min_time: float = 1.0, max_pairs: int = 40):
    """Times `fn` and a plain copy of `copy_bytes` alternately, pair after pair (copy, then
    call), and returns (median time of fn, median copy bandwidth, median over the pairs of
    fn's read bandwidth / the copy's bandwidth). On a shared machine the memory bandwidth
    drifts by tens of percent within seconds (measured here: plain copies of 30 to 58
    GB/s minutes apart); a copy timed right next to each call keeps the ratio honest."""
    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    pairs = timed_pairs(fn, lambda: dst.copy_(src), sync, min_time=min_time, max_pairs=max_pairs)
    copied = 2 * src.numel() * 4
    times = [t for t, _ in pairs]
    bws = [copied / t_copy for _, t_copy in pairs]
    ratios = [bytes_read / t / bw for t, bw in zip(times, bws)]
    return statistics.median(times), statistics.median(bws), statistics.median(ratios)


def time_against(fn: Callable[[], object], base: Callable[[], object], sync=None, *, min_time: float = 1.0,
                 max_pairs: int = 40) -> float:
    """Median over pairs of (time of fn) / (time of base), the two called alternately
    (:func:`timed_pairs`, fn first in every second pair): how much slower `fn` is than
    `base` with both in the same memory conditions (the copy's bandwidth here moves by
    tens of percent between seconds, so two medians timed apart compare badly)."""
    pairs = timed_pairs(fn, base, sync, min_time=min_time, max_pairs=max_pairs, alternate=True)
    return statistics.median(t_fn / t_base for t_fn, t_base in pairs)


def run(backends: Optional[List[str]] = None, quick: bool = False, device: str = "cpu") -> Dict:
    # the device as given ("cuda:1": the inputs, the copy and the synchronisation all on that GPU)
    on_gpu = torch.device(device).type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if on_gpu else None
    if backends is None:
        backends = [b for b in available_backends()
                    if not (b == "triton" and not on_gpu)]  # interpreter timings mean nothing
    # the reference first, each backend once: "x reference" is read off the torch row, so rows
    # before it had none (--backends cpp,torch), and a repeated name was timed twice
    backends = ["torch"] + [b for b in dict.fromkeys(backends) if b != "torch"]
    all_cases = cases(device, quick)
    copy_bytes = copy_size(all_cases)
    # bandwidth cases: the compiled backends are timed in pairs with a plain copy
    # (time_beside_copy); the slow reference beside one copy measured just before it
    copies = []
    rows = []
    for case in all_cases:
        ref_t = None
        for b in backends:
            copy_bw = ratio = None
            if case.bytes_read and b != "torch":
                t, copy_bw, ratio = time_beside_copy(case.make(b), case.bytes_read, copy_bytes, device, sync)
                copies.append(copy_bw)
            else:
                if case.bytes_read:
                    copy_bw = copy_bandwidth(copy_bytes, device, sync)
                    copies.append(copy_bw)  # (the header's copy range left the reference's copies out)
                t = time_call(case.make(b), sync=sync, min_time=0.3 if b == "torch" else 0.5,
                              max_reps=5 if b == "torch" else 50)
                if copy_bw:
                    ratio = case.bytes_read / t / copy_bw
            if b == "torch":
                ref_t = t
            vs_one = time_against(case.make(b), case.one_call(b), sync) if case.one_call and b != "torch" else None
            gbs = case.bytes_read / t / 1e9 if case.bytes_read else None
            rows.append(dict(backend=b, case=case.name, seconds=t, us_per_map=t / case.maps * 1e6,
                             maps_per_s=case.maps / t, gb_per_s=gbs,
                             ratio_to_reference=(ref_t / t) if ref_t else None,
                             copy_gb_per_s=copy_bw / 1e9 if copy_bw else None,
                             ratio_to_bandwidth=ratio, ratio_to_one_call=vs_one))
    return dict(device=device, threads=torch.get_num_threads(), copy_gb_per_s=[c / 1e9 for c in copies], rows=rows)


def format_table(result: Dict) -> str:
    cp = result["copy_gb_per_s"]
    cps = f"{min(cp):.2f}-{max(cp):.2f}" if cp else "-"
    lines = [f"device: {result['device']}, torch threads: {result['threads']}, "
             f"plain copy: {cps} GB/s (read+write; the compiled backends' bandwidth cases are timed in "
             f"pairs with a copy, medians over the pairs; x one call: a chunked path's time over one whole "
             f"pooling of the same tensors, called alternately, median over the pairs)", "",
             "| backend | case | time | us/map | maps/s | GB/s (grads read) | x reference | copy GB/s | "
             "of copy bandwidth | x one call |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    for r in result["rows"]:
        lines.append(f"| {r['backend']} | {r['case']} | {r['seconds'] * 1e3:.2f} ms | {r['us_per_map']:.1f} | "
                     f"{r['maps_per_s']:.0f} | {f(r['gb_per_s'], '.2f')} | {f(r['ratio_to_reference'], '.1f')} | "
                     f"{f(r['copy_gb_per_s'], '.1f')} | {f(r['ratio_to_bandwidth'], '.0%')} | "
                     f"{f(r.get('ratio_to_one_call'), '.3f')} |")
    return "\n".join(lines)
