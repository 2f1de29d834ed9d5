// The 16-bit floating-point storage types (bits only; arithmetic goes through float) and their
// exact software conversions, shared by the CPU kernels and the emulator's model of the GPU's
// cvt instructions (docs/emulator.md):
//   float -> f16 / bf16: IEEE round to nearest even, overflow to infinity, subnormals kept,
//                        NaN to the canonical NaN 0x7FFF (what cvt.rn.f16.f32 / .bf16.f32 give);
//   f16 / bf16 -> float: exact.
// Under nvcc the kernels convert with the cvt instructions themselves (primitives_device.cuh);
// only the storage types are defined there.
#pragma once
#include <cstdint>
#include <cstring>
#include "common/portability.h"

namespace fae {

struct half_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};

#if !defined(__CUDACC__)
FAE_ISA_NAMESPACE_BEGIN

inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

inline uint16_t f32_to_f16_bits(float x) {
  const uint32_t u = float_bits(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a >= 0x7F800000u) return a == 0x7F800000u ? uint16_t(sign | 0x7C00u) : uint16_t(0x7FFF);  // Inf / NaN
  if (a > 0x477FEFFFu) return uint16_t(sign | 0x7C00u);  // rounds to >= 65520: Inf
  if (a < 0x33000001u) return sign;                      // at most half the smallest subnormal: 0
  uint32_t res, rem;
  if (a >= 0x38800000u) {  // normal f16: rebias the exponent, keep 10 mantissa bits
    res = (a - 0x38000000u) >> 13;
    rem = a << 19;
  } else {  // subnormal f16: shift the full significand right
    const uint32_t shift = 0x7Eu - (a >> 23);
    const uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;
    res = mant >> shift;
    rem = mant << (32 - shift);
  }
  if (rem > 0x80000000u || (rem == 0x80000000u && (res & 1u))) ++res;
  return static_cast<uint16_t>(sign | res);
}

inline uint16_t f32_to_bf16_bits(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FFF;  // NaN
  uint32_t res = u >> 16;
  const uint32_t rem = u & 0xFFFFu;
  if (rem > 0x8000u || (rem == 0x8000u && (res & 1u))) ++res;
  return static_cast<uint16_t>(res);
}

inline float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0) {  // zero or subnormal: m * 2^-24 is exact in f32
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (e == 31) return bits_float(sign | 0x7F800000u | (m << 13));
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

inline float bf16_bits_to_f32(uint16_t b) { return bits_float(uint32_t(b) << 16); }

FAE_ISA_NAMESPACE_END
#endif

}  // namespace fae
