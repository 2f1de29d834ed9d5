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
using Strides4 = std::array<int64_t, 4>;
using Sizes6 = std::array<int64_t, 6>;  // batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim

inline void* as_ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }
inline const int32_t* as_i32(uintptr_t p) { return reinterpret_cast<const int32_t*>(p); }

// Variable-length batches and KV caches (FwdParams): int32 arrays by address (0: unused).
struct SeqArgs {
  uintptr_t cu_seqlens_q = 0, cu_seqlens_k = 0, seqused_k = 0, leftpad_k = 0, kv_batch_idx = 0, block_table = 0;
  int64_t block_table_stride = 0, page_size = 0;
  bool align_bottom_right = false;
  int num_splits = 0;
  uintptr_t split_workspace = 0;
  std::array<int64_t, 4> array_sizes{};  // q batch, q rows, k/v batch, k/v rows (0: not set)
};

inline void set_seqs(FwdParams& p, const SeqArgs& a) {
  p.cu_seqlens_q = as_i32(a.cu_seqlens_q); p.cu_seqlens_k = as_i32(a.cu_seqlens_k);
  p.seqused_k = as_i32(a.seqused_k); p.leftpad_k = as_i32(a.leftpad_k); p.kv_batch_idx = as_i32(a.kv_batch_idx);
  p.block_table = as_i32(a.block_table); p.block_table_stride = a.block_table_stride; p.page_size = a.page_size;
  p.align_bottom_right = a.align_bottom_right;
  p.num_splits = a.num_splits;
  p.split_workspace = static_cast<float*>(as_ptr(a.split_workspace));
  p.q_array_batch = a.array_sizes[0]; p.q_array_rows = a.array_sizes[1];
  p.kv_array_batch = a.array_sizes[2]; p.kv_array_rows = a.array_sizes[3];
}

// Score transforms (FwdParams: softcap, ALiBi slopes by address, 0: none).
inline void set_score_mods(FwdParams& p, double softcap, uintptr_t alibi_slopes, int64_t alibi_batch_stride) {
  p.softcap = float(softcap);
  p.softcap_f64 = softcap;
  p.alibi_slopes = static_cast<const float*>(as_ptr(alibi_slopes));
  p.alibi_batch_stride = alibi_batch_stride;
}

// Dropout (FwdParams: dropout_p, 0 = off, and the generator's seed and offset, or the address of
// the pair where they were drawn, 0: none).
inline void set_dropout(FwdParams& p, double dropout_p, uint64_t seed, uint64_t offset, uintptr_t rng) {
  p.dropout_p = float(dropout_p);
  p.dropout_seed = seed;
  p.dropout_offset = offset;
  p.dropout_rng = static_cast<const uint64_t*>(as_ptr(rng));
}

// Explicit attention mask (FwdParams: attn_mask by address, 0: none; strides batch, head, row,
// key) and, for the backward, where its gradient goes (0: not wanted; strides batch, head, row).
inline void set_attn_mask(FwdParams& p, uintptr_t mask, bool mask_bool, const Strides4& ms) {
  p.attn_mask = as_ptr(mask);
  p.mask_bool = mask_bool;
  p.mask_batch_stride = ms[0]; p.mask_head_stride = ms[1]; p.mask_row_stride = ms[2]; p.mask_col_stride = ms[3];
}
inline void set_dmask(BwdParams& p, uintptr_t dmask, const Strides3& ds) {
  p.dmask = as_ptr(dmask);
  p.dmask_batch_stride = ds[0]; p.dmask_head_stride = ds[1]; p.dmask_row_stride = ds[2];
}

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

// KV-cache append: sizes are batch, seqlen_q, seqlen_new, heads_q, heads_kv, head_dim.
inline AppendParams make_append(int dtype, const Sizes6& sz, uintptr_t q, uintptr_t q_rot, uintptr_t k_new,
                                uintptr_t v_new, uintptr_t k_cache, uintptr_t v_cache, const Strides3& qs,
                                const Strides3& qrs, const Strides3& kns, const Strides3& vns, const Strides3& kcs,
                                const Strides3& vcs, uintptr_t rotary_cos, uintptr_t rotary_sin, int64_t rotary_stride,
                                int64_t rotary_dim, bool rotary_interleaved, bool q_rows_consecutive,
                                uintptr_t cache_seqlens, uintptr_t kv_batch_idx, uintptr_t block_table,
                                int64_t block_table_stride, int64_t page_size,
                                const std::array<int64_t, 3>& bounds, int num_threads) {
  AppendParams p{};
  p.q = as_ptr(q); p.q_rot = as_ptr(q_rot); p.k_new = as_ptr(k_new); p.v_new = as_ptr(v_new);
  p.k_cache = as_ptr(k_cache); p.v_cache = as_ptr(v_cache);
  p.rotary_cos = as_ptr(rotary_cos); p.rotary_sin = as_ptr(rotary_sin);
  p.q_batch_stride = qs[0]; p.q_row_stride = qs[1]; p.q_head_stride = qs[2];
  p.qr_batch_stride = qrs[0]; p.qr_row_stride = qrs[1]; p.qr_head_stride = qrs[2];
  p.kn_batch_stride = kns[0]; p.kn_row_stride = kns[1]; p.kn_head_stride = kns[2];
  p.vn_batch_stride = vns[0]; p.vn_row_stride = vns[1]; p.vn_head_stride = vns[2];
  p.kc_batch_stride = kcs[0]; p.kc_row_stride = kcs[1]; p.kc_head_stride = kcs[2];
  p.vc_batch_stride = vcs[0]; p.vc_row_stride = vcs[1]; p.vc_head_stride = vcs[2];
  p.rotary_stride = rotary_stride; p.rotary_dim = rotary_dim;
  p.rotary_interleaved = rotary_interleaved; p.q_rows_consecutive = q_rows_consecutive;
  p.cache_seqlens = as_i32(cache_seqlens); p.kv_batch_idx = as_i32(kv_batch_idx);
  p.block_table = as_i32(block_table); p.block_table_stride = block_table_stride; p.page_size = page_size;
  p.batch = sz[0]; p.seqlen_q = sz[1]; p.seqlen_new = sz[2];
  p.heads_q = sz[3]; p.heads_kv = sz[4]; p.head_dim = sz[5];
  p.cache_batch = bounds[0]; p.cache_rows = bounds[1]; p.rotary_rows = bounds[2];
  p.dtype = static_cast<DType>(dtype);
  p.num_threads = num_threads;
  return p;
}

}  // namespace fae::bindings
