// Compile-time tile constants of the backward kernels, one row per (head dim, shared-memory tier).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/params.h"

namespace fae::cuda {

// A block owns kBlockN keys of one (batch, kv head) and walks the query tiles (kBlockM rows) of
// every query head of its group. Per query tile its warps compute, each on its own warp tile:
//   S = Q.K^T and dP = dO.V^T      (kBlockM x kBlockN; warps kSdpWarpsM x kSdpWarpsN)
//   P and dS, stored to shared memory (kBlockM x kBlockN each)
//   dV += P^T.dO, dK += dS^T.Q     (kBlockN x D, kept in registers; warps kKvWarpsN x kKvWarpsD)
//   dQ  = dS.K                     (kBlockM x D, float atomics; warps kDqWarpsM x kDqWarpsD)
// P and dS get a buffer each: with one shared buffer a barrier would separate dV's reads of P
// from the store of dS, and ptxas hoists all of dV's fragment loads above it (for D = 128,
// 96 registers of fragments live at the barrier: spills).
// Registers per thread (floats): S + dP = 2 kBlockM kBlockN / threads, dK + dV = 2 kBlockN D /
// threads, dQ = kBlockM D / threads (S and dP are dead by then); their largest sum stays <= 192.
// Shared memory: K, V (kBlockN rows) and kStages buffers of Q, dO (kBlockM rows) and of the row
// statistics (16 bytes per row), rows padded by 8 elements; P and dS (kBlockM rows of kBlockN + 8).
// With two stages the next tile's Q, dO and statistics load while the current one is computed;
// where two do not fit, the tile loads at the top of its iteration.
// Registers per thread (ptxas, sm_80 / 86 / 89 / 90, bf16 and f16), no spill or local memory with
// these tiles: large tier 243-255, but 236-238 at D = 160; small tier 164-245 up to D = 192,
// 254-255 at D = 224 and 256. At D = 224 / 256 these are the tiles that spill nowhere: D = 224 large with 4x2 S/dP warps spilled 24 bytes on sm_90; D = 256
// large with 4x2 or 2x4 dQ warps 4-80 bytes on sm_80, sm_86 / 89 or sm_90; D = 256 small with dQ in
// one pass 4-32 bytes on sm_80. dq_passes > 1 computes dQ's warp tile in column slices, so fewer
// of its accumulators are live at once.
// The large tier at D = 64 and 128 is FlashAttention-2's shape (bench/cuda_static.py, sm_80 bf16,
// per warp and iteration; bound = fraction of tensor peak, shared-memory wavefronts the limit):
//   D = 128: 128x64 (4x2, 2x4, 4x2) 894 instructions, 35.8% HMMA, 724 wavefronts, 0.88; 64x128 with
//   S/dP, dK/dV, dQ warps 2x4, 2x4, 2x4: 846, 37.8%, 660, 0.97 (2x4, 4x2, 2x4 the same 660; 2x4 dQ
//   beats 4x2, 692; S/dP 4x2 716-748, and 12-16 bytes of spill on sm_80 with dQ 2x4).
//   D = 64: 64x128 639, 25.0%, 420, 0.76; 128x128 with 4x2, 4x2, 4x2: 1065, 30.0%, 692, 0.925
//   (dQ 8x1 724 / 0.88; dQ 2x4 724 and 8 bytes of spill on sm_86 / 89 / 90; dK/dV 8x1 or 2x4
//   756 / 0.85; S/dP 2x4 spilled 20-24 bytes on sm_86 / 89 / 90).
//   Both fit only since the mask of edge tiles compares 32-bit columns (mask_cols in the kernel):
//   with per-row 64-bit key ranges 64x128 at D = 128 spilled 32-56 bytes on sm_86 / 89 / 90.
//   D = 256 large: S/dP 4x2 spilled 4 bytes on sm_90 with that mask code (2x4: none, 0.83 vs 0.84).
// Two tiers: kSmallSmem = false for sm_80 / sm_90 (163 / 227 KiB per block), true for sm_86 /
// sm_89 (99 KiB); the launcher takes the first that fits the device.
//   D    tier   M x N    warps  S/dP  dK/dV  dQ   stages  smem (bytes)
//   32   large  128x128  8      2x4   4x2    4x2  2       135168
//   32   small  64x128   8      2x4   4x2    4x2  2        77824
//   64   large  128x128  8      4x2   4x2    4x2  1       145408
//   64   small  64x128   8      2x4   4x2    2x4  1        91136
//   96   large  64x128   8      2x4   4x2    4x2  2       143360
//   96   small  64x64    8      4x2   4x2    4x2  2       100352
//   128  large  64x128   8      2x4   2x4    2x4  1       140288
//   128  small  64x64    8      4x2   2x4    2x4  1        89088
//   160  large  64x64    8      4x2   4x2    4x2  2       149504
//   160  small  32x32    4      2x2   2x2    2x2  2        70656
//   192  large  64x64    8      4x2   4x2    4x2  1       121856
//   192  small  32x64    8      2x4   4x2    2x4  1        86528
//   224  large  64x64    8      2x4   4x2    4x2  1       138240
//   224  small  32x32    4      2x2   2x2    2x2  1        65024  dQ in 7 passes (feature instance: 1)
//   256  large  64x64    8      2x4   2x4    1x8  1       154624
//   256  small  32x32    4      2x2   2x2    2x2  1        73216  dQ in 2 passes
//   256  feat.  64x16    4      4x1   1x4    4x1  1        91648  dQ in 4 passes
// The feature instances (softcap, ALiBi, explicit masks, dropout: the variable-length kMod ones,
// which run on the small tier's tiles on every device) take the small tier's row but at D = 256:
// with 32x32 tiles a thread holds 128 dK/dV accumulators, the instance sat at 255 registers, and
// dropout's code made ptxas spill (bf16, sm_80 / sm_90 bytes): the P and dS loop compiled with and
// without dropout 12 / 24; one loop applying the keep multipliers always 4 / 36; M applied to dP
// and P in passes of their own 4 / 36 (32 with the Philox calls replaced by a constant); that with
// dQ in 4 passes 4 / 40. 16 keys per block halve the accumulators (64 per thread): 255 registers,
// no spill on either. D = 224's small row computes dQ in 7 passes of 16 columns: in one pass the
// plain variable-length instance (which runs on these tiles on every device) spilled 4 / 4 bytes
// on sm_86 / 89, and 8 / 12 on sm_90 once its pointers moved to the batch entry's rows and the
// edge mask took 32-bit columns; the feature instance keeps one pass (7 spilled 16 bytes on sm_80 / 86
// / 89) and spills 8 / 4 bytes on sm_86 / 89 (sm_80 and sm_90: none).
// Dropout's generator calls of a warp tile (dropout.cuh, which reads a drawn seed again for each
// call) run all unrolled but at D = 224, where they run one at a time (dropout_calls = 1): there
// unrolled they spilled 52 / 84 bytes on sm_80, and at D = 256 one at a time spilled 4 / 4 bytes
// on sm_80 and sm_90 (bf16, both feature instances, 2 calls per m16 tile).
struct BwdTile {
  int block_m, block_n, warps, sdp_warps_m, kv_warps_n, dq_warps_m, stages, dq_passes = 1;
  int dropout_calls = 0;  // generator calls unrolled per m16 tile (0: all of the warp tile's n8 tiles)
};

constexpr BwdTile bwd_tile(int head_dim, bool small_smem, bool features = false) {
  if (features && head_dim == 256) return BwdTile{64, 16, 4, 4, 1, 4, 1, 4};
  if (features && head_dim == 224) return BwdTile{32, 32, 4, 2, 2, 2, 1, 1, 1};  // the small row, dQ in one pass
  switch (head_dim) {
    case 32: return small_smem ? BwdTile{64, 128, 8, 2, 4, 4, 2} : BwdTile{128, 128, 8, 2, 4, 4, 2};
    case 64: return small_smem ? BwdTile{64, 128, 8, 2, 4, 2, 1} : BwdTile{128, 128, 8, 4, 4, 4, 1};
    case 96: return small_smem ? BwdTile{64, 64, 8, 4, 4, 4, 2} : BwdTile{64, 128, 8, 2, 4, 4, 2};
    case 128: return small_smem ? BwdTile{64, 64, 8, 4, 2, 2, 1} : BwdTile{64, 128, 8, 2, 2, 2, 1};
    case 160: return small_smem ? BwdTile{32, 32, 4, 2, 2, 2, 2} : BwdTile{64, 64, 8, 4, 4, 4, 2};
    case 192: return small_smem ? BwdTile{32, 64, 8, 2, 4, 2, 1} : BwdTile{64, 64, 8, 4, 4, 4, 1};
    case 224: return small_smem ? BwdTile{32, 32, 4, 2, 2, 2, 1, 7} : BwdTile{64, 64, 8, 2, 4, 4, 1};
    case 256: return small_smem ? BwdTile{32, 32, 4, 2, 2, 2, 1, 2} : BwdTile{64, 64, 8, 2, 2, 1, 1};
    default: return {0, 0, 0, 0, 0, 0, 0};
  }
}

// True when the small tier is a different tile from the large one (else one instance serves both).
constexpr bool bwd_has_small_tier(int head_dim) {
  const BwdTile a = bwd_tile(head_dim, false), b = bwd_tile(head_dim, true);
  return a.block_m != b.block_m || a.block_n != b.block_n || a.warps != b.warps || a.sdp_warps_m != b.sdp_warps_m ||
         a.kv_warps_n != b.kv_warps_n || a.dq_warps_m != b.dq_warps_m || a.stages != b.stages ||
         a.dq_passes != b.dq_passes;
}

// Workspace rows per (batch, query head): Sq rounded up to kBwdRowAlign, so that every query tile
// of every tier lies inside. Deterministic mode gives each of `splits` blocks per (batch, kv head)
// its own copy of the dQ accumulator: about kBwdDetBlocks blocks in all, at most one per key block
// of the widest tile (so every split has work whatever the tier).
constexpr int kBwdRowAlign = 128;
constexpr int kBwdMaxBlockN = 128;
constexpr int64_t kBwdDetBlocks = 128;

struct BwdWork {
  int64_t padded_rows;   // per (batch, query head)
  int64_t split_floats;  // one split of dq_accum; 0 when every block adds into one (atomic mode)
  int splits;
};

inline BwdWork bwd_work(const BwdParams& bp) {
  const FwdParams& p = bp.fwd;
  const int64_t rows = (p.seqlen_q + kBwdRowAlign - 1) / kBwdRowAlign * kBwdRowAlign;
  if (!bp.deterministic) return {rows, 0, 1};
  const int64_t per_head = (kBwdDetBlocks + p.batch * p.heads_kv - 1) / (p.batch * p.heads_kv);
  const int64_t key_blocks = (p.seqlen_k + kBwdMaxBlockN - 1) / kBwdMaxBlockN;
  const int64_t splits = per_head < key_blocks ? per_head : key_blocks;
  return {rows, p.batch * p.heads_q * rows * p.head_dim, int(splits < 1 ? 1 : splits)};
}

// Features: the tiles of the feature (kMod) instances, bwd_tile(HeadDim, SmallSmem, true).
template <class T, int HeadDim, bool SmallSmem = false, bool Features = false>
struct BwdTraits {
  using Element = T;
  static constexpr BwdTile kTile = bwd_tile(HeadDim, SmallSmem, Features);
  static constexpr bool kSmallSmem = SmallSmem;
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kWarps = kTile.warps;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = kTile.block_m;  // query rows per step
  static constexpr int kBlockN = kTile.block_n;  // keys per block
  static constexpr int kStages = kTile.stages;   // buffers of Q, dO and the row statistics
  static constexpr int kRowStride = HeadDim + 8;  // padded K, V, Q, dO rows (elements)
  static constexpr int kPStride = kBlockN + 8;    // padded P and dS rows (elements)
  static constexpr int kChunksPerRow = HeadDim / 8;
  // Warp tiles: rows x columns of each product per warp.
  static constexpr int kSdpWarpsM = kTile.sdp_warps_m, kSdpWarpsN = kWarps / kSdpWarpsM;
  static constexpr int kSdpM = kBlockM / kSdpWarpsM, kSdpN = kBlockN / kSdpWarpsN;
  static constexpr int kKvWarpsN = kTile.kv_warps_n, kKvWarpsD = kWarps / kKvWarpsN;
  static constexpr int kKvN = kBlockN / kKvWarpsN, kKvD = HeadDim / kKvWarpsD;
  static constexpr int kDqWarpsM = kTile.dq_warps_m, kDqWarpsD = kWarps / kDqWarpsM;
  static constexpr int kDqM = kBlockM / kDqWarpsM, kDqD = HeadDim / kDqWarpsD;
  static constexpr int kDqPasses = kTile.dq_passes;  // dQ's warp tile computed in column slices
  static constexpr int kDropoutCalls = kTile.dropout_calls ? kTile.dropout_calls : kSdpN / 8;
  // Shared memory (elements of T, then the row statistics as floats).
  static constexpr int kSmemKV = kBlockN * kRowStride;
  static constexpr int kSmemQ = kBlockM * kRowStride;
  static constexpr int kSmemP = kBlockM * kPStride;
  static constexpr int kStatFloats = 4;  // per row: lse2, 1 / psum, delta, unused (16 bytes)
  static constexpr std::size_t kSmemTileBytes = (2 * kSmemKV + 2 * kStages * kSmemQ + 2 * kSmemP) * sizeof(T);
  static constexpr std::size_t kSmemBytes = kSmemTileBytes + kStages * kBlockM * kStatFloats * sizeof(float);
  // bwd_row_stats: K, V, Q, dO tiles, the per-warp partial sums of each row and its lse2.
  static constexpr std::size_t kSmemStatsBytes =
      (2 * kSmemKV + 2 * kSmemQ) * sizeof(T) + (2 * kSdpWarpsN + 1) * kBlockM * sizeof(float);
  static_assert(sizeof(T) == 2, "tensor-core path: 16-bit elements");
  static_assert(kBlockM > 0, "no backward tile for this head dim");
  static_assert(kSdpM % 16 == 0 && kSdpN % 16 == 0 && kKvN % 16 == 0 && kKvD % 16 == 0 && kDqM % 16 == 0 &&
                    kDqD % (16 * kDqPasses) == 0,
                "warp tiles: whole m16 tiles and pairs of n8 tiles");
  static_assert(kSdpWarpsM * kSdpWarpsN == kWarps && kKvWarpsN * kKvWarpsD == kWarps &&
                    kDqWarpsM * kDqWarpsD == kWarps,
                "warp layouts cover the block");
  static_assert(kBwdRowAlign % kBlockM == 0 && kBlockM <= kThreads, "query tiles and per-row threads");
  static_assert(kSmemTileBytes % 16 == 0, "row statistics 16-byte aligned after the tiles");
  static_assert(kSmemBytes <= (SmallSmem ? 99 : 163) * 1024, "shared memory of the tier");
};

}  // namespace fae::cuda
