// Vector types and helpers shared by the dcam C++ sources (GCC vector extensions:
// lowered to SSE2 in the baseline build and to AVX2 in the x86-64-v3 clones).
// Every helper is always inlined, so the 32-byte types never cross a call.
#pragma once

#include <cstdint>
#include <cstring>

#include "common.hpp"

#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vector helpers are always inlined

namespace dcam {

typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));
typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));  // lane masks of v4d comparisons
typedef int32_t v8i32 __attribute__((vector_size(32)));
typedef uint32_t v8u32 __attribute__((vector_size(32)));
typedef uint16_t v8u16 __attribute__((vector_size(16)));

// Unaligned loads and stores.
DCAM_INLINE v4f load4(const float* p) {
    v4f v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
DCAM_INLINE v8f load8(const float* p) {
    v8f v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
DCAM_INLINE v4d load4d(const double* p) {
    v4d v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
template <class V, class T>
DCAM_INLINE void store(T* p, V v) {
    std::memcpy(p, &v, sizeof(v));
}

// float32 -> float64, lane-wise (exact; GCC emits two 128-bit converts or one vcvtps2pd).
DCAM_INLINE v4d to_f64(v4f v) {
    return v4d{static_cast<double>(v[0]), static_cast<double>(v[1]), static_cast<double>(v[2]),
               static_cast<double>(v[3])};
}

// The four lanes of a v8f.
DCAM_INLINE v4f lo4(v8f v) { return v4f{v[0], v[1], v[2], v[3]}; }
DCAM_INLINE v4f hi4(v8f v) { return v4f{v[4], v[5], v[6], v[7]}; }

// Fixed-order horizontal sum (the same rounding everywhere it is used).
DCAM_INLINE double hsum(v4d v) { return (v[0] + v[1]) + (v[2] + v[3]); }

// max(v, 0) lane-wise; NaN propagates like torch.clamp(min=0).
DCAM_INLINE v4f relu4(v4f v) {
    const v4f z = {0.f, 0.f, 0.f, 0.f};
    return v < z ? z : v;
}

DCAM_INLINE v8f splat8(float x) { return v8f{x, x, x, x, x, x, x, x}; }
DCAM_INLINE v4d splat4d(double x) { return v4d{x, x, x, x}; }

}  // namespace dcam
