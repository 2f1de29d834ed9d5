// Runtime (dtype, head dim) -> compiled instantiation, done once here. Built by nvcc into _C and,
// through a generated one-line .cpp wrapper, by the host compiler into the emulator module.
#include <stdexcept>
#include <string>
#include <utility>

#include "cuda/flash/api.h"
#include "cuda/flash/bwd_traits.h"
#include "cuda/primitives.cuh"

namespace fae::cuda {
namespace {

#if defined(__CUDACC__)
// Makes `device` current for one call (a kernel's shared-memory attribute and a launch apply to
// the current device, a stream belongs to one) and restores the caller's device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (device < 0) return;
    int current = 0;
    check(cudaGetDevice(&current));
    if (current == device) return;
    check(cudaSetDevice(device));
    restore_ = current;
  }
  ~DeviceGuard() {
    if (restore_ >= 0) cudaSetDevice(restore_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  static void check(cudaError_t e) {
    if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA device guard: ") + cudaGetErrorString(e));
  }
  int restore_ = -1;
};
#else
struct DeviceGuard {  // the emulator has one device
  explicit DeviceGuard(int) {}
};
#endif

template <class T, std::size_t... I>
void forward_for_head_dim(const FwdParams& p, Stream stream, std::index_sequence<I...>) {
  const bool ran = ((p.head_dim == kHeadDims[I] && (run_forward<T, kHeadDims[I]>(p, stream), true)) || ...);
  if (!ran) throw std::invalid_argument("head_dim " + std::to_string(p.head_dim) + " has no CUDA kernel");
}

template <class T, std::size_t... I>
void backward_for_head_dim(const BwdParams& p, float* stats, float* dq_accum, Stream stream,
                           std::index_sequence<I...>) {
  const bool ran = ((p.fwd.head_dim == kBwdHeadDims[I] &&
                     (run_backward<T, kBwdHeadDims[I]>(p, stats, dq_accum, stream), true)) || ...);
  if (!ran)
    throw std::invalid_argument("head_dim " + std::to_string(p.fwd.head_dim) + " has no CUDA backward kernel");
}

constexpr auto kFwdIndices = std::make_index_sequence<std::size(kHeadDims)>();
constexpr auto kBwdIndices = std::make_index_sequence<std::size(kBwdHeadDims)>();

}  // namespace

void attention_forward(const FwdParams& p, Stream stream, int device) {
  const DeviceGuard guard(device);
  switch (p.dtype) {
    case DType::f16: return forward_for_head_dim<half_t>(p, stream, kFwdIndices);
    case DType::bf16: return forward_for_head_dim<bf16_t>(p, stream, kFwdIndices);
    default: throw std::invalid_argument("the CUDA kernels take float16 or bfloat16");
  }
}

BwdWorkspace backward_workspace(const BwdParams& p) {
  const BwdWork w = bwd_work(p);
  const std::size_t rows = std::size_t(p.fwd.batch * p.fwd.heads_q * w.padded_rows);
  return {4 * rows, std::size_t(w.splits) * rows * std::size_t(p.fwd.head_dim)};
}

void attention_backward(const BwdParams& p, float* stats, float* dq_accum, Stream stream, int device) {
  const DeviceGuard guard(device);
  switch (p.fwd.dtype) {
    case DType::f16: return backward_for_head_dim<half_t>(p, stats, dq_accum, stream, kBwdIndices);
    case DType::bf16: return backward_for_head_dim<bf16_t>(p, stats, dq_accum, stream, kBwdIndices);
    default: throw std::invalid_argument("the CUDA kernels take float16 or bfloat16");
  }
}

}  // namespace fae::cuda
