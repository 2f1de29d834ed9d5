// Profiler counters: per launch and call site, shared-memory wavefronts (bank conflicts) and global
// 32-byte sectors of each warp-level memory request.
//   Shared memory: 32 banks of 4-byte words; a request is served in phases (32 lanes for accesses
//   of up to 4 bytes, 16 lanes for 8 bytes, 8 lanes for 16 bytes and for each 8x8 matrix of
//   ldmatrix/stmatrix); a phase takes as many wavefronts as the most distinct words it touches in
//   one bank (lanes reading one word share it), at least ceil(distinct words / 32).
//   Global memory: the distinct 32-byte sectors the lanes' bytes fall in, against the bytes asked.
#include <algorithm>
#include <cstring>
#include <tuple>

#include "internal.h"

namespace fae::emu {

namespace {

std::mutex g_stats_mutex;
std::vector<LaunchStats> g_stats;

bool is_shared(StatOp op) { return op <= StatOp::stmatrix; }

const char* op_name(StatOp op) {
  static const char* names[] = {"shared load", "shared store",  "cp.async shared", "ldmatrix",     "stmatrix",
                                "global load", "global store", "cp.async global", "global atomic"};
  return names[int(op)];
}

// One warp-level request of per-lane accesses (addr[l], size[l] for the lanes in mask).
Counters count_request(StatOp op, int size, uint32_t mask, const uintptr_t* addr, const uint8_t* sz) {
  Counters c;
  c.requests = 1;
  c.accesses = uint64_t(__builtin_popcount(mask));
  std::vector<uintptr_t> units;
  if (!is_shared(op)) {
    for (int l = 0; l < 32; ++l)
      if ((mask >> l & 1) && sz[l]) {
        c.bytes += sz[l];
        for (uintptr_t s = addr[l] >> 5; s <= (addr[l] + sz[l] - 1) >> 5; ++s) units.push_back(s);
      }
    std::sort(units.begin(), units.end());
    c.sectors = uint64_t(std::unique(units.begin(), units.end()) - units.begin());
    return c;
  }
  const int phase = size <= 4 ? 32 : size == 8 ? 16 : 8;
  for (int p0 = 0; p0 < 32; p0 += phase) {
    units.clear();
    for (int l = p0; l < p0 + phase; ++l)
      if (mask >> l & 1) {
        c.bytes += sz[l];
        for (uintptr_t w = addr[l] >> 2; w <= (addr[l] + sz[l] - 1) >> 2; ++w) units.push_back(w);
      }
    count_wavefronts(units, c);
  }
  return c;
}

// The kernel source file with "dir/../" removed: from csrc/ on without it (cuda/flash/...), from
// tests/ on with it (tests/emu/kernels/...), whole elsewhere.
std::string file_text(const char* file) {
  if (!file) return "(*p: no source line)";
  std::vector<std::string> parts;
  std::string f(file), part;
  for (std::size_t i = 0; i <= f.size(); ++i) {
    if (i < f.size() && f[i] != '/') {
      part += f[i];
      continue;
    }
    if (part == ".." && !parts.empty() && parts.back() != "..")
      parts.pop_back();
    else if (part != ".")
      parts.push_back(part);
    part.clear();
  }
  f.clear();
  for (std::size_t i = 0; i < parts.size(); ++i) f += (i ? "/" : "") + parts[i];
  if (const std::size_t at = f.rfind("csrc/"); at != std::string::npos) return f.substr(at + 5);
  if (const std::size_t at = f.rfind("tests/"); at != std::string::npos) return f.substr(at);
  return f;
}

}  // namespace

void Counters::add(const Counters& c) {
  requests += c.requests;
  accesses += c.accesses;
  bytes += c.bytes;
  sectors += c.sectors;
  wavefronts += c.wavefronts;
  ideal_wavefronts += c.ideal_wavefronts;
}

void count_wavefronts(std::vector<uintptr_t>& words, Counters& c) {
  if (words.empty()) return;
  std::sort(words.begin(), words.end());
  const auto end = std::unique(words.begin(), words.end());
  int per_bank[32] = {};
  for (auto w = words.begin(); w != end; ++w) ++per_bank[*w % 32];
  const auto distinct = uint64_t(end - words.begin());
  c.wavefronts += uint64_t(*std::max_element(per_bank, per_bank + 32));
  c.ideal_wavefronts += (distinct + 31) / 32;
}

void StatRecorder::lane_access(int warp, int lane, StatKey key, const void* p, int n) {
  std::vector<WarpSite>& warps = pending_[key];
  if (warps.size() <= std::size_t(warp)) warps.resize(std::size_t(warp) + 1);
  WarpSite& ws = warps[std::size_t(warp)];
  const uint32_t k = ws.count[lane]++;
  if (ws.requests.size() <= k) ws.requests.emplace_back();
  Instance& in = ws.requests[k];
  in.mask |= 1u << lane;
  in.addr[lane] = reinterpret_cast<uintptr_t>(p);
  in.size[lane] = uint8_t(n);
}

void StatRecorder::flush() {
  for (auto& [key, warps] : pending_) {
    Counters& total = totals_[key];
    for (WarpSite& ws : warps) {
      for (const Instance& in : ws.requests) total.add(count_request(key.op, key.size, in.mask, in.addr, in.size));
      ws.requests.clear();
      std::memset(ws.count, 0, sizeof ws.count);
    }
  }
}

void StatRecorder::merge_into(StatSink& sink) {
  flush();
  std::lock_guard<std::mutex> lock(sink.mutex);
  for (const auto& [key, c] : totals_) sink.sites[key].add(c);
  totals_.clear();
}

void StatRecorder::clear() {
  pending_.clear();
  totals_.clear();
}

void publish_stats(const LaunchState& L) {
  LaunchStats out{L.name, L.grid, L.block, {}};
  for (const auto& [k, c] : L.stats->sites)
    out.sites.push_back({file_text(k.file), k.line, op_name(k.op), k.size, c.requests, c.accesses, c.bytes, c.sectors,
                         c.wavefronts, c.ideal_wavefronts});
  std::sort(out.sites.begin(), out.sites.end(), [](const SiteStats& a, const SiteStats& b) {
    return std::tie(a.file, a.line, a.op, a.bytes_per_access) < std::tie(b.file, b.line, b.op, b.bytes_per_access);
  });
  std::lock_guard<std::mutex> lock(g_stats_mutex);
  g_stats.push_back(std::move(out));
}

std::vector<LaunchStats> memory_stats() {
  std::lock_guard<std::mutex> lock(g_stats_mutex);
  return g_stats;
}

void reset_stats() {
  std::lock_guard<std::mutex> lock(g_stats_mutex);
  g_stats.clear();
}

}  // namespace fae::emu
