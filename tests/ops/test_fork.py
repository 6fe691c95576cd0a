"""dcam's CPU ops in a child made by fork() after the parent used them with two OpenMP
threads (Python's multiprocessing with the "fork" start method): the child's maps are the
parent's, bit for bit. The child hung in libgomp (its thread pool is not copied by fork),
killed here after 60 s. Run in a fresh interpreter with OMP_NUM_THREADS=2, since the
test suite's own processes use one thread, where no pool is started."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork() with libgomp (Linux)")

SCRIPT = r"""
import multiprocessing as mp
import sys
import torch
import dcam
import dcam.ops.cpp

if not dcam.ops.cpp.is_available():
    print("no C++ extension"); sys.exit(0)
# small enough that torch's own element-wise ops in the checks stay on one thread
# (their grain size), so only dcam's kernels open OpenMP regions
g = torch.Generator().manual_seed(0)
acts = torch.randn(2, 36, 40, generator=g)
grads = torch.randn(2, 5, 36, 40, generator=g)

def maps():
    raw = dcam.pool_gradients(acts, grads, grid=(6, 6), backend="cpp")
    return raw.maps, dcam.refine(raw, steps=32, image_size=96, repeat_ratio=0.2, backend="cpp").maps

def child(queue):
    queue.put([m.tolist() for m in maps()])

parent = maps()
ctx = mp.get_context("fork")
queue = ctx.Queue()
proc = ctx.Process(target=child, args=(queue,))
proc.start()
proc.join(60)
if proc.is_alive():
    proc.kill()
    print("child hung"); sys.exit(0)
got = [torch.tensor(m) for m in queue.get(timeout=10)]
print("equal", all(torch.equal(a, b) for a, b in zip(parent, got)))
"""


def test_a_fork_child_computes_the_parents_maps():
    env = dict(os.environ, OMP_NUM_THREADS="2")
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stderr
    if res.stdout.strip() == "no C++ extension":
        pytest.skip("dcam._C is not built")
    assert res.stdout.strip() == "equal True", res.stdout + res.stderr
