"""The GPU check in one command (at most ~5 minutes on one GPU):

1. the operator tests on CUDA: ``pytest -n W tests/ops`` with the compiled
   Triton kernels (tests/conftest.py selects the interpreter only where no GPU
   exists) against the PyTorch reference, in W pytest-xdist workers (half the
   cores, at most 8) so that Triton's compiles run side by side;
2. the operator bench on the device: Triton vs the reference, pooling
   bandwidth against the device's own copy bandwidth, refine maps/s
   (``dcam.ops.bench``);
3. the real-size explanation bench in bf16 (``bench/bench_real_size.py``:
   hidden 4096, 2 blocks, 2,880 image tokens, T = 16 and 64).

Writes ``gpu_check.json`` and ``gpu_check.md`` (or --out) and prints the table.
Exit status: 0 when the tests passed, 1 when they failed or timed out, 2
without a CUDA device.

    python bench/gpu_check.py [--out DIR]
    python bench/gpu_check.py --smoke --out DIR   # the same steps at toy sizes, CPU or GPU

``--smoke`` runs every step at toy sizes on this machine's device (the CPU
where there is no GPU: the C++ backend stands in for Triton): a few of the
operator tests, the quick bench, a real-size bench of a tiny model. Its
figures mean nothing; it exists so that the test suite runs this script end
to end on machines that have no GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))  # script_support, as `python bench/gpu_check.py` has it

from script_support import require_seconds  # noqa: E402

TEST_TIMEOUT_S = 240


def xdist_workers() -> int:
    """pytest-xdist workers for the test step (0: one process, xdist is not installed).

    On a GPU, most of the step is Triton compiling: tests/ops needs ~230 kernel
    specialisations (80 of the refine kernel; counted by recording every launch of an
    interpreter run of tests/ops), which took 177 s of compiling for sm_90 on one core
    of this project's CPU machine, and more in truth (variants that differ only in the
    divisibility of their integer arguments hit the cache there). One process would
    spend most of TEST_TIMEOUT_S on that; workers compile side by side (the GPU
    machines lent have 16 cores)."""
    try:
        import xdist  # noqa: F401
    except ImportError:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def run_tests(smoke: bool, timeout_s: float = TEST_TIMEOUT_S) -> dict:
    which = ["tests/ops/test_api.py", "-k", "opcheck"] if smoke else ["tests/ops"]
    workers = xdist_workers()
    if workers:
        which = ["-n", str(workers)] + which
    t0 = time.perf_counter()
    # a session of its own, so that a timeout stops pytest's xdist workers too: with pytest
    # killed alone (subprocess.run's timeout), a worker went on running (seen here for ~3 s
    # while it collected; on a GPU one in the middle of a Triton compile would go on beside the
    # benches below)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + which, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except BaseException as exc:  # a timeout, Ctrl-C, any error: the tests do not run on without this script
        with contextlib.suppress(ProcessLookupError):  # (the group may have ended already)
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
        # the report must still be written: the two benches below are measured either way
        done = sum(line.count(".") for line in out.splitlines() if line and set(line) <= set(".sxXEF [%]0123456789"))
        return {"returncode": None, "summary": f"timed out after {timeout_s:g} s ({done} tests had passed)",
                "seconds": time.perf_counter() - t0, "workers": workers}
    tail = out.strip().splitlines()[-1] if out.strip() else err[-500:]
    return {"returncode": proc.returncode, "summary": tail, "seconds": time.perf_counter() - t0,
            "workers": workers}


def run_engine_bench(device: str, smoke: bool) -> dict:
    from dcam.ops.bench import format_table, run

    compiled = "triton" if device == "cuda" else "cpp"
    res = run(["torch", compiled], quick=smoke, device=device)
    return {"result": res, "table": format_table(res)}


def run_real_size(device: str, smoke: bool) -> dict:
    import bench_real_size as brs

    sizes = (["--hidden", "256", "--blocks", "2", "--image-tokens", "96", "--words", "2,4", "--chunk", "2"] if smoke
             else ["--hidden", "4096", "--blocks", "2", "--image-tokens", "2880", "--words", "16,64",
                   "--chunk", "16"])
    dtype = "bfloat16" if device == "cuda" else "float32"
    res = brs.run(brs.parser().parse_args(sizes + ["--sample-words", "2", "--device", device, "--dtype", dtype]))
    return {"result": res, "table": brs.table(res)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".", help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on this machine's device, to test this script")
    ap.add_argument("--test-timeout", type=float, default=TEST_TIMEOUT_S, metavar="S",
                    help=f"seconds the test step may take (default {TEST_TIMEOUT_S})")
    args = ap.parse_args(argv)
    require_seconds(ap, args, "test_timeout")
    # the folder is checked before ~5 minutes of measuring, not after (a file there lost them all)
    from dcam.errors import InputError
    from dcam.runs.folder import check_folder

    try:
        check_folder(args.out)
    except InputError as exc:
        ap.error(str(exc))
    import torch

    if torch.cuda.is_available():
        device, name = "cuda", torch.cuda.get_device_name(0)
    elif args.smoke:
        device, name = "cpu", "CPU (smoke run)"
    else:
        print("gpu_check: no CUDA device here; nothing measured", file=sys.stderr)
        return 2
    report = {"device": name, "torch": torch.__version__, "smoke": args.smoke}
    report["tests"] = run_tests(args.smoke, args.test_timeout)
    report["engine"] = run_engine_bench(device, args.smoke)
    report["real_size"] = run_real_size(device, args.smoke)
    md = "\n\n".join([f"# GPU check on {report['device']} (torch {report['torch']})"
                      + (": smoke run at toy sizes, the figures mean nothing" if args.smoke else ""),
                      f"tests on {device}: {report['tests']['summary']} ({report['tests']['seconds']:.0f} s, "
                      f"{report['tests'].get('workers') or 'no'} xdist workers)",
                      "## Operators\n\n" + report["engine"]["table"],
                      f"## Real-size explanation ({report['real_size']['result']['dtype']})\n\n"
                      + report["real_size"]["table"]])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump({k: (v if k not in ("engine", "real_size") else v["result"]) for k, v in report.items()}, f,
                  indent=2, default=str)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return 0 if report["tests"]["returncode"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
