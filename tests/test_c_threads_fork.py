"""The C API (libdcam.so, as ``python -m dcam.c_api --cflags --libs`` links it) embedded in a
program with threads of its own: calls from several pthreads at once, from inside the
caller's own ``#pragma omp parallel`` region, and in a child made by fork() after the
parent had called it, each give the maps of one call alone, bit for bit, and those maps
are the pooling formula's (numpy here, atol 1e-5).

The fork case hung: libgomp keeps the parent's worker threads in a pool that fork() does
not copy, and the child's first parallel region of two threads waited for them forever
(the child below was killed by its alarm). Now a forked child runs dcam on its calling
thread."""
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(sys.platform != "linux" or not shutil.which("gcc"), reason="needs gcc (Linux)")

B, T, N, D = 2, 5, 36, 40

PROGRAM = r"""
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "dcam.h"

enum { B = %(B)d, T = %(T)d, N = %(N)d, D = %(D)d, REPEATS = 20 };
static float acts[B * N * D], grads[B * T * N * D], first[B * T * N];

static int pool(float* maps) {
    uint8_t deg[B * T];
    return dcam_pool_gradients(acts, grads, DCAM_F32, B, T, N, D, 1, maps, deg);
}

/* 0 when REPEATS calls give the first call's maps bit for bit */
static int repeat_equal(void) {
    float maps[B * T * N];
    for (int i = 0; i < REPEATS; ++i)
        if (pool(maps) != DCAM_OK || memcmp(maps, first, sizeof maps) != 0) return 1;
    return 0;
}

static void* thread_main(void* arg) {
    *(int*)arg = repeat_equal();
    return NULL;
}

int main(void) {
    /* whole numbers / 8: every value exact in float32, the same in numpy */
    for (int i = 0; i < B * N * D; ++i) acts[i] = (float)((i * 7) %% 11 - 3) / 8.0f;
    for (int i = 0; i < B * T * N * D; ++i) grads[i] = (float)((i * 5) %% 13 - 6) / 8.0f;
    if (pool(first) != DCAM_OK) return 1;
    for (int i = 0; i < B * T * N; ++i) printf("map %%.9g\n", first[i]);

    pthread_t th[4];
    int bad[4], threads_bad = 0;
    for (int i = 0; i < 4; ++i) pthread_create(&th[i], NULL, thread_main, &bad[i]);
    for (int i = 0; i < 4; ++i) {
        pthread_join(th[i], NULL);
        threads_bad += bad[i];
    }
    printf("pthreads_bad %%d\n", threads_bad);

    int nested_bad = 0;
#pragma omp parallel num_threads(3) reduction(+ : nested_bad)
    nested_bad += repeat_equal();
    printf("nested_omp_bad %%d\n", nested_bad);

    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(20); /* a hung child ends here, killed by SIGALRM */
        _exit(repeat_equal());
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status))
        printf("fork_child exit %%d\n", WEXITSTATUS(status));
    else
        printf("fork_child signal %%d\n", WTERMSIG(status));
    return 0;
}
""" % dict(B=B, T=T, N=N, D=D)


def _c_api_flags():
    res = subprocess.run([sys.executable, "-m", "dcam.c_api", "--cflags", "--libs"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    if res.returncode == 1 and "was not built" in res.stderr:
        pytest.skip(f"libdcam.so is not built here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    return shlex.split(res.stdout)


@pytest.fixture(scope="module")
def program_lines(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dcam_c_threads")
    (tmp / "main.c").write_text(PROGRAM)
    cmd = ["gcc", "-std=gnu99", "-fopenmp", "-pthread", str(tmp / "main.c")] + _c_api_flags() + ["-o", str(tmp / "prog")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # two threads, so that the parent's calls start libgomp's pool of workers
    env = dict(os.environ, OMP_NUM_THREADS="2")
    run = subprocess.run([str(tmp / "prog")], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def _expected_maps():
    """Section 1 of the contract in numpy, float64 (the inputs are exact in float32)."""
    i = np.arange(B * N * D)
    acts = (((i * 7) % 11 - 3) / 8.0).reshape(B, N, D)
    j = np.arange(B * T * N * D)
    grads = (((j * 5) % 13 - 6) / 8.0).reshape(B, T, N, D)
    w = np.maximum(grads, 0).mean(axis=2)  # [B, T, D]
    raw = np.maximum(acts[:, None, :, :] * w[:, :, None, :], 0).mean(axis=3)  # [B, T, N]
    lo, hi = raw.min(axis=2, keepdims=True), raw.max(axis=2, keepdims=True)
    return ((raw - lo) / (hi - lo + 1e-8)).ravel()


def _value(lines, key):
    return [ln.split(" ", 1)[1] for ln in lines if ln.startswith(key + " ")]


def test_the_maps_are_the_pooling_formulas(program_lines):
    maps = np.array([float(v) for v in _value(program_lines, "map")])
    assert maps.shape == (B * T * N,)
    np.testing.assert_allclose(maps, _expected_maps(), atol=1e-5, rtol=0)


def test_concurrent_pthreads_give_one_calls_maps(program_lines):
    assert _value(program_lines, "pthreads_bad") == ["0"]


def test_calls_inside_the_callers_omp_region_give_one_calls_maps(program_lines):
    assert _value(program_lines, "nested_omp_bad") == ["0"]


def test_a_forked_child_computes_the_parents_maps(program_lines):
    # was "fork_child signal 14": the child hung in libgomp until its alarm
    assert _value(program_lines, "fork_child") == ["exit 0"]
