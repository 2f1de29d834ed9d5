// Attention dropout (common/philox.h) on the m16n8 accumulator fragments of the CUDA kernels'
// feature (kMod) instances, bit for bit the keep mask of the CPU kernels. A thread owns rows g and
// g + 8 and columns 2t, 2t + 1 of each n8 tile; one Philox call covers a row's 4 keys of one word
// group, i.e. the columns of the lane pair (t, t ^ 1). So each thread of a pair computes one of
// the pair's two rows (row g for even t, g + 8 for odd t), turns its 4 words into 4 keep bits, and
// one shuffle per m16 tile gives each its partner's: one Philox call per (m16, n8) tile per
// thread. The seed and offset come from the kernel parameters or, when torch's generator drew
// them on the device (FwdParams::dropout_rng), from device memory: the host never reads them
// back, so a call does not wait for the draw and a CUDA graph replays fresh draws. The round
// keys follow from the seed in the rounds (one add per key and round). The launcher passes
// Dropout::of(p), per launch; the kernels test `on` (block-uniform) and generate the bits just
// before they use them.
#pragma once

#include <cstdint>

#include "common/params.h"
#include "common/philox.h"
#include "cuda/primitives.cuh"

namespace fae::cuda {

struct Dropout {
  gptr<const uint4> rng;  // drawn: the int64 pair (seed, offset) in device memory
  uint64_t seed;          // else these
  uint32_t offset;
  uint32_t threshold;     // kept <=> word >= threshold
  uint32_t heads_q;
  float scale;            // 1 / (1 - p), of the kept probabilities
  bool on, drawn;

  // Announces the drawn pair to the emulator's next launch: built per launch.
  static Dropout of(const FwdParams& p) {
    Dropout d{};
    d.on = has_dropout(p);
    if (!d.on) return d;
    d.drawn = p.dropout_rng != nullptr;
    d.rng = gbuf(reinterpret_cast<const uint4*>(p.dropout_rng), d.drawn ? 1 : 0);
    d.seed = p.dropout_seed;
    d.offset = uint32_t(p.dropout_offset);
    d.threshold = dropout_threshold(p.dropout_p);
    d.heads_q = uint32_t(p.heads_q);
    d.scale = dropout_scale(p.dropout_p);
    return d;
  }

  // The generator's key (the seed's halves) and counter word 3 (the offset's low half). A drawn
  // pair is read again for each generator call (load_nc_here, an L1 hit): held across a tile's
  // calls, its registers made 255-register instances spill (backward D = 224 and 256).
  struct Key {
    uint32_t k0, k1, offset;
  };
  __device__ __forceinline__ Key key() const {
    if (!drawn) return Key{uint32_t(seed), uint32_t(seed >> 32), offset};
    const uint4 r = load_nc_here(rng);  // little-endian int64s: seed lo, seed hi, offset lo, hi
    return Key{r.x, r.y, r.z};
  }

  // The keep bits of word group j4 of row i of head bh = b * heads_q + h: bit w = word w kept.
  __device__ __forceinline__ uint32_t nibble(const Key& key, uint32_t j4, uint32_t i, uint32_t bh) const {
    const Philox4 c = philox4x32(Philox4{{j4, i, bh, key.offset}}, key.k0, key.k1);
    return uint32_t(c.w[0] >= threshold) | uint32_t(c.w[1] >= threshold) << 1 | uint32_t(c.w[2] >= threshold) << 2 |
           uint32_t(c.w[3] >= threshold) << 3;
  }

  // Keep bits of this thread's elements of MT x NT accumulator tiles of sequence b, head h:
  // element (mt, nt, i) is query row row0 + mt * 16 + 8 * (i / 2) and key key0 + nt * 8 + i % 2
  // (row0, key0: this thread's fragment row g and column 2t, positions in the sequence; key0 - 2t
  // a multiple of 8). Element (mt, nt, i) is kept iff bit 4 nt + i of bits[mt] is set. kCalls:
  // generator calls unrolled per m16 tile (the instance's register budget decides: bwd_traits.h).
  template <int MT, int NT, int kCalls = NT>
  __device__ __forceinline__ void bits(uint32_t (&out)[MT], int b, int h, int64_t row0, int64_t key0) const {
    static_assert(NT <= 8, "4 bits per n8 tile in one 32-bit word");
    const int t = int(threadIdx.x % 4), odd = t & 1;
    const uint32_t bh = uint32_t(b) * heads_q + uint32_t(h);
    const uint32_t j4 = uint32_t((key0 - 2 * t) / 4 + (t >> 1));  // this lane pair's word group in tile 0
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      uint32_t own = 0;  // row g (even t) or g + 8 (odd t): 4 bits per n8 tile
#pragma unroll kCalls
      for (int nt = 0; nt < NT; ++nt) own |= nibble(key(), j4 + 2 * nt, uint32_t(row0 + mt * 16 + 8 * odd), bh) << (4 * nt);
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
