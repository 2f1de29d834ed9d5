// Compile-time tile constants of the forward kernel, one row per (dtype, head dim).
#pragma once

#include <cstddef>

namespace fae::cuda {

// Tile table. BlockM = query rows per block (4 warps x 16 rows), BlockN = keys per iteration.
// Reasons: shared memory is Q + K + V tiles with rows padded by 8 elements (16 bytes) so the
// eight 16-byte rows an ldmatrix reads fall in distinct bank groups; it must stay under the
// 99 KiB an sm_86/sm_89 block can have. Registers: each thread holds O (D/2 floats), S
// (BlockN/2 floats) and Q fragments (D/4 words); BlockN = 32 for D = 256 keeps the sum near the
// 255-register limit and smem at 67.6 KiB; for D = 256 the Q fragments are re-read from shared
// memory every k step instead of living in registers (with them in registers ptxas reported 255
// registers and 24 bytes of spill stores on sm_80; without, none).
//   D     BlockM BlockN  smem (bytes)
//   32    64     64      (64 + 2*64) * 40 * 2  = 15360
//   64    64     64      (64 + 2*64) * 72 * 2  = 27648
//   96    64     64      (64 + 2*64) * 104 * 2 = 39936
//   128   64     64      (64 + 2*64) * 136 * 2 = 52224
//   256   64     32      (64 + 2*32) * 264 * 2 = 67584
template <class T, int HeadDim>
struct FwdTraits {
  using Element = T;
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = 16 * kWarps;
  static constexpr int kBlockN = HeadDim <= 128 ? 64 : 32;
  static constexpr int kRowStride = HeadDim + 8;  // padded shared row, elements
  static constexpr int kNTilesS = kBlockN / 8;    // n8 tiles of S per warp
  static constexpr int kNTilesO = HeadDim / 8;    // n8 tiles of O per warp
  static constexpr int kKStepsQK = HeadDim / 16;  // k16 steps of Q.K^T
  static constexpr int kKStepsPV = kBlockN / 16;  // k16 steps of P.V
  static constexpr bool kQInRegisters = HeadDim <= 128;
  static constexpr int kChunksPerRow = HeadDim / 8;  // 16-byte cp.async chunks per row
  static constexpr int kSmemQ = kBlockM * kRowStride;
  static constexpr int kSmemKV = kBlockN * kRowStride;
  static constexpr std::size_t kSmemBytes = (kSmemQ + 2 * kSmemKV) * sizeof(T);

  static_assert(sizeof(T) == 2, "tensor-core path: 16-bit elements");
  static_assert(HeadDim % 16 == 0 && HeadDim <= 256, "head dim: multiple of 16, at most 256");
  static_assert(kBlockN % 16 == 0, "P.V consumes keys 16 at a time");
  static_assert((kRowStride * sizeof(T)) % 16 == 0, "ldmatrix and cp.async rows: 16-byte aligned");
  static_assert(kSmemBytes <= 99 * 1024, "shared memory: at most 99 KiB per block (sm_86/sm_89)");
};

}  // namespace fae::cuda
