// Sections 2-7 of the contract: AKD, DACG, CBA, clip + normalisation, SICD and
// the per-map statistics. One map is refined start to finish by one thread
// (OpenMP over maps) in thread-local scratch; nothing is allocated per map
// once the scratch has grown to the map size.
//
// AKD (the hot part) uses ranks instead of sorting every window:
//  * the map is reflect-padded to (h+2r) x (w+2r) cells; every cell gets a
//    distinct global rank (ascending value; ties by source pixel, then cell)
//    from one radix argsort of the h*w pixels plus a counting pass;
//  * the k x k window of a pixel is a set of k*k cells, held as a bitset over
//    the global ranks; moving one pixel right toggles 2k bits;
//  * the window's ascending order is the order of its set bits. Only the
//    ranks whose Gaussian weight exp(-d^2 / (2 sigma^2)) is above e^-106
//    (relative to the centre weight 1; below float32's smallest denormal, so a
//    weight the float32 reference can represent is never dropped: this keeps
//    tiny positive outputs positive, which matters for the nz() sets) are read: the first of them is found
//    from a word cursor that follows the window as it slides (plus a
//    branch-free in-word select), the others by ctz;
//  * weights u_d = q^(d^2), q = exp(-1/(2 sigma^2)), by the recurrence
//    q^((d+1)^2) = q^(d^2) * q^(2d+1): one exp per pixel, the centre weight is
//    exactly 1 (sigma -> 0 gives the median).
//  * each row runs in three passes (window statistics for the whole row,
//    bitset walk, weighted sums) so the unpredictable branches of the walk do
//    not serialise the long arithmetic chains.
// Window mean/std come from float64 column sums (no sliding subtraction, so an
// all-zero window has mean exactly 0).
//
// Percentiles (DACG, CBA) are order statistics found by a bucket select: one
// pass buckets the values monotonically (linear in the value), the bucket
// holding the wanted rank is partially sorted.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <new>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.hpp"
#include "dcam.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vector helpers are always inlined

namespace {

using namespace dcam;

// Rank weights below exp(-106) ~ 1e-46 (under float32's smallest denormal, 1.4e-45) are
// dropped: the float32 reference's exp underflows to 0 there too.
constexpr double kAkdLogCut = 106.0;
constexpr float kZetaMin = 1e-6f;    // DACG threshold floor
constexpr float kSicdBase = 0.05f;
constexpr float kSicdSpike = 0.02f;
constexpr float kSicdAlphaMax = 0.5f;
constexpr float kSicdGuard = 0.9f;
constexpr int64_t kMaxBitsetWords = 512;  // larger padded maps use the per-window sort path
constexpr int kSelBuckets = 256;

typedef float v8f __attribute__((vector_size(32)));
DCAM_INLINE v8f ld8(const float* p) {
    v8f v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
// element-wise (GCC turns __builtin_convertvector into two 128-bit converts here)
DCAM_INLINE v4d cvt(v4f v) { return v4d{static_cast<double>(v[0]), static_cast<double>(v[1]), static_cast<double>(v[2]), static_cast<double>(v[3])}; }
DCAM_INLINE double hsum(v4d v) { return (v[0] + v[1]) + (v[2] + v[3]); }

struct Scratch {
    std::vector<float> bufA, bufB, interf, vals, tmp, pad;
    std::vector<uint64_t> items, items2;
    std::vector<int32_t> order, rank_of, start, prank, Dx;
    std::vector<int32_t> ry, rx;
    std::vector<uint8_t> bkt, kind;
    std::vector<float> P, sval, mux;
    std::vector<uint64_t> bits;
    std::vector<double> colS, colQ, rowS, rowQ, invx, qx, accI;
};

template <class V>
inline void ensure(V& v, size_t n) {
    if (v.size() < n) v.resize(n);
}

// ------------------------------------------------------------------ reductions (float64)

DCAM_INLINE double sum_f64(const float* x, int64_t n) {
    v4d a0 = {0, 0, 0, 0}, a1 = a0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        a0 += cvt(load4(x + i));
        a1 += cvt(load4(x + i + 4));
    }
    double s = hsum(a0 + a1);
    for (; i < n; ++i) s += x[i];
    return s;
}

// Population mean and std, float64 two-pass, rounded to float32.
DCAM_INLINE void mean_std(const float* x, int64_t n, float& mean_f, float& std_f) {
    const double mu = sum_f64(x, n) / static_cast<double>(n);
    const v4d m4 = {mu, mu, mu, mu};
    v4d a0 = {0, 0, 0, 0}, a1 = a0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const v4d d0 = cvt(load4(x + i)) - m4, d1 = cvt(load4(x + i + 4)) - m4;
        a0 += d0 * d0;
        a1 += d1 * d1;
    }
    double q = hsum(a0 + a1);
    for (; i < n; ++i) {
        const double d = x[i] - mu;
        q += d * d;
    }
    mean_f = static_cast<float>(mu);
    std_f = static_cast<float>(std::sqrt(q / static_cast<double>(n)));
}

DCAM_INLINE void min_max(const float* x, int64_t n, float& lo, float& hi) {
    int64_t i = 0;
    float l = x[0], h = x[0];
    if (n >= 8) {
        v8f vl = ld8(x), vh = vl;
        for (i = 8; i + 8 <= n; i += 8) {
            const v8f v = ld8(x + i);
            vl = v < vl ? v : vl;
            vh = v > vh ? v : vh;
        }
        for (int j = 0; j < 8; ++j) {
            l = std::min(l, vl[j]);
            h = std::max(h, vh[j]);
        }
    }
    for (; i < n; ++i) {
        l = std::min(l, x[i]);
        h = std::max(h, x[i]);
    }
    lo = l;
    hi = h;
}

// ------------------------------------------------------------------ radix argsort

// Stable LSD radix sort of n items by their upper 32 bits (8-bit digits; a pass
// whose digit is the same for every item is skipped). Result in `a`.
inline void radix_sort_hi32(uint64_t* a, uint64_t* tmp, int64_t n) {
    uint32_t hist[4][256];
    std::memset(hist, 0, sizeof(hist));
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t k = static_cast<uint32_t>(a[i] >> 32);
        ++hist[0][k & 255];
        ++hist[1][(k >> 8) & 255];
        ++hist[2][(k >> 16) & 255];
        ++hist[3][k >> 24];
    }
    uint64_t* src = a;
    uint64_t* dst = tmp;
    for (int p = 0; p < 4; ++p) {
        const int shift = 32 + 8 * p;
        const uint32_t first = static_cast<uint32_t>(src[0] >> shift) & 255;
        if (hist[p][first] == static_cast<uint32_t>(n)) continue;
        uint32_t off[256];
        uint32_t s = 0;
        for (int d = 0; d < 256; ++d) {
            off[d] = s;
            s += hist[p][d];
        }
        for (int64_t i = 0; i < n; ++i) {
            const uint64_t v = src[i];
            dst[off[(v >> shift) & 255]++] = v;
        }
        std::swap(src, dst);
    }
    if (src != a) std::memcpy(a, src, static_cast<size_t>(n) * sizeof(uint64_t));
}

// order[g] = index of the g-th smallest value (ties by index).
inline void argsort_values(const float* x, int64_t n, int32_t* order, Scratch& S) {
    ensure(S.items, n);
    ensure(S.items2, n);
    uint64_t* it = S.items.data();
    for (int64_t i = 0; i < n; ++i) it[i] = (static_cast<uint64_t>(float_key(x[i])) << 32) | static_cast<uint32_t>(i);
    radix_sort_hi32(it, S.items2.data(), n);
    for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(static_cast<uint32_t>(it[i]));
}

// ------------------------------------------------------------------ order statistics (bucket select)

struct Selector {
    int64_t n = 0, n_pos = 0;  // values, and how many are > 0
    float vmin = 0, vmax = 0;
    bool constant = true;
    float* vals = nullptr;             // the values grouped by bucket (ascending buckets)
    uint32_t off[kSelBuckets + 1];     // bucket b holds vals[off[b] .. off[b+1])
};

// Buckets x[0..n) by floor((v - min) * scale) (float32 arithmetic: monotone in v) and
// groups the values by bucket (one counting-sort scatter).
DCAM_INLINE void sel_build(Selector& s, const float* x, int64_t n, Scratch& S) {
    s.n = n;
    min_max(x, n, s.vmin, s.vmax);
    int64_t pos = 0;
    for (int64_t i = 0; i < n; ++i) pos += x[i] > 0.0f;
    s.n_pos = pos;
    s.constant = !(s.vmax > s.vmin);
    if (s.constant) return;
    ensure(S.bkt, n);
    ensure(S.tmp, n);
    uint8_t* bkt = S.bkt.data();
    const float base = s.vmin;
    float scale = static_cast<float>(kSelBuckets) / (s.vmax - s.vmin);
    if (!(scale < 3.0e38f)) scale = 3.0e38f;  // range below float precision: still monotone
    const float top = static_cast<float>(kSelBuckets - 1);
    for (int64_t i = 0; i < n; ++i) {
        float f = (x[i] - base) * scale;
        f = f > 0.0f ? f : 0.0f;  // also NaN -> 0
        f = f < top ? f : top;
        bkt[i] = static_cast<uint8_t>(static_cast<int32_t>(f));
    }
    uint32_t hist[kSelBuckets];
    std::memset(hist, 0, sizeof(hist));
    for (int64_t i = 0; i < n; ++i) ++hist[bkt[i]];
    uint32_t acc = 0;
    for (int b = 0; b < kSelBuckets; ++b) {
        s.off[b] = acc;
        acc += hist[b];
    }
    s.off[kSelBuckets] = acc;
    uint32_t cur[kSelBuckets];
    std::memcpy(cur, s.off, sizeof(cur));
    s.vals = S.tmp.data();
    for (int64_t i = 0; i < n; ++i) s.vals[cur[bkt[i]]++] = x[i];
}

// The R-th smallest value (0-based), and optionally the (R+1)-th (R+1 < n). Reorders the
// values inside their buckets only.
DCAM_INLINE float sel_get(Selector& s, int64_t R, float* next) {
    if (s.constant) {
        if (next) *next = s.vmin;
        return s.vmin;
    }
    // last bucket b with off[b] <= R
    int lo = 0, hi = kSelBuckets;  // off[lo] <= R < off[hi]
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (static_cast<int64_t>(s.off[mid]) <= R)
            lo = mid;
        else
            hi = mid;
    }
    const int b = lo;
    float* beg = s.vals + s.off[b];
    float* end = s.vals + s.off[b + 1];
    const int64_t r = R - s.off[b];
    std::nth_element(beg, beg + r, end);
    const float v = beg[r];
    if (next) {
        if (beg + r + 1 < end) {
            *next = *std::min_element(beg + r + 1, end);
        } else {
            int b2 = b + 1;
            while (s.off[b2 + 1] == s.off[b2]) ++b2;
            *next = *std::min_element(s.vals + s.off[b2], s.vals + s.off[b2 + 1]);
        }
    }
    return v;
}

// numpy 'linear' percentile of the `cnt` values of rank offset .. offset+cnt-1 (cnt >= 1),
// position in float64 as the reference.
DCAM_INLINE float sel_percentile(Selector& s, int64_t offset, int64_t cnt, float q) {
    const double pos = static_cast<double>(q) / 100.0 * static_cast<double>(cnt - 1);
    double fl = std::floor(pos);
    if (!(fl >= 0.0)) fl = 0.0;
    if (fl > static_cast<double>(cnt - 1)) fl = static_cast<double>(cnt - 1);
    const int64_t lo = static_cast<int64_t>(fl);
    const float frac = static_cast<float>(pos - static_cast<double>(lo));
    if (frac > 0.0f && lo + 1 <= cnt - 1) {
        float hi;
        const float v = sel_get(s, offset + lo, &hi);
        return v + frac * (hi - v);
    }
    return sel_get(s, offset + lo, nullptr);
}

// ------------------------------------------------------------------ section 2

int64_t kernel_size_for(const float* r, int64_t h, int64_t w, int akd_kernel, float steps, float image_size) {
    int64_t k;
    if (akd_kernel > 0) {
        k = akd_kernel;
    } else {
        float mean_f, sd_f;
        mean_std(r, h * w, mean_f, sd_f);
        const float f_step = std::min(steps / 16.0f, 2.0f);
        const float f_std = std::min(5.0f * sd_f, 2.0f);
        const float f_size = std::min(image_size / 512.0f, 1.5f);
        float prod = 3.0f * f_step;
        prod = prod * f_std;
        prod = prod * f_size;
        const double fl = std::floor(static_cast<double>(prod));
        int64_t k0;
        if (fl != fl)
            k0 = 0;
        else if (fl > 1e6)
            k0 = 1000000;
        else if (fl < -1e6)
            k0 = -1000000;
        else
            k0 = static_cast<int64_t>(fl);
        if (((k0 % 2) + 2) % 2 == 0) k0 += 1;  // python/torch remainder semantics
        k = std::min<int64_t>(std::max<int64_t>(k0, 3), 11);
    }
    return std::min<int64_t>(k, 2 * std::min(h, w) - 1);
}

// Weighted central sum of the order statistics s[0..2D] (s[D] is rank c):
// sum_d q^(d^2) (s[D-d] + s[D+d]) / sum_d ..., centre weight 1.
DCAM_INLINE float rank_weighted(const float* s, int D, double inv) {
    double num = s[D], den = 1.0;
    if (D > 0) {
        const double q = std::exp(-inv);
        const double q2 = q * q;
        double p = 1.0, f = q;
        for (int d = 1; d <= D; ++d) {
            p *= f;   // q^(d^2)
            f *= q2;  // q^(2d+1)
            num += p * (static_cast<double>(s[D - d]) + static_cast<double>(s[D + d]));
            den += 2.0 * p;
        }
    }
    return static_cast<float>(num / den);
}

// Classify a window from its float64 sum / sum of squares: returns 0 (output 0),
// 1 (output mu: constant window) or 2 (rank-weighted; inv = 1/(2 sigma^2), D = half width).
DCAM_INLINE int window_kind(double s, double q, double dK, int64_t c, double& mu, double& inv, int& D) {
    mu = s / dK;
    if (!(mu > 0.0)) return 0;
    const double var = q / dK - mu * mu;
    if (!(var > 0.0)) return 1;
    const double r2 = var / (mu * mu);  // sigma^2
    inv = 0.5 / r2;
    const double dd = 2.0 * kAkdLogCut * r2;  // d^2 below which exp(-d^2 inv) >= e^-cut
    const double cc = static_cast<double>(c) * static_cast<double>(c);
    D = dd >= cc ? static_cast<int>(c) : static_cast<int>(std::sqrt(dd));
    return 2;
}

struct SelectTable {
    uint8_t pos[256][8];
    constexpr SelectTable() : pos() {
        for (int b = 0; b < 256; ++b) {
            int r = 0;
            for (int i = 0; i < 8; ++i)
                if (b >> i & 1) pos[b][r++] = static_cast<uint8_t>(i);
        }
    }
};
constexpr SelectTable kSelect{};

// Position of the r-th (0-based) set bit of x; requires r < popcount(x). Branch-free.
DCAM_INLINE int select64(uint64_t x, int r) {
    uint64_t s = x - ((x >> 1) & 0x5555555555555555ull);
    s = (s & 0x3333333333333333ull) + ((s >> 2) & 0x3333333333333333ull);
    s = (s + (s >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    const uint64_t pre = s * 0x0101010101010101ull;  // byte i: set bits in bytes 0..i
    const uint64_t rr = static_cast<uint64_t>(r) * 0x0101010101010101ull;
    const uint64_t le = ((rr | 0x8080808080808080ull) - pre) & 0x8080808080808080ull;  // bytes with pre <= r
    const int byte = static_cast<int>((((le >> 7) * 0x0101010101010101ull)) >> 56);
    const int shift = byte * 8;
    const int before = static_cast<int>(((pre << 8) >> shift) & 0xFF);
    return shift + kSelect.pos[(x >> shift) & 0xFF][r - before];
}

// Pass 1 of a row (both AKD paths): window sums from float64 column sums of the
// reflect-padded map P (row stride `stride`, padded rows y .. y+k-1), then the
// per-pixel classification (see window_kind). Arrays are indexed by x < w.
DCAM_INLINE void row_window_stats(const float* P, int64_t stride, int64_t y, int64_t k, int64_t w, int64_t Wp,
                                  int64_t c, Scratch& S) {
    double* colS = S.colS.data();
    double* colQ = S.colQ.data();
    double* rowS = S.rowS.data();
    double* rowQ = S.rowQ.data();
    for (int64_t px = 0; px < Wp; ++px) {
        colS[px] = 0.0;
        colQ[px] = 0.0;
    }
    for (int64_t i = 0; i < k; ++i) {
        const float* row = P + (y + i) * stride;
        for (int64_t px = 0; px < Wp; ++px) {
            const double v = row[px];
            colS[px] += v;
            colQ[px] += v * v;
        }
    }
    for (int64_t x = 0; x < w; ++x) {
        rowS[x] = 0.0;
        rowQ[x] = 0.0;
    }
    for (int64_t j = 0; j < k; ++j)
        for (int64_t x = 0; x < w; ++x) {
            rowS[x] += colS[x + j];
            rowQ[x] += colQ[x + j];
        }
    const double dK = static_cast<double>(k * k);
    for (int64_t x = 0; x < w; ++x) {
        double mu = 0.0, inv = 0.0;
        int D = 0;
        S.kind[x] = static_cast<uint8_t>(window_kind(rowS[x], rowQ[x], dK, c, mu, inv, D));
        S.mux[x] = static_cast<float>(mu);
        S.invx[x] = inv;
        S.Dx[x] = D;
    }
}

typedef int64_t v4l __attribute__((vector_size(32)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(DCAM_NO_NETWORK)
#define DCAM_HAVE_NETWORK 1
#define DCAM_NETWORK_TARGET __attribute__((target("arch=x86-64-v3")))
#else
#define DCAM_HAVE_NETWORK 0
#endif

// exp(-x) for x >= 0, lane-wise in float64 (|relative error| < 1e-15); 0 for x > 700 or NaN.
DCAM_INLINE v4d exp_neg(v4d x) {
    const v4d big = {700.0, 700.0, 700.0, 700.0};
    const v4l ok = x <= big;  // false for NaN too
    const v4d zero = {0, 0, 0, 0};
    x = ok ? x : zero;
    const v4d log2e = {1.4426950408889634, 1.4426950408889634, 1.4426950408889634, 1.4426950408889634};
    const v4d magic = {6755399441055744.0, 6755399441055744.0, 6755399441055744.0, 6755399441055744.0};  // 1.5*2^52
    v4d t = x * log2e + magic;  // round-to-nearest integer in the low mantissa bits
    v4l n;
    std::memcpy(&n, &t, sizeof(n));
    const v4d nd = t - magic;
    const v4d ln2hi = {6.93147180369123816490e-01, 6.93147180369123816490e-01, 6.93147180369123816490e-01,
                       6.93147180369123816490e-01};
    const v4d ln2lo = {1.90821492927058770002e-10, 1.90821492927058770002e-10, 1.90821492927058770002e-10,
                       1.90821492927058770002e-10};
    const v4d r = (nd * ln2hi - x) + nd * ln2lo;  // -(x - n ln2), |r| <= 0.35
    // e^r, Horner, degree 11 (|r| <= 0.347: truncation error < 1e-14 relative)
    v4d pl = {1.0 / 39916800.0, 1.0 / 39916800.0, 1.0 / 39916800.0, 1.0 / 39916800.0};
    const double c[11] = {1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0,
                          1.0 / 120.0,     1.0 / 24.0,     1.0 / 6.0,     0.5,          1.0,          1.0};
    for (int i = 0; i < 11; ++i) {
        const v4d ci = {c[i], c[i], c[i], c[i]};
        pl = pl * r + ci;
    }
    // scale by 2^-n
    const v4l lowmask = {0xFFFFFFFFll, 0xFFFFFFFFll, 0xFFFFFFFFll, 0xFFFFFFFFll};
    n = n & lowmask;  // n in [0, 1011]
    const v4l b1023 = {1023, 1023, 1023, 1023};
    const v4l ebits = (b1023 - n) << 52;
    v4d scale;
    std::memcpy(&scale, &ebits, sizeof(scale));
    const v4d res = pl * scale;
    return ok ? res : zero;
}

#if DCAM_HAVE_NETWORK
}  // namespace
#include "sortnet.hpp"
namespace {

// Networks of one window size (see csrc/sortnet.hpp).
#define DCAM_NET(k_, K_)                                                                             \
    template <>                                                                                      \
    struct Net<k_> {                                                                                 \
        static constexpr int slots = sortnet::kMergeSlots##k_;                                      \
        static constexpr const int* order = sortnet::kMerge##k_;                                    \
        DCAM_INLINE DCAM_NETWORK_TARGET static void full(sortnet::v8f* a) { sortnet::sort##K_(a); }  \
        DCAM_INLINE DCAM_NETWORK_TARGET static void shared(sortnet::v8f* a) { sortnet::sortS##k_(a); } \
        DCAM_INLINE DCAM_NETWORK_TARGET static void row(sortnet::v8f* a) { sortnet::sortR##k_(a); }  \
        DCAM_INLINE DCAM_NETWORK_TARGET static void merge(sortnet::v8f* a) { sortnet::merge##k_(a); } \
    };
template <int k>
struct Net;
DCAM_NET(3, 9)
DCAM_NET(5, 25)
DCAM_NET(7, 49)
DCAM_NET(9, 81)
DCAM_NET(11, 121)
#undef DCAM_NET

// Per-pixel window statistics of one output row (float64 column sums of the padded map,
// then across columns): q = exp(-1/(2 sigma^2)) where the window is rank-weighted, the mean
// (float) and the kind (0: output 0, 1: output the mean, 2: rank-weighted), for x < wv.
template <int k>
DCAM_INLINE DCAM_NETWORK_TARGET void network_row_stats(const float* P, int64_t stride, int64_t y, int64_t w,
                                                       int64_t wv, bool slide, double* colS, double* colQ,
                                                       double* rowS, double* rowQ, double* qx, float* mux,
                                                       uint8_t* kind) {
    constexpr int K = k * k;
    if (slide) {  // colS/colQ hold the sums of padded rows y-1 .. y+k-2: move down one row
        const float* old = P + (y - 1) * stride;
        const float* nw = P + (y + k - 1) * stride;
        for (int64_t px = 0; px < stride; ++px) {
            const double o = old[px], n = nw[px];
            colS[px] += n - o;
            colQ[px] += n * n - o * o;
        }
    } else {
        for (int64_t px = 0; px < stride; ++px) {
            colS[px] = 0.0;
            colQ[px] = 0.0;
        }
        for (int i = 0; i < k; ++i) {
            const float* row = P + (y + i) * stride;
            for (int64_t px = 0; px < stride; ++px) {
                const double v = row[px];
                colS[px] += v;
                colQ[px] += v * v;
            }
        }
    }
    {  // window sums: first window in full, then slide right
        double s = 0.0, q = 0.0;
        for (int j = 0; j < k; ++j) {
            s += colS[j];
            q += colQ[j];
        }
        rowS[0] = s;
        rowQ[0] = q;
        for (int64_t x = 1; x < w; ++x) {
            s += colS[x + k - 1] - colS[x - 1];
            q += colQ[x + k - 1] - colQ[x - 1];
            rowS[x] = s;
            rowQ[x] = q;
        }
        for (int64_t x = w; x < wv; ++x) {
            rowS[x] = 0.0;
            rowQ[x] = 0.0;
        }
    }
    const double invK = 1.0 / static_cast<double>(K);
    for (int64_t x = 0; x < wv; x += 4) {
        v4d sv, qv;
        std::memcpy(&sv, rowS + x, sizeof(sv));
        std::memcpy(&qv, rowQ + x, sizeof(qv));
        const v4d ik = {invK, invK, invK, invK};
        const v4d mu = sv * ik;
        const v4d var = qv * ik - mu * mu;
        const v4d zero = {0, 0, 0, 0};
        const v4l pos_mu = mu > zero, pos_var = var > zero;
        const v4d half = {0.5, 0.5, 0.5, 0.5};
        const v4d one = {1, 1, 1, 1};
        const v4d inv = half * (mu * mu) / (pos_var ? var : one);
        const v4d q = exp_neg(inv);
        const v4d qsel = (pos_mu & pos_var) ? q : zero;
        std::memcpy(qx + x, &qsel, sizeof(qsel));
        for (int l = 0; l < 4; ++l) {
            mux[x + l] = static_cast<float>(mu[l]);
            kind[x + l] = static_cast<uint8_t>(pos_mu[l] ? (pos_var[l] ? 2 : 1) : 0);
        }
    }
}

// Rank-Gaussian weighted sums of 8 sorted windows (lane l = pixel x0 + l): the p-th smallest
// value of lane l is af[order(p) * 8 + l], order = identity when ORDER is null.
template <int k>
DCAM_INLINE DCAM_NETWORK_TARGET void network_weights(const float* af, const int* order, const double* qx,
                                                     const float* mux, const uint8_t* kind, int64_t nl,
                                                     float* orow) {
    constexpr int K = k * k, c = (K - 1) / 2;
    auto at = [&](int p) { return af + (order ? order[p] : p) * 8; };
    float res[8];
    for (int hlf = 0; hlf < 2; ++hlf) {
        const int o = 4 * hlf;
        v4d q;
        std::memcpy(&q, qx + o, sizeof(q));
        const v4d q2 = q * q;
        const v4d cut = {1.0e-46, 1.0e-46, 1.0e-46, 1.0e-46};  // ~e^-106, see kAkdLogCut
        const v4d zero = {0, 0, 0, 0};
        v4d p = {1, 1, 1, 1}, f = q, den = p;
        v4d num = cvt(load4(at(c) + o));
        for (int d = 1; d <= c; ++d) {
            p *= f;
            f *= q2;
            const v4l live = p >= cut;
            if (!(live[0] | live[1] | live[2] | live[3])) break;
            p = live ? p : zero;  // a dead lane stays exactly 0 (no denormal arithmetic)
            f = live ? f : zero;
            const v4d lo = cvt(load4(at(c - d) + o));
            const v4d hi = cvt(load4(at(c + d) + o));
            num += p * (lo + hi);
            den += p + p;
        }
        const v4d rv = num / den;
        for (int l = 0; l < 4; ++l) res[o + l] = static_cast<float>(rv[l]);
    }
    for (int l = 0; l < nl; ++l) orow[l] = kind[l] == 0 ? 0.0f : (kind[l] == 1 ? mux[l] : res[l]);
}

// AKD with sorting networks, 8 horizontally neighbouring pixels at once (lane-wise min/max
// on AVX vectors). Two vertically adjacent rows share k-1 rows of their windows: those
// k(k-1) values are sorted once and merged with each window's own row.
template <int k>
DCAM_INLINE DCAM_NETWORK_TARGET void akd_network_t(const float* __restrict r, int64_t h, int64_t w,
                                                   float* __restrict out, Scratch& S) {
    constexpr int K = k * k, rr = (k - 1) / 2, m = k * (k - 1);
    constexpr int slots = Net<k>::slots, half = slots / 2;
    typedef sortnet::v8f v8;
    const int64_t Wp = w + 2 * rr, Hp = h + 2 * rr, stride = Wp + 8;
    const int64_t wv = (w + 7) & ~int64_t(7);  // row arrays padded to whole groups of 8
    ensure(S.P, Hp * stride);
    ensure(S.colS, stride);
    ensure(S.colQ, stride);
    ensure(S.rowS, wv);
    ensure(S.rowQ, wv);
    ensure(S.qx, 2 * wv);
    ensure(S.mux, 2 * wv);
    ensure(S.kind, 2 * wv);
    float* P = S.P.data();
    for (int64_t py = 0; py < Hp; ++py) {
        const float* src = r + reflect(py - rr, h) * w;
        float* dst = P + py * stride;
        for (int64_t px = 0; px < rr; ++px) dst[px] = src[reflect(px - rr, w)];
        std::memcpy(dst + rr, src, static_cast<size_t>(w) * sizeof(float));
        for (int64_t px = rr + w; px < Wp; ++px) dst[px] = src[reflect(px - rr, w)];
        for (int64_t px = Wp; px < stride; ++px) dst[px] = 0.0f;
    }
    double* qx = S.qx.data();
    float* mux = S.mux.data();
    uint8_t* kind = S.kind.data();
    alignas(32) v8 a[slots];
    alignas(32) v8 sh[m];
    alignas(32) v8 extra[k];
    for (int64_t y = 0; y < h; y += 2) {
        const bool pair = y + 1 < h;
        network_row_stats<k>(P, stride, y, w, wv, false, S.colS.data(), S.colQ.data(), S.rowS.data(),
                             S.rowQ.data(), qx, mux, kind);
        if (pair)
            network_row_stats<k>(P, stride, y + 1, w, wv, true, S.colS.data(), S.colQ.data(), S.rowS.data(),
                                 S.rowQ.data(), qx + wv, mux + wv, kind + wv);
        for (int64_t x0 = 0; x0 < w; x0 += 8) {
            const int64_t nl = std::min<int64_t>(8, w - x0);
            const float* base = P + y * stride + x0;  // padded row y = first window row of output y
            if (!pair) {
                for (int dy = 0; dy < k; ++dy)
                    for (int dx = 0; dx < k; ++dx) std::memcpy(&a[dy * k + dx], base + dy * stride + dx, sizeof(v8));
                Net<k>::full(a);
                network_weights<k>(reinterpret_cast<const float*>(a), nullptr, qx + x0, mux + x0, kind + x0, nl,
                                   out + y * w + x0);
                continue;
            }
            // padded rows y+1 .. y+k-1 are shared by the windows of outputs y and y+1
            for (int dy = 1; dy < k; ++dy)
                for (int dx = 0; dx < k; ++dx)
                    std::memcpy(&sh[(dy - 1) * k + dx], base + dy * stride + dx, sizeof(v8));
            Net<k>::shared(sh);
            for (int which = 0; which < 2; ++which) {
                const float* rowp = base + (which == 0 ? 0 : k) * stride;  // padded row y or y+k
                for (int dx = 0; dx < k; ++dx) std::memcpy(&extra[dx], rowp + dx, sizeof(v8));
                Net<k>::row(extra);
                std::memcpy(a, sh, sizeof(sh));
                std::memcpy(a + half, extra, sizeof(extra));
                Net<k>::merge(a);
                const int64_t off = which * wv;
                network_weights<k>(reinterpret_cast<const float*>(a), Net<k>::order, qx + off + x0, mux + off + x0,
                                   kind + off + x0, nl, out + (y + which) * w + x0);
            }
        }
    }
    (void)K;
}

// Only built for x86-64-v3 (AVX2): GCC lowers the 8-wide vector code of the
// networks very slowly (and poorly) for SSE2, so other CPUs take the bitset path.
DCAM_NETWORK_TARGET void akd_network(const float* r, int64_t h, int64_t w, int64_t k, float* out, Scratch& S) {
    switch (k) {
        case 3: akd_network_t<3>(r, h, w, out, S); break;
        case 5: akd_network_t<5>(r, h, w, out, S); break;
        case 7: akd_network_t<7>(r, h, w, out, S); break;
        case 9: akd_network_t<9>(r, h, w, out, S); break;
        default: akd_network_t<11>(r, h, w, out, S); break;
    }
}

bool network_supported() {
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
    return ok;
}
#endif

// AKD by global-rank bitsets (see the file comment). k >= 3, r = (k-1)/2 <= min(h,w)-1.
DCAM_HOT void akd_bitset(const float* __restrict r, int64_t h, int64_t w, int64_t k, float* __restrict out,
                         Scratch& S) {
    const int64_t rr = (k - 1) / 2, Hp = h + 2 * rr, Wp = w + 2 * rr, Np = Hp * Wp, N = h * w;
    const int64_t K = k * k, c = (K - 1) / 2;
    const int64_t words = (Np + 63) / 64;
    ensure(S.ry, Hp);
    ensure(S.rx, Wp);
    ensure(S.order, N);
    ensure(S.rank_of, N);
    ensure(S.start, N + 1);
    ensure(S.prank, Np);
    ensure(S.P, Np);
    ensure(S.sval, Np);
    ensure(S.bits, words + 2);
    ensure(S.colS, Wp);
    ensure(S.colQ, Wp);
    ensure(S.rowS, w);
    ensure(S.rowQ, w);
    ensure(S.invx, w);
    ensure(S.mux, w);
    ensure(S.Dx, w);
    ensure(S.kind, w);
    ensure(S.vals, w * K);
    int32_t* ry = S.ry.data();
    int32_t* rx = S.rx.data();
    for (int64_t i = 0; i < Hp; ++i) ry[i] = static_cast<int32_t>(reflect(i - rr, h));
    for (int64_t i = 0; i < Wp; ++i) rx[i] = static_cast<int32_t>(reflect(i - rr, w));

    // global ranks of the padded cells
    int32_t* order = S.order.data();
    int32_t* rank_of = S.rank_of.data();
    int32_t* start = S.start.data();
    argsort_values(r, N, order, S);
    for (int64_t g = 0; g < N; ++g) rank_of[order[g]] = static_cast<int32_t>(g);
    std::fill(start, start + N + 1, 0);
    float* P = S.P.data();
    int32_t* prank = S.prank.data();
    for (int64_t py = 0; py < Hp; ++py) {
        const int64_t srow = static_cast<int64_t>(ry[py]) * w;
        for (int64_t px = 0; px < Wp; ++px) {
            const int64_t src = srow + rx[px];
            const int32_t g = rank_of[src];
            prank[py * Wp + px] = g;  // temporarily the source rank
            P[py * Wp + px] = r[src];
            ++start[g + 1];
        }
    }
    for (int64_t g = 0; g < N; ++g) start[g + 1] += start[g];
    float* sval = S.sval.data();
    for (int64_t cell = 0; cell < Np; ++cell) {
        const int32_t p = start[prank[cell]]++;
        prank[cell] = p;
        sval[p] = P[cell];
    }

    uint64_t* bits = S.bits.data();
    const double* invx = S.invx.data();
    const float* mux = S.mux.data();
    const int32_t* Dx = S.Dx.data();
    const uint8_t* kind = S.kind.data();
    float* vals = S.vals.data();
    for (int64_t y = 0; y < h; ++y) {
        // ---- pass 1: window sums and classification for the whole row
        row_window_stats(P, Wp, y, k, w, Wp, c, S);

        // ---- pass 2: slide the window bitset along the row, read the central ranks
        std::fill(bits, bits + words + 2, uint64_t(0));
        for (int64_t i = 0; i < k; ++i) {
            const int32_t* row = prank + (y + i) * Wp;
            for (int64_t j = 0; j < k - 1; ++j) bits[row[j] >> 6] ^= uint64_t(1) << (row[j] & 63);
        }
        int64_t cw = 0;      // word cursor
        int64_t before = 0;  // set bits in words < cw
        for (int64_t x = 0; x < w; ++x) {
            {
                const int32_t* col_in = prank + y * Wp + x + 2 * rr;
                for (int64_t i = 0; i < k; ++i) {
                    const int32_t p = col_in[i * Wp];
                    bits[p >> 6] ^= uint64_t(1) << (p & 63);
                    before += (p >> 6) < cw;
                }
                if (x > 0) {
                    const int32_t* col_out = prank + y * Wp + x - 1;
                    for (int64_t i = 0; i < k; ++i) {
                        const int32_t p = col_out[i * Wp];
                        bits[p >> 6] ^= uint64_t(1) << (p & 63);
                        before -= (p >> 6) < cw;
                    }
                }
            }
            if (kind[x] != 2) continue;
            const int D = Dx[x];
            const int64_t t = c - D;  // first rank to read
            while (before > t) before -= __builtin_popcountll(bits[--cw]);
            for (;;) {
                const int64_t pc = __builtin_popcountll(bits[cw]);
                if (before + pc > t) break;
                before += pc;
                ++cw;
            }
            int64_t wi = cw;
            uint64_t cur = bits[wi];
            cur &= ~uint64_t(0) << select64(cur, static_cast<int>(t - before));
            float* vb = vals + x * K;
            const int cnt = 2 * D + 1;
            for (int j = 0; j < cnt; ++j) {
                vb[j] = sval[(wi << 6) + __builtin_ctzll(cur)];
                cur &= cur - 1;
                const bool z = cur == 0;
                const uint64_t nxt = bits[wi + 1];
                wi += z;
                cur = z ? nxt : cur;
                if (__builtin_expect(cur == 0, 0) && j + 1 < cnt) {
                    do cur = bits[++wi];
                    while (cur == 0);
                }
            }
        }

        // ---- pass 3: weighted sums
        float* orow = out + y * w;
        for (int64_t x = 0; x < w; ++x) {
            const int kd = kind[x];
            orow[x] = kd == 0 ? 0.0f : (kd == 1 ? mux[x] : rank_weighted(vals + x * K, Dx[x], invx[x]));
        }
    }
}

// AKD by gathering and partially sorting each window (for padded maps too big for bitsets).
DCAM_HOT void akd_sort(const float* __restrict r, int64_t h, int64_t w, int64_t k, float* __restrict out,
                       Scratch& S) {
    const int64_t rr = (k - 1) / 2, K = k * k, c = (K - 1) / 2;
    ensure(S.ry, h + 2 * rr);
    ensure(S.rx, w + 2 * rr);
    ensure(S.vals, K);
    int32_t* ry = S.ry.data();
    int32_t* rx = S.rx.data();
    for (int64_t i = 0; i < h + 2 * rr; ++i) ry[i] = static_cast<int32_t>(reflect(i - rr, h));
    for (int64_t i = 0; i < w + 2 * rr; ++i) rx[i] = static_cast<int32_t>(reflect(i - rr, w));
    float* win = S.vals.data();
    const double dK = static_cast<double>(K);
    for (int64_t y = 0; y < h; ++y) {
        for (int64_t x = 0; x < w; ++x) {
            double s = 0.0, q = 0.0;
            int64_t j = 0;
            for (int64_t dy = 0; dy < k; ++dy) {
                const float* row = r + static_cast<int64_t>(ry[y + dy]) * w;
                for (int64_t dx = 0; dx < k; ++dx) {
                    const float v = row[rx[x + dx]];
                    win[j++] = v;
                }
            }
            // sums in the same order as the bitset path (column sums, then across columns)
            for (int64_t dx = 0; dx < k; ++dx) {
                double cs = 0.0, cq = 0.0;
                for (int64_t dy = 0; dy < k; ++dy) {
                    const double v = win[dy * k + dx];
                    cs += v;
                    cq += v * v;
                }
                s += cs;
                q += cq;
            }
            double mu = 0.0, inv = 0.0;
            int D = 0;
            const int kd = window_kind(s, q, dK, c, mu, inv, D);
            float res;
            if (kd == 0) {
                res = 0.0f;
            } else if (kd == 1) {
                res = static_cast<float>(mu);
            } else {
                float* lo = win + (c - D);
                std::nth_element(win, lo, win + K);
                std::partial_sort(lo + 1, lo + 1 + 2 * D, win + K);
                res = rank_weighted(lo, D, inv);
            }
            out[y * w + x] = res;
        }
    }
}

// Test hook: 0 = automatic, 1 = sorting networks (k <= 9, AVX2), 2 = rank bitsets, 3 = per-window sort.
std::atomic<int> g_akd_path{0};

DCAM_INLINE void akd(const float* r, int64_t h, int64_t w, int64_t k, float* out, Scratch& S) {
    const int64_t N = h * w;
    if (k <= 1) {  // 1x1 window: mean = the value, std = 0
        for (int64_t i = 0; i < N; ++i) out[i] = r[i] > 0.0f ? r[i] : 0.0f;
        return;
    }
    const int path = g_akd_path.load(std::memory_order_relaxed);
#if DCAM_HAVE_NETWORK
    if (k <= 11 && network_supported() && (path == 0 || path == 1)) {
        akd_network(r, h, w, k, out, S);
        return;
    }
#endif
    const int64_t rr = (k - 1) / 2;
    const int64_t words = ((h + 2 * rr) * (w + 2 * rr) + 63) / 64;
    if (path == 3 || (path != 2 && words > kMaxBitsetWords))
        akd_sort(r, h, w, k, out, S);
    else
        akd_bitset(r, h, w, k, out, S);
}

// ------------------------------------------------------------------ section 3

// DACG of x into y (different buffers). Returns strategy (-1 none) and zeta.
DCAM_INLINE void dacg(const float* x, int64_t h, int64_t w, const float* prm, const float* g9, float* y,
                      int32_t& strategy, float& zeta_out, Scratch& S) {
    const int64_t N = h * w;
    Selector sel;
    sel_build(sel, x, N, S);
    const int64_t n_nz = sel.n_pos;
    if (n_nz == 0) {
        std::memcpy(y, x, static_cast<size_t>(N) * sizeof(float));
        strategy = -1;
        zeta_out = 0.0f;
        return;
    }
    float mu, sd;
    mean_std(x, N, mu, sd);
    const int st = sd > prm[0] ? 0 : (mu > prm[1] ? 1 : (mu < prm[2] ? 2 : 3));
    const float zeta = std::max(sel_percentile(sel, N - n_nz, n_nz, prm[3 + st]), kZetaMin);
    // reflect-padded copy (1 cell each side, 8 spare columns), then a 3x3 blur where x <= zeta
    const int64_t Wp = w + 2, ps = w + 10;
    ensure(S.pad, (h + 2) * ps);
    float* pad = S.pad.data();
    for (int64_t py = 0; py < h + 2; ++py) {
        const float* src = x + reflect(py - 1, h) * w;
        float* dst = pad + py * ps;
        dst[0] = src[reflect(-1, w)];
        std::memcpy(dst + 1, src, static_cast<size_t>(w) * sizeof(float));
        dst[w + 1] = src[reflect(w, w)];
        for (int64_t px = Wp; px < ps; ++px) dst[px] = 0.0f;
    }
    float gg[9];
    for (int i = 0; i < 9; ++i) gg[i] = g9[i];
    const v8f z8 = {zeta, zeta, zeta, zeta, zeta, zeta, zeta, zeta};
    for (int64_t yy = 0; yy < h; ++yy) {
        const float* rows[3] = {pad + yy * ps, pad + (yy + 1) * ps, pad + (yy + 2) * ps};
        const float* xr = x + yy * w;
        float* yr = y + yy * w;
        for (int64_t x0 = 0; x0 < w; x0 += 8) {
            v8f acc = ld8(rows[0] + x0) * gg[0];
            for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j) {
                    if (i == 0 && j == 0) continue;
                    acc = acc + ld8(rows[i] + x0 + j) * gg[i * 3 + j];
                }
            const v8f v = ld8(rows[1] + x0 + 1);  // == x
            const v8f r = v > z8 ? v : acc;
            const int64_t nl = std::min<int64_t>(8, w - x0);
            if (nl == 8)
                std::memcpy(yr + x0, &r, sizeof(r));
            else
                for (int l = 0; l < nl; ++l) yr[x0 + l] = r[l];
        }
        (void)xr;
    }
    strategy = st;
    zeta_out = zeta;
}

// ------------------------------------------------------------------ section 4

DCAM_INLINE void cba(float* e, int64_t N, const float* prm, float& tau_out, Scratch& S) {
    Selector sel;
    sel_build(sel, e, N, S);
    const int64_t n_nz = sel.n_pos;
    if (n_nz == 0) {
        tau_out = 0.0f;
        return;
    }
    const float med_nz = sel_percentile(sel, N - n_nz, n_nz, 50.0f);
    const float p60 = sel_percentile(sel, 0, N, 60.0f);
    v4d a0 = {0, 0, 0, 0};
    const v4f z4 = {0.f, 0.f, 0.f, 0.f};
    int64_t i0 = 0;
    for (; i0 + 4 <= N; i0 += 4) {
        const v4f v = load4(e + i0);
        a0 += cvt(v > z4 ? v : z4);
    }
    double snz = hsum(a0);
    for (; i0 < N; ++i0) snz += e[i0] > 0.0f ? static_cast<double>(e[i0]) : 0.0;
    const float mean_nz = static_cast<float>(snz) / static_cast<float>(n_nz);
    const float mx = sel.vmax;
    float tau = prm[0] * med_nz;
    tau = tau + prm[1] * p60;
    tau = tau + prm[2] * mean_nz;
    tau = tau + prm[3] * mx;
    const float tcl = std::max(tau, kEpsNorm);
    const float floor_ = prm[4];
    int64_t i = 0;
    {
        const v8f t8 = {tau, tau, tau, tau, tau, tau, tau, tau};
        const v8f c8 = {tcl, tcl, tcl, tcl, tcl, tcl, tcl, tcl};
        const v8f f8 = {floor_, floor_, floor_, floor_, floor_, floor_, floor_, floor_};
        for (; i + 8 <= N; i += 8) {
            const v8f v = ld8(e + i);
            v8f sc = v / c8;
            sc = sc < f8 ? f8 : sc;
            const v8f r = v < t8 ? v * sc : v;
            std::memcpy(e + i, &r, sizeof(r));
        }
    }
    for (; i < N; ++i) {
        const float v = e[i];
        float sc = v / tcl;
        sc = sc < floor_ ? floor_ : sc;
        e[i] = v < tau ? v * sc : v;
    }
    tau_out = tau;
}

// ------------------------------------------------------------------ section 5

DCAM_INLINE void clip_normalise(const float* x, int64_t N, float top, float* out) {
    for (int64_t i = 0; i < N; ++i) {
        float c = x[i] < 0.0f ? 0.0f : x[i];
        out[i] = top < c ? top : c;
    }
    float lo, hi;
    min_max(out, N, lo, hi);
    if (hi > lo) {
        const float den = (hi - lo) + kEpsNorm;
        for (int64_t i = 0; i < N; ++i) out[i] = (out[i] - lo) / den;
    }
}

// ------------------------------------------------------------------ section 6

// m' = max(m - alpha*I, 0) unless the range shrinks below 90% (then unchanged, alpha 0).
DCAM_INLINE float debias(float* m, int64_t N, const float* I, float alpha, bool apply, Scratch& S) {
    if (!apply) return 0.0f;
    float* sub = S.tmp.data();
    for (int64_t i = 0; i < N; ++i) {
        const float s = m[i] - alpha * I[i];
        sub[i] = s < 0.0f ? 0.0f : s;
    }
    float omin, omax, nmin, nmax;
    min_max(m, N, omin, omax);
    min_max(sub, N, nmin, nmax);
    const float rng_new = nmax - nmin;
    const float rng_old = omax - omin;
    if (rng_new < kSicdGuard * rng_old) return 0.0f;
    std::memcpy(m, sub, static_cast<size_t>(N) * sizeof(float));
    return alpha;
}

// sum(I*I) and sum(m*I): float32 products summed in float64, each rounded once
// (the least-squares scale of both SICD modes).
DCAM_INLINE void least_squares_sums(const float* m, const float* I, int64_t N, float& ii_out, float& mi_out) {
    v4d ai = {0, 0, 0, 0}, am = ai;
    int64_t i = 0;
    for (; i + 4 <= N; i += 4) {
        const v4f iv = load4(I + i);
        ai += cvt(iv * iv);
        am += cvt(load4(m + i) * iv);
    }
    double ii = hsum(ai), mi = hsum(am);
    for (; i < N; ++i) {
        ii += static_cast<double>(I[i] * I[i]);
        mi += static_cast<double>(m[i] * I[i]);
    }
    ii_out = static_cast<float>(ii);
    mi_out = static_cast<float>(mi);
}

DCAM_INLINE float sicd_reference(float* m, int64_t N, float rho, Scratch& S) {
    float mean_f, std_f;
    mean_std(m, N, mean_f, std_f);
    const float thr = mean_f + 2.0f * std_f;
    const float a = kSicdBase * rho;
    const float b = a + kSicdSpike;
    const float a0 = a + 0.0f * kSicdSpike;
    float* I = S.interf.data();
    int64_t spikes = 0;
    for (int64_t i = 0; i < N; ++i) {
        const bool sp = m[i] > thr;
        I[i] = sp ? b : a0;
        spikes += sp;
    }
    const float imax = spikes == 0 ? a0 : (spikes == N ? b : std::max(a0, b));
    const bool apply = imax != 0.0f;
    float alpha = 0.0f;
    if (apply) {
        float ii, mi;
        least_squares_sums(m, I, N, ii, mi);
        alpha = mi / ii;
        alpha = kSicdAlphaMax < alpha ? kSicdAlphaMax : alpha;
    }
    return debias(m, N, I, alpha, apply, S);
}

DCAM_INLINE float sicd_context(float* m, int64_t N, int64_t T, const float* wrow, const float* ctx /*[T, N]*/,
                               Scratch& S) {
    double ws = 0.0;
    for (int64_t i = 0; i < T; ++i) ws += wrow[i];
    const float den = static_cast<float>(ws) + kEpsNorm;
    double* accI = S.accI.data();
    std::fill(accI, accI + N, 0.0);
    for (int64_t i = 0; i < T; ++i) {
        const float wi = wrow[i] / den;
        if (wi == 0.0f) continue;
        const double wd = wi;
        const float* cm = ctx + i * N;
        for (int64_t n = 0; n < N; ++n) accI[n] += wd * static_cast<double>(cm[n]);
    }
    float* I = S.interf.data();
    for (int64_t n = 0; n < N; ++n) I[n] = static_cast<float>(accI[n]);
    float iif, mi;
    least_squares_sums(m, I, N, iif, mi);
    const bool apply = iif != 0.0f;
    float alpha = 0.0f;
    if (apply) {
        alpha = mi / iif;
        alpha = alpha < 0.0f ? 0.0f : alpha;
        alpha = 1.0f < alpha ? 1.0f : alpha;
    }
    return debias(m, N, I, alpha, apply, S);
}

// ------------------------------------------------------------------ one map

struct MapArgs {
    const float* raw;
    const float* ctx;   // [T, N] of this image (context mode)
    const float* wrow;  // [T] (context mode)
    bool degenerate;
    float steps, image_size, rho;
    int64_t h, w, T;
};

struct MapStats {
    int32_t k, strategy;
    float dacg_thr, cba_thr, alpha;
};

DCAM_HOT MapStats refine_one(const MapArgs& a, const dcam_refine_config& cfg, const float* g9, float* out,
                             Scratch& S) {
    const int64_t h = a.h, w = a.w, N = h * w;
    MapStats st{0, -1, 0.0f, 0.0f, 0.0f};
    st.k = static_cast<int32_t>(kernel_size_for(a.raw, h, w, cfg.akd_kernel, a.steps, a.image_size));
    if (a.degenerate) {
        std::fill(out, out + N, 0.0f);
        return st;
    }
    ensure(S.bufA, N);
    ensure(S.bufB, N);
    ensure(S.interf, N);
    ensure(S.tmp, N);
    ensure(S.accI, N);
    const float* cur = a.raw;
    if (cfg.akd) {
        akd(a.raw, h, w, st.k, S.bufA.data(), S);
        cur = S.bufA.data();
    }
    if (cfg.dacg) {
        float* dst = cur == S.bufA.data() ? S.bufB.data() : S.bufA.data();
        dacg(cur, h, w, cfg.dacg_params, g9, dst, st.strategy, st.dacg_thr, S);
        cur = dst;
    }
    if (cfg.cba) {
        float* mut = const_cast<float*>(cur);
        if (cur == a.raw) {
            std::memcpy(S.bufA.data(), a.raw, static_cast<size_t>(N) * sizeof(float));
            mut = S.bufA.data();
        }
        cba(mut, N, cfg.cba_params, st.cba_thr, S);
        cur = mut;
    }
    float rlo, top;
    min_max(a.raw, N, rlo, top);
    clip_normalise(cur, N, top, out);
    if (cfg.sicd == DCAM_SICD_REFERENCE)
        st.alpha = sicd_reference(out, N, a.rho, S);
    else if (cfg.sicd == DCAM_SICD_CONTEXT)
        st.alpha = sicd_context(out, N, a.T, a.wrow, a.ctx, S);
    return st;
}

}  // namespace

// Internal test hook (not in dcam.h): force an AKD implementation, see g_akd_path.
extern "C" void dcam_internal_set_akd_path(int path) { g_akd_path.store(path); }

extern "C" int dcam_refine(const float* raw, const uint8_t* degenerate, const float* steps, const float* image_size,
                           const float* repeat_ratio, const float* context_maps, const float* context_weights,
                           int64_t B, int64_t T, int64_t h, int64_t w, const dcam_refine_config* cfg,
                           float* maps_out, int32_t* kernel_size, int32_t* dacg_strategy, float* dacg_threshold,
                           float* cba_threshold, float* sicd_alpha) {
    if (!cfg) return DCAM_EINVAL_NULL;
    if (B < 0 || T < 0 || h < 1 || w < 1) return DCAM_EINVAL_SHAPE;
    if (cfg->akd_kernel < 0 || (cfg->akd_kernel > 0 && cfg->akd_kernel % 2 == 0)) return DCAM_EINVAL_CONFIG;
    if (cfg->sicd < DCAM_SICD_OFF || cfg->sicd > DCAM_SICD_CONTEXT) return DCAM_EINVAL_CONFIG;
    if (B == 0 || T == 0) return DCAM_OK;
    if (!raw || !maps_out) return DCAM_EINVAL_NULL;
    if (cfg->akd_kernel == 0 && (!steps || !image_size)) return DCAM_EINVAL_NULL;
    if (cfg->sicd == DCAM_SICD_REFERENCE && !repeat_ratio) return DCAM_EINVAL_NULL;
    if (cfg->sicd == DCAM_SICD_CONTEXT && !context_weights) return DCAM_EINVAL_NULL;
    if (h * w >= (int64_t(1) << 31) / 16) return DCAM_EINVAL_SHAPE;  // int32 ranks of padded cells

    // normalised 3x3 Gaussian of DACG, float32 as the reference computes it
    float g9[9];
    {
        const float sig = cfg->dacg_params[7];
        const float den = static_cast<float>(2.0 * static_cast<double>(sig) * static_cast<double>(sig));
        float tot = 0.0f;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
                const float dy = static_cast<float>(i - 1), dx = static_cast<float>(j - 1);
                g9[i * 3 + j] = std::exp(-(dy * dy + dx * dx) / den);
                tot += g9[i * 3 + j];
            }
        for (float& g : g9) g = g / tot;
    }

    const int64_t N = h * w, M = B * T;
    const float* ctx_all = context_maps ? context_maps : raw;
    bool oom = false;
    const int nthreads = static_cast<int>(std::min<int64_t>(max_threads(), M));
#pragma omp parallel num_threads(nthreads)
    {
        Scratch S;
#pragma omp for schedule(dynamic, 2)
        for (int64_t m = 0; m < M; ++m) {
            if (oom) continue;
            const int64_t b = m / T;
            MapArgs a;
            a.raw = raw + m * N;
            a.ctx = ctx_all + b * T * N;
            a.wrow = context_weights ? context_weights + m * T : nullptr;
            a.degenerate = degenerate ? degenerate[m] != 0 : false;
            a.steps = steps ? steps[b] : 0.0f;
            a.image_size = image_size ? image_size[b] : 0.0f;
            a.rho = repeat_ratio ? repeat_ratio[b] : 0.0f;
            a.h = h;
            a.w = w;
            a.T = T;
            try {
                const MapStats st = refine_one(a, *cfg, g9, maps_out + m * N, S);
                if (kernel_size) kernel_size[m] = st.k;
                if (dacg_strategy) dacg_strategy[m] = st.strategy;
                if (dacg_threshold) dacg_threshold[m] = st.dacg_thr;
                if (cba_threshold) cba_threshold[m] = st.cba_thr;
                if (sicd_alpha) sicd_alpha[m] = st.alpha;
            } catch (const std::bad_alloc&) {
#pragma omp atomic write
                oom = true;
            }
        }
    }
    return oom ? DCAM_ENOMEM : DCAM_OK;
}
