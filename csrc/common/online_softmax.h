// Online-softmax helpers, written once and used under the same names by the CPU kernels, the
// CUDA kernels and the Python test oracle. Scores are kept in the log2 domain: s2 = q.k * scale_log2,
// so exp(q.k*scale - m) == exp2(s2 - m2).
#pragma once
#include <cmath>
#include <limits>
#include "common/mask.h"

namespace fae {

template <typename T>
FAE_HD T neg_inf() { return -std::numeric_limits<T>::infinity(); }

// The value subtracted before exp2 for a row whose running max is m: a row that has seen no
// finite score yet (m == -inf) uses 0 so that exp2(-inf - 0) == 0 instead of NaN.
template <typename T>
FAE_HD T exp_base(T m) { return m == neg_inf<T>() ? T(0) : m; }

// Factor that rescales the running sum and output when the row max moves from m_old to m_new.
// `exp2` is the kernel's exponential (a fast approximate one on GPUs, std::exp2 by default).
template <typename T, typename Exp2>
FAE_HD T rescale_factor(T m_old, T m_new, Exp2 exp2) {
  return m_old == neg_inf<T>() ? T(0) : T(exp2(m_old - exp_base(m_new)));
}
template <typename T>
FAE_HD T rescale_factor(T m_old, T m_new) {
  return rescale_factor(m_old, m_new, [](T x) { return T(std::exp2(x)); });
}

// Natural-log logsumexp of a finished row from its log2-domain max and its sum of exp2 terms;
// an empty row (sum 0) gives -inf.
template <typename T>
FAE_HD T finish_lse(T m2, T sum) {
  constexpr T kLn2 = T(0.693147180559945309417232121458176568);
  return sum > T(0) ? (m2 + T(std::log2(sum))) * kLn2 : neg_inf<T>();
}

// 1/sum for the final normalisation; an empty row keeps out = 0.
template <typename T>
FAE_HD T inv_sum(T sum) { return sum > T(0) ? T(1) / sum : T(0); }

}  // namespace fae
