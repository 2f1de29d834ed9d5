// The one mask rule (docs/semantics.md), usable on host and device.
#pragma once
#include <cstdint>
#include "common/params.h"
#include "common/portability.h"

namespace fae {
FAE_ISA_NAMESPACE_BEGIN

// Keys visible to query row i form one contiguous range [lo, hi] (empty when lo > hi).
struct KeyRange {
  int64_t lo, hi;
  FAE_HD bool empty() const { return lo > hi; }
};

FAE_HD KeyRange visible_keys(int64_t row, int64_t seqlen_k, int64_t align_offset,
                             int64_t window_left, int64_t window_right) {
  const int64_t center = row + align_offset;
  int64_t lo = window_left >= kNoWindow ? 0 : center - window_left;
  int64_t hi = window_right >= kNoWindow ? seqlen_k - 1 : center + window_right;
  if (lo < 0) lo = 0;
  if (hi > seqlen_k - 1) hi = seqlen_k - 1;
  return {lo, hi};
}

FAE_HD KeyRange visible_keys(int64_t row, const FwdParams& p) {
  return visible_keys(row, p.seqlen_k, p.align_offset, p.window_left, p.window_right);
}

// Union of the ranges of rows [r0, r1): the key span a query tile must visit.
FAE_HD KeyRange visible_keys_of_rows(int64_t r0, int64_t r1, const FwdParams& p) {
  const KeyRange a = visible_keys(r0, p), b = visible_keys(r1 - 1, p);
  return {a.lo, b.hi};  // both bounds are monotone in the row index
}

// Query rows that can see key j: the inverse of visible_keys, [lo, hi] clipped to [0, Sq).
FAE_HD KeyRange visible_rows(int64_t key, const FwdParams& p) {
  int64_t lo = p.window_right >= kNoWindow ? 0 : key - p.align_offset - p.window_right;
  int64_t hi = p.window_left >= kNoWindow ? p.seqlen_q - 1 : key - p.align_offset + p.window_left;
  if (lo < 0) lo = 0;
  if (hi > p.seqlen_q - 1) hi = p.seqlen_q - 1;
  return {lo, hi};
}

FAE_ISA_NAMESPACE_END
}  // namespace fae
