// Where sequence b of a call lives (FwdParams: variable-length batches, KV caches, paged K/V),
// usable on host and device so that every backend reads the offsets the same way.
#pragma once
#include <cstdint>
#include "common/params.h"
#include "common/portability.h"

namespace fae {
FAE_ISA_NAMESPACE_BEGIN

// Sequence b: its queries are rows q_row0 .. q_row0 + seqlen_q - 1 of q batch q_batch; its keys
// are key rows k_row0 .. k_row0 + seqlen_k - 1 of kv batch kv_batch (cache positions when
// paged: see key_offset). align_offset is the mask's (common/mask.h) for this sequence.
struct Seq {
  int64_t q_batch, q_row0, seqlen_q;
  int64_t kv_batch, k_row0, seqlen_k;
  int64_t align_offset;
};

// FwdParams' int32 arrays behind pointers of type P: the raw pointers (CPU), or checked global
// pointers (the CUDA kernels, so that the emulator bounds-checks every read). Which arrays are
// used is read from the params' own pointers (null: unused).
template <class P>
struct SeqArrays {
  P cu_seqlens_q, cu_seqlens_k, seqused_k, leftpad_k, kv_batch_idx, block_table;
};

FAE_HD SeqArrays<const int32_t*> seq_arrays(const FwdParams& p) {
  return {p.cu_seqlens_q, p.cu_seqlens_k, p.seqused_k, p.leftpad_k, p.kv_batch_idx, p.block_table};
}

// The mask's align offset (common/mask.h) of a sequence with these lengths.
FAE_HD int64_t sequence_align_offset(const FwdParams& p, int64_t seqlen_q, int64_t seqlen_k) {
  return p.align_offset + (p.align_bottom_right ? seqlen_k - seqlen_q : 0);
}

template <class P>
FAE_HD Seq sequence(const FwdParams& p, const SeqArrays<P>& a, int64_t b) {
  Seq s;
  const bool packed_q = p.cu_seqlens_q != nullptr, packed_k = p.cu_seqlens_k != nullptr;
  s.q_batch = packed_q ? 0 : b;
  s.q_row0 = packed_q ? int64_t(a.cu_seqlens_q[b]) : 0;
  s.seqlen_q = packed_q ? int64_t(a.cu_seqlens_q[b + 1]) - s.q_row0 : p.seqlen_q;
  s.kv_batch = packed_k ? 0 : p.kv_batch_idx ? int64_t(a.kv_batch_idx[b]) : b;
  const int64_t base = packed_k ? int64_t(a.cu_seqlens_k[b]) : 0;
  const int64_t end = p.seqused_k ? base + int64_t(a.seqused_k[b])
                                  : packed_k ? int64_t(a.cu_seqlens_k[b + 1]) : p.seqlen_k;
  s.k_row0 = base + (p.leftpad_k ? int64_t(a.leftpad_k[b]) : 0);
  s.seqlen_k = end - s.k_row0;
  s.align_offset = sequence_align_offset(p, s.seqlen_q, s.seqlen_k);
  return s;
}

FAE_HD Seq sequence(const FwdParams& p, int64_t b) { return sequence(p, seq_arrays(p), b); }

// p with sequence s's lengths and align offset: what the mask functions (common/mask.h) read.
FAE_HD FwdParams with_lengths(const FwdParams& p, const Seq& s) {
  FwdParams sp = p;
  sp.seqlen_q = s.seqlen_q;
  sp.seqlen_k = s.seqlen_k;
  sp.align_offset = s.align_offset;
  return sp;
}

// Element offset of the start of key row j (0 <= j < seqlen_k) of sequence b (s = sequence(p, b))
// in k (k strides) or v (v strides), head 0.
template <class P>
FAE_HD int64_t key_offset(const FwdParams& p, const SeqArrays<P>& a, int64_t b, const Seq& s, int64_t j,
                          int64_t batch_stride, int64_t row_stride) {
  const int64_t r = s.k_row0 + j;
  if (p.block_table == nullptr) return s.kv_batch * batch_stride + r * row_stride;
  const int64_t page = a.block_table[b * p.block_table_stride + r / p.page_size];
  return page * batch_stride + (r % p.page_size) * row_stride;
}
FAE_HD int64_t key_offset(const FwdParams& p, int64_t b, const Seq& s, int64_t j, int64_t batch_stride,
                          int64_t row_stride) {
  return key_offset(p, seq_arrays(p), b, s, j, batch_stride, row_stride);
}

// How many key rows from row j on are stored one row stride apart (the rest of j's page).
FAE_HD int64_t contiguous_keys(const FwdParams& p, const Seq& s, int64_t j) {
  return p.block_table == nullptr ? s.seqlen_k - j : p.page_size - (s.k_row0 + j) % p.page_size;
}

FAE_ISA_NAMESPACE_END
}  // namespace fae
