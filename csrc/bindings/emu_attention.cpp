// The CUDA attention kernels, compiled by the host compiler and run on the SIMT emulator, exposed
// in flashattn_ext._emu with the argument list of _C.forward (FLASHATTN_EXT_BACKEND=emu).
#include <utility>

#include "bindings/bind_attention.h"
#include "common/fp16.h"
#include "cuda/flash/api.h"
#include "cuda/flash/bwd_traits.h"
#include "cuda/flash/fwd_traits.h"

namespace py = pybind11;
using namespace fae::bindings;

namespace {

// {("forward" | "backward", head dim): {"block_m": query rows, "block_n": keys}} of every compiled
// kernel instance, from the traits themselves (the tiles do not depend on the 16-bit dtype).
template <std::size_t... I, std::size_t... J>
py::dict tile_table(std::index_sequence<I...>, std::index_sequence<J...>) {
  using fae::bf16_t;
  py::dict d;
  const auto add = [&d](const char* direction, int head_dim, int block_m, int block_n) {
    py::dict tile;
    tile["block_m"] = block_m;
    tile["block_n"] = block_n;
    d[py::make_tuple(direction, head_dim)] = tile;
  };
  using fae::cuda::kBwdHeadDims, fae::cuda::kHeadDims, fae::cuda::BwdTraits, fae::cuda::FwdTraits;
  (add("forward", kHeadDims[I], FwdTraits<bf16_t, kHeadDims[I]>::kBlockM, FwdTraits<bf16_t, kHeadDims[I]>::kBlockN),
   ...);
  (add("backward", kBwdHeadDims[J], BwdTraits<bf16_t, kBwdHeadDims[J]>::kBlockM,
       BwdTraits<bf16_t, kBwdHeadDims[J]>::kBlockN),
   ...);
  return d;
}

}  // namespace

void fae_bind_emulated_attention(py::module_& m) {
  def_forward(m, "attention_forward", [](const fae::FwdParams& p, uintptr_t) { fae::cuda::attention_forward(p, nullptr); },
              "Forward attention through the CUDA kernel source on the emulator (float16/bfloat16; rows "
              "16-byte aligned; head dims: attention_head_dims).");
  def_backward(m, "attention_backward",
               [](const fae::BwdParams& p, float* stats, float* dq_accum, uintptr_t) {
                 fae::cuda::attention_backward(p, stats, dq_accum, nullptr);
               },
               "Backward through the CUDA kernel source on the emulator; row stats (2*B*Hq*Sq) and dq_accum "
               "(B*Hq*Sq*D) are float32 workspace (head dims: attention_bwd_head_dims).");
  def_append(m, "kvcache_append", [](const fae::AppendParams& p, uintptr_t) { fae::cuda::kvcache_append(p, nullptr); },
             "KV-cache append with rotary embedding through the CUDA kernel source on the emulator (float16/bfloat16).");
  m.attr("attention_head_dims") = head_dim_list(fae::cuda::kHeadDims);
  m.attr("attention_bwd_head_dims") = head_dim_list(fae::cuda::kBwdHeadDims);
  m.attr("attention_tiles") = tile_table(std::make_index_sequence<std::size(fae::cuda::kHeadDims)>(),
                                         std::make_index_sequence<std::size(fae::cuda::kBwdHeadDims)>());
}
