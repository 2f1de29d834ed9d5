// FlashAttention-2 backward (sm_80+), three kernels:
//   bwd_row_stats: per query row, from the backward's own scores, psum = sum_j P'_ij with
//                   P' = exp2(S * scale_log2 - lse2), and delta = sum_j P'_ij dP_ij / psum
//                   (minus dlse when given); writes {lse2, 1 / psum, delta} per row and zeroes
//                   the float32 dQ accumulator. So P = P' / psum sums to 1 and delta agrees with
//                   the dP it is subtracted from (a row that sees one key gets P = 1 and dS = 0 up
//                   to one rounding), whatever the rounding of the forward's output and lse;
//   flash_bwd_kernel: a block owns kBlockN keys of one (batch, kv head), keeps their dK, dV in
//                   registers and walks every query tile of every query head in the group
//                   (Q, dO and the row statistics of the next tile load while the current one is
//                   computed, where two buffers fit): S = Q.K^T, dP = dO.V^T, P = P' / psum and
//                   dS = P (dP - delta) in registers; P and dS through shared memory into
//                   dV += P^T.dO, dK += dS^T.Q and dQ = dS.K; dQ goes to the accumulator with float atomics
//                   whose 32 lanes cover 128 contiguous bytes (the accumulator is stored in
//                   fragment order); dK, dV leave through shared memory in 16-byte stores;
//   bwd_convert_dq: dQ = accumulator * scale in the input dtype (16-byte stores), summing the
//                   accumulator's splits in order in deterministic mode.
// Variable-length batches (kSeqs, packed q and k through cu_seqlens): the workspace keeps a
// padded region of the longest sequence's rows per (sequence, query head); each block reads its
// sequence's lengths and first rows (common/seqlens.h) and leaves the rows past its length to
// the padding rules above.
// Deterministic mode gives every block a split of its own of the accumulator: a block walks
// key blocks blockIdx.x, blockIdx.x + gridDim.x, ..., and each accumulator element of a split is
// updated by one thread of one block in a fixed order. The first two kernels compute S and dP
// with the same mma sequence (k steps in order, from zero), so they agree bit for bit.
// Softcap, ALiBi (kMod, score_mod.cuh), explicit masks (attn_mask.cuh) and dropout (dropout.cuh)
// run in the variable-length instances only, a dense call being one with no sequence arrays: both
// kernels turn S into the forward's log2-domain scores with the same code, the main kernel writes
// the mask's gradient P (dP - delta), and dS is multiplied by the softcap's derivative 1 - tanh^2
// before dK and dQ. Dropout (O = (P * M) . V, M the keep mask times 1 / (1 - p)): both kernels
// regenerate M's bits per warp tile; bwd_row_stats sums delta = sum_j P_ij M_ij dP_ij from its own
// P and dP (dO . O of the 16-bit output erred by the output's rounding in every dS of the row),
// and the main kernel takes dS = P (M dP - delta) (also the mask's gradient) and dV += (P * M)^T.dO.
// In the main kernel each feature is a block-uniform pass of its own over a fragment row of S and
// dP (dropout's M dP, ALiBi's bias, the mask's reads before P and dS; the dmask stores, the
// softcap's derivative and P * M after), around the plain instance's P and dS loop: a call runs
// only the passes of the features it uses.
#pragma once

#include "common/mask.h"
#include "common/online_softmax.h"
#include "common/seqlens.h"
#include "cuda/flash/attn_mask.cuh"
#include "cuda/flash/bwd_traits.h"
#include "cuda/flash/common.cuh"
#include "cuda/flash/dropout.cuh"
#include "cuda/flash/score_mod.cuh"
#include "cuda/primitives.cuh"

namespace fae::cuda {

// Workspace (float32). Per (batch, query head) the rows are Sq rounded up to kBwdRowAlign
// ("padded rows"), so every query tile lies inside and needs no bounds check:
//   stats: 4 floats per row, {lse2, 1 / psum, delta, 0}; {+inf, 0, 0, 0} for rows past Sq and
//          rows that see no key, so P = dS = 0 there;
//   dq_accum: `splits` copies of (B, Hq, padded rows / 16, D / 8) tiles of 16 x 8 floats; a tile
//          holds the m16n8 accumulator of an mma in register order: register i of lane l at
//          i * 32 + l, i.e. element (g + 8 (i >> 1), 2t + (i & 1)) with g = l / 4, t = l % 4
// (BwdWork and bwd_work in bwd_traits.h give the sizes).
__device__ __forceinline__ int64_t stat_row(const FwdParams& p, const BwdWork& w, int b, int h, int64_t row) {
  return (int64_t(b) * p.heads_q + h) * w.padded_rows + row;
}

// The params a block of the variable-length kernels (kSeqs) works with: those of its sequence b
// (its lengths and align offset, with_lengths), held in `local`; the dense kernels read the
// params themselves. The callers move their q-like and k-like pointers to the sequence's first
// rows and index them as batch 0.
template <bool kSeqs>
__device__ __forceinline__ const FwdParams& block_params(const FwdParams& p, FwdParams& local,
                                                         const SeqArrays<gptr<const int32_t>>& sa, int b, Seq& seq) {
  if constexpr (!kSeqs) return p;
  seq = sequence(p, sa, b);
  local = with_lengths(p, seq);
  return local;
}

// P' = exp2(S * scale_log2 - lse2) of a visible pair, written once for both kernels that use it.
__device__ __forceinline__ float unnormalised_p(float s, float scale_log2, float lse2) {
  return fast_exp2(s * scale_log2 - lse2);
}

// acc[mt][nt] (m16 x n8 tiles) += A.B over KSteps k16 steps. load_a(a, mt, ks): the A fragment of
// rows mt*16.. and columns ks*16..; load_b(b0, b1, np, ks): the B fragments of columns np*16 +
// [0, 8) and + [8, 16). Each B fragment feeds MT mma, each A fragment NT.
template <class T, int KSteps, int MT, int NT, class LoadA, class LoadB>
__device__ __forceinline__ void warp_mma(float (&acc)[MT][NT][4], LoadA load_a, LoadB load_b) {
#pragma unroll
  for (int ks = 0; ks < KSteps; ++ks) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) load_a(a[mt], mt, ks);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b0[2], b1[2];
      load_b(b0, b1, np, ks);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_m16n8k16<T>(acc[mt][2 * np], a[mt], b0, acc[mt][2 * np]);
        mma_m16n8k16<T>(acc[mt][2 * np + 1], a[mt], b1, acc[mt][2 * np + 1]);
      }
    }
  }
}

template <int MT, int NT>
__device__ __forceinline__ void zero(float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
}

// Fragment loaders over padded row-major shared tiles (ld elements per row); `base` is the warp
// tile's first element. A from [m][k] rows (ldmatrix) or from [k][m] rows (ldmatrix.trans); B
// from [n][k] rows (ldmatrix) or from [k][n] rows (ldmatrix.trans).
template <class T>
__device__ __forceinline__ auto a_rows(sptr<T> base, int ld, int lane) {
  return [=](uint32_t(&a)[4], int mt, int ks) {
    ldmatrix_x4(a[0], a[1], a[2], a[3], base + (mt * 16 + lane % 16) * ld + ks * 16 + (lane / 16) * 8);
  };
}
template <class T>
__device__ __forceinline__ auto a_cols(sptr<T> base, int ld, int lane) {
  return [=](uint32_t(&a)[4], int mt, int ks) {
    ldmatrix_x4_trans(a[0], a[1], a[2], a[3],
                      base + (ks * 16 + (lane / 16) * 8 + lane % 8) * ld + mt * 16 + ((lane / 8) & 1) * 8);
  };
}
template <class T>
__device__ __forceinline__ auto b_rows(sptr<T> base, int ld, int lane) {
  return [=](uint32_t(&b0)[2], uint32_t(&b1)[2], int np, int ks) {
    ldmatrix_x4(b0[0], b0[1], b1[0], b1[1],
                base + (np * 16 + (lane / 16) * 8 + lane % 8) * ld + ks * 16 + ((lane / 8) & 1) * 8);
  };
}
template <class T>
__device__ __forceinline__ auto b_cols(sptr<T> base, int ld, int lane) {
  return [=](uint32_t(&b0)[2], uint32_t(&b1)[2], int np, int ks) {
    ldmatrix_x4_trans(b0[0], b0[1], b1[0], b1[1], base + (ks * 16 + lane % 16) * ld + np * 16 + (lane / 16) * 8);
  };
}

// S = Q.K^T and dP = dO.V^T of this warp's tile (kSdpM query rows x kSdpN keys).
template <class Tr>
struct SdpTile {
  static constexpr int MT = Tr::kSdpM / 16, NT = Tr::kSdpN / 8;
  float s[MT][NT][4], dp[MT][NT][4];

  __device__ __forceinline__ void compute(sptr<typename Tr::Element> sQ, sptr<typename Tr::Element> sdO,
                                          sptr<typename Tr::Element> sK, sptr<typename Tr::Element> sV, int wm,
                                          int wn, int lane) {
    using T = typename Tr::Element;
    constexpr int LD = Tr::kRowStride, KS = Tr::kHeadDim / 16;
    zero(s);
    zero(dp);
    warp_mma<T, KS>(s, a_rows(sQ + wm * Tr::kSdpM * LD, LD, lane), b_rows(sK + wn * Tr::kSdpN * LD, LD, lane));
    warp_mma<T, KS>(dp, a_rows(sdO + wm * Tr::kSdpM * LD, LD, lane), b_rows(sV + wn * Tr::kSdpN * LD, LD, lane));
  }
};

// The query-tile index range [lo, hi] whose rows all see keys [n0, n0 + BN), for tiles of BM
// rows (rows past Sq do not count); empty (lo > hi) when the key block is cut by Sk.
template <int BM, int BN>
__device__ __forceinline__ void whole_tiles(const FwdParams& p, int64_t n0, int& lo, int& hi) {
  lo = 1;
  hi = 0;
  if (n0 + BN > p.seqlen_k) return;
  const int64_t first = visible_rows(n0 + BN - 1, p).lo, last = visible_rows(n0, p).hi;  // rows seeing all
  if (first > last) return;
  lo = int((first + BM - 1) / BM);
  hi = last == p.seqlen_q - 1 ? int((p.seqlen_q - 1) / BM) : int((last + 1) / BM) - 1;
}

__device__ __forceinline__ int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : x > hi ? hi : x; }

// visible_keys of rows row0 + d as columns of a fragment row whose column 0 is key key0, in
// 32-bit: the row's range is [max(lo + d, floor), min(hi + d, cap)], clamped to the fragment's
// Cols columns; computed once per tile instead of per row in 64 bits.
struct MaskCols {
  int lo, hi, floor, cap;
  template <int Cols>
  __device__ __forceinline__ void row(int d, int& c_lo, int& c_hi) const {
    const int a = lo + d > floor ? lo + d : floor, b = hi + d < cap ? hi + d : cap;
    c_lo = a < 0 ? 0 : a > Cols ? Cols : a;
    c_hi = b < -1 ? -1 : b > Cols - 1 ? Cols - 1 : b;
  }
};

__device__ __forceinline__ MaskCols mask_cols(const FwdParams& p, int64_t row0, int64_t key0) {
  constexpr int64_t kFar = int64_t(1) << 30;
  const int64_t center = row0 + p.align_offset - key0;
  return {int(p.window_left >= kNoWindow ? -kFar : clamp64(center - p.window_left, -kFar, kFar)),
          int(p.window_right >= kNoWindow ? kFar : clamp64(center + p.window_right, -kFar, kFar)),
          int(clamp64(-key0, -kFar, kFar)), int(clamp64(p.seqlen_k - 1 - key0, -kFar, kFar))};
}

template <class Tr, bool kSeqs, bool kMod>
__global__ void __launch_bounds__(Tr::kThreads)
    bwd_row_stats(BwdParams bp, BwdWork w, gptr<const typename Tr::Element> q, gptr<const typename Tr::Element> k,
                  gptr<const typename Tr::Element> v, gptr<const typename Tr::Element> dout, gptr<const float> lse,
                  gptr<const float> dlse, gptr<float> stats, gptr<float> dq_accum, SeqArrays<gptr<const int32_t>> sa,
                  ScoreMods mods, gptr<const float> slopes, MaskRefs am, Dropout drop) {
  static_assert(kSeqs || !kMod, "score mods run in the variable-length kernels");
  using T = typename Tr::Element;
  using Sdp = SdpTile<Tr>;
  constexpr int BN = Tr::kBlockN, BM = Tr::kBlockM, LD = Tr::kRowStride;
  using MapQ = ChunkMap<BM, Tr::kHeadDim, Tr::kThreads>;
  using MapK = ChunkMap<BN, Tr::kHeadDim, Tr::kThreads>;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
  const int wm = warp / Tr::kSdpWarpsN, wn = warp % Tr::kSdpWarpsN;
  const int h = blockIdx.y, b = blockIdx.z, hk = h / (int(bp.fwd.heads_q) / int(bp.fwd.heads_kv));
  FwdParams local;
  Seq seq;
  const FwdParams& p = block_params<kSeqs>(bp.fwd, local, sa, b, seq);
  int b_q = b, b_kv = b;  // batch index of the q-like and the k-like arrays
  if constexpr (kSeqs) {
    q += seq.q_batch * p.q_batch_stride + seq.q_row0 * p.q_row_stride;
    dout += seq.q_batch * bp.do_batch_stride + seq.q_row0 * bp.do_row_stride;
    lse += seq.q_batch * p.lse_batch_stride + seq.q_row0;
    if (bp.dlse != nullptr) dlse += seq.q_batch * p.lse_batch_stride + seq.q_row0;
    k += seq.kv_batch * p.k_batch_stride + seq.k_row0 * p.k_row_stride;
    v += seq.kv_batch * p.v_batch_stride + seq.k_row0 * p.v_row_stride;
    b_q = b_kv = 0;
  }
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  const int rows_valid = int(min64(BM, p.seqlen_q - m0));  // <= 0 for tiles of padding only

  sptr<T> sK = dynamic_smem<T>();
  sptr<T> sV = sK + Tr::kSmemKV;
  sptr<T> sQ = sV + Tr::kSmemKV;
  sptr<T> sdO = sQ + Tr::kSmemQ;
  sptr<float> sSum = ptr_cast<float>(sdO + Tr::kSmemQ);  // [warp column][row] partial sums of P'
  sptr<float> sDot = sSum + Tr::kSdpWarpsN * BM;         // ... and of P' dP
  sptr<float> sLse2 = sDot + Tr::kSdpWarpsN * BM;        // lse2 per row
  using MTile = MaskTile<BM, BN, Tr::kThreads>;
  [[maybe_unused]] const sptr<uint8_t> sM = ptr_cast<uint8_t>(sLse2 + BM);  // staged mask: one key tile's

  if (threadIdx.x < BM) {
    const int64_t row = m0 + threadIdx.x;
    sLse2[threadIdx.x] = lse2_for_backward<float>(
        row < p.seqlen_q ? lse[b_q * p.lse_batch_stride + h * p.lse_head_stride + row] : neg_inf<float>());
  }
  __syncthreads();
  // This thread's rows (fragment rows g, g + 8 of each m16 tile) and their lse2.
  float lse2[Sdp::MT][2], psum[Sdp::MT][2], pdot[Sdp::MT][2];
  KeyRange keys[Sdp::MT][2];
#pragma unroll
  for (int mt = 0; mt < Sdp::MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = wm * Tr::kSdpM + mt * 16 + g + 8 * r;
      lse2[mt][r] = sLse2[row];
      keys[mt][r] = visible_keys(m0 + row, p);
      psum[mt][r] = pdot[mt][r] = 0.0f;
    }
  if (rows_valid > 0) {
    copy_tile_async<MapQ, LD, true>(sQ, q + (b_q * p.q_batch_stride + m0 * p.q_row_stride + h * p.q_head_stride),
                                    p.q_row_stride, rows_valid);
    copy_tile_async<MapQ, LD, true>(
        sdO, dout + (b_q * bp.do_batch_stride + m0 * bp.do_row_stride + h * bp.do_head_stride), bp.do_row_stride,
        rows_valid);
    const KeyRange span = visible_keys_of_rows(m0, m0 + rows_valid, p);
    const KeyRange first = visible_keys(m0, p), last = visible_keys(m0 + rows_valid - 1, p);
    const gptr<const T> kb = k + (b_kv * p.k_batch_stride + hk * p.k_head_stride);
    const gptr<const T> vb = v + (b_kv * p.v_batch_stride + hk * p.v_head_stride);
    [[maybe_unused]] const int64_t mask_at = kMod && am.stage ? mask_row_offset(p, b, h, m0) : 0;  // the tile's key 0
    for (int64_t n0 = span.lo / BN * BN; n0 <= span.hi; n0 += BN) {
      const int keys_valid = int(min64(BN, p.seqlen_k - n0));
      if constexpr (kMod)  // the mask's tile beside K and V: rows past Sq, keys past Sk zero-filled
        if (am.stage) am.stage_tile<MTile, true>(sM, p, mask_at + n0, rows_valid, keys_valid);
      copy_tile_async<MapK, LD, true>(sK, kb + n0 * p.k_row_stride, p.k_row_stride, keys_valid);
      copy_tile_async<MapK, LD, true>(sV, vb + n0 * p.v_row_stride, p.v_row_stride, keys_valid);
      cp_async_wait_all();
      __syncthreads();
      Sdp tile;
      tile.compute(sQ, sdO, sK, sV, wm, wn, lane);
      if constexpr (kMod)  // the forward's log2-domain scores, from this thread's row g and column 2t
        mods.apply(tile.s, mods.slope2(p, slopes, b, h),
                   int(alibi_position(m0 + wm * Tr::kSdpM + g, p.seqlen_q, p.seqlen_k) - n0 - wn * Tr::kSdpN), 2 * t);
      if constexpr (kMod)  // unstaged: one load per entry (with pair loads too, ptxas spilled at D = 128, 160)
        if (!am.stage && p.attn_mask != nullptr)
          am.apply<Sdp::MT, Sdp::NT, false>(tile.s, p, b, h, m0 + wm * Tr::kSdpM + g, n0 + wn * Tr::kSdpN + 2 * t,
                                            p.seqlen_q, p.seqlen_k);
      // Dropout: this thread's keep bits of the warp tile, for delta = sum_j P'_ij M_ij dP_ij.
      [[maybe_unused]] uint32_t keep[Sdp::MT];
      if constexpr (kMod)
        if (drop.on) drop.bits<Sdp::MT, Sdp::NT, Tr::kDropoutCalls>(keep, b, h, m0 + wm * Tr::kSdpM + g, n0 + wn * Tr::kSdpN + 2 * t);
      const bool whole = keys_valid == BN && n0 >= last.lo && n0 + BN - 1 <= first.hi;
#pragma unroll
      for (int mt = 0; mt < Sdp::MT; ++mt) {
        if constexpr (kMod)
          if (am.stage)
#pragma unroll
            for (int r = 0; r < 2; ++r)
              MaskRefs::add_staged_row<MTile, Sdp::NT>(tile.s[mt], r, p.mask_bool, sM, wm * Tr::kSdpM + mt * 16 + 8 * r + g,
                                                       wn * Tr::kSdpN + 2 * t);
#pragma unroll
        for (int nt = 0; nt < Sdp::NT; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int r = i >> 1;
            const int64_t key = n0 + wn * Tr::kSdpN + nt * 8 + 2 * t + (i & 1);
            if (!whole && (key < keys[mt][r].lo || key > keys[mt][r].hi)) continue;  // no part, even NaN
            const float pt = unnormalised_p(tile.s[mt][nt][i], kMod ? 1.0f : p.scale_log2, lse2[mt][r]);
            float dp = tile.dp[mt][nt][i];
            if constexpr (kMod)
              if (drop.on) dp = drop.apply(dp, keep[mt], nt, i);  // M dP
            psum[mt][r] += pt;
            pdot[mt][r] += pt * dp;
          }
      }
      __syncthreads();  // sK, sV are refilled next
    }
    cp_async_wait_all();  // Q, dO when the rows see no key
  }

  // Sum over the 4 lanes of a row, then over the warp columns in order.
#pragma unroll
  for (int mt = 0; mt < Sdp::MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      for (int m = 1; m < 4; m *= 2) {
        psum[mt][r] += __shfl_xor_sync(0xffffffffu, psum[mt][r], m);
        pdot[mt][r] += __shfl_xor_sync(0xffffffffu, pdot[mt][r], m);
      }
      if (t == 0) {
        const int row = wm * Tr::kSdpM + mt * 16 + g + 8 * r;
        sSum[wn * BM + row] = psum[mt][r];
        sDot[wn * BM + row] = pdot[mt][r];
      }
    }
  __syncthreads();
  if (threadIdx.x < BM) {
    float sum = 0.0f, dot = 0.0f;
    for (int c = 0; c < Tr::kSdpWarpsN; ++c) {
      sum += sSum[c * BM + threadIdx.x];
      dot += sDot[c * BM + threadIdx.x];
    }
    const int64_t row = m0 + threadIdx.x;
    float4 st{-neg_inf<float>(), 0.0f, 0.0f, 0.0f};  // past Sq or no key seen: P = dS = 0
    if (row < p.seqlen_q && sum != 0.0f) {            // d lse_i / d s_ij = P_ij folds into delta
      st.x = sLse2[threadIdx.x];
      st.y = 1.0f / sum;
      st.z = dot / sum;
      if (bp.dlse != nullptr) st.z -= dlse[b_q * p.lse_batch_stride + h * p.lse_head_stride + row];
    }
    ptr_cast<float4>(stats + stat_row(p, w, b, h, row) * 4)[0] = st;
  }
  // Zero this tile's rows of every split of the accumulator (BM * D contiguous floats each).
  const gptr<float> acc = dq_accum + stat_row(p, w, b, h, m0) * Tr::kHeadDim;
  for (int s = 0; s < w.splits; ++s)
    for (int i = threadIdx.x; i < BM * Tr::kHeadDim / 4; i += Tr::kThreads)
      ptr_cast<float4>(acc + s * w.split_floats)[i] = float4{0.0f, 0.0f, 0.0f, 0.0f};
}

// dK, dV of the key rows of a batch that are no key of its sequence (before leftpad_k, from
// seqused_k on: rows outside [first, end)) are zeros, as on the CPU backend, when batches have
// rows of their own (no cu_seqlens_k, pages or kv_batch_idx). dk, dv: row 0 of the block's
// (batch, kv head). A block zeroes the rows of its key blocks (blockIdx.x, + gridDim.x, ...),
// which cover the array's rows; the main loop writes only the sequence's rows.
template <int BN, int D, int Threads, class T>
__device__ __forceinline__ void zero_unused_key_rows(const BwdParams& bp, gptr<T> dk, gptr<T> dv, int64_t first,
                                                     int64_t end) {
  const FwdParams& p = bp.fwd;
  if ((p.seqused_k == nullptr && p.leftpad_k == nullptr) || p.cu_seqlens_k != nullptr || p.block_table != nullptr ||
      p.kv_batch_idx != nullptr)
    return;
  const int64_t rows = p.kv_array_rows ? p.kv_array_rows : p.seqlen_k;
  for (int64_t n0 = int64_t(blockIdx.x) * BN; n0 < rows; n0 += int64_t(gridDim.x) * BN)
    for (int i = threadIdx.x; i < BN * D / 8; i += Threads) {
      const int64_t r = n0 + i / (D / 8);
      if (r >= rows || (r >= first && r < end)) continue;
      ptr_cast<uint4>(dk + (r * bp.dk_row_stride + i % (D / 8) * 8))[0] = uint4{0u, 0u, 0u, 0u};
      ptr_cast<uint4>(dv + (r * bp.dv_row_stride + i % (D / 8) * 8))[0] = uint4{0u, 0u, 0u, 0u};
    }
}

// Whether the main kernel's kMod instance of tiles Tr stages explicit masks in shared memory
// (MaskRefs::stage; otherwise, and for other masks, it reads them from global memory per row): all
// but D = 224, whose instance spills on sm_86 / 89 already (8 / 4 bytes of spill stores / loads)
// and 12 / 12 with the stage.
template <class Tr>
constexpr bool kBwdStagesMask = Tr::kHeadDim != 224;

template <class Tr, bool kSeqs, bool kMod>
__global__ void __launch_bounds__(Tr::kThreads)
    flash_bwd_kernel(BwdParams bp, BwdWork w, gptr<const typename Tr::Element> q, gptr<const typename Tr::Element> k,
                     gptr<const typename Tr::Element> v, gptr<const typename Tr::Element> dout,
                     gptr<const float> stats, gptr<float> dq_accum, gptr<typename Tr::Element> dk,
                     gptr<typename Tr::Element> dv, SeqArrays<gptr<const int32_t>> sa, ScoreMods mods,
                     gptr<const float> slopes, MaskRefs am, Dropout drop) {
  static_assert(kSeqs || !kMod, "score mods run in the variable-length kernels");
  using T = typename Tr::Element;
  using Sdp = SdpTile<Tr>;
  constexpr int BN = Tr::kBlockN, BM = Tr::kBlockM, D = Tr::kHeadDim, LD = Tr::kRowStride, LP = Tr::kPStride;
  using MapQ = ChunkMap<BM, D, Tr::kThreads>;
  using MapK = ChunkMap<BN, D, Tr::kThreads>;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
  const int wm = warp / Tr::kSdpWarpsN, wn = warp % Tr::kSdpWarpsN;  // S, dP warp tile
  const int kn = warp / Tr::kKvWarpsD, kd = warp % Tr::kKvWarpsD;    // dK, dV warp tile
  const int qm = warp / Tr::kDqWarpsD, qd = warp % Tr::kDqWarpsD;    // dQ warp tile
  const int hk = blockIdx.y, b = blockIdx.z, group = int(bp.fwd.heads_q) / int(bp.fwd.heads_kv);
  const FwdParams& p = bp.fwd;
  Seq seq{};
  if constexpr (kSeqs) seq = sequence(p, sa, b);
  // Batch index of the q-like and the k-like arrays: b in the dense kernel, else the sequence's
  // own (0 for packed arrays; b, or kv_batch_idx[b], for arrays of batches, as in dense calls
  // with key lengths seqused_k). The kMod instances hold it; the plain variable-length one moves
  // its array pointers to it once (held as an index across the query-tile loop it cost ptxas a
  // 52-byte spill at D = 224) and indexes batch 0. The sequence's lengths are held as int32 (the
  // prefix sums are int32) and put into params only where the mask functions read them: the
  // dense kernel spends no registers on them.
  const int b_q = !kSeqs ? b : kMod ? int(seq.q_batch) : 0, b_kv = !kSeqs ? b : kMod ? int(seq.kv_batch) : 0;
  if constexpr (kSeqs && !kMod) {
    q += seq.q_batch * p.q_batch_stride;
    dout += seq.q_batch * bp.do_batch_stride;
    k += seq.kv_batch * p.k_batch_stride;
    v += seq.kv_batch * p.v_batch_stride;
    dk += seq.kv_batch * bp.dk_batch_stride;
    dv += seq.kv_batch * bp.dv_batch_stride;
  }
  // The first rows of the sequence in the q-like and k-like arrays, read from cu_seqlens where Q/dO
  // and K/V are loaded and dK/dV stored (held in registers across the main loop, they cost ptxas
  // 4-byte spills at D = 224 and 256).
  auto r_q = [&]() -> int64_t { if constexpr (kSeqs) return sequence(p, sa, b).q_row0; else return 0; };
  auto r_kv = [&]() -> int64_t { if constexpr (kSeqs) return sequence(p, sa, b).k_row0; else return 0; };
  const int len_q = int(seq.seqlen_q), len_k = int(seq.seqlen_k);
  auto seqlen_q = [&]() -> int64_t { if constexpr (kSeqs) return len_q; else return p.seqlen_q; };
  auto seqlen_k = [&]() -> int64_t { if constexpr (kSeqs) return len_k; else return p.seqlen_k; };
  auto on_mask = [&](auto f) {  // f(params of this sequence's mask)
    if constexpr (kSeqs) {
      FwdParams m = p;
      m.seqlen_q = len_q, m.seqlen_k = len_k;
      m.align_offset = sequence_align_offset(p, len_q, len_k);
      return f(m);
    } else {
      return f(p);
    }
  };

  sptr<T> sK = dynamic_smem<T>();
  sptr<T> sV = sK + Tr::kSmemKV;
  sptr<T> sQ = sV + Tr::kSmemKV;                       // kStages buffers
  sptr<T> sdO = sQ + Tr::kStages * Tr::kSmemQ;         // kStages buffers
  sptr<T> sP = sdO + Tr::kStages * Tr::kSmemQ;
  sptr<T> sdS = sP + Tr::kSmemP;
  sptr<float> sStat = ptr_cast<float>(sdS + Tr::kSmemP);  // kStages x BM rows of 4 floats
  // The explicit mask's stage (MaskRefs::stage): kStages tiles of BM query rows x the block's keys
  // past the statistics, allocated by calls that stage a mask only.
  using MTile = MaskTile<BM, BN, Tr::kThreads>;
  [[maybe_unused]] const sptr<uint8_t> sM = ptr_cast<uint8_t>(sStat + Tr::kStages * BM * 4);
  const int dq_lane = qm * Tr::kDqM * D + qd * Tr::kDqD / 8 * 128 + lane;  // in a tile's accumulator

  const int n_blocks = int((seqlen_k() + BN - 1) / BN);
  for (int nb = blockIdx.x; nb < n_blocks; nb += gridDim.x) {
    const int n0 = nb * BN, keys_valid = int(min64(BN, seqlen_k() - n0));
    copy_tile_async<MapK, LD, true>(sK, k + (b_kv * p.k_batch_stride + (r_kv() + n0) * p.k_row_stride + hk * p.k_head_stride),
                                    p.k_row_stride, keys_valid);
    copy_tile_async<MapK, LD, true>(sV, v + (b_kv * p.v_batch_stride + (r_kv() + n0) * p.v_row_stride + hk * p.v_head_stride),
                                    p.v_row_stride, keys_valid);
    cp_async_commit();

    float acc_dk[Tr::kKvN / 16][Tr::kKvD / 8][4], acc_dv[Tr::kKvN / 16][Tr::kKvD / 8][4];
    zero(acc_dk);
    zero(acc_dv);

    // Query tiles of rows that see at least one of these keys, for every query head of the group.
    const KeyRange rows = on_mask([&](const FwdParams& m) {
      return KeyRange{visible_rows(n0, m).lo, visible_rows(n0 + keys_valid - 1, m).hi};
    });
    const int t_first = int(rows.lo / BM), n_tiles = rows.empty() ? 0 : int(rows.hi / BM) - t_first + 1;
    int whole_lo, whole_hi;  // tiles that need no mask
    on_mask([&](const FwdParams& m) { whole_tiles<BM, BN>(m, n0, whole_lo, whole_hi); });
    // Q, dO and the statistics of query tile `tile` of head h0 + head go to buffer `buf`.
    const int h0 = hk * group, t_last = n_tiles > 0 ? t_first + n_tiles - 1 : -1;
    const auto load = [&](int head, int tile, int buf) {
      const int64_t m = int64_t(tile) * BM, valid = seqlen_q() - m;
      const gptr<const T> gq = q + (b_q * p.q_batch_stride + (h0 + head) * p.q_head_stride + (r_q() + m) * p.q_row_stride);
      const gptr<const T> gdo =
          dout + (b_q * bp.do_batch_stride + (h0 + head) * bp.do_head_stride + (r_q() + m) * bp.do_row_stride);
      const sptr<T> bq = sQ + buf * Tr::kSmemQ, bdo = sdO + buf * Tr::kSmemQ;
      if (valid >= BM) {
        copy_tile_async<MapQ, LD, false>(bq, gq, p.q_row_stride, BM);
        copy_tile_async<MapQ, LD, false>(bdo, gdo, bp.do_row_stride, BM);
      } else {  // the last tile: rows past Sq are zero-filled
        copy_tile_async<MapQ, LD, true>(bq, gq, p.q_row_stride, int(valid));
        copy_tile_async<MapQ, LD, true>(bdo, gdo, bp.do_row_stride, int(valid));
      }
      if (threadIdx.x < BM)
        cp_async<16>(sStat + (buf * BM + threadIdx.x) * 4, stats + (stat_row(p, w, b, h0 + head, m) + threadIdx.x) * 4);
      if constexpr (kMod && kBwdStagesMask<Tr>)  // the staged mask's tile: rows past Sq, keys past Sk zero-filled
        if (am.stage)
          am.stage_tile<MTile, true>(sM + buf * int(MTile::bytes(p.mask_bool)), p,
                                     mask_row_offset(p, b, h0 + head, m) + n0, int(min64(valid, BM)), keys_valid);
      cp_async_commit();
    };

    int stage = 0;
    if (Tr::kStages == 2 && n_tiles > 0) load(0, t_first, 0);
    for (int h = 0; h < group && n_tiles > 0; ++h) {
      for (int qt = t_first; qt <= t_last; ++qt) {
        if (Tr::kStages == 1) {
          __syncthreads();  // every warp is done with the previous tile
          load(h, qt, 0);
        }
        cp_async_wait<0>();
        __syncthreads();  // this tile (and K, V) landed for every thread; the previous tile is done
        if (Tr::kStages == 2 && (qt < t_last || h + 1 < group))
          load(qt < t_last ? h : h + 1, qt < t_last ? qt + 1 : t_first, stage ^ 1);
        const sptr<T> cQ = sQ + stage * Tr::kSmemQ, cdO = sdO + stage * Tr::kSmemQ;
        const sptr<float> cSt = sStat + stage * BM * 4;
        const int64_t m0 = int64_t(qt) * BM;
        // This thread's first dQ accumulator element of the tile; the others are constant offsets.
        const gptr<float> dq_tile =
            dq_accum + (blockIdx.x * w.split_floats + stat_row(p, w, b, h0 + h, m0) * D + dq_lane);

        Sdp tile;
        tile.compute(cQ, cdO, sK, sV, wm, wn, lane);
        // Score mods: S scaled and capped here; the ALiBi bias and the softcap's derivative in the
        // passes of each fragment row below (the row's ALiBi position computed there: held across
        // the loop it cost ptxas a 4-byte spill at D = 256 on sm_90).
        [[maybe_unused]] float slope2 = 0.0f;
        if constexpr (kMod) {
          slope2 = mods.slope2(p, slopes, b, h0 + h);
          mods.cap(tile.s);
        }
        // Dropout: the keep bits of this thread's elements of the warp tile (a word per m16 tile).
        [[maybe_unused]] uint32_t keep[Sdp::MT];
        if constexpr (kMod)
          if (drop.on) drop.bits<Sdp::MT, Sdp::NT, Tr::kDropoutCalls>(keep, b, h0 + h, m0 + wm * Tr::kSdpM + g, n0 + wn * Tr::kSdpN + 2 * t);
        // P = P' / psum and dS = P (dP - delta), packed to 16 bits as the A operands of what follows.
        uint32_t pk_p[Sdp::MT][Sdp::NT][2], pk_ds[Sdp::MT][Sdp::NT][2];
        const bool masked = qt < whole_lo || qt > whole_hi;
        // The explicit mask's offset of this thread's first row (its rows: + mt * 16 + 8 r).
        [[maybe_unused]] int64_t mask_row0 = 0;
        if constexpr (kMod)
          if (p.attn_mask != nullptr && !(kBwdStagesMask<Tr> && am.stage))
            mask_row0 = mask_row_offset(p, b, h0 + h, m0 + wm * Tr::kSdpM + g);
        MaskCols cols{};
        if (masked)
          cols = on_mask([&](const FwdParams& mp) { return mask_cols(mp, m0 + wm * Tr::kSdpM + g, n0 + wn * Tr::kSdpN + 2 * t); });
#pragma unroll
        for (int mt = 0; mt < Sdp::MT; ++mt)
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int row = wm * Tr::kSdpM + mt * 16 + g + 8 * r;
            const float4 st = ptr_cast<float4>(cSt)[row];  // lse2, 1 / psum, delta
            [[maybe_unused]] const bool row_in = m0 + row < seqlen_q();
            // Dropout: M dP (M = the keep mask times 1 / (1 - p)) in place, before dS is taken.
            auto drop_apply = [&](float(&x)[Sdp::NT][4]) {
#pragma unroll
              for (int nt = 0; nt < Sdp::NT; ++nt)
#pragma unroll
                for (int c = 0; c < 2; ++c)
                  x[nt][2 * r + c] = drop.apply(x[nt][2 * r + c], keep[mt], nt, 2 * r + c);
            };
            // Each feature in a block-uniform pass of its own over the row's elements (the key of
            // column nt * 8 + c is key0 + nt * 8 + c), so a call pays only for those it uses.
            [[maybe_unused]] const int key0 = n0 + wn * Tr::kSdpN + 2 * t;
            [[maybe_unused]] float capped[Sdp::NT][2];  // S before ALiBi and the mask: the softcap's derivative
            if constexpr (kMod) {
              if (drop.on) drop_apply(tile.dp[mt]);
#pragma unroll
              for (int nt = 0; nt < Sdp::NT; ++nt)
#pragma unroll
                for (int c = 0; c < 2; ++c) capped[nt][c] = tile.s[mt][nt][2 * r + c];
              if (mods.alibi) {  // -slope2 |pos - key|: the distance to key0 converted once per row
                const float d0 = float(int(alibi_position(m0 + row, seqlen_q(), seqlen_k()) - key0));
#pragma unroll
                for (int nt = 0; nt < Sdp::NT; ++nt)
#pragma unroll
                  for (int c = 0; c < 2; ++c)
                    tile.s[mt][nt][2 * r + c] = ScoreMods::bias_f(tile.s[mt][nt][2 * r + c], slope2, d0 - float(nt * 8 + c));
              }
              if (p.attn_mask != nullptr) {
                if (kBwdStagesMask<Tr> && am.stage)  // this tile's, landed with its Q and dO
                  MaskRefs::add_staged_row<MTile, Sdp::NT>(tile.s[mt], r, p.mask_bool,
                                                           sM + stage * int(MTile::bytes(p.mask_bool)), row,
                                                           wn * Tr::kSdpN + 2 * t);
                else  // keys past Sk and rows past Sq are not read (masked tiles zero them)
                  am.add_row<Sdp::NT>(tile.s[mt], r, p, mask_row0, mt * 16 + 8 * r, key0,
                                      row_in ? int(min64(seqlen_k() - key0, Sdp::NT * 8)) : 0);
              }
            }
            // P = P' / psum and dS = P (dP - delta) (M dP with dropout).
#pragma unroll
            for (int nt = 0; nt < Sdp::NT; ++nt)
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const float pt = unnormalised_p(tile.s[mt][nt][2 * r + c], kMod ? 1.0f : p.scale_log2, st.x) * st.y;
                tile.dp[mt][nt][2 * r + c] = pt * (tile.dp[mt][nt][2 * r + c] - st.z);
                tile.s[mt][nt][2 * r + c] = pt;
              }
            if constexpr (kMod) {
              if (bp.dmask != nullptr) {  // the mask's gradient where the band lets a pair through
                int lo = 0, hi = Sdp::NT * 8 - 1;  // as columns of the row: all in unmasked tiles
                if (masked) cols.row<Sdp::NT * 8>(mt * 16 + 8 * r, lo, hi);
                if (!row_in) hi = -1;
                am.store_grad_row<Sdp::NT>(bp, MaskRefs::grad_row_offset(bp, b, h0 + h, m0 + wm * Tr::kSdpM + g), mt * 16 + 8 * r, key0, tile.dp[mt], r, lo, hi);
              }
              if (mods.cap2 > 0.0f)  // dS times 1 - tanh^2
#pragma unroll
                for (int nt = 0; nt < Sdp::NT; ++nt)
#pragma unroll
                  for (int c = 0; c < 2; ++c) tile.dp[mt][nt][2 * r + c] *= mods.grad(capped[nt][c]);
              if (drop.on) drop_apply(tile.s[mt]);  // P * M, for dV
            }
            if (masked) {  // a masked pair gets P = dS = 0, also in a row whose statistics are NaN
              // The visible keys as columns [lo, hi] of the row's fragment (column nt * 8 + c is key
              // key0 + nt * 8 + c): 32-bit compares with constants per element (visible_keys per row
              // and 64-bit key compares cost ptxas spills with 64 x 128 tiles at D = 128).
              int lo, hi;
              cols.row<Sdp::NT * 8>(mt * 16 + 8 * r, lo, hi);
#pragma unroll
              for (int nt = 0; nt < Sdp::NT; ++nt)
#pragma unroll
                for (int c = 0; c < 2; ++c)
                  if (nt * 8 + c < lo || nt * 8 + c > hi) tile.s[mt][nt][2 * r + c] = tile.dp[mt][nt][2 * r + c] = 0.0f;
            }
#pragma unroll
            for (int nt = 0; nt < Sdp::NT; ++nt) {
              pk_p[mt][nt][r] = pack2<T>(tile.s[mt][nt][2 * r], tile.s[mt][nt][2 * r + 1]);
              pk_ds[mt][nt][r] = pack2<T>(tile.dp[mt][nt][2 * r], tile.dp[mt][nt][2 * r + 1]);
            }
          }
#pragma unroll
        for (int mt = 0; mt < Sdp::MT; ++mt)
#pragma unroll
          for (int nt = 0; nt < Sdp::NT; ++nt)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              const int off = (wm * Tr::kSdpM + mt * 16 + g + 8 * r) * LP + wn * Tr::kSdpN + nt * 8 + 2 * t;
              ptr_cast<uint32_t>(sP + off)[0] = pk_p[mt][nt][r];
              ptr_cast<uint32_t>(sdS + off)[0] = pk_ds[mt][nt][r];
            }
        __syncthreads();
        // dV += P^T.dO and dK += dS^T.Q: A = P^T, dS^T from the [query][key] buffers (ldmatrix.trans).
        warp_mma<T, BM / 16>(acc_dv, a_cols(sP + kn * Tr::kKvN, LP, lane), b_cols(cdO + kd * Tr::kKvD, LD, lane));
        warp_mma<T, BM / 16>(acc_dk, a_cols(sdS + kn * Tr::kKvN, LP, lane), b_cols(cQ + kd * Tr::kKvD, LD, lane));
        // dQ = dS.K, added to the accumulator: per register, the warp's 32 lanes cover 128 bytes.
        // In kDqPasses passes over the warp tile's columns (fewer accumulators live at once).
        constexpr int DQ = Tr::kDqD / Tr::kDqPasses;
#pragma unroll
        for (int pass = 0; pass < Tr::kDqPasses; ++pass) {
          float acc_dq[Tr::kDqM / 16][DQ / 8][4];
          zero(acc_dq);
          warp_mma<T, BN / 16>(acc_dq, a_rows(sdS + qm * Tr::kDqM * LP, LP, lane),
                               b_cols(sK + qd * Tr::kDqD + pass * DQ, LD, lane));
#pragma unroll
          for (int mt = 0; mt < Tr::kDqM / 16; ++mt)
#pragma unroll
            for (int nt = 0; nt < DQ / 8; ++nt)
#pragma unroll
              for (int i = 0; i < 4; ++i)
                atomicAdd(dq_tile + (mt * 16 * D + (pass * DQ / 8 + nt) * 128 + i * 32), acc_dq[mt][nt][i]);
        }
        stage ^= Tr::kStages - 1;
      }
    }
    cp_async_wait_all();  // K, V when no query row sees these keys
    __syncthreads();      // every warp is done with K and V: their buffers take dK, dV

    // dK = scale * sum dS^T.Q, dV = sum P^T.dO (over the group's query heads), staged in shared
    // memory for 16-byte stores.
#pragma unroll
    for (int mt = 0; mt < Tr::kKvN / 16; ++mt)
#pragma unroll
      for (int nt = 0; nt < Tr::kKvD / 8; ++nt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int off = (kn * Tr::kKvN + mt * 16 + g + 8 * r) * LD + kd * Tr::kKvD + nt * 8 + 2 * t;
          ptr_cast<uint32_t>(sK + off)[0] =
              pack2<T>(acc_dk[mt][nt][2 * r] * p.scale, acc_dk[mt][nt][2 * r + 1] * p.scale);
          ptr_cast<uint32_t>(sV + off)[0] = pack2<T>(acc_dv[mt][nt][2 * r], acc_dv[mt][nt][2 * r + 1]);
        }
    __syncthreads();
    store_tile<MapK, LD>(dk + (b_kv * bp.dk_batch_stride + (r_kv() + n0) * bp.dk_row_stride + hk * bp.dk_head_stride), sK,
                         bp.dk_row_stride, keys_valid);
    store_tile<MapK, LD>(dv + (b_kv * bp.dv_batch_stride + (r_kv() + n0) * bp.dv_row_stride + hk * bp.dv_head_stride), sV,
                         bp.dv_row_stride, keys_valid);
    __syncthreads();  // the next key block refills sK, sV
  }
  if constexpr (kSeqs)
    zero_unused_key_rows<BN, D, Tr::kThreads>(bp, dk + (b_kv * bp.dk_batch_stride + hk * bp.dk_head_stride),
                                              dv + (b_kv * bp.dv_batch_stride + hk * bp.dv_head_stride), r_kv(),
                                              r_kv() + seqlen_k());
}

// dQ = scale * (sum of the accumulator's splits, in order) in the input dtype. A block converts
// 16 rows; a warp 8 of them x 4 column tiles: each of its loads reads 128 contiguous bytes of a
// tile, each store writes 16 bytes (8 columns) of a row.
template <class T, int D, bool kSeqs>
__global__ void __launch_bounds__(2 * D) bwd_convert_dq(BwdParams bp, BwdWork w, gptr<const float> dq_accum, gptr<T> dq,
                                                        SeqArrays<gptr<const int32_t>> sa) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int half = warp % 2, col8 = warp / 2 * 4 + lane / 8, g = lane % 8;
  const int h = blockIdx.y, b = blockIdx.z;
  FwdParams local;
  Seq seq;
  const FwdParams& p = block_params<kSeqs>(bp.fwd, local, sa, b, seq);
  int b_q = b;
  if constexpr (kSeqs) {
    dq += seq.q_batch * bp.dq_batch_stride + seq.q_row0 * bp.dq_row_stride;
    b_q = 0;
  }
  const int64_t row = int64_t(blockIdx.x) * 16 + half * 8 + g;
  const gptr<const float> tile =
      dq_accum + (stat_row(p, w, b, h, int64_t(blockIdx.x) * 16) * D + col8 * 128 + 2 * half * 32 + 4 * g);
  float4 even{0.0f, 0.0f, 0.0f, 0.0f}, odd = even;  // columns 0, 2, 4, 6 and 1, 3, 5, 7
  for (int s = 0; s < w.splits; ++s) {
    const float4 e = ptr_cast<const float4>(tile + s * w.split_floats)[0];
    const float4 o = ptr_cast<const float4>(tile + s * w.split_floats + 32)[0];
    even = float4{even.x + e.x, even.y + e.y, even.z + e.z, even.w + e.w};
    odd = float4{odd.x + o.x, odd.y + o.y, odd.z + o.z, odd.w + o.w};
  }
  if (row >= p.seqlen_q) return;
  const float c = p.scale;
  const uint4 out{pack2<T>(even.x * c, odd.x * c), pack2<T>(even.y * c, odd.y * c), pack2<T>(even.z * c, odd.z * c),
                  pack2<T>(even.w * c, odd.w * c)};
  ptr_cast<uint4>(dq + (b_q * bp.dq_batch_stride + row * bp.dq_row_stride + h * bp.dq_head_stride + col8 * 8))[0] = out;
}

}  // namespace fae::cuda
