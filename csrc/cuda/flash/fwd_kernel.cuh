// FlashAttention-2 forward kernel body (sm_80+). A block owns kBlockM query rows of one
// (batch, head); each of its 4 warps owns 16 rows. Per key tile: S = Q.K^T on tensor cores with
// Q fragments held in registers for the whole loop, the mask and the online softmax in registers
// (quad shuffles for row statistics), P re-used from the S accumulators as the A operand of
// O += P.V (no shared-memory round trip). K and V stream through shared memory with cp.async:
// V_j is loaded while S_j is computed, K_{j+1} while the softmax and P.V of tile j run.
#pragma once

#include "common/mask.h"
#include "common/online_softmax.h"
#include "cuda/flash/common.cuh"
#include "cuda/flash/fwd_traits.h"
#include "cuda/primitives.cuh"

namespace fae::cuda {

struct FastExp2 {
  __device__ __forceinline__ float operator()(float x) const { return fast_exp2(x); }
};

// Reduces a per-thread row value over the 4 lanes of a quad (the lanes holding one row).
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads)
    flash_fwd_kernel(FwdParams p, gptr<const typename Tr::Element> q, gptr<const typename Tr::Element> k,
                     gptr<const typename Tr::Element> v, gptr<typename Tr::Element> o, gptr<float> lse) {
  using T = typename Tr::Element;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, LD = Tr::kRowStride;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
  const int h = blockIdx.y, b = blockIdx.z, hk = h / int(p.heads_q / p.heads_kv);
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  const int rows_valid = int(min64(BM, p.seqlen_q - m0));
  const gptr<const T> qb = q + (b * p.q_batch_stride + m0 * p.q_row_stride + h * p.q_head_stride);
  const gptr<const T> kb = k + (b * p.k_batch_stride + hk * p.k_head_stride);
  const gptr<const T> vb = v + (b * p.v_batch_stride + hk * p.v_head_stride);

  // The two rows this thread holds in every accumulator (fragment rows g and g + 8), and the key
  // range each of them sees.
  const int64_t row[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};
  const KeyRange keys[2] = {visible_keys(row[0], p), visible_keys(row[1], p)};
  const KeyRange span = visible_keys_of_rows(m0, m0 + rows_valid, p);
  const KeyRange first = visible_keys(m0, p), last = visible_keys(m0 + rows_valid - 1, p);

  float acc_o[Tr::kNTilesO][4];
  for (int nt = 0; nt < Tr::kNTilesO; ++nt)
    for (int i = 0; i < 4; ++i) acc_o[nt][i] = 0.0f;
  float row_max[2] = {neg_inf<float>(), neg_inf<float>()}, row_sum[2] = {0.0f, 0.0f};

  if (!span.empty()) {
    sptr<T> sQ = dynamic_smem<T>();
    sptr<T> sK = sQ + Tr::kSmemQ;
    sptr<T> sV = sK + Tr::kSmemKV;
    const int64_t n_first = span.lo / BN * BN;
    load_tile<Tr>(sQ, qb, p.q_row_stride, BM, rows_valid);
    load_tile<Tr>(sK, kb + n_first * p.k_row_stride, p.k_row_stride, BN, int(min64(BN, p.seqlen_k - n_first)));
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
    // Q fragments of this warp's 16 rows (A operand of S = Q.K^T), per k step of 16 columns.
    auto load_q = [&](uint32_t(&a)[4], int ks) {
      ldmatrix_x4(a[0], a[1], a[2], a[3], sQ + (warp * 16 + lane % 16) * LD + ks * 16 + (lane / 16) * 8);
    };
    uint32_t qf[Tr::kQInRegisters ? Tr::kKStepsQK : 1][4];
    if constexpr (Tr::kQInRegisters)
      for (int ks = 0; ks < Tr::kKStepsQK; ++ks) load_q(qf[ks], ks);

    for (int64_t n0 = n_first; n0 <= span.hi; n0 += BN) {
      const int kv_valid = int(min64(BN, p.seqlen_k - n0));
      load_tile<Tr>(sV, vb + n0 * p.v_row_stride, p.v_row_stride, BN, kv_valid);
      cp_async_commit();
      cp_async_wait<1>();  // K_j has landed (V_j may still be in flight) ...
      __syncthreads();     // ... for every thread

      float s[Tr::kNTilesS][4];
      for (int nt = 0; nt < Tr::kNTilesS; ++nt)
        for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < Tr::kKStepsQK; ++ks) {
        uint32_t(&a)[4] = qf[Tr::kQInRegisters ? ks : 0];
        if constexpr (!Tr::kQInRegisters) load_q(a, ks);
#pragma unroll
        for (int np = 0; np < Tr::kNTilesS / 2; ++np) {
          uint32_t b0[2], b1[2];  // keys np*16 + [0, 8) and + [8, 16), d in [ks*16, ks*16 + 16)
          ldmatrix_x4(b0[0], b0[1], b1[0], b1[1],
                      sK + (np * 16 + (lane / 16) * 8 + lane % 8) * LD + ks * 16 + ((lane / 8) & 1) * 8);
          mma_m16n8k16<T>(s[2 * np], a, b0, s[2 * np]);
          mma_m16n8k16<T>(s[2 * np + 1], a, b1, s[2 * np + 1]);
        }
      }
      __syncthreads();  // every warp is done with sK: refill it with K_{j+1}
      if (n0 + BN <= span.hi)
        load_tile<Tr>(sK, kb + (n0 + BN) * p.k_row_stride, p.k_row_stride, BN,
                      int(min64(BN, p.seqlen_k - n0 - BN)));
      cp_async_commit();  // possibly empty: keeps the group count the same on every iteration

      // Mask (only tiles that some row sees partly) and scale into the log2 domain.
      const bool whole = n0 >= last.lo && n0 + BN - 1 <= first.hi;
#pragma unroll
      for (int nt = 0; nt < Tr::kNTilesS; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int64_t key = n0 + nt * 8 + 2 * t + (i & 1);
          const KeyRange& kr = keys[i >> 1];
          s[nt][i] = (whole || (key >= kr.lo && key <= kr.hi)) ? s[nt][i] * p.scale_log2 : neg_inf<float>();
        }
      // Online softmax: new row max, rescale of the running sum and output, P = exp2(S - max).
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = row_max[r];
        for (int nt = 0; nt < Tr::kNTilesS; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
        mx = quad_max(mx);
        const float alpha = rescale_factor(row_max[r], mx, FastExp2{});
        const float base = exp_base(mx);
        float sum = 0.0f;
        for (int nt = 0; nt < Tr::kNTilesS; ++nt)
          for (int i = 2 * r; i < 2 * r + 2; ++i) {
            s[nt][i] = fast_exp2(s[nt][i] - base);
            sum += s[nt][i];
          }
        row_sum[r] = row_sum[r] * alpha + sum;
        row_max[r] = mx;
        for (int nt = 0; nt < Tr::kNTilesO; ++nt) {
          acc_o[nt][2 * r] *= alpha;
          acc_o[nt][2 * r + 1] *= alpha;
        }
      }

      cp_async_wait<1>();  // V_j has landed (K_{j+1} may still be in flight) ...
      __syncthreads();     // ... for every thread
#pragma unroll
      for (int kk = 0; kk < Tr::kKStepsPV; ++kk) {
        // The S accumulators of n8 tiles 2kk and 2kk+1 are exactly the A fragment of P (keys
        // kk*16 .. kk*16+15), rounded to the input type.
        const uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                               pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int np = 0; np < Tr::kNTilesO / 2; ++np) {
          uint32_t b0[2], b1[2];  // d columns np*16 + [0, 8) and + [8, 16)
          ldmatrix_x4_trans(b0[0], b0[1], b1[0], b1[1], sV + (kk * 16 + lane % 16) * LD + np * 16 + (lane / 16) * 8);
          mma_m16n8k16<T>(acc_o[2 * np], a, b0, acc_o[2 * np]);
          mma_m16n8k16<T>(acc_o[2 * np + 1], a, b1, acc_o[2 * np + 1]);
        }
      }
      __syncthreads();  // every warp is done with sV before the next V copy
    }
    cp_async_wait_all();  // the last (empty) group
  }

  // Epilogue: finish each row (quad-reduced sum), write out and lse.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(row_sum[r]);
    if (row[r] >= p.seqlen_q) continue;
    const float inv = inv_sum(sum);
    const gptr<T> orow = o + (b * p.o_batch_stride + row[r] * p.o_row_stride + h * p.o_head_stride);
    for (int nt = 0; nt < Tr::kNTilesO; ++nt) {
      orow[nt * 8 + 2 * t] = from_float<T>(acc_o[nt][2 * r] * inv);
      orow[nt * 8 + 2 * t + 1] = from_float<T>(acc_o[nt][2 * r + 1] * inv);
    }
    if (t == 0) lse[b * p.lse_batch_stride + h * p.lse_head_stride + row[r]] = finish_lse(row_max[r], sum);
  }
}

}  // namespace fae::cuda
