"""Explaining every token of a 16-token response on the bundled model: dcam's
probe vs the published procedure.

* dcam (``Explainer.explain``, probe ``"full"``): parameters frozen, the model
  run under ``no_grad`` up to the hooked block, one forward above it (the last
  block only at the 16 scored rows, ``ShapesDMLLM.logits_at``) and the 16
  gradients from one batched-cotangent backward; then pooling + refinement.
* published: for every token, one full forward and one full backward WITH
  parameter gradients (``dcam.probe.published_gradients``), then the
  same pooling + refinement.

Both give the same gradients (tests/test_explain.py checks it). The speed-up
is measured in the same process (best of ``ROUNDS`` interleaved runs each);
target >= 5x. Peak memory: the growth of the process's resident-memory
high-water mark during one call (see ``peak_memory``).

    pytest bench/bench_explain.py --benchmark-only -s    # pytest-benchmark table + ratio
    python bench/bench_explain.py                        # ratio and memory only

Uses the bundled weights (``dcam/zoo/weights``) when present, else a randomly
initialised model of the same architecture (the timing does not depend on the
weights). Threads: 1 (the bench machine's 2 cores are shared; set
``DCAM_BENCH_THREADS`` to change).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # script_support

from script_support import env_threads, run_child  # noqa: E402
from dcam import ops as engine, zoo  # noqa: E402
from dcam.probe import probe, published_gradients  # noqa: E402
from dcam.zoo.data import generate_sample  # noqa: E402
from dcam.explain import Explainer, repeat_ratio  # noqa: E402

PEAK_KINDS = ("dcam", "dcam-chunk4", "published")
RESPONSE = "a red circle and a blue square and a green triangle and a yellow circle and"  # 16 tokens
ROUNDS = 5
TARGET_RATIO = 5.0


def setup():
    torch.set_num_threads(int(os.environ.get("DCAM_BENCH_THREADS", "1")))
    if os.path.exists(os.path.join(zoo.WEIGHTS_DIR, "model.safetensors")):
        model, proc = zoo.load_default()
        which = "bundled weights"
    else:
        model, proc = zoo.build_random(0)
        which = "random init (bundled weights absent)"
    proc16 = zoo.ShapesProcessor(tokenizer=proc.tokenizer, image_size=proc.image_size, patch_size=proc.patch_size,
                                 response_length=16, default_prompt=proc.default_prompt)
    image = generate_sample((0, 2, 0), image_size=proc.image_size).image
    exp = Explainer(model, proc16)
    assert len(proc16.encode_response(RESPONSE)) == 16 and RESPONSE.count(" ") == 15
    return exp, image, which


def run_dcam(exp, image):
    return exp.explain(image, response=RESPONSE, probe="full").maps


def run_published(exp, image):
    a = exp.adapter
    prep = a.prepare(image, None, a.encode_response(RESPONSE))
    positions = [prep.response_start + i for i in range(16)]
    ids = prep.response_ids
    grads = published_gradients(a, prep, positions, ids, exp.layer)  # [16, N, D]
    acts = probe(a, prep, positions[:1], ids[:1], exp.layer, want_grads=False).acts  # one no-grad forward
    return engine.diffusion_cam(acts, grads[None], prep.grid, exp.config, steps=a.default_steps,
                                image_size=prep.image_height, repeat_ratio=repeat_ratio(ids)).maps


def best_time(fn, rounds=ROUNDS):
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _peak_in_this_process(fn) -> float:
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current RSS
        before = _status_kib("VmRSS:")
    except OSError:
        fn()
        return float("nan")
    fn()
    return float(_status_kib("VmHWM:") - before) * 1024


def peak_memory(kind: str) -> float:
    """Peak extra resident memory (bytes) of one call of ``kind`` ("dcam",
    "dcam-chunk4" or "published"), in a fresh process (after loading the model
    and one no-grad forward): the RSS high-water mark (``VmHWM``, reset through
    ``/proc/self/clear_refs``) minus the RSS before the call. Linux only (NaN
    elsewhere). The PyTorch profiler's memory timeline loses the frees of
    tensors created under vmap (the batched cotangents) and tracemalloc does
    not see PyTorch's allocations, hence the OS figure; it includes allocator
    slack, and a fresh process is needed because freed memory stays mapped."""
    import json

    out = run_child([sys.executable, os.path.abspath(__file__), "--peak-memory", kind])
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak"])


def _peak_child(kind: str) -> None:
    import json

    exp, image, _ = setup()
    if kind == "dcam-chunk4":
        exp = Explainer(exp.model, exp.processor, chunk_size=4)
    fn = {"dcam": run_dcam, "dcam-chunk4": run_dcam, "published": run_published}[kind]
    a = exp.adapter
    prep = a.prepare(image, None, a.encode_response(RESPONSE))
    probe(a, prep, [prep.response_start], prep.response_ids[:1], exp.layer, want_grads=False)
    print(json.dumps({"peak": _peak_in_this_process(lambda: fn(exp, image))}))


def measure(rounds=ROUNDS):
    exp, image, which = setup()
    fast = lambda: run_dcam(exp, image)  # noqa: E731
    slow = lambda: run_published(exp, image)  # noqa: E731
    fast(), slow()  # warm-up
    t_fast, t_slow = float("inf"), float("inf")
    for _ in range(rounds):  # interleaved, so both see the same machine load
        t_fast = min(t_fast, best_time(fast, 1))
        t_slow = min(t_slow, best_time(slow, 1))
    chunk4 = Explainer(exp.model, exp.processor, chunk_size=4)
    return dict(model=which, t_dcam=t_fast, t_published=t_slow, ratio=t_slow / t_fast,
                peak_dcam=peak_memory("dcam"), peak_published=peak_memory("published"),
                peak_dcam_chunk4=peak_memory("dcam-chunk4"),
                t_dcam_chunk4=best_time(lambda: run_dcam(chunk4, image), rounds),
                maxdiff=float((fast() - slow()).abs().max()))


def report(r) -> str:
    return (f"16-token response, {r['model']}\n"
            f"  dcam probe (1 forward, batched cotangents): {r['t_dcam'] * 1e3:8.1f} ms, "
            f"peak {r['peak_dcam'] / 2**20:7.1f} MiB\n"
            f"  dcam, chunk_size=4 (4 backwards of 4):      {r['t_dcam_chunk4'] * 1e3:8.1f} ms, "
            f"peak {r['peak_dcam_chunk4'] / 2**20:7.1f} MiB\n"
            f"  published (16 x forward+backward w/ params): {r['t_published'] * 1e3:8.1f} ms, "
            f"peak {r['peak_published'] / 2**20:7.1f} MiB\n"
            f"  speed-up {r['ratio']:.1f}x (target >= {TARGET_RATIO:.0f}x); max |map difference| {r['maxdiff']:.2e}")


# --------------------------------------------------------------------------- pytest-benchmark

try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="module")
    def bench_setup():
        n = torch.get_num_threads()
        s = setup()
        yield s
        torch.set_num_threads(n)

    def test_explain_dcam(benchmark, bench_setup):
        exp, image, _ = bench_setup
        maps = benchmark.pedantic(run_dcam, args=(exp, image), rounds=ROUNDS, iterations=1, warmup_rounds=1)
        assert maps.shape[0] == 16

    def test_explain_published(benchmark, bench_setup):
        exp, image, _ = bench_setup
        maps = benchmark.pedantic(run_published, args=(exp, image), rounds=ROUNDS, iterations=1, warmup_rounds=1)
        assert maps.shape[1] == 16

    def test_speedup_ratio(benchmark):
        r = measure()
        benchmark.extra_info.update({k: v for k, v in r.items()})
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
        print("\n" + report(r))
        assert r["maxdiff"] < 1e-4
        assert r["ratio"] >= TARGET_RATIO, report(r)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peak-memory", choices=PEAK_KINDS, help=argparse.SUPPRESS)  # a child process: one call's peak
    args = ap.parse_args(argv)
    env_threads(ap)  # (read again by setup)
    if args.peak_memory:
        _peak_child(args.peak_memory)
    else:
        print(report(measure()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
