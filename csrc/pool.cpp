// Section 1 of the contract: gradient-weighted activation pooling.
//
//   w[b,t,d]   = (1/N) sum_n G+[b,t,n,d]                  (stream over grads: pool_grads.cpp)
//   raw[b,t,n] = (1/D) sum_d max(A[b,n,d] * w[b,t,d], 0)   (product: pool_product.cpp)
//   maps       = min-max normalised raw, 0 where degenerate.
//
// The entry points share one driver: the whole section (dcam_pool_gradients), its first
// line alone (dcam_channel_weights, and dcam_channel_weights_into, which writes a chunk's
// weights into the rows of a table of all tokens) and the rest from given weights
// (dcam_weighted_maps).
// The split serves a caller that gets the gradients in chunks of tokens (the explainer,
// whose memory must not grow with the response): it reduces each chunk to its weights as
// it arrives and runs one product for all tokens at the end, so the product gets the
// large weight tables of one call instead of a small one per chunk, and the activations
// are read once instead of once per chunk.
//
// Accumulation: the gradient pass adds float32 sums of groups of 8 rows (at most 3
// roundings each, see pool_grads.cpp) in float64; the product sums runs of features in
// float32 and the runs in float64 (every term is >= 0, so nothing cancels; see pool.hpp).
// Both stay within a few 1e-7 of the exact sums, relative, below the reference's own
// float32 error. Every value the reference rounds to float32 (w, raw, the normalised map)
// is rounded at the same place here.
//
// Scheduling. Reading the gradients is the only memory-bound part; the product is
// compute. The tokens of an image are grouped into weight tables of up to 64 tokens, and
// as soon as the gradient pass has finished every token of a table, the product of that
// table becomes work. Threads take stream items (one (image, token) slice of grads, or a
// feature chunk of it when there are few slices) in order, fill items (a feature range of a
// table whose tokens' weights are all known, copied into the table) and product tasks (a
// table and a block of rows) when one is ready, but while stream items are left at most
// half of the threads (at least one) compute products, so the gradients keep streaming. (On two cores
// one core streams at only ~70% of what two do, so the overlap saves little there; the
// product's own cost is what counts.) The pass over the gradients stays one pure streaming
// reduction, and the NaN/Inf check rides on it (GradMode::kReluChecked).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <new>
#include <thread>

#include "common.hpp"
#include "dcam.h"
#include "pool.hpp"

namespace {

using namespace dcam;

// Runs f (which allocates) and returns false if it ran out of memory. Every allocation of
// a call happens here, before its parallel region, so a call that runs out of memory
// returns DCAM_ENOMEM with no output written.
template <class F>
bool allocated(F&& f) {
    try {
        f();
        return true;
    } catch (const std::bad_alloc&) {
        return false;
    }
}

template <class T>
std::unique_ptr<T[]> uninitialised(int64_t n) {
    return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(n, 1))]);
}

// The large buffers of a call (channel weights, weight tables, pooled sums) in one block
// kept by the calling thread between calls. Freed after every call, these megabytes came
// back from the kernel as fresh pages each time (glibc returns them): ~850 page faults and
// ~3.4 MB of page zeroing per call at T=64 N=576 D=4096, about 0.5 ms of a 12 ms call.
// The block is per thread, so concurrent calls from several threads never share it; one
// larger than kKeepBytes is released after its call instead of kept.
constexpr size_t kKeepBytes = size_t(256) << 20;

struct ScratchBlock {
    std::unique_ptr<char[]> kept;  // this thread's block, reused by its next call
    size_t kept_size = 0;
};
thread_local ScratchBlock t_scratch;

// `bytes` of 64-byte aligned scratch for one call, valid until the next call on this
// thread; `oneoff` holds a block too large to keep.
char* call_scratch(size_t bytes, std::unique_ptr<char[]>& oneoff) {
    const size_t need = bytes + 64;
    char* base;
    if (need > kKeepBytes) {
        oneoff.reset(new char[need]);
        base = oneoff.get();
    } else {
        if (t_scratch.kept_size < need) {
            t_scratch.kept.reset();
            t_scratch.kept_size = 0;
            t_scratch.kept.reset(new char[need]);
            t_scratch.kept_size = need;
        }
        base = t_scratch.kept.get();
    }
    const uintptr_t u = reinterpret_cast<uintptr_t>(base);
    return base + (64 - u % 64) % 64;
}

constexpr size_t round64(size_t n) { return (n + 63) / 64 * 64; }

// Tokens per weight table: up to 64 (the compacting kernel's register block: fewer
// compactions per multiply), but 32 with signed weights from a gradient pass, where the
// product is twice as long and a first table whose products overlap the rest of the pass
// pays off (A/B in one process, T=64 N=576 D=4096 bf16: grad_relu 10.95 vs 11.27 ms for 64
// vs 32; signed 12.0 vs 12.3 ms for 32 vs 64). Given weights have no pass to overlap:
// 64 (signed, dcam_weighted_maps alone: 3.28 vs 3.62 ms for 64 vs 32).
constexpr int64_t kTableTokens = 64, kTableTokensSigned = 32;
constexpr int64_t kProductRows = 32;  // rows of A per product task
constexpr int64_t kFillFeatures = 256;  // features per table-filling item

struct Problem {
    const void* acts;           // null: weights only (no product)
    const void* grads;          // null: the weights are given (weights_in)
    const float* weights_in;    // [B*T*D] given weights (when grads is null)
    float* weights_out;         // [B*T*D] the caller's buffer for the weights (weights only)
    dcam_dtype dtype;           // of the inputs given (acts and grads share one)
    int64_t B, T, N, D;
    bool signed_w;  // the channel weights may be negative (grad_relu off, or given weights that are)
    GradMode mode;
    // weights only: the rows of the caller's [B, table_tokens, D] table the B*T weights go to, token
    // first_token on (dcam_channel_weights_into); 0: a [B, T, D] table of these tokens alone
    int64_t table_tokens = 0, first_token = 0;
    bool streams() const { return grads != nullptr; }
    bool products() const { return acts != nullptr; }
};

// How the work is cut. Stream items are whole (image, token) slices of grads; only when
// there are too few slices to keep every thread streaming are they cut into feature
// chunks, which stream much slower (two threads, bf16, T=64 N=576 D=4096: whole slices
// 35 GB/s, halves 31, quarters 23, eighths 19: each row is read in shorter pieces).
struct Plan {
    int64_t dchunk = 0, nchunks = 0;    // stream item = (slice b*T + t, feature chunk of dchunk)
    int64_t fills = 0;                  // fill items per table (feature chunks of kFillFeatures)
    int64_t tokens = 0, tables = 0;     // tokens per weight table, tables per image
    int64_t table_size = 0;             // floats per table
    int64_t row_tasks = 0;              // product tasks per table (blocks of kProductRows rows)
    int64_t stream_items = 0, fill_items = 0, product_tasks = 0;
    int64_t maps = 0;                   // maps to normalise (B*T when there is a product)
};

Plan make_plan(const Problem& p, int nthreads) {
    Plan pl;
    const int64_t BT = p.B * p.T;
    pl.dchunk = p.D;
    if (p.streams() && BT < 4 * nthreads) {  // few slices: split the features so every thread streams
        const int64_t parts = (4 * nthreads + BT - 1) / BT;
        pl.dchunk = std::min(p.D, std::max<int64_t>(256, round_up((p.D + parts - 1) / parts, 64)));
    }
    if (p.products()) {
        pl.tokens = std::min(p.T, p.signed_w && p.streams() ? kTableTokensSigned : kTableTokens);
        pl.tables = (p.T + pl.tokens - 1) / pl.tokens;
        pl.table_size = weight_table_size(p.D, pl.tokens, p.signed_w, TableLayout::kByFeature);  // the larger
        pl.row_tasks = (p.N + kProductRows - 1) / kProductRows;
        pl.product_tasks = p.B * pl.tables * pl.row_tasks;
        pl.maps = BT;
        // A fill item copies the weights of every token of one table, features [d0, d0 + 256),
        // into the table once they are all known: a thread then owns every cache line it writes.
        // (Filled per token as each slice was streamed, two threads took turns writing each line
        // of a by-feature table, 16 tokens to a line: 4,096 lines moved between cores per token.)
        pl.fills = (p.D + kFillFeatures - 1) / kFillFeatures;
        pl.fill_items = p.B * pl.tables * pl.fills;
    }
    // A stream item is one feature chunk of one (image, token) slice of grads.
    if (p.streams()) {
        pl.nchunks = (p.D + pl.dchunk - 1) / pl.dchunk;
        pl.stream_items = BT * pl.nchunks;
    } else {
        pl.dchunk = 0;  // (no stream: no column sums, no scratch for them)
    }
    return pl;
}

// Per-thread scratch.
struct Worker {
    std::unique_ptr<double[]> stream_acc;  // 2 * dchunk: column sums + the bf16 path's scratch
    std::unique_ptr<double[]> product_acc;
    std::unique_ptr<float[]> product_vals;
    std::unique_ptr<int32_t[]> product_offs;
    ProductScratch product;

    void allocate(const Plan& pl) {
        stream_acc = uninitialised<double>(2 * pl.dchunk);
        product_acc = uninitialised<double>(ProductScratch::doubles(kProductRows, weight_table_width(pl.tokens)));
        product_vals = uninitialised<float>(8 * (kProductChunk + 8));
        product_offs = uninitialised<int32_t>(8 * (kProductChunk + 8));
        product.acc = product_acc.get();
        product.vals = product_vals.get();
        product.offs = product_offs.get();
    }
};

// The buffers and progress of one call, shared by its threads.
struct Run {
    const Problem& p;
    const Plan& pl;
    std::unique_ptr<char[]> oneoff;                  // the scratch block when too large to keep
    float* weights = nullptr;                        // [B*T*D] float32, as the reference's g.mean(dim=2),
                                                     // written by the stream (scratch or weights_out)
    float* table_storage = nullptr;                  // [B*tables][table_size], 64-byte aligned
    double* raw = nullptr;                           // [B*T*N] float64 pooled sums
    std::unique_ptr<WeightTable[]> table;            // [B*tables], filled by the fill items, read once ready
    std::unique_ptr<std::atomic<int64_t>[]> left;    // [B*tables]: stream items not finished
    std::unique_ptr<std::atomic<bool>[]> streamed;   // [B*tables]: every weight of the table's tokens known
    std::unique_ptr<std::atomic<int64_t>[]> fills_left;  // [B*tables]: fill items not finished
    std::unique_ptr<std::atomic<bool>[]> ready;      // [B*tables]: table built
    std::unique_ptr<std::atomic<int64_t>[]> rows_left;  // [B*tables]: product tasks not finished
    std::unique_ptr<std::atomic<bool>[]> summed;     // [B*tables]: every product task done
    std::unique_ptr<Worker[]> workers;               // [threads]: each thread's scratch
    float* maps_out;                                 // [B*T*N] (products only)
    uint8_t* degenerate_out;                         // [B*T] or null
    bool check_weights;                              // look for NaN/Inf among the weights
    std::atomic<int64_t> next_stream{0}, next_fill{0}, next_product{0}, next_map{0};
    std::atomic<int> product_workers{0}, finished{0};
    std::atomic<bool> nonfinite{false};
    int product_cap = 1;                             // product workers allowed while streaming

    Run(const Problem& p_, const Plan& pl_, float* maps, uint8_t* degenerate, bool check)
        : p(p_), pl(pl_), maps_out(maps), degenerate_out(degenerate), check_weights(check) {}

    // Everything a call allocates, before its parallel region (which then cannot run out
    // of memory half-way through writing the outputs).
    void allocate(int nthreads) {
        workers.reset(new Worker[static_cast<size_t>(nthreads)]);
        for (int i = 0; i < nthreads; ++i) workers[i].allocate(pl);
        const int64_t ntab = p.B * pl.tables;
        // the weights need scratch only when both computed and consumed here
        const size_t wbytes = p.streams() && p.products() ? round64(sizeof(float) * p.B * p.T * p.D) : 0;
        const size_t tbytes = round64(sizeof(float) * ntab * pl.table_size);
        const size_t rbytes = p.products() ? sizeof(double) * p.B * p.T * p.N : 0;
        char* block = call_scratch(wbytes + tbytes + rbytes, oneoff);
        weights = !p.streams() ? nullptr : p.products() ? reinterpret_cast<float*>(block) : p.weights_out;
        table_storage = reinterpret_cast<float*>(block + wbytes);
        raw = reinterpret_cast<double*>(block + wbytes + tbytes);
        table = uninitialised<WeightTable>(ntab);
        left.reset(new std::atomic<int64_t>[static_cast<size_t>(ntab)]);
        streamed.reset(new std::atomic<bool>[static_cast<size_t>(ntab)]);
        fills_left.reset(new std::atomic<int64_t>[static_cast<size_t>(ntab)]);
        ready.reset(new std::atomic<bool>[static_cast<size_t>(ntab)]);
        rows_left.reset(new std::atomic<int64_t>[static_cast<size_t>(ntab)]);
        summed.reset(new std::atomic<bool>[static_cast<size_t>(ntab)]);
        for (int64_t i = 0; i < ntab; ++i) {
            const int64_t t0 = (i % pl.tables) * pl.tokens;
            const int64_t cnt = std::min(pl.tokens, p.T - t0);
            left[i].store(p.streams() ? cnt * pl.nchunks : 0, std::memory_order_relaxed);
            streamed[i].store(!p.streams(), std::memory_order_relaxed);  // given weights are known from the start
            fills_left[i].store(pl.fills, std::memory_order_relaxed);
            table[i] = make_weight_table(p.D, cnt, p.signed_w, weight_table_layout(cnt), p.dtype,
                                         table_storage + i * pl.table_size);
            ready[i].store(false, std::memory_order_relaxed);
            rows_left[i].store(pl.row_tasks, std::memory_order_relaxed);
            summed[i].store(false, std::memory_order_relaxed);
        }
    }
};

// The weight table of slice bt = b * T + t (products only).
int64_t table_of(const Run& run, int64_t bt) {
    return (bt / run.p.T) * run.pl.tables + (bt % run.p.T) / run.pl.tokens;
}

// Counts one finished piece of table tix's stage (`left`: its count of pieces not finished)
// and raises `done` after the last (acq_rel: every piece's writes are seen by then).
void piece_done(std::atomic<int64_t>& left, std::atomic<bool>& done) {
    if (left.fetch_sub(1, std::memory_order_acq_rel) == 1) done.store(true, std::memory_order_release);
}

// Stream item `it`: w[bt, d0 .. d0+len) = float32(sum_n G+) / N.
void stream_item(Run& run, Worker& wk, int64_t it) {
    const Problem& p = run.p;
    const Plan& pl = run.pl;
    const int64_t d0 = (it % pl.nchunks) * pl.dchunk, len = std::min(pl.dchunk, p.D - d0);
    const int64_t bt = it / pl.nchunks;
    const int64_t esize = p.dtype == DCAM_F32 ? 4 : 2;
    double* acc = wk.stream_acc.get();
    std::fill(acc, acc + len, 0.0);
    grad_column_sums(static_cast<const char*>(p.grads) + bt * p.N * p.D * esize, p.dtype, p.mode, p.D, p.N, d0,
                     len, acc, acc + pl.dchunk);
    const float n_rows = static_cast<float>(p.N);  // the mean divides the float32 sum by N, as torch does
    const int64_t row = p.table_tokens ? (bt / p.T) * p.table_tokens + p.first_token + bt % p.T : bt;
    float* w = run.weights + row * p.D + d0;
    for (int64_t j = 0; j < len; ++j) w[j] = static_cast<float>(acc[j]) / n_rows;
    if (run.check_weights) {
        // Every NaN/Inf of grads made a weight of its slice non-finite (see GradMode); a
        // finite gradient can only do that by overflowing a float32 partial sum (|g| > ~4e37).
        if (!all_finite(w, len)) run.nonfinite.store(true, std::memory_order_relaxed);
    }
    if (p.products()) {
        const int64_t tix = table_of(run, bt);
        piece_done(run.left[tix], run.streamed[tix]);
    }
}

// Fill item f: the weights of every token of one table (the gradient pass's, or the given
// ones), features [d0, d0 + kFillFeatures), copied into the table.
void fill_item(Run& run, int64_t f) {
    const Problem& p = run.p;
    const Plan& pl = run.pl;
    const int64_t tix = f / pl.fills, b = tix / pl.tables, t0 = (tix % pl.tables) * pl.tokens;
    const int64_t d0 = (f % pl.fills) * kFillFeatures, len = std::min(kFillFeatures, p.D - d0);
    const float* w = p.streams() ? run.weights : p.weights_in;
    const WeightTable& tbl = run.table[tix];
    for (int64_t i = 0; i < tbl.cnt; ++i) fill_weight_table(tbl, p.D, i, d0, len, w + (b * p.T + t0 + i) * p.D + d0);
    piece_done(run.fills_left[tix], run.ready[tix]);
}

// Claims the next of n pieces of work, taken in order from `next`, if its input is done
// (done(i) for piece i; acquire: its writes are seen); -1 if it is not, or none is left.
template <class Done>
int64_t claim_in_order(std::atomic<int64_t>& next, int64_t n, Done&& done) {
    int64_t i = next.load(std::memory_order_relaxed);
    while (i < n && done(i)) {
        if (next.compare_exchange_weak(i, i + 1, std::memory_order_acq_rel)) return i;
    }
    return -1;
}

// The next fill item, once its table's weights are all known.
int64_t claim_fill(Run& run) {
    return claim_in_order(run.next_fill, run.pl.fill_items, [&](int64_t f) {
        return run.streamed[f / run.pl.fills].load(std::memory_order_acquire);
    });
}

// The next product task, once its table is built.
int64_t claim_product(Run& run) {
    return claim_in_order(run.next_product, run.pl.product_tasks, [&](int64_t g) {
        return run.ready[g / run.pl.row_tasks].load(std::memory_order_acquire);
    });
}

// Product task g: raw of one table's tokens for one block of rows; the last task of a
// table makes its maps ready to normalise.
void product_task(Run& run, Worker& wk, int64_t g) {
    const Problem& p = run.p;
    const Plan& pl = run.pl;
    const int64_t tix = g / pl.row_tasks, b = tix / pl.tables, t0 = (tix % pl.tables) * pl.tokens;
    const int64_t n0 = (g % pl.row_tasks) * kProductRows, n1 = std::min(p.N, n0 + kProductRows);
    const int64_t esize = p.dtype == DCAM_F32 ? 4 : 2;
    product_rows(static_cast<const char*>(p.acts) + b * p.N * p.D * esize, p.dtype, p.D, n0, n1, run.table[tix],
                 run.raw + (b * p.T + t0) * p.N, p.N, wk.product);
    piece_done(run.rows_left[tix], run.summed[tix]);
}

// The next map (b * T + t) to normalise, once its table's sums are complete.
int64_t claim_map(Run& run) {
    return claim_in_order(run.next_map, run.pl.maps, [&](int64_t m) {
        return run.summed[table_of(run, m)].load(std::memory_order_acquire);
    });
}

// Map m = raw / D, min-max normalised (float32 arithmetic as the reference). A map with a
// NaN is degenerate, as in the reference, whose min and max are NaN then; so is the map of
// a token with a NaN or infinite weight: there every pixel's sum meets 0 * inf or NaN in the
// reference (for every activation's sign), which the product here skips where the
// activation is 0 or of the sign the weight's table half ignores.
void normalise_map(Run& run, int64_t m) {
    const Problem& p = run.p;
    const int64_t N = p.N;
    const float fD = static_cast<float>(p.D);
    const double* acc = run.raw + m * N;
    float* out = run.maps_out + m * N;
    float lo = static_cast<float>(acc[0]) / fD, hi = lo;
    int nan = 0;
    for (int64_t n = 0; n < N; ++n) {
        const float v = static_cast<float>(acc[n]) / fD;
        out[n] = v;
        lo = std::min(lo, v);
        hi = std::max(hi, v);
        nan |= v != v;
    }
    const float* w = (p.streams() ? run.weights : p.weights_in) + m * p.D;
    const bool deg = nan || !(hi > lo) || !all_finite(w, p.D);
    if (deg) {
        std::fill(out, out + N, 0.f);
    } else {
        const float den = (hi - lo) + kEpsNorm;
        for (int64_t n = 0; n < N; ++n) out[n] = (out[n] - lo) / den;
    }
    if (run.degenerate_out) run.degenerate_out[m] = deg ? 1 : 0;
}

// A thread's share of a call: every piece of work is claimed from shared counters, and
// nothing waits at a barrier between the stages (stream, product, normalisation): with a
// passive OpenMP wait policy each barrier a thread sleeps in costs a wake-up (tens of us on
// this box), which a caller pooling chunk by chunk pays per chunk.
void work(Run& run, Worker& wk) {
    const int64_t n_stream = run.pl.stream_items;
    for (;;) {
        const bool streaming = run.next_stream.load(std::memory_order_relaxed) < n_stream;
        if (!streaming || run.product_workers.load(std::memory_order_relaxed) < run.product_cap) {
            const int64_t g = claim_product(run);
            if (g >= 0) {
                run.product_workers.fetch_add(1, std::memory_order_relaxed);
                product_task(run, wk, g);
                run.product_workers.fetch_sub(1, std::memory_order_relaxed);
                continue;
            }
        }
        const int64_t f = claim_fill(run);
        if (f >= 0) {
            fill_item(run, f);
            continue;
        }
        if (streaming) {
            const int64_t it = run.next_stream.fetch_add(1, std::memory_order_relaxed);
            if (it < n_stream) stream_item(run, wk, it);
            continue;
        }
        const int64_t m = claim_map(run);
        if (m >= 0) {
            normalise_map(run, m);
            continue;
        }
        if (run.next_map.load(std::memory_order_relaxed) >= run.pl.maps) break;
        std::this_thread::yield();  // a table is still being streamed or multiplied by another thread
    }
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// Called by every thread when its work is done. The calling thread (0) then spins until
// the others are done too, for at most kSpinLimit, so that it arrives last at the region's
// closing barrier and returns at once: sleeping in that barrier (a passive wait policy)
// costs a wake-up of tens of us per call. The bound keeps a descheduled thread from
// costing more than that.
constexpr auto kSpinLimit = std::chrono::microseconds(1000);

void arrive(Run& run) {
    run.finished.fetch_add(1, std::memory_order_acq_rel);
    if (thread_num() != 0) return;
    const int team = team_size();
    const auto deadline = std::chrono::steady_clock::now() + kSpinLimit;
    for (int i = 1; run.finished.load(std::memory_order_acquire) < team; ++i) {
        cpu_relax();
        if (i % 256 == 0 && std::chrono::steady_clock::now() > deadline) break;
    }
}

// Whether any of the n weights is negative or NaN. Blocks without an exit inside vectorise
// (a compare and an or per 4 weights, baseline SSE2); the element-wise loop that stopped at
// the first one did not, and took ~70 us for T=64 D=4096 on the calling thread before the
// region began.
bool any_signed(const float* w, int64_t n) {
    constexpr int64_t kBlock = 2048;
    for (int64_t i = 0; i < n; i += kBlock) {
        const int64_t e = std::min(n, i + kBlock);
        int found = 0;
        for (int64_t j = i; j < e; ++j) found |= !(w[j] >= 0.f);
        if (found) return true;
    }
    return false;
}

bool valid_dtype(dcam_dtype dtype) { return dtype == DCAM_F32 || dtype == DCAM_F16 || dtype == DCAM_BF16; }

// The argument checks every entry point shares (their inputs: DCAM_EINVAL_* or DCAM_OK).
int check_sizes(dcam_dtype dtype, int64_t B, int64_t T, int64_t N, int64_t D) {
    if (!valid_dtype(dtype)) return DCAM_EINVAL_DTYPE;
    if (B < 0 || T < 0 || N < 1 || D < 1) return DCAM_EINVAL_SHAPE;
    if (D > (int64_t(1) << 24)) return DCAM_EINVAL_SHAPE;  // int32 offsets into the weight tables
    // every array a call touches (grads, acts, maps, weights) is addressable, with room for the
    // kernels' float32 scratch of the same shapes
    if (!array_fits(sizeof(float), {B, T, N, D}) || !array_fits(sizeof(float), {B, N, D}) ||
        !array_fits(sizeof(float), {B, T, N}) || !array_fits(sizeof(float), {B, T, D}))
        return DCAM_EINVAL_SHAPE;
    return DCAM_OK;
}

// One call of any entry point: the stream (when grads are given), the product and the
// normalisation (when acts are), the NaN/Inf check of the weights (when grads_nonfinite).
int run_pooling(const Problem& p, float* maps_out, uint8_t* degenerate_out, int32_t* grads_nonfinite) {
    const int nthreads = max_threads();
    const Plan pl = make_plan(p, nthreads);
    Run run(p, pl, maps_out, degenerate_out, grads_nonfinite != nullptr);
    if (!allocated([&] { run.allocate(nthreads); })) return DCAM_ENOMEM;
    run.product_cap = std::max(1, nthreads / 2);
    // One parallel region for the whole call, and no barrier inside it (see work()).
#pragma omp parallel num_threads(nthreads)
    {
        work(run, run.workers[thread_num()]);
        arrive(run);
    }
    if (grads_nonfinite) *grads_nonfinite = run.nonfinite.load() ? 1 : 0;
    return DCAM_OK;
}

GradMode grad_mode(int grad_relu, const int32_t* grads_nonfinite) {
    return grad_relu == 0 ? GradMode::kPlain : grads_nonfinite ? GradMode::kReluChecked : GradMode::kRelu;
}

int pool_gradients_impl(const void* acts, const void* grads, dcam_dtype dtype, int64_t B, int64_t T, int64_t N,
                        int64_t D, int grad_relu, float* maps_out, uint8_t* degenerate_out,
                        int32_t* grads_nonfinite) {
    if (const int rc = check_sizes(dtype, B, T, N, D)) return rc;
    const bool empty = B == 0 || T == 0;
    if (!empty && (!acts || !grads || !maps_out)) return DCAM_EINVAL_NULL;
    if (grads_nonfinite) *grads_nonfinite = 0;  // (outputs are written only once the arguments passed)
    if (empty) return DCAM_OK;
    const Problem p{acts, grads, nullptr, nullptr, dtype, B, T, N, D, grad_relu == 0,
                    grad_mode(grad_relu, grads_nonfinite)};
    return run_pooling(p, maps_out, degenerate_out, grads_nonfinite);
}

}  // namespace

extern "C" int dcam_pool_gradients(const void* acts, const void* grads, dcam_dtype dtype, int64_t B, int64_t T,
                                   int64_t N, int64_t D, int grad_relu, float* maps_out,
                                   uint8_t* degenerate_out) {
    return pool_gradients_impl(acts, grads, dtype, B, T, N, D, grad_relu, maps_out, degenerate_out, nullptr);
}

extern "C" int dcam_pool_gradients_checked(const void* acts, const void* grads, dcam_dtype dtype, int64_t B,
                                           int64_t T, int64_t N, int64_t D, int grad_relu, float* maps_out,
                                           uint8_t* degenerate_out, int32_t* grads_nonfinite) {
    if (!grads_nonfinite) return DCAM_EINVAL_NULL;
    return pool_gradients_impl(acts, grads, dtype, B, T, N, D, grad_relu, maps_out, degenerate_out,
                               grads_nonfinite);
}

extern "C" int dcam_channel_weights(const void* grads, dcam_dtype dtype, int64_t B, int64_t T, int64_t N,
                                    int64_t D, int grad_relu, float* weights_out, int32_t* grads_nonfinite) {
    if (const int rc = check_sizes(dtype, B, T, N, D)) return rc;
    const bool empty = B == 0 || T == 0;
    if (!empty && (!grads || !weights_out)) return DCAM_EINVAL_NULL;
    if (grads_nonfinite) *grads_nonfinite = 0;
    if (empty) return DCAM_OK;
    const Problem p{nullptr, grads, nullptr, weights_out, dtype, B, T, N, D, grad_relu == 0,
                    grad_mode(grad_relu, grads_nonfinite)};
    return run_pooling(p, nullptr, nullptr, grads_nonfinite);
}

extern "C" int dcam_channel_weights_into(const void* grads, dcam_dtype dtype, int64_t B, int64_t T, int64_t N,
                                         int64_t D, int grad_relu, float* table, int64_t table_tokens,
                                         int64_t first_token, int32_t* grads_nonfinite) {
    if (const int rc = check_sizes(dtype, B, T, N, D)) return rc;
    if (table_tokens < 0 || first_token < 0 || first_token > table_tokens || T > table_tokens - first_token ||
        !array_fits(sizeof(float), {B, table_tokens, D}))
        return DCAM_EINVAL_SHAPE;
    const bool empty = B == 0 || T == 0;
    if (!empty && (!grads || !table)) return DCAM_EINVAL_NULL;
    if (grads_nonfinite) *grads_nonfinite = 0;
    if (empty) return DCAM_OK;
    Problem p{nullptr, grads, nullptr, table, dtype, B, T, N, D, grad_relu == 0, grad_mode(grad_relu, grads_nonfinite)};
    p.table_tokens = table_tokens;
    p.first_token = first_token;
    return run_pooling(p, nullptr, nullptr, grads_nonfinite);
}

extern "C" int dcam_weighted_maps(const void* acts, dcam_dtype dtype, const float* weights, int64_t B, int64_t T,
                                  int64_t N, int64_t D, float* maps_out, uint8_t* degenerate_out) {
    if (const int rc = check_sizes(dtype, B, T, N, D)) return rc;
    if (B == 0 || T == 0) return DCAM_OK;
    if (!acts || !weights || !maps_out) return DCAM_EINVAL_NULL;
    // Weights of either sign are allowed; tables of non-negative weights hold one copy and
    // skip the negative activations (the faster product), so look once (B*T*D floats,
    // T times fewer than the gradients they came from). A NaN counts as signed: the
    // two-sided tables keep it in the product of positive activations at least.
    const Problem p{acts, nullptr, weights, nullptr, dtype, B, T, N, D, any_signed(weights, B * T * D),
                    GradMode::kPlain};
    return run_pooling(p, maps_out, degenerate_out, nullptr);
}
