// Attention dropout's random bits (docs/semantics.md section 13), usable on host and device.
// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) maps a
// 128-bit counter and a 64-bit key to 128 random bits. The keep decision of element (b, h, i, j)
// (sequence b, query head h, query row i and key j of that sequence) is a pure function of
// (seed, offset, b, h, i, j), so every backend and the backward regenerate the same mask:
//   key     = (seed & 0xffffffff, seed >> 32)
//   counter = (j / 4, i, b * heads_q + h, offset & 0xffffffff)
//   u       = word j % 4 of philox(counter, key)
//   kept   <=> u >= threshold,  threshold = round(p * 2^32) clamped to 2^32 - 1 (p: float dropout_p)
// Kept probabilities are scaled by 1 / (1 - p) (float); dropped ones are 0.
#pragma once
#include <cstdint>
#include "common/params.h"
#include "common/portability.h"

namespace fae {
FAE_ISA_NAMESPACE_BEGIN

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;  // key schedule increments
constexpr int kPhiloxRounds = 10;

struct Philox4 { uint32_t w[4]; };

// The high and low 32 bits of a * b.
FAE_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t prod = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(prod >> 32);
  return uint32_t(prod);
}

// One Philox round of counter c under round key (k0, k1).
FAE_HD Philox4 philox_round(const Philox4& c, uint32_t k0, uint32_t k1) {
  uint32_t hi0, hi1;
  const uint32_t lo0 = mulhilo32(kPhiloxM0, c.w[0], &hi0);
  const uint32_t lo1 = mulhilo32(kPhiloxM1, c.w[2], &hi1);
  return Philox4{{hi1 ^ c.w[1] ^ k0, lo1, hi0 ^ c.w[3] ^ k1, lo0}};
}

// Philox-4x32 with kPhiloxRounds rounds of counter c under key (k0, k1).
FAE_HD Philox4 philox4x32(Philox4 c, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < kPhiloxRounds; ++r) {
    c = philox_round(c, k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return c;
}

FAE_HD bool has_dropout(const FwdParams& p) { return p.dropout_p > 0.f; }

// u >= threshold keeps an element: P(dropped) = threshold / 2^32, the nearest to dropout_p.
FAE_HD uint32_t dropout_threshold(float dropout_p) {
  const double t = double(dropout_p) * 4294967296.0 + 0.5;
  return t >= 4294967295.0 ? 0xffffffffu : uint32_t(t);
}

// The factor of kept probabilities.
FAE_HD float dropout_scale(float dropout_p) { return 1.f / (1.f - dropout_p); }

// The four random words of key group j / 4 of row i of head bh = b * heads_q + h.
FAE_HD Philox4 dropout_bits(uint64_t seed, uint64_t offset, uint64_t bh, uint64_t i, uint64_t j4) {
  return philox4x32(Philox4{{uint32_t(j4), uint32_t(i), uint32_t(bh), uint32_t(offset)}}, uint32_t(seed),
                    uint32_t(seed >> 32));
}

// Whether element (b, h, i, j) of a call with these params is kept.
FAE_HD bool keep(const FwdParams& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  const Philox4 r = dropout_bits(p.dropout_seed, p.dropout_offset, uint64_t(b * p.heads_q + h), uint64_t(i),
                                 uint64_t(j / 4));
  return r.w[j % 4] >= dropout_threshold(p.dropout_p);
}

FAE_ISA_NAMESPACE_END
}  // namespace fae
