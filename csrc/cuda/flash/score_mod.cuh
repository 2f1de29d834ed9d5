// Softcap and ALiBi (common/score_mod.h) on the S accumulators of the CUDA kernels, in the log2
// domain: x = q.k * scale_log2, then cap2 * tanh(x / cap2) with cap2 = softcap * log2(e) (tanhf,
// branch-free in ptxas's code; the division hoisted into inv_cap2), then the ALiBi bias with
// slope2 = slope * log2(e). Only the kernels' kMod instances compile this (has_score_mod): the
// plain kernels are unchanged. The launcher computes ScoreMods once and passes it as a kernel
// parameter (read from constant memory: no registers held, no division in the kernel).
#pragma once

#include "common/online_softmax.h"
#include "common/params.h"
#include "common/score_mod.h"
#include "cuda/primitives.cuh"

namespace fae::cuda {

// The ALiBi slopes of a call as a checked pointer (empty without ALiBi).
inline gptr<const float> alibi_buffer(const FwdParams& p) {
  const int64_t n = p.alibi_batch_stride ? p.batch * p.alibi_batch_stride : p.heads_q;
  return gbuf(p.alibi_slopes, p.alibi_slopes ? std::size_t(n) : 0);
}

struct ScoreMods {
  float scale2;          // q.k -> log2-domain score
  float cap2, inv_cap2;  // softcap * log2(e) and its reciprocal; 0, 0 without softcap
  bool alibi;

  // Host side: the call's transforms, with scale2 the factor from q.k to the log2-domain score.
  static ScoreMods of(const FwdParams& p, float scale2) {
    const float cap2 = float(p.softcap * kLog2e);
    return {scale2, cap2, p.softcap > 0.0f ? 1.0f / cap2 : 0.0f, p.alibi_slopes != nullptr};
  }

  // The ALiBi slope * log2(e) of sequence b, query head h (0 without ALiBi).
  __device__ __forceinline__ float slope2(const FwdParams& p, gptr<const float> slopes, int b, int h) const {
    return alibi ? float(slopes[b * p.alibi_batch_stride + h]) * float(kLog2e) : 0.0f;
  }

  // s <- softcap(s * scale2) on m16n8 accumulator tiles (a warp-uniform branch per tile).
  template <int MT, int NT>
  __device__ __forceinline__ void cap(float (&s)[MT][NT][4]) const {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[mt][nt][i] *= scale2;
    if (cap2 > 0.0f)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) s[mt][nt][i] = softcap_score(s[mt][nt][i], cap2, inv_cap2);
  }

  // x plus the ALiBi bias (slope2 = slope2(...)) of a query at ALiBi position pos and key `key`
  // (-0 without ALiBi).
  __device__ __forceinline__ static float bias(float x, float slope2, int pos, int key) {
    return x + alibi_bias(slope2, pos, key);
  }

  // The same from the distance pos - key as a float (exact up to 2^24: the backward converts one
  // distance per row and steps it by the key offsets).
  __device__ __forceinline__ static float bias_f(float x, float slope2, float dist) {
    return x - slope2 * fabsf(dist);
  }

  // d softcap / d x from the capped x: 1 - tanh^2 (1 without softcap).
  __device__ __forceinline__ float grad(float capped) const { return softcap_grad_inv(capped, inv_cap2); }

  // Both transforms on m16n8 accumulator tiles: element (mt, nt, i) is the query at ALiBi
  // position pos0 + mt * 16 + 8 * (i / 2) and key key0 + nt * 8 + i % 2 (this thread's fragment
  // layout: pos0 from its row g, key0 from its column 2t).
  template <int MT, int NT>
  __device__ __forceinline__ void apply(float (&s)[MT][NT][4], float slope2, int pos0, int key0) const {
    cap(s);
    if (slope2 != 0.0f)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) s[mt][nt][i] = bias(s[mt][nt][i], slope2, pos0 + mt * 16 + 8 * (i / 2), key0 + nt * 8 + i % 2);
  }
};

}  // namespace fae::cuda
