// Host launcher of the forward kernel for one (dtype, head dim): grid and shared-memory sizing,
// the same code under nvcc and under the emulator.
#pragma once

#include "cuda/flash/api.h"
#include "cuda/flash/common.cuh"
#include "cuda/flash/fwd_kernel.cuh"
#include "cuda/launch.cuh"

namespace fae::cuda {

// The forward with the tile configuration Tr (a FwdConfig).
template <class Tr>
void launch_forward(const FwdParams& p, Stream stream) {
  using T = typename Tr::Element;
  const dim3 grid(unsigned((p.seqlen_q + Tr::kBlockM - 1) / Tr::kBlockM), unsigned(p.heads_q), unsigned(p.batch));
  const int64_t d = p.head_dim;
  launch("flash_fwd", flash_fwd_kernel<Tr>, LaunchConfig{grid, dim3(Tr::kThreads), Tr::kSmemBytes, stream}, p,
         ScoreScale::of(p.scale_log2),
         gbuf(static_cast<const T*>(p.q),
              extent(p.q_batch_stride, p.q_row_stride, p.q_head_stride, p.batch, p.seqlen_q, p.heads_q, d)),
         gbuf(static_cast<const T*>(p.k),
              extent(p.k_batch_stride, p.k_row_stride, p.k_head_stride, p.batch, p.seqlen_k, p.heads_kv, d)),
         gbuf(static_cast<const T*>(p.v),
              extent(p.v_batch_stride, p.v_row_stride, p.v_head_stride, p.batch, p.seqlen_k, p.heads_kv, d)),
         gbuf(static_cast<T*>(p.out),
              extent(p.o_batch_stride, p.o_row_stride, p.o_head_stride, p.batch, p.seqlen_q, p.heads_q, d)),
         gbuf(static_cast<float*>(p.lse),
              std::size_t((p.batch - 1) * p.lse_batch_stride + (p.heads_q - 1) * p.lse_head_stride + p.seqlen_q)));
}

template <class T, int HeadDim>
void run_forward(const FwdParams& p, Stream stream) {
  launch_forward<FwdTraits<T, HeadDim>>(p, stream);
}

}  // namespace fae::cuda
