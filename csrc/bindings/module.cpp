// pybind11 module flashattn_ext._C: turns raw pointers, sizes and strides from the Python API
// into the params structs and runs the backend with the GIL released. No torch or numpy types
// cross this boundary; arguments were validated in Python.
#include "bindings/bind_attention.h"
#include "bindings/bind_interp.h"
#include "cpu/backend.h"
#include "cpu/interp_backend.h"
#include "cpu/thread_pool.h"
#if FAE_WITH_CUDA
#include "bindings/cuda_runtime_info.h"
#include "cuda/flash/api.h"
#include "cuda/flash/interp_api.h"
#endif

namespace py = pybind11;
using namespace fae::bindings;

PYBIND11_MODULE(_C, m) {
  m.doc() = "flashattn_ext compiled core (CPU backend; CUDA backend when built with it)";

  def_forward(m, "forward", [](const fae::FwdParams& p, uintptr_t, int) { fae::cpu::attention_forward(p); },
              "Forward attention on the CPU kernels.");
  def_backward(m, "backward",
               [](const fae::BwdParams& p, float*, float*, uintptr_t, int) { fae::cpu::attention_backward(p); },
               "Backward attention on the CPU kernels (no workspace, no stream).");
  def_append(m, "kvcache_append", [](const fae::AppendParams& p, uintptr_t, int) { fae::cpu::kvcache_append(p); },
             "KV-cache append with rotary embedding on the CPU (in place into k_cache, v_cache; q_rot).");
  def_weights(m, "attention_weights", [](const fae::WeightsParams& p, uintptr_t) { fae::cpu::attention_weights(p); },
              "Attention probabilities of selected heads and rows on the CPU kernels.");
  def_topk_forward(m, "topk_forward", [](const fae::TopkParams& p, uintptr_t) { fae::cpu::topk_forward(p); },
                   "Top-k attention forward on the CPU kernels (k_top = 1: hard attention).");
  def_topk_backward(m, "topk_backward", [](const fae::TopkBwdParams& p, uintptr_t) { fae::cpu::topk_backward(p); },
                    "Top-k attention backward on the CPU kernels; dk, dv: zeroed accumulators.");
#if FAE_WITH_CUDA
  def_weights(m, "cuda_attention_weights",
              [](const fae::WeightsParams& p, uintptr_t s) { fae::cuda::attention_weights(p, reinterpret_cast<fae::cuda::Stream>(s)); },
              "Attention probabilities on the GPU (heads, rows: device int64 arrays).");
  def_topk_forward(m, "cuda_topk_forward",
                   [](const fae::TopkParams& p, uintptr_t s) { fae::cuda::topk_forward(p, reinterpret_cast<fae::cuda::Stream>(s)); },
                   "Top-k attention forward on the GPU.");
  def_topk_backward(m, "cuda_topk_backward",
                    [](const fae::TopkBwdParams& p, uintptr_t s) { fae::cuda::topk_backward(p, reinterpret_cast<fae::cuda::Stream>(s)); },
                    "Top-k attention backward on the GPU; dk, dv: zeroed float32 accumulators.");
  m.attr("cuda_max_top_k") = fae::cuda::kMaxTopK;
  def_forward(m, "cuda_forward",
              [](const fae::FwdParams& p, uintptr_t stream, int device) {
                fae::cuda::attention_forward(p, reinterpret_cast<fae::cuda::Stream>(stream), device);
              },
              "Forward attention on GPU `device`, launched on `stream` (float16/bfloat16 device pointers).");
  def_backward(m, "cuda_backward",
               [](const fae::BwdParams& p, float* stats, float* dq_accum, uintptr_t stream, int device) {
                 fae::cuda::attention_backward(p, stats, dq_accum, reinterpret_cast<fae::cuda::Stream>(stream), device);
               },
               "Backward on GPU `device`, launched on `stream`; stats and dq_accum are float32 device workspace "
               "of cuda_bwd_workspace elements.");
  def_backward_workspace(m, "cuda_bwd_workspace", fae::cuda::backward_workspace);
  def_append(m, "cuda_kvcache_append",
             [](const fae::AppendParams& p, uintptr_t stream, int device) {
               fae::cuda::kvcache_append(p, reinterpret_cast<fae::cuda::Stream>(stream), device);
             },
             "KV-cache append with rotary embedding on GPU `device`, launched on `stream` (float16/bfloat16).");
  m.attr("cuda_head_dims") = head_dim_list(fae::cuda::kHeadDims);
  m.attr("cuda_bwd_head_dims") = head_dim_list(fae::cuda::kBwdHeadDims);
#endif

  m.def("set_num_threads", &fae::cpu::set_default_num_threads,
        "Threads the CPU kernels use by default (<= 0 restores the automatic choice).");
  m.def("get_num_threads", &fae::cpu::default_num_threads);
  m.def("available_isas", &fae::cpu::available_isas,
        "CPU instruction sets compiled in and supported here (values of FLASHATTN_EXT_CPU_ISA).");
  m.def("fma_peak_gflops", [](int threads) {
          py::gil_scoped_release release;
          return fae::cpu::fma_peak_gflops(threads);
        }, py::arg("threads") = 0, "Float32 FMA peak of the active CPU kernels (register loop).");

  m.def("build_info", [] {
    py::dict info;
    info["version"] = FAE_VERSION;
#if defined(__clang__)
    info["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
    info["compiler"] = "gcc " __VERSION__;
#else
    info["compiler"] = "unknown";
#endif
    info["cpu_isa"] = fae::cpu::active_isa();
    info["cuda_built"] = bool(FAE_WITH_CUDA);
    info["cuda_archs"] = std::string(FAE_CUDA_ARCHS);
    info["num_threads"] = fae::cpu::default_num_threads();
#if FAE_WITH_CUDA
    const fae::CudaRuntimeInfo rt = fae::cuda_runtime_info();
    info["cuda_runtime_version"] = rt.runtime_version;
    info["cuda_device_count"] = rt.device_count;
    info["cuda_status"] = rt.status;
#endif
    return info;
  });
}
