// FlashAttention-2 backward (sm_80+), three kernels:
//   bwd_row_stats: per query row, from the backward's own scores, psum = sum_j P'_ij with
//                   P' = exp2(S * scale_log2 - lse2), and delta = sum_j P'_ij dP_ij / psum
//                   (minus dlse when given); zeroes the float32 dQ accumulator. So P = P' / psum
//                   sums to 1 and delta agrees with the dP it is subtracted from (a row that sees
//                   one key gets P = 1 and dS = 0 up to one rounding), whatever the rounding of
//                   the forward's output and lse;
//   flash_bwd_kernel: a block owns 64 keys of one (batch, kv head), keeps their dK, dV in
//                   registers and walks every query tile of every query head in the group:
//                   recompute S^T = K.Q^T and P^T = exp2(S^T - lse2) / psum, dV += P^T.dO,
//                   dP^T = V.dO^T, dS^T = P^T * (dP^T - delta), dK += dS^T.Q, and dQ += dS.K
//                   through atomicAdd;
//   bwd_convert_dq: dQ = accumulator * scale in the input dtype.
// The score side is transposed (keys as rows) so that P^T and dS^T come out of the mma
// accumulators already in the A-operand layout of dV += P^T.dO and dK += dS^T.Q. The first two
// kernels compute S^T and dP^T with the same tiles and mma sequence, so they agree bit for bit.
#pragma once

#include "common/mask.h"
#include "common/online_softmax.h"
#include "cuda/flash/bwd_traits.h"
#include "cuda/flash/common.cuh"
#include "cuda/primitives.cuh"

namespace fae::cuda {

constexpr int kRowThreads = 128;  // threads per block of the per-row kernels

// Workspace layouts (float32, contiguous): stats = delta (B, Hq, Sq), then psum (B, Hq, Sq);
// dq_accum (B, Hq, Sq, D).
__device__ __forceinline__ int64_t row_index(const FwdParams& p, int b, int h, int64_t row) {
  return (int64_t(b) * p.heads_q + h) * p.seqlen_q + row;
}

template <class T>
__global__ void __launch_bounds__(kRowThreads)
    bwd_convert_dq(BwdParams bp, gptr<const float> dq_accum, gptr<T> dq) {
  const FwdParams& p = bp.fwd;
  const int64_t row = int64_t(blockIdx.x) * kRowThreads + threadIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  if (row >= p.seqlen_q) return;
  const gptr<const float> acc = dq_accum + row_index(p, b, h, row) * p.head_dim;
  const gptr<T> o = dq + (b * bp.dq_batch_stride + row * bp.dq_row_stride + h * bp.dq_head_stride);
  for (int c = 0; c < p.head_dim; ++c) o[c] = from_float<T>(acc[c] * p.scale);
}

// acc[2*np + {0,1}] += A (16 x 16*ksteps, fragments from `a_frag(ks)`) times a row-major
// [k][n] shared tile (B via ldmatrix .trans), for n8 tiles [0, 2*ntile_pairs).
template <class T, int KSteps, int NTilePairs, class AFrag>
__device__ __forceinline__ void mma_rowmajor_b(float (*acc)[4], AFrag a_frag, sptr<T> b, int ld, int lane) {
#pragma unroll
  for (int ks = 0; ks < KSteps; ++ks) {
    uint32_t a[4];
    a_frag(a, ks);
#pragma unroll
    for (int np = 0; np < NTilePairs; ++np) {
      uint32_t b0[2], b1[2];
      ldmatrix_x4_trans(b0[0], b0[1], b1[0], b1[1], b + (ks * 16 + lane % 16) * ld + np * 16 + (lane / 16) * 8);
      mma_m16n8k16<T>(acc[2 * np], a, b0, acc[2 * np]);
      mma_m16n8k16<T>(acc[2 * np + 1], a, b1, acc[2 * np + 1]);
    }
  }
}

// acc (16 rows of `a` x kNTilesM query columns) = rows of `a` (16 x D, row-major) times the
// transpose of a row-major [query][d] tile `b` (B via ldmatrix without .trans).
template <class Tr>
__device__ __forceinline__ void mma_transposed_b(float (*acc)[4], sptr<typename Tr::Element> a,
                                                 sptr<typename Tr::Element> b, int lane) {
  using T = typename Tr::Element;
  constexpr int LD = Tr::kRowStride;
#pragma unroll
  for (int ks = 0; ks < Tr::kHeadDim / 16; ++ks) {
    uint32_t af[4];
    ldmatrix_x4(af[0], af[1], af[2], af[3], a + (lane % 16) * LD + ks * 16 + (lane / 16) * 8);
#pragma unroll
    for (int np = 0; np < Tr::kNTilesM / 2; ++np) {
      uint32_t b0[2], b1[2];
      ldmatrix_x4(b0[0], b0[1], b1[0], b1[1], b + (np * 16 + (lane / 16) * 8 + lane % 8) * LD + ks * 16 + ((lane / 8) & 1) * 8);
      mma_m16n8k16<T>(acc[2 * np], af, b0, acc[2 * np]);
      mma_m16n8k16<T>(acc[2 * np + 1], af, b1, acc[2 * np + 1]);
    }
  }
}

// P' = exp2(S * scale_log2 - lse2) of a visible pair, written once for both kernels that use it.
__device__ __forceinline__ float unnormalised_p(float s, float scale_log2, float lse2) {
  return fast_exp2(s * scale_log2 - lse2);
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads)
    bwd_row_stats(BwdParams bp, gptr<const typename Tr::Element> q, gptr<const typename Tr::Element> k,
                  gptr<const typename Tr::Element> v, gptr<const typename Tr::Element> dout,
                  gptr<const float> lse, gptr<const float> dlse, gptr<float> stats, gptr<float> dq_accum) {
  using T = typename Tr::Element;
  const FwdParams& p = bp.fwd;
  constexpr int BN = Tr::kBlockN, BM = Tr::kBlockM, LD = Tr::kRowStride;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
  const int h = blockIdx.y, b = blockIdx.z, hk = h / int(p.heads_q / p.heads_kv);
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  const int rows_valid = int(min64(BM, p.seqlen_q - m0));

  sptr<T> sK = dynamic_smem<T>();
  sptr<T> sV = sK + Tr::kSmemKV;
  sptr<T> sQ = sV + Tr::kSmemKV;
  sptr<T> sdO = sQ + Tr::kSmemQ;
  sptr<float> sLse2 = ptr_cast<float>(sdO + Tr::kSmemQ);
  sptr<float> sSum = sLse2 + BM;  // [warp][column] partial sums of P', then of P' * dP
  sptr<float> sDot = sSum + Tr::kWarps * BM;

  load_tile<Tr>(sQ, q + (b * p.q_batch_stride + m0 * p.q_row_stride + h * p.q_head_stride), p.q_row_stride, BM,
                rows_valid);
  load_tile<Tr>(sdO, dout + (b * bp.do_batch_stride + m0 * bp.do_row_stride + h * bp.do_head_stride),
                bp.do_row_stride, BM, rows_valid);
  cp_async_commit();
  if (threadIdx.x < BM) {
    const int64_t row = m0 + threadIdx.x;
    sLse2[threadIdx.x] = lse2_for_backward(row < p.seqlen_q ? lse[b * p.lse_batch_stride + h * p.lse_head_stride + row]
                                                            : neg_inf<float>());
  }

  // This thread's sums for the columns nt * 8 + 2t + c of its fragments, over its keys.
  float psum[Tr::kNTilesM][2], pdot[Tr::kNTilesM][2];
  for (int nt = 0; nt < Tr::kNTilesM; ++nt) psum[nt][0] = psum[nt][1] = pdot[nt][0] = pdot[nt][1] = 0.0f;
  const KeyRange span = visible_keys_of_rows(m0, m0 + rows_valid, p);
  for (int64_t n0 = span.lo / BN * BN; n0 <= span.hi; n0 += BN) {
    const int keys_valid = int(min64(BN, p.seqlen_k - n0));
    load_tile<Tr>(sK, k + (b * p.k_batch_stride + n0 * p.k_row_stride + hk * p.k_head_stride), p.k_row_stride, BN,
                  keys_valid);
    load_tile<Tr>(sV, v + (b * p.v_batch_stride + n0 * p.v_row_stride + hk * p.v_head_stride), p.v_row_stride, BN,
                  keys_valid);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
    float st[Tr::kNTilesM][4], dpt[Tr::kNTilesM][4];
    for (int nt = 0; nt < Tr::kNTilesM; ++nt)
      for (int i = 0; i < 4; ++i) st[nt][i] = dpt[nt][i] = 0.0f;
    mma_transposed_b<Tr>(st, sK + warp * 16 * LD, sQ, lane);
    mma_transposed_b<Tr>(dpt, sV + warp * 16 * LD, sdO, lane);
#pragma unroll
    for (int nt = 0; nt < Tr::kNTilesM; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int col = nt * 8 + 2 * t + (i & 1);
        const int64_t key = n0 + warp * 16 + g + (i >> 1) * 8;
        const KeyRange kr = visible_keys(m0 + col, p);
        if (key < kr.lo || key > kr.hi) continue;  // a masked pair takes no part, even a NaN one
        const float pt = unnormalised_p(st[nt][i], p.scale_log2, sLse2[col]);
        psum[nt][i & 1] += pt;
        pdot[nt][i & 1] += pt * dpt[nt][i];
      }
    __syncthreads();  // sK, sV are refilled next
  }
  cp_async_wait_all();  // Q, dO when the rows see no key

  // Sum over the 8 lanes holding a column (lane bits 2..4), then over the warps in order.
#pragma unroll
  for (int nt = 0; nt < Tr::kNTilesM; ++nt)
    for (int c = 0; c < 2; ++c) {
      for (int m = 4; m < 32; m *= 2) {
        psum[nt][c] += __shfl_xor_sync(0xffffffffu, psum[nt][c], m);
        pdot[nt][c] += __shfl_xor_sync(0xffffffffu, pdot[nt][c], m);
      }
      if (g == 0) {
        sSum[warp * BM + nt * 8 + 2 * t + c] = psum[nt][c];
        sDot[warp * BM + nt * 8 + 2 * t + c] = pdot[nt][c];
      }
    }
  __syncthreads();
  if (threadIdx.x < rows_valid) {
    float sum = 0.0f, dot = 0.0f;
    for (int w = 0; w < Tr::kWarps; ++w) {
      sum += sSum[w * BM + threadIdx.x];
      dot += sDot[w * BM + threadIdx.x];
    }
    const int64_t row = m0 + threadIdx.x, idx = row_index(p, b, h, row);
    float delta = 0.0f;  // a row that sees no key: dS = 0 whatever dout and dlse hold
    if (sum != 0.0f) {   // d lse_i / d s_ij = P_ij folds into delta
      delta = dot / sum;
      if (bp.dlse != nullptr) delta -= dlse[b * p.lse_batch_stride + h * p.lse_head_stride + row];
    }
    stats[idx] = delta;
    stats[int64_t(p.batch) * p.heads_q * p.seqlen_q + idx] = sum;
  }
  for (int i = threadIdx.x; i < rows_valid * p.head_dim; i += Tr::kThreads)
    dq_accum[row_index(p, b, h, m0) * p.head_dim + i] = 0.0f;
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads)
    flash_bwd_kernel(BwdParams bp, gptr<const typename Tr::Element> q, gptr<const typename Tr::Element> k,
                     gptr<const typename Tr::Element> v, gptr<const typename Tr::Element> dout,
                     gptr<const float> lse, gptr<const float> stats, gptr<float> dq_accum,
                     gptr<typename Tr::Element> dk, gptr<typename Tr::Element> dv) {
  using T = typename Tr::Element;
  const FwdParams& p = bp.fwd;
  constexpr int BN = Tr::kBlockN, BM = Tr::kBlockM, LD = Tr::kRowStride, LDS = Tr::kDsStride;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
  const int hk = blockIdx.y, b = blockIdx.z, group = int(p.heads_q / p.heads_kv);
  const int64_t n0 = int64_t(blockIdx.x) * BN;
  const int keys_valid = int(min64(BN, p.seqlen_k - n0));

  sptr<T> sK = dynamic_smem<T>();
  sptr<T> sV = sK + Tr::kSmemKV;
  sptr<T> sQ = sV + Tr::kSmemKV;
  sptr<T> sdO = sQ + Tr::kSmemQ;
  sptr<T> sdS = sdO + Tr::kSmemQ;
  sptr<float> sLse2 = ptr_cast<float>(sdS + Tr::kSmemDs);  // lse2_for_backward(lse)
  sptr<float> sDelta = sLse2 + BM;
  sptr<float> sPsum = sDelta + BM;

  load_tile<Tr>(sK, k + (b * p.k_batch_stride + n0 * p.k_row_stride + hk * p.k_head_stride),
                                        p.k_row_stride, BN, keys_valid);
  load_tile<Tr>(sV, v + (b * p.v_batch_stride + n0 * p.v_row_stride + hk * p.v_head_stride),
                                        p.v_row_stride, BN, keys_valid);
  cp_async_commit();

  float acc_dk[Tr::kNTilesD][4], acc_dv[Tr::kNTilesD][4];
  for (int nt = 0; nt < Tr::kNTilesD; ++nt)
    for (int i = 0; i < 4; ++i) acc_dk[nt][i] = acc_dv[nt][i] = 0.0f;

  // Query rows that see at least one of these keys (the inverse of the mask rule).
  const KeyRange rows{visible_rows(n0, p).lo, visible_rows(n0 + keys_valid - 1, p).hi};
  const int64_t key0 = n0 + warp * 16 + g;  // this thread's keys: key0 and key0 + 8
  for (int gi = 0; gi < group && !rows.empty(); ++gi) {
    const int h = hk * group + gi;
    for (int64_t m0 = rows.lo / BM * BM; m0 <= rows.hi; m0 += BM) {
      const int rows_valid = int(min64(BM, p.seqlen_q - m0));
      load_tile<Tr>(sQ, q + (b * p.q_batch_stride + m0 * p.q_row_stride + h * p.q_head_stride),
                                            p.q_row_stride, BM, rows_valid);
      load_tile<Tr>(sdO, dout + (b * bp.do_batch_stride + m0 * bp.do_row_stride + h * bp.do_head_stride),
                                            bp.do_row_stride, BM, rows_valid);
      cp_async_commit();
      if (threadIdx.x < BM) {
        const int64_t row = m0 + threadIdx.x;
        const float l = row < p.seqlen_q ? lse[b * p.lse_batch_stride + h * p.lse_head_stride + row] : neg_inf<float>();
        sLse2[threadIdx.x] = lse2_for_backward(l);
        const int64_t idx = row_index(p, b, h, row);
        sDelta[threadIdx.x] = row < p.seqlen_q ? stats[idx] : 0.0f;
        sPsum[threadIdx.x] = row < p.seqlen_q ? stats[int64_t(p.batch) * p.heads_q * p.seqlen_q + idx] : 1.0f;
      }
      cp_async_wait_all();
      __syncthreads();

      // S^T and dP^T for this warp's 16 keys x BM queries.
      float st[Tr::kNTilesM][4], dpt[Tr::kNTilesM][4];
      for (int nt = 0; nt < Tr::kNTilesM; ++nt)
        for (int i = 0; i < 4; ++i) st[nt][i] = dpt[nt][i] = 0.0f;
      mma_transposed_b<Tr>(st, sK + warp * 16 * LD, sQ, lane);
      mma_transposed_b<Tr>(dpt, sV + warp * 16 * LD, sdO, lane);
#pragma unroll
      for (int nt = 0; nt < Tr::kNTilesM; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int col = nt * 8 + 2 * t + (i & 1);
          const int64_t key = key0 + (i >> 1) * 8;
          const KeyRange kr = visible_keys(m0 + col, p);
          // A masked pair gets P = dS = 0, also in a row whose lse and delta are NaN.
          const bool seen = key >= kr.lo && key <= kr.hi;
          const float pt = seen ? unnormalised_p(st[nt][i], p.scale_log2, sLse2[col]) / sPsum[col] : 0.0f;
          st[nt][i] = pt;                                                // P^T
          dpt[nt][i] = pt * (seen ? dpt[nt][i] - sDelta[col] : 0.0f);   // dS^T
        }
      // dV += P^T.dO and dK += dS^T.Q: the accumulators above are the A fragments.
      auto frag_of = [](float (*x)[4]) {
        return [x](uint32_t(&a)[4], int ks) {
          a[0] = pack2<T>(x[2 * ks][0], x[2 * ks][1]);
          a[1] = pack2<T>(x[2 * ks][2], x[2 * ks][3]);
          a[2] = pack2<T>(x[2 * ks + 1][0], x[2 * ks + 1][1]);
          a[3] = pack2<T>(x[2 * ks + 1][2], x[2 * ks + 1][3]);
        };
      };
      mma_rowmajor_b<T, BM / 16, Tr::kNTilesD / 2>(acc_dv, frag_of(st), sdO, LD, lane);
      mma_rowmajor_b<T, BM / 16, Tr::kNTilesD / 2>(acc_dk, frag_of(dpt), sQ, LD, lane);
      // dS^T to shared memory (as the input type) for dQ += dS.K.
#pragma unroll
      for (int nt = 0; nt < Tr::kNTilesM; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          sdS[(warp * 16 + g + (i >> 1) * 8) * LDS + nt * 8 + 2 * t + (i & 1)] = from_float<T>(dpt[nt][i]);
      __syncthreads();

      // dQ tile: warp (wm, wd) computes queries wm*16.. x d columns wd*(D/kDqWarpsD)..; the A
      // operand dS (queries x keys) is read from dS^T with ldmatrix .trans.
      const int wm = warp % Tr::kDqWarpsM, wd = warp / Tr::kDqWarpsM, d0 = wd * Tr::kDqTilesD * 8;
      float acc_dq[Tr::kDqTilesD][4];
      for (int nt = 0; nt < Tr::kDqTilesD; ++nt)
        for (int i = 0; i < 4; ++i) acc_dq[nt][i] = 0.0f;
      auto ds_frag = [&](uint32_t(&a)[4], int ks) {
        ldmatrix_x4_trans(a[0], a[1], a[2], a[3],
                          sdS + (ks * 16 + (lane / 16) * 8 + lane % 8) * LDS + wm * 16 + ((lane / 8) & 1) * 8);
      };
      mma_rowmajor_b<T, BN / 16, Tr::kDqTilesD / 2>(acc_dq, ds_frag, sK + d0, LD, lane);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t row = m0 + wm * 16 + g + r * 8;
        if (row >= p.seqlen_q) continue;
        const gptr<float> acc = dq_accum + row_index(p, b, h, row) * p.head_dim + d0;
        for (int nt = 0; nt < Tr::kDqTilesD; ++nt) {
          atomicAdd(acc + nt * 8 + 2 * t, acc_dq[nt][2 * r]);
          atomicAdd(acc + nt * 8 + 2 * t + 1, acc_dq[nt][2 * r + 1]);
        }
      }
      __syncthreads();  // sQ, sdO, sdS and the row statistics are refilled next
    }
  }
  cp_async_wait_all();  // K, V when no query row sees these keys

  // dK = scale * sum dS^T.Q, dV = sum P^T.dO, summed over the group's query heads.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t key = key0 + r * 8;
    if (key >= p.seqlen_k) continue;
    const gptr<T> dkr = dk + (b * bp.dk_batch_stride + key * bp.dk_row_stride + hk * bp.dk_head_stride);
    const gptr<T> dvr = dv + (b * bp.dv_batch_stride + key * bp.dv_row_stride + hk * bp.dv_head_stride);
    for (int nt = 0; nt < Tr::kNTilesD; ++nt)
      for (int c = 0; c < 2; ++c) {
        dkr[nt * 8 + 2 * t + c] = from_float<T>(acc_dk[nt][2 * r + c] * p.scale);
        dvr[nt * 8 + 2 * t + c] = from_float<T>(acc_dv[nt][2 * r + c]);
      }
  }
}

}  // namespace fae::cuda
