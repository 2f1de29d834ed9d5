// A small persistent thread pool for the CPU kernels. parallel_for splits [0, n) into tasks that
// worker threads claim one at a time; the calling thread works too. Calls from several Python
// threads at once are serialised, so the pool never oversubscribes the cores it was given. A child
// made by fork() (also while another thread is inside parallel_for) gets a pool of its own.
#pragma once
#include <cstdint>
#include <functional>

namespace fae::cpu {

// Threads used when a call does not ask for a number: FLASHATTN_EXT_NUM_THREADS if set, else the
// cores this process may run on.
int default_num_threads();
void set_default_num_threads(int n);  // n <= 0 restores the automatic choice

// Runs fn(i) for every i in [0, n) on up to `threads` threads (0 = default) and returns when all
// are done. fn must not throw.
void parallel_for(int64_t n, int threads, const std::function<void(int64_t)>& fn);

}  // namespace fae::cpu
