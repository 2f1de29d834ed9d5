// Runtime (dtype, head dim) -> compiled instantiation, done once here. Built by nvcc into _C and,
// through a generated one-line .cpp wrapper, by the host compiler into the emulator module.
#include <stdexcept>
#include <string>

#include "cuda/flash/api.h"
#include "cuda/primitives.cuh"

namespace fae::cuda {
namespace {

template <class T>
void forward_for_head_dim(const FwdParams& p, Stream stream) {
  switch (p.head_dim) {
    case 32: return run_forward<T, 32>(p, stream);
    case 64: return run_forward<T, 64>(p, stream);
    case 96: return run_forward<T, 96>(p, stream);
    case 128: return run_forward<T, 128>(p, stream);
    case 256: return run_forward<T, 256>(p, stream);
    default: throw std::invalid_argument("head_dim " + std::to_string(p.head_dim) + " has no CUDA kernel");
  }
}

template <class T>
void backward_for_head_dim(const BwdParams& p, float* delta, float* dq_accum, Stream stream) {
  switch (p.fwd.head_dim) {
    case 32: return run_backward<T, 32>(p, delta, dq_accum, stream);
    case 64: return run_backward<T, 64>(p, delta, dq_accum, stream);
    case 96: return run_backward<T, 96>(p, delta, dq_accum, stream);
    case 128: return run_backward<T, 128>(p, delta, dq_accum, stream);
    default:
      throw std::invalid_argument("head_dim " + std::to_string(p.fwd.head_dim) + " has no CUDA backward kernel");
  }
}

}  // namespace

void attention_backward(const BwdParams& p, float* delta, float* dq_accum, Stream stream) {
  switch (p.fwd.dtype) {
    case DType::f16: return backward_for_head_dim<half_t>(p, delta, dq_accum, stream);
    case DType::bf16: return backward_for_head_dim<bf16_t>(p, delta, dq_accum, stream);
    default: throw std::invalid_argument("the CUDA kernels take float16 or bfloat16");
  }
}

void attention_forward(const FwdParams& p, Stream stream) {
  switch (p.dtype) {
    case DType::f16: return forward_for_head_dim<half_t>(p, stream);
    case DType::bf16: return forward_for_head_dim<bf16_t>(p, stream);
    default: throw std::invalid_argument("the CUDA kernels take float16 or bfloat16");
  }
}

}  // namespace fae::cuda
