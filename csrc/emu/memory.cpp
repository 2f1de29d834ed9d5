// Memory checkers of the emulator:
//   1. shared-memory races: a byte written by one thread and read or written by another within the
//      same barrier interval (missing __syncthreads);
//   2. cp.async (docs/emulator.md section 3.3): destination accessed while in flight, source written before the wait,
//      completed data read by another thread without a barrier after the issuing thread's wait,
//      copies never waited for;
//   3. shared accesses outside the dynamic shared memory (ldmatrix rows: warp_ops.cpp);
//   4. global accesses outside the buffers the launcher passed (fae::gbuf bounds);
//   6. reads of shared memory that no thread of the block has written (uninitialised).
#include <cstdio>
#include <cstring>

#include "internal.h"

namespace fae::emu {

namespace {

std::string bytes_text(std::size_t n) { return std::to_string(n) + (n == 1 ? " byte" : " bytes"); }

// Checks that [p, p + n) lies inside the dynamic shared memory; returns its offset.
std::size_t smem_offset(const Runner& r, const Thread* t, const void* p, std::size_t n, const char* what) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < r.smem || c + n > r.smem + r.smem_size)
    fail(r, t, p,
         std::string(what) + " of " + bytes_text(n) + " outside the dynamic shared memory (" +
             bytes_text(r.smem_size) + " allocated at launch)");
  return std::size_t(c - r.smem);
}

}  // namespace

void Runner::smem_check(const Thread* t, const void* p, std::size_t n, bool write) {
  const std::size_t off = smem_offset(*this, t, p, n, write ? "shared-memory write" : "shared-memory read");
  const uint16_t me = uint16_t(t->tid);
  for (std::size_t i = off; i < off + n; ++i) {
    Shadow& s = shadow[i];
    const void* a = smem + i;
    if (s.inflight) {
      const int owner = s.inflight - 1;
      fail(*this, t, a,
           std::string(write ? "write to" : "read of") + " a cp.async destination still in flight (issued by " +
               (owner == t->tid ? std::string("this thread") : thread_name(*this, owner)) +
               ") before the issuing thread's cp.async wait" +
               (owner == t->tid ? "" : " and a __syncthreads after it"));
    }
    if (s.w_epoch == epoch && s.w_tid != me) {
      if (s.w_async && !write)
        fail(*this, t, a,
             "read of cp.async data completed by " + thread_name(*this, s.w_tid) +
                 " without a __syncthreads between that thread's cp.async wait and this read");
      fail(*this, t, a,
           std::string("shared-memory race: written by ") + thread_name(*this, s.w_tid) + " and " +
               (write ? "written" : "read") + " by this thread in the same barrier interval (missing __syncthreads)");
    }
    if (write) {
      if (s.r_epoch == epoch && s.r_tid != me)
        fail(*this, t, a,
             std::string("shared-memory race: read by ") +
                 (s.r_tid == kManyReaders ? std::string("several threads") : thread_name(*this, s.r_tid)) +
                 " and written by this thread in the same barrier interval (missing __syncthreads)");
      s.w_epoch = epoch;
      s.w_tid = me;
      s.w_async = 0;
      continue;
    }
    if (s.w_epoch < block_epoch)
      fail(*this, t, a, "read of uninitialised shared memory (no thread of this block has written it)");
    if (s.r_epoch != epoch) {
      s.r_epoch = epoch;
      s.r_tid = me;
    } else if (s.r_tid != me) {
      s.r_tid = kManyReaders;
    }
  }
}

void global_fault(const void* p, std::size_t n, const void* lo, const void* hi, GAccess kind) {
  const Runner& r = *tls_runner;
  const char* what = kind == GAccess::read ? "read" : kind == GAccess::write ? "write" : "atomic update";
  char b[160];
  if (!lo)
    std::snprintf(b, sizeof b, "global %s of %zu bytes through a pointer with no buffer (not built with fae::gbuf)",
                  what, n);
  else
    std::snprintf(b, sizeof b, "global %s of %zu bytes outside its buffer [%p, %p) (byte offset %td)",
                  what, n, lo, hi, static_cast<const char*>(p) - static_cast<const char*>(lo));
  fail(r, r.cur, p, b, true);
}

void global_write_vs_async(const void* p, std::size_t n) {
  const Runner& r = *tls_runner;
  const char* a = static_cast<const char*>(p);
  for (int i = 0; i < r.nthreads; ++i)
    for (const AsyncCopy& c : r.threads[i].copies)
      if (c.src_size > 0 && a < c.src + c.src_size && c.src < a + n)
        fail(r, r.cur, p,
             "global write to the source of a pending cp.async (issued by " + thread_name(r, i) +
                 ") before the issuing thread's cp.async wait",
             true);
}

void cp_async(void* dst, const void* src, const void* src_lo, const void* src_hi, int cp_size, int src_size,
              Site site) {
  Runner& r = *tls_runner;
  Thread* t = r.cur;
  if (src_size < 0 || src_size > cp_size)
    fail(r, t, dst,
         "cp.async src-size " + std::to_string(src_size) + " outside [0, cp-size = " + std::to_string(cp_size) + "]");
  if (reinterpret_cast<std::uintptr_t>(dst) % cp_size)
    fail(r, t, dst, "cp.async shared destination not aligned to its " + std::to_string(cp_size) + "-byte size");
  if (src_size > 0) {
    if (reinterpret_cast<std::uintptr_t>(src) % cp_size)
      fail(r, t, src, "cp.async global source not aligned to its " + std::to_string(cp_size) + "-byte size", true);
    const auto* a = static_cast<const char*>(src);
    if (a < static_cast<const char*>(src_lo) || a + src_size > static_cast<const char*>(src_hi))
      global_fault(src, std::size_t(src_size), src_lo, src_hi, GAccess::read);
    r.launch->globals->access(r, a, std::size_t(src_size), static_cast<const char*>(src_lo), GAccess::read);
  }
  r.stat(t, site, StatOp::cp_async_global, cp_size, src, src_size);
  r.stat(t, site, StatOp::cp_async_shared, cp_size, dst, cp_size);
  const std::size_t off = smem_offset(r, t, dst, std::size_t(cp_size), "cp.async destination");
  // The copy may land at any moment until the wait: it conflicts like a write with this interval's
  // accesses by other threads, and any access while in flight is caught by the in-flight mark.
  r.smem_check(t, dst, std::size_t(cp_size), true);
  for (int i = 0; i < cp_size; ++i) r.shadow[off + i].inflight = uint16_t(t->tid + 1);
  t->copies.push_back({static_cast<char*>(dst), static_cast<const char*>(src), cp_size, src_size, t->committed});
  ++tls_async_pending;
}

void cp_async_commit() { ++tls_runner->cur->committed; }

void Runner::complete_group(Thread* t) {
  while (!t->copies.empty() && t->copies.front().group == t->completed) {
    const AsyncCopy c = t->copies.front();
    t->copies.pop_front();
    --tls_async_pending;
    const std::size_t off = std::size_t(reinterpret_cast<unsigned char*>(c.dst) - smem);
    if (c.src_size > 0) std::memcpy(c.dst, c.src, std::size_t(c.src_size));
    std::memset(c.dst + c.src_size, 0, std::size_t(c.cp_size - c.src_size));
    for (int i = 0; i < c.cp_size; ++i) {
      Shadow& s = shadow[off + i];
      s.inflight = 0;
      s.w_epoch = epoch;
      s.w_tid = uint16_t(t->tid);
      s.w_async = 1;
    }
  }
  ++t->completed;
}

// wait_group N: perform (complete) the oldest groups until at most N committed groups are pending;
// copies land at the latest legal moment so that a missing wait is caught.
void cp_async_wait(int n) {
  Runner& r = *tls_runner;
  Thread* t = r.cur;
  while (t->committed - t->completed > uint64_t(n)) r.complete_group(t);
}

void cp_async_wait_all() {
  cp_async_commit();
  cp_async_wait(0);
}

}  // namespace fae::emu
