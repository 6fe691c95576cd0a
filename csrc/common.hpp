// Internal helpers shared by the dcam C++ sources (not part of the public API).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "dcam.h"

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
// `f`, to be called from code built for the default target when f is DCAM_HOT and may
// throw (std::bad_alloc from a scratch buffer). GCC 12 takes a direct call from such
// code into a target_clones function (through its ifunc) to throw nothing, so the
// caller's catch was dropped and an allocation failure ended in std::terminate
// instead of DCAM_ENOMEM. A call through a pointer it cannot see into keeps the
// unwinding (calls between DCAM_HOT functions go clone to clone and unwind already).
template <class F>
__attribute__((noinline)) F* may_throw(F* f) {
    F* volatile p = f;
    return p;
}
}  // namespace dcam

// Whether x[0 .. n) holds no NaN or infinity (no exit inside the loop: it vectorises).
inline bool all_finite(const float* x, int64_t n) {
    const float fmax = 3.4028234663852886e38f;
    bool ok = true;
    for (int64_t i = 0; i < n; ++i) ok &= std::fabs(x[i]) <= fmax;  // NaN fails the test
    return ok;
}

// Whether an array of the product of `sizes` elements, `elem` bytes each, can be addressed:
// the byte count fits a signed 64-bit offset (checked multiplications; a wrapped product
// reached the kernels as a small or negative size: SIGFPE, a hang, a segfault).
inline bool array_fits(int64_t elem, std::initializer_list<int64_t> sizes) {
    int64_t bytes = elem;
    for (const int64_t s : sizes)
        if (__builtin_mul_overflow(bytes, s, &bytes)) return false;
    return true;
}

// Kernels written for AVX2 (intrinsics or 8-wide vectors GCC lowers poorly for SSE2) are
// compiled for x86-64-v3 only and chosen at run time with cpu_is_x86_64_v3(); the others
// take portable code. -DDCAM_NO_V3 builds only the portable code (to test it on AVX2 CPUs).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(DCAM_NO_V3)
#define DCAM_HAVE_V3 1
#define DCAM_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#else
#define DCAM_HAVE_V3 0
#endif

// C++ functions shared between the library's sources that must not be exported from
// a shared library built from them (test hooks, internal entry points).
#if defined(__GNUC__)
#define DCAM_INTERNAL __attribute__((visibility("hidden")))
#else
#define DCAM_INTERNAL
#endif

namespace dcam {

// min-max normalisation guard, float32(1e-8) as torch casts it
constexpr float kEpsNorm = static_cast<float>(DCAM_EPS_NORM);

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

DCAM_INLINE int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Grow a scratch vector to at least n elements (never shrinks; may throw bad_alloc).
template <class V>
inline void ensure(V& v, size_t n) {
    if (v.size() < n) v.resize(n);
}

#if DCAM_HAVE_V3
// Whether this CPU runs x86-64-v3 code (AVX2, FMA, BMI1/2, F16C; every CPU with these
// also has the rest of the level: LZCNT, MOVBE).
inline bool cpu_is_x86_64_v3() {
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
                           __builtin_cpu_supports("f16c");
    return ok;
}
#endif

// Whether this process is a child made by fork() (fork.cpp): there dcam's parallel regions
// run on the calling thread alone (libgomp's thread pool does not survive a fork, and a
// child that opens a region of 2+ threads after its parent had one waits forever).
bool in_forked_child();

// OpenMP threads available to a parallel region (1 in a build without OpenMP, or after fork()).
inline int max_threads() {
#ifdef _OPENMP
    return in_forked_child() ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
}

// This thread's number in its parallel region and the region's size (0 and 1 outside one).
inline int thread_num() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

inline int team_size() {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

}  // namespace dcam
