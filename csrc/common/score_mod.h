// Score transforms (docs/semantics.md): softcapping, ALiBi and explicit masks, usable on host
// and device. They act on the scaled score s = q.k * scale, softcap first, then the ALiBi bias,
// then the explicit mask, then the band mask:
//   softcap > 0:  s <- softcap * tanh(s / softcap)
//   ALiBi:        s <- s - slope * |i + Sk - Sq - j|   (query row i, key j of one sequence)
//   attn_mask:    s <- s + mask(b, h, i, j)   (a boolean mask: 0 where true, -inf where false)
// Softcap and ALiBi are homogeneous in the unit of s: the kernels that keep scores in the log2 domain
// (s * log2(e)) pass softcap * log2(e) and slope * log2(e) and get the same transform there.
#pragma once
#include <cmath>
#include <cstdint>
#include "common/params.h"
#include "common/portability.h"

namespace fae {
FAE_ISA_NAMESPACE_BEGIN

FAE_HD bool has_score_mod(const FwdParams& p) { return p.softcap > 0.f || p.alibi_slopes != nullptr; }

// softcap * tanh(s / softcap), for softcap > 0.
template <typename T>
FAE_HD T softcap_score(T s, T softcap) { return softcap * T(std::tanh(s / softcap)); }

// d softcap_score / d s from the capped score c = softcap_score(s, softcap): 1 - tanh^2.
template <typename T>
FAE_HD T softcap_grad(T capped, T softcap) {
  const T t = capped / softcap;
  return T(1) - t * t;
}

// The ALiBi slope of sequence b, query head h (0 without ALiBi).
FAE_HD float alibi_slope(const FwdParams& p, int64_t b, int64_t h) {
  return p.alibi_slopes == nullptr ? 0.f : p.alibi_slopes[b * p.alibi_batch_stride + h];
}

// The position of query row `row` on the key axis of a sequence with seqlen_q queries and
// seqlen_k keys (bottom-right, as in FlashAttention, whatever the mask's alignment).
FAE_HD int64_t alibi_position(int64_t row, int64_t seqlen_q, int64_t seqlen_k) { return row + seqlen_k - seqlen_q; }

// The ALiBi bias of key j for a query at position pos: -slope * |pos - j|.
template <typename T>
FAE_HD T alibi_bias(T slope, int64_t pos, int64_t key) {
  const int64_t d = pos - key;
  return -slope * T(d < 0 ? -d : d);
}

// Explicit attention mask (FwdParams::attn_mask), after the transforms above: its value is added
// to the scaled score (in the log2 domain: value * log2(e)); a boolean mask adds 0 where it is
// true and -inf where it is false (so a NaN score stays NaN, as with torch's boolean masks).
FAE_HD bool has_attn_mask(const FwdParams& p) { return p.attn_mask != nullptr; }

// The offset (in elements) of the mask entry of batch b, query head h, query row i, key 0.
FAE_HD int64_t mask_row_offset(const FwdParams& p, int64_t b, int64_t h, int64_t i) {
  return b * p.mask_batch_stride + h * p.mask_head_stride + i * p.mask_row_stride;
}

// The value added to the scaled score of key j of the mask row at offset `row` (T: float, or
// double for float64 inputs).
template <typename T>
FAE_HD T mask_value(const FwdParams& p, int64_t row, int64_t j) {
  if (p.mask_bool)
    return static_cast<const uint8_t*>(p.attn_mask)[row + j * p.mask_col_stride] != 0 ? T(0) : -T(INFINITY);
  return static_cast<const T*>(p.attn_mask)[row + j * p.mask_col_stride];
}

FAE_ISA_NAMESPACE_END
}  // namespace fae
