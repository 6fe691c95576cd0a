// The streaming pass of pooling over the gradients (the only memory-bound part):
//   acc[d] += sum_n mode(G[n, d])
// for one (image, token) slice and a range of features. Rows are read in groups of 8
// (8 contiguous streams; fewer or more measured slower), 16 features at a time; the
// element conversion (bf16, f16 -> float32) is exact and done in registers. AVX2 CPUs
// run an intrinsics version (column_sums_v3), others portable vector code; both compute
// the same sums in the same order.
#include <algorithm>
#include <limits>

#include "pool.hpp"
#include "simd.hpp"

#if DCAM_HAVE_V3
#include <immintrin.h>
#endif

namespace dcam {
namespace {

// The same columns of the next group of 8 rows, fetched into L2 while this group is summed
// (one prefetch per 64-byte line; `j` counts the elements summed so far in the row). The
// hardware prefetchers alone keep too few lines in flight for one core to stream at the
// memory's speed: measured on 2 cores, this raises one core's pass from ~19 to ~23 GB/s
// and two cores' from ~29 to ~33 GB/s.
template <int DT>
DCAM_INLINE void prefetch_next_group(const void* g, int64_t o, int64_t stride, int64_t j) {
    constexpr int64_t esize = DT == DCAM_F32 ? 4 : 2;
    if (esize == 2 && (j & 31)) return;  // 16 two-byte elements are half a line
    const char* p = static_cast<const char*>(g) + (o + 8 * stride) * esize;
    for (int r = 0; r < 8; ++r) __builtin_prefetch(p + r * stride * esize, 0, 2);
}

template <GradMode MODE>
DCAM_INLINE v8f relu_mode(v8f v) {
    const v8f z = {0, 0, 0, 0, 0, 0, 0, 0};
    if (MODE == GradMode::kPlain) return v;
    return v < z ? (MODE == GradMode::kRelu ? z : v * z) : v;
}

template <GradMode MODE>
DCAM_INLINE float relu_mode1(float v) {
    if (MODE == GradMode::kPlain) return v;
    return v < 0.f ? (MODE == GradMode::kRelu ? 0.f : v * 0.f) : v;
}

// acc[j] += sum_{n<N} g(n, d0 + j) for j < len (g passed through relu_mode<MODE>), rows `stride`
// elements apart.
template <int DT, GradMode MODE>
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
        const bool ahead = n + 16 <= N;
        for (int64_t j = 0; j < lv; j += 8) {
            const int64_t o = o0 + j;
            if (ahead && !(j & 15)) prefetch_next_group<DT>(g, o, stride, j);
            const v8f a = relu_mode<MODE>(load8_as_float<DT>(g, o)) + relu_mode<MODE>(load8_as_float<DT>(g, o + stride));
            const v8f b = relu_mode<MODE>(load8_as_float<DT>(g, o + 2 * stride)) +
                          relu_mode<MODE>(load8_as_float<DT>(g, o + 3 * stride));
            const v8f c = relu_mode<MODE>(load8_as_float<DT>(g, o + 4 * stride)) +
                          relu_mode<MODE>(load8_as_float<DT>(g, o + 5 * stride));
            const v8f e = relu_mode<MODE>(load8_as_float<DT>(g, o + 6 * stride)) +
                          relu_mode<MODE>(load8_as_float<DT>(g, o + 7 * stride));
            add8_f64(acc + j, (a + b) + (c + e));
        }
        for (int64_t j = lv; j < len; ++j) {
            float v[8];
            for (int r = 0; r < 8; ++r) v[r] = relu_mode1<MODE>(load_elem<DT>(g, o0 + r * stride + j));
            acc[j] += static_cast<double>(((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])));
        }
    }
    for (; n < N; ++n) {
        const int64_t o = n * stride + d0;
        for (int64_t j = 0; j < lv; j += 8) add8_f64(acc + j, relu_mode<MODE>(load8_as_float<DT>(g, o + j)));
        for (int64_t j = lv; j < len; ++j) acc[j] += static_cast<double>(relu_mode1<MODE>(load_elem<DT>(g, o + j)));
    }
}

// bf16 fast path of accumulate_rows_t. A bf16 value is the top half of a float32, so
// reading 16 columns as 8 uint32 lanes gives the even columns as `lane << 16` and the
// odd ones as `lane & 0xffff0000`: no widening shuffles (the generic path's
// zero-extension costs several shuffle-port uops per 8 values). Even and odd column
// sums are kept in separate float64 halves of `perm` and interleaved into acc at the
// end; the values summed and their order are those of the generic path, so the
// result is bit-identical to it.
template <GradMode MODE>
DCAM_INLINE v8f bf16_pair_half(v8u32 u, bool odd) {
    const v8u32 bits = odd ? (u & 0xffff0000u) : (u << 16);
    v8f f;
    std::memcpy(&f, &bits, sizeof(f));
    return relu_mode<MODE>(f);
}

template <GradMode MODE>
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
        const bool ahead = n + 16 <= N;
        for (int64_t j = 0; j < lv; j += 16) {
            if (ahead) prefetch_next_group<DCAM_BF16>(g, n * stride + d0 + j, stride, j);
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


template <GradMode MODE>
void column_sums_portable(const void* g, dcam_dtype dtype, int64_t stride, int64_t N, int64_t d0, int64_t len,
                          double* acc, double* scratch) {
    switch (dtype) {
        case DCAM_F32: accumulate_rows_t<DCAM_F32, MODE>(g, stride, N, d0, len, acc); break;
        case DCAM_F16: accumulate_rows_t<DCAM_F16, MODE>(g, stride, N, d0, len, acc); break;
        default:
            accumulate_rows_bf16<MODE>(static_cast<const uint16_t*>(g), stride, N, d0, len, acc, scratch);
            break;
    }
}

// ------------------------------------------------------------------ AVX2 version
//
// The same sums in the same order as the portable code, with the relu as one vmaxps
// (max(0, v) keeps NaN, as the compare-and-select above does, which GCC does not turn
// into vmaxps). The checked mode detects -Inf with a running minimum of the raw values
// instead of v * 0 (NaN and +Inf reach the sums as before): a slice whose minimum is -Inf
// (or NaN) gets NaN in acc[0], so its weights are non-finite and the check sees it.
#if DCAM_HAVE_V3
template <GradMode MODE>
DCAM_INLINE DCAM_TARGET_V3 __m256 relu_v3(__m256 v) {
    if (MODE == GradMode::kPlain) return v;
    return _mm256_max_ps(_mm256_setzero_ps(), v);  // max(0, v): a NaN v is returned
}

// mn = min(mn, v[0], ..., v[7]) as a tree (one op on mn's dependency chain); a NaN makes
// the result NaN or leaves it unchanged, and a NaN is caught by the sums anyway.
DCAM_INLINE DCAM_TARGET_V3 void min8_v3(const __m256* v, __m256& mn) {
    const __m256 m = _mm256_min_ps(_mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3])),
                                   _mm256_min_ps(_mm256_min_ps(v[4], v[5]), _mm256_min_ps(v[6], v[7])));
    mn = _mm256_min_ps(mn, m);
}

// 16 consecutive elements of a row as two float32 vectors: bf16 as (even, odd) columns,
// float32 / f16 as (first 8, last 8).
template <int DT>
DCAM_INLINE DCAM_TARGET_V3 void load16_v3(const void* g, int64_t o, __m256& a, __m256& b) {
    if (DT == DCAM_BF16) {
        const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(g) + o));
        a = _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
        b = _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32(static_cast<int32_t>(0xffff0000u))));
        return;
    }
    const v8f x = load8_as_float<DT>(g, o), y = load8_as_float<DT>(g, o + 8);
    std::memcpy(&a, &x, sizeof(a));
    std::memcpy(&b, &y, sizeof(b));
}

// Columns [d0, d0 + lv) (lv a multiple of 16) of all N rows: into acc directly, or for bf16
// into sums[0 .. lv/2) (even columns) and sums[lv/2 .. lv) (odd), interleaved by the caller.
template <int DT, GradMode MODE>
DCAM_INLINE DCAM_TARGET_V3 void column_sums_v3_main(const void* g, int64_t stride, int64_t N, int64_t d0, int64_t lv,
                                                    double* sums, __m256& mn) {
    const bool split = DT == DCAM_BF16;
    const int64_t half = lv / 2;
    int64_t n = 0;
    for (; n + 8 <= N; n += 8) {
        const int64_t o0 = n * stride + d0;
        const bool ahead = n + 16 <= N;
        for (int64_t j = 0; j < lv; j += 16) {
            if (ahead) prefetch_next_group<DT>(g, o0 + j, stride, j);
            __m256 a[8], b[8];
            for (int r = 0; r < 8; ++r) load16_v3<DT>(g, o0 + r * stride + j, a[r], b[r]);
            if (MODE == GradMode::kReluChecked) {
                min8_v3(a, mn);
                min8_v3(b, mn);
            }
            for (int r = 0; r < 8; ++r) {
                a[r] = relu_v3<MODE>(a[r]);
                b[r] = relu_v3<MODE>(b[r]);
            }
            // the balanced tree of accumulate_rows_t
            const __m256 sa = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])),
                                            _mm256_add_ps(_mm256_add_ps(a[4], a[5]), _mm256_add_ps(a[6], a[7])));
            const __m256 sb = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(b[0], b[1]), _mm256_add_ps(b[2], b[3])),
                                            _mm256_add_ps(_mm256_add_ps(b[4], b[5]), _mm256_add_ps(b[6], b[7])));
            add8_f64_v3(sums + (split ? j / 2 : j), sa);
            add8_f64_v3(sums + (split ? half + j / 2 : j + 8), sb);
        }
    }
    for (; n < N; ++n)
        for (int64_t j = 0; j < lv; j += 16) {
            __m256 a, b;
            load16_v3<DT>(g, n * stride + d0 + j, a, b);
            if (MODE == GradMode::kReluChecked) mn = _mm256_min_ps(mn, _mm256_min_ps(a, b));
            add8_f64_v3(sums + (split ? j / 2 : j), relu_v3<MODE>(a));
            add8_f64_v3(sums + (split ? half + j / 2 : j + 8), relu_v3<MODE>(b));
        }
}

template <int DT, GradMode MODE>
DCAM_TARGET_V3 void column_sums_v3(const void* g, int64_t stride, int64_t N, int64_t d0, int64_t len, double* acc,
                                   double* scratch) {
    const int64_t lv = len & ~int64_t(15), half = lv / 2;
    __m256 mn = _mm256_setzero_ps();
    if (DT == DCAM_BF16) {
        std::fill(scratch, scratch + lv, 0.0);
        column_sums_v3_main<DT, MODE>(g, stride, N, d0, lv, scratch, mn);
        for (int64_t i = 0; i < half; ++i) {
            acc[2 * i] += scratch[i];
            acc[2 * i + 1] += scratch[half + i];
        }
    } else {
        column_sums_v3_main<DT, MODE>(g, stride, N, d0, lv, acc, mn);
    }
    if (lv < len) accumulate_rows_t<DT, MODE>(g, stride, N, d0 + lv, len - lv, acc + lv);
    if (MODE == GradMode::kReluChecked) {
        float m[8];
        _mm256_storeu_ps(m, mn);
        bool bad = false;
        for (float v : m) bad |= !(v > -3.0e38f);  // -Inf, or NaN
        if (bad) acc[0] = std::numeric_limits<double>::quiet_NaN();
    }
}
#endif  // DCAM_HAVE_V3

template <GradMode MODE>
void column_sums_mode(const void* g, dcam_dtype dtype, int64_t stride, int64_t N, int64_t d0, int64_t len,
                      double* acc, double* scratch) {
#if DCAM_HAVE_V3
    if (cpu_is_x86_64_v3()) {
        switch (dtype) {
            case DCAM_F32: return column_sums_v3<DCAM_F32, MODE>(g, stride, N, d0, len, acc, scratch);
            case DCAM_F16: return column_sums_v3<DCAM_F16, MODE>(g, stride, N, d0, len, acc, scratch);
            default: return column_sums_v3<DCAM_BF16, MODE>(g, stride, N, d0, len, acc, scratch);
        }
    }
#endif
    column_sums_portable<MODE>(g, dtype, stride, N, d0, len, acc, scratch);
}

}  // namespace

void grad_column_sums(const void* g, dcam_dtype dtype, GradMode mode, int64_t stride, int64_t N, int64_t d0,
                      int64_t len, double* acc, double* scratch) {
    switch (mode) {
        case GradMode::kPlain: column_sums_mode<GradMode::kPlain>(g, dtype, stride, N, d0, len, acc, scratch); break;
        case GradMode::kRelu: column_sums_mode<GradMode::kRelu>(g, dtype, stride, N, d0, len, acc, scratch); break;
        default: column_sums_mode<GradMode::kReluChecked>(g, dtype, stride, N, d0, len, acc, scratch); break;
    }
}

}  // namespace dcam
