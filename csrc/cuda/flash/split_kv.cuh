// Split-KV (flash-decoding) on the GPU: the forward's blocks of split s leave a normalised partial
// O and its log2-domain lse per row in the workspace (split_row); the combine kernel merges the
// splits of each row by their logsumexp, as the CPU forward merges its key chunks:
//   out = sum_s w_s O_s / sum_s w_s,  w_s = exp2(lse2_s - max_s lse2_s),  lse = max + log2(sum w).
#pragma once

#include "common/online_softmax.h"
#include "common/seqlens.h"
#include "cuda/primitives.cuh"

namespace fae::cuda {

// Offset (floats) of partial row `row` of (split, b, h) in the workspace: D values, then lse2.
__host__ __device__ __forceinline__ int64_t split_row(const FwdParams& p, int split, int b, int h, int64_t row) {
  return (((int64_t(split) * p.batch + b) * p.heads_q + h) * p.seqlen_q + row) * (p.head_dim + 1);
}

constexpr int kCombineRows = 16;     // rows per combine block
constexpr int kCombineLanes = 8;     // threads per row, each over every 8th column
constexpr int kCombineThreads = kCombineRows * kCombineLanes;

// One block per kCombineRows rows of one (batch, head): out and lse of the finished rows.
template <class T>
__global__ void __launch_bounds__(kCombineThreads)
    flash_fwd_combine_kernel(FwdParams p, gptr<const float> parts, gptr<T> o, gptr<float> lse,
                             SeqArrays<gptr<const int32_t>> sa) {
  const int h = blockIdx.y, b = blockIdx.z, lane = threadIdx.x % kCombineLanes;
  const int64_t row = int64_t(blockIdx.x) * kCombineRows + threadIdx.x / kCombineLanes;
  const Seq seq = sequence(p, sa, b);
  if (row >= seq.seqlen_q) return;
  const int D = int(p.head_dim);
  float mx = neg_inf<float>();
  for (int s = 0; s < p.num_splits; ++s) mx = fmaxf(mx, parts[split_row(p, s, b, h, row) + D]);
  const float base = exp_base(mx);
  float wsum = 0.0f;
  for (int s = 0; s < p.num_splits; ++s) wsum += fast_exp2(parts[split_row(p, s, b, h, row) + D] - base);
  const float inv = inv_sum(wsum);
  const gptr<T> orow = o + (seq.q_batch * p.o_batch_stride + (seq.q_row0 + row) * p.o_row_stride + h * p.o_head_stride);
  for (int d = lane; d < D; d += kCombineLanes) {
    float acc = 0.0f;
    for (int s = 0; s < p.num_splits; ++s) {
      const int64_t at = split_row(p, s, b, h, row);
      const float w = fast_exp2(parts[at + D] - base);
      if (w != 0.0f) acc += w * parts[at + d];  // an empty split holds no partial output
    }
    orow[d] = from_float<T>(acc * inv);
  }
  if (lane == 0) lse[seq.q_batch * p.lse_batch_stride + h * p.lse_head_stride + seq.q_row0 + row] = finish_lse(mx, wsum);
}

}  // namespace fae::cuda
