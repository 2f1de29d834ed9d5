// Compile-time tile constants of the backward kernels, one row per (dtype, head dim).
#pragma once

#include <cstddef>

namespace fae::cuda {

// Tile table. A block owns kBlockN = 64 keys (4 warps x 16 keys) of one (batch, kv head) and
// keeps their dK, dV in registers while it walks the query tiles (kBlockM queries each) of every
// query head in the group. Registers per thread: dK + dV (2 x D/2 floats), S^T and dP^T
// (2 x kBlockM/2 floats); kBlockM = 32 for D > 64 holds that under 255 registers. Shared memory:
// K, V (kBlockN rows), Q, dO (kBlockM rows), dS^T (kBlockN x kBlockM), rows padded by 8 elements,
// and lse2, delta, psum per query row.
//   D     BlockN BlockM  smem (bytes)
//   32    64     64      2*64*40*2 + 2*64*40*2 + 64*72*2 + 3*64*4      = 30464
//   64    64     64      2*64*72*2 + 2*64*72*2 + 64*72*2 + 3*64*4      = 46848
//   96    64     32      2*64*104*2 + 2*32*104*2 + 64*40*2 + 3*32*4    = 45440
//   128   64     32      2*64*136*2 + 2*32*136*2 + 64*40*2 + 3*32*4    = 57728
// D = 256 has no backward instantiation: K, V and Q, dO tiles alone exceed 99 KiB.
template <class T, int HeadDim>
struct BwdTraits {
  using Element = T;
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockN = 16 * kWarps;            // keys per block, 16 per warp
  static constexpr int kBlockM = HeadDim <= 64 ? 64 : 32;  // queries per step
  static constexpr int kRowStride = HeadDim + 8;         // padded K, V, Q, dO rows (elements)
  static constexpr int kDsStride = kBlockM + 8;          // padded dS^T rows (elements)
  static constexpr int kNTilesM = kBlockM / 8;           // n8 tiles of S^T / dP^T per warp
  static constexpr int kNTilesD = HeadDim / 8;           // n8 tiles of dK / dV per warp
  static constexpr int kChunksPerRow = HeadDim / 8;
  // dQ = dS.K: warps split the tile as kDqWarpsM x kDqWarpsD, each 16 queries x HeadDim/kDqWarpsD.
  static constexpr int kDqWarpsM = kBlockM / 16;
  static constexpr int kDqWarpsD = kWarps / kDqWarpsM;
  static constexpr int kDqTilesD = HeadDim / 8 / kDqWarpsD;
  static constexpr int kSmemKV = kBlockN * kRowStride;
  static constexpr int kSmemQ = kBlockM * kRowStride;
  static constexpr int kSmemDs = kBlockN * kDsStride;
  static constexpr std::size_t kSmemBytes =
      (2 * kSmemKV + 2 * kSmemQ + kSmemDs) * sizeof(T) + 3 * kBlockM * sizeof(float);
  // bwd_row_stats: K, V, Q, dO tiles, lse2 per row and the per-warp partial sums.
  static constexpr std::size_t kSmemStatsBytes =
      (2 * kSmemKV + 2 * kSmemQ) * sizeof(T) + (1 + 2 * kWarps) * kBlockM * sizeof(float);

  static_assert(sizeof(T) == 2, "tensor-core path: 16-bit elements");
  static_assert(HeadDim % 16 == 0 && HeadDim <= 128, "backward head dim: multiple of 16, at most 128");
  static_assert(kWarps % kDqWarpsM == 0 && (HeadDim / 8) % (2 * kDqWarpsD) == 0, "dQ warp split");
  static_assert(((2 * kSmemKV + 2 * kSmemQ + kSmemDs) * sizeof(T)) % 16 == 0, "float arrays after the tiles");
  static_assert(kSmemBytes <= 99 * 1024, "shared memory: at most 99 KiB per block (sm_86/sm_89)");
};

}  // namespace fae::cuda
