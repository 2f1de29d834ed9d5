// One scheduling pass over the tiles of every sequence of a call (include from an ISA unit, see
// vec.h): sequence b owns tiles first(b) .. first(b + 1) - 1 of one parallel_for, so that a batch
// of many short sequences still gives every thread work.
#pragma once
#include <cstdint>

#include "common/seqlens.h"
#include "cpu/buffer.h"
#include "cpu/convert.h"

namespace fae::cpu::FAE_CPU_ISA {

class SeqTiles {
 public:
  // count(b): the number of tiles of sequence b.
  template <class Count>
  SeqTiles(int64_t batch, Count count) : first_(batch + 1), batch_(batch) {
    int64_t* f = first_.get();
    f[0] = 0;
    for (int64_t b = 0; b < batch; ++b) f[b + 1] = f[b] + count(b);
  }
  int64_t total() const { return first_.get()[batch_]; }
  int64_t first(int64_t b) const { return first_.get()[b]; }
  // The sequence that owns tile t (0 <= t < total()).
  int64_t seq_of(int64_t t) const {
    const int64_t* f = first_.get();
    int64_t lo = 0, hi = batch_;  // f[lo] <= t < f[hi]
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      (f[mid] <= t ? lo : hi) = mid;
    }
    return lo;
  }

 private:
  Buffer<int64_t> first_;
  int64_t batch_;
};

// Zero in the gradient rows of the key rows of sequence s's batch that are not its keys (before
// leftpad_k, from seqused_k on; they take part in no score), for batches of their own (not
// packed, paged or shared through kv_batch_idx). grad: row 0 of one head of the batch, rows rs
// elements apart, d columns.
template <typename T>
void zero_unused_key_rows(const FwdParams& p, const Seq& s, T* grad, int64_t rs, int64_t d) {
  if (p.cu_seqlens_k || p.block_table || p.kv_batch_idx) return;
  for (int64_t r = 0; r < p.seqlen_k; ++r)
    if (r < s.k_row0 || r >= s.k_row0 + s.seqlen_k)
      for (int64_t e = 0; e < d; ++e) store_from(grad + r * rs + e, 0.f);
}

}  // namespace fae::cpu::FAE_CPU_ISA
