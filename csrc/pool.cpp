// Section 1 of the contract: gradient-weighted activation pooling.
//
//   w[b,t,d]  = (1/N) sum_n G+[b,t,n,d]                 (one streaming pass over grads)
//   raw[b,t,n] = (1/D) sum_d relu(A[b,n,d]) * w[b,t,d]   (grad_relu: one small GEMM)
//             = (1/D) sum_d relu(A[b,n,d] * w[b,t,d])   (otherwise)
//   maps = min-max normalised raw, 0 where degenerate.
//
// Accumulation is float64 (products of two float32 are exact in float64), every
// value the reference rounds to float32 (w, raw, the normalised map) is rounded
// at the same place here.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <new>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.hpp"
#include "dcam.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // the 32-byte vector helpers are always inlined

namespace {

using namespace dcam;

// element-wise (GCC turns __builtin_convertvector into two 128-bit converts here)
DCAM_INLINE v4d to_d(v4f v) { return v4d{static_cast<double>(v[0]), static_cast<double>(v[1]), static_cast<double>(v[2]), static_cast<double>(v[3])}; }
DCAM_INLINE v4f vmax0(v4f v) {
    const v4f z = {0.f, 0.f, 0.f, 0.f};
    return v < z ? z : v;  // NaN propagates like torch.clamp(min=0)
}
DCAM_INLINE double hsum(v4d v) { return (v[0] + v[1]) + (v[2] + v[3]); }

template <int DT>
DCAM_INLINE float load_elem(const void* base, int64_t i) {
    if (DT == DCAM_F32) return static_cast<const float*>(base)[i];
    const uint16_t u = static_cast<const uint16_t*>(base)[i];
    return DT == DCAM_F16 ? f16_to_float(u) : bf16_to_float(u);
}


typedef float v8f __attribute__((vector_size(32)));
typedef uint16_t v8u16 __attribute__((vector_size(16)));
typedef uint32_t v8u32 __attribute__((vector_size(32)));
typedef int32_t v8i32 __attribute__((vector_size(32)));

// Eight consecutive elements as float32 (exact conversions).
template <int DT>
DCAM_INLINE v8f load8_as_float(const void* base, int64_t i) {
    v8f f;
    if (DT == DCAM_F32) {
        std::memcpy(&f, static_cast<const float*>(base) + i, sizeof(f));
        return f;
    }
    v8u16 hv;
    std::memcpy(&hv, static_cast<const uint16_t*>(base) + i, sizeof(hv));
    const v8u32 u = __builtin_convertvector(hv, v8u32);
    if (DT == DCAM_BF16) {
        const v8u32 b = u << 16;
        std::memcpy(&f, &b, sizeof(f));
        return f;
    }
    const v8u32 m = u & 0x7fffu;
    const v8u32 sign = (u & 0x8000u) << 16;
    const v8u32 normal = (m << 13) + (112u << 23);
    const v8f subf = __builtin_convertvector(__builtin_convertvector(m, v8i32), v8f) * 5.9604644775390625e-8f;
    v8u32 sub;
    std::memcpy(&sub, &subf, sizeof(sub));
    const v8u32 special = (m << 13) | 0x7f800000u;
    const v8u32 bits = (m >= 0x7c00u ? special : (m >= 0x0400u ? normal : sub)) | sign;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

// How the gradient pass treats an element before summing it.
//   kPlain:       as is (grad_relu off). NaN and +-Inf reach the sums.
//   kRelu:        max(v, 0) with NaN kept, like torch.clamp(min=0): NaN and +Inf reach the
//                 sums, -Inf becomes 0.
//   kReluChecked: the same sums for finite input (a negative v becomes v * 0 = -0, which
//                 adds like 0), but -Inf becomes NaN, so every non-finite element of the
//                 gradients makes its column sum non-finite: the NaN/Inf check rides on
//                 the pass instead of reading the gradients a second time.
enum GradMode { kPlain = 0, kRelu = 1, kReluChecked = 2 };

template <int MODE>
DCAM_INLINE v8f relu8(v8f v) {
    const v8f z = {0, 0, 0, 0, 0, 0, 0, 0};
    if (MODE == kPlain) return v;
    return v < z ? (MODE == kRelu ? z : v * z) : v;
}

template <int MODE>
DCAM_INLINE float relu1(float v) {
    if (MODE == kPlain) return v;
    return v < 0.f ? (MODE == kRelu ? 0.f : v * 0.f) : v;
}

// acc[0..8) += s, in float64
DCAM_INLINE void add8_f64(double* acc, v8f s) {
    const v4f lo = {s[0], s[1], s[2], s[3]};
    const v4f hi = {s[4], s[5], s[6], s[7]};
    v4d a0, a1;
    std::memcpy(&a0, acc, sizeof(a0));
    std::memcpy(&a1, acc + 4, sizeof(a1));
    a0 += to_d(lo);
    a1 += to_d(hi);
    std::memcpy(acc, &a0, sizeof(a0));
    std::memcpy(acc + 4, &a1, sizeof(a1));
}

// acc[j] += sum_{n<N} g(n, d0 + j) for j < len (g passed through relu8<MODE>), rows `stride`
// elements apart.
template <int DT, int MODE>
DCAM_INLINE void accumulate_rows_t(const void* g, int64_t stride, int64_t N, int64_t d0, int64_t len,
                                   double* __restrict acc) {
    // Groups of 8 rows are summed in float32 as a balanced tree (at most 3 roundings on
    // any path, relative error <= 3 * 2^-24 of the group's sum of magnitudes), and the
    // group sums accumulated in float64: one float64 add per 8 elements read keeps the
    // loop bound by memory rather than by float64 conversions.
    const int64_t lv = len & ~int64_t(7);
    int64_t n = 0;
    for (; n + 8 <= N; n += 8) {
        const int64_t o0 = n * stride + d0;
        for (int64_t j = 0; j < lv; j += 8) {
            const int64_t o = o0 + j;
            const v8f a = relu8<MODE>(load8_as_float<DT>(g, o)) + relu8<MODE>(load8_as_float<DT>(g, o + stride));
            const v8f b = relu8<MODE>(load8_as_float<DT>(g, o + 2 * stride)) +
                          relu8<MODE>(load8_as_float<DT>(g, o + 3 * stride));
            const v8f c = relu8<MODE>(load8_as_float<DT>(g, o + 4 * stride)) +
                          relu8<MODE>(load8_as_float<DT>(g, o + 5 * stride));
            const v8f e = relu8<MODE>(load8_as_float<DT>(g, o + 6 * stride)) +
                          relu8<MODE>(load8_as_float<DT>(g, o + 7 * stride));
            add8_f64(acc + j, (a + b) + (c + e));
        }
        for (int64_t j = lv; j < len; ++j) {
            float v[8];
            for (int r = 0; r < 8; ++r) v[r] = relu1<MODE>(load_elem<DT>(g, o0 + r * stride + j));
            acc[j] += static_cast<double>(((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])));
        }
    }
    for (; n < N; ++n) {
        const int64_t o = n * stride + d0;
        for (int64_t j = 0; j < lv; j += 8) add8_f64(acc + j, relu8<MODE>(load8_as_float<DT>(g, o + j)));
        for (int64_t j = lv; j < len; ++j) acc[j] += static_cast<double>(relu1<MODE>(load_elem<DT>(g, o + j)));
    }
}

// bf16 fast path of accumulate_rows_t. A bf16 value is the top half of a float32, so
// reading 16 columns as 8 uint32 lanes gives the even columns as `lane << 16` and the
// odd ones as `lane & 0xffff0000`: no widening shuffles (the generic path's
// zero-extension costs several shuffle-port uops per 8 values). Even and odd column
// sums are kept in separate float64 halves of `perm` and interleaved into acc at the
// end; the values summed and their order are those of the generic path, so the
// result is bit-identical to it.
template <int MODE>
DCAM_INLINE v8f bf16_pair_half(v8u32 u, bool odd) {
    const v8u32 bits = odd ? (u & 0xffff0000u) : (u << 16);
    v8f f;
    std::memcpy(&f, &bits, sizeof(f));
    return relu8<MODE>(f);
}

template <int MODE>
DCAM_INLINE void accumulate_rows_bf16(const uint16_t* g, int64_t stride, int64_t N, int64_t d0, int64_t len,
                                      double* __restrict acc, double* __restrict perm) {
    const int64_t lv = len & ~int64_t(15), half = lv / 2;
    std::fill(perm, perm + lv, 0.0);
    auto row = [&](int64_t n, int64_t j) {
        v8u32 u;
        std::memcpy(&u, g + n * stride + d0 + j, sizeof(u));
        return u;
    };
    int64_t n = 0;
    for (; n + 8 <= N; n += 8) {
        for (int64_t j = 0; j < lv; j += 16) {
            const v8u32 u0 = row(n, j), u1 = row(n + 1, j), u2 = row(n + 2, j), u3 = row(n + 3, j);
            const v8u32 u4 = row(n + 4, j), u5 = row(n + 5, j), u6 = row(n + 6, j), u7 = row(n + 7, j);
            for (int odd = 0; odd < 2; ++odd) {
                const v8f a = bf16_pair_half<MODE>(u0, odd) + bf16_pair_half<MODE>(u1, odd);
                const v8f b = bf16_pair_half<MODE>(u2, odd) + bf16_pair_half<MODE>(u3, odd);
                const v8f c = bf16_pair_half<MODE>(u4, odd) + bf16_pair_half<MODE>(u5, odd);
                const v8f e = bf16_pair_half<MODE>(u6, odd) + bf16_pair_half<MODE>(u7, odd);
                add8_f64(perm + odd * half + j / 2, (a + b) + (c + e));
            }
        }
    }
    for (; n < N; ++n)
        for (int64_t j = 0; j < lv; j += 16) {
            const v8u32 u = row(n, j);
            add8_f64(perm + j / 2, bf16_pair_half<MODE>(u, false));
            add8_f64(perm + half + j / 2, bf16_pair_half<MODE>(u, true));
        }
    for (int64_t i = 0; i < half; ++i) {
        acc[2 * i] += perm[i];
        acc[2 * i + 1] += perm[half + i];
    }
    if (lv < len) accumulate_rows_t<DCAM_BF16, MODE>(g, stride, N, d0 + lv, len - lv, acc + lv);
}

template <int MODE>
DCAM_INLINE void accumulate_rows_m(const void* g, int dtype, int64_t stride, int64_t N, int64_t d0, int64_t len,
                                   double* acc, double* scratch) {
    switch (dtype) {
        case DCAM_F32: accumulate_rows_t<DCAM_F32, MODE>(g, stride, N, d0, len, acc); break;
        case DCAM_F16: accumulate_rows_t<DCAM_F16, MODE>(g, stride, N, d0, len, acc); break;
        default:
            accumulate_rows_bf16<MODE>(static_cast<const uint16_t*>(g), stride, N, d0, len, acc, scratch);
            break;
    }
}

// acc[0..len) += column sums of rows [0, N) of g (see GradMode); scratch: len doubles.
DCAM_HOT void accumulate_rows(const void* g, int dtype, int mode, int64_t stride, int64_t N, int64_t d0,
                              int64_t len, double* acc, double* scratch) {
    if (mode == kPlain)
        accumulate_rows_m<kPlain>(g, dtype, stride, N, d0, len, acc, scratch);
    else if (mode == kRelu)
        accumulate_rows_m<kRelu>(g, dtype, stride, N, d0, len, acc, scratch);
    else
        accumulate_rows_m<kReluChecked>(g, dtype, stride, N, d0, len, acc, scratch);
}

template <int DT>
DCAM_INLINE void convert_to_float_t(const void* src, int64_t n, float* dst) {
    const int64_t nv = n & ~int64_t(7);
    for (int64_t i = 0; i < nv; i += 8) {
        const v8f v = load8_as_float<DT>(src, i);
        std::memcpy(dst + i, &v, sizeof(v));
    }
    for (int64_t i = nv; i < n; ++i) dst[i] = load_elem<DT>(src, i);
}

DCAM_HOT void convert_to_float(const void* src, int dtype, int64_t n, float* dst) {
    if (dtype == DCAM_F16)
        convert_to_float_t<DCAM_F16>(src, n, dst);
    else
        convert_to_float_t<DCAM_BF16>(src, n, dst);
}

// One term of the pooled sum, float64.
template <bool GRAD_RELU>
DCAM_INLINE v4d term(v4f a, v4f w) {
    if (GRAD_RELU) return to_d(vmax0(a)) * to_d(w);  // relu(a) * w, exact in float64 (w >= 0)
    return to_d(vmax0(a * w));                       // relu(a * w): float32 product as the reference
}
template <bool GRAD_RELU>
DCAM_INLINE double term1(float a, float w) {
    if (GRAD_RELU) return static_cast<double>(relu1<kRelu>(a)) * static_cast<double>(w);
    return static_cast<double>(relu1<kRelu>(a * w));
}

// acc[t][n - n0] += sum_{d in [d0, d1)} term(A[n, d], W[t, d]) for n in [n0, n1), t < T.
// 4 x 2 register tiles, vectorised over d; scalar tails.
template <bool GRAD_RELU>
DCAM_INLINE void gemm_block_t(const float* __restrict A, const float* __restrict W, int64_t D, int64_t n0,
                              int64_t n1, int64_t T, int64_t d0, int64_t d1, double* __restrict acc,
                              int64_t ldacc) {
    const int64_t dv = d0 + ((d1 - d0) & ~int64_t(3));
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
        const float* a0 = A + n * D;
        const float* a1 = a0 + D;
        const float* a2 = a1 + D;
        const float* a3 = a2 + D;
        int64_t t = 0;
        for (; t + 2 <= T; t += 2) {
            const float* w0 = W + t * D;
            const float* w1 = w0 + D;
            v4d c00 = {0, 0, 0, 0}, c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
            for (int64_t d = d0; d < dv; d += 4) {
                const v4f x0 = load4(a0 + d), x1 = load4(a1 + d), x2 = load4(a2 + d), x3 = load4(a3 + d);
                const v4f y0 = load4(w0 + d), y1 = load4(w1 + d);
                c00 += term<GRAD_RELU>(x0, y0);
                c01 += term<GRAD_RELU>(x0, y1);
                c10 += term<GRAD_RELU>(x1, y0);
                c11 += term<GRAD_RELU>(x1, y1);
                c20 += term<GRAD_RELU>(x2, y0);
                c21 += term<GRAD_RELU>(x2, y1);
                c30 += term<GRAD_RELU>(x3, y0);
                c31 += term<GRAD_RELU>(x3, y1);
            }
            double s[8] = {hsum(c00), hsum(c01), hsum(c10), hsum(c11), hsum(c20), hsum(c21), hsum(c30), hsum(c31)};
            for (int64_t d = dv; d < d1; ++d) {
                s[0] += term1<GRAD_RELU>(a0[d], w0[d]);
                s[1] += term1<GRAD_RELU>(a0[d], w1[d]);
                s[2] += term1<GRAD_RELU>(a1[d], w0[d]);
                s[3] += term1<GRAD_RELU>(a1[d], w1[d]);
                s[4] += term1<GRAD_RELU>(a2[d], w0[d]);
                s[5] += term1<GRAD_RELU>(a2[d], w1[d]);
                s[6] += term1<GRAD_RELU>(a3[d], w0[d]);
                s[7] += term1<GRAD_RELU>(a3[d], w1[d]);
            }
            double* r0 = acc + t * ldacc + (n - n0);
            double* r1 = r0 + ldacc;
            r0[0] += s[0]; r1[0] += s[1];
            r0[1] += s[2]; r1[1] += s[3];
            r0[2] += s[4]; r1[2] += s[5];
            r0[3] += s[6]; r1[3] += s[7];
        }
        for (; t < T; ++t) {
            const float* w0 = W + t * D;
            v4d c0 = {0, 0, 0, 0}, c1 = c0, c2 = c0, c3 = c0;
            for (int64_t d = d0; d < dv; d += 4) {
                const v4f y0 = load4(w0 + d);
                c0 += term<GRAD_RELU>(load4(a0 + d), y0);
                c1 += term<GRAD_RELU>(load4(a1 + d), y0);
                c2 += term<GRAD_RELU>(load4(a2 + d), y0);
                c3 += term<GRAD_RELU>(load4(a3 + d), y0);
            }
            double s[4] = {hsum(c0), hsum(c1), hsum(c2), hsum(c3)};
            for (int64_t d = dv; d < d1; ++d) {
                s[0] += term1<GRAD_RELU>(a0[d], w0[d]);
                s[1] += term1<GRAD_RELU>(a1[d], w0[d]);
                s[2] += term1<GRAD_RELU>(a2[d], w0[d]);
                s[3] += term1<GRAD_RELU>(a3[d], w0[d]);
            }
            double* r0 = acc + t * ldacc + (n - n0);
            for (int i = 0; i < 4; ++i) r0[i] += s[i];
        }
    }
    for (; n < n1; ++n) {
        const float* a0 = A + n * D;
        for (int64_t t = 0; t < T; ++t) {
            const float* w0 = W + t * D;
            v4d c0 = {0, 0, 0, 0};
            for (int64_t d = d0; d < dv; d += 4) c0 += term<GRAD_RELU>(load4(a0 + d), load4(w0 + d));
            double s = hsum(c0);
            for (int64_t d = dv; d < d1; ++d) s += term1<GRAD_RELU>(a0[d], w0[d]);
            acc[t * ldacc + (n - n0)] += s;
        }
    }
}

DCAM_HOT void gemm_block(const float* A, const float* W, int64_t D, int64_t n0, int64_t n1, int64_t T, int64_t d0,
                         int64_t d1, double* acc, int64_t ldacc, bool grad_relu) {
    if (grad_relu)
        gemm_block_t<true>(A, W, D, n0, n1, T, d0, d1, acc, ldacc);
    else
        gemm_block_t<false>(A, W, D, n0, n1, T, d0, d1, acc, ldacc);
}

// dst[d] = relu(src[d]) as float64, d < n. Branch-free and vectorised: activations
// change sign at random, and a branch per element costs more than the product itself.
DCAM_HOT void relu_to_f64(const float* __restrict src, int64_t n, double* __restrict dst) {
    int64_t d = 0;
    for (; d + 4 <= n; d += 4) {
        const v4d v = to_d(vmax0(load4(src + d)));
        std::memcpy(dst + d, &v, sizeof(v));
    }
    for (; d < n; ++d) dst[d] = static_cast<double>(relu1<kRelu>(src[d]));
}

DCAM_INLINE v4d load4d(const double* p) {
    v4d v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

// Register tile of gemm_f64_block: acc[t + c][i + r] += sum_d Ad[i + r][d] * Wd[t + c][d]
// for r < 4, c < C (C accumulator columns x 4 rows, vectorised over d).
template <int C>  // C in 1..3
DCAM_INLINE void gemm_tile(const double* __restrict a, int64_t lda, const double* __restrict w, int64_t ldw,
                           int64_t dlen, double* __restrict acc, int64_t ldacc) {
    v4d c[4][C];
    for (int r = 0; r < 4; ++r)
        for (int k = 0; k < C; ++k) c[r][k] = v4d{0, 0, 0, 0};
    for (int64_t d = 0; d < dlen; d += 4) {
        const v4d y0 = load4d(w + d);
        const v4d y1 = C > 1 ? load4d(w + ldw + d) : y0;
        const v4d y2 = C > 2 ? load4d(w + 2 * ldw + d) : y0;
        for (int r = 0; r < 4; ++r) {
            const v4d x = load4d(a + r * lda + d);
            c[r][0] += x * y0;
            if (C > 1) c[r][1] += x * y1;
            if (C > 2) c[r][2] += x * y2;
        }
    }
    for (int k = 0; k < C; ++k)
        for (int r = 0; r < 4; ++r) acc[k * ldacc + r] += hsum(c[r][k]);
}

// acc[t][i] += sum_{d < dlen} Ad[i][d] * Wd[t][d] for i < nrows (a multiple of 4), t < T.
// Ad rows are `lda` apart, Wd rows `ldw`; dlen is a multiple of 4 (zero padded by the caller).
// Products of two float32 values are exact in float64, so fusing `c + x*y` into one
// FMA rounds exactly as the separate multiply and add do: contraction is allowed here
// (and only here). 4 x 3 tiles: 12 accumulators + 3 weight vectors fit the 16 AVX2
// registers, and each loaded value feeds 3 or 4 FMAs.
__attribute__((optimize("fp-contract=fast"))) DCAM_HOT void gemm_f64_block(
    const double* __restrict Ad, int64_t lda, int64_t nrows, const double* __restrict Wd, int64_t ldw, int64_t T,
    int64_t dlen, double* __restrict acc, int64_t ldacc) {
    // token groups outside, row groups inside (the group's weight rows stay in L1)
    int64_t t = 0;
    for (; t + 3 <= T; t += 3)
        for (int64_t i = 0; i < nrows; i += 4)
            gemm_tile<3>(Ad + i * lda, lda, Wd + t * ldw, ldw, dlen, acc + t * ldacc + i, ldacc);
    for (int64_t i = 0; i < nrows; i += 4) {
        if (T - t == 2) gemm_tile<2>(Ad + i * lda, lda, Wd + t * ldw, ldw, dlen, acc + t * ldacc + i, ldacc);
        if (T - t == 1) gemm_tile<1>(Ad + i * lda, lda, Wd + t * ldw, ldw, dlen, acc + t * ldacc + i, ldacc);
    }
}

}  // namespace

static int pool_gradients_impl(const void* acts, const void* grads, dcam_dtype dtype, int64_t B, int64_t T,
                               int64_t N, int64_t D, int grad_relu, float* maps_out, uint8_t* degenerate_out,
                               int32_t* grads_nonfinite) {
    if (dtype != DCAM_F32 && dtype != DCAM_F16 && dtype != DCAM_BF16) return DCAM_EINVAL_DTYPE;
    if (B < 0 || T < 0 || N < 1 || D < 1) return DCAM_EINVAL_SHAPE;
    if (B == 0 || T == 0) return DCAM_OK;
    if (!acts || !grads || !maps_out) return DCAM_EINVAL_NULL;
    const bool relu = grad_relu != 0;
    const int mode = !relu ? kPlain : (grads_nonfinite ? kReluChecked : kRelu);
    const int dt = static_cast<int>(dtype);
    const int64_t esize = dtype == DCAM_F32 ? 4 : 2;
    const int nthreads = max_threads();

    std::vector<float> weights;       // [B, T, D] float32, as the reference's g.mean(dim=2)
    std::vector<float> acts_f;        // [B, N, D] float32 copy (only for 16-bit inputs)
    std::vector<double> raw_acc;      // [B, T, N] float64 pooled sums
    try {
        weights.resize(static_cast<size_t>(B * T * D));
        raw_acc.assign(static_cast<size_t>(B * T * N), 0.0);
        if (dtype != DCAM_F32) acts_f.resize(static_cast<size_t>(B * N * D));
    } catch (const std::bad_alloc&) {
        return DCAM_ENOMEM;
    }

    // ---- pass 1: w[b,t,:] = mean_n G+ : one streaming read of grads.
    // Work items are (b*T + t, feature chunk); whole rows when there are enough slices.
    const int64_t BT = B * T;
    int64_t dchunk = D;
    if (BT < 4 * nthreads) {
        const int64_t parts = (4 * nthreads + BT - 1) / BT;
        dchunk = std::max<int64_t>(256, ((D + parts - 1) / parts + 63) & ~int64_t(63));
        dchunk = std::min(dchunk, D);
    }
    const int64_t nchunks = (D + dchunk - 1) / dchunk;
    const int64_t items = BT * nchunks;
    const float invN = static_cast<float>(N);
    const char* gbytes = static_cast<const char*>(grads);
    bool oom = false;
#pragma omp parallel
    {
        // acc (dchunk doubles) followed by the bf16 path's scratch (dchunk doubles)
        double* acc = static_cast<double*>(std::malloc(static_cast<size_t>(2 * dchunk) * sizeof(double)));
        if (!acc) {
#pragma omp atomic write
            oom = true;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; ++it) {
            if (!acc) continue;
            const int64_t bt = it / nchunks;
            const int64_t d0 = (it % nchunks) * dchunk;
            const int64_t len = std::min(dchunk, D - d0);
            std::fill(acc, acc + len, 0.0);
            accumulate_rows(gbytes + bt * N * D * esize, dt, mode, D, N, d0, len, acc, acc + dchunk);
            float* wrow = weights.data() + bt * D + d0;
            for (int64_t j = 0; j < len; ++j) wrow[j] = static_cast<float>(acc[j]) / invN;
        }
        std::free(acc);
    }
    if (oom) return DCAM_ENOMEM;
    if (grads_nonfinite) {
        // every NaN/Inf of grads made its column's weight non-finite (see GradMode); a finite
        // gradient can only do that by overflowing a float32 partial sum (|g| > ~4e37)
        int32_t bad = 0;
#pragma omp parallel for reduction(| : bad) schedule(static)
        for (int64_t i = 0; i < BT * D; ++i) bad |= std::isfinite(weights[i]) ? 0 : 1;
        *grads_nonfinite = bad;
    }

    // ---- 16-bit activations -> float32 once
    const float* A = static_cast<const float*>(acts);
    if (dtype != DCAM_F32) {
        const int64_t total = B * N * D;
        const int64_t blk = 1 << 16;
        const int64_t nblk = (total + blk - 1) / blk;
        const char* abytes = static_cast<const char*>(acts);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < nblk; ++i) {
            const int64_t s = i * blk, e = std::min(total, s + blk);
            convert_to_float(abytes + s * 2, dt, e - s, acts_f.data() + s);
        }
        A = acts_f.data();
    }

    // ---- pass 2: raw[b,t,n] = (1/D) sum_d term(A[b,n,d], w[b,t,d]), blocked over (n, d)
    const int64_t NB = 16;  // rows of A per work item
    const int64_t nblocks = (N + NB - 1) / NB;
    if (relu) {
        // relu(A) @ W^T in float64: products of two float32 are exact, sums float64.
        // W and the current chunk of relu(A) are converted to float64 once (zero padded).
        const int64_t Dp = (D + 3) & ~int64_t(3);
        const int64_t DC = 256;  // feature chunk of the A block (16 x 256 doubles = 32 KB)
        std::vector<double> wd;
        try {
            wd.assign(static_cast<size_t>(BT * Dp), 0.0);
        } catch (const std::bad_alloc&) {
            return DCAM_ENOMEM;
        }
#pragma omp parallel for schedule(static)
        for (int64_t bt = 0; bt < BT; ++bt)
            for (int64_t d = 0; d < D; ++d) wd[bt * Dp + d] = weights[bt * D + d];
#pragma omp parallel
        {
            double* ad = static_cast<double*>(std::malloc(static_cast<size_t>(NB * DC) * sizeof(double)));
            double* tile = static_cast<double*>(std::malloc(static_cast<size_t>(NB * T) * sizeof(double)));
            if (!ad || !tile) {
#pragma omp atomic write
                oom = true;
            }
#pragma omp for schedule(dynamic, 1)
            for (int64_t it = 0; it < B * nblocks; ++it) {
                if (!ad || !tile) continue;
                const int64_t b = it / nblocks;
                const int64_t n0 = (it % nblocks) * NB, n1 = std::min(N, n0 + NB);
                const int64_t rows = (n1 - n0 + 3) & ~int64_t(3);
                const float* Ab = A + b * N * D;
                double* accb = raw_acc.data() + b * T * N + n0;  // row stride N
                for (int64_t d0 = 0; d0 < D; d0 += DC) {
                    const int64_t dl = std::min(DC, D - d0), dlp = (dl + 3) & ~int64_t(3);
                    for (int64_t i = 0; i < rows; ++i) {
                        double* dst = ad + i * DC;
                        if (n0 + i < n1) {
                            relu_to_f64(Ab + (n0 + i) * D + d0, dl, dst);
                            for (int64_t d = dl; d < dlp; ++d) dst[d] = 0.0;
                        } else {
                            for (int64_t d = 0; d < dlp; ++d) dst[d] = 0.0;
                        }
                    }
                    if (n1 - n0 == rows) {
                        gemm_f64_block(ad, DC, rows, wd.data() + b * T * Dp + d0, Dp, T, dlp, accb, N);
                    } else {  // partial last block: accumulate into a scratch tile, copy the valid rows
                        std::fill(tile, tile + T * rows, 0.0);
                        gemm_f64_block(ad, DC, rows, wd.data() + b * T * Dp + d0, Dp, T, dlp, tile, rows);
                        for (int64_t t = 0; t < T; ++t)
                            for (int64_t i = 0; i < n1 - n0; ++i) accb[t * N + i] += tile[t * rows + i];
                    }
                }
            }
            std::free(ad);
            std::free(tile);
        }
        if (oom) return DCAM_ENOMEM;
    } else {
        const int64_t DC = 512;  // feature chunk kept in L1 across the T tokens
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t it = 0; it < B * nblocks; ++it) {
            const int64_t b = it / nblocks;
            const int64_t n0 = (it % nblocks) * NB, n1 = std::min(N, n0 + NB);
            const float* Ab = A + b * N * D;
            const float* Wb = weights.data() + b * T * D;
            double* accb = raw_acc.data() + b * T * N + n0;  // row stride N
            for (int64_t d0 = 0; d0 < D; d0 += DC)
                gemm_block(Ab, Wb, D, n0, n1, T, d0, std::min(D, d0 + DC), accb, N, false);
        }
    }

    // ---- per-map min-max normalisation (float32 arithmetic as the reference)
    const float fD = static_cast<float>(D);
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < BT; ++m) {
        const double* acc = raw_acc.data() + m * N;
        float* out = maps_out + m * N;
        float lo = static_cast<float>(acc[0]) / fD, hi = lo;
        for (int64_t n = 0; n < N; ++n) {
            const float v = static_cast<float>(acc[n]) / fD;
            out[n] = v;
            lo = std::min(lo, v);
            hi = std::max(hi, v);
        }
        const bool deg = !(hi > lo);
        if (deg) {
            std::fill(out, out + N, 0.f);
        } else {
            const float den = (hi - lo) + kEpsNorm;
            for (int64_t n = 0; n < N; ++n) out[n] = (out[n] - lo) / den;
        }
        if (degenerate_out) degenerate_out[m] = deg ? 1 : 0;
    }
    return DCAM_OK;
}

extern "C" int dcam_pool_gradients(const void* acts, const void* grads, dcam_dtype dtype, int64_t B, int64_t T,
                                   int64_t N, int64_t D, int grad_relu, float* maps_out,
                                   uint8_t* degenerate_out) {
    return pool_gradients_impl(acts, grads, dtype, B, T, N, D, grad_relu, maps_out, degenerate_out, nullptr);
}

extern "C" int dcam_pool_gradients_checked(const void* acts, const void* grads, dcam_dtype dtype, int64_t B,
                                           int64_t T, int64_t N, int64_t D, int grad_relu, float* maps_out,
                                           uint8_t* degenerate_out, int32_t* grads_nonfinite) {
    if (!grads_nonfinite) return DCAM_EINVAL_NULL;
    *grads_nonfinite = 0;
    return pool_gradients_impl(acts, grads, dtype, B, T, N, D, grad_relu, maps_out, degenerate_out,
                               grads_nonfinite);
}
