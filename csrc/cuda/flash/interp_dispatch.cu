// Runtime (dtype, head dim) -> compiled instantiation of the attention-weights and top-k kernels
// (interp_launch.cuh), like dispatch.cu for attention.
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda/flash/interp_api.h"
#include "cuda/primitives.cuh"

namespace fae::cuda {
namespace {

// Calls run(T{}, std::integral_constant<int, kHeadDims[I]>{}) for the instantiated head dim.
template <class T, class Run, std::size_t... I>
void for_head_dim(int64_t head_dim, Run&& run, std::index_sequence<I...>) {
  const bool ran = ((head_dim == kHeadDims[I] && (run(T{}, std::integral_constant<int, kHeadDims[I]>{}), true)) || ...);
  if (!ran) throw std::invalid_argument("head_dim " + std::to_string(head_dim) + " has no CUDA kernel");
}

template <class Run>
void for_instance(DType dtype, int64_t head_dim, Run&& run) {
  constexpr auto kIndices = std::make_index_sequence<std::size(kHeadDims)>();
  switch (dtype) {
    case DType::f16: return for_head_dim<half_t>(head_dim, run, kIndices);
    case DType::bf16: return for_head_dim<bf16_t>(head_dim, run, kIndices);
    default: throw std::invalid_argument("the CUDA kernels take float16 or bfloat16");
  }
}

}  // namespace

void attention_weights(const WeightsParams& p, Stream stream) {
  for_instance(p.fwd.dtype, p.fwd.head_dim, [&](auto t, auto d) { run_weights<decltype(t), decltype(d)::value>(p, stream); });
}

void topk_forward(const TopkParams& p, Stream stream) {
  if (p.k_top < 1 || p.k_top > kMaxTopK)
    throw std::invalid_argument("k_top " + std::to_string(p.k_top) + " is outside 1.." + std::to_string(kMaxTopK));
  for_instance(p.fwd.dtype, p.fwd.head_dim, [&](auto t, auto d) { run_topk_forward<decltype(t), decltype(d)::value>(p, stream); });
}

void topk_backward(const TopkBwdParams& p, Stream stream) {
  for_instance(p.sel.fwd.dtype, p.sel.fwd.head_dim, [&](auto t, auto d) { run_topk_backward<decltype(t), decltype(d)::value>(p, stream); });
}

}  // namespace fae::cuda
