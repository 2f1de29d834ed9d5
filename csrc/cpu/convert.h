// Scalar conversions between the storage dtypes and the accumulation types (float, double).
// Internal linkage (anonymous namespace): the per-ISA translation units include this header
// compiled with different instruction sets, and must not share out-of-line copies (see vec.h).
#pragma once
#include <cstdint>
#include <cstring>

namespace fae::cpu {
namespace {

struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float to_float(bf16 x) { return bits_to_float(uint32_t(x.bits) << 16); }

inline bf16 to_bf16(float f) {  // round to nearest even; NaN stays a (quiet) NaN
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40)};
  return {uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

inline float to_float(f16 x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  const uint32_t exp = (x.bits >> 10) & 0x1fu, man = x.bits & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
  // subnormal or zero: man * 2^-24
  const float mag = float(man) * 5.9604644775390625e-8f;
  return sign ? -mag : mag;
}

inline f16 to_f16(float f) {  // round to nearest even, overflow to inf, NaN stays NaN
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {uint16_t(sign | 0x7e00u)};
  if (a >= 0x477ff000u) return {uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: inf
  if (a < 0x38800000u) {  // result is subnormal (or zero) in f16: scale to units of 2^-24
    const float m = bits_to_float(a) * 16777216.0f;  // exact: power-of-two scaling
    const float r = __builtin_nearbyintf(m);         // default rounding mode: nearest even
    return {uint16_t(sign | uint16_t(r))};
  }
  const uint32_t e = (a >> 23) - 112u, man = a & 0x7fffffu;
  uint32_t h = (e << 10) | (man >> 13);
  const uint32_t rest = man & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return {uint16_t(sign | h)};
}

template <typename Acc> inline Acc load_as(const float* p) { return Acc(*p); }
template <typename Acc> inline Acc load_as(const double* p) { return Acc(*p); }
template <typename Acc> inline Acc load_as(const bf16* p) { return Acc(to_float(*p)); }
template <typename Acc> inline Acc load_as(const f16* p) { return Acc(to_float(*p)); }

inline void store_from(float* p, float x) { *p = x; }
inline void store_from(double* p, double x) { *p = x; }
inline void store_from(bf16* p, float x) { *p = to_bf16(x); }
inline void store_from(f16* p, float x) { *p = to_f16(x); }

}  // namespace
}  // namespace fae::cpu
