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

// Tile table, chosen with bench/cuda_static.py (nvcc 13, ptxas -v and the SASS of one steady-state
// main-loop iteration per warp, bfloat16; float16 has the same registers): no spill or stack on
// sm_80 and sm_90 in either type, for the dense and the variable-length kernel (flash_fwd_seqs_kernel,
// which holds its sequence's offsets besides), 8 warps per A100 SM (2 blocks), then the HMMA share
// of the loop's instructions on its common path (the lazy rescale's block skipped, fwd_kernel.cuh).
//   D    rows x warps BlockN Q     smem    HMMA share sm_80 / sm_90 (rescale block, instructions)
//   32   32 x 4       64     regs  20480   14.4% / 14.6%   (56)
//   64   32 x 4       64     regs  36864   23.8% / 23.9%   (88)
//   96   32 x 4       32     smem  39936   26.6% / 26.7%   (120)
//   128  32 x 4       48     smem  60928   33.0% / 33.2%   (152)
//   160  16 x 4       64     regs  64512   30.8% / 31.2%   (92)
//   192  16 x 4       64     regs  76800   33.0% / 33.4%   (108)
//   224  16 x 4       48     smem  74240   32.1% / 33.0%   (124)
//   256  16 x 4       32     smem  67584   34.2% / 34.4%   (140)
// Why each row (a thread holds O, MTiles * D / 2 floats, and S, MTiles * BlockN / 2, next to the
// addresses, row statistics and the K/V fragments ptxas loads ahead; the alternatives measured):
//   32:  BlockN 96 spilled 12 B in the variable-length kernel on sm_90; MUFU-bound either way (one
//        exp2 per score for a 32-wide dot product).
//   64:  BlockN 96 with Q in registers spilled 24 B on sm_80 (24.0%); BlockN 96 with Q in shared
//        memory fits (24.2%) but re-reads Q (0.29 ldmatrix per HMMA against 0.25); BlockN 128
//        spilled 72 B (sm_80).
//   96:  BlockN 48 (27.0%) spilled 16 B in the variable-length kernel on sm_90.
//   128: BlockN 64 (FlashAttention-2's 128 x 64, 34.5%) spilled 12 B on sm_80, 20 B on sm_90; Q in
//        registers would add 64 registers.
//   160: 32-row warps with BlockN 32 spilled on sm_90 (8 B); 16-row warps keep Q in registers.
//   192: Q in registers beats Q in shared memory (shared-memory bound).
//   224, 256: BlockN 64 (224) or 48 (256) need 83-87 KiB of shared memory: one block, 4 warps per
//        A100 SM.
template <int HeadDim>
struct FwdTile;
// clang-format off
//                                        warps MTiles BlockN QInRegisters
template <> struct FwdTile<32>  { static constexpr int w = 4, mt = 2, bn = 64;  static constexpr bool qr = true;  };
template <> struct FwdTile<64>  { static constexpr int w = 4, mt = 2, bn = 64;  static constexpr bool qr = true;  };
template <> struct FwdTile<96>  { static constexpr int w = 4, mt = 2, bn = 32;  static constexpr bool qr = false; };
template <> struct FwdTile<128> { static constexpr int w = 4, mt = 2, bn = 48;  static constexpr bool qr = false; };
template <> struct FwdTile<160> { static constexpr int w = 4, mt = 1, bn = 64;  static constexpr bool qr = true;  };
template <> struct FwdTile<192> { static constexpr int w = 4, mt = 1, bn = 64;  static constexpr bool qr = true;  };
template <> struct FwdTile<224> { static constexpr int w = 4, mt = 1, bn = 48;  static constexpr bool qr = false; };
template <> struct FwdTile<256> { static constexpr int w = 4, mt = 1, bn = 32;  static constexpr bool qr = false; };
// clang-format on

template <class T, int HeadDim>
using FwdTraits = FwdConfig<T, HeadDim, FwdTile<HeadDim>::w, FwdTile<HeadDim>::mt, FwdTile<HeadDim>::bn,
                            FwdTile<HeadDim>::qr>;

}  // namespace fae::cuda
