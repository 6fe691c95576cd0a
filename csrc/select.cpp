// Radix argsort and bucket select (see select.hpp).
#include "select.hpp"

#include <algorithm>
#include <cstring>

#include "common.hpp"
#include "reduce.hpp"

namespace dcam {
namespace {

// Stable LSD radix sort of n items by their upper 32 bits (8-bit digits; a pass
// whose digit is the same for every item is skipped). Result in `a`.
void radix_sort_hi32(uint64_t* a, uint64_t* tmp, int64_t n) {
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

// The R-th smallest value (0-based), and optionally the (R+1)-th (R+1 < n). Reorders the
// values inside their buckets only.
float selector_get(Selector& s, int64_t R, float* next) {
    if (s.constant) {
        if (next) *next = s.vmin;
        return s.vmin;
    }
    // last bucket b with off[b] <= R
    int lo = 0, hi = kSelectBuckets;  // off[lo] <= R < off[hi]
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

}  // namespace

void argsort_values(const float* x, int64_t n, int32_t* order, ArgsortBuffers& buf) {
    ensure(buf.keys, n);
    ensure(buf.keys_tmp, n);
    uint64_t* it = buf.keys.data();
    for (int64_t i = 0; i < n; ++i) it[i] = (static_cast<uint64_t>(float_key(x[i])) << 32) | static_cast<uint32_t>(i);
    radix_sort_hi32(it, buf.keys_tmp.data(), n);
    for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(static_cast<uint32_t>(it[i]));
}

// Buckets by floor((v - min) * scale) (float32 arithmetic: monotone in v) and groups the
// values by bucket (one counting-sort scatter).
DCAM_HOT void selector_build(Selector& s, const float* x, int64_t n, SelectBuffers& buf) {
    s.n = n;
    min_max(x, n, s.vmin, s.vmax);
    int64_t pos = 0;
    for (int64_t i = 0; i < n; ++i) pos += x[i] > 0.0f;
    s.n_pos = pos;
    s.constant = !(s.vmax > s.vmin);
    if (s.constant) return;
    ensure(buf.bucket_of, n);
    ensure(buf.grouped, n);
    uint8_t* bkt = buf.bucket_of.data();
    const float base = s.vmin;
    float scale = static_cast<float>(kSelectBuckets) / (s.vmax - s.vmin);
    if (!(scale < 3.0e38f)) scale = 3.0e38f;  // range below float precision: still monotone
    const float top = static_cast<float>(kSelectBuckets - 1);
    for (int64_t i = 0; i < n; ++i) {
        float f = (x[i] - base) * scale;
        f = f > 0.0f ? f : 0.0f;  // also NaN -> 0
        f = f < top ? f : top;
        bkt[i] = static_cast<uint8_t>(static_cast<int32_t>(f));
    }
    uint32_t hist[kSelectBuckets];
    std::memset(hist, 0, sizeof(hist));
    for (int64_t i = 0; i < n; ++i) ++hist[bkt[i]];
    uint32_t acc = 0;
    for (int b = 0; b < kSelectBuckets; ++b) {
        s.off[b] = acc;
        acc += hist[b];
    }
    s.off[kSelectBuckets] = acc;
    uint32_t cur[kSelectBuckets];
    std::memcpy(cur, s.off, sizeof(cur));
    s.vals = buf.grouped.data();
    for (int64_t i = 0; i < n; ++i) s.vals[cur[bkt[i]]++] = x[i];
}

float selector_percentile(Selector& s, int64_t offset, int64_t cnt, float q, float* at_floor) {
    // the position q (cnt - 1) / 100 floored exactly: q (cnt - 1) is exact in double (q / 100 first
    // made 7.0 into 6.999...)
    const double qn = static_cast<double>(q) * static_cast<double>(cnt - 1);
    double fl = std::floor(qn / 100.0);
    if (fl * 100.0 > qn) fl -= 1.0;
    if ((fl + 1.0) * 100.0 <= qn) fl += 1.0;
    if (!(fl >= 0.0)) fl = 0.0;
    if (fl > static_cast<double>(cnt - 1)) fl = static_cast<double>(cnt - 1);
    const int64_t lo = static_cast<int64_t>(fl);
    const float frac = static_cast<float>((qn - fl * 100.0) / 100.0);
    float hi;
    const bool between = frac > 0.0f && lo + 1 <= cnt - 1;
    const float v = selector_get(s, offset + lo, between ? &hi : nullptr);
    if (at_floor) *at_floor = v;
    return between ? v + frac * (hi - v) : v;
}

}  // namespace dcam
