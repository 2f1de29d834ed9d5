// Vector form of dropout's keep mask (common/philox.h; include from an ISA unit, see vec.h): W
// Philox generators side by side, one per lane, giving bitwise the words of fae::philox4x32.
#pragma once
#include "common/philox.h"
#include "cpu/vec.h"

namespace fae::cpu::FAE_CPU_ISA {

template <class V>
struct Dropout {
  using R = typename V::R;
  using U = typename V::U;
  static constexpr int W = V::W;
  static constexpr uint32_t kIota[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  static_assert(W <= 16, "kIota covers the lanes");

  uint64_t seed, offset;
  uint32_t threshold;
  float scale;  // 1 / (1 - p)
  int64_t heads_q;

  explicit Dropout(const FwdParams& p)
      : seed(p.dropout_seed), offset(p.dropout_offset), threshold(dropout_threshold(p.dropout_p)),
        scale(dropout_scale(p.dropout_p)), heads_q(p.heads_q) {}

  // The keep multipliers (scale or 0) of the four words of counters (c0, c1, c2, offset), lane
  // by lane: out[w] = word w.
  void group(U c0, U c1, U c2, R out[4]) const {
    U c3 = V::u_set1(uint32_t(offset));
    uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
    for (int r = 0; r < kPhiloxRounds; ++r) {
      U hi0, hi1;
      const U lo0 = V::u_mulhilo(kPhiloxM0, c0, &hi0), lo1 = V::u_mulhilo(kPhiloxM1, c2, &hi1);
      c0 = V::u_xor(V::u_xor(hi1, c1), V::u_set1(k0));
      c1 = lo1;
      c2 = V::u_xor(V::u_xor(hi0, c3), V::u_set1(k1));
      c3 = lo0;
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    out[0] = V::keep_mult(c0, threshold, scale);
    out[1] = V::keep_mult(c1, threshold, scale);
    out[2] = V::keep_mult(c2, threshold, scale);
    out[3] = V::keep_mult(c3, threshold, scale);
  }

  // Lanes are W (row, head) columns of sequence b: rows[l], heads[l]. Calls f(j, multipliers)
  // for the keys j = k0 .. k0 + nk - 1, in groups of four.
  template <class F>
  void columns(int64_t b, const uint32_t* rows, const uint32_t* heads, int64_t k0, int64_t nk, F&& f) const {
    const U r = V::u_load(rows), bh = V::u_add(V::u_load(heads), V::u_set1(uint32_t(b * heads_q)));
    R m[4];
    for (int64_t g = k0 / 4; g * 4 < k0 + nk; ++g) {
      group(V::u_set1(uint32_t(g)), r, bh, m);
      for (int w = 0; w < 4; ++w)
        if (g * 4 + w >= k0 && g * 4 + w < k0 + nk) f(g * 4 + w - k0, m[w]);
    }
  }

  // The multipliers of keys k0 .. k0 + n - 1 of row `row`, head h of sequence b into mult[0 .. n):
  // lanes are W groups of four keys.
  void row(int64_t b, int64_t h, int64_t row, int64_t k0, int64_t n, float* mult) const {
    const U r = V::u_set1(uint32_t(row)), bh = V::u_set1(uint32_t(b * heads_q + h));
    alignas(64) float words[4][W];
    R m[4];
    for (int64_t g0 = k0 / 4; g0 * 4 < k0 + n; g0 += W) {
      group(V::u_add(V::u_set1(uint32_t(g0)), V::u_load(kIota)), r, bh, m);
      for (int w = 0; w < 4; ++w) V::store(words[w], m[w]);
      for (int64_t l = 0; l < W; ++l)
        for (int w = 0; w < 4; ++w) {
          const int64_t i = (g0 + l) * 4 + w - k0;
          if (i >= 0 && i < n) mult[i] = words[w][l];
        }
    }
  }
};

}  // namespace fae::cpu::FAE_CPU_ISA
