// Sections 2-7 of the contract: AKD, DACG, CBA, clip + normalisation, SICD and
// the per-map statistics. One map is refined start to finish by one thread
// (OpenMP over maps) in thread-local scratch; nothing is allocated per map
// once the scratch has grown to the map size.
//
// AKD (the hot part) uses ranks instead of sorting every window:
//  * the map is reflect-padded to (h+2r) x (w+2r) cells; every cell gets a
//    distinct global rank (ascending value, ties by source pixel then cell),
//    from one radix argsort of the h*w pixels plus a counting pass;
//  * the k x k window of a pixel is a set of k*k cells, held as a bitset over
//    the global ranks; moving one pixel right toggles 2k bits;
//  * the window's ascending order is the order of its set bits, so the j-th
//    order statistic is found with popcounts, and only the ranks whose Gaussian
//    weight is above e^-36 (relative to the centre weight 1) are read;
//  * weights u_d = q^(d^2), q = exp(-1/(2 sigma^2)), by the recurrence
//    q^((d+1)^2) = q^(d^2) * q^(2d+1): one exp per pixel, the centre weight is
//    exactly 1 (sigma -> 0 gives the median).
// Window mean/std come from float64 column sums (no sliding subtraction, so an
// all-zero window has mean exactly 0).
#include <algorithm>
#include <cmath>
#include <new>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.hpp"
#include "dcam.h"

namespace {

using namespace dcam;

constexpr double kAkdLogCut = 36.0;    // rank weights below exp(-36) ~ 2e-16 are dropped
constexpr float kZetaMin = 1e-6f;      // DACG threshold floor
constexpr float kSicdBase = 0.05f;
constexpr float kSicdSpike = 0.02f;
constexpr float kSicdAlphaMax = 0.5f;
constexpr float kSicdGuard = 0.9f;
constexpr int64_t kMaxBitsetWords = 512;  // larger padded maps use the per-window sort path

struct Scratch {
    std::vector<float> bufA, bufB, sorted, interf, win;
    std::vector<uint64_t> items, items2;
    std::vector<int32_t> order, rank_of, start, prank;
    std::vector<int32_t> ry, rx;
    std::vector<float> P, sval;
    std::vector<uint64_t> bits;
    std::vector<double> colS, colQ;
};

template <class V>
inline void ensure(V& v, size_t n) {
    if (v.size() < n) v.resize(n);
}

// ------------------------------------------------------------------ radix sort

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

// Ascending copy of x[0..n).
inline void sort_values(const float* x, int64_t n, float* out, Scratch& S) {
    ensure(S.items, n);
    ensure(S.items2, n);
    uint64_t* it = S.items.data();
    for (int64_t i = 0; i < n; ++i) it[i] = static_cast<uint64_t>(float_key(x[i])) << 32;
    radix_sort_hi32(it, S.items2.data(), n);
    for (int64_t i = 0; i < n; ++i) out[i] = key_float(static_cast<uint32_t>(it[i] >> 32));
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

// First index of a sorted array with value > 0 (start of nz()).
inline int64_t first_positive(const float* s, int64_t n) {
    return std::upper_bound(s, s + n, 0.0f) - s;
}

// numpy 'linear' percentile of an ascending array (n >= 1), position in float64 as the reference.
inline float percentile_sorted(const float* s, int64_t n, float q) {
    const double pos = static_cast<double>(q) / 100.0 * static_cast<double>(n - 1);
    double fl = std::floor(pos);
    if (!(fl >= 0.0)) fl = 0.0;
    if (fl > static_cast<double>(n - 1)) fl = static_cast<double>(n - 1);
    const int64_t lo = static_cast<int64_t>(fl);
    const float frac = static_cast<float>(pos - static_cast<double>(lo));
    const int64_t hi = std::min(lo + 1, n - 1);
    float p = s[lo];
    if (frac > 0.0f) p = p + frac * (s[hi] - s[lo]);
    return p;
}

// Population mean and std, float64 two-pass, rounded to float32.
inline void mean_std(const float* x, int64_t n, float& mean_f, float& std_f) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += x[i];
    const double mu = s / static_cast<double>(n);
    double q = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        const double d = x[i] - mu;
        q += d * d;
    }
    mean_f = static_cast<float>(mu);
    std_f = static_cast<float>(std::sqrt(q / static_cast<double>(n)));
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

// Weighted central sum of the order statistics s[0..2D] (s[D] the median rank c):
// sum_d q^(d^2) (s[D-d] + s[D+d]) / sum_d ..., centre weight 1.
DCAM_INLINE float rank_weighted(const float* s, int D, double inv) {
    double num = s[D], den = 1.0;
    if (D > 0) {
        const double q = std::exp(-inv);
        const double q2 = q * q;
        double p = 1.0, f = q;
        for (int d = 1; d <= D; ++d) {
            p *= f;  // q^(d^2)
            f *= q2; // q^(2d+1)
            num += p * (static_cast<double>(s[D - d]) + static_cast<double>(s[D + d]));
            den += 2.0 * p;
        }
    }
    return static_cast<float>(num / den);
}

// Number of ranks on each side of the centre whose weight exp(-d^2 inv) >= exp(-cut).
DCAM_INLINE int central_halfwidth(double inv, int64_t c) {
    if (inv * static_cast<double>(c) * static_cast<double>(c) <= kAkdLogCut) return static_cast<int>(c);
    return static_cast<int>(std::sqrt(kAkdLogCut / inv));  // < c here
}

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
    ensure(S.bits, words + 1);
    ensure(S.colS, Wp);
    ensure(S.colQ, Wp);
    ensure(S.win, K);
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
    double* colS = S.colS.data();
    double* colQ = S.colQ.data();
    float* sbuf = S.win.data();
    const double dK = static_cast<double>(K);
    for (int64_t y = 0; y < h; ++y) {
        // column sums of padded rows y .. y+2r
        for (int64_t px = 0; px < Wp; ++px) {
            double s = 0.0, q = 0.0;
            for (int64_t i = 0; i < k; ++i) {
                const double v = P[(y + i) * Wp + px];
                s += v;
                q += v * v;
            }
            colS[px] = s;
            colQ[px] = q;
        }
        std::fill(bits, bits + words + 1, uint64_t(0));
        for (int64_t i = 0; i < k; ++i) {
            const int32_t* row = prank + (y + i) * Wp;
            for (int64_t j = 0; j < k - 1; ++j) bits[row[j] >> 6] ^= uint64_t(1) << (row[j] & 63);
        }
        for (int64_t x = 0; x < w; ++x) {
            // window = padded cols x .. x+2r: add col x+2r, drop col x-1
            {
                const int32_t* col_in = prank + y * Wp + x + 2 * rr;
                for (int64_t i = 0; i < k; ++i) {
                    const int32_t p = col_in[i * Wp];
                    bits[p >> 6] ^= uint64_t(1) << (p & 63);
                }
                if (x > 0) {
                    const int32_t* col_out = prank + y * Wp + x - 1;
                    for (int64_t i = 0; i < k; ++i) {
                        const int32_t p = col_out[i * Wp];
                        bits[p >> 6] ^= uint64_t(1) << (p & 63);
                    }
                }
            }
            double s = 0.0, q = 0.0;
            for (int64_t j = 0; j < k; ++j) {
                s += colS[x + j];
                q += colQ[x + j];
            }
            const double mu = s / dK;
            float res;
            if (!(mu > 0.0)) {
                res = 0.0f;
            } else {
                const double var = q / dK - mu * mu;
                if (!(var > 0.0)) {
                    res = static_cast<float>(mu);
                } else {
                    const double inv = 0.5 * (mu * mu) / var;  // 1 / (2 sigma^2)
                    const int D = central_halfwidth(inv, c);
                    // locate order statistic c - D, then read 2D+1 consecutive ranks
                    int64_t need = c - D;
                    int64_t wi = 0;
                    uint64_t word;
                    for (;;) {
                        word = bits[wi];
                        const int64_t pc = __builtin_popcountll(word);
                        if (need < pc) break;
                        need -= pc;
                        ++wi;
                    }
                    while (need-- > 0) word &= word - 1;
                    const int cnt = 2 * D + 1;
                    for (int j = 0; j < cnt; ++j) {
                        while (word == 0) word = bits[++wi];
                        sbuf[j] = sval[(wi << 6) + __builtin_ctzll(word)];
                        word &= word - 1;
                    }
                    res = rank_weighted(sbuf, D, inv);
                }
            }
            out[y * w + x] = res;
        }
    }
}

// AKD by gathering and sorting each window (for padded maps too big for bitsets).
DCAM_HOT void akd_sort(const float* __restrict r, int64_t h, int64_t w, int64_t k, float* __restrict out,
                       Scratch& S) {
    const int64_t rr = (k - 1) / 2, K = k * k, c = (K - 1) / 2;
    ensure(S.ry, h + 2 * rr);
    ensure(S.rx, w + 2 * rr);
    ensure(S.win, K);
    int32_t* ry = S.ry.data();
    int32_t* rx = S.rx.data();
    for (int64_t i = 0; i < h + 2 * rr; ++i) ry[i] = static_cast<int32_t>(reflect(i - rr, h));
    for (int64_t i = 0; i < w + 2 * rr; ++i) rx[i] = static_cast<int32_t>(reflect(i - rr, w));
    float* win = S.win.data();
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
                    s += v;
                    q += static_cast<double>(v) * v;
                }
            }
            const double mu = s / dK;
            float res;
            if (!(mu > 0.0)) {
                res = 0.0f;
            } else {
                const double var = q / dK - mu * mu;
                if (!(var > 0.0)) {
                    res = static_cast<float>(mu);
                } else {
                    const double inv = 0.5 * (mu * mu) / var;
                    const int D = central_halfwidth(inv, c);
                    float* lo = win + (c - D);
                    std::nth_element(win, lo, win + K);
                    std::sort(lo + 1, win + K);  // only the first 2D+1 after lo matter, keep it simple
                    res = rank_weighted(lo, D, inv);
                }
            }
            out[y * w + x] = res;
        }
    }
}

void akd(const float* r, int64_t h, int64_t w, int64_t k, float* out, Scratch& S) {
    const int64_t N = h * w;
    if (k <= 1) {  // 1x1 window: mean = the value, std = 0
        for (int64_t i = 0; i < N; ++i) out[i] = r[i] > 0.0f ? r[i] : 0.0f;
        return;
    }
    const int64_t rr = (k - 1) / 2;
    const int64_t words = ((h + 2 * rr) * (w + 2 * rr) + 63) / 64;
    if (words <= kMaxBitsetWords)
        akd_bitset(r, h, w, k, out, S);
    else
        akd_sort(r, h, w, k, out, S);
}

// ------------------------------------------------------------------ section 3

// DACG of x into y (different buffers). Returns strategy (-1 none) and zeta.
void dacg(const float* x, int64_t h, int64_t w, const float* prm, const float* g9, float* y, int32_t& strategy,
          float& zeta_out, Scratch& S) {
    const int64_t N = h * w;
    float* sorted = S.sorted.data();
    sort_values(x, N, sorted, S);
    const int64_t p0 = first_positive(sorted, N);
    const int64_t n_nz = N - p0;
    if (n_nz == 0) {
        std::memcpy(y, x, static_cast<size_t>(N) * sizeof(float));
        strategy = -1;
        zeta_out = 0.0f;
        return;
    }
    float mu, sd;
    mean_std(x, N, mu, sd);
    const int st = sd > prm[0] ? 0 : (mu > prm[1] ? 1 : (mu < prm[2] ? 2 : 3));
    const float zeta = std::max(percentile_sorted(sorted + p0, n_nz, prm[3 + st]), kZetaMin);
    for (int64_t yy = 0; yy < h; ++yy) {
        const float* rows[3] = {x + reflect(yy - 1, h) * w, x + yy * w, x + reflect(yy + 1, h) * w};
        for (int64_t xx = 0; xx < w; ++xx) {
            const float v = x[yy * w + xx];
            if (v > zeta) {
                y[yy * w + xx] = v;
                continue;
            }
            const int64_t cols[3] = {reflect(xx - 1, w), xx, reflect(xx + 1, w)};
            double acc = 0.0;
            for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j) acc += static_cast<double>(rows[i][cols[j]] * g9[i * 3 + j]);
            y[yy * w + xx] = static_cast<float>(acc);
        }
    }
    strategy = st;
    zeta_out = zeta;
}

// ------------------------------------------------------------------ section 4

void cba(float* e, int64_t N, const float* prm, float& tau_out, Scratch& S) {
    float* sorted = S.sorted.data();
    sort_values(e, N, sorted, S);
    const int64_t p0 = first_positive(sorted, N);
    const int64_t n_nz = N - p0;
    if (n_nz == 0) {
        tau_out = 0.0f;
        return;
    }
    const float med_nz = percentile_sorted(sorted + p0, n_nz, 50.0f);
    const float p60 = percentile_sorted(sorted, N, 60.0f);
    double snz = 0.0;
    for (int64_t i = p0; i < N; ++i) snz += sorted[i];
    const float mean_nz = static_cast<float>(snz) / static_cast<float>(n_nz);
    float mx = e[0];
    for (int64_t i = 1; i < N; ++i) mx = std::max(mx, e[i]);
    float tau = prm[0] * med_nz;
    tau = tau + prm[1] * p60;
    tau = tau + prm[2] * mean_nz;
    tau = tau + prm[3] * mx;
    const float tcl = std::max(tau, kEpsNorm);
    const float floor_ = prm[4];
    for (int64_t i = 0; i < N; ++i) {
        const float v = e[i];
        if (v < tau) {
            float sc = v / tcl;
            sc = sc < floor_ ? floor_ : sc;
            e[i] = v * sc;
        }
    }
    tau_out = tau;
}

// ------------------------------------------------------------------ section 5

void clip_normalise(const float* x, int64_t N, float top, float* out) {
    float lo = 0.0f, hi = 0.0f;
    for (int64_t i = 0; i < N; ++i) {
        float c = x[i] < 0.0f ? 0.0f : x[i];
        c = top < c ? top : c;
        out[i] = c;
        if (i == 0) {
            lo = hi = c;
        } else {
            lo = std::min(lo, c);
            hi = std::max(hi, c);
        }
    }
    if (hi > lo) {
        const float den = (hi - lo) + kEpsNorm;
        for (int64_t i = 0; i < N; ++i) out[i] = (out[i] - lo) / den;
    }
}

// ------------------------------------------------------------------ section 6

// m' = max(m - alpha*I, 0) unless the range shrinks below 90% (then unchanged, alpha 0).
// I given either as a vector or, when I == nullptr, by the two values (ia, ib) chosen by spike[i].
float debias(float* m, int64_t N, const float* I, float alpha, bool apply) {
    if (!apply) return 0.0f;
    float omin = m[0], omax = m[0], nmin = 0.f, nmax = 0.f;
    for (int64_t i = 0; i < N; ++i) {
        float s = m[i] - alpha * I[i];
        s = s < 0.0f ? 0.0f : s;
        omin = std::min(omin, m[i]);
        omax = std::max(omax, m[i]);
        if (i == 0) {
            nmin = nmax = s;
        } else {
            nmin = std::min(nmin, s);
            nmax = std::max(nmax, s);
        }
    }
    const float rng_new = nmax - nmin;
    const float rng_old = omax - omin;
    if (rng_new < kSicdGuard * rng_old) return 0.0f;
    for (int64_t i = 0; i < N; ++i) {
        const float s = m[i] - alpha * I[i];
        m[i] = s < 0.0f ? 0.0f : s;
    }
    return alpha;
}

float sicd_reference(float* m, int64_t N, float rho, Scratch& S) {
    float mean_f, std_f;
    mean_std(m, N, mean_f, std_f);
    const float thr = mean_f + 2.0f * std_f;
    const float a = kSicdBase * rho;
    const float b = a + kSicdSpike;
    const float a0 = a + 0.0f * kSicdSpike;
    float* I = S.interf.data();
    double ii = 0.0, mi = 0.0;
    float imax = 0.0f;
    for (int64_t i = 0; i < N; ++i) {
        const float v = m[i] > thr ? b : a0;
        I[i] = v;
        imax = i == 0 ? v : std::max(imax, v);
        ii += static_cast<double>(v * v);
        mi += static_cast<double>(m[i] * v);
    }
    const bool apply = imax != 0.0f;
    float alpha = 0.0f;
    if (apply) {
        alpha = static_cast<float>(mi) / static_cast<float>(ii);
        alpha = kSicdAlphaMax < alpha ? kSicdAlphaMax : alpha;
    }
    return debias(m, N, I, alpha, apply);
}

float sicd_context(float* m, int64_t N, int64_t T, const float* wrow, const float* ctx /*[T, N]*/, Scratch& S) {
    double ws = 0.0;
    for (int64_t i = 0; i < T; ++i) ws += wrow[i];
    const float den = static_cast<float>(ws) + kEpsNorm;
    double* accI = S.colS.data();  // reuse as float64 accumulator of size N
    std::fill(accI, accI + N, 0.0);
    for (int64_t i = 0; i < T; ++i) {
        const float wi = wrow[i] / den;
        if (wi == 0.0f) continue;
        const double wd = wi;
        const float* cm = ctx + i * N;
        for (int64_t n = 0; n < N; ++n) accI[n] += wd * static_cast<double>(cm[n]);
    }
    float* I = S.interf.data();
    double ii = 0.0, mi = 0.0;
    for (int64_t n = 0; n < N; ++n) {
        const float v = static_cast<float>(accI[n]);
        I[n] = v;
        ii += static_cast<double>(v * v);
        mi += static_cast<double>(m[n] * v);
    }
    const float iif = static_cast<float>(ii);
    const bool apply = iif != 0.0f;
    float alpha = 0.0f;
    if (apply) {
        alpha = static_cast<float>(mi) / iif;
        alpha = alpha < 0.0f ? 0.0f : alpha;
        alpha = 1.0f < alpha ? 1.0f : alpha;
    }
    return debias(m, N, I, alpha, apply);
}

// ------------------------------------------------------------------ one map

struct MapArgs {
    const float* raw;
    const float* ctx;      // [T, N] of this image (context mode)
    const float* wrow;     // [T] (context mode)
    bool degenerate;
    float steps, image_size, rho;
    int64_t h, w, T;
};

struct MapStats {
    int32_t k, strategy;
    float dacg_thr, cba_thr, alpha;
};

MapStats refine_one(const MapArgs& a, const dcam_refine_config& cfg, const float* g9, float* out, Scratch& S) {
    const int64_t h = a.h, w = a.w, N = h * w;
    MapStats st{0, -1, 0.0f, 0.0f, 0.0f};
    st.k = static_cast<int32_t>(kernel_size_for(a.raw, h, w, cfg.akd_kernel, a.steps, a.image_size));
    if (a.degenerate) {
        std::fill(out, out + N, 0.0f);
        return st;
    }
    ensure(S.bufA, N);
    ensure(S.bufB, N);
    ensure(S.sorted, N);
    ensure(S.interf, N);
    ensure(S.colS, N);
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
    float top = a.raw[0];
    for (int64_t i = 1; i < N; ++i) top = std::max(top, a.raw[i]);
    clip_normalise(cur, N, top, out);
    if (cfg.sicd == DCAM_SICD_REFERENCE)
        st.alpha = sicd_reference(out, N, a.rho, S);
    else if (cfg.sicd == DCAM_SICD_CONTEXT)
        st.alpha = sicd_context(out, N, a.T, a.wrow, a.ctx, S);
    return st;
}

int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

}  // namespace

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
    if (h * w > (int64_t(1) << 30)) return DCAM_EINVAL_SHAPE;

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
