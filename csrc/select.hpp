// Order statistics of one map: a radix argsort (AKD's global ranks) and a bucket
// select for percentiles (DACG, CBA).
#pragma once

#include <cstdint>
#include <vector>

namespace dcam {

// Scratch of argsort_values (grown on demand, reused across maps).
struct ArgsortBuffers {
    std::vector<uint64_t> keys, keys_tmp;  // (float key << 32 | index) items and the radix sort's ping-pong copy
};

// order[g] = index of the g-th smallest of x[0..n) (ties by index).
void argsort_values(const float* x, int64_t n, int32_t* order, ArgsortBuffers& buf);

// Scratch of a Selector.
struct SelectBuffers {
    std::vector<uint8_t> bucket_of;  // bucket of each value
    std::vector<float> grouped;      // the values grouped by bucket
};

constexpr int kSelectBuckets = 256;

// Percentiles of one set of values by bucket select: one pass buckets the values
// monotonically (linear in the value), the bucket holding a wanted rank is
// partially sorted on demand.
struct Selector {
    int64_t n = 0, n_pos = 0;  // values, and how many are > 0
    float vmin = 0, vmax = 0;
    bool constant = true;
    float* vals = nullptr;             // the values grouped by bucket (ascending buckets)
    uint32_t off[kSelectBuckets + 1];  // bucket b holds vals[off[b] .. off[b+1])
};

// Buckets x[0..n) (n >= 1) into s; s.vals points into buf.grouped.
void selector_build(Selector& s, const float* x, int64_t n, SelectBuffers& buf);

// numpy 'linear' percentile q of the `cnt` values of rank offset .. offset+cnt-1
// (cnt >= 1), its position floored exactly as the reference does; at_floor: the value at that floor.
float selector_percentile(Selector& s, int64_t offset, int64_t cnt, float q, float* at_floor = nullptr);

}  // namespace dcam
