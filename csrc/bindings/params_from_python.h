// Builds the params structs from what the Python API passes: raw addresses, sizes and element
// strides (validated in Python). Shared by the _C and _emu modules so both read one argument list.
#pragma once

#include <array>
#include <cstdint>

#include "common/online_softmax.h"
#include "common/params.h"

namespace fae::bindings {

using Strides3 = std::array<int64_t, 3>;
using Strides2 = std::array<int64_t, 2>;
using Sizes6 = std::array<int64_t, 6>;  // batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim

inline void* as_ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

inline FwdParams make_fwd(int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse,
                          const Strides3& qs, const Strides3& ks, const Strides3& vs, const Strides3& os,
                          const Strides2& lses, const Sizes6& sz, int64_t align_offset, int64_t window_left,
                          int64_t window_right, double scale, int num_threads) {
  FwdParams p{};
  p.q = as_ptr(q); p.k = as_ptr(k); p.v = as_ptr(v); p.out = as_ptr(out); p.lse = as_ptr(lse);
  p.q_batch_stride = qs[0]; p.q_row_stride = qs[1]; p.q_head_stride = qs[2];
  p.k_batch_stride = ks[0]; p.k_row_stride = ks[1]; p.k_head_stride = ks[2];
  p.v_batch_stride = vs[0]; p.v_row_stride = vs[1]; p.v_head_stride = vs[2];
  p.o_batch_stride = os[0]; p.o_row_stride = os[1]; p.o_head_stride = os[2];
  p.lse_batch_stride = lses[0]; p.lse_head_stride = lses[1];
  p.batch = sz[0]; p.seqlen_q = sz[1]; p.seqlen_k = sz[2];
  p.heads_q = sz[3]; p.heads_kv = sz[4]; p.head_dim = sz[5];
  p.align_offset = align_offset;
  p.window_left = window_left < 0 ? kNoWindow : window_left;
  p.window_right = window_right < 0 ? kNoWindow : window_right;
  p.scale = float(scale);
  p.scale_log2 = float(scale * kLog2e);
  p.scale_f64 = scale;
  p.dtype = static_cast<DType>(dtype);
  p.num_threads = num_threads;
  return p;
}

inline BwdParams make_bwd(int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse,
                          uintptr_t dout, uintptr_t dlse, uintptr_t dq, uintptr_t dk, uintptr_t dv,
                          const Strides3& qs, const Strides3& ks, const Strides3& vs, const Strides3& os,
                          const Strides2& lses, const Strides3& dos, const Strides3& dqs, const Strides3& dks,
                          const Strides3& dvs, const Sizes6& sz, int64_t align_offset, int64_t window_left,
                          int64_t window_right, double scale, bool deterministic, int num_threads) {
  BwdParams p{};
  p.fwd = make_fwd(dtype, q, k, v, out, lse, qs, ks, vs, os, lses, sz, align_offset, window_left, window_right,
                   scale, num_threads);
  p.dout = as_ptr(dout); p.dlse = as_ptr(dlse); p.dq = as_ptr(dq); p.dk = as_ptr(dk); p.dv = as_ptr(dv);
  p.do_batch_stride = dos[0]; p.do_row_stride = dos[1]; p.do_head_stride = dos[2];
  p.dq_batch_stride = dqs[0]; p.dq_row_stride = dqs[1]; p.dq_head_stride = dqs[2];
  p.dk_batch_stride = dks[0]; p.dk_row_stride = dks[1]; p.dk_head_stride = dks[2];
  p.dv_batch_stride = dvs[0]; p.dv_row_stride = dvs[1]; p.dv_head_stride = dvs[2];
  p.deterministic = deterministic;
  return p;
}

}  // namespace fae::bindings
