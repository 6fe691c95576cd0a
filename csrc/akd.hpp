// AKD (section 2 of the contract): declarations shared by akd.cpp (kernel size,
// dispatch, padding, window statistics, per-window sort path), akd_bitset.cpp and
// akd_network.cpp, and the buffers they use. Internal: not part of the C API.
//
// Every implementation reads the same two things computed once per map by
// window_stats(): per pixel, the window's mean and its class (output 0, output the
// mean, or a rank-weighted mean with q = exp(-1/(2 sigma^2))); they differ only in
// how they find the ordered window values a rank-weighted pixel needs.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "common.hpp"
#include "select.hpp"

// The sorting-network path needs AVX2 (compiled for x86-64-v3, chosen at run time).
#if DCAM_HAVE_V3 && !defined(DCAM_NO_NETWORK)
#define DCAM_HAVE_NETWORK 1
#else
#define DCAM_HAVE_NETWORK 0
#endif

namespace dcam {

// Which AKD implementation runs (all give the same result; the test hook forces one).
enum class AkdPath : int {
    kAuto = 0,     // networks on AVX2 CPUs, else bitsets, else (large maps) per-window sort
    kNetwork = 1,  // sorting networks (falls back to kAuto's choice without AVX2)
    kBitset = 2,   // global-rank bitsets
    kSort = 3,     // gather and partially sort each window
};

// Test hook (bound as dcam._C._set_akd_path; not in dcam.h).
DCAM_INTERNAL void set_akd_path(AkdPath path);

// Rank weights below exp(-106) ~ 1e-46 relative to the centre weight 1 are dropped
// (they cannot move a float32 result in [0, 1] and keep every positive output positive).
constexpr double kAkdLogCut = 106.0;
constexpr double kAkdWeightCut = 9.221146422925876e-47;  // exp(-kAkdLogCut)

// What a pixel's window makes of it (the contract's three cases).
enum class WindowClass : uint8_t {
    kZero = 0,    // mean <= 0: output 0
    kMean = 1,    // std == 0: output the mean
    kRanked = 2,  // rank-weighted mean of the sorted window
};

// The reflect-padded map: (h + 2r) rows of (w + 2r) cells, row stride `stride`
// (>= cols + 16, extra cells 0, so that 8-wide loads and the 4-wide column sums of
// window_stats may run past the last cell).
struct PaddedMap {
    std::vector<float> cells;
    int64_t radius = 0, rows = 0, cols = 0, stride = 0;
    const float* row(int64_t py) const { return cells.data() + py * stride; }
};

// Per-pixel window statistics of one map, row stride `stride` (w rounded up to 8,
// so that 4- and 8-wide loops need no tails; entries x >= w are unspecified).
struct WindowStats {
    int64_t stride = 0;
    std::vector<float> mean;          // window mean, rounded to float32
    std::vector<WindowClass> cls;     // see WindowClass
    std::vector<double> q;            // kRanked: exp(-1/(2 sigma^2)), sigma = std/mean; else 0
    std::vector<int32_t> half;        // kRanked: ranks centre-half .. centre+half carry weight >= e^-kAkdLogCut
    std::vector<double> col_sum, col_sq, win_sum, win_sq;  // work rows
};

// Scratch of the rank-bitset path.
struct BitsetBuffers {
    std::vector<int32_t> src_row, src_col;  // padded row / column -> source row / column
    std::vector<int32_t> order, rank_of;    // pixels by ascending value, and the inverse
    std::vector<int32_t> rank_start;        // first cell rank of each pixel rank (counting sort)
    std::vector<int32_t> cell_rank;         // distinct global rank of each padded cell
    std::vector<float> value_of_rank;       // cell value by cell rank
    std::vector<uint64_t> window_bits;      // the sliding window as a bitset over cell ranks
    std::vector<float> central;             // per pixel of a row: the window's central ordered values
    ArgsortBuffers argsort;
};

// Everything AKD allocates, reused across the maps a thread refines.
struct AkdScratch {
    PaddedMap padded;
    WindowStats stats;
    BitsetBuffers bitset;
    std::vector<float> window;  // per-window sort path: one window's values
};

// Kernel size of a map (section 2): the fixed size or the adaptive one, capped at
// 2*min(h, w) - 1.
int64_t akd_kernel_size(const float* r, int64_t h, int64_t w, int akd_kernel, float steps, float image_size);

// AKD of the h x w map r with the k x k window (k odd) into out.
void akd(const float* r, int64_t h, int64_t w, int64_t k, float* out, AkdScratch& S);

// ---- shared by the implementations (akd.cpp)

// P = r reflect-padded by `radius` cells on each side.
void pad_reflect(const float* r, int64_t h, int64_t w, int64_t radius, PaddedMap& P);

// Window statistics of every pixel for the k x k window (k = 2 * P.radius + 1): sums
// and sums of squares in float64, each window summed afresh (column sums over the k
// padded rows, then over k columns; no sliding subtraction, so a tiny value next to a
// large one keeps its window's mean positive), then the classification. `with_half`:
// also fill st.half (the bitset and sort paths need it, the networks do not).
void window_stats(const PaddedMap& P, int64_t h, int64_t w, bool with_half, WindowStats& st);

// Weighted central sum of the ordered window values s[0..2D] (s[D] is the centre rank):
// sum_d q^(d^2) (s[D-d] + s[D+d]) / sum_d q^(d^2) (2 for d > 0), centre weight 1.
// q^(d^2) by the recurrence q^((d+1)^2) = q^(d^2) q^(2d+1).
inline float rank_weighted(const float* s, int D, double q) {
    double num = s[D], den = 1.0;
    const double q2 = q * q;
    double p = 1.0, f = q;
    for (int d = 1; d <= D; ++d) {
        p *= f;   // q^(d^2)
        f *= q2;  // q^(2d+1)
        num += p * (static_cast<double>(s[D - d]) + static_cast<double>(s[D + d]));
        den += 2.0 * p;
    }
    return static_cast<float>(num / den);
}

// The implementations: out[y * w + x] for every pixel from P and its statistics.
void akd_bitset(const float* r, int64_t h, int64_t w, const PaddedMap& P, const WindowStats& st, float* out,
                BitsetBuffers& buf);
void akd_sort(int64_t h, int64_t w, const PaddedMap& P, const WindowStats& st, float* out,
              std::vector<float>& window);
#if DCAM_HAVE_NETWORK
void akd_network(int64_t h, int64_t w, const PaddedMap& P, const WindowStats& st, float* out);
#endif

}  // namespace dcam
