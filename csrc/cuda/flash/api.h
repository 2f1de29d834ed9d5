// CUDA attention entry points on the params structs. The same kernel source runs on a GPU (built
// by nvcc into _C) and on the SIMT emulator (built by the host compiler into _emu). This header
// needs neither the CUDA toolkit nor the emulator, so plain C++ callers (the bindings) include it.
#pragma once

#include <cstddef>

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
// float32. Throws std::invalid_argument for a dtype or head dim without a kernel. `device`: the
// ordinal of the GPU that holds the tensors and owns `stream`; it is the current device while the
// kernels' attributes are set and they launch, and the caller's current device is restored after
// (-1: the current device).
void attention_forward(const FwdParams& p, Stream stream, int device = -1);

// Float32 workspace of the backward: the row statistics and the dQ accumulator (one copy, or in
// deterministic mode one per split of the key blocks), in elements.
struct BwdWorkspace {
  std::size_t stats, dq_accum;
};
BwdWorkspace backward_workspace(const BwdParams& p);

// Launches the backward (three kernels) on `stream` without synchronising. Requirements as for
// the forward, plus workspace of backward_workspace(p) floats each (16-byte aligned); head dims
// of kBwdHeadDims (head_dims.h). Throws std::invalid_argument when the device's shared memory per
// block cannot hold the head dim's smallest tile. `device` as for the forward.
void attention_backward(const BwdParams& p, float* stats, float* dq_accum, Stream stream, int device = -1);

// Launches the KV-cache append with rotary embedding (AppendParams) on `stream`: float16 or
// bfloat16; throws std::invalid_argument for other dtypes. `device` as for the forward.
void kvcache_append(const AppendParams& p, Stream stream, int device = -1);

template <class T, int HeadDim>
void run_forward(const FwdParams& p, Stream stream);
template <class T, int HeadDim>
void run_backward(const BwdParams& p, float* stats, float* dq_accum, Stream stream);

}  // namespace fae::cuda
