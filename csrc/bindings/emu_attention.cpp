// The CUDA attention kernels, compiled by the host compiler and run on the SIMT emulator, exposed
// in flashattn_ext._emu with the argument list of _C.forward (FLASHATTN_EXT_BACKEND=emu).
#include "bindings/bind_attention.h"
#include "cuda/flash/api.h"

namespace py = pybind11;
using namespace fae::bindings;

void fae_bind_emulated_attention(py::module_& m) {
  def_forward(m, "attention_forward", [](const fae::FwdParams& p, uintptr_t) { fae::cuda::attention_forward(p, nullptr); },
              "Forward attention through the CUDA kernel source on the emulator (float16/bfloat16; rows "
              "16-byte aligned; head dims 32, 64, 96, 128, 256).");
  def_backward(m, "attention_backward",
               [](const fae::BwdParams& p, float* stats, float* dq_accum, uintptr_t) {
                 fae::cuda::attention_backward(p, stats, dq_accum, nullptr);
               },
               "Backward through the CUDA kernel source on the emulator; row stats (2*B*Hq*Sq) and dq_accum "
               "(B*Hq*Sq*D) are float32 workspace (head dims 32, 64, 96, 128).");
  m.attr("attention_head_dims") = head_dim_list(fae::cuda::kHeadDims);
  m.attr("attention_bwd_head_dims") = head_dim_list(fae::cuda::kBwdHeadDims);
}
