"""The plain C API (csrc/include/dcam.h) used from a C99 program, without Python
or torch: compile the C++ sources with g++, a small C99 program with gcc, link
with g++ -fopenmp, run it on hand-made cases and check its printed output
against values computed here independently (numpy, from the SPEC formulas).
The same program is also built with nothing but the flags of
``python -m dcam.c_api --cflags --libs`` against the header and the libdcam.so
that setup.py built (``python setup.py build_ext --inplace``, ``pip install -e .``),
and checked against the same values.
Also: the header's DCAM_* contract constants are exactly those of
dcam/ops/constants.py, with equal values."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or not (shutil.which("gcc") and shutil.which("g++")),
    reason="needs gcc and g++ (Linux)")

PROGRAM = r"""
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include "dcam.h"

static uint16_t to_bf16(float f) { uint32_t u; memcpy(&u, &f, 4); return (uint16_t)(u >> 16); }

int main(void) {
    /* ---- refine: one 3x3 map with AKD only (k = 3), one degenerate map */
    float raw[18] = {0.1f, 0.5f, 0.2f, 0.9f, 0.4f, 0.3f, 0.0f, 0.7f, 1.0f,
                     0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    uint8_t deg[2] = {0, 1};
    float steps[1] = {64.0f}, size[1] = {512.0f}, rho[1] = {0.0f};
    float out[18];
    int32_t ks[2], strat[2];
    float dthr[2], cthr[2], alpha[2];
    dcam_refine_config cfg;
    int rc = dcam_refine_config_default(&cfg);
    cfg.akd_kernel = 3;
    cfg.dacg = 0;
    cfg.cba = 0;
    cfg.sicd = DCAM_SICD_OFF;
    rc |= dcam_refine(raw, deg, steps, size, rho, NULL, NULL, 1, 2, 3, 3, &cfg, out, ks, strat, dthr, cthr, alpha);
    printf("rc %d\n", rc);
    for (int i = 0; i < 18; ++i) printf("akd %d %.8f\n", i, out[i]);
    for (int m = 0; m < 2; ++m)
        printf("stat %d %d %d %.8f %.8f %.8f\n", m, ks[m], strat[m], dthr[m], cthr[m], alpha[m]);

    /* ---- the default pipeline on the same map (statistics may be NULL), then with every
       statistic and a repeat ratio that makes SICD act */
    dcam_refine_config_default(&cfg);
    rc = dcam_refine(raw, NULL, steps, size, rho, NULL, NULL, 1, 1, 3, 3, &cfg, out, ks, strat, NULL, NULL, NULL);
    printf("default %d %d %d", rc, ks[0], strat[0]);
    for (int i = 0; i < 9; ++i) printf(" %.8f", out[i]);
    printf("\n");
    float rho2[1] = {0.25f};
    rc = dcam_refine(raw, NULL, steps, size, rho2, NULL, NULL, 1, 1, 3, 3, &cfg, out, ks, strat, dthr, cthr, alpha);
    printf("default_stats %d %d %d %.8f %.8f %.8f", rc, ks[0], strat[0], dthr[0], cthr[0], alpha[0]);
    for (int i = 0; i < 9; ++i) printf(" %.8f", out[i]);
    printf("\n");

    /* ---- pooling: N=3 tokens (1x3 grid), D=2, T=1; float32 and bfloat16 */
    float A[6] = {1.0f, -1.0f, 2.0f, 3.0f, 0.0f, 2.0f};
    float G[6] = {1.0f, -2.0f, 3.0f, 4.0f, 0.0f, 0.0f};
    uint16_t Ab[6], Gb[6];
    for (int i = 0; i < 6; ++i) { Ab[i] = to_bf16(A[i]); Gb[i] = to_bf16(G[i]); }
    float maps[3];
    uint8_t pdeg[1];
    for (int relu = 1; relu >= 0; --relu) {
        rc = dcam_pool_gradients(A, G, DCAM_F32, 1, 1, 3, 2, relu, maps, pdeg);
        printf("pool f32 %d %d %d %.8f %.8f %.8f\n", relu, rc, pdeg[0], maps[0], maps[1], maps[2]);
        rc = dcam_pool_gradients(Ab, Gb, DCAM_BF16, 1, 1, 3, 2, relu, maps, pdeg);
        printf("pool bf16 %d %d %d %.8f %.8f %.8f\n", relu, rc, pdeg[0], maps[0], maps[1], maps[2]);
    }

    /* ---- the same pooling with the gradients checked in its pass: clean, then a -Inf */
    int32_t nonfinite = -1;
    rc = dcam_pool_gradients_checked(A, G, DCAM_F32, 1, 1, 3, 2, 1, maps, pdeg, &nonfinite);
    printf("checked clean %d %d %.8f %.8f %.8f\n", rc, nonfinite, maps[0], maps[1], maps[2]);
    G[3] = -INFINITY;
    rc = dcam_pool_gradients_checked(A, G, DCAM_F32, 1, 1, 3, 2, 1, maps, pdeg, &nonfinite);
    printf("checked neginf %d %d\n", rc, nonfinite);
    G[3] = 4.0f;

    /* ---- the pooling in two halves: the channel weights, then maps from weights of either sign */
    float W[2];
    for (int relu = 1; relu >= 0; --relu) {
        nonfinite = -1;
        rc = dcam_channel_weights(Gb, DCAM_BF16, 1, 1, 3, 2, relu, W, &nonfinite);
        printf("halves weights %d %d %d %.8f %.8f\n", relu, rc, nonfinite, W[0], W[1]);
        rc = dcam_weighted_maps(Ab, DCAM_BF16, W, 1, 1, 3, 2, maps, pdeg);
        printf("halves maps %d %d %d %.8f %.8f %.8f\n", relu, rc, pdeg[0], maps[0], maps[1], maps[2]);
    }
    float Wn[4] = {1.0f, -2.0f, 0.0f, 0.0f}; /* token 0 signed, token 1 all zero (degenerate) */
    uint8_t pdeg2[2];
    float maps2[6];
    rc = dcam_weighted_maps(A, DCAM_F32, Wn, 1, 2, 3, 2, maps2, pdeg2);
    printf("halves signed %d %d %d", rc, pdeg2[0], pdeg2[1]);
    for (int i = 0; i < 6; ++i) printf(" %.8f", maps2[i]);
    printf("\n");
    G[3] = NAN;
    rc = dcam_channel_weights(G, DCAM_F32, 1, 1, 3, 2, 1, W, &nonfinite);
    printf("halves nan %d %d\n", rc, nonfinite);
    G[3] = 4.0f;

    /* ---- a streamed chunk's weights into the rows of one table of all tokens */
    {
        float G2[12], table[8], tb[12];
        const int64_t huge = (int64_t)1 << 62;
        for (int i = 0; i < 6; ++i) { G2[i] = G[i]; G2[6 + i] = -G[i]; } /* token 0: G, token 1: -G */
        for (int i = 0; i < 8; ++i) table[i] = -7.0f;                   /* [1, 4, 2] */
        nonfinite = -1;
        rc = dcam_channel_weights_into(G2, DCAM_F32, 1, 2, 3, 2, 0, table, 4, 1, &nonfinite);
        printf("into signed %d %d", rc, nonfinite);
        for (int i = 0; i < 8; ++i) printf(" %.8f", table[i]);
        printf("\n");
        for (int i = 0; i < 12; ++i) tb[i] = -7.0f;                     /* [2, 3, 2]: two images */
        rc = dcam_channel_weights_into(G2, DCAM_F32, 2, 1, 3, 2, 0, tb, 3, 2, NULL);
        printf("into batch %d", rc);
        for (int i = 0; i < 12; ++i) printf(" %.8f", tb[i]);
        printf("\n");
        for (int i = 0; i < 8; ++i) table[i] = -7.0f;
        nonfinite = -7;
        printf("into err past_end %d\n", dcam_channel_weights_into(G2, DCAM_F32, 1, 2, 3, 2, 1, table, 4, 3,
                                                                    &nonfinite));
        printf("into err negative_first %d\n", dcam_channel_weights_into(G2, DCAM_F32, 1, 2, 3, 2, 1, table, 4,
                                                                          -1, &nonfinite));
        printf("into err empty_past_table %d\n", dcam_channel_weights_into(G2, DCAM_F32, 1, 0, 3, 2, 1, table, 4,
                                                                            5, &nonfinite));
        printf("into err negative_table %d\n", dcam_channel_weights_into(G2, DCAM_F32, 1, 0, 3, 2, 1, table, -1,
                                                                          0, &nonfinite));
        printf("into err table_overflow %d\n", dcam_channel_weights_into(G2, DCAM_F32, 1, 1, 3, 2, 1, table, huge,
                                                                          0, &nonfinite));
        printf("into err null_table %d\n", dcam_channel_weights_into(G2, DCAM_F32, 1, 2, 3, 2, 1, NULL, 4, 0,
                                                                      &nonfinite));
        printf("into err null_grads %d\n", dcam_channel_weights_into(NULL, DCAM_F32, 1, 2, 3, 2, 1, table, 4, 0,
                                                                      &nonfinite));
        printf("into err dtype %d\n", dcam_channel_weights_into(G2, (dcam_dtype)9, 1, 2, 3, 2, 1, table, 4, 0,
                                                                 &nonfinite));
        printf("into err zero_rows %d\n", dcam_channel_weights_into(G2, DCAM_F32, 1, 2, 0, 2, 1, table, 4, 0,
                                                                     &nonfinite));
        printf("into untouched %d", nonfinite);
        for (int i = 0; i < 8; ++i) printf(" %.1f", table[i]);
        printf("\n");
        printf("into empty %d\n", dcam_channel_weights_into(NULL, DCAM_F32, 1, 0, 3, 2, 1, NULL, 4, 4, NULL));
        G2[7] = NAN; /* token 1 of the chunk, feature 1 */
        rc = dcam_channel_weights_into(G2, DCAM_F32, 1, 2, 3, 2, 1, table, 4, 2, &nonfinite);
        printf("into nan %d %d %.8f %.8f %d\n", rc, nonfinite, table[4], table[5], table[7] != table[7]);
    }

    /* ---- documented errors */
    printf("err null_cfg %d\n", dcam_refine(raw, NULL, steps, size, rho, NULL, NULL, 1, 1, 3, 3, NULL, out,
                                             NULL, NULL, NULL, NULL, NULL));
    cfg.akd_kernel = 4;
    printf("err even_kernel %d\n", dcam_refine(raw, NULL, steps, size, rho, NULL, NULL, 1, 1, 3, 3, &cfg, out,
                                                NULL, NULL, NULL, NULL, NULL));
    cfg.akd_kernel = 3;
    /* parameters outside CamConfig's ranges (they returned DCAM_OK and NaN maps) */
    cfg.dacg_params[7] = NAN;
    printf("err nan_sigma %d\n", dcam_refine(raw, NULL, steps, size, rho, NULL, NULL, 1, 1, 3, 3, &cfg, out,
                                              NULL, NULL, NULL, NULL, NULL));
    cfg.dacg_params[7] = 0.0f;
    printf("err zero_sigma %d\n", dcam_refine(raw, NULL, steps, size, rho, NULL, NULL, 1, 1, 3, 3, &cfg, out,
                                               NULL, NULL, NULL, NULL, NULL));
    cfg.dacg_params[7] = 0.3f;
    cfg.dacg_params[3] = 150.0f;
    printf("err percentile %d\n", dcam_refine(raw, NULL, steps, size, rho, NULL, NULL, 1, 1, 3, 3, &cfg, out,
                                               NULL, NULL, NULL, NULL, NULL));
    cfg.dacg_params[3] = 90.0f;
    cfg.cba_params[4] = -0.5f;
    printf("err floor %d\n", dcam_refine(raw, NULL, steps, size, rho, NULL, NULL, 1, 1, 3, 3, &cfg, out,
                                          NULL, NULL, NULL, NULL, NULL));
    cfg.cba_params[4] = 0.5f;
    {   /* CBA weights each within [0, FLT_MAX] but summing past 3.4e38, as CamConfig refuses them (this gave
           DCAM_OK and cba_threshold = +inf); a sum of 3.2e38 is taken; a refused call writes nothing */
        const dcam_refine_config keep = cfg;
        float thr[1] = {-7.0f};
        out[0] = -7.0f;
        cfg.cba = 1;
        for (int i = 0; i < 4; ++i) cfg.cba_params[i] = 3e38f;
        printf("err cba_weight_sum %d\n", dcam_refine(raw, NULL, steps, size, rho, NULL, NULL, 1, 1, 3, 3, &cfg,
                                                      out, NULL, NULL, NULL, thr, NULL));
        printf("untouched cba %.1f %.1f\n", out[0], thr[0]);
        for (int i = 0; i < 4; ++i) cfg.cba_params[i] = 0.8e38f;
        printf("err cba_weight_sum_within %d\n", dcam_refine(raw, NULL, steps, size, rho, NULL, NULL, 1, 1, 3, 3,
                                                             &cfg, out, NULL, NULL, NULL, thr, NULL));
        cfg = keep;
    }
    cfg.sicd = DCAM_SICD_CONTEXT;
    printf("err no_weights %d\n", dcam_refine(raw, NULL, steps, size, rho, NULL, NULL, 1, 1, 3, 3, &cfg, out,
                                               NULL, NULL, NULL, NULL, NULL));
    {   /* values refine reads, refused (NaN maps, or a kernel silently made 3); unread ones are not checked */
        const dcam_refine_config keep = cfg;
        float bad[1] = {NAN}, neg[1] = {-16.0f}, zero[1] = {0.0f}, big_rho[1] = {1.5f};
        cfg.sicd = DCAM_SICD_CONTEXT;
        printf("err nan_context_weight %d\n", dcam_refine(raw, NULL, steps, size, rho, NULL, bad, 1, 1, 3, 3, &cfg,
                                                          out, NULL, NULL, NULL, NULL, NULL));
        printf("err negative_context_weight %d\n", dcam_refine(raw, NULL, steps, size, rho, NULL, neg, 1, 1, 3, 3,
                                                               &cfg, out, NULL, NULL, NULL, NULL, NULL));
        {   /* two maps, W[1, 1] = 0.5: a word's own map in its interference (section 6 wants W[t, t] = 0) */
            float own[4] = {0.0f, 1.0f, 1.0f, 0.5f}, others[4] = {0.0f, 1.0f, 1.0f, 0.0f};
            printf("err diagonal_context_weight %d\n", dcam_refine(raw, NULL, steps, size, rho, NULL, own, 1, 2, 3,
                                                                   3, &cfg, out, NULL, NULL, NULL, NULL, NULL));
            printf("err zero_diagonal_context_weight %d\n", dcam_refine(raw, NULL, steps, size, rho, NULL, others, 1,
                                                                        2, 3, 3, &cfg, out, NULL, NULL, NULL, NULL,
                                                                        NULL));
        }
        cfg.sicd = DCAM_SICD_REFERENCE;
        printf("err nan_rho %d\n", dcam_refine(raw, NULL, steps, size, bad, NULL, NULL, 1, 1, 3, 3, &cfg, out,
                                               NULL, NULL, NULL, NULL, NULL));
        printf("err rho_past_1 %d\n", dcam_refine(raw, NULL, steps, size, big_rho, NULL, NULL, 1, 1, 3, 3, &cfg, out,
                                                  NULL, NULL, NULL, NULL, NULL));
        cfg.sicd = DCAM_SICD_OFF;
        cfg.akd_kernel = 0;
        printf("err nan_steps %d\n", dcam_refine(raw, NULL, bad, size, rho, NULL, NULL, 1, 1, 3, 3, &cfg, out,
                                                 NULL, NULL, NULL, NULL, NULL));
        printf("err negative_steps %d\n", dcam_refine(raw, NULL, neg, size, rho, NULL, NULL, 1, 1, 3, 3, &cfg, out,
                                                      NULL, NULL, NULL, NULL, NULL));
        printf("err zero_size %d\n", dcam_refine(raw, NULL, steps, zero, rho, NULL, NULL, 1, 1, 3, 3, &cfg, out,
                                                 NULL, NULL, NULL, NULL, NULL));
        cfg.akd_kernel = 3;  /* steps and image_size unread: not checked */
        printf("err unread_steps %d\n", dcam_refine(raw, NULL, bad, bad, bad, NULL, NULL, 1, 1, 3, 3, &cfg, out,
                                                    NULL, NULL, NULL, NULL, NULL));
        {   /* NaN/Inf maps: the reference's maps would be NaN (these gave finite maps) */
            float nan_raw[9], inf_ctx[9];
            for (int i = 0; i < 9; ++i) nan_raw[i] = inf_ctx[i] = raw[i];
            nan_raw[4] = NAN;
            inf_ctx[8] = INFINITY;
            printf("err nan_raw %d\n", dcam_refine(nan_raw, NULL, steps, size, rho, NULL, NULL, 1, 1, 3, 3, &cfg,
                                                   out, NULL, NULL, NULL, NULL, NULL));
            cfg.sicd = DCAM_SICD_CONTEXT;
            printf("err inf_context_map %d\n", dcam_refine(raw, NULL, steps, size, rho, inf_ctx, zero, 1, 1, 3, 3,
                                                           &cfg, out, NULL, NULL, NULL, NULL, NULL));
            cfg.sicd = DCAM_SICD_OFF;  /* context maps unread: not checked */
            printf("err unread_context_map %d\n", dcam_refine(raw, NULL, steps, size, rho, inf_ctx, NULL, 1, 1, 3,
                                                              3, &cfg, out, NULL, NULL, NULL, NULL, NULL));
        }
        cfg = keep;
    }
    printf("err dtype %d\n", dcam_pool_gradients(A, G, (dcam_dtype)7, 1, 1, 3, 2, 1, maps, pdeg));
    printf("err shape %d\n", dcam_pool_gradients(A, G, DCAM_F32, 1, 1, 0, 2, 1, maps, pdeg));
    printf("err null_flag %d\n", dcam_pool_gradients_checked(A, G, DCAM_F32, 1, 1, 3, 2, 1, maps, pdeg, NULL));
    printf("err null_weights %d\n", dcam_weighted_maps(A, DCAM_F32, NULL, 1, 1, 3, 2, maps, pdeg));
    /* a refused call writes nothing, the NaN/Inf flag included */
    nonfinite = -7;
    rc = dcam_channel_weights(NULL, DCAM_F32, 1, 1, 3, 2, 1, W, &nonfinite);
    printf("untouched weights %d %d\n", rc, nonfinite);
    rc = dcam_pool_gradients_checked(NULL, G, DCAM_F32, 1, 1, 3, 2, 1, maps, pdeg, &nonfinite);
    printf("untouched checked %d %d\n", rc, nonfinite);
    printf("err weights_dtype %d\n", dcam_channel_weights(G, (dcam_dtype)9, 1, 1, 3, 2, 1, W, NULL));
    /* sizes whose products pass 2^63 bytes: refused (they wrapped into SIGFPE, a hang, a segfault) */
    const int64_t big = (int64_t)1 << 40, k16 = (int64_t)1 << 16;
    printf("err pool_overflow %d\n", dcam_pool_gradients(A, G, DCAM_F32, big, big, 1 << 20, 1 << 20, 1, maps, pdeg));
    printf("err tokens_overflow %d\n", dcam_pool_gradients(A, G, DCAM_F32, 1, 1, (int64_t)1 << 62, 4, 1, maps,
                                                            pdeg));
    printf("err weights_overflow %d\n", dcam_channel_weights(G, DCAM_F32, k16, k16, k16, k16, 1, W, NULL));
    printf("err maps_overflow %d\n", dcam_weighted_maps(A, DCAM_F32, W, k16, k16, k16, k16, maps, pdeg));
    printf("err refine_overflow %d\n", dcam_refine(raw, NULL, steps, size, rho, NULL, NULL, 1, 1, big, big, &cfg,
                                                    out, NULL, NULL, NULL, NULL, NULL));
    /* an empty batch of maps past the cell limit (h * w >= 2^27): refused as the pooling's limits are */
    printf("err refine_cells_empty %d\n", dcam_refine(NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 1, 8192, 16384,
                                                       &cfg, NULL, NULL, NULL, NULL, NULL, NULL));
    printf("errstr %s\n", dcam_error_string(DCAM_EINVAL_CONFIG));
    printf("version %s\n", dcam_version());
    return 0;
}
"""


def _run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


INCLUDE = os.path.join(CSRC, "include")
C99 = ["gcc", "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}"]


def _run_program(exe):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    res = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


@pytest.fixture(scope="module")
def c_library(tmp_path_factory):
    """(folder, outputs of PROGRAM): libdcam.so built from the sources and PROGRAM linked to it."""
    tmp = tmp_path_factory.mktemp("dcam_c")
    (tmp / "main.c").write_text(PROGRAM)
    sources = sorted(f for f in os.listdir(CSRC) if f.endswith(".cpp"))
    # -O1 and no AVX2 sorting networks keep the build to a few seconds (the networks are
    # covered by tests/test_cpp.py); this test is about the C interface.
    # The route dcam.h documents: a shared libdcam.so from the sources, a C program linked with -ldcam.
    cxx = ["g++", "-std=c++17", "-O1", "-fopenmp", "-ffp-contract=off", "-fPIC", "-Wno-psabi",
           "-DDCAM_NO_NETWORK", f"-I{INCLUDE}", "-c"]
    jobs = [cxx + [os.path.join(CSRC, f), "-o", str(tmp / (f[:-4] + ".o"))] for f in sources]
    jobs.append(C99 + ["-c", str(tmp / "main.c"), "-o", str(tmp / "main.o")])
    with ThreadPoolExecutor(max_workers=4) as ex:
        list(ex.map(lambda c: _run(c, tmp), jobs))
    objs = [str(tmp / (f[:-4] + ".o")) for f in sources]
    _run(["g++", "-fopenmp", "-shared", "-o", str(tmp / "libdcam.so")] + objs, tmp)
    _run(["gcc", str(tmp / "main.o"), f"-L{tmp}", "-ldcam", f"-Wl,-rpath,{tmp}", "-lm", "-o", str(tmp / "prog")], tmp)
    return tmp, _run_program(tmp / "prog")


def _c_api_flags():
    """The flags of `python -m dcam.c_api --cflags --libs` for this checkout's build (cwd: its dcam)."""
    res = subprocess.run([sys.executable, "-m", "dcam.c_api", "--cflags", "--libs"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    if res.returncode == 1 and "was not built" in res.stderr:
        pytest.skip(f"libdcam.so is not built here: {res.stderr.strip()}")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    return shlex.split(res.stdout)


@pytest.fixture(scope="module")
def c_api_program(tmp_path_factory):
    """Outputs of PROGRAM compiled and linked by gcc with only the flags dcam.c_api gives."""
    tmp = tmp_path_factory.mktemp("dcam_c_api")
    (tmp / "main.c").write_text(PROGRAM)
    _run(["gcc", "-std=c99", str(tmp / "main.c")] + _c_api_flags() + ["-o", str(tmp / "prog")], tmp)
    return _run_program(tmp / "prog")


@pytest.fixture(scope="module", params=["sources", "c_api"])
def program_output(request):
    """PROGRAM's outputs, linked to a libdcam.so built here from the sources, and to setup.py's."""
    if request.param == "sources":
        return request.getfixturevalue("c_library")[1]
    return request.getfixturevalue("c_api_program")


def test_c_api_names_this_checkouts_header_and_library():
    flags = _c_api_flags()
    assert flags[0] == f"-I{INCLUDE}"  # an in-place build reads the checkout's header
    lib = os.path.join(ROOT, "dcam", "lib")
    assert flags[1:] == [f"-L{lib}", "-ldcam", f"-Wl,-rpath,{lib}"]
    # the header's dcam_* functions are exported (dcam._C hides its own copies), and nothing else of the
    # library: no C++ internals (csrc/libdcam.map; 41 symbols were exported, 8 of them the header's)
    res = subprocess.run(["nm", "-D", "--defined-only", os.path.join(lib, "libdcam.so")], capture_output=True,
                         text=True)
    exported = {line.split()[-1] for line in res.stdout.splitlines() if line.split()[-2:-1] != ["A"]}
    with open(os.path.join(INCLUDE, "dcam.h")) as f:
        declared = set(re.findall(r"\b(dcam_\w+)\s*\(", f.read()))
    assert declared and exported == declared, (sorted(declared - exported), sorted(exported - declared))
    soname = subprocess.run(["objdump", "-p", os.path.join(lib, "libdcam.so")], capture_output=True, text=True)
    assert re.search(r"SONAME\s+libdcam\.so\b", soname.stdout), soname.stdout[:2000]


def test_c_api_refuses_when_nothing_was_built(tmp_path, monkeypatch, capsys):
    from dcam import c_api

    monkeypatch.setattr(c_api, "_PACKAGE", str(tmp_path / "dcam"))  # no lib/, no include/, no csrc/ beside it
    for helper in (c_api.library_dir, c_api.include_dir, c_api.libs, c_api.cflags):
        with pytest.raises(RuntimeError, match=r"(library libdcam\.so was not built|header dcam\.h is not "
                                               r"installed).*reinstall dcam"):
            helper()
    assert c_api.main(["--libs"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "libdcam.so was not built" in err
    with pytest.raises(SystemExit) as exc:  # no option: a usage error
        c_api.main([])
    assert exc.value.code == 2 and "give --cflags, --libs or both" in capsys.readouterr().err


OOM_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "dcam.h"

int main(void) {
    const int64_t n = 2048;
    float* raw = malloc(sizeof(float) * n * n);
    float* out = malloc(sizeof(float) * n * n);
    float rho = 0.1f;
    int64_t i;
    dcam_refine_config c;
    if (!raw || !out) { printf("inputs 0\n"); return 0; }
    for (i = 0; i < n * n; ++i) raw[i] = (float)(i % 997) / 997.0f;
    dcam_refine_config_default(&c);
    c.akd_kernel = 3;
    printf("refine %d\n", dcam_refine(raw, NULL, NULL, NULL, &rho, NULL, NULL, 1, 1, n, n, &c, out,
                                      NULL, NULL, NULL, NULL, NULL));
    return 0;
}
"""


def test_refine_out_of_memory_returns_enomem(c_library):
    # GCC dropped the catch around calls into the multi-versioned kernels: a scratch buffer that
    # could not be allocated ended the process in std::terminate instead of returning DCAM_ENOMEM
    import resource

    tmp = c_library[0]
    (tmp / "oom.c").write_text(OOM_PROGRAM)
    _run(C99 + [str(tmp / "oom.c"), f"-L{tmp}", "-ldcam", f"-Wl,-rpath,{tmp}", "-o", str(tmp / "oom")], tmp)
    limit = 120 << 20  # the two 16 MB maps fit; AKD's scratch for a 2048 x 2048 map does not

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    res = subprocess.run([str(tmp / "oom")], capture_output=True, text=True, preexec_fn=cap, timeout=60,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert (res.returncode, res.stdout.split()) == (0, ["refine", "5"]), res.stderr


def _lines(out, tag):
    return [line.split()[1:] for line in out if line.split()[0] == tag]


def reflect(i, n):
    if n == 1:
        return 0
    i = -i if i < 0 else i
    return 2 * n - 2 - i if i >= n else i


def akd_expected(m, k):
    """Rank Gaussian filter straight from SPEC section 2, in float64."""
    h, w = m.shape
    r = (k - 1) // 2
    out = np.zeros_like(m)
    for y in range(h):
        for x in range(w):
            win = np.array([m[reflect(y + dy, h), reflect(x + dx, w)]
                            for dy in range(-r, r + 1) for dx in range(-r, r + 1)])
            mu, sd = win.mean(), win.std()
            if mu <= 0:
                continue
            if sd == 0:
                out[y, x] = mu
                continue
            s = np.sort(win)
            K = len(s)
            u = np.exp(-((np.arange(K) - (K - 1) / 2) ** 2) / (2 * (sd / mu) ** 2))
            out[y, x] = (u * s).sum() / u.sum()
    return out


def test_refine_akd_3x3_by_hand(program_output):
    out = program_output
    assert _lines(out, "rc") == [["0"]]
    raw = np.array([[0.1, 0.5, 0.2], [0.9, 0.4, 0.3], [0.0, 0.7, 1.0]], dtype=np.float32).astype(np.float64)
    f = akd_expected(raw, 3)
    c = np.clip(f, 0.0, raw.max())  # section 5: clip to [0, max(r)], min-max normalise
    expect = (c - c.min()) / (c.max() - c.min() + 1e-8)
    got = np.array([float(v[1]) for v in _lines(out, "akd")])
    np.testing.assert_allclose(got[:9], expect.reshape(-1), atol=1e-5)
    # the degenerate map comes out 0
    np.testing.assert_array_equal(got[9:], 0.0)
    stats = _lines(out, "stat")
    # map 0: k = 3 (fixed), DACG/CBA/SICD off -> -1 / 0 / 0 / 0
    assert stats[0][1:3] == ["3", "-1"] and [float(v) for v in stats[0][3:]] == [0.0, 0.0, 0.0]
    # map 1 (degenerate): kernel size still reported
    assert stats[1][1:3] == ["3", "-1"] and [float(v) for v in stats[1][3:]] == [0.0, 0.0, 0.0]


def blur3_expected(m, sigma):
    """Normalised 3x3 Gaussian of every pixel, neighbours through reflect (SPEC section 3)."""
    d = np.array([-1.0, 0.0, 1.0])
    g = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma * sigma))
    g /= g.sum()
    h, w = m.shape
    return np.array([[sum(g[dy + 1, dx + 1] * m[reflect(y + dy, h), reflect(x + dx, w)]
                          for dy in (-1, 0, 1) for dx in (-1, 0, 1)) for x in range(w)] for y in range(h)])


def pipeline_expected(raw, k, rho):
    """Sections 2-6 of SPEC with the default configuration, in float64: (map, strategy,
    DACG threshold, CBA threshold, SICD alpha)."""
    f = akd_expected(raw, k)
    # DACG
    nz = f[f > 0]
    mu, sd = f.mean(), f.std()
    strategy = 0 if sd > 0.22 else 1 if mu > 0.35 else 2 if mu < 0.25 else 3
    zeta = max(np.percentile(nz, (90, 75, 80, 85)[strategy]), 1e-6)
    e = np.where(f > zeta, f, blur3_expected(f, 0.3))
    # CBA
    nz = e[e > 0]
    tau = 0.15 * np.percentile(nz, 50) + 0.15 * np.percentile(e, 60) + 0.2 * nz.mean() + 0.015 * e.max()
    c = np.where(e < tau, e * np.maximum(e / max(tau, 1e-8), 0.5), e)
    # clip + normalise
    c = np.clip(c, 0.0, raw.max())
    m = (c - c.min()) / (c.max() - c.min() + 1e-8)
    # SICD (reference mode)
    interference = 0.05 * rho + 0.02 * (m > m.mean() + 2 * m.std())
    alpha = 0.0
    if interference.max() > 0:
        a = min((m * interference).sum() / (interference * interference).sum(), 0.5)
        m2 = np.maximum(m - a * interference, 0.0)
        if not (m2.max() - m2.min() < 0.9 * (m.max() - m.min())):
            m, alpha = m2, a
    return m, strategy, zeta, tau, alpha


def test_refine_default_pipeline_by_hand(program_output):
    raw = np.array([[0.1, 0.5, 0.2], [0.9, 0.4, 0.3], [0.0, 0.7, 1.0]], dtype=np.float32).astype(np.float64)
    # adaptive kernel: population std of the map is 0.330 -> f_std = 1.65, f_step = 2 (64 steps),
    # f_size = 1 -> floor(9.91) = 9 -> capped at 2*3-1 = 5
    for tag, rho in (("default", 0.0), ("default_stats", 0.25)):
        line = _lines(program_output, tag)[0]
        assert line[:2] == ["0", "5"], tag
        m, strategy, zeta, tau, alpha = pipeline_expected(raw, 5, rho)
        assert int(line[2]) == strategy, tag
        vals = np.array([float(v) for v in line[3:]])
        if tag == "default_stats":
            np.testing.assert_allclose(vals[:3], [zeta, tau, alpha], atol=1e-5)
            vals = vals[3:]
        np.testing.assert_allclose(vals, m.reshape(-1), atol=1e-5, err_msg=tag)
    # the repeat ratio must make SICD act here, or the second case tests nothing new
    assert pipeline_expected(raw, 5, 0.25)[4] > 0


def test_pooling_by_hand(program_output):
    rows = _lines(program_output, "pool")
    got = {(r[0], r[1]): r[2:] for r in rows}
    # grad_relu: relu(G) = [[1,0],[3,4],[0,0]] -> w = [4/3, 4/3]; raw = [2/3, 10/3, 4/3]
    raw = np.array([2 / 3, 10 / 3, 4 / 3])
    relu_expect = (raw - raw.min()) / (raw.max() - raw.min() + 1e-8)
    # no relu: w = [4/3, 2/3]; raw = [2/3, 7/3, 2/3] -> [0, 1, 0]
    plain_expect = np.array([0.0, 1.0, 0.0])
    for dt in ("f32", "bf16"):
        for relu, expect in (("1", relu_expect), ("0", plain_expect)):
            rc, deg, *vals = got[(dt, relu)]
            assert rc == "0" and deg == "0"
            np.testing.assert_allclose([float(v) for v in vals], expect, atol=1e-6)


def test_pooling_checked_flags_nonfinite_gradients(program_output):
    checked = {r[0]: r[1:] for r in _lines(program_output, "checked")}
    rc, flag, *vals = checked["clean"]
    assert rc == "0" and flag == "0"
    raw = np.array([2 / 3, 10 / 3, 4 / 3])  # the grad_relu case of test_pooling_by_hand
    np.testing.assert_allclose([float(v) for v in vals], (raw - raw.min()) / (raw.max() - raw.min() + 1e-8),
                               atol=1e-6)
    assert checked["neginf"] == ["0", "1"]  # -Inf under grad_relu: a plain relu would have hidden it


def test_pooling_halves_by_hand(program_output):
    rows = _lines(program_output, "halves")
    weights = {r[1]: r[2:] for r in rows if r[0] == "weights"}
    maps = {r[1]: r[2:] for r in rows if r[0] == "maps"}
    # the example of test_pooling_by_hand: w = [4/3, 4/3] with grad_relu, [4/3, 2/3] without
    # (bf16 holds every value of A and G exactly)
    raw = np.array([2 / 3, 10 / 3, 4 / 3])
    for relu, w, expect in (("1", [4 / 3, 4 / 3], (raw - raw.min()) / (raw.max() - raw.min() + 1e-8)),
                            ("0", [4 / 3, 2 / 3], [0.0, 1.0, 0.0])):
        rc, flag, *vals = weights[relu]
        assert rc == "0" and flag == "0"
        np.testing.assert_allclose([float(v) for v in vals], w, atol=1e-7)
        rc, deg, *vals = maps[relu]
        assert rc == "0" and deg == "0"
        np.testing.assert_allclose([float(v) for v in vals], expect, atol=1e-6)
    # weights [1, -2] on A = [[1,-1],[2,3],[0,2]]: raw = [(1 + 2)/2, (2 + 0)/2, 0] -> [1, 2/3, 0];
    # all-zero weights: a constant map, degenerate and all 0
    (signed,) = [r[1:] for r in rows if r[0] == "signed"]
    assert signed[:3] == ["0", "0", "1"]
    np.testing.assert_allclose([float(v) for v in signed[3:]], [1.0, 2 / 3, 0.0, 0.0, 0.0, 0.0], atol=1e-6)
    assert [r[1:] for r in rows if r[0] == "nan"] == [["0", "1"]]


def test_channel_weights_into_a_table(program_output):
    rows = {r[0]: r[1:] for r in _lines(program_output, "into") if r[0] != "err"}
    errs = {r[1]: r[2] for r in _lines(program_output, "into") if r[0] == "err"}
    # G = [[1, -2], [3, 4], [0, 0]] (N = 3, D = 2), signed: w = [4/3, 2/3]; -G: [-4/3, -2/3]
    w, x = [4 / 3, 2 / 3], [-7.0, -7.0]
    rc, flag, *vals = rows["signed"]  # tokens 0 and 1 of the chunk into rows 1 and 2 of a 4-token table
    assert (rc, flag) == ("0", "0")
    np.testing.assert_allclose([float(v) for v in vals], x + w + [-v for v in w] + x, atol=1e-7)
    rc, *vals = rows["batch"]  # two images of one token into row 2 of each image's 3-token table
    assert rc == "0"
    np.testing.assert_allclose([float(v) for v in vals], x + x + w + x + x + [-v for v in w], atol=1e-7)
    # a chunk past the table's end, a negative or out-of-table first token or table size, sizes past 2^63
    # bytes: DCAM_EINVAL_SHAPE; NULL buffers DCAM_EINVAL_NULL; and nothing written, the flag included
    assert errs == {"past_end": "2", "negative_first": "2", "empty_past_table": "2", "negative_table": "2",
                    "table_overflow": "2", "null_table": "1", "null_grads": "1", "dtype": "3", "zero_rows": "2"}
    assert rows["untouched"] == ["-7"] + ["-7.0"] * 8
    assert rows["empty"] == ["0"]  # an empty chunk needs no buffer
    rc, flag, *vals = rows["nan"]  # token 0 (G, grad_relu) into row 2: [4/3, 4/3]; token 1's NaN flagged
    assert (rc, flag, vals[2]) == ("0", "1", "1")
    np.testing.assert_allclose([float(v) for v in vals[:2]], [4 / 3, 4 / 3], atol=1e-7)


def test_error_codes(program_output):
    errs = {r[0]: r[1] for r in _lines(program_output, "err")}
    assert errs == {"null_cfg": "1", "even_kernel": "4", "no_weights": "1", "dtype": "3", "shape": "2",
                    "null_flag": "1", "null_weights": "1", "weights_dtype": "3", "pool_overflow": "2",
                    "tokens_overflow": "2", "weights_overflow": "2", "maps_overflow": "2", "refine_overflow": "2",
                    "refine_cells_empty": "2",
                    "nan_sigma": "4", "zero_sigma": "4", "percentile": "4", "floor": "4",
                    "cba_weight_sum": "4", "cba_weight_sum_within": "0",
                    "nan_context_weight": "6", "negative_context_weight": "6", "diagonal_context_weight": "6",
                    "zero_diagonal_context_weight": "0", "nan_rho": "6", "rho_past_1": "6",
                    "nan_steps": "6", "negative_steps": "6", "zero_size": "6", "unread_steps": "0",
                    "nan_raw": "6", "inf_context_map": "6", "unread_context_map": "0"}
    assert "akd_kernel" in " ".join(_lines(program_output, "errstr")[0])
    assert _lines(program_output, "untouched") == [["cba", "-7.0", "-7.0"], ["weights", "1", "-7"],
                                                   ["checked", "1", "-7"]]


def test_version_is_the_package_version(program_output):
    import dcam

    assert _lines(program_output, "version") == [[dcam.__version__]]


# ------------------------------------------------------------------ contract constants

# DCAM_* macros of dcam.h that are not numbers of the math contract
API_MACROS = {"DCAM_H", "DCAM_VERSION_STRING", "DCAM_OK", "DCAM_EINVAL_NULL", "DCAM_EINVAL_SHAPE",
              "DCAM_EINVAL_DTYPE", "DCAM_EINVAL_CONFIG", "DCAM_ENOMEM", "DCAM_EINVAL_VALUE", "DCAM_SICD_OFF",
              "DCAM_SICD_REFERENCE", "DCAM_SICD_CONTEXT"}


def _contract_constants():
    from dcam.ops import constants

    return {name: getattr(constants, name) for name in dir(constants) if name.isupper()}


def test_header_defines_exactly_the_contract_constants():
    with open(os.path.join(INCLUDE, "dcam.h")) as f:
        macros = set(re.findall(r"^#define (DCAM_\w+)", f.read(), flags=re.M))
    assert macros - API_MACROS == {"DCAM_" + name for name in _contract_constants()}


def test_header_constants_equal_python_constants(tmp_path):
    consts = _contract_constants()
    body = []
    for name, value in sorted(consts.items()):
        if isinstance(value, tuple):
            body.append(f"    {{ static const double v[] = DCAM_{name}; size_t i;\n"
                        f"      for (i = 0; i < sizeof v / sizeof v[0]; ++i) printf(\"{name} %.17g\\n\", v[i]); }}")
        else:
            body.append(f"    printf(\"{name} %.17g\\n\", (double)(DCAM_{name}));")
    src = "#include <stdio.h>\n#include \"dcam.h\"\n\nint main(void) {\n" + "\n".join(body) + "\n    return 0;\n}\n"
    (tmp_path / "consts.c").write_text(src)
    _run(C99 + [str(tmp_path / "consts.c"), "-o", str(tmp_path / "consts")], tmp_path)
    printed = {}
    for line in _run_program(tmp_path / "consts"):
        name, value = line.split()
        printed.setdefault(name, []).append(float(value))
    assert set(printed) == set(consts)
    for name, value in consts.items():
        expect = [float(v) for v in value] if isinstance(value, tuple) else [float(value)]
        assert printed[name] == expect, name  # exact: the C literal's double is the Python float
