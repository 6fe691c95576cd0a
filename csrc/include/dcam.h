/*
 * dcam.h - C API of the Diffusion-CAM CPU backend.
 *
 * An installed dcam carries this header and the library libdcam.so (setup.py
 * builds it beside the Python extension dcam._C, which wraps the same code but
 * exports only its Python entry; a wheel holds dcam/include/dcam.h and
 * dcam/lib/libdcam.so, a checkout built with `pip install -e .` or
 * `python setup.py build_ext --inplace` dcam/lib/libdcam.so). Compile and link
 * a C program against it with the flags dcam prints:
 *     gcc prog.c $(python -m dcam.c_api --cflags --libs) -o prog
 * (-I<header folder> -L<library folder> -ldcam -Wl,-rpath,<library folder>;
 * `python -m dcam.c_api` refuses, saying why, where the library was not built).
 *
 * Or build the library yourself from a checkout or the source distribution:
 *     g++ -O3 -fopenmp -ffp-contract=off -std=c++17 -fPIC -shared
 *         -Icsrc/include csrc/[a-z]*.cpp -o libdcam.so
 * (one command) and link a C program with
 *     gcc prog.c -Icsrc/include -L. -ldcam -Wl,-rpath,"$PWD"
 * (the rpath, or LD_LIBRARY_PATH, lets the program find libdcam.so when it runs).
 *
 * Plain C (C99 or later, or C++): no Python, no torch. Every function works on
 * raw, C-contiguous (row-major) buffers owned by the caller and implements the
 * Diffusion-CAM math contract (docs/ALGORITHM.md) exactly as the pure-PyTorch
 * reference `dcam/ops/reference.py` does (float32 results agree at atol 1e-5, the
 * integer statistics are equal).
 *
 * Threading: the functions parallelise internally with OpenMP (pooling streams
 * (image, token) slices of the gradients and overlaps the product with the
 * activations with that stream; refinement runs over maps). The number of
 * threads is OpenMP's (OMP_NUM_THREADS / omp_set_num_threads). The functions
 * keep no global state and are safe to call concurrently from several threads
 * on distinct output buffers, each call with a team of the calling thread's OpenMP thread
 * count (several callers: set it per caller, omp_set_num_threads, so that the teams together
 * fit the cores). Pooling keeps one scratch block per calling thread
 * between calls (the size of its largest call up to 256 MiB; larger ones are
 * released at once), freed when that thread exits. Calls from inside the caller's own
 * OpenMP parallel region run on the calling thread (OpenMP's default of one active level),
 * unless the caller enables nested parallelism. In a child made by fork() the functions run
 * on the calling thread only: GCC's OpenMP runtime does not survive a fork (a child that opens
 * a parallel region of two or more threads after its parent had one hangs), so dcam's results
 * in a child are the same, on one core (a child of a child too). This is set at the fork for
 * a process that had loaded the library: a child that loads it only after the fork, from a
 * parent that had run OpenMP regions of its own, calls omp_set_num_threads(1) first. Python's
 * "forkserver" children are forked from the server (one thread where it loaded dcam); start
 * processes with exec (posix_spawn, Python's "spawn") to use every core there.
 *
 * Accuracy: the rounding model of the contract (docs/ALGORITHM.md, dcam/ops/reference.py):
 * element-wise arithmetic is float32, every reduction over a map or a window
 * (sums, means, standard deviations, AKD's rank-weighted mean) is accumulated in
 * float64 and rounded to float32 once. The PyTorch reference and the Triton kernels
 * follow the same model, so all backends agree at atol 1e-5 (maps) with equal integer
 * statistics. Pooling accumulates in float32 as the contract allows (the reference
 * and Triton in one float32 matrix product); here the gradient pass sums groups of 8
 * rows and the product runs of at most 256 features in float32, and those partial
 * sums in float64, within a few 1e-7 of the exact sums, relative.
 * The agreement is per function: dcam_refine on the same raw maps gives the
 * reference's maps, but refinement takes threshold decisions (SICD keeping or
 * undoing its step, DACG's gate, CBA's threshold), so pooled maps an ulp apart
 * that sit exactly on one (whole-number, quantised inputs make exact ties likely)
 * can refine to maps that differ by far more than 1e-5.
 *
 * Return codes: every function that can fail returns DCAM_OK (0) on success
 * and one of the positive DCAM_E* codes below on a bad argument, in which case
 * no output has been written. dcam_error_string() describes a code.
 */
#ifndef DCAM_H
#define DCAM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DCAM_VERSION_STRING "0.1.0"

/* The numbers of the math contract (docs/ALGORITHM.md), the same values as the Python
 * module dcam/ops/constants.py (DCAM_<NAME> there is <NAME>; a test compares them).
 * The library rounds each to float32 where the contract computes in float32. */
#define DCAM_EPS_NORM 1e-8 /* denominator guard of every min-max normalisation */
/* AKD adaptive kernel size: k = clamp(floor(BASE * f_step * f_std * f_size) | 1, K_MIN, K_MAX) */
#define DCAM_AKD_BASE 3.0
#define DCAM_AKD_STEP_SCALE 16.0 /* f_step = min(steps / 16, 2)        */
#define DCAM_AKD_STEP_CAP 2.0
#define DCAM_AKD_STD_SCALE 5.0 /* f_std = min(5 * std(map), 2)        */
#define DCAM_AKD_STD_CAP 2.0
#define DCAM_AKD_SIZE_SCALE 512.0 /* f_size = min(image height / 512, 1.5) */
#define DCAM_AKD_SIZE_CAP 1.5
#define DCAM_AKD_K_MIN 3
#define DCAM_AKD_K_MAX 11
/* DACG defaults (dcam_refine_config.dacg_params) and the gate threshold floor */
#define DCAM_DACG_STD 0.22
#define DCAM_DACG_MEAN_HIGH 0.35
#define DCAM_DACG_MEAN_LOW 0.25
#define DCAM_DACG_PERCENTILES {90.0, 75.0, 80.0, 85.0} /* high_var, high_mean, low_mean, default */
#define DCAM_DACG_SIGMA 0.3
#define DCAM_ZETA_MIN 1e-6
/* CBA defaults (dcam_refine_config.cba_params) */
#define DCAM_CBA_WEIGHTS {0.15, 0.15, 0.2, 0.015} /* median of positives, P60 of all, mean of positives, max */
#define DCAM_CBA_FLOOR 0.5
/* SICD */
#define DCAM_SICD_BASE 0.05        /* interference per unit of repeat ratio                      */
#define DCAM_SICD_SPIKE 0.02       /* interference added on outlier pixels                       */
#define DCAM_SICD_SPIKE_STDS 2.0   /* outliers: above mean + 2 std                               */
#define DCAM_SICD_ALPHA_MAX 0.5    /* cap of the reference-mode scale                            */
#define DCAM_SICD_RANGE_GUARD 0.9  /* the step is undone if it shrinks the range below this part */

/* Element type of the pooling inputs. F16 is IEEE binary16, BF16 is bfloat16
 * (the upper 16 bits of a float32); both are passed as 16-bit words. */
typedef enum { DCAM_F32 = 0, DCAM_F16 = 1, DCAM_BF16 = 2 } dcam_dtype;

/* Return codes. */
#define DCAM_OK 0
#define DCAM_EINVAL_NULL 1   /* a required pointer is NULL                     */
#define DCAM_EINVAL_SHAPE 2  /* a size is negative/zero where it must be >= 1,
                              * or too large (D > 2^24; dcam_refine's maps of
                              * h * w >= 2^27 cells; an array of the sizes
                              * given would pass 2^63 bytes)                  */
#define DCAM_EINVAL_DTYPE 3  /* unknown dcam_dtype                             */
#define DCAM_EINVAL_CONFIG 4 /* bad refine config (kernel size, sicd mode, a
                              * parameter outside its range or NaN, CBA
                              * weights summing past 3.4e38)                 */
#define DCAM_ENOMEM 5        /* scratch allocation failed                      */
#define DCAM_EINVAL_VALUE 6  /* dcam_refine: a raw or context_maps value that is
                              * NaN or +-Inf, or a steps, image_size,
                              * repeat_ratio or context_weights value it reads
                              * outside its range, or NaN (see dcam_refine)    */

/* SICD modes (dcam_refine_config.sicd). */
#define DCAM_SICD_OFF 0
#define DCAM_SICD_REFERENCE 1
#define DCAM_SICD_CONTEXT 2

/* Refinement configuration: the flattened CamConfig.op_args(). */
typedef struct {
    int akd_kernel;        /* 0 = adaptive kernel size; else the fixed odd size >= 1 (still capped
                              at 2*min(h,w)-1)                                                   */
    int akd;               /* nonzero: run AKD (rank Gaussian filter)                             */
    int dacg;              /* nonzero: run DACG (confidence gating)                               */
    int cba;               /* nonzero: run CBA (background attenuation)                           */
    int sicd;              /* DCAM_SICD_OFF / _REFERENCE / _CONTEXT                               */
    float dacg_params[8];  /* std_high, mean_high, mean_low, percentile high_var, high_mean,
                              low_mean, default, blur sigma (defaults .22 .35 .25 90 75 80 85 .3);
                              std and means in [0, 1] with mean_low <= mean_high, percentiles in
                              [0, 100], sigma in [1e-18, FLT_MAX]                                 */
    float cba_params[5];   /* weights of median(nz), P60(all), mean(nz), max; attenuation floor
                              (defaults .15 .15 .2 .015 .5); weights in [0, FLT_MAX] summing to at
                              most 3.4e38 (the CBA threshold is their weighted sum of statistics in
                              [0, 1]; CamConfig's rule), floor in [0, 1]                           */
} dcam_refine_config;

/* Version of the library, e.g. "0.1.0". Never NULL. */
const char* dcam_version(void);

/* Static English description of a return code. Never NULL. */
const char* dcam_error_string(int code);

/* Fill *cfg with the defaults of the math contract (adaptive kernel, every module
 * on, sicd = reference). Returns DCAM_EINVAL_NULL if cfg is NULL. */
int dcam_refine_config_default(dcam_refine_config* cfg);

/*
 * Section 1 of the contract: gradient-weighted activation pooling, min-max
 * normalised, for B images and T explained tokens each.
 *
 *   acts           [B, N, D] elements of `dtype` (hooked hidden states of the N image tokens).
 *   grads          [B, T, N, D] elements of `dtype` (gradient of token t's score w.r.t. acts).
 *   dtype          element type of acts and grads (DCAM_F32 / DCAM_F16 / DCAM_BF16).
 *   B, T           batch size and tokens per image (>= 0; zero means nothing to do).
 *   N, D           image tokens and hidden size (>= 1).
 *   grad_relu      nonzero: keep only positive gradients before averaging (the default).
 *   maps_out       [B, T, N] float32 output (the N = h*w grid in raster order), values in [0, 1];
 *                  a constant raw map comes out all 0. Must not overlap acts or grads.
 *   degenerate_out [B, T] output, 1 where the raw map was constant, else 0. May be NULL.
 *
 * One streaming pass over grads, float32 conversion on the fly, float32 partial
 * sums accumulated in float64. Returns DCAM_OK or DCAM_EINVAL_* / DCAM_ENOMEM.
 */
int dcam_pool_gradients(const void* acts, const void* grads, dcam_dtype dtype, int64_t B, int64_t T,
                        int64_t N, int64_t D, int grad_relu, float* maps_out, uint8_t* degenerate_out);

/*
 * dcam_pool_gradients, checking the gradients for NaN/Inf in the same pass.
 *
 *   grads_nonfinite  output (not NULL): 0 when every gradient is finite; 1 when some
 *                    element is NaN or +-Inf (the maps are then meaningless), or when
 *                    finite gradients are so large that a sum over the N rows passes
 *                    float32's range (about 3.4e38: for |g| near 3.4e38 / N, 6e35 at
 *                    N = 576), which the weights, sums rounded to float32 before the
 *                    division by N, cannot hold; the caller may tell the two apart with a
 *                    second look.
 *
 * Same results as dcam_pool_gradients for finite input, at the cost of a little
 * arithmetic in the same pass (no second read of grads). The activations are not
 * checked (they are T times smaller). Returns DCAM_OK or
 * DCAM_EINVAL_* / DCAM_ENOMEM.
 */
int dcam_pool_gradients_checked(const void* acts, const void* grads, dcam_dtype dtype, int64_t B, int64_t T,
                                int64_t N, int64_t D, int grad_relu, float* maps_out, uint8_t* degenerate_out,
                                int32_t* grads_nonfinite);

/*
 * Section 1 in two halves, for gradients that arrive in chunks of tokens:
 * dcam_channel_weights reduces each chunk to its channel weights (the pass over
 * the gradients), dcam_weighted_maps turns the weights of all tokens into maps
 * at the end (the product with the activations and the normalisation). The two
 * give the maps of dcam_pool_gradients on the same input (to the last bit with
 * grad_relu; with signed weights the product may cut the tokens into other
 * tables, within ~1e-6), and one product over all tokens costs less than one
 * per chunk.
 *
 * dcam_channel_weights:
 *   grads           [B, T, N, D] elements of `dtype`; B, T >= 0; N, D >= 1.
 *   grad_relu       as in dcam_pool_gradients.
 *   weights_out     [B, T, D] float32 output: w[b,t,d] = (1/N) sum_n G+[b,t,n,d], rounded
 *                   to float32 exactly where dcam_pool_gradients rounds its weights.
 *   grads_nonfinite output or NULL: when not NULL, set as dcam_pool_gradients_checked sets it.
 *
 * dcam_weighted_maps:
 *   acts            [B, N, D] elements of `dtype`.
 *   weights         [B, T, D] float32 channel weights, finite, of either sign:
 *                   raw[b,t,n] = (1/D) sum_d max(acts[b,n,d] * weights[b,t,d], 0).
 *   maps_out, degenerate_out   as in dcam_pool_gradients (degenerate_out may be NULL).
 *
 * Both return DCAM_OK or DCAM_EINVAL_* / DCAM_ENOMEM.
 */
int dcam_channel_weights(const void* grads, dcam_dtype dtype, int64_t B, int64_t T, int64_t N, int64_t D,
                         int grad_relu, float* weights_out, int32_t* grads_nonfinite);
int dcam_weighted_maps(const void* acts, dcam_dtype dtype, const float* weights, int64_t B, int64_t T, int64_t N,
                       int64_t D, float* maps_out, uint8_t* degenerate_out);

/*
 * dcam_channel_weights for a caller that streams the gradients of T_all tokens in
 * chunks: each chunk's weights go straight into the rows of one weight table of all
 * tokens, which dcam_weighted_maps then takes whole (no table per chunk, no copy).
 *
 *   grads           [B, T, N, D] elements of `dtype`: the chunk, tokens first_token ..
 *                   first_token + T - 1 of each image; B, T >= 0; N, D >= 1.
 *   grad_relu       as in dcam_pool_gradients.
 *   table           [B, table_tokens, D] float32: rows table[b, first_token + t] are written
 *                   with the weights of dcam_channel_weights (bit for bit), no other row is
 *                   touched.
 *   table_tokens    T_all, the tokens of the table (>= 0).
 *   first_token     the table row of the chunk's first token: 0 <= first_token and
 *                   first_token + T <= table_tokens, else DCAM_EINVAL_SHAPE.
 *   grads_nonfinite output or NULL: as in dcam_channel_weights, for this chunk alone.
 *
 * Returns DCAM_OK or DCAM_EINVAL_* / DCAM_ENOMEM; a refused call writes nothing.
 */
int dcam_channel_weights_into(const void* grads, dcam_dtype dtype, int64_t B, int64_t T, int64_t N, int64_t D,
                              int grad_relu, float* table, int64_t table_tokens, int64_t first_token,
                              int32_t* grads_nonfinite);

/*
 * Sections 2-7 of the contract: refine B*T raw maps of h x w and report the
 * per-map statistics.
 *
 *   raw             [B, T, h, w] float32 raw maps, finite (section 1 output, normally in [0, 1]).
 *   degenerate      [B, T] flags (nonzero = the raw map was constant): such a map comes out all 0
 *                   with strategy -1 and thresholds/alpha 0 (its kernel size is still reported).
 *                   May be NULL (no map degenerate).
 *   steps           [B] float32 number of denoising steps per image, finite and > 0 (adaptive
 *                   kernel only; may be NULL when cfg->akd_kernel > 0).
 *   image_size      [B] float32 input image height in pixels, finite and > 0 (same condition
 *                   as steps).
 *   repeat_ratio    [B] float32 repeat ratio of each response, in [0, 1] (SICD reference mode
 *                   only; may be NULL otherwise).
 *   context_maps    [B, T, h, w] float32 raw maps of the response's tokens for SICD context mode;
 *                   NULL means `raw` itself, where a map flagged in `degenerate` counts as
 *                   all zeros (as its normalised raw map is) whatever values it holds.
 *   context_weights [B, T, T] float32 non-negative finite weights W[b, t, i], 0 where i == t, whose rows sum to a
 *                   finite float32 (SICD context mode: required; otherwise ignored, may be NULL).
 *   B, T, h, w      sizes (B, T >= 0; h, w >= 1).
 *   cfg             configuration (see dcam_refine_config); required.
 *   maps_out        [B, T, h, w] float32 refined maps. Must not overlap any input.
 *   kernel_size     [B, T] int32 AKD kernel size used (or that would be used when AKD is off).
 *   dacg_strategy   [B, T] int32 DACG strategy code: -1 none, 0 high_var, 1 high_mean, 2 low_mean,
 *                   3 default.
 *   dacg_threshold  [B, T] float32 DACG threshold zeta (0 when gating was skipped).
 *   cba_threshold   [B, T] float32 CBA threshold tau (0 when skipped).
 *   sicd_alpha      [B, T] float32 SICD scale actually applied (0 when none / undone).
 *   Each statistics pointer may be NULL when that statistic is not wanted.
 *
 * A value these rules refuse (NaN included) gives DCAM_EINVAL_VALUE; only the values the
 * configuration reads are checked, and the maps (raw; context_maps in context mode) must be
 * finite (NaN/Inf gives DCAM_EINVAL_VALUE: the reference's maps would be NaN).
 * Returns DCAM_OK or DCAM_EINVAL_* / DCAM_ENOMEM.
 */
int dcam_refine(const float* raw, const uint8_t* degenerate, const float* steps, const float* image_size,
                const float* repeat_ratio, const float* context_maps, const float* context_weights,
                int64_t B, int64_t T, int64_t h, int64_t w, const dcam_refine_config* cfg, float* maps_out,
                int32_t* kernel_size, int32_t* dacg_strategy, float* dacg_threshold, float* cba_threshold,
                float* sicd_alpha);

#ifdef __cplusplus
}
#endif

#endif /* DCAM_H */
