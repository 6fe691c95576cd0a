// Section 1 of the contract (gradient-weighted activation pooling): declarations shared
// by pool.cpp (the driver: planning, scheduling, normalisation), pool_grads.cpp (the
// streaming pass over the gradients) and pool_product.cpp (the product with the
// activations). Internal: not part of the C API.
#pragma once

#include <cstdint>

#include "common.hpp"
#include "simd.hpp"

#if DCAM_HAVE_V3
#include <immintrin.h>
#endif

namespace dcam {

// How the gradient pass treats an element before summing it.
//   kPlain:       as is (grad_relu off). NaN and +-Inf reach the sums.
//   kRelu:        max(v, 0) with NaN kept, like torch.clamp(min=0): NaN and +Inf reach the
//                 sums, -Inf becomes 0.
//   kReluChecked: the same sums for finite input, but every non-finite element of the
//                 gradients makes a weight of its slice non-finite, so the NaN/Inf check
//                 rides on the pass instead of reading the gradients a second time: NaN and
//                 +Inf reach the sums; -Inf becomes NaN (portable code: a negative v becomes
//                 v * 0, which is -0 for finite v) or is caught by a running minimum (AVX2
//                 code, see pool_grads.cpp).
enum class GradMode { kPlain = 0, kRelu = 1, kReluChecked = 2 };

// Element i of a buffer of dtype DT as float32 (exact conversion).
template <int DT>
DCAM_INLINE float load_elem(const void* base, int64_t i) {
    if (DT == DCAM_F32) return static_cast<const float*>(base)[i];
    const uint16_t u = static_cast<const uint16_t*>(base)[i];
    return DT == DCAM_F16 ? f16_to_float(u) : bf16_to_float(u);
}

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
    const v8u32 m = u & 0x7fffu;  // as f16_to_float, lane-wise
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

// acc[0..8) += s, in float64
DCAM_INLINE void add8_f64(double* acc, v8f s) {
    store(acc, load4d(acc) + to_f64(lo4(s)));
    store(acc + 4, load4d(acc + 4) + to_f64(hi4(s)));
}

#if DCAM_HAVE_V3
// add8_f64 in AVX2 intrinsics, for the kernels written in them
DCAM_INLINE DCAM_TARGET_V3 void add8_f64_v3(double* acc, __m256 s) {
    _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc), _mm256_cvtps_pd(_mm256_castps256_ps128(s))));
    _mm256_storeu_pd(acc + 4, _mm256_add_pd(_mm256_loadu_pd(acc + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1))));
}
#endif

// acc[j] += sum_{n < N} mode(g[n * stride + d0 + j]) for j < len, float64 sums of float32
// partial sums (see pool_grads.cpp). scratch: len doubles.
void grad_column_sums(const void* g, dcam_dtype dtype, GradMode mode, int64_t stride, int64_t N, int64_t d0,
                      int64_t len, double* acc, double* scratch);

// ---- the product raw[t, n] = sum_d max(A[n, d] * w[t, d], 0) (pool_product.cpp)
//
// Exact rewrite used for both signs of w: max(a * w, 0) = a * max(w, 0) when a > 0 and
// a * min(w, 0) when a < 0 (0 when a == 0). So every nonzero activation contributes
// a * W+[t, d] or a * W-[t, d], picked by the sign of a alone (not of w), and each
// activation takes part in one multiply per token: with grad_relu (w >= 0, W- = 0) only
// the positive activations do.
//
// Rounding: every term is >= 0, so no sum cancels. Runs of at most kProductChunk (by
// feature) or kDotRun (by token) features are summed in float32, and the run sums in
// float64: each raw value is within about (run length + 4) * 2^-24 of the exact sum,
// relative (in practice ~1e-7, the size of the reference's own float32 error).

// How a table lays out the weights of its tokens:
//   kByFeature: one row per feature d, the tokens side by side (W+[d] padded with 0 to
//               `width` tokens, then with signed weights W-[d]; rows `row` floats apart),
//               read by the compacting kernel (any table size);
//   kByToken:   one row of D features per token (W+ rows, then with signed weights W-
//               rows; rows `row` = D floats apart; for bfloat16 activations every 16
//               features are stored evens first, the order the kernel converts them in),
//               read by the dot-product kernel of small tables on AVX2 CPUs.
enum class TableLayout { kByFeature = 0, kByToken = 1 };

struct WeightTable {
    float* pos = nullptr;  // W+ = max(w, 0)
    float* neg = nullptr;  // W- = min(w, 0); null with grad_relu (W+ = w)
    int64_t width = 0, row = 0, cnt = 0;
    TableLayout layout = TableLayout::kByFeature;
    bool evens_first = false;  // by-token tables for bfloat16 activations
};

// The layout the product uses for a table of cnt tokens (on this CPU).
TableLayout weight_table_layout(int64_t cnt);

// Padded token count of a by-feature table of cnt tokens, and the floats a table needs.
int64_t weight_table_width(int64_t cnt);
int64_t weight_table_size(int64_t D, int64_t cnt, bool signed_w, TableLayout layout);

// The table of cnt tokens in `storage` (weight_table_size floats), for activations of
// act_dtype. Its padding (by-feature tables of cnt < width tokens) is zeroed here; every
// token's weights are then written by fill_weight_table, feature range by feature range
// (pool.cpp: each range of every token by one thread, once the table's weights are known).
WeightTable make_weight_table(int64_t D, int64_t cnt, bool signed_w, TableLayout layout, dcam_dtype act_dtype,
                              float* storage);

// Token i's weights for features [d0, d0 + len): w[0 .. len) float32.
void fill_weight_table(const WeightTable& tbl, int64_t D, int64_t i, int64_t d0, int64_t len, const float* w);

// Per-thread scratch of product_rows.
struct ProductScratch {
    double* acc = nullptr;    // rows x table width accumulators: doubles(rows, width)
    float* vals = nullptr;    // compacted activations of one chunk of up to 8 rows: 8 * (kProductChunk + 8)
    int32_t* offs = nullptr;  // and their offsets into the table: 8 * (kProductChunk + 8)
    static int64_t doubles(int64_t rows, int64_t width);
};

// Rows [n0, n1) of image b's pooled sums for the table's tokens:
// raw[(t0 + i) * ldraw + n] = sum_d max(A[n, d] * w[t0 + i, d], 0), i < cnt.
// A: [N][D] activations of `dtype`; raw: the image's [T][N] float64 sums (written, not added).
void product_rows(const void* A, dcam_dtype dtype, int64_t D, int64_t n0, int64_t n1, const WeightTable& tbl,
                  double* raw, int64_t ldraw, ProductScratch& scratch);

// Elements of one compaction chunk (activations of one row handled at once), and features
// of one float32 run of the dot-product kernel.
constexpr int64_t kProductChunk = 64;
constexpr int64_t kDotRun = 256;

}  // namespace dcam
