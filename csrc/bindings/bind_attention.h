// Binds attention entry points with one argument list for every backend: the list built by
// _core._fwd_args / _core._bwd_args, then (backward only) the float32 workspace addresses stats
// and dq_accum, then a CUDA stream address; backends that need none of these receive 0.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/params_from_python.h"

namespace fae::bindings {

// run(const FwdParams&, uintptr_t stream), called with the GIL released.
template <class Run>
void def_forward(pybind11::module_& m, const char* name, Run run, const char* doc) {
  m.def(name,
        [run](int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse, Strides3 qs,
              Strides3 ks, Strides3 vs, Strides3 os, Strides2 lses, Sizes6 sizes, int64_t align_offset,
              int64_t window_left, int64_t window_right, double scale, int num_threads, uintptr_t stream) {
          const FwdParams p = make_fwd(dtype, q, k, v, out, lse, qs, ks, vs, os, lses, sizes, align_offset,
                                       window_left, window_right, scale, num_threads);
          pybind11::gil_scoped_release release;
          run(p, stream);
        },
        doc);
}

// run(const BwdParams&, float* stats, float* dq_accum, uintptr_t stream), GIL released.
template <class Run>
void def_backward(pybind11::module_& m, const char* name, Run run, const char* doc) {
  m.def(name,
        [run](int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse, uintptr_t dout,
              uintptr_t dlse, uintptr_t dq, uintptr_t dk, uintptr_t dv, Strides3 qs, Strides3 ks, Strides3 vs,
              Strides3 os, Strides2 lses, Strides3 dos, Strides3 dqs, Strides3 dks, Strides3 dvs, Sizes6 sizes,
              int64_t align_offset, int64_t window_left, int64_t window_right, double scale, int num_threads,
              uintptr_t stats, uintptr_t dq_accum, uintptr_t stream) {
          const BwdParams p = make_bwd(dtype, q, k, v, out, lse, dout, dlse, dq, dk, dv, qs, ks, vs, os, lses, dos,
                                       dqs, dks, dvs, sizes, align_offset, window_left, window_right, scale,
                                       num_threads);
          pybind11::gil_scoped_release release;
          run(p, static_cast<float*>(as_ptr(stats)), static_cast<float*>(as_ptr(dq_accum)), stream);
        },
        doc);
}

// A Python list of the head dims in a kernel table.
template <std::size_t N>
pybind11::list head_dim_list(const int (&dims)[N]) {
  pybind11::list out;
  for (int d : dims) out.append(d);
  return out;
}

}  // namespace fae::bindings
