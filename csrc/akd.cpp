// AKD (section 2 of the contract): kernel size, the choice between the three
// implementations, what they share (reflect padding, window statistics) and the
// per-window sort path. See akd.hpp; the bitset path is in akd_bitset.cpp, the
// sorting networks in akd_network.cpp.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "akd.hpp"
#include "reduce.hpp"
#include "simd.hpp"

namespace dcam {
namespace {

// Padded maps with more cells than this (64 per bitset word) use the per-window sort
// path instead of bitsets.
constexpr int64_t kMaxBitsetWords = 512;

std::atomic<int> g_akd_path{static_cast<int>(AkdPath::kAuto)};

// exp(-x) for x >= 0, lane-wise in float64 (|relative error| < 1e-15); 0 for x > 700 or NaN.
DCAM_INLINE v4d exp_neg(v4d x) {
    const v4l ok = x <= splat4d(700.0);  // false for NaN too
    const v4d zero = splat4d(0.0);
    x = ok ? x : zero;
    const v4d magic = splat4d(6755399441055744.0);           // 1.5*2^52
    v4d t = x * splat4d(1.4426950408889634) + magic;         // round-to-nearest integer in the low mantissa bits
    v4l n;
    std::memcpy(&n, &t, sizeof(n));
    const v4d nd = t - magic;
    const v4d r = (nd * splat4d(6.93147180369123816490e-01) - x) + nd * splat4d(1.90821492927058770002e-10);
    // r = -(x - n ln2), |r| <= 0.35; e^r by Horner, degree 11 (truncation error < 1e-14 relative)
    v4d pl = splat4d(1.0 / 39916800.0);
    const double c[11] = {1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0,
                          1.0 / 120.0,     1.0 / 24.0,     1.0 / 6.0,     0.5,          1.0,          1.0};
    for (int i = 0; i < 11; ++i) pl = pl * r + splat4d(c[i]);
    // scale by 2^-n
    const v4l lowmask = {0xFFFFFFFFll, 0xFFFFFFFFll, 0xFFFFFFFFll, 0xFFFFFFFFll};
    n = n & lowmask;  // n in [0, 1011]
    const v4l b1023 = {1023, 1023, 1023, 1023};
    const v4l ebits = (b1023 - n) << 52;
    v4d scale;
    std::memcpy(&scale, &ebits, sizeof(scale));
    return ok ? pl * scale : zero;
}

// Column sums (and sums of squares) of padded rows y .. y+k-1, for the `ncols` (a multiple
// of 4) first columns. Each window is summed afresh: no running sums.
DCAM_INLINE void column_sums(const PaddedMap& P, int64_t y, int64_t k, int64_t ncols, double* cs, double* cq) {
    const float* top = P.row(y);
    for (int64_t px = 0; px < ncols; px += 4) {
        v4d s = to_f64(load4(top + px));
        v4d q = s * s;
        for (int64_t i = 1; i < k; ++i) {
            const v4d v = to_f64(load4(top + i * P.stride + px));
            s += v;
            q += v * v;
        }
        store(cs + px, s);
        store(cq + px, q);
    }
}

// Window sums of one output row: ws[x] = cs[x] + ... + cs[x + k - 1] for x < nx (a multiple of 4).
DCAM_INLINE void window_sums(const double* cs, const double* cq, int64_t k, int64_t nx, double* ws, double* wq) {
    for (int64_t x = 0; x < nx; x += 4) {
        v4d s = load4d(cs + x), q = load4d(cq + x);
        for (int64_t j = 1; j < k; ++j) {
            s += load4d(cs + x + j);
            q += load4d(cq + x + j);
        }
        store(ws + x, s);
        store(wq + x, q);
    }
}

// The classification of the windows of one output row from their sums (see WindowClass).
DCAM_INLINE void classify_row(const double* ws, const double* wq, int64_t nx, int64_t K, bool with_half,
                              float* mean, WindowClass* cls, double* qo, int32_t* half) {
    const v4d dK = splat4d(static_cast<double>(K)), zero = splat4d(0.0), one = splat4d(1.0);
    const double centre = static_cast<double>((K - 1) / 2);
    for (int64_t x = 0; x < nx; x += 4) {
        const v4d mu = load4d(ws + x) / dK;
        const v4d var = load4d(wq + x) / dK - mu * mu;  // one pass: float64 sums of float32 values
        const v4l pos_mu = mu > zero, pos_var = var > zero, ranked = pos_mu & pos_var;
        const v4d r2 = (ranked ? var : one) / (ranked ? mu * mu : one);  // sigma^2
        const v4d q = exp_neg(splat4d(0.5) / r2);
        store(qo + x, ranked ? q : zero);
        for (int l = 0; l < 4; ++l) {
            mean[x + l] = static_cast<float>(mu[l]);
            cls[x + l] = pos_mu[l] ? (pos_var[l] ? WindowClass::kRanked : WindowClass::kMean) : WindowClass::kZero;
            if (with_half) {  // largest d with d^2 / (2 sigma^2) <= kAkdLogCut, at most the centre rank
                const double dd = 2.0 * kAkdLogCut * r2[l];
                half[x + l] = !ranked[l] ? 0 : (dd >= centre * centre ? static_cast<int32_t>(centre)
                                                                       : static_cast<int32_t>(std::sqrt(dd)));
            }
        }
    }
}

}  // namespace

void set_akd_path(AkdPath path) { g_akd_path.store(static_cast<int>(path), std::memory_order_relaxed); }

int64_t akd_kernel_size(const float* r, int64_t h, int64_t w, int akd_kernel, float steps, float image_size) {
    int64_t k;
    if (akd_kernel > 0) {
        k = akd_kernel;
    } else {  // float32 arithmetic as the reference, std rounded once
        float mean_f, sd_f;
        mean_std(r, h * w, mean_f, sd_f);
        const float f_step = std::min(steps / static_cast<float>(DCAM_AKD_STEP_SCALE), static_cast<float>(DCAM_AKD_STEP_CAP));
        const float f_std = std::min(static_cast<float>(DCAM_AKD_STD_SCALE) * sd_f, static_cast<float>(DCAM_AKD_STD_CAP));
        const float f_size = std::min(image_size / static_cast<float>(DCAM_AKD_SIZE_SCALE), static_cast<float>(DCAM_AKD_SIZE_CAP));
        float prod = static_cast<float>(DCAM_AKD_BASE) * f_step;
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
        k = std::min<int64_t>(std::max<int64_t>(k0, DCAM_AKD_K_MIN), DCAM_AKD_K_MAX);
    }
    return std::min<int64_t>(k, 2 * std::min(h, w) - 1);
}

void pad_reflect(const float* r, int64_t h, int64_t w, int64_t radius, PaddedMap& P) {
    P.radius = radius;
    P.rows = h + 2 * radius;
    P.cols = w + 2 * radius;
    P.stride = round_up(P.cols + 16, 8);
    ensure(P.cells, P.rows * P.stride);
    for (int64_t py = 0; py < P.rows; ++py) {
        const float* src = r + reflect(py - radius, h) * w;
        float* dst = P.cells.data() + py * P.stride;
        for (int64_t px = 0; px < radius; ++px) dst[px] = src[reflect(px - radius, w)];
        std::memcpy(dst + radius, src, static_cast<size_t>(w) * sizeof(float));
        for (int64_t px = radius + w; px < P.cols; ++px) dst[px] = src[reflect(px - radius, w)];
        std::fill(dst + P.cols, dst + P.stride, 0.0f);
    }
}

DCAM_HOT void window_stats(const PaddedMap& P, int64_t h, int64_t w, bool with_half, WindowStats& st) {
    const int64_t k = 2 * P.radius + 1, K = k * k;
    const int64_t wv = round_up(w, 8), nx = round_up(w, 4);  // row stride, pixels computed per row
    const int64_t ncols = round_up(nx + k - 1, 4);            // columns the window sums read (<= P.stride)
    st.stride = wv;
    ensure(st.mean, h * wv);
    ensure(st.cls, h * wv);
    ensure(st.q, h * wv);
    if (with_half) ensure(st.half, h * wv);
    ensure(st.col_sum, ncols);
    ensure(st.col_sq, ncols);
    ensure(st.win_sum, wv);
    ensure(st.win_sq, wv);
    for (int64_t y = 0; y < h; ++y) {
        column_sums(P, y, k, ncols, st.col_sum.data(), st.col_sq.data());
        window_sums(st.col_sum.data(), st.col_sq.data(), k, nx, st.win_sum.data(), st.win_sq.data());
        const int64_t o = y * wv;
        classify_row(st.win_sum.data(), st.win_sq.data(), nx, K, with_half, st.mean.data() + o, st.cls.data() + o,
                     st.q.data() + o, with_half ? st.half.data() + o : nullptr);
    }
}

// AKD by gathering and partially sorting each rank-weighted window (for padded maps too
// big for bitsets).
DCAM_HOT void akd_sort(int64_t h, int64_t w, const PaddedMap& P, const WindowStats& st, float* out,
                       std::vector<float>& window) {
    const int64_t k = 2 * P.radius + 1, K = k * k, c = (K - 1) / 2;
    ensure(window, K);
    float* win = window.data();
    for (int64_t y = 0; y < h; ++y) {
        const int64_t o = y * st.stride;
        for (int64_t x = 0; x < w; ++x) {
            const WindowClass cls = st.cls[o + x];
            if (cls != WindowClass::kRanked) {
                out[y * w + x] = cls == WindowClass::kZero ? 0.0f : st.mean[o + x];
                continue;
            }
            for (int64_t dy = 0; dy < k; ++dy) std::memcpy(win + dy * k, P.row(y + dy) + x, k * sizeof(float));
            const int D = st.half[o + x];
            float* lo = win + (c - D);
            std::nth_element(win, lo, win + K);
            std::partial_sort(lo + 1, lo + 1 + 2 * D, win + K);
            out[y * w + x] = rank_weighted(lo, D, st.q[o + x]);
        }
    }
}

void akd(const float* r, int64_t h, int64_t w, int64_t k, float* out, AkdScratch& S) {
    if (k <= 1) {  // 1x1 window: mean = the value, std = 0
        for (int64_t i = 0; i < h * w; ++i) out[i] = r[i] > 0.0f ? r[i] : 0.0f;
        return;
    }
    const AkdPath forced = static_cast<AkdPath>(g_akd_path.load(std::memory_order_relaxed));
    const int64_t radius = (k - 1) / 2;
    pad_reflect(r, h, w, radius, S.padded);
#if DCAM_HAVE_NETWORK
    if (k <= DCAM_AKD_K_MAX && cpu_is_x86_64_v3() && (forced == AkdPath::kAuto || forced == AkdPath::kNetwork)) {
        may_throw(window_stats)(S.padded, h, w, false, S.stats);
        akd_network(h, w, S.padded, S.stats, out);
        return;
    }
#endif
    may_throw(window_stats)(S.padded, h, w, true, S.stats);
    const int64_t words = (S.padded.rows * S.padded.cols + 63) / 64;
    if (forced == AkdPath::kSort || (forced != AkdPath::kBitset && words > kMaxBitsetWords))
        may_throw(akd_sort)(h, w, S.padded, S.stats, out, S.window);
    else
        may_throw(akd_bitset)(r, h, w, S.padded, S.stats, out, S.bitset);
}

}  // namespace dcam
