// Emulator internals shared by runtime.cpp (scheduler, launch), memory.cpp (shadow memory,
// cp.async, checkers 1-4), global.cpp (races between blocks, checker 7), warp_ops.cpp
// (warp-collective semantics, checker 5) and stats.cpp (profiler counters).
#pragma once

#include <cstddef>
#include <cstdint>
#include <atomic>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "fiber.h"
#include "runtime.h"

namespace fae::emu {

struct Runner;

// One cp.async in flight: issued by its thread, performed when the thread waits for its group.
struct AsyncCopy {
  char* dst;
  const char* src;
  int cp_size, src_size;
  uint64_t group;  // sequence number of the group it belongs to (== committed while uncommitted)
};

struct Thread : ThreadInfo {
  enum class State : uint8_t { ready, barrier, collective, done };
  Context ctx;
  Runner* runner = nullptr;
  int tid = 0, warp = 0, lane = 0;
  State state = State::ready;
  Arrival* arrival = nullptr;  // while waiting in a warp collective
  std::deque<AsyncCopy> copies;
  uint64_t committed = 0, completed = 0;
};

// Per byte of shared memory. Epochs are unique per barrier interval of the runner, so a value from
// an earlier interval or block simply never matches the current one.
struct Shadow {
  uint32_t w_epoch = 0, r_epoch = 0;
  uint16_t w_tid = 0, r_tid = 0;
  uint16_t inflight = 0;  // 1 + tid of the thread whose cp.async targets this byte, 0 if none
  uint8_t w_async = 0;    // last write was a cp.async completion
};
constexpr uint16_t kManyReaders = 0xFFFF;

// A warp collective waiting for lanes.
struct PendingCollective {
  unsigned mask, arrived;
  Op op;
  int qual;
};

// Who accessed a byte of global memory in this launch: 1 + the linear index of the block, 0 for
// none, kManyBlocks for several.
struct GlobalByte {
  uint32_t writer, reader, atomic;
};
constexpr uint32_t kManyBlocks = 0xFFFFFFFFu;

// The launch's global buffers (overlapping ones merged) with one GlobalByte per byte; shared by
// the worker threads, each access checked and recorded under a lock striped by 64-byte line.
class GlobalShadow {
 public:
  explicit GlobalShadow(std::vector<Buffer> buffers);
  void access(const Runner& r, const char* p, std::size_t n, const char* lo, GAccess kind);

 private:
  struct Region {
    const char* lo;
    const char* hi;
    std::unique_ptr<GlobalByte[], void (*)(void*)> bytes;
  };
  std::vector<Region> regions_;
  std::atomic<bool> locks_[256] = {};
};

// ---- profiler counters (stats.cpp) ----
enum class StatOp : uint8_t {
  shared_load, shared_store, cp_async_shared, ldmatrix, stmatrix,
  global_load, global_store, cp_async_global, global_atomic
};
struct StatKey {
  const char* file;
  int line;
  StatOp op;
  int size;  // bytes per lane
  bool operator==(const StatKey& o) const { return file == o.file && line == o.line && op == o.op && size == o.size; }
};
struct StatKeyHash {
  std::size_t operator()(const StatKey& k) const {
    return std::hash<const void*>()(k.file) ^ (std::size_t(k.line) << 8) ^ (std::size_t(k.op) << 4) ^
           std::size_t(k.size);
  }
};
struct Counters {
  uint64_t requests = 0, accesses = 0, bytes = 0, sectors = 0, wavefronts = 0, ideal_wavefronts = 0;
  void add(const Counters& c);
};
using StatMap = std::unordered_map<StatKey, Counters, StatKeyHash>;
// Per-site counters of a launch, summed by the workers at the end of each block.
struct StatSink {
  std::mutex mutex;
  StatMap sites;
};

// One block's counters. Per-lane accesses (scalar loads/stores, cp.async, atomics) are grouped
// into warp-level requests: the k-th execution of a site by each lane of a warp since the last
// barrier is one request (exact for converged warps), counted at the next barrier or block end.
class StatRecorder {
 public:
  void lane_access(int warp, int lane, StatKey key, const void* p, int n);
  void warp_request(StatKey key, const Counters& c) { totals_[key].add(c); }
  void flush();  // counts the pending requests
  void merge_into(StatSink& sink);
  void clear();

 private:
  struct Instance {
    uint32_t mask = 0;
    uintptr_t addr[32];
    uint8_t size[32];
  };
  struct WarpSite {
    uint32_t count[32] = {};
    std::vector<Instance> requests;
  };
  std::unordered_map<StatKey, std::vector<WarpSite>, StatKeyHash> pending_;
  StatMap totals_;
};
// Bank wavefronts of one shared-memory phase touching the 4-byte words `words` (any order, repeats
// allowed), added to c.
void count_wavefronts(std::vector<uintptr_t>& words, Counters& c);

struct LaunchState {
  const char* name;
  dim3 grid, block;
  std::size_t smem;
  const std::function<void()>* body;
  Config cfg;
  GlobalShadow* globals;
  StatSink* stats;  // null unless cfg.stats
};
// Appends the launch's counters (L.stats) to those memory_stats returns.
void publish_stats(const LaunchState& L);

// Runs blocks on one OS thread; owns the fibers' stacks, shared memory and its shadow.
struct Runner {
  const LaunchState* launch = nullptr;
  uint3 block_idx{};
  uint32_t block_id = 0;  // 1 + linear block index
  std::vector<Thread> threads;
  std::vector<std::unique_ptr<Stack>> stacks;
  std::size_t stack_bytes = 0;
  std::vector<std::vector<PendingCollective>> warps;
  std::deque<Thread*> ready;
  Context sched;
  Thread* cur = nullptr;
  int nthreads = 0, ndone = 0, nbarrier = 0;
  uint32_t epoch = 0, epoch_counter = 0;
  uint32_t block_epoch = 0;  // epoch of the block's first interval: older writes are not this block's
  std::vector<unsigned char> smem_store;
  unsigned char* smem = nullptr;
  std::size_t smem_size = 0;
  std::vector<Shadow> shadow;
  int async_pending = 0;
  std::exception_ptr error;
  std::mt19937_64 rng;
  StatRecorder stats;

  void run_block(uint3 bidx);
  Thread* pick();  // next runnable thread (FIFO, or at random when shuffling), null if none
  void yield();
  void make_ready(Thread* t);
  void new_epoch() { epoch = ++epoch_counter; }
  void release_barrier();
  void thread_exit(Thread* t);
  [[noreturn]] void report_deadlock();
  // Shared-memory checks (memory.cpp), attributed to thread t.
  void smem_check(const Thread* t, const void* p, std::size_t n, bool write);
  void stat(const Thread* t, Site site, StatOp op, int size, const void* p, int n) {
    if (launch->stats) stats.lane_access(t->warp, t->lane, {site.file, site.line, op, size}, p, n);
  }
  void complete_group(Thread* t);
};

extern thread_local Runner* tls_runner;

// Formatting for error messages.
std::string thread_name(const Runner& r, int tid);
std::string block_name(const LaunchState& L, uint64_t linear);
std::string address_name(const Runner& r, const void* p, bool global);
// Throws Error naming kernel, block, thread t (if any), the address (shared offset, or global) and the rule.
[[noreturn]] void fail(const Runner& r, const Thread* t, const void* addr, const std::string& rule,
                       bool global = false);

// Hardware numerics mode (hw_numerics.cpp): D = A.B + C (first K columns of A / rows of B) summed
// in the order seeded by `key`, every partial sum truncated to float32; keys from a seed and values
// (for mma: the seed and the shape and type, so D is a function of A, B, C alone).
void mma_truncating(const double (&A)[16][16], const double (&B)[16][8], const double (&C)[16][8], int K,
                    uint64_t key, float (&D)[16][8]);
uint64_t hw_key(uint64_t seed, uint64_t a, uint64_t b, uint64_t c);

// Executes a completed warp collective (warp_ops.cpp); lanes[l] is null for non-participants.
void execute_collective(Runner& r, Thread* const lanes[32], const PendingCollective& pc);
const char* collective_name(Op op, int qual);

}  // namespace fae::emu
