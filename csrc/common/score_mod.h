// Score transforms (docs/semantics.md): softcapping and ALiBi, usable on host and device. They
// act on the scaled score s = q.k * scale, softcap first, then the ALiBi bias, then the mask:
//   softcap > 0:  s <- softcap * tanh(s / softcap)
//   ALiBi:        s <- s - slope * |i + Sk - Sq - j|   (query row i, key j of one sequence)
// Both are homogeneous in the unit of s: the kernels that keep scores in the log2 domain
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
// The same with inv_softcap = 1 / softcap given (kernels hoist the division out of their loops).
template <typename T>
FAE_HD T softcap_score(T s, T softcap, T inv_softcap) { return softcap * T(std::tanh(s * inv_softcap)); }

// d softcap_score / d s from the capped score c = softcap_score(s, softcap): 1 - tanh^2.
template <typename T>
FAE_HD T softcap_grad(T capped, T softcap) {
  const T t = capped / softcap;
  return T(1) - t * t;
}
// The same from inv_softcap = 1 / softcap (1 for inv_softcap = 0: no softcap).
template <typename T>
FAE_HD T softcap_grad_inv(T capped, T inv_softcap) {
  const T t = capped * inv_softcap;
  return T(1) - t * t;
}

// The ALiBi slope of sequence b, query head h (0 without ALiBi).
FAE_HD float alibi_slope(const FwdParams& p, int64_t b, int64_t h) {
  return p.alibi_slopes == nullptr ? 0.f : p.alibi_slopes[b * p.alibi_batch_stride + h];
}

// The position of query row `row` on the key axis of a sequence with seqlen_q queries and
// seqlen_k keys (bottom-right, as in FlashAttention, whatever the mask's alignment).
FAE_HD int64_t alibi_position(int64_t row, int64_t seqlen_q, int64_t seqlen_k) { return row + seqlen_k - seqlen_q; }

// The ALiBi bias of key j for a query at position pos: -slope * |pos - j| (I: int64_t, or int
// where the kernels know the distance fits).
template <typename T, typename I = int64_t>
FAE_HD T alibi_bias(T slope, I pos, I key) {
  const I d = pos - key;
  return -slope * T(d < 0 ? -d : d);
}

FAE_ISA_NAMESPACE_END
}  // namespace fae
