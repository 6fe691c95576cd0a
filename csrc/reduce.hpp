// Reductions over one map (float64 sums rounded once, min/max), always inlined into
// the hot per-map code that calls them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "simd.hpp"

namespace dcam {

// sum of x[0..n) in float64 (not rounded).
DCAM_INLINE double sum_f64(const float* x, int64_t n) {
    v4d a0 = splat4d(0.0), a1 = a0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        a0 += to_f64(load4(x + i));
        a1 += to_f64(load4(x + i + 4));
    }
    double s = hsum(a0 + a1);
    for (; i < n; ++i) s += x[i];
    return s;
}

// Population mean and std, float64 two-pass, not rounded (DACG compares them with its thresholds so).
DCAM_INLINE void mean_std64(const float* x, int64_t n, double& mean_d, double& std_d) {
    const double mu = sum_f64(x, n) / static_cast<double>(n);
    const v4d m4 = splat4d(mu);
    v4d a0 = splat4d(0.0), a1 = a0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const v4d d0 = to_f64(load4(x + i)) - m4, d1 = to_f64(load4(x + i + 4)) - m4;
        a0 += d0 * d0;
        a1 += d1 * d1;
    }
    double q = hsum(a0 + a1);
    for (; i < n; ++i) {
        const double d = x[i] - mu;
        q += d * d;
    }
    mean_d = mu;
    std_d = std::sqrt(q / static_cast<double>(n));
}

// Population mean and std, float64 two-pass, each rounded once to float32.
DCAM_INLINE void mean_std(const float* x, int64_t n, float& mean_f, float& std_f) {
    double mu, sd;
    mean_std64(x, n, mu, sd);
    mean_f = static_cast<float>(mu);
    std_f = static_cast<float>(sd);
}

// Smallest and largest of x[0..n), n >= 1.
DCAM_INLINE void min_max(const float* x, int64_t n, float& lo, float& hi) {
    int64_t i = 0;
    float l = x[0], h = x[0];
    if (n >= 8) {
        v8f vl = load8(x), vh = vl;
        for (i = 8; i + 8 <= n; i += 8) {
            const v8f v = load8(x + i);
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

}  // namespace dcam
