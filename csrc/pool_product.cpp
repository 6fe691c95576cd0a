// The product of pooling with the activations (see pool.hpp):
//   raw[t, n] = sum_d max(A[n, d] * w[t, d], 0)
//            = sum_{d: A > 0} A[n, d] * W+[t, d] + sum_{d: A < 0} A[n, d] * W-[t, d].
// A task handles a block of rows for one weight table, with one of two kernels:
//
// Compacting kernel (by-feature tables; any CPU, any table size). Rows are read in chunks
// of kProductChunk activations, converted to float32 and compacted to those that take part
// (positive ones with grad_relu, nonzero ones otherwise; NaN always, so that it
// propagates as in the reference), each with the offset of its table row (W+ or W- by
// its sign). Then every compacted activation a adds a * table_row to the row's token
// accumulators: 8 tokens per AVX2 vector, up to 64 tokens in registers. The table slice
// of one chunk (kProductChunk feature rows) stays in L1 across the rows of the block.
// Compaction costs about a cycle per activation and table, and each multiply needs its
// own broadcast and offset: cheap beside 64 tokens' multiplies, dear beside 8.
//
// Dot-product kernel (by-token tables of at most kDotTokens tokens, AVX2 CPUs). A block
// of rows times a group of tokens, 8 features per vector: each activation vector is
// loaded once for the group's tokens and each weight vector once for the block's rows,
// and with signed weights W+ or W- is picked lane-wise by the activation's sign
// (blendv on its sign bit). It multiplies the zero activations too, which the
// compacting kernel skips, but needs no compaction: for few tokens it is ~2x faster.
//
// Both sum runs of features in float32 (FMA on AVX2, separate multiply and add in the
// portable code) and the runs in float64; see pool.hpp for the rounding bound.
#include <algorithm>

#include "pool.hpp"

#if DCAM_HAVE_V3
#include <immintrin.h>
#endif

namespace dcam {
namespace {

constexpr int64_t kTokensPerPass = 64;  // compacting kernel: tokens held in registers (8 x 8 floats)
constexpr int64_t kDotTokens = 16;      // largest table the dot-product kernel takes (measured crossover: 16-32)

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

// acc[0 .. 8V) += float64(sum_e vals[e] * tbl[offs[e] .. + 8V)), the run summed in float32.
template <int V>
DCAM_INLINE void add_entries(const float* vals, const int32_t* offs, int64_t m, const float* tbl, double* acc) {
    v8f c[V];
    for (int i = 0; i < V; ++i) c[i] = splat8(0.0f);
    for (int64_t e = 0; e < m; ++e) {
        const v8f a = splat8(vals[e]);
        const float* p = tbl + offs[e];
        for (int i = 0; i < V; ++i) c[i] += a * load8(p + 8 * i);
    }
    for (int i = 0; i < V; ++i) add8_f64(acc + 8 * i, c[i]);
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
                const int v = static_cast<int>(std::min(kTokensPerPass, tw - t0) / 8);
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

// acc_j[0 .. 8V) += float64(sum_e vals_j[e] * tbl[offs_j[e] .. + 8V)) for R rows j in lockstep
// (their lists padded with zero entries to the same length m), each run summed in float32
// with FMA: R * V independent accumulators keep both FMA pipes busy even for few tokens.
template <int V, int R>
DCAM_INLINE DCAM_TARGET_V3 void add_entries_v3(const float* vals, const int32_t* offs, int64_t ld, int64_t m,
                                               const float* tbl, double* acc, int64_t ldacc) {
    __m256 c[R][V];
    for (int j = 0; j < R; ++j)
        for (int i = 0; i < V; ++i) c[j][i] = _mm256_setzero_ps();
    for (int64_t e = 0; e < m; ++e) {
        for (int j = 0; j < R; ++j) {
            const __m256 a = _mm256_broadcast_ss(vals + j * ld + e);
            const float* p = tbl + offs[j * ld + e];
            for (int i = 0; i < V; ++i) c[j][i] = _mm256_fmadd_ps(a, _mm256_loadu_ps(p + 8 * i), c[j][i]);
        }
    }
    for (int j = 0; j < R; ++j)
        for (int i = 0; i < V; ++i) add8_f64_v3(acc + j * ldacc + 8 * i, c[j][i]);
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
            const int v = static_cast<int>(std::min(kTokensPerPass, tw - t0) / 8);
#define DCAM_CALL(V) chunk_v3<DT, SIGNED, V>(A, D, n0, rows, d0, len, tbl, t0, s)
            DCAM_DISPATCH_V(v, DCAM_CALL)
#undef DCAM_CALL
        }
    }
}
// ------------------------------------------------------------------ AVX2 dot-product kernel

// Half h of the 16 elements of a row at element o as float32: bfloat16 evens (h = 0) and
// odds (h = 1), the order of the by-token table; other dtypes the first and last 8.
template <int DT>
DCAM_INLINE DCAM_TARGET_V3 __m256 act_half_v3(const void* A, int64_t o, int h) {
    if (DT == DCAM_BF16) {
        const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(A) + o));
        return _mm256_castsi256_ps(h ? _mm256_and_si256(u, _mm256_set1_epi32(static_cast<int32_t>(0xffff0000u)))
                                     : _mm256_slli_epi32(u, 16));
    }
    const v8f x = load8_as_float<DT>(A, o + 8 * h);
    __m256 f;
    std::memcpy(&f, &x, sizeof(f));
    return f;
}

// Fixed-order sum of the 8 lanes.
DCAM_INLINE DCAM_TARGET_V3 float hsum8_v3(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// acc[r * ldacc + t] += the float32 sum over the features [d0, d0 + len) of
// max(A[row0 + r, d] * w[t, d], 0), for R rows and TT tokens (w rows ldw floats apart;
// len a multiple of 16, at most kDotRun). R * TT accumulators of 8 lanes.
template <int DT, bool SIGNED, int R, int TT>
DCAM_INLINE DCAM_TARGET_V3 void dot_block_v3(const void* A, int64_t D, int64_t row0, const float* wp,
                                             const float* wn, int64_t ldw, int64_t d0, int64_t len, double* acc,
                                             int64_t ldacc) {
    __m256 c[R][TT];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < TT; ++t) c[r][t] = _mm256_setzero_ps();
    for (int64_t d = d0; d < d0 + len; d += 16)
        for (int h = 0; h < 2; ++h) {
            __m256 a[R];
            for (int r = 0; r < R; ++r) {
                a[r] = act_half_v3<DT>(A, (row0 + r) * D + d, h);
                if (!SIGNED) a[r] = _mm256_max_ps(_mm256_setzero_ps(), a[r]);  // max(0, NaN) is NaN
            }
            for (int t = 0; t < TT; ++t) {
                const __m256 p = _mm256_loadu_ps(wp + t * ldw + d + 8 * h);
                if (SIGNED) {  // W- where the activation's sign bit is set, W+ elsewhere
                    const __m256 q = _mm256_loadu_ps(wn + t * ldw + d + 8 * h);
                    for (int r = 0; r < R; ++r) c[r][t] = _mm256_fmadd_ps(a[r], _mm256_blendv_ps(p, q, a[r]), c[r][t]);
                } else {
                    for (int r = 0; r < R; ++r) c[r][t] = _mm256_fmadd_ps(a[r], p, c[r][t]);
                }
            }
        }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < TT; ++t) acc[r * ldacc + t] += static_cast<double>(hsum8_v3(c[r][t]));
}

// Every row of a task for TT tokens: blocks of R rows (12 accumulators with signed weights,
// whose blend needs a register less per token; 8 without), the rest one row at a time.
template <int DT, bool SIGNED, int TT>
DCAM_INLINE DCAM_TARGET_V3 void dot_rows_v3(const void* A, int64_t D, int64_t n0, int64_t rows, const float* wp,
                                            const float* wn, int64_t ldw, int64_t d0, int64_t len, double* acc,
                                            int64_t ldacc) {
    constexpr int R = SIGNED ? 3 : 4;
    int64_t r = 0;
    for (; r + R <= rows; r += R)
        dot_block_v3<DT, SIGNED, R, TT>(A, D, n0 + r, wp, wn, ldw, d0, len, acc + r * ldacc, ldacc);
    for (; r < rows; ++r) dot_block_v3<DT, SIGNED, 1, TT>(A, D, n0 + r, wp, wn, ldw, d0, len, acc + r * ldacc, ldacc);
}

template <int DT, bool SIGNED>
DCAM_TARGET_V3 void rows_dot_v3(const void* A, int64_t D, int64_t n0, int64_t rows, const WeightTable& tbl,
                                ProductScratch& s) {
    constexpr int kTT = SIGNED ? 4 : 2;  // tokens per block (measured: 3x4 and 4x2 blocks fastest)
    const int64_t lv = D & ~int64_t(15), tw = tbl.width;
    for (int64_t d0 = 0; d0 < lv; d0 += kDotRun) {  // the rows' run stays in L1 across the tokens
        const int64_t len = std::min(kDotRun, lv - d0);
        for (int64_t t0 = 0; t0 < tbl.cnt; t0 += kTT) {
            const float* wp = tbl.pos + t0 * tbl.row;
            const float* wn = SIGNED ? tbl.neg + t0 * tbl.row : nullptr;
            double* acc = s.acc + t0;
#define DCAM_DOT(K) dot_rows_v3<DT, SIGNED, K>(A, D, n0, rows, wp, wn, tbl.row, d0, len, acc, tw)
            switch (std::min<int64_t>(kTT, tbl.cnt - t0)) {
                case 1: DCAM_DOT(1); break;
                case 2: DCAM_DOT(2); break;
                case 3: DCAM_DOT(3); break;
                default: DCAM_DOT(kTT); break;
            }
#undef DCAM_DOT
        }
    }
    // the features past the vector body, in the table's natural order (float64 products, exact)
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t d = lv; d < D; ++d) {
            const float a0 = load_elem<DT>(A, (n0 + r) * D + d);
            const float a = SIGNED || !(a0 < 0.f) ? a0 : 0.f;
            const float* w = SIGNED && a < 0.f ? tbl.neg : tbl.pos;
            for (int64_t i = 0; i < tbl.cnt; ++i)
                s.acc[r * tw + i] += static_cast<double>(a) * static_cast<double>(w[i * tbl.row + d]);
        }
}
#endif  // DCAM_HAVE_V3

template <int DT, bool SIGNED>
void rows_any(const void* A, int64_t D, int64_t n0, int64_t rows, const WeightTable& tbl, ProductScratch& s) {
#if DCAM_HAVE_V3
    // by-token tables are only made on AVX2 CPUs (weight_table_layout)
    if (tbl.layout == TableLayout::kByToken) return rows_dot_v3<DT, SIGNED>(A, D, n0, rows, tbl, s);
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

TableLayout weight_table_layout(int64_t cnt) {
#if DCAM_HAVE_V3
    if (cnt <= kDotTokens && cpu_is_x86_64_v3()) return TableLayout::kByToken;
#endif
    (void)cnt;
    return TableLayout::kByFeature;
}

int64_t weight_table_width(int64_t cnt) { return round_up(cnt, 8); }

int64_t weight_table_size(int64_t D, int64_t cnt, bool signed_w, TableLayout layout) {
    return (signed_w ? 2 : 1) * D * (layout == TableLayout::kByToken ? cnt : weight_table_width(cnt));
}

WeightTable make_weight_table(int64_t D, int64_t cnt, bool signed_w, TableLayout layout, dcam_dtype act_dtype,
                              float* storage) {
    WeightTable t;
    t.layout = layout;
    t.cnt = cnt;
    t.pos = storage;
    if (layout == TableLayout::kByToken) {
        t.width = cnt;
        t.row = D;
        t.neg = signed_w ? storage + cnt * D : nullptr;
        t.evens_first = act_dtype == DCAM_BF16;
        return t;
    }
    t.width = weight_table_width(cnt);
    t.row = (signed_w ? 2 : 1) * t.width;
    t.neg = signed_w ? storage + t.width : nullptr;
    for (int64_t d = 0; d < D && cnt < t.width; ++d) {  // the padding tokens weigh 0
        std::fill(t.pos + d * t.row + cnt, t.pos + d * t.row + t.width, 0.0f);
        if (t.neg) std::fill(t.neg + d * t.row + cnt, t.neg + d * t.row + t.width, 0.0f);
    }
    return t;
}

void fill_weight_table(const WeightTable& t, int64_t D, int64_t i, int64_t d0, int64_t len, const float* w) {
    const bool signed_w = t.neg != nullptr;
    if (t.layout == TableLayout::kByToken) {
        // bfloat16: in the vector body, feature 16q + 2k is stored at 16q + k and 16q + 2k + 1
        // at 16q + 8 + k (the even/odd halves the kernel converts a 16-element load into)
        const int64_t lv = D & ~int64_t(15);
        float* pos = t.pos + i * t.row;
        float* neg = signed_w ? t.neg + i * t.row : nullptr;
        for (int64_t j = 0; j < len; ++j) {
            const int64_t d = d0 + j, k = d & 15;
            const int64_t at = t.evens_first && d < lv ? (d - k) + (k & 1) * 8 + k / 2 : d;
            const float v = w[j];
            pos[at] = signed_w && v < 0.f ? 0.f : v;
            if (neg) neg[at] = v < 0.f ? v : 0.f;
        }
        return;
    }
    // by feature: token i's column, one float per feature row
    float* pos = t.pos + d0 * t.row + i;
    for (int64_t j = 0; j < len; ++j) {
        const float v = w[j];
        pos[j * t.row] = signed_w && v < 0.f ? 0.f : v;
        if (signed_w) pos[j * t.row + t.width] = v < 0.f ? v : 0.f;
    }
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
