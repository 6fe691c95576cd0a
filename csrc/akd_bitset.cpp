// AKD by global-rank bitsets (the path of CPUs without AVX2, and of maps the
// networks do not cover):
//  * every padded cell gets a distinct global rank (ascending value; ties by source
//    pixel, then cell) from one radix argsort of the h*w pixels plus a counting pass;
//  * the k x k window of a pixel is a set of k*k cells, held as a bitset over the
//    global ranks; moving one pixel right toggles 2k bits;
//  * the window's ascending order is the order of its set bits. Only the ranks whose
//    Gaussian weight is at least e^-kAkdLogCut (WindowStats::half) are read: the first
//    from a word cursor that follows the window as it slides (plus a branch-free
//    in-word select), the others by ctz;
//  * each row runs in two passes (bitset walk, then weighted sums) so the
//    unpredictable branches of the walk do not serialise the arithmetic; the window
//    statistics come from window_stats (akd.cpp), computed once per map.
#include <algorithm>

#include "akd.hpp"

namespace dcam {
namespace {

struct SelectTable {
    uint8_t pos[256][8];
    constexpr SelectTable() : pos() {
        for (int b = 0; b < 256; ++b) {
            int r = 0;
            for (int i = 0; i < 8; ++i)
                if (b >> i & 1) pos[b][r++] = static_cast<uint8_t>(i);
        }
    }
};
constexpr SelectTable kSelect{};

// Position of the r-th (0-based) set bit of x; requires r < popcount(x). Branch-free.
DCAM_INLINE int select64(uint64_t x, int r) {
    uint64_t s = x - ((x >> 1) & 0x5555555555555555ull);
    s = (s & 0x3333333333333333ull) + ((s >> 2) & 0x3333333333333333ull);
    s = (s + (s >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    const uint64_t pre = s * 0x0101010101010101ull;  // byte i: set bits in bytes 0..i
    const uint64_t rr = static_cast<uint64_t>(r) * 0x0101010101010101ull;
    const uint64_t le = ((rr | 0x8080808080808080ull) - pre) & 0x8080808080808080ull;  // bytes with pre <= r
    const int byte = static_cast<int>((((le >> 7) * 0x0101010101010101ull)) >> 56);
    const int shift = byte * 8;
    const int before = static_cast<int>(((pre << 8) >> shift) & 0xFF);
    return shift + kSelect.pos[(x >> shift) & 0xFF][r - before];
}

DCAM_INLINE void toggle(uint64_t* bits, int32_t p) { bits[p >> 6] ^= uint64_t(1) << (p & 63); }

// Distinct global ranks of the padded cells (row stride cols) and the value of each rank.
DCAM_INLINE void rank_cells(const float* r, int64_t h, int64_t w, const PaddedMap& P, BitsetBuffers& b) {
    const int64_t rr = P.radius, Hp = P.rows, Wp = P.cols, N = h * w, Np = Hp * Wp;
    ensure(b.src_row, Hp);
    ensure(b.src_col, Wp);
    ensure(b.order, N);
    ensure(b.rank_of, N);
    ensure(b.rank_start, N + 1);
    ensure(b.cell_rank, Np);
    ensure(b.value_of_rank, Np);
    int32_t* ry = b.src_row.data();
    int32_t* rx = b.src_col.data();
    for (int64_t i = 0; i < Hp; ++i) ry[i] = static_cast<int32_t>(reflect(i - rr, h));
    for (int64_t i = 0; i < Wp; ++i) rx[i] = static_cast<int32_t>(reflect(i - rr, w));
    int32_t* order = b.order.data();
    int32_t* rank_of = b.rank_of.data();
    int32_t* start = b.rank_start.data();
    int32_t* cell_rank = b.cell_rank.data();
    argsort_values(r, N, order, b.argsort);
    for (int64_t g = 0; g < N; ++g) rank_of[order[g]] = static_cast<int32_t>(g);
    std::fill(start, start + N + 1, 0);
    for (int64_t py = 0; py < Hp; ++py) {
        const int64_t srow = static_cast<int64_t>(ry[py]) * w;
        for (int64_t px = 0; px < Wp; ++px) {
            const int32_t g = rank_of[srow + rx[px]];
            cell_rank[py * Wp + px] = g;  // for now the rank of the source pixel
            ++start[g + 1];
        }
    }
    for (int64_t g = 0; g < N; ++g) start[g + 1] += start[g];
    float* value = b.value_of_rank.data();
    for (int64_t cell = 0; cell < Np; ++cell) {
        const int32_t g = cell_rank[cell];
        const int32_t p = start[g]++;
        cell_rank[cell] = p;
        value[p] = r[order[g]];
    }
}

// Pass 1 of output row y: slide the window bitset along the row and copy, for every
// rank-weighted pixel x, its 2D+1 central ordered values to central[x * K ..].
DCAM_INLINE void walk_row(int64_t y, int64_t w, int64_t k, int64_t Wp, const WindowStats& st, const BitsetBuffers& b,
              uint64_t* bits, int64_t words, float* central) {
    const int64_t rr = (k - 1) / 2, K = k * k, c = (K - 1) / 2;
    const int32_t* prank = b.cell_rank.data();
    const float* sval = b.value_of_rank.data();
    const WindowClass* cls = st.cls.data() + y * st.stride;
    const int32_t* half = st.half.data() + y * st.stride;
    std::fill(bits, bits + words + 2, uint64_t(0));
    for (int64_t i = 0; i < k; ++i) {
        const int32_t* row = prank + (y + i) * Wp;
        for (int64_t j = 0; j < k - 1; ++j) toggle(bits, row[j]);
    }
    int64_t cw = 0;      // word cursor
    int64_t before = 0;  // set bits in words < cw
    for (int64_t x = 0; x < w; ++x) {
        const int32_t* col_in = prank + y * Wp + x + 2 * rr;
        for (int64_t i = 0; i < k; ++i) {
            const int32_t p = col_in[i * Wp];
            toggle(bits, p);
            before += (p >> 6) < cw;
        }
        if (x > 0) {
            const int32_t* col_out = prank + y * Wp + x - 1;
            for (int64_t i = 0; i < k; ++i) {
                const int32_t p = col_out[i * Wp];
                toggle(bits, p);
                before -= (p >> 6) < cw;
            }
        }
        if (cls[x] != WindowClass::kRanked) continue;
        const int D = half[x];
        const int64_t t = c - D;  // first rank to read
        while (before > t) before -= __builtin_popcountll(bits[--cw]);
        for (;;) {
            const int64_t pc = __builtin_popcountll(bits[cw]);
            if (before + pc > t) break;
            before += pc;
            ++cw;
        }
        int64_t wi = cw;
        uint64_t cur = bits[wi];
        cur &= ~uint64_t(0) << select64(cur, static_cast<int>(t - before));
        float* vb = central + x * K;
        const int cnt = 2 * D + 1;
        for (int j = 0; j < cnt; ++j) {
            vb[j] = sval[(wi << 6) + __builtin_ctzll(cur)];
            cur &= cur - 1;
            const bool z = cur == 0;
            const uint64_t nxt = bits[wi + 1];
            wi += z;
            cur = z ? nxt : cur;
            if (__builtin_expect(cur == 0, 0) && j + 1 < cnt) {
                do cur = bits[++wi];
                while (cur == 0);
            }
        }
    }
}

}  // namespace

// k >= 3, radius (k-1)/2 <= min(h, w) - 1.
DCAM_HOT void akd_bitset(const float* __restrict r, int64_t h, int64_t w, const PaddedMap& P,
                         const WindowStats& st, float* __restrict out, BitsetBuffers& buf) {
    const int64_t k = 2 * P.radius + 1, K = k * k;
    const int64_t words = (P.rows * P.cols + 63) / 64;
    rank_cells(r, h, w, P, buf);
    ensure(buf.window_bits, words + 2);
    ensure(buf.central, w * K);
    float* central = buf.central.data();
    for (int64_t y = 0; y < h; ++y) {
        walk_row(y, w, k, P.cols, st, buf, buf.window_bits.data(), words, central);
        // pass 2: weighted sums
        const int64_t o = y * st.stride;
        float* orow = out + y * w;
        for (int64_t x = 0; x < w; ++x) {
            const WindowClass cls = st.cls[o + x];
            orow[x] = cls == WindowClass::kZero
                          ? 0.0f
                          : (cls == WindowClass::kMean ? st.mean[o + x]
                                                       : rank_weighted(central + x * K, st.half[o + x], st.q[o + x]));
        }
    }
}

}  // namespace dcam
