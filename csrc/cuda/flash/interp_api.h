// CUDA entry points of the attention weights and top-k attention (interp_kernels.cuh), on the
// params structs of common/interp_params.h. Like api.h, this header needs neither the CUDA
// toolkit nor the emulator. Requirements as for attention_forward (float16/bfloat16, rows
// 16-byte aligned, non-negative strides), head dims of kHeadDims; heads, rows and index are
// device arrays; top-k needs 1 <= k_top <= kMaxTopK.
#pragma once

#include "common/interp_params.h"
#include "cuda/flash/api.h"

namespace fae::cuda {

constexpr int kMaxTopK = 64;  // heap entries per row in shared memory (interp_kernels.cuh)

// p.fwd.lse (float32) may be null: each selected row's lse is then computed in a first pass.
void attention_weights(const WeightsParams& p, Stream stream);
void topk_forward(const TopkParams& p, Stream stream);
// dk, dv: float32 (B, Sk, Hkv, D) accumulators that the caller zeroes (the kernel adds to them).
void topk_backward(const TopkBwdParams& p, Stream stream);

template <class T, int HeadDim>
void run_weights(const WeightsParams& p, Stream stream);
template <class T, int HeadDim>
void run_topk_forward(const TopkParams& p, Stream stream);
template <class T, int HeadDim>
void run_topk_backward(const TopkBwdParams& p, Stream stream);

}  // namespace fae::cuda
