// Online-softmax helpers, written once and used under the same names by the CPU kernels, the
// CUDA kernels and the Python test oracle (tests/oracle.py). Scores are kept in the log2 domain:
// s2 = q.k * scale_log2 with scale_log2 = scale * kLog2e, so exp(q.k*scale - m) == exp2(s2 - m2).
//
// Rows that see no key: the running max stays -inf, the sum 0, and the finished row has out = 0
// and lse = -inf; the backward reads that lse as "no probability anywhere" (lse2_for_backward).
// NaN: a NaN score makes the row's max and sum NaN; every helper below passes it on, so out, lse
// and the gradients of that row are NaN (docs/semantics.md).
#pragma once
#include <cmath>
#include <limits>
#include "common/portability.h"

namespace fae {

constexpr double kLog2e = 1.442695040888963407359924681001892137;  // log2(e)
constexpr double kLn2 = 0.693147180559945309417232121458176568;    // ln(2)

FAE_ISA_NAMESPACE_BEGIN

template <typename T>
FAE_HD T neg_inf() { return -std::numeric_limits<T>::infinity(); }

// The value subtracted before exp2 for a row whose running max is m: a row that has seen no
// finite score yet (m == -inf) uses 0 so that exp2(-inf - 0) == 0 instead of NaN.
template <typename T>
FAE_HD T exp_base(T m) { return m == neg_inf<T>() ? T(0) : m; }

// Factor that rescales the running sum and output when the row max moves from m_old to m_new.
// `exp2` is the kernel's exponential (a fast approximate one on GPUs, std::exp2 by default). A
// row with no finite score yet (m_old == -inf) gets exp2(-inf) == 0 with no test: m_new >= m_old,
// so exp_base(m_new) is finite or +inf.
template <typename T, typename Exp2>
FAE_HD T rescale_factor(T m_old, T m_new, Exp2 exp2) {
  return T(exp2(m_old - exp_base(m_new)));
}
template <typename T>
FAE_HD T rescale_factor(T m_old, T m_new) {
  return rescale_factor(m_old, m_new, [](T x) { return T(std::exp2(x)); });
}

// Lazy rescaling (kernels that hold a row's output in registers): the exponentials of a row may
// be taken against a stale reference max m_ref, skipping the rescale of the sum and output, as
// long as the row's true max exceeds it by at most kRescaleSlack (log2 units). Every term
// exp2(s2 - m_ref) is then at most 2^kRescaleSlack: far from overflow in float and in 16-bit P,
// and the finished row is the same (lse2_of(m_ref, sum), sum / out in the same reference). A row
// whose reference is still -inf (no finite score yet) rescales at its first finite score; a NaN
// max never asks for a rescale (its NaN terms make the row NaN anyway).
constexpr float kRescaleSlack = 8.0f;
template <typename T>
FAE_HD bool needs_rescale(T m_ref, T m_new) { return m_new > m_ref + T(kRescaleSlack); }

// Log2-domain logsumexp of a finished row (or of one key split of it) from its log2-domain max m2
// and its sum of exp2 terms: -inf for an empty row (sum 0), NaN for a NaN sum.
template <typename T>
FAE_HD T lse2_of(T m2, T sum) { return sum == T(0) ? neg_inf<T>() : m2 + T(std::log2(sum)); }

// The natural-log lse the API returns.
template <typename T>
FAE_HD T finish_lse(T m2, T sum) { return lse2_of(m2, sum) * T(kLn2); }

// 1/sum for the final normalisation: an empty row keeps out = 0; a NaN sum gives NaN.
template <typename T>
FAE_HD T inv_sum(T sum) { return sum == T(0) ? T(0) : T(1) / sum; }

// The backward's lse in the log2 domain, P = exp2(s2 - lse2): a row that saw no key (lse -inf)
// maps to +inf, so that every P of the row is exp2(-inf) = 0 and its gradients are 0; NaN stays
// NaN, so the gradients of a NaN row are NaN.
template <typename T>
FAE_HD T lse2_for_backward(T lse) { return lse == neg_inf<T>() ? -neg_inf<T>() : lse * T(kLog2e); }

// True for the backward lse2 of a row that saw no key (the kernels may skip such rows).
template <typename T>
FAE_HD bool sees_no_key(T lse2) { return lse2 == -neg_inf<T>(); }

FAE_ISA_NAMESPACE_END

}  // namespace fae
