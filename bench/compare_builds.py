"""Two or more builds of the C++ pooling, timed call by call in one process.

    OMP_WAIT_POLICY=PASSIVE python bench/compare_builds.py HEAD~1 HEAD
    OMP_WAIT_POLICY=PASSIVE python bench/compare_builds.py 73a39bb WORKTREE --processes 3

Each build is a git revision of ``csrc/`` (``WORKTREE``: the files as they are
now), compiled with setup.py's flags into a shared library of the plain
C API (``csrc/include/dcam.h``) and loaded with ctypes. Every round calls each
case once on every build in turn, so the builds share the machine's state:
on this box the memory bandwidth drifts by tens of percent between processes
and within seconds, which makes separate processes (old build, then new) a
poor A/B for changes of a few percent. Several processes (``--processes``)
show how much the medians themselves move.

Cases (B=1, T=64, N=576, D=4096 as in ``dcam bench``; bf16, and fp32 with
``--fp32``): ``pool_gradients`` (one call), ``channel_weights`` (the pass over
the gradients), the same in 8 calls of 8 words, ``weighted_maps`` (the
product and normalisation from given weights), and the explainer's streamed
path (8 ``channel_weights`` calls, then ``weighted_maps``); with
``--signed`` each also with signed channel weights (``grad_relu`` off).

Before timing, every build's maps and weights are compared with the first
build's: a build that computes something else is reported, since comparing
the speed of different results means little.
"""
from __future__ import annotations

import argparse
import ast
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))  # script_support, as `python bench/compare_builds.py` has it

from script_support import require_at_least, run_child  # noqa: E402

# beside each revision's own setup.py flags (setup_flags): what Pybind11Extension(cxx_std=17)
# adds for a shared library. The other defaults Python and pybind11 add (-fwrapv, -g, hidden
# visibility) are left out: with them the pooling timed the same here (in one process beside a
# build without them, two processes: within 4% case by case, either way)
EXTRA_FLAGS = ["-std=c++17", "-fPIC"]
T, N, D, CHUNK = 64, 576, 4096, 8
DTYPE_CODE = {"fp32": 0, "bf16": 2}  # dcam_dtype


def export_csrc(rev: str, dest: str) -> None:
    """csrc/ of `rev` (or of the working tree) into dest/csrc."""
    if rev == "WORKTREE":
        shutil.copytree(os.path.join(ROOT, "csrc"), os.path.join(dest, "csrc"))
        return
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "csrc"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)


def setup_flags(rev: str) -> List[str]:
    """The compile flags setup.py of `rev` (or of the working tree) gives the extension on
    Linux: its first ``compile_args = [...]``, read from the file, not copied here, so that
    each revision is built as its own setup.py builds it."""
    if rev == "WORKTREE":
        with open(os.path.join(ROOT, "setup.py")) as f:
            text = f.read()
    else:
        text = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:setup.py"], check=True, capture_output=True,
                              text=True).stdout
    for node in ast.walk(ast.parse(text)):
        if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["compile_args"]
                and isinstance(node.value, ast.List)):
            return [ast.literal_eval(e) for e in node.value.elts]
    raise RuntimeError(f"{rev}: no `compile_args = [...]` in setup.py")


def build(rev: str, workdir: str, index: int) -> str:
    """Compiles csrc/ of `rev` into a shared library; returns its path."""
    dest = os.path.join(workdir, f"{index}-" + "".join(c if c.isalnum() else "-" for c in rev))
    os.makedirs(dest)
    export_csrc(rev, dest)
    src = os.path.join(dest, "csrc")
    sources = sorted(os.path.join(src, f) for f in os.listdir(src) if f.endswith(".cpp"))
    inc = ["-I" + os.path.join(src, "include"), "-I" + src]
    flags = setup_flags(rev) + EXTRA_FLAGS

    def compile_one(path: str) -> str:
        obj = path[:-4] + ".o"
        done = subprocess.run(["g++", *flags, *inc, "-c", path, "-o", obj], capture_output=True, text=True)
        if done.returncode:  # a build that does not compile: show the compiler's message
            raise RuntimeError(f"{rev}: g++ failed on {os.path.basename(path)}:\n{done.stderr}")
        return obj

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        objects = list(pool.map(compile_one, sources))
    lib = os.path.join(dest, "libdcam.so")
    # -Bsymbolic: each library calls its own functions, whichever was loaded first
    run_child(["g++", "-shared", "-fopenmp", "-Wl,-Bsymbolic", *objects, "-o", lib])
    return lib


class Inputs:
    def __init__(self, dtype: str):
        import torch
        from dcam.ops.bench import make_pool_inputs
        tdtype = torch.float32 if dtype == "fp32" else torch.bfloat16
        acts, grads = make_pool_inputs(T, N, D, tdtype)
        self.code = DTYPE_CODE[dtype]
        self.acts, self.grads = acts.contiguous(), grads.contiguous()
        self.chunks = [self.grads[:, c:c + CHUNK] for c in range(0, T, CHUNK)]  # contiguous views
        self.maps = torch.empty(T, N)
        self.degenerate = torch.empty(T, dtype=torch.uint8)
        self.weights = torch.empty(T, D)


def _p(t) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def cases(lib: ctypes.CDLL, x: Inputs, relu: int) -> Dict[str, object]:
    i64 = ctypes.c_int64

    def check(rc: int) -> None:
        if rc != 0:
            raise RuntimeError(f"dcam call failed with code {rc}")

    def whole():
        check(lib.dcam_pool_gradients(_p(x.acts), _p(x.grads), x.code, i64(1), i64(T), i64(N), i64(D), relu,
                                      _p(x.maps), _p(x.degenerate)))

    def weights():
        check(lib.dcam_channel_weights(_p(x.grads), x.code, i64(1), i64(T), i64(N), i64(D), relu,
                                       _p(x.weights), None))

    def weights_in_chunks():
        for k, g in enumerate(x.chunks):
            check(lib.dcam_channel_weights(_p(g), x.code, i64(1), i64(CHUNK), i64(N), i64(D), relu,
                                           _p(x.weights[CHUNK * k:]), None))

    def maps_from_weights():
        check(lib.dcam_weighted_maps(_p(x.acts), x.code, _p(x.weights), i64(1), i64(T), i64(N), i64(D),
                                     _p(x.maps), _p(x.degenerate)))

    def streamed():
        weights_in_chunks()
        maps_from_weights()

    return {"pool_gradients": whole, "channel_weights": weights,
            f"channel_weights_x{T // CHUNK}": weights_in_chunks, "weighted_maps": maps_from_weights,
            "streamed": streamed}


def worker(libs: List[str], names: List[str], rounds: int, dtypes: List[str], signed: bool) -> List[dict]:
    loaded = [ctypes.CDLL(path) for path in libs]
    rows = []
    for dtype in dtypes:
        x = Inputs(dtype)
        for relu in ([1, 0] if signed else [1]):
            per_build = [cases(lib, x, relu) for lib in loaded]
            # the same answers first: maps and weights of every build against the first's
            outputs = []
            for c in per_build:
                c["pool_gradients"]()
                c["channel_weights"]()
                outputs.append((x.maps.clone(), x.weights.clone()))
            for name, (m, w) in zip(names[1:], outputs[1:]):
                dm = (m - outputs[0][0]).abs().max().item()
                dw = (w - outputs[0][1]).abs().max().item()
                if dm or dw:
                    print(f"note: {name} differs from {names[0]} ({dtype}, grad_relu={relu}): "
                          f"maps by up to {dm:.2e}, weights by up to {dw:.2e}", file=sys.stderr)
            times = {(case, b): [] for case in per_build[0] for b in range(len(loaded))}
            for c in per_build:  # one warm-up call each
                for f in c.values():
                    f()
            for _ in range(rounds):
                for case in per_build[0]:
                    for b, c in enumerate(per_build):
                        t0 = time.perf_counter()
                        c[case]()
                        times[case, b].append(time.perf_counter() - t0)
            for case in per_build[0]:
                rows.append({"dtype": dtype, "grad_relu": bool(relu), "case": case,
                             "ms": [statistics.median(times[case, b]) * 1e3 for b in range(len(loaded))]})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("revs", nargs="+", help="git revisions to compare (WORKTREE: the files as they are now); "
                                            "the first is the baseline")
    ap.add_argument("--rounds", type=int, default=20, help="rounds per process (default 20)")
    ap.add_argument("--processes", type=int, default=1, help="fresh processes, one after another (default 1)")
    ap.add_argument("--fp32", action="store_true", help="float32 gradients too")
    ap.add_argument("--signed", action="store_true", help="signed channel weights too (grad_relu off)")
    ap.add_argument("--_worker", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    # before minutes of building (--processes 0 printed an empty table, --rounds 0 a child's traceback, lost)
    require_at_least(ap, args, ["rounds", "processes"])
    dtypes = ["bf16"] + (["fp32"] if args.fp32 else [])
    if args._worker is not None:  # a child process: libraries given, print its rows as lines of numbers
        for row in worker(args._worker, args.revs, args.rounds, dtypes, args.signed):
            print("ROW", row["dtype"], int(row["grad_relu"]), row["case"],
                  *(f"{v:.4f}" for v in row["ms"]))
        return
    if len(args.revs) < 2:
        ap.error("revs: give at least two revisions to compare")
    for rev in args.revs:
        verify = ["git", "-C", ROOT, "rev-parse", "--verify", "--quiet", rev + "^{commit}"]
        if rev != "WORKTREE" and subprocess.run(verify, capture_output=True).returncode != 0:
            ap.error(f"revs: {rev!r} is not a commit of this repository (nor WORKTREE)")
    with tempfile.TemporaryDirectory(prefix="dcam-builds-") as workdir:
        libs = []
        for i, rev in enumerate(args.revs):
            print(f"building {rev} ...", file=sys.stderr, flush=True)
            try:
                libs.append(build(rev, workdir, i))
            except RuntimeError as exc:  # a revision that does not build: the compiler's message, no traceback
                raise SystemExit(f"compare_builds: {exc}") from None
        results: Dict[tuple, List[List[float]]] = {}
        for _ in range(args.processes):
            cmd = [sys.executable, os.path.abspath(__file__), *args.revs, "--rounds", str(args.rounds),
                   *(["--fp32"] if args.fp32 else []), *(["--signed"] if args.signed else []), "--_worker", *libs]
            out = run_child(cmd)
            for line in out.stdout.splitlines():
                if line.startswith("ROW "):
                    _, dtype, relu, case, *ms = line.split()
                    results.setdefault((dtype, relu, case), []).append([float(v) for v in ms])
    base = args.revs[0]
    print(f"medians over {args.rounds} rounds per process, {args.processes} process(es); "
          f"ratio = time / {base}'s time in the same process\n")
    print("| dtype | grad_relu | case | " + " | ".join(args.revs) + " | "
          + " | ".join(f"{r} / {base}" for r in args.revs[1:]) + " |")
    print("|---" * (3 + 2 * len(args.revs) - 1) + "|")
    for (dtype, relu, case), per_process in results.items():
        cells = []
        for b in range(len(args.revs)):
            v = [p[b] for p in per_process]
            cells.append(f"{min(v):.2f}-{max(v):.2f} ms" if len(v) > 1 else f"{v[0]:.2f} ms")
        for b in range(1, len(args.revs)):
            r = [p[b] / p[0] for p in per_process]
            cells.append(f"{min(r):.3f}-{max(r):.3f}" if len(r) > 1 else f"{r[0]:.3f}")
        print(f"| {dtype} | {'on' if relu == '1' else 'off'} | {case} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
