// Shared pieces of the per-ISA kernel source: tile sizes, tile I/O (scratch: buffer.h).
// Include only from an ISA translation unit (see vec.h: everything here has internal linkage).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/online_softmax.h"
#include "cpu/backend.h"
#include "cpu/buffer.h"
#include "cpu/vec.h"

namespace fae::cpu::FAE_CPU_ISA {

// Below this many independent tiles (decoding, a single head) the key range is split into
// chunks (by shape only, so results do not depend on the thread count).
constexpr int64_t kMinTasks = 8;

constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
constexpr int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

// Tile sizes: query columns per forward tile (bq), keys per tile (bk), for the forward and the
// backward. Measured on AMD EPYC (Zen 3, AVX2, 2 cores, 1 thread, float32, S = 2048, CPU time,
// median of 7 alternating runs; the machine was shared, so differences under ~5% are noise):
//   forward  bq 64, bk 128: D=64 49.0 GFLOP/s vs 44.8 (bk 64), 50.2 (bk 256), 46.8 (bq 128);
//                           D=128 50.9 vs 47.4 (bk 64), 49.5 (bk 256).
//   backward bq 32, bk 64:  fwd+bwd 51.2 vs 47.4 (bq 64), 46.1 (bk 128), 42.5 (bq 32, bk 32).
//   backward bq 48, bk 64 (later, after the GEMM row-block split; backward alone, thread CPU time,
//                           best / median of 9): D=64 75.4 / 69.8 GFLOP/s vs 71.7 / 68.2 (bq 32),
//                           73.9 / 67.2 (48 x 48); D=128 74.8 / 66.8 vs 70.8 / 61.9 (bq 32).
//                           bq = 8 x MR(6): the S, dP and dQ products have no narrow row block.
// These are the first candidates of backend.h; a tuned table (python -m flashattn_ext tune) may
// name another candidate per (instruction set, dtype, head-dim class, direction).
struct TileSizes {
  int64_t fwd_bq, fwd_bk, bwd_bq, bwd_bk;
};
#define FAE_CPU_STRING(x) FAE_CPU_STRING2(x)
#define FAE_CPU_STRING2(x) #x
// The bfloat16 backward on AMX tiles (amx: backward.h's tile path) starts from 48 x 128 instead:
// Intel Xeon with AMX (bench/README.md), 1 thread, S = 2048, H = 8, backward GFLOP/s: D = 64 246
// vs 223 (48 x 64), 237 (96 x 64), 219 (32 x 64); D = 128 305 vs 269, 313, 258 (48 x 64: a
// third of the P^T and dS^T pair rows of its dV and dK products were padding).
inline TileSizes tile_sizes(DType dtype, int64_t head_dim, bool amx = false) {
  TileShape f = kFwdTileCandidates[0], b = kBwdTileCandidates[amx ? 2 : 0];
  tuned_tile(FAE_CPU_STRING(FAE_CPU_ISA), dtype, head_dim, false, f);
  tuned_tile(FAE_CPU_STRING(FAE_CPU_ISA), dtype, head_dim, true, b);
  return {f.bq, f.bk, b.bq, b.bk};
}

// Software prefetch of the `bytes` bytes at row (never faults; the address may lie past the
// data). Decoding reads each head's K / V rows a head stride apart, often a page or more, where
// the hardware prefetchers stop at every row.
inline void prefetch_row(const void* row, int64_t bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(row);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(reinterpret_cast<const void*>(a + uintptr_t(b)));
}

// Rows [0, n) x cols [0, d) of a strided storage-dtype matrix, as dense float rows of stride ld.
template <class V, typename T>
void load_rows(const T* src, int64_t src_ld, int64_t n, int64_t d, float* dst, int64_t ld) {
  constexpr int W = V::W;
  for (int64_t r = 0; r < n; ++r) {
    const T* s = src + r * src_ld;
    float* o = dst + r * ld;
    int64_t c = 0;
    if constexpr (std::is_same_v<T, float>) {
      for (; c + W <= d; c += W) V::store(o + c, V::load(s + c));
      if (c < d) V::storen(o + c, V::loadn(s + c, int(d - c)), int(d - c));
    } else {
      for (; c + W <= d; c += W) V::store(o + c, V::cvt(s + c, W));
      if (c < d) V::storen(o + c, V::cvt(s + c, int(d - c)), int(d - c));
    }
  }
}

// Dense float rows back to storage dtype (float: plain copy).
template <class V, typename T>
void store_rows(const float* src, int64_t ld, int64_t n, int64_t d, T* dst, int64_t dst_ld) {
  constexpr int W = V::W;
  for (int64_t r = 0; r < n; ++r) {
    const float* s = src + r * ld;
    T* o = dst + r * dst_ld;
    int64_t c = 0;
    if constexpr (std::is_same_v<T, float>) {
      for (; c + W <= d; c += W) V::store(o + c, V::load(s + c));
      if (c < d) V::storen(o + c, V::loadn(s + c, int(d - c)), int(d - c));
    } else {
      for (; c + W <= d; c += W) V::store_cvt(o + c, V::load(s + c), W);
      if (c < d) V::store_cvt(o + c, V::loadn(s + c, int(d - c)), int(d - c));
    }
  }
}

// A strided matrix of storage dtype viewed as float rows: the data itself for dense float rows
// (src_ld == d, or one row), else a (converted) copy in `buf` with rows d apart. Returns the
// pointer and sets ld to its row stride. Float rows further apart are copied too: in the
// (B, S, H, D) layout a row stride is H * D floats, a power of two of 2 KB or more, so the rows of
// a tile fall into a few L1 sets, and the product that walks down V's columns (O^T += V^T . P^T)
// evicted its own lines: the copy made the float32 forward on (1, 2048, 8, 64) 1.07-1.14x faster
// (5 alternated runs, Xeon of bench/README.md, 1 thread; forward+backward 0.98-1.07x).
template <class V, typename T>
const float* float_rows(const T* src, int64_t src_ld, int64_t n, int64_t d, float* buf, int64_t& ld) {
  if constexpr (std::is_same_v<T, float>)
    if (src_ld == d || n <= 1) {
      ld = src_ld;
      return src;
    }
  ld = d;
  load_rows<V>(src, src_ld, n, d, buf, d);
  return buf;
}

}  // namespace fae::cpu::FAE_CPU_ISA
