// SIMT emulator runtime: grid launch over worker OS threads, blocks as fibers scheduled
// cooperatively, the block barrier, and the warp-collective rendezvous (docs/emulator.md section 2).
#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "internal.h"

namespace fae::emu {

thread_local ThreadInfo* tls_thread = nullptr;
thread_local int tls_async_pending = 0;
thread_local Runner* tls_runner = nullptr;

namespace {

std::mutex g_mutex;
Config g_config;
bool g_env_read = false;
std::string g_env_error;
std::vector<std::unique_ptr<Runner>> g_idle_runners;
thread_local std::vector<Buffer> tls_announced;  // buffers built by gbuf since this thread's last launch

Runner* acquire_runner() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_idle_runners.empty()) return new Runner();
  Runner* r = g_idle_runners.back().release();
  g_idle_runners.pop_back();
  return r;
}

void release_runner(Runner* r) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_idle_runners.emplace_back(r);
}

std::string hex(unsigned v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

void thread_entry(void* p) {
  auto* t = static_cast<Thread*>(p);
  Runner* r = t->runner;
  context_entered(r->sched.stack ? nullptr : &r->sched);  // the first fiber starts from the scheduler
  try {
    (*r->launch->body)();
    if (!t->copies.empty())
      fail(*r, t, t->copies.front().dst,
           "thread exited with " + std::to_string(t->copies.size()) +
               " cp.async copies never waited for (missing cp.async wait_group / wait_all)");
  } catch (...) {
    if (!r->error) r->error = std::current_exception();
  }
  r->thread_exit(t);
  Thread* next = r->error ? nullptr : r->pick();  // a finished fiber is never resumed
  if (next) {
    r->cur = next;
    tls_thread = next;
    context_exit(next->ctx);
  }
  context_exit(r->sched);
}

const char* state_text(Thread::State s) {
  switch (s) {
    case Thread::State::done:
      return "has exited";
    case Thread::State::barrier:
      return "waits at __syncthreads";
    case Thread::State::collective:
      return "waits in another warp collective";
    default:
      return "is runnable";
  }
}

}  // namespace

namespace {

// FAE_EMU_HW_NUMERICS=<seed> turns the hardware numerics mode on; read at the first use of the
// configuration (under g_mutex).
void read_environment() {
  if (g_env_read) return;
  g_env_read = true;
  const char* v = std::getenv("FAE_EMU_HW_NUMERICS");
  if (!v || !*v) return;
  char* end = nullptr;
  errno = 0;
  const unsigned long long seed = std::strtoull(v, &end, 10);
  if (errno || *end || !std::isdigit(static_cast<unsigned char>(*v))) {
    g_env_error = std::string("FAE_EMU_HW_NUMERICS='") + v +
                  "' is not a seed: expected an integer in [0, 2^64) (unset or empty: exact numerics)";
    return;
  }
  g_config.hw_numerics = true;
  g_config.hw_seed = seed;
}

}  // namespace

Config get_config() {
  std::lock_guard<std::mutex> lock(g_mutex);
  read_environment();
  if (!g_env_error.empty()) throw std::invalid_argument(g_env_error);
  return g_config;
}

void set_config(const Config& c) {
  if (c.threads < 1) throw std::invalid_argument("emulator threads must be >= 1");
  if (c.stack_bytes < 16 * 1024) throw std::invalid_argument("emulator fiber stacks must be >= 16 KiB");
  std::lock_guard<std::mutex> lock(g_mutex);
  read_environment();
  g_config = c;
}

std::string thread_name(const Runner& r, int tid) {
  const dim3 b = r.launch->block;
  const int x = tid % int(b.x), y = tid / int(b.x) % int(b.y), z = tid / int(b.x * b.y);
  return "thread (" + std::to_string(x) + "," + std::to_string(y) + "," + std::to_string(z) + ") [warp " +
         std::to_string(tid / 32) + " lane " + std::to_string(tid % 32) + "]";
}

std::string address_name(const Runner& r, const void* p, bool global) {
  char b[96];
  if (global)
    std::snprintf(b, sizeof b, "global address %p", p);
  else
    std::snprintf(b, sizeof b, "shared offset %td (%p)", static_cast<const unsigned char*>(p) - r.smem, p);
  return b;
}

std::string block_name(const LaunchState& L, uint64_t linear) {
  const uint64_t x = linear % L.grid.x, y = linear / L.grid.x % L.grid.y, z = linear / L.grid.x / L.grid.y;
  return "block (" + std::to_string(x) + "," + std::to_string(y) + "," + std::to_string(z) + ")";
}

void fail(const Runner& r, const Thread* t, const void* addr, const std::string& rule, bool global) {
  std::string msg = std::string("kernel '") + r.launch->name + "' " + block_name(*r.launch, r.block_id - 1);
  if (t) msg += " " + thread_name(r, t->tid);
  if (addr) msg += " at " + address_name(r, addr, global);
  throw Error(msg + ": " + rule);
}

void Runner::make_ready(Thread* t) {
  t->state = Thread::State::ready;
  ready.push_back(t);
}

Thread* Runner::pick() {
  if (ready.empty()) return nullptr;
  Thread* t;
  if (launch->cfg.shuffle) {
    const std::size_t k = rng() % ready.size();
    t = ready[k];
    ready[k] = ready.back();
    ready.pop_back();
  } else {
    t = ready.front();
    ready.pop_front();
  }
  return t;
}

// Switches straight to the next runnable fiber; back to the scheduler only when none is left.
void Runner::yield() {
  Thread* me = cur;
  Thread* next = pick();
  if (!next) {
    context_switch(me->ctx, sched);
    return;
  }
  cur = next;
  tls_thread = next;
  context_switch(me->ctx, next->ctx);
}

void Runner::release_barrier() {
  if (launch->stats) stats.flush();
  new_epoch();
  nbarrier = 0;
  for (int i = 0; i < nthreads; ++i)
    if (threads[i].state == Thread::State::barrier) make_ready(&threads[i]);
}

void Runner::thread_exit(Thread* t) {
  t->state = Thread::State::done;
  ++ndone;
  if (nbarrier > 0 && nbarrier + ndone == nthreads) release_barrier();
}

void Runner::report_deadlock() {
  for (std::size_t w = 0; w < warps.size(); ++w) {
    for (const PendingCollective& pc : warps[w]) {
      const unsigned missing = pc.mask & ~pc.arrived;
      const int first = __builtin_ctz(pc.arrived), lost = __builtin_ctz(missing);
      const Thread& m = threads[w * 32 + lost];
      std::string what = state_text(m.state);
      if (m.state == Thread::State::collective)
        what = std::string("waits in ") + collective_name(m.arrival->op, m.arrival->qual) + " with membermask " +
               hex(m.arrival->mask);
      fail(*this, &threads[w * 32 + first], nullptr,
           std::string("warp collective ") + collective_name(pc.op, pc.qual) + " with membermask " + hex(pc.mask) +
               " cannot complete: lanes " + hex(pc.arrived) + " arrived but lane " + std::to_string(lost) + " " + what +
               " (a lane is missing, divergent, or uses a different mask)");
    }
  }
  fail(*this, nullptr, nullptr, "deadlock: threads wait at a barrier that can never complete");
}

void Runner::run_block(uint3 bidx) {
  const LaunchState& L = *launch;
  block_idx = bidx;
  nthreads = int(L.block.x * L.block.y * L.block.z);
  if (stack_bytes != L.cfg.stack_bytes) {
    stacks.clear();
    stack_bytes = L.cfg.stack_bytes;
  }
  while (stacks.size() < std::size_t(nthreads)) stacks.push_back(std::make_unique<Stack>(stack_bytes));
  if (threads.size() < std::size_t(nthreads)) threads.resize(nthreads);
  warps.assign((nthreads + 31) / 32, {});
  smem_size = L.smem;
  if (smem_store.size() < smem_size + 128) smem_store.resize(smem_size + 128);
  smem = smem_store.data() + (128 - reinterpret_cast<std::uintptr_t>(smem_store.data()) % 128) % 128;
  std::memset(smem, 0xFF, smem_size);  // uninitialised shared memory reads as NaN
  if (shadow.size() < smem_size) shadow.resize(smem_size);
  new_epoch();
  block_epoch = epoch;
  ndone = nbarrier = 0;
  tls_async_pending = 0;
  error = nullptr;
  ready.clear();
  stats.clear();
  const uint64_t linear = bidx.x + uint64_t(L.grid.x) * (bidx.y + uint64_t(L.grid.y) * bidx.z);
  block_id = uint32_t(linear + 1);
  if (L.cfg.shuffle) rng.seed(L.cfg.seed * 0x9E3779B97F4A7C15ull + linear);

  for (int i = 0; i < nthreads; ++i) {
    Thread& t = threads[i];
    t.thread_idx = {unsigned(i) % L.block.x, unsigned(i) / L.block.x % L.block.y, unsigned(i) / (L.block.x * L.block.y)};
    t.block_idx = bidx;
    t.block_dim = L.block;
    t.grid_dim = L.grid;
    t.runner = this;
    t.tid = i;
    t.warp = i / 32;
    t.lane = i % 32;
    t.arrival = nullptr;
    t.copies.clear();
    t.committed = t.completed = 0;
    context_make(t.ctx, stacks[i]->base(), stacks[i]->size(), &thread_entry, &t);
    make_ready(&t);
  }

  sched.stack = nullptr;  // the scheduler runs on this OS thread's stack, learnt by the first fiber
  tls_runner = this;
  try {
    while (!error) {
      if (ready.empty()) {
        if (ndone == nthreads) break;
        report_deadlock();
      }
      Thread* t = pick();
      cur = t;
      tls_thread = t;
      context_switch(sched, t->ctx);
    }
  } catch (...) {
    error = std::current_exception();
  }
  cur = nullptr;
  tls_thread = nullptr;
  tls_runner = nullptr;
  if (error) {  // abandoned fibers may leave copies in flight
    for (std::size_t i = 0; i < smem_size; ++i) shadow[i].inflight = 0;
    tls_async_pending = 0;
    std::rethrow_exception(error);
  }
  if (L.stats) stats.merge_into(*L.stats);
}

void syncthreads() {
  Runner* r = tls_runner;
  ++r->nbarrier;
  if (r->nbarrier + r->ndone == r->nthreads) {
    r->release_barrier();
    return;
  }
  r->cur->state = Thread::State::barrier;
  r->yield();
}

void* smem_base() { return tls_runner->smem; }

void smem_access(const void* p, std::size_t n, bool write, Site site) {
  Runner& r = *tls_runner;
  r.smem_check(r.cur, p, n, write);
  r.stat(r.cur, site, write ? StatOp::shared_store : StatOp::shared_load, int(n), p, int(n));
}

void warp_collective(Arrival& a) {
  Runner* r = tls_runner;
  Thread* t = r->cur;
  const unsigned bit = 1u << t->lane;
  const int in_warp = std::min(32, r->nthreads - t->warp * 32);
  const unsigned exists = in_warp == 32 ? ~0u : (1u << in_warp) - 1;
  const char* name = collective_name(a.op, a.qual);
  if (!(a.mask & bit))
    fail(*r, t, nullptr, std::string(name) + " executed by a lane that is not in its own membermask " + hex(a.mask));
  if (a.mask & ~exists)
    fail(*r, t, nullptr,
         std::string(name) + " membermask " + hex(a.mask) + " names lanes that do not exist (block of " +
             std::to_string(r->nthreads) + " threads)");
  auto& pend = r->warps[t->warp];
  PendingCollective* pc = nullptr;
  for (auto& p : pend)
    if (p.mask == a.mask && !(p.arrived & bit)) {
      pc = &p;
      break;
    }
  for (auto& p : pend)
    if (&p != pc && p.mask != a.mask && (p.arrived & a.mask))
      fail(*r, t, nullptr,
           std::string("mismatched membermasks: ") + name + " with membermask " + hex(a.mask) + " while lanes " +
               hex(p.arrived) + " wait in " + collective_name(p.op, p.qual) + " with membermask " + hex(p.mask));
  if (pc && (pc->op != a.op || pc->qual != a.qual))
    fail(*r, t, nullptr,
         std::string("divergent warp collective: this lane executes ") + name + " while lanes " + hex(pc->arrived) +
             " wait in " + collective_name(pc->op, pc->qual) + " (.sync.aligned: every lane at the same instruction)");
  if (!pc) {
    pend.push_back({a.mask, 0u, a.op, a.qual});
    pc = &pend.back();
  }
  t->arrival = &a;
  pc->arrived |= bit;
  if (pc->arrived != pc->mask) {
    t->state = Thread::State::collective;
    r->yield();
    return;
  }
  const PendingCollective done = *pc;
  pend.erase(pend.begin() + (pc - pend.data()));
  Thread* lanes[32] = {};
  for (int l = 0; l < 32; ++l)
    if (done.mask & (1u << l)) lanes[l] = &r->threads[t->warp * 32 + l];
  execute_collective(*r, lanes, done);
  for (Thread* l : lanes)
    if (l) {
      l->arrival = nullptr;
      if (l != t) r->make_ready(l);
    }
}

void announce_buffer(const Buffer& b) { tls_announced.push_back(b); }

void launch(const char* kernel_name, dim3 grid, dim3 block, std::size_t smem_bytes, const std::function<void()>& body,
            std::vector<Buffer> buffers) {
  buffers.insert(buffers.end(), tls_announced.begin(), tls_announced.end());
  tls_announced.clear();
  LaunchState L{kernel_name, grid, block, smem_bytes, &body, get_config(), nullptr, nullptr};
  const std::string head = std::string("kernel '") + kernel_name + "' launch: ";
  const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || block.z > 64)
    throw Error(head + "invalid block (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," +
                std::to_string(block.z) + "): at most 1024 threads, z <= 64");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7FFFFFFFu || grid.y > 65535 || grid.z > 65535)
    throw Error(head + "invalid grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," +
                std::to_string(grid.z) + ")");
  if (smem_bytes > L.cfg.smem_limit)
    throw Error(head + std::to_string(smem_bytes) + " bytes of dynamic shared memory exceed the limit of " +
                std::to_string(L.cfg.smem_limit));
  const long long nblocks = 1ll * grid.x * grid.y * grid.z;
  if (nblocks >= kManyBlocks)
    throw Error(head + "grid of " + std::to_string(nblocks) + " blocks: the emulator runs fewer than 2^32 - 1");
  GlobalShadow globals(std::move(buffers));
  L.globals = &globals;
  StatSink stats;
  if (L.cfg.stats) L.stats = &stats;
  const int nworkers = int(std::min<long long>(L.cfg.threads, nblocks));
  std::atomic<long long> next{0};
  std::atomic<bool> stop{false};
  std::vector<std::pair<long long, std::exception_ptr>> failures(nworkers, {-1, nullptr});
  auto work = [&](int w) {
    Runner* r = acquire_runner();
    r->launch = &L;
    while (!stop.load(std::memory_order_relaxed)) {
      const long long b = next.fetch_add(1);
      if (b >= nblocks) break;
      const uint3 bidx{unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / grid.x / grid.y)};
      try {
        r->run_block(bidx);
      } catch (...) {
        failures[w] = {b, std::current_exception()};
        stop = true;
      }
    }
    release_runner(r);
  };
  std::vector<std::thread> pool;
  for (int w = 1; w < nworkers; ++w) pool.emplace_back(work, w);
  work(0);
  for (auto& th : pool) th.join();
  std::pair<long long, std::exception_ptr> first{-1, nullptr};
  for (auto& f : failures)
    if (f.second && (!first.second || f.first < first.first)) first = f;
  if (first.second) std::rethrow_exception(first.second);
  if (L.stats) publish_stats(L);
}

}  // namespace fae::emu
