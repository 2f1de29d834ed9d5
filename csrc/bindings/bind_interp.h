// Binds the attention-weights and top-k entry points (common/interp_params.h) of _C and _emu,
// keyword-only like bind_attention.h: dtype, sizes, addresses and element strides, the mask and
// the scale, then each pass's own arrays; last the CUDA stream and the CPU thread count.
#pragma once

#include <cstdint>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/params_from_python.h"
#include "common/interp_params.h"

namespace py = pybind11;

namespace fae::bindings {

// run(const WeightsParams&, uintptr_t stream), called with the GIL released.
template <class Run>
void def_weights(py::module_& m, const char* name, Run run, const char* doc) {
  m.def(
      name,
      [run](int dtype, Sizes6 sizes, uintptr_t q, uintptr_t k, uintptr_t lse, Strides3 qs, Strides3 ks,
            Strides2 lses, uintptr_t probs, Strides3 ps, uintptr_t heads, int64_t num_heads, uintptr_t rows,
            int64_t num_rows, int64_t align_offset, int64_t window_left, int64_t window_right, double scale,
            double softcap, uintptr_t alibi_slopes, int64_t alibi_batch_stride, uintptr_t stream, int num_threads) {
        WeightsParams w{};
        w.fwd = make_fwd(dtype, q, k, k, 0, lse, qs, ks, ks, qs, lses, sizes, align_offset, window_left,
                         window_right, scale, num_threads);
        set_score_mods(w.fwd, softcap, alibi_slopes, alibi_batch_stride);
        w.probs = as_ptr(probs);
        w.p_batch_stride = ps[0]; w.p_head_stride = ps[1]; w.p_row_stride = ps[2];
        w.heads = static_cast<const int64_t*>(as_ptr(heads)); w.num_heads = num_heads;
        w.rows = static_cast<const int64_t*>(as_ptr(rows)); w.num_rows = num_rows;
        py::gil_scoped_release release;
        run(w, stream);
      },
      py::kw_only(), py::arg("dtype"), py::arg("sizes"), py::arg("q"), py::arg("k"), py::arg("lse"),
      py::arg("q_strides"), py::arg("k_strides"), py::arg("lse_strides"), py::arg("probs"),
      py::arg("probs_strides"), py::arg("heads"), py::arg("num_heads"), py::arg("rows"), py::arg("num_rows"),
      py::arg("align_offset"), py::arg("window_left"), py::arg("window_right"), py::arg("scale"),
      py::arg("softcap") = 0.0, py::arg("alibi_slopes") = 0, py::arg("alibi_batch_stride") = 0, py::arg("stream"),
      py::arg("num_threads") = 0, doc);
}

inline TopkParams make_topk(int dtype, const Sizes6& sizes, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out,
                            const Strides3& qs, const Strides3& ks, const Strides3& vs, const Strides3& os,
                            uintptr_t index, const Strides3& is, int64_t k_top, int64_t align_offset,
                            int64_t window_left, int64_t window_right, double scale, int num_threads) {
  TopkParams t{};
  t.fwd = make_fwd(dtype, q, k, v, out, 0, qs, ks, vs, os, Strides2{0, 0}, sizes, align_offset, window_left,
                   window_right, scale, num_threads);
  t.index = static_cast<int64_t*>(as_ptr(index));
  t.idx_batch_stride = is[0]; t.idx_head_stride = is[1]; t.idx_row_stride = is[2];
  t.k_top = k_top;
  return t;
}

// run(const TopkParams&, uintptr_t stream), GIL released.
template <class Run>
void def_topk_forward(py::module_& m, const char* name, Run run, const char* doc) {
  m.def(
      name,
      [run](int dtype, Sizes6 sizes, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, Strides3 qs,
            Strides3 ks, Strides3 vs, Strides3 os, uintptr_t index, Strides3 is, int64_t k_top,
            int64_t align_offset, int64_t window_left, int64_t window_right, double scale, uintptr_t stream,
            int num_threads) {
        const TopkParams t = make_topk(dtype, sizes, q, k, v, out, qs, ks, vs, os, index, is, k_top, align_offset,
                                       window_left, window_right, scale, num_threads);
        py::gil_scoped_release release;
        run(t, stream);
      },
      py::kw_only(), py::arg("dtype"), py::arg("sizes"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
      py::arg("q_strides"), py::arg("k_strides"), py::arg("v_strides"), py::arg("out_strides"), py::arg("index"),
      py::arg("index_strides"), py::arg("k_top"), py::arg("align_offset"), py::arg("window_left"),
      py::arg("window_right"), py::arg("scale"), py::arg("stream"), py::arg("num_threads") = 0, doc);
}

// run(const TopkBwdParams&, uintptr_t stream), GIL released.
template <class Run>
void def_topk_backward(py::module_& m, const char* name, Run run, const char* doc) {
  m.def(
      name,
      [run](int dtype, Sizes6 sizes, uintptr_t q, uintptr_t k, uintptr_t v, Strides3 qs, Strides3 ks, Strides3 vs,
            uintptr_t index, Strides3 is, int64_t k_top, int64_t align_offset, int64_t window_left,
            int64_t window_right, double scale, uintptr_t dout, Strides3 dos, uintptr_t dq, Strides3 dqs,
            uintptr_t dk, uintptr_t dv, uintptr_t stream, int num_threads) {
        TopkBwdParams t{};
        t.sel = make_topk(dtype, sizes, q, k, v, 0, qs, ks, vs, qs, index, is, k_top, align_offset, window_left,
                          window_right, scale, num_threads);
        t.dout = as_ptr(dout); t.dq = as_ptr(dq); t.dk = as_ptr(dk); t.dv = as_ptr(dv);
        t.do_batch_stride = dos[0]; t.do_row_stride = dos[1]; t.do_head_stride = dos[2];
        t.dq_batch_stride = dqs[0]; t.dq_row_stride = dqs[1]; t.dq_head_stride = dqs[2];
        py::gil_scoped_release release;
        run(t, stream);
      },
      py::kw_only(), py::arg("dtype"), py::arg("sizes"), py::arg("q"), py::arg("k"), py::arg("v"),
      py::arg("q_strides"), py::arg("k_strides"), py::arg("v_strides"), py::arg("index"), py::arg("index_strides"),
      py::arg("k_top"), py::arg("align_offset"), py::arg("window_left"), py::arg("window_right"), py::arg("scale"),
      py::arg("dout"), py::arg("dout_strides"), py::arg("dq"), py::arg("dq_strides"), py::arg("dk"), py::arg("dv"),
      py::arg("stream"), py::arg("num_threads") = 0, doc);
}

}  // namespace fae::bindings
