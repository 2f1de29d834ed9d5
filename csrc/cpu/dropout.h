// Vector form of dropout's keep mask (common/philox.h; include from an ISA unit, see vec.h): W
// Philox generators side by side, one per lane, giving bitwise the words of fae::philox4x32.
// Where the vector type has the 64-bit form (vec.h's kPhilox64) the even and the odd lanes'
// generators run in the low halves of 64-bit lanes: one vpmuludq gives a round's lo word in place
// and its hi word one shuffle away, with no blends (12 instead of 18 instructions a round per 16
// lanes on AVX-512); the words go back to 32-bit lanes once, after the last round.
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
  // Groups of W generators run at once: two with 64-bit lanes and 32 registers (AVX-512), so that
  // a round has eight independent multiply chains instead of four.
  static constexpr int kG = V::kPhilox64 && W >= 16 ? 2 : 1;

  uint64_t offset;
  uint32_t threshold;
  float scale;  // 1 / (1 - p)
  int64_t heads_q;
  uint32_t k0[kPhiloxRounds], k1[kPhiloxRounds];  // the round keys

  explicit Dropout(const FwdParams& p)
      : offset(p.dropout_offset), threshold(dropout_threshold(p.dropout_p)), scale(dropout_scale(p.dropout_p)),
        heads_q(p.heads_q) {
    k0[0] = uint32_t(p.dropout_seed);
    k1[0] = uint32_t(p.dropout_seed >> 32);
    for (int r = 1; r < kPhiloxRounds; ++r) {
      k0[r] = k0[r - 1] + kPhiloxW0;
      k1[r] = k1[r - 1] + kPhiloxW1;
    }
  }

  // Round r on generators whose words c[0 .. 4) sit in the low halves of 64-bit lanes: a
  // product's low half is the lo word as it stands, its high half the hi word.
  void round64(U c[4], int r) const {
    const U p0 = V::u_mul64(kPhiloxM0, c[0]), p1 = V::u_mul64(kPhiloxM1, c[2]);
    c[0] = V::u_xor3(V::u_hi64(p1), c[1], V::u_set1(k0[r]));
    c[1] = p1;
    c[2] = V::u_xor3(V::u_hi64(p0), c[3], V::u_set1(k1[r]));
    c[3] = p0;
  }

  // The four words of N groups of counters (c0[n], c1, c2, offset), lane by lane: out[n][w] is
  // word w of group n.
  template <int N>
  void words(const U* c0, U c1, U c2, U (*out)[4]) const {
    const U c3 = V::u_set1(uint32_t(offset));
    if constexpr (V::kPhilox64) {  // the even lanes' generators in e, the odd lanes' in o
      const U c1o = V::u_odd(c1), c2o = V::u_odd(c2);
      U e[N][4], o[N][4];
      for (int n = 0; n < N; ++n) {
        e[n][0] = c0[n], e[n][1] = c1, e[n][2] = c2, e[n][3] = c3;
        o[n][0] = V::u_odd(c0[n]), o[n][1] = c1o, o[n][2] = c2o, o[n][3] = c3;
      }
      for (int r = 0; r < kPhiloxRounds; ++r)
        for (int n = 0; n < N; ++n) {
          round64(e[n], r);
          round64(o[n], r);
        }
      for (int n = 0; n < N; ++n)
        for (int w = 0; w < 4; ++w) out[n][w] = V::u_pack64(e[n][w], o[n][w]);
    } else {
      for (int n = 0; n < N; ++n) {
        U x0 = c0[n], x1 = c1, x2 = c2, x3 = c3;
        for (int r = 0; r < kPhiloxRounds; ++r) {
          U hi0, hi1;
          const U lo0 = V::u_mulhilo(kPhiloxM0, x0, &hi0), lo1 = V::u_mulhilo(kPhiloxM1, x2, &hi1);
          x0 = V::u_xor(V::u_xor(hi1, x1), V::u_set1(k0[r]));
          x1 = lo1;
          x2 = V::u_xor(V::u_xor(hi0, x3), V::u_set1(k1[r]));
          x3 = lo0;
        }
        out[n][0] = x0, out[n][1] = x1, out[n][2] = x2, out[n][3] = x3;
      }
    }
  }

  // Lanes are W (row, head) columns of sequence b: rows[l], heads[l]. Calls f(j, multipliers)
  // for the keys j = k0 .. k0 + nk - 1, in groups of four.
  template <class F>
  void columns(int64_t b, const uint32_t* rows, const uint32_t* heads, int64_t k0, int64_t nk, F&& f) const {
    const U r = V::u_load(rows), bh = V::u_add(V::u_load(heads), V::u_set1(uint32_t(b * heads_q)));
    for (int64_t g = k0 / 4; g * 4 < k0 + nk;) {
      const int N = kG == 2 && (g + 1) * 4 < k0 + nk ? 2 : 1;  // the groups needed
      U c0[kG], u[kG][4];
      for (int n = 0; n < kG; ++n) c0[n] = V::u_set1(uint32_t(g + n));
      if (N == kG) words<kG>(c0, r, bh, u);
      else words<1>(c0, r, bh, u);
      for (int n = 0; n < N; ++n)
        for (int w = 0; w < 4; ++w) {
          const int64_t j = (g + n) * 4 + w;
          if (j >= k0 && j < k0 + nk) f(j - k0, V::keep_mult(u[n][w], threshold, scale));
        }
      g += N;
    }
  }

  // The multipliers of keys k0 .. k0 + n - 1 of row `row`, head h of sequence b into mult[0 .. n):
  // lanes are W groups of four keys, put in key order by interleave4; the scalar loop only where
  // a block of 4W keys crosses k0 or k0 + n.
  void row(int64_t b, int64_t h, int64_t row, int64_t k0, int64_t n, float* mult) const {
    const U r = V::u_set1(uint32_t(row)), bh = V::u_set1(uint32_t(b * heads_q + h)), iota = V::u_load(kIota);
    alignas(64) float edge[4][W];
    for (int64_t g0 = k0 / 4; g0 * 4 < k0 + n;) {
      const int N = kG == 2 && (g0 + W) * 4 < k0 + n ? 2 : 1;  // the blocks needed
      U c0[kG], u[kG][4];
      for (int i = 0; i < kG; ++i) c0[i] = V::u_add(V::u_set1(uint32_t(g0 + i * W)), iota);
      if (N == kG) words<kG>(c0, r, bh, u);
      else words<1>(c0, r, bh, u);
      for (int i = 0; i < N; ++i) {
        R m[4];
        for (int w = 0; w < 4; ++w) m[w] = V::keep_mult(u[i][w], threshold, scale);
        const int64_t i0 = (g0 + i * W) * 4 - k0;  // the index of lane 0's word 0
        if (i0 >= 0 && i0 + 4 * W <= n) {  // all 4W keys inside
          V::interleave4(m);
          for (int j = 0; j < 4; ++j) V::store(mult + i0 + j * W, m[j]);
          continue;
        }
        for (int w = 0; w < 4; ++w) V::store(edge[w], m[w]);
        for (int64_t l = 0; l < W; ++l)
          for (int w = 0; w < 4; ++w) {
            const int64_t j = i0 + 4 * l + w;
            if (j >= 0 && j < n) mult[j] = edge[w][l];
          }
      }
      g0 += N * W;
    }
  }
};

}  // namespace fae::cpu::FAE_CPU_ISA
