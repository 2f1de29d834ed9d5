// FlashAttention-2 forward kernel body (sm_80+). A block owns kBlockM query rows of one
// (batch, head); each warp owns kWarpRows consecutive rows (kMTiles m16 tiles, so every K or V
// fragment it loads feeds kMTiles * 2 mma). Per key tile: S = Q.K^T on tensor cores, the mask and
// the online softmax in registers (quad shuffles for row statistics), P re-used from the S
// accumulators as the A operand of O += P.V (no shared-memory round trip). K and V stream through
// shared memory with cp.async: V_j is loaded while S_j is computed, K_{j+1} while the softmax and
// P.V of tile j run. The tiles that cross a mask edge (or the end of the keys) run first, in their
// own loop; the loop over the tiles every row sees whole has no compares and no bounds checks.
// O leaves through shared memory in 16-byte stores.
// Variable-length batches and KV caches run the same body as flash_fwd_seqs_kernel (kSeqs): a
// block reads where its sequence lives from the params (common/seqlens.h: packed rows, cache
// slots and lengths, pages through the block table, row by row) and returns at once when the
// grid, sized for the longest sequence, overshoots its rows. Split-KV (num_splits > 1): block x
// of a row tile takes split x % num_splits of the key tiles and writes a normalised partial O and
// its log2-domain lse to split_workspace for the combine kernel (split_kv.cuh). The dense kernel
// compiles none of this.
// Softcap, ALiBi (kMod, score_mod.cuh), explicit masks (attn_mask.cuh) and dropout (dropout.cuh)
// run in flash_fwd_seqs_kernel only (a dense call is one with no sequence arrays): the S
// accumulators become log2-domain scores right after Q.K^T, then take the explicit mask, then the
// band mask, and the softmax then takes them with factor 1. Dropout multiplies the probabilities
// by the keep mask times 1 / (1 - p) after the row sums took them (lse is the undropped
// softmax's) and before P.V. An explicit mask that MaskRefs::stage admits (16-byte aligned rows)
// streams through shared memory past V: the mask tile of key tile j + 1 is copied with K_{j+1}
// (one commit group, the same wait), and the masking of S_j reads tile j's from there; the rest
// read their entries from global memory after S_j.
#pragma once

#include <type_traits>

#include "common/mask.h"
#include "common/online_softmax.h"
#include "common/seqlens.h"
#include "cuda/flash/attn_mask.cuh"
#include "cuda/flash/common.cuh"
#include "cuda/flash/dropout.cuh"
#include "cuda/flash/fwd_traits.h"
#include "cuda/flash/score_mod.cuh"
#include "cuda/flash/split_kv.cuh"
#include "cuda/primitives.cuh"

namespace fae::cuda {

struct FastExp2 {
  __device__ __forceinline__ float operator()(float x) const { return fast_exp2(x); }
};

// The softmax takes the row max of the raw scores q.k, which is the max of the scaled ones only
// for a positive factor: the kernel multiplies Q by q_sign = sign(scale_log2) (exact: a sign flip,
// or 0, which keeps NaN and turns inf into NaN as 0 * q.k would) and the scores by
// factor = |scale_log2| (1 when the scale is 0, the scores then being 0 or NaN).
struct ScoreScale {
  float factor, q_sign;
  static ScoreScale of(float scale_log2) {
    if (scale_log2 > 0.0f) return {scale_log2, 1.0f};
    if (scale_log2 < 0.0f) return {-scale_log2, -1.0f};
    return {1.0f, 0.0f};
  }
};

// Whether the kMod instance of tiles Tr stages explicit masks in shared memory (MaskRefs::stage): all
// but D = 224, where the stage's copies cost ptxas a 40-byte spill on sm_90 (at 255 registers); it
// reads masks from global memory always.
template <class Tr>
constexpr bool kStagesMask = Tr::kHeadDim != 224;

template <class Tr, bool kSeqs, bool kMod>
__device__ __forceinline__ void fwd_block(const FwdParams& p, ScoreScale sc, gptr<const typename Tr::Element> q,
                                          gptr<const typename Tr::Element> k, gptr<const typename Tr::Element> v,
                                          gptr<typename Tr::Element> o, gptr<float> lse,
                                          const SeqArrays<gptr<const int32_t>>& sa, gptr<float> split_out,
                                          const ScoreMods& mods, gptr<const float> slopes, const MaskRefs& am,
                                          const Dropout& drop) {
  static_assert(kSeqs || !kMod, "score mods run in the variable-length kernel");
  using T = typename Tr::Element;
  constexpr int MT = Tr::kMTiles, BM = Tr::kBlockM, BN = Tr::kBlockN, LD = Tr::kRowStride;
  constexpr int NS = Tr::kNTilesS, NO = Tr::kNTilesO;
  using QMap = ChunkMap<BM, Tr::kHeadDim, Tr::kThreads>;
  using KVMap = ChunkMap<BN, Tr::kHeadDim, Tr::kThreads>;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
  const int h = blockIdx.y, b = blockIdx.z, hk = h / int(p.heads_q / p.heads_kv);
  const int nsplit = kSeqs && p.num_splits > 1 ? p.num_splits : 1, split = kSeqs ? int(blockIdx.x) % nsplit : 0;
  const int64_t m0 = int64_t(blockIdx.x / nsplit) * BM;
  Seq seq{b, 0, p.seqlen_q, b, 0, p.seqlen_k, p.align_offset};
  if constexpr (kSeqs) {
    seq = sequence(p, sa, b);
    if (m0 >= seq.seqlen_q) return;  // past this sequence's rows: the whole block leaves
  }
  const int rows_valid = int(min64(BM, seq.seqlen_q - m0));
  const sptr<T> sQ = dynamic_smem<T>(), sK = sQ + Tr::kSmemQ, sV = sK + Tr::kSmemKV;
  // The explicit mask's stage (MaskRefs::stage), past V: allocated by calls that stage a mask only.
  using MTile = MaskTile<BM, BN, Tr::kThreads>;
  [[maybe_unused]] const sptr<uint8_t> sM = ptr_cast<uint8_t>(sV + Tr::kSmemKV);
  const int wrow = warp * Tr::kWarpRows;  // this warp's first row in the block

  // Accumulators: fragment rows g and g + 8 of each m16 tile; m2 = the log2-domain reference max
  // the row's exponentials are taken against (lazily rescaled: online_softmax.h).
  float acc_o[MT][NO][4] = {};
  float m2[MT][2], row_sum[MT][2];
  for (int mi = 0; mi < MT; ++mi)
    for (int hh = 0; hh < 2; ++hh) m2[mi][hh] = neg_inf<float>(), row_sum[mi][hh] = 0.0f;

  // Key tiles [j_lo, j_hi] hold every key some row of the block sees; the rows' key ranges are
  // monotone in the row (mask.h), so [f_lo, f_hi) are the tiles every row sees whole.
  // With splits, this block takes the split-th share [s_lo, s_hi] of [j_lo, j_hi] (and the whole
  // tiles among them).
  auto keys_of = [&](int64_t row) {  // the mask of this sequence (its lengths, its align offset)
    return visible_keys(row, seq.seqlen_k, seq.align_offset, p.window_left, p.window_right);
  };
  const KeyRange first = keys_of(m0), last = keys_of(m0 + rows_valid - 1);
  int j_lo = int(first.lo / BN), j_hi = int(last.hi / BN);
  int f_lo = int((last.lo + BN - 1) / BN);
  // At most j_hi + 1: the last row's lo lies past every key when it sees none (Sq > Sk, top-left),
  // and a larger f_lo made n_above negative (the tile after j_hi visited in place of j_lo's).
  if (f_lo > j_hi + 1) f_lo = j_hi + 1;
  int f_hi = f_lo > j_hi ? f_lo : (first.hi + 1) / BN < f_lo ? f_lo : int((first.hi + 1) / BN);
  if constexpr (kSeqs) {  // this split's share of the tiles (the dense kernel has one split)
    const int share = (j_hi - j_lo + nsplit) / nsplit, all_hi = j_hi;
    j_lo += split * share;
    j_hi = all_hi < j_lo + share - 1 ? all_hi : j_lo + share - 1;
    auto clip = [&](int x) { return x < j_lo ? j_lo : x > j_hi + 1 ? j_hi + 1 : x; };
    f_lo = clip(f_lo);
    f_hi = f_lo > j_hi ? f_lo : clip(f_hi < f_lo ? f_lo : f_hi);
  }
  if (first.lo <= last.hi && j_lo <= j_hi) {
    const int n_above = j_hi + 1 - f_hi, n_masked = n_above + f_lo - j_lo;
    // Masked tiles: those above the whole ones (the causal diagonal, the end of the keys) from the
    // top down, then those below them (a left window edge).
    auto masked_tile = [&](int i) { return i < n_above ? j_hi - i : j_lo + (i - n_above); };

    const gptr<const T> kh = k + hk * p.k_head_stride, vh = v + hk * p.v_head_stride;
    const gptr<const T> kb = kh + (seq.kv_batch * p.k_batch_stride + seq.k_row0 * p.k_row_stride);
    const gptr<const T> vb = vh + (seq.kv_batch * p.v_batch_stride + seq.k_row0 * p.v_row_stride);
    const int64_t k_step = int64_t(BN) * p.k_row_stride, v_step = int64_t(BN) * p.v_row_stride;  // one tile
    auto keys_in = [&](int j) { return int(min64(BN, seq.seqlen_k - int64_t(j) * BN)); };
    // Key tile j of K or V (its rows from `tile`) into shared memory; paged caches row by row
    // through the block table.
    auto copy_kv = [&](auto masked_tag, sptr<T> dst, gptr<const T> tile, gptr<const T> head, int64_t batch_stride,
                       int64_t row_stride, int j) {
      if constexpr (kSeqs)
        if (p.block_table != nullptr) {
          auto row = [&](int r) { return head + key_offset(p, sa, b, seq, int64_t(j) * BN + r, batch_stride, row_stride); };
          copy_rows_async<KVMap, LD>(dst, row, head, keys_in(j));
          return;
        }
      copy_tile_async<KVMap, LD, decltype(masked_tag)::value>(dst, tile, row_stride, keys_in(j));
    };
    // The staged mask's tile j (its keys bounded in masked tiles), copied with K_j.
    auto copy_mask = [&](auto masked_tag, int j) {
      if constexpr (kMod && kStagesMask<Tr>)
        if (am.stage)
          am.stage_tile<MTile, decltype(masked_tag)::value>(sM, p, mask_row_offset(p, b, h, m0) + int64_t(j) * BN,
                                                            rows_valid, keys_in(j));
    };

    const int j0 = n_masked > 0 ? masked_tile(0) : f_lo;
    copy_tile_async<QMap, LD, true>(
        sQ, q + (seq.q_batch * p.q_batch_stride + (seq.q_row0 + m0) * p.q_row_stride + h * p.q_head_stride),
        p.q_row_stride, rows_valid);
    copy_kv(std::true_type{}, sK, kb + j0 * k_step, kh, p.k_batch_stride, p.k_row_stride, j0);
    copy_mask(std::true_type{}, j0);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    // Q *= sign(scale) (ScoreScale), so that the scores' factor c is positive (1 with score mods:
    // the scores are in the log2 domain then).
    const float c = kMod ? 1.0f : sc.factor;
    [[maybe_unused]] const float slope2 = kMod ? mods.slope2(p, slopes, b, h) : 0.0f;
    if (sc.q_sign != 1.0f) {
#pragma unroll
      for (int part = 0; part < QMap::kParts; ++part)
        for (int r = QMap::row(part); r < BM; r += QMap::rows_per_pass(part))
          for (int e = 0; e < 8; ++e) {
            const sptr<T> x = sQ + (r * LD + QMap::col(part) + e);
            *x = from_float<T>(to_float(T(*x)) * sc.q_sign);
          }
      __syncthreads();
    }
    // Q fragments of this warp's rows (A operand of S = Q.K^T), per m16 tile and k step of 16.
    auto load_q = [&](uint32_t(&a)[4], int mi, int ks) {
      ldmatrix_x4(a[0], a[1], a[2], a[3], sQ + (wrow + mi * 16 + lane % 16) * LD + ks * 16 + (lane / 16) * 8);
    };
    uint32_t qf[MT][Tr::kQInRegisters ? Tr::kKStepsQK : 1][4];
    if constexpr (Tr::kQInRegisters)
#pragma unroll
      for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int ks = 0; ks < Tr::kKStepsQK; ++ks) load_q(qf[mi][ks], mi, ks);

    // One key tile j whose V rows start at vt; K_j is in flight. If `prefetch`, K of tile `next`
    // is loaded from kt.
    auto step = [&](auto masked_tag, int j, gptr<const T> vt, bool prefetch, int next, gptr<const T> kt) {
      constexpr bool kMasked = decltype(masked_tag)::value;
      cp_async_wait<0>();  // K_j has landed ...
      __syncthreads();     // ... for every thread, and every warp is done with V_{j-1}
      // (The dense kernel calls copy_tile_async here itself: through copy_kv, ptxas spilled 28
      // bytes at D = 64 on sm_80, at 255 registers either way.)
      if constexpr (kSeqs)
        copy_kv(masked_tag, sV, vt, vh, p.v_batch_stride, p.v_row_stride, j);
      else
        copy_tile_async<KVMap, LD, kMasked>(sV, vt, p.v_row_stride, keys_in(j));
      cp_async_commit();

      // Dropout: the keep bits of this thread's scores of the tile (one word per m16 tile), taken
      // before S while its accumulators are not live (after it, D = 256 spilled).
      [[maybe_unused]] uint32_t keep[MT];
      if constexpr (kMod)
        if (drop.on) drop.bits<MT, NS>(keep, b, h, m0 + wrow + g, int64_t(j) * BN + 2 * t);

      float s[MT][NS][4];
#pragma unroll
      for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int nt = 0; nt < NS; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) s[mi][nt][i] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < Tr::kKStepsQK; ++ks) {
        uint32_t a[MT][4];
#pragma unroll
        for (int mi = 0; mi < MT; ++mi)
          if constexpr (Tr::kQInRegisters)
            for (int i = 0; i < 4; ++i) a[mi][i] = qf[mi][ks][i];
          else
            load_q(a[mi], mi, ks);
#pragma unroll
        for (int np = 0; np < NS / 2; ++np) {
          uint32_t b0[2], b1[2];  // keys np*16 + [0, 8) and + [8, 16), d in [ks*16, ks*16 + 16)
          ldmatrix_x4(b0[0], b0[1], b1[0], b1[1],
                      sK + (np * 16 + (lane / 16) * 8 + lane % 8) * LD + ks * 16 + ((lane / 8) & 1) * 8);
#pragma unroll
          for (int mi = 0; mi < MT; ++mi) {
            mma_m16n8k16<T>(s[mi][2 * np], a[mi], b0, s[mi][2 * np]);
            mma_m16n8k16<T>(s[mi][2 * np + 1], a[mi], b1, s[mi][2 * np + 1]);
          }
        }
      }

      if constexpr (kMod)  // this thread's row g and column 2t: ALiBi position and key from the tile's start
        mods.apply(s, slope2, int(alibi_position(m0 + wrow + g, seq.seqlen_q, seq.seqlen_k) - int64_t(j) * BN), 2 * t);
      if constexpr (kMod)
        if (p.attn_mask != nullptr) {
          if (kStagesMask<Tr> && am.stage)  // tile j landed with K_j
            MaskRefs::add_staged<MTile>(s, p.mask_bool, sM, wrow + g, 2 * t);
          else  // rows past this block's and keys past Sk are not read; pair loads except at D = 224
            // (there they cost ptxas a 24- to 32-byte spill on sm_90)
            am.apply<MT, NS, (Tr::kHeadDim != 224)>(s, p, b, h, m0 + wrow + g, int64_t(j) * BN + 2 * t,
                                                    m0 + rows_valid, seq.seqlen_k);
        }
      if constexpr (kMasked) {
        // The mask rule (mask.h) on the diagonals of the tile: row m0 + r sees key n0 + col iff
        //   align_offset - window_left <= (n0 - m0) + col - r <= align_offset + window_right
        // and n0 + col < seqlen_k. For this thread's fragment element (mi, nt, 2hh + e) col - r is
        // (2t - g - wrow) + (nt * 8 + e - mi * 16 - 8 * hh), a compile-time constant plus
        // `lane_diag`; the bounds are block-uniform (clamped to +-2^30, beyond any col - r).
        const int64_t d = int64_t(j) * BN - m0;
        auto clamp_far = [](int64_t x) { return int(x < -(1 << 30) ? -(1 << 30) : x > (1 << 30) ? 1 << 30 : x); };
        const int lane_diag = 2 * t - g - wrow;
        const int lo = (p.window_left >= kNoWindow ? -(1 << 30) : clamp_far(seq.align_offset - p.window_left - d)) - lane_diag;
        const int hi = (p.window_right >= kNoWindow ? 1 << 30 : clamp_far(seq.align_offset + p.window_right - d)) - lane_diag;
        const int end = keys_in(j) - 2 * t;
#pragma unroll
        for (int mi = 0; mi < MT; ++mi)
#pragma unroll
          for (int nt = 0; nt < NS; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int col = nt * 8 + i % 2, diag = col - mi * 16 - 8 * (i / 2);
              if (!(diag >= lo && diag <= hi && col < end)) s[mi][nt][i] = neg_inf<float>();
            }
      }
      // Online softmax, rescaled lazily: per row the tile's max (of the raw scores; c > 0). Only
      // when a row of the warp outgrows its reference max by more than kRescaleSlack does the warp
      // move its rows' references to the new max and rescale their sums and O (a warp-uniform
      // branch that the steady state skips: a row's max rarely grows 256-fold after its first keys).
      float m_new[MT][2];
      bool grow = false;
#pragma unroll
      for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          float mx = neg_inf<float>();
#pragma unroll
          for (int nt = 0; nt < NS; ++nt) mx = fmaxf(mx, fmaxf(s[mi][nt][2 * hh], s[mi][nt][2 * hh + 1]));
          m_new[mi][hh] = fmaxf(m2[mi][hh], quad_max(mx) * c);
          grow |= needs_rescale(m2[mi][hh], m_new[mi][hh]);
        }
      if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
        for (int mi = 0; mi < MT; ++mi)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const float alpha = rescale_factor(m2[mi][hh], m_new[mi][hh], FastExp2{});
            m2[mi][hh] = m_new[mi][hh];
            row_sum[mi][hh] *= alpha;
#pragma unroll
            for (int nt = 0; nt < NO; ++nt) {
              acc_o[mi][nt][2 * hh] *= alpha;
              acc_o[mi][nt][2 * hh + 1] *= alpha;
            }
          }
      }

      float base[MT][2];
#pragma unroll
      for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) base[mi][hh] = exp_base(m2[mi][hh]);

      cp_async_wait<0>();  // V_j has landed ...
      __syncthreads();     // ... for every thread, and every warp is done with K_j
      if (prefetch) {  // K and the staged mask of the next tile: every warp is done with tile j's
        copy_kv(masked_tag, sK, kt, kh, p.k_batch_stride, p.k_row_stride, next);
        copy_mask(masked_tag, next);
      }
      cp_async_commit();

      // P = exp2(s * c - base) (one FFMA and one MUFU per score) for keys kk*16 .. kk*16+15: the S
      // accumulators of n8 tiles 2kk and 2kk+1 are exactly the A fragment of P for them,
      // rounded to the input type; with dropout, times the keep multipliers after the row sums.
      auto p_frags = [&](bool dropping, uint32_t(&a)[MT][4], int kk) {
#pragma unroll
        for (int mi = 0; mi < MT; ++mi)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int hh = i % 2;
            const float(&x)[4] = s[mi][2 * kk + i / 2];
            float p0 = fast_exp2(fmaf(x[2 * hh], c, -base[mi][hh]));
            float p1 = fast_exp2(fmaf(x[2 * hh + 1], c, -base[mi][hh]));
            row_sum[mi][hh] += p0 + p1;
            if (kMod && dropping) {
              p0 = drop.apply(p0, keep[mi], 2 * kk + i / 2, 2 * hh);
              p1 = drop.apply(p1, keep[mi], 2 * kk + i / 2, 2 * hh + 1);
            }
            a[mi][i] = pack2<T>(p0, p1);
          }
      };
#pragma unroll
      for (int kk = 0; kk < Tr::kKStepsPV; ++kk) {
        uint32_t a[MT][4];
        if (kMod && drop.on)  // a block-uniform branch; the plain instances compile the second only
          p_frags(true, a, kk);
        else
          p_frags(false, a, kk);
#pragma unroll
        for (int np = 0; np < NO / 2; ++np) {
          uint32_t b0[2], b1[2];  // d columns np*16 + [0, 8) and + [8, 16)
          ldmatrix_x4_trans(b0[0], b0[1], b1[0], b1[1], sV + (kk * 16 + lane % 16) * LD + np * 16 + (lane / 16) * 8);
#pragma unroll
          for (int mi = 0; mi < MT; ++mi) {
            mma_m16n8k16<T>(acc_o[mi][2 * np], a[mi], b0, acc_o[mi][2 * np]);
            mma_m16n8k16<T>(acc_o[mi][2 * np + 1], a[mi], b1, acc_o[mi][2 * np + 1]);
          }
        }
      }
    };

    using Masked = std::true_type;
    using Whole = std::false_type;
    const int n_tiles = n_masked + f_hi - f_lo;
    for (int i = 0; i < n_masked; ++i) {
      const int j = masked_tile(i), next = i + 1 < n_masked ? masked_tile(i + 1) : i + 1 < n_tiles ? f_lo : -1;
      step(Masked{}, j, vb + j * v_step, next >= 0, next, kb + next * k_step);
    }
    // Whole tiles in order: their K and V rows advance by one tile step per iteration.
    gptr<const T> vt = vb + f_lo * v_step, kt = kb + f_lo * k_step;
    for (int j = f_lo; j < f_hi; ++j) {
      vt += v_step, kt += k_step;
      step(Whole{}, j, vt - v_step, j + 1 < f_hi, j + 1, kt);
    }
  }

  if (kSeqs && nsplit > 1) {  // a partial row: normalised O and its log2-domain lse, for the combine kernel
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const float sum = quad_sum(row_sum[mi][hh]), inv = inv_sum(sum);
        const int r = wrow + mi * 16 + g + 8 * hh;
        if (r >= rows_valid) continue;
        const gptr<float> part = split_out + split_row(p, split, b, h, m0 + r);
#pragma unroll
        for (int nt = 0; nt < NO; ++nt) {
          part[nt * 8 + 2 * t] = acc_o[mi][nt][2 * hh] * inv;
          part[nt * 8 + 2 * t + 1] = acc_o[mi][nt][2 * hh + 1] * inv;
        }
        if (t == 0) part[p.head_dim] = lse2_of(m2[mi][hh], sum);
      }
    return;
  }
  // Epilogue: finish each row (quad-reduced sum), stage O in the Q tile, write lse; then 16-byte
  // stores of the valid rows.
  __syncthreads();  // every warp is done with sQ
#pragma unroll
  for (int mi = 0; mi < MT; ++mi)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const float sum = quad_sum(row_sum[mi][hh]);
      const float inv = inv_sum(sum);
      const int r = wrow + mi * 16 + g + 8 * hh;
#pragma unroll
      for (int nt = 0; nt < NO; ++nt)
        ptr_cast<uint32_t>(sQ + r * LD + nt * 8 + 2 * t)[0] =
            pack2<T>(acc_o[mi][nt][2 * hh] * inv, acc_o[mi][nt][2 * hh + 1] * inv);
      if (t == 0 && r < rows_valid)
        lse[seq.q_batch * p.lse_batch_stride + h * p.lse_head_stride + seq.q_row0 + m0 + r] = finish_lse(m2[mi][hh], sum);
    }
  __syncthreads();
  store_tile<QMap, LD>(o + (seq.q_batch * p.o_batch_stride + (seq.q_row0 + m0) * p.o_row_stride + h * p.o_head_stride),
                       sQ, p.o_row_stride, rows_valid);
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads)
    flash_fwd_kernel(FwdParams p, ScoreScale sc, gptr<const typename Tr::Element> q, gptr<const typename Tr::Element> k,
                     gptr<const typename Tr::Element> v, gptr<typename Tr::Element> o, gptr<float> lse) {
  fwd_block<Tr, false, false>(p, sc, q, k, v, o, lse, SeqArrays<gptr<const int32_t>>{}, gptr<float>{}, ScoreMods{},
                              gptr<const float>{}, MaskRefs{}, Dropout{});
}

// The kMod instance asks for 2 blocks per SM (minBlocks 0 = unspecified for the plain one): left
// to itself ptxas held it at 168 registers (3 blocks of 128 threads) and spilled 4-16 bytes with
// explicit masks (D = 128, sm_80 and sm_90); with 2 it takes 202-222 and spills nothing.
template <class Tr, bool kMod>
__global__ void __launch_bounds__(Tr::kThreads, kMod ? 2 : 0)
    flash_fwd_seqs_kernel(FwdParams p, ScoreScale sc, gptr<const typename Tr::Element> q,
                          gptr<const typename Tr::Element> k, gptr<const typename Tr::Element> v,
                          gptr<typename Tr::Element> o, gptr<float> lse, SeqArrays<gptr<const int32_t>> sa,
                          gptr<float> split_out, ScoreMods mods, gptr<const float> slopes, MaskRefs am,
                          Dropout drop) {
  fwd_block<Tr, true, kMod>(p, sc, q, k, v, o, lse, sa, split_out, mods, slopes, am, drop);
}

}  // namespace fae::cuda
