// The CUDA attention kernels, compiled by the host compiler and run on the SIMT emulator, exposed
// in flashattn_ext._emu with the argument list of _C.forward (FLASHATTN_EXT_BACKEND=emu).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/params_from_python.h"
#include "cuda/flash/api.h"

namespace py = pybind11;
using namespace fae::bindings;

void fae_bind_emulated_attention(py::module_& m) {
  m.def("attention_forward",
        [](int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse, Strides3 qs,
           Strides3 ks, Strides3 vs, Strides3 os, Strides2 lses, Sizes6 sizes, int64_t align_offset,
           int64_t window_left, int64_t window_right, double scale, int num_threads) {
          const fae::FwdParams p = make_fwd(dtype, q, k, v, out, lse, qs, ks, vs, os, lses, sizes, align_offset,
                                            window_left, window_right, scale, num_threads);
          py::gil_scoped_release release;
          fae::cuda::attention_forward(p, nullptr);
        },
        "Forward attention through the CUDA kernel source on the emulator (float16/bfloat16; rows "
        "16-byte aligned; head dims 32, 64, 96, 128, 256).");
  m.def("attention_backward",
        [](int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse, uintptr_t dout,
           uintptr_t dlse, uintptr_t dq, uintptr_t dk, uintptr_t dv, Strides3 qs, Strides3 ks, Strides3 vs,
           Strides3 os, Strides2 lses, Strides3 dos, Strides3 dqs, Strides3 dks, Strides3 dvs, Sizes6 sizes,
           int64_t align_offset, int64_t window_left, int64_t window_right, double scale, int num_threads,
           uintptr_t delta, uintptr_t dq_accum) {
          const fae::BwdParams p = make_bwd(dtype, q, k, v, out, lse, dout, dlse, dq, dk, dv, qs, ks, vs, os, lses,
                                            dos, dqs, dks, dvs, sizes, align_offset, window_left, window_right,
                                            scale, num_threads);
          py::gil_scoped_release release;
          fae::cuda::attention_backward(p, static_cast<float*>(as_ptr(delta)), static_cast<float*>(as_ptr(dq_accum)),
                                        nullptr);
        },
        "Backward through the CUDA kernel source on the emulator; delta (B*Hq*Sq) and dq_accum "
        "(B*Hq*Sq*D) are float32 workspace (head dims 32, 64, 96, 128).");
  py::list dims, bwd_dims;
  for (int d : fae::cuda::kHeadDims) dims.append(d);
  for (int d : fae::cuda::kBwdHeadDims) bwd_dims.append(d);
  m.attr("attention_head_dims") = dims;
  m.attr("attention_bwd_head_dims") = bwd_dims;
}
