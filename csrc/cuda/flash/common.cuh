// Helpers shared by the forward and backward kernels (tile loads and stores) and their launchers
// (buffer extents, the sequence arrays of variable-length calls).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/seqlens.h"
#include "cuda/launch.cuh"
#include "cuda/primitives.cuh"

namespace fae::cuda {

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Reduces a per-thread row value over the 4 lanes of a quad (the lanes holding one row of an
// mma fragment).
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Rows [0, rows) of a tile whose first row is `src` (rows `row_stride` apart) into a padded
// shared tile; rows at or past `valid` are zero-filled (their source is never read).
template <class Tr>
__device__ __forceinline__ void load_tile(sptr<typename Tr::Element> dst,
                                          gptr<const typename Tr::Element> src, int64_t row_stride,
                                          int rows, int valid) {
  for (int c = threadIdx.x; c < rows * Tr::kChunksPerRow; c += Tr::kThreads) {
    const int r = c / Tr::kChunksPerRow, col = c % Tr::kChunksPerRow * 8;
    const bool ok = r < valid;
    cp_async<16>(dst + r * Tr::kRowStride + col, src + (ok ? r * row_stride + col : 0), ok ? 16 : 0);
  }
}

// The part-th highest power of two in the binary expansion of n (0 past the last), and their count.
constexpr int pow2_part(int n, int part) {
  for (int bit = 1 << 30; bit; bit >>= 1)
    if ((n & bit) && part-- == 0) return bit;
  return 0;
}
constexpr int pow2_parts(int n) { return n ? 1 + pow2_parts(n & (n - 1)) : 0; }

// Which 16-byte chunks of a Rows x Dim tile each of Threads threads copies, with compile-time trip
// counts. A row's Dim / 8 chunks split into parts of power-of-two chunk counts (Dim = 160: 16 + 4);
// in a part of C chunks, thread t takes chunk t % C of rows row(t / C) + i * (Threads / C) for
// i = 0, 1, ...: its shared offsets are compile-time steps from one base, its global address
// advances by a constant row step, and no index is divided or multiplied per chunk. A 16-byte
// shared access is served 8 lanes at a time; with C < 8 those lanes span 8 / C rows, and row()
// spaces them C rows apart within each group of 8 rows: padded rows are an odd number of 16-byte
// bank groups apart, so rows r + jC (j < 8 / C) start in bank groups C apart and their C chunks
// fill the 8 groups once (adjacent rows would meet in a group: 2 wavefronts instead of 1).
template <int Rows, int Dim, int Threads>
struct ChunkMap {
  static constexpr int kRows = Rows;
  static constexpr int kChunks = Dim / 8;
  static constexpr int kParts = pow2_parts(kChunks);
  static constexpr int chunks(int part) { return pow2_part(kChunks, part); }
  // First column (elements) of part `part`: the chunks of the higher parts come before it.
  static constexpr int first_col(int part) { return 8 * (kChunks & ~(2 * chunks(part) - 1)); }
  static constexpr int rows_per_pass(int part) { return Threads / chunks(part); }
  static constexpr int passes(int part) { return (Rows + rows_per_pass(part) - 1) / rows_per_pass(part); }
  // This thread's first row and its column (elements) in part `part`.
  __device__ static int row(int part) { return spread(int(threadIdx.x) / chunks(part), 8 / chunks(part)); }
  // Row of the q-th row slot when `per` rows share a phase of 8 lanes (a bijection on each 8 rows).
  static constexpr int spread(int q, int per) {
    return per <= 1 ? q : (q & ~7) | (q % per) * (8 / per) | (q & 7) / per;
  }
  __device__ static int col(int part) { return first_col(part) + int(threadIdx.x) % chunks(part) * 8; }
  static_assert(Dim % 8 == 0 && Threads % 32 == 0 && chunks(0) <= Threads, "16-byte chunks, whole warps");
  static_assert(spread(1, 2) == 4 && spread(2, 2) == 1 && spread(5, 4) == 3 && spread(9, 1) == 9, "row order");
};

// cp.async of the Map::kRows x Dim tile whose row 0 is at `tile` (rows `row_stride` apart) into
// shared rows LD elements apart. Bounded: rows at or past `valid` are zero-filled (src-size 0,
// their source is never read); otherwise every row is copied with no check.
template <class Map, int LD, bool Bounded, class T>
__device__ __forceinline__ void copy_tile_async(sptr<T> dst, gptr<const T> tile, int64_t row_stride, int valid) {
#pragma unroll
  for (int part = 0; part < Map::kParts; ++part) {
    const sptr<T> d = dst + (Map::row(part) * LD + Map::col(part));
    const int64_t step = Map::rows_per_pass(part) * row_stride;
    gptr<const T> s = tile + (Map::row(part) * row_stride + Map::col(part));
#pragma unroll
    for (int i = 0; i < Map::passes(part); ++i, s += step) {
      const int r = Map::row(part) + i * Map::rows_per_pass(part);
      if (Map::kRows % Map::rows_per_pass(part) != 0 && i == Map::passes(part) - 1 && r >= Map::kRows) break;
      cp_async<16>(d + i * Map::rows_per_pass(part) * LD, s, !Bounded || r < valid ? 16 : 0);
    }
  }
}

// copy_tile_async for rows at no common stride (paged K/V): row r of the tile (counted from its
// first row) is at row_ptr(r); rows at or past `valid` are zero-filled from `any` (never read).
template <class Map, int LD, class T, class RowPtr>
__device__ __forceinline__ void copy_rows_async(sptr<T> dst, RowPtr row_ptr, gptr<const T> any, int valid) {
#pragma unroll
  for (int part = 0; part < Map::kParts; ++part) {
    const sptr<T> d = dst + (Map::row(part) * LD + Map::col(part));
#pragma unroll
    for (int i = 0; i < Map::passes(part); ++i) {
      const int r = Map::row(part) + i * Map::rows_per_pass(part);
      if (Map::kRows % Map::rows_per_pass(part) != 0 && i == Map::passes(part) - 1 && r >= Map::kRows) break;
      const bool live = r < valid;
      cp_async<16>(d + i * Map::rows_per_pass(part) * LD, (live ? row_ptr(r) : any) + Map::col(part), live ? 16 : 0);
    }
  }
}

// 16-byte stores of rows [0, valid) of a Map::kRows x Dim shared tile (rows LD elements apart) to
// the global tile whose row 0 is at `tile` (rows `row_stride` apart).
template <class Map, int LD, class T>
__device__ __forceinline__ void store_tile(gptr<T> tile, sptr<T> src, int64_t row_stride, int valid) {
#pragma unroll
  for (int part = 0; part < Map::kParts; ++part) {
    const sptr<T> s = src + (Map::row(part) * LD + Map::col(part));
    const int64_t step = Map::rows_per_pass(part) * row_stride;
    gptr<T> d = tile + (Map::row(part) * row_stride + Map::col(part));
#pragma unroll
    for (int i = 0; i < Map::passes(part); ++i, d += step) {
      const int r = Map::row(part) + i * Map::rows_per_pass(part);
      if (r < valid && r < Map::kRows)
        ptr_cast<uint4>(d)[0] = ptr_cast<uint4>(s + i * Map::rows_per_pass(part) * LD)[0];  // O store
    }
  }
}

// Elements spanned by a (B, S, H, D) tensor with non-negative strides.
inline std::size_t extent(int64_t batch_stride, int64_t row_stride, int64_t head_stride, int64_t b, int64_t s,
                          int64_t h, int64_t d) {
  return std::size_t((b - 1) * batch_stride + (s - 1) * row_stride + (h - 1) * head_stride + d);
}

// The int32 sequence arrays of p as checked global pointers (empty where unused).
inline SeqArrays<gptr<const int32_t>> seq_buffers(const FwdParams& p) {
  const std::size_t n = std::size_t(p.batch);
  auto buf = [](const int32_t* a, std::size_t count) { return gbuf(a, a ? count : 0); };
  return {buf(p.cu_seqlens_q, n + 1), buf(p.cu_seqlens_k, n + 1), buf(p.seqused_k, n),
          buf(p.leftpad_k, n), buf(p.kv_batch_idx, n), buf(p.block_table, n * std::size_t(p.block_table_stride))};
}

// True when p uses any sequence array or splits (the variable-length kernels).
inline bool uses_seqs(const FwdParams& p) {
  return p.cu_seqlens_q || p.cu_seqlens_k || p.seqused_k || p.leftpad_k || p.kv_batch_idx || p.block_table ||
         p.num_splits > 1;
}

}  // namespace fae::cuda
