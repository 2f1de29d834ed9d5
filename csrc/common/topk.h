// Streaming top-k of (score, key index) candidates, shared by the CPU and CUDA top-k kernels.
// The order (docs/interpretability.md): a higher score wins; NaN counts as the highest score (as
// torch.topk and torch.argmax); equal scores go to the lower key index. The k best candidates
// seen so far are kept in a heap whose root is the worst of them, so a new candidate is one
// comparison with the root. S and I are pointer-like (raw pointers on the CPU, shared-memory
// pointers in a CUDA kernel): only s[i] reads and assignments are used; F is the score type.
#pragma once
#include <cstdint>
#include "common/portability.h"

namespace fae {
FAE_ISA_NAMESPACE_BEGIN

// Does candidate (sa, ja) rank before (sb, jb)?
template <class F>
FAE_HD bool ranks_before(F sa, int64_t ja, F sb, int64_t jb) {
  if (sa != sa) return sb == sb || ja < jb;  // NaN ranks first
  if (sb != sb) return false;
  return sa > sb || (sa == sb && ja < jb);
}

template <class F, class S, class I>
FAE_HD bool entry_before(S s, I idx, int a, int b) {
  return ranks_before<F>(F(s[a]), int64_t(idx[a]), F(s[b]), int64_t(idx[b]));
}

template <class F, class S, class I>
FAE_HD void heap_swap(S s, I idx, int a, int b) {
  const F sa = s[a];
  const int64_t ia = idx[a];
  s[a] = F(s[b]);
  idx[a] = int64_t(idx[b]);
  s[b] = sa;
  idx[b] = ia;
}

// Restores the heap below entry i (every child ranks before its parent) among n entries.
template <class F, class S, class I>
FAE_HD void heap_sift_down(S s, I idx, int n, int i) {
  for (;;) {
    int worst = i;
    for (int c = 2 * i + 1; c <= 2 * i + 2 && c < n; ++c)
      if (entry_before<F>(s, idx, worst, c)) worst = c;
    if (worst == i) return;
    heap_swap<F>(s, idx, i, worst);
    i = worst;
  }
}

// Offers candidate (score, j) to a heap of n <= k entries (n is updated).
template <class F, class S, class I>
FAE_HD void topk_offer(S s, I idx, int& n, int k, F score, int64_t j) {
  if (n < k) {
    int i = n++;
    s[i] = score;
    idx[i] = j;
    while (i > 0) {
      const int parent = (i - 1) / 2;
      if (!entry_before<F>(s, idx, parent, i)) return;
      heap_swap<F>(s, idx, i, parent);
      i = parent;
    }
  } else if (ranks_before<F>(score, j, F(s[0]), int64_t(idx[0]))) {
    s[0] = score;
    idx[0] = j;
    heap_sift_down<F>(s, idx, n, 0);
  }
}

// Sorts the n heap entries in place, best first.
template <class F, class S, class I>
FAE_HD void heap_sort_best_first(S s, I idx, int n) {
  for (int end = n - 1; end > 0; --end) {
    heap_swap<F>(s, idx, 0, end);  // the worst remaining goes last
    heap_sift_down<F>(s, idx, end, 0);
  }
}

FAE_ISA_NAMESPACE_END
}  // namespace fae
