// The product of pooling with the activations (see pool.hpp):
//   raw[t, n] = sum_d max(A[n, d] * w[t, d], 0)
//            = sum_{d: A > 0} A[n, d] * W+[t, d] + sum_{d: A < 0} A[n, d] * W-[t, d].
// A task handles a block of rows for one weight table. Rows are read in chunks of
// kProductChunk activations, converted to float32 and compacted to those that take part
// (positive ones with grad_relu, nonzero ones otherwise; NaN always, so that it
// propagates as in the reference), each with the offset of its table row (W+ or W- by
// its sign). Then every compacted activation a adds a * table_row to the row's token
// accumulators: 4 tokens per AVX2 vector, up to 32 tokens in registers. The table slice
// of one chunk (kProductChunk feature rows) stays in L1 across the rows of the block.
//
// Products of two float32 values are exact in float64, so the AVX2 kernel's FMA
// (`c + a*w` rounded once) rounds exactly as the portable kernel's separate multiply and
// add do; the sums are float64.
#include <algorithm>

#include "pool.hpp"

#if DCAM_HAVE_V3
#include <immintrin.h>
#endif

namespace dcam {
namespace {

constexpr int64_t kTokensPerPass = 32;  // tokens held in registers (8 x 4 doubles)

// The activations are read chunk by chunk across the rows of a task, a pattern the hardware
// prefetchers follow poorly while another thread streams the gradients: fetch the row's
// next chunk (the elements [base + kProductChunk, base + 2 kProductChunk)) ahead.
template <int DT>
DCAM_INLINE void prefetch_next_chunk(const void* A, int64_t base, int64_t left) {
    if (left <= kProductChunk) return;
    const int64_t esize = DT == DCAM_F32 ? 4 : 2;
    const char* p = static_cast<const char*>(A) + (base + kProductChunk) * esize;
    for (int64_t b = 0; b < kProductChunk * esize; b += 64) __builtin_prefetch(p + b);
}

// ------------------------------------------------------------------ portable kernel

// Compacts the `len` activations A[base ..] (features d0 ..) into vals/offs (branch-free);
// returns how many take part.
template <int DT, bool SIGNED>
DCAM_INLINE int64_t compact_chunk(const void* A, int64_t base, int64_t len, int64_t d0, int64_t stride,
                                  int64_t neg_off, float* vals, int32_t* offs) {
    int64_t m = 0;
    for (int64_t i = 0; i < len; ++i) {
        const float a = load_elem<DT>(A, base + i);
        vals[m] = a;
        offs[m] = static_cast<int32_t>((d0 + i) * stride + (SIGNED && a < 0.0f ? neg_off : 0));
        m += SIGNED ? !(a == 0.0f) : !(a <= 0.0f);  // NaN takes part in both
    }
    return m;
}

// acc[0 .. 4V) += sum_e vals[e] * tbl[offs[e] .. + 4V).
template <int V>
DCAM_INLINE void add_entries(const float* vals, const int32_t* offs, int64_t m, const double* tbl, double* acc) {
    v4d c[V];
    for (int i = 0; i < V; ++i) c[i] = load4d(acc + 4 * i);
    for (int64_t e = 0; e < m; ++e) {
        const v4d a = splat4d(static_cast<double>(vals[e]));
        const double* p = tbl + offs[e];
        for (int i = 0; i < V; ++i) c[i] += a * load4d(p + 4 * i);
    }
    for (int i = 0; i < V; ++i) store(acc + 4 * i, c[i]);
}

#define DCAM_DISPATCH_V(v, call)    \
    switch (v) {                    \
        case 1: call(1); break;     \
        case 2: call(2); break;     \
        case 3: call(3); break;     \
        case 4: call(4); break;     \
        case 5: call(5); break;     \
        case 6: call(6); break;     \
        case 7: call(7); break;     \
        default: call(8); break;    \
    }

template <int DT, bool SIGNED>
void rows_portable(const void* A, int64_t D, int64_t n0, int64_t rows, const WeightTable& tbl, ProductScratch& s) {
    const int64_t tw = tbl.width, neg_off = SIGNED ? tbl.neg - tbl.pos : 0;
    for (int64_t d0 = 0; d0 < D; d0 += kProductChunk) {
        const int64_t len = std::min(kProductChunk, D - d0);
        for (int64_t r = 0; r < rows; ++r) {
            prefetch_next_chunk<DT>(A, (n0 + r) * D + d0, D - d0);
            const int64_t m =
                compact_chunk<DT, SIGNED>(A, (n0 + r) * D + d0, len, d0, tbl.row, neg_off, s.vals, s.offs);
            for (int64_t t0 = 0; t0 < tw; t0 += kTokensPerPass) {
                const int v = static_cast<int>(std::min(kTokensPerPass, tw - t0) / 4);
#define DCAM_CALL(V) add_entries<V>(s.vals, s.offs, m, tbl.pos + t0, s.acc + r * tw + t0)
                DCAM_DISPATCH_V(v, DCAM_CALL)
#undef DCAM_CALL
            }
        }
    }
}

// ------------------------------------------------------------------ AVX2 kernel

#if DCAM_HAVE_V3
// Lane indices that move the lanes set in an 8-bit mask to the front (left-packing).
struct LeftPack {
    int32_t idx[256][8];
    constexpr LeftPack() : idx() {
        for (int m = 0; m < 256; ++m) {
            int k = 0;
            for (int i = 0; i < 8; ++i)
                if (m >> i & 1) idx[m][k++] = i;
        }
    }
};
constexpr LeftPack kLeftPack{};

// compact_chunk, 8 activations at a time (len a multiple of 8; vals/offs get up to 7 extra
// entries past the returned count).
template <int DT, bool SIGNED>
DCAM_INLINE DCAM_TARGET_V3 int64_t compact_chunk_v3(const void* A, int64_t base, int64_t len, int64_t d0,
                                                    int64_t stride, int64_t neg_off, float* vals, int32_t* offs) {
    const __m256i lane_off = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                                _mm256_set1_epi32(static_cast<int32_t>(stride)));
    const __m256 zero = _mm256_setzero_ps();
    int64_t m = 0;
    for (int64_t i = 0; i < len; i += 8) {
        const v8f fv = load8_as_float<DT>(A, base + i);
        __m256 f;
        std::memcpy(&f, &fv, sizeof(f));
        __m256i off = _mm256_add_epi32(lane_off, _mm256_set1_epi32(static_cast<int32_t>((d0 + i) * stride)));
        int mask;
        if (SIGNED) {
            const __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(f, zero, _CMP_LT_OQ));
            off = _mm256_add_epi32(off, _mm256_and_si256(neg, _mm256_set1_epi32(static_cast<int32_t>(neg_off))));
            mask = _mm256_movemask_ps(_mm256_cmp_ps(f, zero, _CMP_NEQ_UQ));  // nonzero or NaN
        } else {
            mask = _mm256_movemask_ps(_mm256_cmp_ps(f, zero, _CMP_NLE_UQ));  // positive or NaN
        }
        const __m256i perm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLeftPack.idx[mask]));
        _mm256_storeu_ps(vals + m, _mm256_permutevar8x32_ps(f, perm));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(offs + m), _mm256_permutevar8x32_epi32(off, perm));
        m += __builtin_popcount(static_cast<unsigned>(mask));
    }
    return m;
}

// acc_j[0 .. 4V) += sum_e vals_j[e] * tbl[offs_j[e] .. + 4V) for R rows j in lockstep (their
// lists padded with zero entries to the same length m): R * V independent accumulators keep
// both FMA pipes busy even for few tokens.
template <int V, int R>
DCAM_INLINE DCAM_TARGET_V3 void add_entries_v3(const float* vals, const int32_t* offs, int64_t ld, int64_t m,
                                               const double* tbl, double* acc, int64_t ldacc) {
    __m256d c[R][V];
    for (int j = 0; j < R; ++j)
        for (int i = 0; i < V; ++i) c[j][i] = _mm256_loadu_pd(acc + j * ldacc + 4 * i);
    for (int64_t e = 0; e < m; ++e) {
        for (int j = 0; j < R; ++j) {
            const __m256d a = _mm256_set1_pd(static_cast<double>(vals[j * ld + e]));
            const double* p = tbl + offs[j * ld + e];
            for (int i = 0; i < V; ++i) c[j][i] = _mm256_fmadd_pd(a, _mm256_loadu_pd(p + 4 * i), c[j][i]);
        }
    }
    for (int j = 0; j < R; ++j)
        for (int i = 0; i < V; ++i) _mm256_storeu_pd(acc + j * ldacc + 4 * i, c[j][i]);
}

// Rows processed in lockstep for V accumulator vectors per row: at least 8 accumulators
// (the FMA latency times the 2 FMA pipes), at most 12 (registers).
constexpr int lockstep_rows(int V) { return V >= 7 ? 1 : (V >= 4 ? 2 : (V == 3 ? 3 : 8 / V)); }

// One chunk (features d0 .. d0+len) of the task's rows r_begin .. r_end (a multiple of R
// apart), tokens t0 .. t0 + 4V of the table; row r is A's row n0 + r and accumulator row r.
template <int DT, bool SIGNED, int V, int R>
DCAM_INLINE DCAM_TARGET_V3 void chunk_rows_v3(const void* A, int64_t D, int64_t n0, int64_t r_begin, int64_t r_end,
                                              int64_t d0, int64_t len, const WeightTable& tbl, int64_t t0,
                                              ProductScratch& s) {
    const int64_t neg_off = SIGNED ? tbl.neg - tbl.pos : 0, lv = len & ~int64_t(7);
    const int64_t ld = kProductChunk + 8;
    for (int64_t r0 = r_begin; r0 < r_end; r0 += R) {
        int64_t mr[R], mmax = 0;
        for (int j = 0; j < R; ++j) {
            const int64_t base = (n0 + r0 + j) * D + d0;
            prefetch_next_chunk<DT>(A, base, D - d0);
            float* v = s.vals + j * ld;
            int32_t* o = s.offs + j * ld;
            int64_t m = compact_chunk_v3<DT, SIGNED>(A, base, lv, d0, tbl.row, neg_off, v, o);
            m += compact_chunk<DT, SIGNED>(A, base + lv, len - lv, d0 + lv, tbl.row, neg_off, v + m, o + m);
            mr[j] = m;
            mmax = std::max(mmax, m);
        }
        for (int j = 0; j < R; ++j)
            for (int64_t e = mr[j]; e < mmax; ++e) {  // a zero entry adds 0 * finite weight = 0
                s.vals[j * ld + e] = 0.0f;
                s.offs[j * ld + e] = 0;
            }
        add_entries_v3<V, R>(s.vals, s.offs, ld, mmax, tbl.pos + t0, s.acc + r0 * tbl.width + t0, tbl.width);
    }
}

template <int DT, bool SIGNED, int V>
DCAM_INLINE DCAM_TARGET_V3 void chunk_v3(const void* A, int64_t D, int64_t n0, int64_t rows, int64_t d0, int64_t len,
                                         const WeightTable& tbl, int64_t t0, ProductScratch& s) {
    constexpr int R = lockstep_rows(V);
    const int64_t whole = rows / R * R;  // the rest one row at a time
    chunk_rows_v3<DT, SIGNED, V, R>(A, D, n0, 0, whole, d0, len, tbl, t0, s);
    if (R > 1) chunk_rows_v3<DT, SIGNED, V, 1>(A, D, n0, whole, rows, d0, len, tbl, t0, s);
}

template <int DT, bool SIGNED>
DCAM_TARGET_V3 void rows_v3(const void* A, int64_t D, int64_t n0, int64_t rows, const WeightTable& tbl,
                            ProductScratch& s) {
    const int64_t tw = tbl.width;
    for (int64_t d0 = 0; d0 < D; d0 += kProductChunk) {
        const int64_t len = std::min(kProductChunk, D - d0);
        for (int64_t t0 = 0; t0 < tw; t0 += kTokensPerPass) {
            const int v = static_cast<int>(std::min(kTokensPerPass, tw - t0) / 4);
#define DCAM_CALL(V) chunk_v3<DT, SIGNED, V>(A, D, n0, rows, d0, len, tbl, t0, s)
            DCAM_DISPATCH_V(v, DCAM_CALL)
#undef DCAM_CALL
        }
    }
}
#endif  // DCAM_HAVE_V3

template <int DT, bool SIGNED>
void rows_any(const void* A, int64_t D, int64_t n0, int64_t rows, const WeightTable& tbl, ProductScratch& s) {
#if DCAM_HAVE_V3
    if (cpu_is_x86_64_v3()) return rows_v3<DT, SIGNED>(A, D, n0, rows, tbl, s);
#endif
    rows_portable<DT, SIGNED>(A, D, n0, rows, tbl, s);
}

template <int DT>
void rows_dtype(const void* A, int64_t D, int64_t n0, int64_t rows, const WeightTable& tbl, ProductScratch& s) {
    if (tbl.neg)
        rows_any<DT, true>(A, D, n0, rows, tbl, s);
    else
        rows_any<DT, false>(A, D, n0, rows, tbl, s);
}

}  // namespace

int64_t weight_table_width(int64_t cnt) { return round_up(cnt, 4); }

int64_t weight_table_size(int64_t D, int64_t cnt, bool signed_w) {
    return (signed_w ? 2 : 1) * D * weight_table_width(cnt);
}

WeightTable build_weight_table(const float* w, int64_t D, int64_t cnt, bool signed_w, double* storage) {
    WeightTable t;
    t.width = weight_table_width(cnt);
    t.row = (signed_w ? 2 : 1) * t.width;
    t.cnt = cnt;
    t.pos = storage;
    t.neg = signed_w ? storage + t.width : nullptr;
    // Blocks of 16 features (one cache line of each token's row of w): the rows are D floats
    // apart, often a multiple of 4 KiB, so reading them column by column would keep evicting
    // each other from the same L1 set. The block is stored feature-major, 32 tokens a row.
    constexpr int64_t kB = 16;
    alignas(32) float block[kB * kTokensPerPass];
    for (int64_t d0 = 0; d0 < D; d0 += kB) {
        const int64_t nb = std::min(kB, D - d0);
        for (int64_t t0 = 0; t0 < t.width; t0 += kTokensPerPass) {
            const int64_t nt = std::min(kTokensPerPass, t.width - t0);  // a multiple of 4
            for (int64_t i = 0; i < nt; ++i)
                for (int64_t j = 0; j < kB; ++j)
                    block[j * kTokensPerPass + i] = t0 + i < cnt && j < nb ? w[(t0 + i) * D + d0 + j] : 0.0f;
            for (int64_t j = 0; j < nb; ++j) {
                double* row = storage + (d0 + j) * t.row + t0;
                for (int64_t i = 0; i < nt; i += 4) {  // vector selects: the signs are random
                    const v4f v = load4(block + j * kTokensPerPass + i);
                    const v4f zero = {0.f, 0.f, 0.f, 0.f};
                    if (!signed_w) {
                        store(row + i, to_f64(v));
                        continue;
                    }
                    store(row + i, to_f64(v < zero ? zero : v));
                    store(row + t.width + i, to_f64(v < zero ? v : zero));
                }
            }
        }
    }
    return t;
}

int64_t ProductScratch::doubles(int64_t rows, int64_t width) { return rows * width; }

void product_rows(const void* A, dcam_dtype dtype, int64_t D, int64_t n0, int64_t n1, const WeightTable& tbl,
                  double* raw, int64_t ldraw, ProductScratch& s) {
    const int64_t tw = tbl.width, rows = n1 - n0;
    std::fill(s.acc, s.acc + rows * tw, 0.0);
    switch (dtype) {
        case DCAM_F32: rows_dtype<DCAM_F32>(A, D, n0, rows, tbl, s); break;
        case DCAM_F16: rows_dtype<DCAM_F16>(A, D, n0, rows, tbl, s); break;
        default: rows_dtype<DCAM_BF16>(A, D, n0, rows, tbl, s); break;
    }
    for (int64_t i = 0; i < tbl.cnt; ++i)
        for (int64_t r = 0; r < rows; ++r) raw[i * ldraw + n0 + r] = s.acc[r * tw + i];
}

}  // namespace dcam
