// fork() safety. GCC's OpenMP runtime (libgomp) keeps the worker threads of the parent's
// last parallel region in a pool; fork() copies only the calling thread, and the child's
// next region of two or more threads waits for workers that do not exist: it hangs (a C
// program that forks after a dcam call; Python's multiprocessing with the "fork" start
// method). So a child runs dcam's regions on its calling thread (max_threads() in
// common.hpp), the same results bit for bit (no result depends on the thread count), and
// leaves the OpenMP settings of the rest of the process alone (torch's DataLoader sets its
// workers to one thread itself; torch's own ops in such a child hang as dcam's did).
#include <pthread.h>

#include <atomic>

#include "common.hpp"

namespace dcam {
namespace {

std::atomic<bool> g_forked_child{false};

void mark_forked_child() { g_forked_child.store(true, std::memory_order_relaxed); }

// Registered when the library loads (glibc drops the handler again if it is unloaded).
const int g_atfork_registered = pthread_atfork(nullptr, nullptr, mark_forked_child);

}  // namespace

bool in_forked_child() { return g_forked_child.load(std::memory_order_relaxed); }

}  // namespace dcam
