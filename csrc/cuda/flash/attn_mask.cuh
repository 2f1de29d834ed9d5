// Explicit attention masks (FwdParams::attn_mask, common/score_mod.h) on the S accumulators of the
// CUDA kernels' kMod instances, after softcap and ALiBi and before the band mask: an additive
// float32 mask adds value * log2(e) to the log2-domain score, a boolean one adds -inf where it is
// 0 (so a NaN score stays NaN). The forward stages the mask (MaskRefs::stage, tested at launch:
// keys at unit stride, base and row, head and batch strides multiples of 16 bytes): each block
// copies the kBlockM x kBlockN entries of the key tile it visits next into shared memory with
// 16-byte cp.async, in the commit group of that tile's K (the first tile's with Q and K), so the
// copy lands behind the current tile's MMAs and the same wait covers it; tiles the causal or
// window bands skip are never copied. Rows past the block's rows and keys past Sk are zero-filled
// (a chunk that crosses Sk reads only its entries before it). The score masking then reads a
// thread's pairs of keys (2t, 2t + 1) from shared memory, one 8-byte (float) or 2-byte (bool)
// load per pair, conflict-free (MaskTile's row pitches). The stage is dynamic shared memory that
// only calls with a staged mask allocate. Cost (sm_80, one steady-state iteration per warp over the
// unmasked path, float mask): staged +119 (D = 64) and +122 (D = 128) instructions, the copies'
// 64-bit source steps included, against +98 and +84 for the pair loads below, which leave a global
// load's latency between Q.K^T and the softmax. The backward's main kernel (bwd_kernel.cuh) stages
// the same masks: the tile of each query tile it visits (BM rows x its BN keys) copied with that
// tile's Q and dO, one stage per Q buffer, read by add_staged_row in its per-row passes; the
// row statistics (bwd_row_stats) stage each key tile's with its K and V where the SM keeps as many
// blocks. Other masks (transposed, views at odd offsets or strides) are read in place through
// their element strides (0 on broadcast dimensions), straight from global memory into registers
// through the read-only cache (load_nc):
// the four lanes of a fragment row read 8 consecutive keys (one 32-byte sector of a float mask
// with unit key stride). A thread's entries come in pairs of keys (2t, 2t + 1): with unit key
// stride and pairs aligned (tested at launch: MaskRefs::pairs) each pair is one load (16 or 64
// bits) at a constant offset from the row's pointer, the rows' offsets inside a tile in int32,
// and rows whose keys lie inside Sk (every row of a tile the sequence's edge does not cross) read
// without bounds checks; other masks are read one entry at a time through the strides. The
// backward writes d loss / d mask = P (dP - delta) (before the softcap's derivative) to
// BwdParams::dmask where the band lets a pair through, in pairs as well (float2 stores) where the
// row stores every column.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "common/online_softmax.h"
#include "common/params.h"
#include "common/score_mod.h"
#include "cuda/flash/common.cuh"
#include "cuda/launch.cuh"
#include "cuda/primitives.cuh"

namespace fae::cuda {

// Row strides up to this keep the offsets of a tile's rows (< 256 rows) within int32.
constexpr int64_t kMaxPairRowStride = (int64_t(1) << 31) / 256 - 1;

// The shared-memory stage of one BM x BN mask tile, and which 16-byte chunks each of Threads
// threads copies. Float rows are BN + 8 floats apart (a pitch of 32 bytes past a multiple of 64,
// so that the 8-byte pair loads of the 8 rows of a fragment fill the banks twice, the ideal);
// byte rows an odd number of 16-byte bank groups apart (the 2-byte pair loads of 8 rows in 8
// distinct groups: one wavefront). Byte rows are ChunkMap's premise; float rows are an even number
// of groups apart, so a part of 4 chunks per row (BN = 48: 8 + 4) puts the 2 rows that share 8
// lanes 2 rows apart (groups 4 apart) instead of 4 (which would meet).
template <int BM, int BN, int Threads>
struct MaskTile {
  static constexpr int kLdAdd = BN + 8;                        // floats
  static constexpr int kLdKeep = (BN / 16) % 2 ? BN : BN + 16;  // bytes
  static constexpr std::size_t bytes(bool keep) { return keep ? std::size_t(BM) * kLdKeep : std::size_t(BM) * kLdAdd * 4; }
  using KeepMap = ChunkMap<BM, BN / 2, Threads>;  // 16-bit units: BN / 16 chunks per row
  struct AddMap : ChunkMap<BM, 2 * BN, Threads> {
    using Base = ChunkMap<BM, 2 * BN, Threads>;
    __device__ static int row(int part) {
      const int q = int(threadIdx.x) / Base::chunks(part);
      return Base::chunks(part) >= 8 ? q : (q & ~3) | (q & 1) * 2 | (q & 3) >> 1;
    }
    static_assert(BN % 16 == 0 && Base::chunks(Base::kParts - 1) >= 4, "float rows: parts of 4 chunks or more");
  };
  static_assert(BN % 16 == 0 && (kLdKeep / 16) % 2 == 1 && (kLdAdd * 4 / 32) % 2 == 1, "row pitches");
};

// The mask and its gradient as checked pointers (empty when absent); `add` or `keep` by kind.
struct MaskRefs {
  gptr<const float> add;     // additive float32 mask
  gptr<const uint8_t> keep;  // boolean mask, 0 = masked out
  gptr<float> grad;          // the backward's dmask (float32, keys contiguous)
  // Pair loads: keys at unit stride, every pair of keys 2t, 2t + 1 aligned for one load of both
  // (an even element offset at every row start, and an aligned base), row offsets inside a tile
  // within int32. Tested at launch; else one load per entry through the strides.
  bool pairs;
  bool grad_pairs;  // the same for dmask's stores (its keys are contiguous)
  // The forward and the backward's main kernel stage tiles in shared memory (cp.async, 16-byte
  // chunks): keys at unit stride, the base and every row of the mask 16-byte aligned. Tested at
  // launch; else the register path.
  bool stage;

  // The shared memory a staged mask adds to a launch of `base` bytes (0, and `stage` cleared, when
  // it does not stage): `bytes` where they fit and the SM still holds as many blocks, at most the
  // `reg_blocks` the instance's registers allow (an SM has one block's most shared memory plus
  // 1 KiB, and each block 1 KiB reserved).
  std::size_t stage_bytes(std::size_t base, std::size_t bytes, std::size_t reg_blocks) {
    if (!stage) return 0;
    const std::size_t sm = max_dynamic_smem() + 1024;
    const auto blocks = [&](std::size_t b) { return std::min<std::size_t>(reg_blocks, sm / (b + 1024)); };
    if (base + bytes > max_dynamic_smem() || blocks(base + bytes) < blocks(base)) stage = false;
    return stage ? bytes : 0;
  }

  static MaskRefs of(const FwdParams& p, const BwdParams* bp = nullptr) {
    MaskRefs m{};
    if (p.attn_mask == nullptr) return m;
    const std::size_t elem = p.mask_bool ? 1 : 4;
    m.pairs = p.mask_col_stride == 1 && reinterpret_cast<std::uintptr_t>(p.attn_mask) % (2 * elem) == 0 &&
              p.mask_batch_stride % 2 == 0 && p.mask_head_stride % 2 == 0 && p.mask_row_stride % 2 == 0 &&
              p.mask_row_stride >= 0 && p.mask_row_stride <= kMaxPairRowStride;
    const auto aligned = [&](int64_t stride) { return stride >= 0 && (stride * int64_t(elem)) % 16 == 0; };
    m.stage = p.mask_col_stride == 1 && reinterpret_cast<std::uintptr_t>(p.attn_mask) % 16 == 0 &&
              aligned(p.mask_batch_stride) && aligned(p.mask_head_stride) && aligned(p.mask_row_stride);
    const std::size_t n = extent(p.mask_batch_stride, p.mask_row_stride, p.mask_head_stride, p.batch, p.seqlen_q,
                                 p.heads_q, 1) + std::size_t((p.seqlen_k - 1) * p.mask_col_stride);
    if (p.mask_bool)
      m.keep = gbuf(static_cast<const uint8_t*>(p.attn_mask), n);
    else
      m.add = gbuf(static_cast<const float*>(p.attn_mask), n);
    if (bp != nullptr && bp->dmask != nullptr) {
      m.grad_pairs = reinterpret_cast<std::uintptr_t>(bp->dmask) % 8 == 0 && bp->dmask_batch_stride % 2 == 0 &&
                     bp->dmask_head_stride % 2 == 0 && bp->dmask_row_stride % 2 == 0 &&
                     bp->dmask_row_stride <= kMaxPairRowStride;
      m.grad = gbuf(static_cast<float*>(bp->dmask), extent(bp->dmask_batch_stride, bp->dmask_row_stride,
                                                           bp->dmask_head_stride, p.batch, p.seqlen_q, p.heads_q,
                                                           p.seqlen_k));
    }
    return m;
  }

  // The log2-domain value added to the score of the mask entry at offset `at`.
  __device__ __forceinline__ float value(const FwdParams& p, int64_t at) const {
    if (p.mask_bool) return load_nc(keep + at) != 0 ? 0.0f : neg_inf<float>();
    return load_nc(add + at) * float(kLog2e);
  }

  // The mask on m16n8 accumulator tiles of batch b, query head h: element (mt, nt, i) is query
  // row row0 + mt * 16 + 8 * (i / 2) and key key0 + nt * 8 + i % 2 (row0, key0: this thread's
  // fragment row g and column 2t). Rows at or past rows_end and keys at or past keys_end are not
  // read (the band mask or the row bounds take care of them). With pair loads (kPairs and `pairs`)
  // tiles whose entries all lie inside read without checks.
  template <int MT, int NT, bool kPairs = true>
  __device__ __forceinline__ void apply(float (&s)[MT][NT][4], const FwdParams& p, int b, int h, int64_t row0,
                                        int64_t key0, int64_t rows_end, int64_t keys_end) const {
    const int rows = int(min64(rows_end - row0, 1 << 30)), keys = int(min64(keys_end - key0, 1 << 30));
    const int64_t first = mask_row_offset(p, b, h, row0) + key0 * p.mask_col_stride;
    if (kPairs && pairs && rows > (MT - 1) * 16 + 8 && keys >= NT * 8 - 6) {  // every entry read lies inside
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) add_pairs<NT>(s[mt], r, p, first + (mt * 16 + 8 * r) * int(p.mask_row_stride));
      return;
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (mt * 16 + 8 * r >= rows) continue;
        const int64_t at = first + (mt * 16 + 8 * r) * p.mask_row_stride;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int c = 0; c < 2; ++c)
            if (nt * 8 + c < keys) s[mt][nt][2 * r + c] += value(p, at + (nt * 8 + c) * p.mask_col_stride);
      }
  }

  // Pair loads (`pairs`): the mask added to row r (elements 2 r, 2 r + 1) of NT m16n8 tiles,
  // column nt * 8 + c being the entry at offset at + nt * 8 + c (at: even, the thread's first key).
  // One load of two entries per tile, at a constant offset from one pointer; no bounds checks.
  template <int NT>
  __device__ __forceinline__ void add_pairs(float (&s)[NT][4], int r, const FwdParams& p, int64_t at) const {
    if (p.mask_bool) {
      const gptr<const uint16_t> e = ptr_cast<const uint16_t>(keep + at);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint32_t two = load_nc(e + nt * 4);  // key 2t in the low byte
        s[nt][2 * r] += (two & 0xffu) != 0 ? 0.0f : neg_inf<float>();
        s[nt][2 * r + 1] += (two >> 8) != 0 ? 0.0f : neg_inf<float>();
      }
    } else {
      const gptr<const float2> e = ptr_cast<const float2>(add + at);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const float2 two = load_nc(e + nt * 4);
        s[nt][2 * r] += two.x * float(kLog2e);
        s[nt][2 * r + 1] += two.y * float(kLog2e);
      }
    }
  }

  // The mask added to row r (elements 2 r, 2 r + 1) of NT m16n8 accumulator tiles: column
  // nt * 8 + c is key key0 + nt * 8 + c of the mask row at offset row0 + dr rows (row0: the
  // offset of the thread's first row of the warp tile, computed once for all its rows; dr < 256,
  // a 32-bit row offset with pair loads); only columns below `keys` are read. With pair loads,
  // rows whose keys all lie inside read without checks. The mask's kind is tested once, outside
  // the loop.
  template <int NT>
  __device__ __forceinline__ void add_row(float (&s)[NT][4], int r, const FwdParams& p, int64_t row0, int dr,
                                          int64_t key0, int keys) const {
    if (pairs && keys >= NT * 8 - 6) {  // the last pair read: columns (NT - 1) * 8 + 6, + 7 at most
      add_pairs<NT>(s, r, p, row0 + key0 + dr * int(p.mask_row_stride));
      return;
    }
    // Element pointers stepped from the row's first key (one 64-bit add each).
    const int64_t at = row0 + dr * p.mask_row_stride + key0 * p.mask_col_stride, cs = p.mask_col_stride;
    if (p.mask_bool) {
      gptr<const uint8_t> e = keep + at;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt, e += 8 * cs)
#pragma unroll
        for (int c = 0; c < 2; ++c)
          if (nt * 8 + c < keys && load_nc(c ? e + cs : e) == 0) s[nt][2 * r + c] += neg_inf<float>();
    } else {
      gptr<const float> e = add + at;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt, e += 8 * cs)
#pragma unroll
        for (int c = 0; c < 2; ++c)
          if (nt * 8 + c < keys) s[nt][2 * r + c] += load_nc(c ? e + cs : e) * float(kLog2e);
    }
  }

  // cp.async of the mask tile whose row 0, key 0 is at offset `at` (the block's first row, the
  // tile's first key) into the stage `dst` (MaskTile): rows at or past `rows` and, if KeyBound,
  // keys at or past `keys` zero-filled (a chunk that crosses `keys` reads only the entries before).
  template <class Tile, bool KeyBound>
  __device__ __forceinline__ void stage_tile(sptr<uint8_t> dst, const FwdParams& p, int64_t at, int rows,
                                             int keys) const {
    if (p.mask_bool)
      stage_as<typename Tile::KeepMap, Tile::kLdKeep, KeyBound>(dst, keep + at, p.mask_row_stride, rows, keys);
    else
      stage_as<typename Tile::AddMap, Tile::kLdAdd, KeyBound>(ptr_cast<float>(dst), add + at, p.mask_row_stride,
                                                               rows, keys);
  }
  template <class Map, int LD, bool KeyBound, class E>
  __device__ __forceinline__ static void stage_as(sptr<E> dst, gptr<const E> tile, int64_t row_stride, int rows,
                                                  int keys) {
    constexpr int kSize = int(sizeof(E));
#pragma unroll
    for (int part = 0; part < Map::kParts; ++part) {
      const int row = Map::row(part), col = Map::col(part) * 2 / kSize;  // ChunkMap's 16-bit units -> entries
      const int left = (keys - col) * kSize, bytes = !KeyBound || left >= 16 ? 16 : left > 0 ? left : 0;
      const sptr<E> d = dst + (row * LD + col);
      const int64_t step = Map::rows_per_pass(part) * row_stride;
      gptr<const E> s = tile + (row * row_stride + col);
#pragma unroll
      for (int i = 0; i < Map::passes(part); ++i, s += step) {
        const int r = row + i * Map::rows_per_pass(part);
        if (Map::kRows % Map::rows_per_pass(part) != 0 && i == Map::passes(part) - 1 && r >= Map::kRows) break;
        cp_async<16>(d + i * Map::rows_per_pass(part) * LD, s, r < rows ? bytes : 0);  // mask tile copy
      }
    }
  }

  // The staged mask (stage_tile) added to MT x NT m16n8 accumulator tiles: element (mt, nt, i) is
  // the entry of row row0 + mt * 16 + 8 * (i / 2), column col0 + nt * 8 + i % 2 of the tile (row0,
  // col0: this thread's fragment row g of its warp's rows and column 2t). Every entry is read: the
  // stage holds zeros past the rows and keys, which the band mask or the row bounds discard.
  template <class Tile, int MT, int NT>
  __device__ __forceinline__ static void add_staged(float (&s)[MT][NT][4], bool keep, sptr<const uint8_t> tile,
                                                    int row0, int col0) {
    if (keep) {
      const sptr<const uint16_t> e = ptr_cast<const uint16_t>(tile + (row0 * Tile::kLdKeep + col0));
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const uint32_t two = e[((mt * 16 + 8 * r) * Tile::kLdKeep + nt * 8) / 2];  // mask pair load
            s[mt][nt][2 * r] += (two & 0xffu) != 0 ? 0.0f : neg_inf<float>();
            s[mt][nt][2 * r + 1] += (two >> 8) != 0 ? 0.0f : neg_inf<float>();
          }
    } else {
      const sptr<const float2> e = ptr_cast<const float2>(ptr_cast<const float>(tile) + (row0 * Tile::kLdAdd + col0));
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const float2 two = e[((mt * 16 + 8 * r) * Tile::kLdAdd + nt * 8) / 2];  // mask pair load
            s[mt][nt][2 * r] += two.x * float(kLog2e);
            s[mt][nt][2 * r + 1] += two.y * float(kLog2e);
          }
    }
  }

  // The staged mask (stage_tile) added to row r (elements 2 r, 2 r + 1) of NT m16n8 accumulator
  // tiles, column nt * 8 + c being the entry of row `row`, column col0 + nt * 8 + c of the tile
  // (the backward's per-row passes; col0 = the thread's column 2t of its warp's keys). As in
  // add_staged, every entry is read: zeros past the rows and keys, discarded by the bands or rows.
  template <class Tile, int NT>
  __device__ __forceinline__ static void add_staged_row(float (&s)[NT][4], int r, bool keep, sptr<const uint8_t> tile,
                                                        int row, int col0) {
    if (keep) {
      const sptr<const uint16_t> e = ptr_cast<const uint16_t>(tile + (row * Tile::kLdKeep + col0));
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint32_t two = e[nt * 4];  // mask pair load
        s[nt][2 * r] += (two & 0xffu) != 0 ? 0.0f : neg_inf<float>();
        s[nt][2 * r + 1] += (two >> 8) != 0 ? 0.0f : neg_inf<float>();
      }
    } else {
      const sptr<const float2> e = ptr_cast<const float2>(ptr_cast<const float>(tile) + (row * Tile::kLdAdd + col0));
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const float2 two = e[nt * 4];  // mask pair load
        s[nt][2 * r] += two.x * float(kLog2e);
        s[nt][2 * r + 1] += two.y * float(kLog2e);
      }
    }
  }

  // The offset in dmask of query row `row` of (b, h).
  __device__ __forceinline__ static int64_t grad_row_offset(const BwdParams& bp, int b, int h, int64_t row) {
    return b * bp.dmask_batch_stride + h * bp.dmask_head_stride + row * bp.dmask_row_stride;
  }

  // dmask at offset row0 + dr rows (row0 from grad_row_offset, dr < 256), key key0 + k <- ds of
  // column k = nt * 8 + c (row r of NT m16n8 tiles) for lo <= k <= hi (the backward; only when
  // the caller wants the gradient). Rows that store every column store pairs when aligned.
  template <int NT>
  __device__ __forceinline__ void store_grad_row(const BwdParams& bp, int64_t row0, int dr, int64_t key0,
                                                 const float (&ds)[NT][4], int r, int lo, int hi) const {
    if (grad_pairs && lo <= 0 && hi >= NT * 8 - 1) {
      const gptr<float2> e = ptr_cast<float2>(grad + (row0 + key0 + dr * int(bp.dmask_row_stride)));
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) e[nt * 4] = float2{ds[nt][2 * r], ds[nt][2 * r + 1]};
      return;
    }
    const gptr<float> e = grad + (row0 + dr * bp.dmask_row_stride + key0);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int c = 0; c < 2; ++c)
        if (nt * 8 + c >= lo && nt * 8 + c <= hi) e[nt * 8 + c] = ds[nt][2 * r + c];
  }
};

}  // namespace fae::cuda
