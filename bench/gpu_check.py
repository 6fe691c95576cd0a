"""The GPU check in one command (at most ~5 minutes on one GPU):

1. the operator tests on CUDA: ``pytest tests/ops`` with the compiled Triton
   kernels (tests/conftest.py selects the interpreter only where no GPU
   exists) against the PyTorch reference;
2. the operator bench on the device: Triton vs the reference, pooling
   bandwidth against the device's own copy bandwidth, refine maps/s
   (``dcam.ops.bench``);
3. the real-size explanation bench in bf16 (``bench/bench_real_size.py``:
   hidden 4096, 2 blocks, 2,880 image tokens, T = 16 and 64).

Writes ``gpu_check.json`` and ``gpu_check.md`` (or --out) and prints the table.

    python bench/gpu_check.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tests() -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/ops"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    return {"returncode": proc.returncode, "summary": tail, "seconds": time.perf_counter() - t0}


def run_engine_bench() -> dict:
    from dcam.ops.bench import format_table, run

    res = run(["torch", "triton"], quick=False, device="cuda")
    return {"result": res, "table": format_table(res)}


def run_real_size() -> dict:
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench_real_size as brs

    ns = argparse.Namespace(hidden=4096, blocks=2, image_tokens=2880, words=[16, 64], chunk=16, sample_words=2,
                            threads=None, device="cuda", dtype="bfloat16", json=None)
    res = brs.run(ns)
    return {"result": res, "table": brs.table(res)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".", help="folder for gpu_check.json and gpu_check.md")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing measured", file=sys.stderr)
        return 2
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    report["tests"] = run_tests()
    report["engine"] = run_engine_bench()
    report["real_size"] = run_real_size()
    md = "\n\n".join([f"# GPU check on {report['device']} (torch {report['torch']})",
                      f"tests/ops on CUDA: {report['tests']['summary']} ({report['tests']['seconds']:.0f} s)",
                      "## Operators\n\n" + report["engine"]["table"],
                      "## Real-size explanation (bf16)\n\n" + report["real_size"]["table"]])
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
