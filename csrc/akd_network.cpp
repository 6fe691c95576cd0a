// AKD with sorting networks (AVX2 CPUs): 8 horizontally neighbouring pixels at once,
// lane-wise min/max on AVX vectors (the networks are generated into sortnet.hpp by
// csrc/tools/gen_sortnet.py). Two vertically adjacent rows share k-1 rows of their
// windows: those k(k-1) values are sorted once and merged with each window's own row.
// Only built for x86-64-v3: GCC lowers the 8-wide vector code of the networks very
// slowly (and poorly) for SSE2, so other CPUs take the bitset path.
#include "akd.hpp"

#if DCAM_HAVE_NETWORK

#include <algorithm>
#include <cstring>

#include "simd.hpp"
#include "sortnet.hpp"

#define DCAM_NETWORK_TARGET DCAM_TARGET_V3

namespace dcam {
namespace {

// Networks of one window size (see csrc/sortnet.hpp).
template <int k>
struct Net;
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
DCAM_NET(3, 9)
DCAM_NET(5, 25)
DCAM_NET(7, 49)
DCAM_NET(9, 81)
DCAM_NET(11, 121)
#undef DCAM_NET

// Rank-Gaussian weighted sums of 8 sorted windows (lane l = pixel x0 + l): the p-th smallest
// value of lane l is af[order(p) * 8 + l], order = identity when ORDER is null. Statistics
// pointers are at pixel x0 of the row; nl lanes are written.
template <int k>
DCAM_INLINE DCAM_NETWORK_TARGET void network_weights(const float* af, const int* order, const double* qx,
                                                     const float* mean, const WindowClass* cls, int64_t nl,
                                                     float* orow) {
    constexpr int K = k * k, c = (K - 1) / 2;
    auto at = [&](int p) { return af + (order ? order[p] : p) * 8; };
    float res[8];
    for (int hlf = 0; hlf < 2; ++hlf) {
        const int o = 4 * hlf;
        const v4d q = load4d(qx + o);
        const v4d q2 = q * q;
        const v4d cut = splat4d(kAkdWeightCut);
        const v4d zero = splat4d(0.0);
        v4d p = splat4d(1.0), f = q, den = p;
        v4d num = to_f64(load4(at(c) + o));
        for (int d = 1; d <= c; ++d) {
            p *= f;
            f *= q2;
            const v4l live = p >= cut;
            if (!(live[0] | live[1] | live[2] | live[3])) break;
            p = live ? p : zero;  // a dead lane stays exactly 0 (no denormal arithmetic)
            f = live ? f : zero;
            num += p * (to_f64(load4(at(c - d) + o)) + to_f64(load4(at(c + d) + o)));
            den += p + p;
        }
        const v4d rv = num / den;
        for (int l = 0; l < 4; ++l) res[o + l] = static_cast<float>(rv[l]);
    }
    for (int l = 0; l < nl; ++l)
        orow[l] = cls[l] == WindowClass::kZero ? 0.0f : (cls[l] == WindowClass::kMean ? mean[l] : res[l]);
}

template <int k>
DCAM_INLINE DCAM_NETWORK_TARGET void akd_network_t(int64_t h, int64_t w, const PaddedMap& P, const WindowStats& st,
                                                   float* __restrict out) {
    constexpr int m = k * (k - 1);
    constexpr int slots = Net<k>::slots, half = slots / 2;
    typedef sortnet::v8f v8;
    const int64_t stride = P.stride, ss = st.stride;
    alignas(32) v8 a[slots];
    alignas(32) v8 sh[m];
    alignas(32) v8 extra[k];
    const float* af = reinterpret_cast<const float*>(a);
    for (int64_t y = 0; y < h; y += 2) {
        const bool pair = y + 1 < h;
        for (int64_t x0 = 0; x0 < w; x0 += 8) {
            const int64_t nl = std::min<int64_t>(8, w - x0);
            const float* base = P.row(y) + x0;  // padded row y = first window row of output y
            if (!pair) {
                for (int dy = 0; dy < k; ++dy)
                    for (int dx = 0; dx < k; ++dx) std::memcpy(&a[dy * k + dx], base + dy * stride + dx, sizeof(v8));
                Net<k>::full(a);
                network_weights<k>(af, nullptr, st.q.data() + y * ss + x0, st.mean.data() + y * ss + x0,
                                   st.cls.data() + y * ss + x0, nl, out + y * w + x0);
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
                const int64_t yo = y + which, o = yo * ss + x0;
                network_weights<k>(af, Net<k>::order, st.q.data() + o, st.mean.data() + o, st.cls.data() + o, nl,
                                   out + yo * w + x0);
            }
        }
    }
}

}  // namespace

DCAM_NETWORK_TARGET void akd_network(int64_t h, int64_t w, const PaddedMap& P, const WindowStats& st, float* out) {
    switch (2 * P.radius + 1) {
        case 3: akd_network_t<3>(h, w, P, st, out); break;
        case 5: akd_network_t<5>(h, w, P, st, out); break;
        case 7: akd_network_t<7>(h, w, P, st, out); break;
        case 9: akd_network_t<9>(h, w, P, st, out); break;
        default: akd_network_t<11>(h, w, P, st, out); break;
    }
}

}  // namespace dcam

#endif  // DCAM_HAVE_NETWORK
