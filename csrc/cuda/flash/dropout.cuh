// Attention dropout (common/philox.h) on the m16n8 accumulator fragments of the CUDA kernels'
// feature (kMod) instances, bit for bit the keep mask of the CPU kernels. A thread owns rows g and
// g + 8 and columns 2t, 2t + 1 of each n8 tile; one Philox call covers a row's 4 keys of one word
// group, i.e. the columns of the lane pair (t, t ^ 1). So each thread of a pair computes one of
// the pair's two rows (row g for even t, g + 8 for odd t), turns its 4 words into 4 keep bits, and
// one shuffle per m16 tile gives each its partner's: one Philox call per (m16, n8) tile per
// thread. The round keys are computed on the host and read from the kernel parameters (constant
// memory: no registers, no key schedule in the kernel). The launcher passes Dropout::of(p); the
// kernels test `on` (block-uniform) and generate the bits just before they use them.
#pragma once

#include <cstdint>

#include "common/params.h"
#include "common/philox.h"
#include "cuda/primitives.cuh"

namespace fae::cuda {

struct Dropout {
  uint32_t key[kPhiloxRounds][2];  // round r's key: seed's halves plus r times the increments
  uint32_t threshold;              // kept <=> word >= threshold
  uint32_t offset;                 // counter word 3
  uint32_t heads_q;
  float scale;                     // 1 / (1 - p), of the kept probabilities
  bool on;

  static Dropout of(const FwdParams& p) {
    Dropout d{};
    d.on = has_dropout(p);
    if (!d.on) return d;
    uint32_t k0 = uint32_t(p.dropout_seed), k1 = uint32_t(p.dropout_seed >> 32);
    for (int r = 0; r < kPhiloxRounds; ++r, k0 += kPhiloxW0, k1 += kPhiloxW1) d.key[r][0] = k0, d.key[r][1] = k1;
    d.threshold = dropout_threshold(p.dropout_p);
    d.offset = uint32_t(p.dropout_offset);
    d.heads_q = uint32_t(p.heads_q);
    d.scale = dropout_scale(p.dropout_p);
    return d;
  }

  // The keep bits of word group j4 of row i of head bh = b * heads_q + h: bit w = word w kept.
  __device__ __forceinline__ uint32_t nibble(uint32_t j4, uint32_t i, uint32_t bh) const {
    Philox4 c{{j4, i, bh, offset}};
#pragma unroll
    for (int r = 0; r < kPhiloxRounds; ++r) c = philox_round(c, key[r][0], key[r][1]);
    return uint32_t(c.w[0] >= threshold) | uint32_t(c.w[1] >= threshold) << 1 | uint32_t(c.w[2] >= threshold) << 2 |
           uint32_t(c.w[3] >= threshold) << 3;
  }

  // Keep bits of this thread's elements of MT x NT accumulator tiles of sequence b, head h:
  // element (mt, nt, i) is query row row0 + mt * 16 + 8 * (i / 2) and key key0 + nt * 8 + i % 2
  // (row0, key0: this thread's fragment row g and column 2t, positions in the sequence; key0 - 2t
  // a multiple of 8). Element (mt, nt, i) is kept iff bit 4 nt + i of bits[mt] is set.
  template <int MT, int NT>
  __device__ __forceinline__ void bits(uint32_t (&out)[MT], int b, int h, int64_t row0, int64_t key0) const {
    static_assert(NT <= 8, "4 bits per n8 tile in one 32-bit word");
    const int t = int(threadIdx.x % 4), odd = t & 1;
    const uint32_t bh = uint32_t(b) * heads_q + uint32_t(h);
    const uint32_t j4 = uint32_t((key0 - 2 * t) / 4 + (t >> 1));  // this lane pair's word group in tile 0
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      uint32_t own = 0;  // row g (even t) or g + 8 (odd t): 4 bits per n8 tile
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) own |= nibble(j4 + 2 * nt, uint32_t(row0 + mt * 16 + 8 * odd), bh) << (4 * nt);
      const uint32_t other = __shfl_xor_sync(0xffffffffu, own, 1);
      // This thread's columns are words 2 odd and 2 odd + 1 of each group: row g's bits to 4 nt +
      // {0, 1}, row g + 8's to 4 nt + {2, 3}.
      const uint32_t lo = (odd ? other : own) >> (2 * odd), hi = (odd ? own : other) >> (2 * odd);
      out[mt] = (lo & 0x33333333u) | (hi & 0x33333333u) << 2;
    }
  }

  // Whether element (nt, i) of a tile with keep bits `b` is kept.
  __device__ __forceinline__ static bool kept(uint32_t b, int nt, int i) { return (b >> (4 * nt + i)) & 1u; }

  // x times the keep multiplier of element (nt, i): scale or 0 (a product, as on the CPU, so that
  // a dropped NaN stays NaN: 0 * NaN).
  __device__ __forceinline__ float apply(float x, uint32_t b, int nt, int i) const {
    return x * (kept(b, nt, i) ? scale : 0.0f);
  }
};

}  // namespace fae::cuda
