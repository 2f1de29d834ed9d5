// CUDA attention entry points on the params structs. The same kernel source runs on a GPU (built
// by nvcc into _C) and on the SIMT emulator (built by the host compiler into _emu). This header
// needs neither the CUDA toolkit nor the emulator, so plain C++ callers (the bindings) include it.
#pragma once

#include "common/params.h"
#include "cuda/flash/head_dims.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*, under nvcc and under the emulator alike

namespace fae {
struct half_t;
struct bf16_t;
}  // namespace fae

namespace fae::cuda {

using Stream = CUstream_st*;

// Launches the forward on `stream` without synchronising. p.dtype must be f16 or bf16, every row
// of q, k, v, out 16-byte aligned (strides multiples of 8 elements), strides non-negative, lse
// float32. Throws std::invalid_argument for a dtype or head dim without a kernel.
void attention_forward(const FwdParams& p, Stream stream);

// Launches the backward (three kernels) on `stream` without synchronising. Requirements as for
// the forward, plus workspace: stats (2*B*Hq*Sq floats: delta and the softmax sum of each row)
// and dq_accum (B*Hq*Sq*D floats); head dims of kBwdHeadDims (head_dims.h).
void attention_backward(const BwdParams& p, float* stats, float* dq_accum, Stream stream);

// Launches the KV-cache append with rotary embedding (AppendParams) on `stream`: float16 or
// bfloat16; throws std::invalid_argument for other dtypes.
void kvcache_append(const AppendParams& p, Stream stream);

template <class T, int HeadDim>
void run_forward(const FwdParams& p, Stream stream);
template <class T, int HeadDim>
void run_backward(const BwdParams& p, float* stats, float* dq_accum, Stream stream);

}  // namespace fae::cuda
