#include "cpu/thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace fae::cpu {
namespace {

int cores_available() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set) > 0 ? CPU_COUNT(&set) : 1;
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? int(n) : 1;
}

int env_threads() {
  const char* s = std::getenv("FLASHATTN_EXT_NUM_THREADS");
  if (s == nullptr || *s == '\0') return 0;
  const int n = std::atoi(s);
  return n > 0 ? n : 0;
}

std::atomic<int> g_default{0};

class Pool {
 public:
  void run(int64_t n, int threads, const std::function<void(int64_t)>& fn) {
    std::lock_guard<std::mutex> call_guard(call_mutex_);  // one parallel region at a time
    const int helpers = int(std::min<int64_t>(threads, n)) - 1;
    grow(helpers);
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      n_ = n;
      next_.store(0);
      active_ = helpers;
      pending_ = helpers;
      ++generation_;
    }
    cv_.notify_all();
    work();
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [&] { return pending_ == 0; });
    fn_ = nullptr;
  }

 private:
  void work() {
    for (int64_t i; (i = next_.fetch_add(1)) < n_;) (*fn_)(i);
  }

  void grow(int helpers) {
    while (int(workers_.size()) < helpers) {
      const int id = int(workers_.size());
      workers_.emplace_back([this, id] { loop(id); });
    }
  }

  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [&] { return generation_ != seen && id < active_; });
      seen = generation_;
      lk.unlock();
      work();
      lk.lock();
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  std::mutex call_mutex_, m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
  int active_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
};

// The process's pool, made on first use and never destroyed (its workers live until exit).
// fork() copies a pool but not its workers, and a lock that another thread held at the fork stays
// held in the child for good (a kernel running in another thread holds call_mutex_). So the child
// forgets the inherited pool without touching its locks (its few bytes leak) and makes a fresh
// one on its first parallel call; the parent keeps its pool. No lock guards the pointer: a
// function-local static or a mutex here could itself be held at a fork.
std::atomic<Pool*> g_pool{nullptr};

void forget_pool_in_child() { g_pool.store(nullptr); }
const int g_atfork_registered = pthread_atfork(nullptr, nullptr, &forget_pool_in_child);

Pool& pool() {
  Pool* p = g_pool.load();
  if (p != nullptr) return *p;
  auto* fresh = new Pool();
  if (g_pool.compare_exchange_strong(p, fresh)) return *fresh;
  delete fresh;  // another thread installed its pool first; `p` now holds that one
  return *p;
}

}  // namespace

int default_num_threads() {
  const int set = g_default.load();
  if (set > 0) return set;
  const int env = env_threads();
  return env > 0 ? env : cores_available();
}

void set_default_num_threads(int n) { g_default.store(n > 0 ? n : 0); }

void parallel_for(int64_t n, int threads, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (threads <= 0) threads = default_num_threads();
  if (threads == 1 || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  pool().run(n, threads, fn);
}

}  // namespace fae::cpu
