// Host launcher of the backward kernels for one (dtype, head dim): row statistics, main, dQ
// conversion, in order on one stream.
#pragma once

#include "cuda/flash/api.h"
#include "cuda/flash/bwd_kernel.cuh"
#include "cuda/flash/common.cuh"
#include "cuda/launch.cuh"

namespace fae::cuda {

template <class T, int HeadDim>
void run_backward(const BwdParams& bp, float* stats, float* dq_accum, Stream stream) {
  using Tr = BwdTraits<T, HeadDim>;
  const FwdParams& p = bp.fwd;
  const int64_t d = p.head_dim;
  const std::size_t rows = std::size_t(p.batch * p.heads_q * p.seqlen_q);
  const std::size_t lse_extent = std::size_t((p.batch - 1) * p.lse_batch_stride + (p.heads_q - 1) * p.lse_head_stride + p.seqlen_q);
  const auto q_like = [&](const void* ptr, int64_t bs, int64_t rs, int64_t hs) {
    return gbuf(static_cast<const T*>(ptr), extent(bs, rs, hs, p.batch, p.seqlen_q, p.heads_q, d));
  };
  const auto kv_like = [&](const void* ptr, int64_t bs, int64_t rs, int64_t hs) {
    return gbuf(static_cast<const T*>(ptr), extent(bs, rs, hs, p.batch, p.seqlen_k, p.heads_kv, d));
  };
  const dim3 stats_grid(unsigned((p.seqlen_q + Tr::kBlockM - 1) / Tr::kBlockM), unsigned(p.heads_q), unsigned(p.batch));
  launch("flash_bwd_row_stats", bwd_row_stats<Tr>, LaunchConfig{stats_grid, dim3(Tr::kThreads), Tr::kSmemStatsBytes, stream},
         bp, q_like(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
         kv_like(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
         kv_like(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride),
         q_like(bp.dout, bp.do_batch_stride, bp.do_row_stride, bp.do_head_stride),
         gbuf(static_cast<const float*>(p.lse), lse_extent),
         gbuf(static_cast<const float*>(bp.dlse), bp.dlse ? lse_extent : 0), gbuf(stats, 2 * rows),
         gbuf(dq_accum, rows * std::size_t(d)));

  const dim3 grid(unsigned((p.seqlen_k + Tr::kBlockN - 1) / Tr::kBlockN), unsigned(p.heads_kv), unsigned(p.batch));
  launch("flash_bwd", flash_bwd_kernel<Tr>, LaunchConfig{grid, dim3(Tr::kThreads), Tr::kSmemBytes, stream}, bp,
         q_like(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
         kv_like(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
         kv_like(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride),
         q_like(bp.dout, bp.do_batch_stride, bp.do_row_stride, bp.do_head_stride),
         gbuf(static_cast<const float*>(p.lse), lse_extent), gbuf(static_cast<const float*>(stats), 2 * rows),
         gbuf(dq_accum, rows * std::size_t(d)),
         gbuf(static_cast<T*>(bp.dk), extent(bp.dk_batch_stride, bp.dk_row_stride, bp.dk_head_stride, p.batch, p.seqlen_k, p.heads_kv, d)),
         gbuf(static_cast<T*>(bp.dv), extent(bp.dv_batch_stride, bp.dv_row_stride, bp.dv_head_stride, p.batch, p.seqlen_k, p.heads_kv, d)));

  const dim3 row_grid(unsigned((p.seqlen_q + kRowThreads - 1) / kRowThreads), unsigned(p.heads_q), unsigned(p.batch));
  launch("flash_bwd_convert_dq", bwd_convert_dq<T>, LaunchConfig{row_grid, dim3(kRowThreads), 0, stream}, bp,
         gbuf(static_cast<const float*>(dq_accum), rows * std::size_t(d)),
         gbuf(static_cast<T*>(bp.dq), extent(bp.dq_batch_stride, bp.dq_row_stride, bp.dq_head_stride, p.batch, p.seqlen_q, p.heads_q, d)));
}

}  // namespace fae::cuda
