// Internal helpers shared by the dcam C++ sources (not part of the public API).
#pragma once

#include <cstdint>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

// Hot kernels are compiled twice: for x86-64-v3 (AVX2, FMA-capable but we keep
// -ffp-contract=off semantics, BMI1/2, POPCNT, F16C) and for the baseline, and
// the loader picks one at run time (GCC/Clang function multi-versioning).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(DCAM_NO_MULTIVERSION)
#define DCAM_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DCAM_HOT
#endif

#define DCAM_INLINE inline __attribute__((always_inline))

namespace dcam {

constexpr float kEpsNorm = 1e-8f;  // min-max normalisation guard (float32(1e-8), as torch casts it)

DCAM_INLINE float bits_to_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
DCAM_INLINE uint32_t float_to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

DCAM_INLINE float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

// IEEE half -> float, exact for every input (normals, subnormals, inf, nan) and
// independent of the FTZ/DAZ state (no float subnormal is ever formed).
DCAM_INLINE float f16_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t m = static_cast<uint32_t>(h & 0x7fffu);
    const uint32_t normal = (m << 13) + (112u << 23);                                      // rebias 15 -> 127
    const uint32_t sub = float_to_bits(static_cast<float>(static_cast<int32_t>(m)) * 5.9604644775390625e-8f);  // m * 2^-24
    const uint32_t special = (m << 13) | 0x7f800000u;                                      // inf / nan
    const uint32_t u = m >= 0x7c00u ? special : (m >= 0x0400u ? normal : sub);
    return bits_to_float(u | sign);
}

// numpy-style reflect index (edge not repeated), one reflection.
DCAM_INLINE int64_t reflect(int64_t i, int64_t n) {
    if (n == 1) return 0;
    if (i < 0) i = -i;
    if (i >= n) i = 2 * n - 2 - i;
    return i;
}

// Order-preserving map float -> uint32 (for radix sorting).
DCAM_INLINE uint32_t float_key(float f) {
    uint32_t u = float_to_bits(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
DCAM_INLINE float key_float(uint32_t k) {
    return bits_to_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Generic 4-wide vectors (GCC vector extensions; lowered to SSE2 or AVX per target).
typedef float v4f __attribute__((vector_size(16)));
typedef double v4d __attribute__((vector_size(32)));

// Unaligned load of 4 floats.
DCAM_INLINE v4f load4(const float* p) {
    v4f v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

// OpenMP threads available to a parallel region (1 in a build without OpenMP).
inline int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

}  // namespace dcam
