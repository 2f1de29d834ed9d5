// Compile-time tile constants of the forward kernel: FwdConfig derives everything from a tile
// shape; FwdTraits<T, D> picks the shape of each head dim from the table below.
#pragma once

#include <cstddef>

namespace fae::cuda {

// A block of Warps warps owns Warps * 16 * MTiles query rows; each warp owns 16 * MTiles
// consecutive rows (MTiles m16 tiles, so that every K or V fragment it loads feeds MTiles * 2
// mma). BlockN keys per main-loop iteration. Q is re-read from shared memory at every k step
// unless QInRegisters. Shared memory: Q, K and V tiles with rows padded by 8 elements (16 bytes)
// so that the eight 16-byte rows an ldmatrix reads fall in distinct bank groups; the Q tile is
// reused to stage O for 16-byte global stores.
template <class T, int HeadDim, int Warps, int MTiles, int BlockN, bool QInRegisters>
struct FwdConfig {
  using Element = T;
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kWarps = Warps;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMTiles = MTiles;            // m16 tiles per warp
  static constexpr int kWarpRows = 16 * MTiles;
  static constexpr int kBlockM = kWarps * kWarpRows;
  static constexpr int kBlockN = BlockN;
  static constexpr int kRowStride = HeadDim + 8;    // padded shared row, elements
  static constexpr int kNTilesS = kBlockN / 8;      // n8 tiles of S per m16 tile
  static constexpr int kNTilesO = HeadDim / 8;      // n8 tiles of O per m16 tile
  static constexpr int kKStepsQK = HeadDim / 16;    // k16 steps of Q.K^T
  static constexpr int kKStepsPV = kBlockN / 16;    // k16 steps of P.V
  static constexpr bool kQInRegisters = QInRegisters;
  static constexpr int kChunksPerRow = HeadDim / 8;  // 16-byte cp.async chunks per row
  static constexpr int kSmemQ = kBlockM * kRowStride;
  static constexpr int kSmemKV = kBlockN * kRowStride;
  static constexpr std::size_t kSmemBytes = (kSmemQ + 2 * kSmemKV) * sizeof(T);

  static_assert(sizeof(T) == 2, "tensor-core path: 16-bit elements");
  static_assert(HeadDim % 16 == 0 && HeadDim <= 256, "head dim: multiple of 16, at most 256");
  static_assert(MTiles == 1 || MTiles == 2, "a warp owns 16 or 32 rows");
  static_assert(kBlockN % 16 == 0, "P.V consumes keys 16 at a time");
  static_assert((kRowStride * sizeof(T)) % 16 == 0, "ldmatrix and cp.async rows: 16-byte aligned");
  static_assert(kSmemBytes <= 99 * 1024, "shared memory: at most 99 KiB per block (sm_86/sm_89)");
};

// Tile table, chosen from the SASS of one steady-state main-loop iteration per warp
// (bench/cuda_static.py) and ptxas -v (nvcc 13, sm_80 and sm_90, bfloat16 and float16): no spill,
// then the highest HMMA share of the loop's instructions (sm_80 bfloat16 below). "blocks/SM": what
// an A100's 164 KiB of shared memory and 64K registers hold, 8 warps or more in every row (an
// sm_86/sm_89 SM holds one block of up to 99 KiB).
//   D    warps x rows  BlockN  Q     smem (bytes)               HMMA share  blocks/SM
//   32   4 x 32        128     regs  (128 + 2*128) * 40 * 2  = 30720   14.6%  2
//   64   4 x 32        96      smem  (128 + 2*96) * 72 * 2   = 46080   22.1%  2
//   96   4 x 32        48      smem  (128 + 2*48) * 104 * 2  = 46592   22.1%  2
//   128  4 x 32        48      smem  (128 + 2*48) * 136 * 2  = 60928   26.6%  2
//   160  4 x 16        64      regs  (64 + 2*64) * 168 * 2   = 64512   25.8%  2
//   192  4 x 16        64      smem  (64 + 2*64) * 200 * 2   = 76800   26.8%  2
//   224  4 x 16        48      smem  (64 + 2*48) * 232 * 2   = 74240   25.6%  2
//   256  4 x 16        32      smem  (64 + 2*32) * 264 * 2   = 67584   24.9%  2
// Why: a thread holds O (MTiles * D / 2 floats) and S (MTiles * BlockN / 2) next to ~20 registers
// of addresses and row statistics and the K/V fragments ptxas loads ahead (~40 registers), so
// O + S much past 160-176 spills. Warps own 32 rows (every K or V fragment feeds 4 mma) up to
// D = 128; there BlockN = 64 spilled 144 bytes (255 registers), 48 does not (253); D = 64 spilled
// with BlockN = 128 on sm_90, D = 96 with 64. Past D = 128 a warp owns 16 rows: 32-row warps
// spilled at D = 160 even with BlockN = 32. Q stays in registers where that fits without a spill
// and saves one ldmatrix per k step. D = 224 and 256 with BlockN = 64 (or 8-warp blocks) would
// need 87-99 KiB: one block, 4 warps per A100 SM.
template <int HeadDim>
struct FwdTile;
// clang-format off
//                                        warps MTiles BlockN QInRegisters
template <> struct FwdTile<32>  { static constexpr int w = 4, mt = 2, bn = 128; static constexpr bool qr = true;  };
template <> struct FwdTile<64>  { static constexpr int w = 4, mt = 2, bn = 96;  static constexpr bool qr = false; };
template <> struct FwdTile<96>  { static constexpr int w = 4, mt = 2, bn = 48;  static constexpr bool qr = false; };
template <> struct FwdTile<128> { static constexpr int w = 4, mt = 2, bn = 48;  static constexpr bool qr = false; };
template <> struct FwdTile<160> { static constexpr int w = 4, mt = 1, bn = 64;  static constexpr bool qr = true;  };
template <> struct FwdTile<192> { static constexpr int w = 4, mt = 1, bn = 64;  static constexpr bool qr = false; };
template <> struct FwdTile<224> { static constexpr int w = 4, mt = 1, bn = 48;  static constexpr bool qr = false; };
template <> struct FwdTile<256> { static constexpr int w = 4, mt = 1, bn = 32;  static constexpr bool qr = false; };
// clang-format on

template <class T, int HeadDim>
using FwdTraits = FwdConfig<T, HeadDim, FwdTile<HeadDim>::w, FwdTile<HeadDim>::mt, FwdTile<HeadDim>::bn,
                            FwdTile<HeadDim>::qr>;

}  // namespace fae::cuda
