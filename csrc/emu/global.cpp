// Checker 7: global-memory races between the blocks of a launch. Blocks of one launch are not
// ordered, so a byte is in a race when one block writes it (plainly or atomically) and another
// block accesses it plainly, or one block writes it plainly and another reads or atomically
// updates it. Atomic updates of one byte by several blocks are not a race. Every access is
// recorded per byte for the whole launch, so the race is found whatever order the blocks run in.
#include <algorithm>
#include <cstdlib>
#include <new>
#include <thread>

#include "internal.h"

namespace fae::emu {

namespace {

// Spin lock on one stripe; held only while one access is checked and recorded.
class StripeLock {
 public:
  explicit StripeLock(std::atomic<bool>& l) : l_(l) {
    while (l_.exchange(true, std::memory_order_acquire)) std::this_thread::yield();
  }
  ~StripeLock() { l_.store(false, std::memory_order_release); }
  StripeLock(const StripeLock&) = delete;
  StripeLock& operator=(const StripeLock&) = delete;

 private:
  std::atomic<bool>& l_;
};

const char* kind_text(GAccess kind) {
  return kind == GAccess::read ? "plain read" : kind == GAccess::write ? "plain write" : "atomic update";
}

std::string others(const LaunchState& L, uint32_t id) {
  return id == kManyBlocks ? std::string("several blocks") : block_name(L, id - 1);
}

bool other_block(uint32_t id, uint32_t me) { return id != 0 && id != me; }

// Records bytes [0, n) accessed by block `me`; returns the first byte in a race, or n.
template <GAccess K>
std::size_t record(GlobalByte* bytes, std::size_t n, uint32_t me) {
  for (std::size_t i = 0; i < n; ++i) {
    GlobalByte& b = bytes[i];
    if (other_block(b.writer, me) || (K != GAccess::atomic && other_block(b.atomic, me)) ||
        (K != GAccess::read && other_block(b.reader, me)))
      return i;
    uint32_t& mine = K == GAccess::read ? b.reader : K == GAccess::write ? b.writer : b.atomic;
    mine = (mine == 0 || mine == me) ? me : kManyBlocks;
  }
  return n;
}

}  // namespace

GlobalShadow::GlobalShadow(std::vector<Buffer> buffers) {
  std::sort(buffers.begin(), buffers.end(), [](const Buffer& a, const Buffer& b) { return a.lo < b.lo; });
  std::vector<Buffer> merged;
  for (const Buffer& b : buffers) {
    if (b.lo == b.hi) continue;
    if (!merged.empty() && b.lo < merged.back().hi)
      merged.back().hi = std::max(merged.back().hi, b.hi, std::less<const void*>());
    else
      merged.push_back(b);
  }
  for (const Buffer& b : merged) {
    const auto* lo = static_cast<const char*>(b.lo);
    const auto* hi = static_cast<const char*>(b.hi);
    // calloc: large regions get zero pages lazily, so untouched parts cost nothing.
    void* mem = std::calloc(std::size_t(hi - lo), sizeof(GlobalByte));
    if (!mem) throw std::bad_alloc();
    regions_.push_back({lo, hi, {static_cast<GlobalByte*>(mem), &std::free}});
  }
}

void GlobalShadow::access(const Runner& r, const char* p, std::size_t n, const char* lo, GAccess kind) {
  const Region* reg = nullptr;
  for (const Region& g : regions_)
    if (p >= g.lo && p + n <= g.hi) {
      reg = &g;
      break;
    }
  if (!reg)
    fail(r, r.cur, p,
         "global access through a buffer unknown to the launch (not a kernel argument, nor built with "
         "fae::gbuf since the previous launch)",
         true);
  const uint32_t me = r.block_id;
  const std::size_t off = std::size_t(p - reg->lo);
  std::size_t i = 0;
  while (i < n) {
    // The bytes of [p + i, p + n) on this 64-byte line, under its stripe's lock.
    const uintptr_t line = reinterpret_cast<uintptr_t>(p + i) >> 6;
    const std::size_t end = std::min(n, std::size_t(((line + 1) << 6) - reinterpret_cast<uintptr_t>(p)));
    StripeLock lock(locks_[line % 256]);
    GlobalByte* bytes = &reg->bytes[off + i];
    const std::size_t k = kind == GAccess::read    ? record<GAccess::read>(bytes, end - i, me)
                          : kind == GAccess::write ? record<GAccess::write>(bytes, end - i, me)
                                                   : record<GAccess::atomic>(bytes, end - i, me);
    if (k < end - i) {
      const GlobalByte& b = bytes[k];
      const bool by_writer = other_block(b.writer, me);
      const bool by_atomic = !by_writer && kind != GAccess::atomic && other_block(b.atomic, me);
      const char* what = by_writer ? "written plainly by" : by_atomic ? "atomically updated by" : "read plainly by";
      const uint32_t other = by_writer ? b.writer : by_atomic ? b.atomic : b.reader;
      fail(r, r.cur, p + i + k,
           std::string("global-memory race between blocks: ") + kind_text(kind) + " (byte offset " +
               std::to_string(p + i + k - lo) + " of its buffer) of a byte " + what + " " + others(*r.launch, other) +
               " in the same launch (blocks are unordered: use atomics, or separate launches)",
           true);
    }
    i = end;
  }
}

void global_access(const void* p, std::size_t n, const void* lo, GAccess kind, Site site) {
  Runner& r = *tls_runner;
  r.launch->globals->access(r, static_cast<const char*>(p), n, static_cast<const char*>(lo), kind);
  const StatOp op = kind == GAccess::read    ? StatOp::global_load
                    : kind == GAccess::write ? StatOp::global_store
                                             : StatOp::global_atomic;
  r.stat(r.cur, site, op, int(n), p, int(n));
}

}  // namespace fae::emu
