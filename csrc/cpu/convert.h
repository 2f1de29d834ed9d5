// Scalar conversions between the storage dtypes and the accumulation types (float, double), on
// the shared 16-bit definitions of common/fp16.h. Part of the per-ISA kernel source (see
// kernels.h): everything lives in the namespace fae::cpu::<isa>.
#pragma once
#include <cstdint>
#include "common/fp16.h"

#if !defined(FAE_CPU_ISA)
#error "cpu kernel headers are compiled per instruction set: define FAE_CPU_ISA first (see kernels.h)"
#endif

namespace fae::cpu::FAE_CPU_ISA {

using bf16 = fae::bf16_t;
using f16 = fae::half_t;

inline float to_float(bf16 x) { return bf16_bits_to_f32(x.bits); }
inline float to_float(f16 x) { return f16_bits_to_f32(x.bits); }
inline bf16 to_bf16(float f) { return {f32_to_bf16_bits(f)}; }
inline f16 to_f16(float f) { return {f32_to_f16_bits(f)}; }

template <typename Acc> inline Acc load_as(const float* p) { return Acc(*p); }
template <typename Acc> inline Acc load_as(const double* p) { return Acc(*p); }
template <typename Acc> inline Acc load_as(const bf16* p) { return Acc(to_float(*p)); }
template <typename Acc> inline Acc load_as(const f16* p) { return Acc(to_float(*p)); }

inline void store_from(float* p, float x) { *p = x; }
inline void store_from(double* p, double x) { *p = x; }
inline void store_from(bf16* p, float x) { *p = to_bf16(x); }
inline void store_from(f16* p, float x) { *p = to_f16(x); }

}  // namespace fae::cpu::FAE_CPU_ISA
