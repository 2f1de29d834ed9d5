// One scheduling pass over the tiles of every sequence of a call (include from an ISA unit, see
// vec.h): sequence b owns tiles first(b) .. first(b + 1) - 1 of one parallel_for, so that a batch
// of many short sequences still gives every thread work.
#pragma once
#include <cstdint>

#include "common/seqlens.h"
#include "cpu/buffer.h"

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

}  // namespace fae::cpu::FAE_CPU_ISA
