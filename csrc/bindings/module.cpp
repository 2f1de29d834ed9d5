// pybind11 module flashattn_ext._C: turns raw pointers, sizes and strides from the Python API
// into the params structs and runs the backend with the GIL released. No torch or numpy types
// cross this boundary; arguments were validated in Python.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cmath>

#include "bindings/params_from_python.h"
#include "cpu/backend.h"
#include "cpu/thread_pool.h"
#if FAE_WITH_CUDA
#include "bindings/cuda_runtime_info.h"
#include "cuda/flash/api.h"
#endif

namespace py = pybind11;
using namespace fae::bindings;

PYBIND11_MODULE(_C, m) {
  m.doc() = "flashattn_ext compiled core (CPU backend; CUDA backend when built with it)";

  m.def("forward",
        [](int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse,
           Strides3 qs, Strides3 ks, Strides3 vs, Strides3 os, Strides2 lses,
           Sizes6 sizes, int64_t align_offset, int64_t window_left, int64_t window_right,
           double scale, int num_threads) {
          const fae::FwdParams p = make_fwd(dtype, q, k, v, out, lse, qs, ks, vs, os, lses, sizes,
                                            align_offset, window_left, window_right, scale, num_threads);
          py::gil_scoped_release release;
          fae::cpu::attention_forward(p);
        });

  m.def("backward",
        [](int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse, uintptr_t dout,
           uintptr_t dlse, uintptr_t dq, uintptr_t dk, uintptr_t dv, Strides3 qs, Strides3 ks, Strides3 vs,
           Strides3 os, Strides2 lses, Strides3 dos, Strides3 dqs, Strides3 dks, Strides3 dvs, Sizes6 sizes,
           int64_t align_offset, int64_t window_left, int64_t window_right, double scale, int num_threads) {
          const fae::BwdParams p = make_bwd(dtype, q, k, v, out, lse, dout, dlse, dq, dk, dv, qs, ks, vs, os, lses,
                                            dos, dqs, dks, dvs, sizes, align_offset, window_left, window_right,
                                            scale, num_threads);
          py::gil_scoped_release release;
          fae::cpu::attention_backward(p);
        });

#if FAE_WITH_CUDA
  m.def("cuda_forward",
        [](int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse, Strides3 qs,
           Strides3 ks, Strides3 vs, Strides3 os, Strides2 lses, Sizes6 sizes, int64_t align_offset,
           int64_t window_left, int64_t window_right, double scale, int num_threads, uintptr_t stream) {
          const fae::FwdParams p = make_fwd(dtype, q, k, v, out, lse, qs, ks, vs, os, lses, sizes, align_offset,
                                            window_left, window_right, scale, num_threads);
          py::gil_scoped_release release;
          fae::cuda::attention_forward(p, reinterpret_cast<fae::cuda::Stream>(stream));
        },
        "Forward attention on the GPU, launched on `stream` (float16/bfloat16 device pointers).");
  m.def("cuda_backward",
        [](int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse, uintptr_t dout,
           uintptr_t dlse, uintptr_t dq, uintptr_t dk, uintptr_t dv, Strides3 qs, Strides3 ks, Strides3 vs,
           Strides3 os, Strides2 lses, Strides3 dos, Strides3 dqs, Strides3 dks, Strides3 dvs, Sizes6 sizes,
           int64_t align_offset, int64_t window_left, int64_t window_right, double scale, int num_threads,
           uintptr_t delta, uintptr_t dq_accum, uintptr_t stream) {
          const fae::BwdParams p = make_bwd(dtype, q, k, v, out, lse, dout, dlse, dq, dk, dv, qs, ks, vs, os, lses,
                                            dos, dqs, dks, dvs, sizes, align_offset, window_left, window_right,
                                            scale, num_threads);
          py::gil_scoped_release release;
          fae::cuda::attention_backward(p, static_cast<float*>(as_ptr(delta)), static_cast<float*>(as_ptr(dq_accum)),
                                        reinterpret_cast<fae::cuda::Stream>(stream));
        },
        "Backward on the GPU, launched on `stream`; delta and dq_accum are float32 device workspace.");
  py::list dims, bwd_dims;
  for (int d : fae::cuda::kHeadDims) dims.append(d);
  for (int d : fae::cuda::kBwdHeadDims) bwd_dims.append(d);
  m.attr("cuda_head_dims") = dims;
  m.attr("cuda_bwd_head_dims") = bwd_dims;
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
