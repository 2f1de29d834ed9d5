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
// sm_80 and sm_90 in either type, 8 warps per A100 SM (2 blocks), then the bound model's fraction
// of tensor peak (A100) and the HMMA share of the loop's instructions. Measured (registers, HMMA
// share, bound: tensor / shared / MUFU and the fraction of tensor peak):
//   D    rows x warps BlockN Q     smem    sm_80                     sm_90
//   32   32 x 4       96     regs  25600   248  14.2%  MUFU 0.96     239  14.3%  MUFU 0.48
//   64   32 x 4       96     regs  46080   255  22.6%  tensor 1.00   255  22.7%  shared 0.80
//   96   32 x 4       48     smem  46592   244  23.0%  tensor 1.00   246  23.1%  shared 0.62
//   128  32 x 4       48     smem  60928   255  26.9%  tensor 1.00   255  26.6%  shared 0.63
//   160  16 x 4       64     regs  64512   249  26.8%  shared 0.80   246  27.1%  shared 0.40
//   192  16 x 4       64     regs  76800   250  28.4%  shared 0.80   255  28.6%  shared 0.40
//   224  16 x 4       48     smem  74240   242  26.5%  shared 0.70   249  26.8%  shared 0.35
//   256  16 x 4       32     smem  67584   244  25.5%  shared 0.67   241  25.5%  shared 0.33
// Why each row (a thread holds O, MTiles * D / 2 floats, and S, MTiles * BlockN / 2, next to the
// addresses, row statistics and the K/V fragments ptxas loads ahead; the alternatives measured):
//   32:  BlockN 128 spilled (36 B on sm_80 with Q in registers, 60 B on sm_90 without); MUFU-bound
//        either way (one exp2 per score for a 32-wide dot product).
//   64:  BlockN 128 spilled 72 B (sm_80); Q in registers saves 16 ldmatrix per iteration
//        (0.25 per HMMA, sm_90 shared-memory bound 0.71 -> 0.80) and fits.
//   96:  BlockN 64 spilled 16 B on both.
//   128: BlockN 64 (FlashAttention-2's 128 x 64) spilled 104 B on sm_80, 32 B on sm_90; Q in
//        registers would add 64 registers. So 192 HMMA per iteration carry the per-row softmax
//        work (O rescale, max, sum) that 256 carry in FlashAttention-2: 3.72 instructions per HMMA
//        against its 3.68.
//   160: 32-row warps with BlockN 32 spilled on sm_90 (8 B); 16-row warps keep Q in registers.
//   192: Q in registers (250 / 255 registers) beats Q in shared memory (27.5%, shared 0.73).
//   224, 256: BlockN 64 (224) or 48 (256) raise the share to 28.7% but need 83-87 KiB of shared
//        memory: one block, 4 warps per A100 SM.
template <int HeadDim>
struct FwdTile;
// clang-format off
//                                        warps MTiles BlockN QInRegisters
template <> struct FwdTile<32>  { static constexpr int w = 4, mt = 2, bn = 96;  static constexpr bool qr = true;  };
template <> struct FwdTile<64>  { static constexpr int w = 4, mt = 2, bn = 96;  static constexpr bool qr = true;  };
template <> struct FwdTile<96>  { static constexpr int w = 4, mt = 2, bn = 48;  static constexpr bool qr = false; };
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
