// Helpers shared by the forward and backward kernels (tile loads) and their launchers (buffer
// extents).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/primitives.cuh"

namespace fae::cuda {

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

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

// Elements spanned by a (B, S, H, D) tensor with non-negative strides.
inline std::size_t extent(int64_t batch_stride, int64_t row_stride, int64_t head_stride, int64_t b, int64_t s,
                          int64_t h, int64_t d) {
  return std::size_t((b - 1) * batch_stride + (s - 1) * row_stride + (h - 1) * head_stride + d);
}

}  // namespace fae::cuda
