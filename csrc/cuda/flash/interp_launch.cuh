// Host launchers of the attention-weights and top-k kernels for one (dtype, head dim), the same
// code under nvcc and under the emulator.
#pragma once

#include "cuda/flash/common.cuh"
#include "cuda/flash/interp_api.h"
#include "cuda/flash/interp_kernels.cuh"
#include "cuda/launch.cuh"

namespace fae::cuda {

inline unsigned blocks_of(int64_t n, int64_t per) { return unsigned((n + per - 1) / per); }

template <class T>
auto q_buf(const FwdParams& p, const void* ptr, int64_t bs, int64_t rs, int64_t hs) {
  return gbuf(static_cast<const T*>(ptr), extent(bs, rs, hs, p.batch, p.seqlen_q, p.heads_q, p.head_dim));
}
template <class T>
auto kv_buf(const FwdParams& p, const void* ptr, int64_t bs, int64_t rs, int64_t hs) {
  return gbuf(static_cast<const T*>(ptr), extent(bs, rs, hs, p.batch, p.seqlen_k, p.heads_kv, p.head_dim));
}

template <class T, int HeadDim>
void run_weights(const WeightsParams& w, Stream stream) {
  using Tr = interp::Traits<T, HeadDim>;
  const FwdParams& p = w.fwd;
  const std::size_t lse_extent =
      std::size_t((p.batch - 1) * p.lse_batch_stride + (p.heads_q - 1) * p.lse_head_stride + p.seqlen_q);
  const std::size_t probs_extent = std::size_t((p.batch - 1) * w.p_batch_stride + (w.num_heads - 1) * w.p_head_stride +
                                               (w.num_rows - 1) * w.p_row_stride + p.seqlen_k);
  const dim3 grid(blocks_of(w.num_rows, Tr::kBlockM), unsigned(w.num_heads), unsigned(p.batch));
  launch("interp_weights", interp::interp_weights<Tr>, LaunchConfig{grid, dim3(Tr::kThreads), Tr::kSmemQK, stream}, w,
         q_buf<T>(p, p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
         kv_buf<T>(p, p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
         gbuf(static_cast<const float*>(p.lse), p.lse ? lse_extent : 0), gbuf(static_cast<float*>(w.probs), probs_extent),
         gbuf(w.heads, std::size_t(w.num_heads)), gbuf(w.rows, std::size_t(w.num_rows)), ScoreMods::of(p, p.scale_log2),
         alibi_buffer(p));
}

template <class T, int HeadDim>
void run_topk_forward(const TopkParams& tp, Stream stream) {
  using Tr = interp::Traits<T, HeadDim>;
  const FwdParams& p = tp.fwd;
  const std::size_t idx_extent = std::size_t((p.batch - 1) * tp.idx_batch_stride + (p.heads_q - 1) * tp.idx_head_stride +
                                             (p.seqlen_q - 1) * tp.idx_row_stride + tp.k_top);
  const dim3 grid(blocks_of(p.seqlen_q, Tr::kBlockM), unsigned(p.heads_q), unsigned(p.batch));
  launch("interp_topk", interp::interp_topk<Tr>, LaunchConfig{grid, dim3(Tr::kThreads), Tr::topk_smem(tp.k_top), stream}, tp,
         q_buf<T>(p, p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
         kv_buf<T>(p, p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
         kv_buf<T>(p, p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride),
         gbuf(static_cast<T*>(p.out), extent(p.o_batch_stride, p.o_row_stride, p.o_head_stride, p.batch, p.seqlen_q,
                                              p.heads_q, p.head_dim)),
         gbuf(tp.index, idx_extent));
}

template <class T, int HeadDim>
void run_topk_backward(const TopkBwdParams& bp, Stream stream) {
  using Tr = interp::Traits<T, HeadDim>;
  const TopkParams& tp = bp.sel;
  const FwdParams& p = tp.fwd;
  const std::size_t idx_extent = std::size_t((p.batch - 1) * tp.idx_batch_stride + (p.heads_q - 1) * tp.idx_head_stride +
                                             (p.seqlen_q - 1) * tp.idx_row_stride + tp.k_top);
  const std::size_t grad_extent = std::size_t(p.batch * p.seqlen_k * p.heads_kv * p.head_dim);
  const dim3 grid(blocks_of(p.seqlen_q, Tr::kWarps * 4), unsigned(p.heads_q), unsigned(p.batch));
  launch("interp_topk_bwd", interp::interp_topk_bwd<Tr>, LaunchConfig{grid, dim3(Tr::kThreads), 0, stream}, bp,
         q_buf<T>(p, p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
         kv_buf<T>(p, p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
         kv_buf<T>(p, p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride),
         q_buf<T>(p, bp.dout, bp.do_batch_stride, bp.do_row_stride, bp.do_head_stride),
         gbuf(static_cast<const int64_t*>(tp.index), idx_extent),
         gbuf(static_cast<T*>(bp.dq), extent(bp.dq_batch_stride, bp.dq_row_stride, bp.dq_head_stride, p.batch,
                                             p.seqlen_q, p.heads_q, p.head_dim)),
         gbuf(static_cast<float*>(bp.dk), grad_extent), gbuf(static_cast<float*>(bp.dv), grad_extent));
}

}  // namespace fae::cuda
