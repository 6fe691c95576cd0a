"""pytest-benchmark suite of the engine (run: `pytest bench/bench_engine.py`).

Each benchmark times one backend with pytest-benchmark and records, in
`extra_info`, the ratio to the PyTorch reference (and for pooling, to the
bandwidth of a plain copy) timed in this same process. Set DCAM_BENCH_QUICK=1
for the small cases."""
import os

import pytest
import torch

import dcam
from dcam.ops.bench import cases, copy_size, time_against, time_beside_copy, time_call

QUICK = os.environ.get("DCAM_BENCH_QUICK", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SYNC = torch.cuda.synchronize if DEVICE == "cuda" else None
CASES = {c.name: c for c in cases(DEVICE, quick=QUICK)}
COPY_BYTES = copy_size(list(CASES.values()))  # the copy every call is timed beside, as in dcam bench
BACKENDS = [b for b in dcam.available_backends() if b != "torch" and not (b == "triton" and DEVICE != "cuda")]
_ref_times = {}


def _reference_time(case):
    if case.name not in _ref_times:
        _ref_times[case.name] = time_call(case.make("torch"), min_time=0.3, max_reps=5, sync=SYNC)
    return _ref_times[case.name]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case_name", list(CASES))
def test_engine(benchmark, case_name, backend):
    case = CASES[case_name]
    fn = case.make(backend)
    benchmark.group = case_name
    benchmark.pedantic(fn, rounds=10 if "refine" in case_name else 5, warmup_rounds=1,
                       setup=SYNC if SYNC else None)
    t = benchmark.stats.stats.median
    benchmark.extra_info["us_per_map"] = t / case.maps * 1e6
    benchmark.extra_info["ratio_to_reference"] = _reference_time(case) / t
    if case.bytes_read:
        # the ratio as dcam bench gives it: the call timed in pairs with a plain copy (the
        # bandwidth drifts on a shared machine), median over the pairs
        t_pair, copy_bw, ratio = time_beside_copy(fn, case.bytes_read, COPY_BYTES, DEVICE, SYNC)
        benchmark.extra_info["grad_gb_per_s"] = case.bytes_read / t_pair / 1e9
        benchmark.extra_info["copy_gb_per_s"] = copy_bw / 1e9
        benchmark.extra_info["ratio_to_copy_bandwidth"] = ratio
    if case.one_call:
        # a chunked path against one whole call on the same tensors, alternating (dcam bench's
        # "x one call")
        benchmark.extra_info["ratio_to_one_call"] = time_against(fn, case.one_call(backend), SYNC)
