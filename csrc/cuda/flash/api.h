// CUDA attention entry points on the params structs. The same kernel source runs on a GPU (built
// by nvcc into _C) and on the SIMT emulator (built by the host compiler into _emu).
#pragma once

#include "common/params.h"
#include "cuda/primitives.cuh"

namespace fae::cuda {

// Head dims with a kernel instantiation (a head dim is rounded up to the next one, padding with
// zero-filled columns is not done: callers pick an exact match).
constexpr int kHeadDims[] = {32, 64, 96, 128, 256};

inline bool supports_head_dim(int64_t d) {
  for (int h : kHeadDims)
    if (h == d) return true;
  return false;
}

// Launches the forward on `stream` (no synchronisation). p.dtype must be f16 or bf16, rows of q,
// k, v, out 16-byte aligned (strides multiples of 8 elements), lse float32.
void attention_forward(const FwdParams& p, cudaStream_t stream);

template <class T, int HeadDim>
void run_forward(const FwdParams& p, cudaStream_t stream);

}  // namespace fae::cuda
