// The CUDA attention kernels, compiled by the host compiler and run on the SIMT emulator, exposed
// in flashattn_ext._emu with the argument list of _C.forward (FLASHATTN_EXT_BACKEND=emu).
#include <utility>

#include "bindings/bind_attention.h"
#include "bindings/bind_interp.h"
#include "common/fp16.h"
#include "cuda/flash/api.h"
#include "cuda/flash/interp_api.h"
#include "cuda/flash/bwd_traits.h"
#include "cuda/flash/fwd_traits.h"

namespace py = pybind11;
using namespace fae::bindings;

namespace {

// {(direction, head dim): {"block_m": query rows, "block_n": keys, "smem": bytes}} of every
// compiled kernel instance, from the traits themselves (the tiles do not depend on the 16-bit
// dtype). The backward's tiers: "backward" is the tile a 99 KiB device (the emulator's default
// limit) runs, "backward_large" the one of sm_80 / sm_90 where it differs.
template <std::size_t... I, std::size_t... J>
py::dict tile_table(std::index_sequence<I...>, std::index_sequence<J...>) {
  using fae::bf16_t;
  py::dict d;
  const auto add = [&d](const char* direction, int head_dim, int block_m, int block_n, std::size_t smem) {
    py::dict tile;
    tile["block_m"] = block_m;
    tile["block_n"] = block_n;
    tile["smem"] = smem;
    d[py::make_tuple(direction, head_dim)] = tile;
  };
  using fae::cuda::kBwdHeadDims, fae::cuda::kHeadDims, fae::cuda::BwdTraits, fae::cuda::FwdTraits;
  (add("forward", kHeadDims[I], FwdTraits<bf16_t, kHeadDims[I]>::kBlockM, FwdTraits<bf16_t, kHeadDims[I]>::kBlockN,
       FwdTraits<bf16_t, kHeadDims[I]>::kSmemBytes),
   ...);
  const auto add_bwd = [&add](int head_dim, auto large, auto small) {
    using L = decltype(large);
    using S = decltype(small);
    add("backward", head_dim, S::kBlockM, S::kBlockN, S::kSmemBytes);
    if (fae::cuda::bwd_has_small_tier(head_dim)) add("backward_large", head_dim, L::kBlockM, L::kBlockN, L::kSmemBytes);
  };
  (add_bwd(kBwdHeadDims[J], BwdTraits<bf16_t, kBwdHeadDims[J], false>{},
           BwdTraits<bf16_t, kBwdHeadDims[J], fae::cuda::bwd_has_small_tier(kBwdHeadDims[J])>{}),
   ...);
  return d;
}

}  // namespace

void fae_bind_emulated_attention(py::module_& m) {
  def_forward(m, "attention_forward", [](const fae::FwdParams& p, uintptr_t, int) { fae::cuda::attention_forward(p, nullptr); },
              "Forward attention through the CUDA kernel source on the emulator (float16/bfloat16; rows "
              "16-byte aligned; head dims: attention_head_dims).");
  def_backward(m, "attention_backward",
               [](const fae::BwdParams& p, float* stats, float* dq_accum, uintptr_t, int) {
                 fae::cuda::attention_backward(p, stats, dq_accum, nullptr);
               },
               "Backward through the CUDA kernel source on the emulator; stats and dq_accum are float32 workspace "
               "of attention_bwd_workspace elements (head dims: attention_bwd_head_dims; the tile is the largest "
               "that the configured shared-memory limit holds).");
  def_backward_workspace(m, "attention_bwd_workspace", fae::cuda::backward_workspace);
  def_append(m, "kvcache_append",
             [](const fae::AppendParams& p, uintptr_t, int) { fae::cuda::kvcache_append(p, nullptr); },
             "KV-cache append with rotary embedding through the CUDA kernel source on the emulator (float16/bfloat16).");
  def_weights(m, "attention_weights", [](const fae::WeightsParams& p, uintptr_t) { fae::cuda::attention_weights(p, nullptr); },
              "Attention probabilities through the CUDA kernel source on the emulator.");
  def_topk_forward(m, "topk_forward", [](const fae::TopkParams& p, uintptr_t) { fae::cuda::topk_forward(p, nullptr); },
                   "Top-k attention forward through the CUDA kernel source on the emulator (k_top <= max_top_k).");
  def_topk_backward(m, "topk_backward", [](const fae::TopkBwdParams& p, uintptr_t) { fae::cuda::topk_backward(p, nullptr); },
                    "Top-k attention backward through the CUDA kernel source on the emulator; dk, dv: zeroed "
                    "float32 accumulators.");
  m.attr("max_top_k") = fae::cuda::kMaxTopK;
  m.attr("attention_head_dims") = head_dim_list(fae::cuda::kHeadDims);
  m.attr("attention_bwd_head_dims") = head_dim_list(fae::cuda::kBwdHeadDims);
  m.attr("attention_tiles") = tile_table(std::make_index_sequence<std::size(fae::cuda::kHeadDims)>(),
                                         std::make_index_sequence<std::size(fae::cuda::kBwdHeadDims)>());
}
