// Sections 3-7 of the contract (DACG, CBA, clip + normalisation, SICD, the per-map
// statistics) and the refinement driver dcam_refine; AKD (section 2) is in akd*.cpp.
// One map is refined start to finish by one thread (OpenMP over maps) in
// thread-local scratch; nothing is allocated per map once the scratch has grown to
// the map size.
//
// Percentiles (DACG, CBA) are order statistics found by a bucket select (select.hpp).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <new>
#include <vector>

#include "akd.hpp"
#include "refine.hpp"
#include "common.hpp"
#include "dcam.h"
#include "reduce.hpp"
#include "select.hpp"
#include "simd.hpp"

namespace {

using namespace dcam;

constexpr float kZetaMin = static_cast<float>(DCAM_ZETA_MIN);  // DACG threshold floor
constexpr float kSicdBase = static_cast<float>(DCAM_SICD_BASE);
constexpr float kSicdSpike = static_cast<float>(DCAM_SICD_SPIKE);
constexpr float kSicdSpikeStds = static_cast<float>(DCAM_SICD_SPIKE_STDS);
constexpr float kSicdAlphaMax = static_cast<float>(DCAM_SICD_ALPHA_MAX);
constexpr float kSicdRangeGuard = static_cast<float>(DCAM_SICD_RANGE_GUARD);

// Everything one thread allocates to refine its maps (grown on demand, reused).
struct MapScratch {
    std::vector<float> stage_a, stage_b;  // outputs of the steps (ping-pong)
    std::vector<float> blur_pad;          // DACG: reflect-padded copy of its input
    std::vector<float> interference;      // SICD: I
    std::vector<float> debiased;          // SICD: max(m - alpha I, 0) before the range guard
    std::vector<double> interference_acc; // SICD context mode: float64 sums of I
    SelectBuffers select;                 // DACG / CBA percentiles
    AkdScratch akd;
};

// ------------------------------------------------------------------ section 3

// x reflect-padded by one cell into pad (row stride w + 10: 8 spare zero columns for
// 8-wide loads).
DCAM_INLINE void pad_one(const float* x, int64_t h, int64_t w, float* pad) {
    const int64_t ps = w + 10;
    for (int64_t py = 0; py < h + 2; ++py) {
        const float* src = x + reflect(py - 1, h) * w;
        float* dst = pad + py * ps;
        dst[0] = src[reflect(-1, w)];
        std::memcpy(dst + 1, src, static_cast<size_t>(w) * sizeof(float));
        dst[w + 1] = src[reflect(w, w)];
        std::fill(dst + w + 2, dst + ps, 0.0f);
    }
}

// y = x where x > zeta, else the 3x3 blur g9 of x (neighbours read through reflect).
DCAM_INLINE void gate(const float* x, int64_t h, int64_t w, float zeta, const float* g9, float* y, float* pad) {
    pad_one(x, h, w, pad);
    const int64_t ps = w + 10;
    const v8f z8 = splat8(zeta);
    for (int64_t yy = 0; yy < h; ++yy) {
        const float* rows[3] = {pad + yy * ps, pad + (yy + 1) * ps, pad + (yy + 2) * ps};
        float* yr = y + yy * w;
        for (int64_t x0 = 0; x0 < w; x0 += 8) {
            v8f acc = load8(rows[0] + x0) * g9[0];
            for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j) {
                    if (i == 0 && j == 0) continue;
                    acc = acc + load8(rows[i] + x0 + j) * g9[i * 3 + j];
                }
            const v8f v = load8(rows[1] + x0 + 1);  // == x
            const v8f r = v > z8 ? v : acc;
            const int64_t nl = std::min<int64_t>(8, w - x0);
            if (nl == 8)
                store(yr + x0, r);
            else
                for (int l = 0; l < nl; ++l) yr[x0 + l] = r[l];
        }
    }
}

// DACG of x into y (different buffers). Returns strategy (-1 none) and zeta.
DCAM_INLINE void dacg(const float* x, int64_t h, int64_t w, const float* prm, const float* g9, float* y,
                      int32_t& strategy, float& zeta_out, MapScratch& S) {
    const int64_t N = h * w;
    Selector sel;
    selector_build(sel, x, N, S.select);
    const int64_t n_nz = sel.n_pos;
    if (n_nz == 0) {
        std::memcpy(y, x, static_cast<size_t>(N) * sizeof(float));
        strategy = -1;
        zeta_out = 0.0f;
        return;
    }
    // the strategy decided as in exact arithmetic: the float64 mean and std against the thresholds (rounded
    // to float32 first, a mean of 0.3500000071 became 0.35 itself and was not "above 0.35")
    double mu, sd;
    mean_std64(x, N, mu, sd);
    const int st = sd > static_cast<double>(prm[0]) ? 0 : (mu > static_cast<double>(prm[1]) ? 1 :
                   (mu < static_cast<double>(prm[2]) ? 2 : 3));
    float s_lo;
    const float zeta = std::max(selector_percentile(sel, N - n_nz, n_nz, prm[3 + st], &s_lo), kZetaMin);
    ensure(S.blur_pad, (h + 2) * (w + 10));
    // f > zeta as in exact arithmetic: f > max(s_lo, zeta_min), the sorted value at the percentile's
    // floor (zeta rounded up to the next value blurred a pixel the exact zeta keeps)
    gate(x, h, w, std::max(s_lo, kZetaMin), g9, y, S.blur_pad.data());
    strategy = st;
    zeta_out = zeta;
}

// The normalised 3x3 Gaussian of DACG, float32 as the reference computes it.
void dacg_blur_weights(float sigma, float* g9) {
    const float den = static_cast<float>(2.0 * static_cast<double>(sigma) * static_cast<double>(sigma));
    float tot = 0.0f;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            const float dy = static_cast<float>(i - 1), dx = static_cast<float>(j - 1);
            g9[i * 3 + j] = std::exp(-(dy * dy + dx * dx) / den);
            tot += g9[i * 3 + j];
        }
    for (int i = 0; i < 9; ++i) g9[i] = g9[i] / tot;
}

// ------------------------------------------------------------------ section 4

// mean of the positive values (n_pos of them), float64 sum rounded once.
DCAM_INLINE float mean_positive(const float* e, int64_t N, int64_t n_pos) {
    v4d a0 = splat4d(0.0);
    int64_t i = 0;
    for (; i + 4 <= N; i += 4) a0 += to_f64(relu4(load4(e + i)));
    double s = hsum(a0);
    for (; i < N; ++i) s += e[i] > 0.0f ? static_cast<double>(e[i]) : 0.0;
    return static_cast<float>(s) / static_cast<float>(n_pos);
}

// e[i] < tau: e[i] * max(e[i] / max(tau, eps), floor), in place.
DCAM_INLINE void attenuate(float* e, int64_t N, float tau, float floor_) {
    const float tcl = std::max(tau, kEpsNorm);
    int64_t i = 0;
    const v8f t8 = splat8(tau), c8 = splat8(tcl), f8 = splat8(floor_);
    for (; i + 8 <= N; i += 8) {
        const v8f v = load8(e + i);
        v8f sc = v / c8;
        sc = sc < f8 ? f8 : sc;
        store(e + i, v < t8 ? v * sc : v);
    }
    for (; i < N; ++i) {
        const float v = e[i];
        float sc = v / tcl;
        sc = sc < floor_ ? floor_ : sc;
        e[i] = v < tau ? v * sc : v;
    }
}

DCAM_INLINE void cba(float* e, int64_t N, const float* prm, float& tau_out, MapScratch& S) {
    Selector sel;
    selector_build(sel, e, N, S.select);
    const int64_t n_nz = sel.n_pos;
    if (n_nz == 0) {
        tau_out = 0.0f;
        return;
    }
    const float med_nz = selector_percentile(sel, N - n_nz, n_nz, 50.0f);
    const float p60 = selector_percentile(sel, 0, N, 60.0f);
    const float mean_nz = mean_positive(e, N, n_nz);
    float tau = prm[0] * med_nz;
    tau = tau + prm[1] * p60;
    tau = tau + prm[2] * mean_nz;
    tau = tau + prm[3] * sel.vmax;
    attenuate(e, N, tau, prm[4]);
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
DCAM_INLINE float debias(float* m, int64_t N, const float* I, float alpha, bool apply, MapScratch& S) {
    if (!apply) return 0.0f;
    float* sub = S.debiased.data();
    for (int64_t i = 0; i < N; ++i) {
        const float s = m[i] - alpha * I[i];
        sub[i] = s < 0.0f ? 0.0f : s;
    }
    float omin, omax, nmin, nmax;
    min_max(m, N, omin, omax);
    min_max(sub, N, nmin, nmax);
    const float rng_new = nmax - nmin;
    const float rng_old = omax - omin;
    if (rng_new < kSicdRangeGuard * rng_old) return 0.0f;
    std::memcpy(m, sub, static_cast<size_t>(N) * sizeof(float));
    return alpha;
}

// sum(I*I) and sum(m*I): float32 products summed in float64, each rounded once
// (the least-squares scale of both SICD modes).
DCAM_INLINE void least_squares_sums(const float* m, const float* I, int64_t N, float& ii_out, float& mi_out) {
    v4d ai = splat4d(0.0), am = ai;
    int64_t i = 0;
    for (; i + 4 <= N; i += 4) {
        const v4f iv = load4(I + i);
        ai += to_f64(iv * iv);
        am += to_f64(load4(m + i) * iv);
    }
    double ii = hsum(ai), mi = hsum(am);
    for (; i < N; ++i) {
        ii += static_cast<double>(I[i] * I[i]);
        mi += static_cast<double>(m[i] * I[i]);
    }
    ii_out = static_cast<float>(ii);
    mi_out = static_cast<float>(mi);
}

// sum(I*I) and sum(m*I) with float64 products, not rounded (context mode): float64 holds the square
// of any float32, so a tiny I (weights of 1e-31) no longer underflows to ii == 0 and alpha == 0.
DCAM_INLINE void least_squares_sums64(const float* m, const float* I, int64_t N, double& ii_out, double& mi_out) {
    v4d ai = splat4d(0.0), am = ai;
    int64_t i = 0;
    for (; i + 4 <= N; i += 4) {
        const v4d iv = to_f64(load4(I + i));
        ai += iv * iv;
        am += to_f64(load4(m + i)) * iv;
    }
    double ii = hsum(ai), mi = hsum(am);
    for (; i < N; ++i) {
        ii += static_cast<double>(I[i]) * static_cast<double>(I[i]);
        mi += static_cast<double>(m[i]) * static_cast<double>(I[i]);
    }
    ii_out = ii;
    mi_out = mi;
}

DCAM_INLINE float sicd_reference(float* m, int64_t N, float rho, MapScratch& S) {
    float mean_f, std_f;
    mean_std(m, N, mean_f, std_f);
    const float thr = mean_f + kSicdSpikeStds * std_f;
    const float a = kSicdBase * rho;
    const float b = a + kSicdSpike;
    const float a0 = a + 0.0f * kSicdSpike;
    float* I = S.interference.data();
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
        // mi >= 0 (m and I are non-negative). mi == 0 (an all-zero map) means alpha = 0, also
        // where I*I underflowed to ii == 0 (a tiny repeat ratio), which would make it 0/0.
        alpha = mi / ii;
        alpha = kSicdAlphaMax < alpha ? kSicdAlphaMax : alpha;
        alpha = mi > 0.0f ? alpha : 0.0f;
    }
    return debias(m, N, I, alpha, apply, S);
}

// ctx_degenerate: [T] flags of the context maps when they are the raw maps (else null): a degenerate raw
// map is 0 everywhere (section 1), whatever values the caller's array holds, and adds nothing
DCAM_INLINE float sicd_context(float* m, int64_t N, int64_t T, const float* wrow, const float* ctx /*[T, N]*/,
                               const uint8_t* ctx_degenerate, MapScratch& S) {
    double ws = 0.0;
    for (int64_t i = 0; i < T; ++i) ws += wrow[i];
    const float den = static_cast<float>(ws) + kEpsNorm;
    double* accI = S.interference_acc.data();
    std::fill(accI, accI + N, 0.0);
    for (int64_t i = 0; i < T; ++i) {
        const float wi = wrow[i] / den;
        if (wi == 0.0f || (ctx_degenerate && ctx_degenerate[i])) continue;
        const double wd = wi;
        const float* cm = ctx + i * N;
        for (int64_t n = 0; n < N; ++n) accI[n] += wd * static_cast<double>(cm[n]);
    }
    float* I = S.interference.data();
    for (int64_t n = 0; n < N; ++n) I[n] = static_cast<float>(accI[n]);
    double ii, mi;
    least_squares_sums64(m, I, N, ii, mi);
    const bool apply = ii != 0.0;
    float alpha = 0.0f;
    if (apply) {  // the ratio in float64 too, rounded once (a float32 ii of 1e-46 was 0)
        double a = mi / ii;
        a = a < 0.0 ? 0.0 : a;
        a = 1.0 < a ? 1.0 : a;
        alpha = static_cast<float>(a);
    }
    return debias(m, N, I, alpha, apply, S);
}

// ------------------------------------------------------------------ one map

struct MapArgs {
    const float* raw;
    const float* ctx;   // [T, N] of this image (context mode)
    const uint8_t* ctx_degenerate;  // [T] of this image where ctx is the raw maps, else null
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
                             MapScratch& S) {
    const int64_t h = a.h, w = a.w, N = h * w;
    MapStats st{0, -1, 0.0f, 0.0f, 0.0f};
    st.k = static_cast<int32_t>(akd_kernel_size(a.raw, h, w, cfg.akd_kernel, a.steps, a.image_size));
    if (a.degenerate) {
        std::fill(out, out + N, 0.0f);
        return st;
    }
    ensure(S.stage_a, N);
    ensure(S.stage_b, N);
    ensure(S.interference, N);
    ensure(S.debiased, N);
    ensure(S.interference_acc, N);
    const float* cur = a.raw;
    if (cfg.akd) {
        akd(a.raw, h, w, st.k, S.stage_a.data(), S.akd);
        cur = S.stage_a.data();
    }
    if (cfg.dacg) {
        float* dst = cur == S.stage_a.data() ? S.stage_b.data() : S.stage_a.data();
        dacg(cur, h, w, cfg.dacg_params, g9, dst, st.strategy, st.dacg_thr, S);
        cur = dst;
    }
    if (cfg.cba) {
        float* mut = const_cast<float*>(cur);
        if (cur == a.raw) {
            std::memcpy(S.stage_a.data(), a.raw, static_cast<size_t>(N) * sizeof(float));
            mut = S.stage_a.data();
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
        st.alpha = sicd_context(out, N, a.T, a.wrow, a.ctx, a.ctx_degenerate, S);
    return st;
}

// The ranges CamConfig enforces in Python, for C callers (a NaN or zero sigma made every
// gated map NaN; percentiles past 100 read outside the sorted values). NaN fails every test.
bool in_range(float v, float lo, float hi) { return v >= lo && v <= hi; }

constexpr double kCbaWeightSumMax = 3.4e38;  // CamConfig's bound on sum(cba_weights)

bool valid_params(const dcam_refine_config& c) {
    const float* d = c.dacg_params;
    const float* b = c.cba_params;
    const float fmax = 3.4028234663852886e38f;
    if (!in_range(d[0], 0.f, 1.f) || !in_range(d[1], 0.f, 1.f) || !in_range(d[2], 0.f, d[1])) return false;
    for (int i = 3; i < 7; ++i)
        if (!in_range(d[i], 0.f, 100.f)) return false;
    if (!in_range(d[7], 1e-18f, fmax)) return false;  // 2*sigma^2 stays a normal float32
    // the CBA threshold is the weights' sum of statistics in [0, 1]: their sum must stay within float32's
    // range as CamConfig requires (four weights of 3e38 gave cba_threshold = +inf), in float64 as Python sums
    double weight_sum = 0.0;
    for (int i = 0; i < 4; ++i) {
        if (!in_range(b[i], 0.f, fmax)) return false;
        weight_sum += static_cast<double>(b[i]);
    }
    if (!(weight_sum <= kCbaWeightSumMax)) return false;
    return in_range(b[4], 0.f, 1.f);
}

// The per-image values and context weights the Python layer checks, for C callers (a NaN
// repeat ratio made every map NaN; a NaN or negative step count silently gave kernel 3):
// only those the configuration reads; a non-zero diagonal weight let a word's own map into its
// interference. NaN fails every test.
bool valid_values(const float* steps, const float* image_size, const float* repeat_ratio,
                  const float* context_weights, int64_t B, int64_t T, const dcam_refine_config& c) {
    const float fmax = 3.4028234663852886e38f;
    for (int64_t b = 0; b < B; ++b) {
        if (c.akd_kernel == 0 && !(in_range(steps[b], 0.f, fmax) && steps[b] > 0.f &&
                                   in_range(image_size[b], 0.f, fmax) && image_size[b] > 0.f))
            return false;
        if (c.sicd == DCAM_SICD_REFERENCE && !in_range(repeat_ratio[b], 0.f, 1.f)) return false;
    }
    if (c.sicd != DCAM_SICD_CONTEXT) return true;
    for (int64_t r = 0; r < B * T; ++r) {  // each row is normalised by its sum: that sum must be finite
        float sum = 0.f;
        for (int64_t i = 0; i < T; ++i) {
            const float v = context_weights[r * T + i];
            if (!in_range(v, 0.f, fmax)) return false;
            if (i == r % T && v != 0.f) return false;  // W[t, t] = 0: a word is no context of itself
            sum += v;
        }
        if (!(sum <= fmax)) return false;
    }
    return true;
}

int check_refine_args(const float* raw, const float* context_maps, const float* steps, const float* image_size,
                      const float* repeat_ratio, const float* context_weights, int64_t B, int64_t T, int64_t h,
                      int64_t w, const dcam_refine_config* cfg, const float* maps_out, bool check_values) {
    if (!cfg) return DCAM_EINVAL_NULL;
    if (B < 0 || T < 0 || h < 1 || w < 1) return DCAM_EINVAL_SHAPE;
    // checked products: h * w (and B * T * h * w) wrapped past int64 for huge sides
    if (!array_fits(sizeof(float), {h, w}) || !array_fits(sizeof(float), {B, T, h, w}) ||
        !array_fits(sizeof(float), {B, T, T}))
        return DCAM_EINVAL_SHAPE;
    // (before the empty batch's early return, as the pooling's size limits are)
    if (h * w >= (int64_t(1) << 31) / 16) return DCAM_EINVAL_SHAPE;  // int32 ranks of padded cells
    if (cfg->akd_kernel < 0 || (cfg->akd_kernel > 0 && cfg->akd_kernel % 2 == 0)) return DCAM_EINVAL_CONFIG;
    if (cfg->sicd < DCAM_SICD_OFF || cfg->sicd > DCAM_SICD_CONTEXT) return DCAM_EINVAL_CONFIG;
    if (!valid_params(*cfg)) return DCAM_EINVAL_CONFIG;
    if (B == 0 || T == 0) return DCAM_OK;
    if (!raw || !maps_out) return DCAM_EINVAL_NULL;
    if (cfg->akd_kernel == 0 && (!steps || !image_size)) return DCAM_EINVAL_NULL;
    if (cfg->sicd == DCAM_SICD_REFERENCE && !repeat_ratio) return DCAM_EINVAL_NULL;
    if (cfg->sicd == DCAM_SICD_CONTEXT && !context_weights) return DCAM_EINVAL_NULL;
    if (check_values && !valid_values(steps, image_size, repeat_ratio, context_weights, B, T, *cfg))
        return DCAM_EINVAL_VALUE;
    // the maps themselves, for C callers: a NaN raw value gave finite maps where the reference's are NaN
    // (the rank filter and the percentiles order NaN arbitrarily); one pass, small beside the sorting
    if (!all_finite(raw, B * T * h * w)) return DCAM_EINVAL_VALUE;
    if (cfg->sicd == DCAM_SICD_CONTEXT && context_maps && !all_finite(context_maps, B * T * h * w))
        return DCAM_EINVAL_VALUE;
    return DCAM_OK;
}

}  // namespace

namespace dcam {

int refine_maps(const float* raw, const uint8_t* degenerate, const float* steps, const float* image_size,
                const float* repeat_ratio, const float* context_maps, const float* context_weights, int64_t B,
                int64_t T, int64_t h, int64_t w, const dcam_refine_config* cfg, float* maps_out,
                int32_t* kernel_size, int32_t* dacg_strategy, float* dacg_threshold, float* cba_threshold,
                float* sicd_alpha, bool check_values) {
    const int rc = check_refine_args(raw, context_maps, steps, image_size, repeat_ratio, context_weights, B, T, h, w,
                                     cfg, maps_out, check_values);
    if (rc != DCAM_OK || B == 0 || T == 0) return rc;
    float g9[9];
    dacg_blur_weights(cfg->dacg_params[7], g9);
    const int64_t N = h * w, M = B * T;
    const float* ctx_all = context_maps ? context_maps : raw;
    std::atomic<bool> oom{false};
    const int nthreads = static_cast<int>(std::min<int64_t>(max_threads(), M));
#pragma omp parallel num_threads(nthreads)
    {
        MapScratch S;
#pragma omp for schedule(dynamic, 2)
        for (int64_t m = 0; m < M; ++m) {
            if (oom.load(std::memory_order_relaxed)) continue;
            const int64_t b = m / T;
            MapArgs a;
            a.raw = raw + m * N;
            a.ctx = ctx_all + b * T * N;
            a.ctx_degenerate = (!context_maps && degenerate) ? degenerate + b * T : nullptr;
            a.wrow = context_weights ? context_weights + m * T : nullptr;
            a.degenerate = degenerate ? degenerate[m] != 0 : false;
            a.steps = steps ? steps[b] : 0.0f;
            a.image_size = image_size ? image_size[b] : 0.0f;
            a.rho = repeat_ratio ? repeat_ratio[b] : 0.0f;
            a.h = h;
            a.w = w;
            a.T = T;
            try {
                const MapStats st = may_throw(refine_one)(a, *cfg, g9, maps_out + m * N, S);
                if (kernel_size) kernel_size[m] = st.k;
                if (dacg_strategy) dacg_strategy[m] = st.strategy;
                if (dacg_threshold) dacg_threshold[m] = st.dacg_thr;
                if (cba_threshold) cba_threshold[m] = st.cba_thr;
                if (sicd_alpha) sicd_alpha[m] = st.alpha;
            } catch (const std::bad_alloc&) {
                oom.store(true, std::memory_order_relaxed);
            }
        }
    }
    return oom.load() ? DCAM_ENOMEM : DCAM_OK;
}

}  // namespace dcam

extern "C" int dcam_refine(const float* raw, const uint8_t* degenerate, const float* steps, const float* image_size,
                           const float* repeat_ratio, const float* context_maps, const float* context_weights,
                           int64_t B, int64_t T, int64_t h, int64_t w, const dcam_refine_config* cfg,
                           float* maps_out, int32_t* kernel_size, int32_t* dacg_strategy, float* dacg_threshold,
                           float* cba_threshold, float* sicd_alpha) {
    return dcam::refine_maps(raw, degenerate, steps, image_size, repeat_ratio, context_maps, context_weights, B, T, h,
                             w, cfg, maps_out, kernel_size, dacg_strategy, dacg_threshold, cba_threshold, sicd_alpha,
                             true);
}
