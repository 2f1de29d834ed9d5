// Binds the attention entry points of _C (CPU and CUDA) and _emu with one list of keyword-only
// arguments, the names flashattn_ext/_dispatch.py passes: element type and sizes, addresses and
// element strides (batch, sequence, head) of every array, the mask and the scale; the backward
// adds its arrays and float32 workspace. Backends that use no workspace or stream receive 0. The
// sequence arrays of variable-length batches and KV caches are optional (0: unused).
#pragma once

#include <tuple>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/params_from_python.h"

namespace py = pybind11;

namespace fae::bindings {

// Arguments of every entry point, in the order of the lambdas below.
inline auto common_args() {
  return std::make_tuple(py::kw_only(), py::arg("dtype"), py::arg("sizes"), py::arg("q"), py::arg("k"), py::arg("v"),
                         py::arg("out"), py::arg("lse"), py::arg("q_strides"), py::arg("k_strides"),
                         py::arg("v_strides"), py::arg("out_strides"), py::arg("lse_strides"),
                         py::arg("align_offset"), py::arg("window_left"), py::arg("window_right"),
                         py::arg("scale"));
}

// Variable-length batches and KV caches (params_from_python.h: SeqArgs), all optional.
inline auto seq_args() {
  return std::make_tuple(py::arg("cu_seqlens_q") = 0, py::arg("cu_seqlens_k") = 0, py::arg("seqused_k") = 0,
                         py::arg("leftpad_k") = 0, py::arg("kv_batch_idx") = 0, py::arg("block_table") = 0,
                         py::arg("block_table_stride") = 0, py::arg("page_size") = 0,
                         py::arg("align_bottom_right") = false, py::arg("num_splits") = 0,
                         py::arg("split_workspace") = 0, py::arg("array_sizes") = std::array<int64_t, 4>{});
}

// Score transforms (params_from_python.h: set_score_mods), optional: softcap (0 = off), the
// address of the float32 ALiBi slopes (0 = none) and their batch stride (0: one slope per head);
// dropout (set_dropout): its probability (0 = off) and the generator's seed and offset, or the
// address of the int64 pair (seed, offset) drawn on the arrays' device (0: none).
inline auto score_args() {
  return std::make_tuple(py::arg("softcap") = 0.0, py::arg("alibi_slopes") = 0, py::arg("alibi_batch_stride") = 0,
                         py::arg("dropout_p") = 0.0, py::arg("dropout_seed") = 0, py::arg("dropout_offset") = 0,
                         py::arg("dropout_rng") = 0);
}

// Explicit attention mask (params_from_python.h: set_attn_mask), optional: its address (0 =
// none), whether it is boolean (uint8, 0 = masked out) or additive, and its element strides
// (batch, head, row, key; 0 on broadcast dimensions). The backward adds the address and strides
// (batch, head, row) of the additive mask's gradient (0 = not wanted).
inline auto mask_args() {
  return std::make_tuple(py::arg("attn_mask") = 0, py::arg("mask_bool") = false,
                         py::arg("mask_strides") = Strides4{});
}
inline auto dmask_args() { return std::make_tuple(py::arg("dmask") = 0, py::arg("dmask_strides") = Strides3{}); }

// Backward only: the gradients in (dout, dlse: 0 when lse gets none) and out, the workspace, and
// the deterministic switch (CUDA kernels: fixed-order dQ; the CPU backward always is).
inline auto backward_args() {
  return std::make_tuple(py::arg("dout"), py::arg("dlse"), py::arg("dq"), py::arg("dk"), py::arg("dv"),
                         py::arg("dout_strides"), py::arg("dq_strides"), py::arg("dk_strides"),
                         py::arg("dv_strides"), py::arg("stats"), py::arg("dq_accum"),
                         py::arg("deterministic") = false);
}

// Last in every list: the CUDA stream address, the ordinal of the GPU that holds the arrays (-1:
// the current device; the CPU and the emulator ignore it) and the CPU thread count (0: the
// library default).
inline auto launch_args() {
  return std::make_tuple(py::arg("stream"), py::arg("device") = -1, py::arg("num_threads") = 0);
}

template <class Fn, class Args>
void def_with_args(py::module_& m, const char* name, Fn fn, const char* doc, const Args& args) {
  std::apply([&](const auto&... a) { m.def(name, fn, a..., doc); }, args);
}

// run(const FwdParams&, uintptr_t stream, int device), called with the GIL released.
template <class Run>
void def_forward(py::module_& m, const char* name, Run run, const char* doc) {
  def_with_args(
      m, name,
      [run](int dtype, Sizes6 sizes, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse,
            Strides3 qs, Strides3 ks, Strides3 vs, Strides3 os, Strides2 lses, int64_t align_offset,
            int64_t window_left, int64_t window_right, double scale, uintptr_t cu_seqlens_q, uintptr_t cu_seqlens_k,
            uintptr_t seqused_k, uintptr_t leftpad_k, uintptr_t kv_batch_idx, uintptr_t block_table,
            int64_t block_table_stride, int64_t page_size, bool align_bottom_right, int num_splits,
            uintptr_t split_workspace, std::array<int64_t, 4> array_sizes, double softcap, uintptr_t alibi_slopes,
            int64_t alibi_batch_stride, double dropout_p, uint64_t dropout_seed, uint64_t dropout_offset,
            uintptr_t dropout_rng, uintptr_t attn_mask, bool mask_bool, Strides4 mask_strides, uintptr_t stream,
            int device, int num_threads) {
        FwdParams p = make_fwd(dtype, q, k, v, out, lse, qs, ks, vs, os, lses, sizes, align_offset, window_left,
                               window_right, scale, num_threads);
        set_seqs(p, {cu_seqlens_q, cu_seqlens_k, seqused_k, leftpad_k, kv_batch_idx, block_table,
                     block_table_stride, page_size, align_bottom_right, num_splits, split_workspace, array_sizes});
        set_score_mods(p, softcap, alibi_slopes, alibi_batch_stride);
        set_dropout(p, dropout_p, dropout_seed, dropout_offset, dropout_rng);
        set_attn_mask(p, attn_mask, mask_bool, mask_strides);
        py::gil_scoped_release release;
        run(p, stream, device);
      },
      doc, std::tuple_cat(common_args(), seq_args(), score_args(), mask_args(), launch_args()));
}

// run(const BwdParams&, float* stats, float* dq_accum, uintptr_t stream, int device), GIL released.
template <class Run>
void def_backward(py::module_& m, const char* name, Run run, const char* doc) {
  def_with_args(
      m, name,
      [run](int dtype, Sizes6 sizes, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse,
            Strides3 qs, Strides3 ks, Strides3 vs, Strides3 os, Strides2 lses, int64_t align_offset,
            int64_t window_left, int64_t window_right, double scale, uintptr_t dout, uintptr_t dlse, uintptr_t dq,
            uintptr_t dk, uintptr_t dv, Strides3 dos, Strides3 dqs, Strides3 dks, Strides3 dvs, uintptr_t stats,
            uintptr_t dq_accum, bool deterministic, uintptr_t cu_seqlens_q, uintptr_t cu_seqlens_k, uintptr_t seqused_k,
            uintptr_t leftpad_k, uintptr_t kv_batch_idx, uintptr_t block_table, int64_t block_table_stride,
            int64_t page_size, bool align_bottom_right, int num_splits, uintptr_t split_workspace,
            std::array<int64_t, 4> array_sizes, double softcap, uintptr_t alibi_slopes, int64_t alibi_batch_stride,
            double dropout_p, uint64_t dropout_seed, uint64_t dropout_offset, uintptr_t dropout_rng, uintptr_t attn_mask,
            bool mask_bool, Strides4 mask_strides, uintptr_t dmask, Strides3 dmask_strides, uintptr_t stream, int device,
            int num_threads) {
        BwdParams p = make_bwd(dtype, q, k, v, out, lse, dout, dlse, dq, dk, dv, qs, ks, vs, os, lses, dos, dqs, dks,
                               dvs, sizes, align_offset, window_left, window_right, scale, deterministic, num_threads);
        set_seqs(p.fwd, {cu_seqlens_q, cu_seqlens_k, seqused_k, leftpad_k, kv_batch_idx, block_table,
                         block_table_stride, page_size, align_bottom_right, num_splits, split_workspace,
                         array_sizes});
        set_score_mods(p.fwd, softcap, alibi_slopes, alibi_batch_stride);
        set_dropout(p.fwd, dropout_p, dropout_seed, dropout_offset, dropout_rng);
        set_attn_mask(p.fwd, attn_mask, mask_bool, mask_strides);
        set_dmask(p, dmask, dmask_strides);
        py::gil_scoped_release release;
        run(p, static_cast<float*>(as_ptr(stats)), static_cast<float*>(as_ptr(dq_accum)), stream, device);
      },
      doc, std::tuple_cat(common_args(), backward_args(), seq_args(), score_args(), mask_args(), dmask_args(),
                          launch_args()));
}

// run(const AppendParams&, uintptr_t stream, int device), GIL released: the KV-cache append with rotary;
// bounds: the caches' (batch or pages, rows) and the rotary tables' rows.
template <class Run>
void def_append(py::module_& m, const char* name, Run run, const char* doc) {
  m.def(
      name,
      [run](int dtype, Sizes6 sizes, uintptr_t q, uintptr_t q_rot, uintptr_t k_new, uintptr_t v_new, uintptr_t k_cache,
            uintptr_t v_cache, Strides3 qs, Strides3 qrs, Strides3 kns, Strides3 vns, Strides3 kcs, Strides3 vcs,
            uintptr_t rotary_cos, uintptr_t rotary_sin, int64_t rotary_stride, int64_t rotary_dim,
            bool rotary_interleaved, bool q_rows_consecutive, uintptr_t cache_seqlens, uintptr_t kv_batch_idx,
            uintptr_t block_table, int64_t block_table_stride, int64_t page_size, std::array<int64_t, 3> bounds,
            uintptr_t stream, int device, int num_threads) {
        const AppendParams p = make_append(dtype, sizes, q, q_rot, k_new, v_new, k_cache, v_cache, qs, qrs, kns, vns,
                                           kcs, vcs, rotary_cos, rotary_sin, rotary_stride, rotary_dim,
                                           rotary_interleaved, q_rows_consecutive, cache_seqlens, kv_batch_idx,
                                           block_table, block_table_stride, page_size, bounds, num_threads);
        py::gil_scoped_release release;
        run(p, stream, device);
      },
      py::kw_only(), py::arg("dtype"), py::arg("sizes"), py::arg("q"), py::arg("q_rot"), py::arg("k_new"),
      py::arg("v_new"), py::arg("k_cache"), py::arg("v_cache"), py::arg("q_strides"), py::arg("q_rot_strides"),
      py::arg("k_new_strides"), py::arg("v_new_strides"), py::arg("k_cache_strides"), py::arg("v_cache_strides"),
      py::arg("rotary_cos"), py::arg("rotary_sin"), py::arg("rotary_stride"), py::arg("rotary_dim"),
      py::arg("rotary_interleaved"), py::arg("q_rows_consecutive"), py::arg("cache_seqlens"), py::arg("kv_batch_idx"),
      py::arg("block_table"), py::arg("block_table_stride"), py::arg("page_size"),
      py::arg("bounds") = std::array<int64_t, 3>{}, py::arg("stream"), py::arg("device") = -1,
      py::arg("num_threads") = 0, doc);
}

// workspace(const BwdParams&) -> (stats, dq_accum) float counts of the CUDA backward for these
// sizes (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim) and mode.
template <class Workspace>
void def_backward_workspace(py::module_& m, const char* name, Workspace workspace) {
  m.def(
      name,
      [workspace](Sizes6 sizes, bool deterministic) {
        BwdParams p{};
        p.fwd.batch = sizes[0]; p.fwd.seqlen_q = sizes[1]; p.fwd.seqlen_k = sizes[2];
        p.fwd.heads_q = sizes[3]; p.fwd.heads_kv = sizes[4]; p.fwd.head_dim = sizes[5];
        p.deterministic = deterministic;
        const auto w = workspace(p);
        return py::make_tuple(w.stats, w.dq_accum);
      },
      py::kw_only(), py::arg("sizes"), py::arg("deterministic"),
      "Float32 elements (stats, dq_accum) of the CUDA backward's workspace for sizes (B, Sq, Sk, Hq, Hkv, D).");
}

// A Python list of the head dims in a kernel table.
template <std::size_t N>
py::list head_dim_list(const int (&dims)[N]) {
  py::list out;
  for (int d : dims) out.append(d);
  return out;
}

}  // namespace fae::bindings
