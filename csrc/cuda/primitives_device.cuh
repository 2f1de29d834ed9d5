// nvcc implementation of the primitives (included by primitives.cuh only). Inline PTX, sm_80+
// (stmatrix: sm_90+). Register layouts are those of docs/emulator.md.
#pragma once

#include <cstdint>
#include <type_traits>

namespace fae {

template <class T>
using gptr = T*;  // global memory pointer
template <class T>
using sptr = T*;  // shared memory pointer

template <class U, class T>
__device__ __forceinline__ U* ptr_cast(T* p) {
  return reinterpret_cast<U*>(p);
}

template <class T>
__device__ __forceinline__ sptr<T> dynamic_smem() {
  extern __shared__ __align__(128) unsigned char fae_dynamic_smem[];
  return reinterpret_cast<T*>(fae_dynamic_smem);
}

// *p for data no thread writes during the kernel (ld.global.nc).
template <class T>
__device__ __forceinline__ T load_nc(const T* p) {
  return __ldg(p);
}

// The same for 16 bytes, issued where it stands: asm volatile, so the compiler neither hoists
// it out of a loop nor merges it with another, and its registers live only until their use.
__device__ __forceinline__ uint4 load_nc_here(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- conversions (docs/emulator.md section 3.5) ----
__device__ __forceinline__ uint16_t f32_to_f16_bits(float x) {
  uint16_t r;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float x) {
  uint16_t r;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ float f16_bits_to_f32(uint16_t h) {
  float r;
  asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(h));
  return r;
}
__device__ __forceinline__ float bf16_bits_to_f32(uint16_t b) {
  return __uint_as_float(uint32_t(b) << 16);
}

// pack2<T>(lo, hi): lo -> bits [15:0] (like __floats2half2_rn). PTX cvt puts its first source high.
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<half_t>(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
template <>
__device__ __forceinline__ uint32_t pack2<bf16_t>(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ __forceinline__ float fast_exp2(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

// ---- tensor cores (T = half_t or bf16_t; f32 accumulators; d may alias c) ----

template <class T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             const float (&c)[4]) {
  static_assert(std::is_same_v<T, half_t> || std::is_same_v<T, bf16_t>, "mma inputs are half_t or bf16_t");
  if constexpr (std::is_same_v<T, half_t>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  }
}

template <class T>
__device__ __forceinline__ void mma_m16n8k8(float (&d)[4], const uint32_t (&a)[2], uint32_t b, const float (&c)[4]) {
  static_assert(std::is_same_v<T, half_t> || std::is_same_v<T, bf16_t>, "mma inputs are half_t or bf16_t");
  if constexpr (std::is_same_v<T, half_t>) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%8,%9,%10};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%8,%9,%10};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  }
}

// ---- ldmatrix (lane l supplies the address of row l%8 of matrix l/8) ----
template <class T>
__device__ __forceinline__ void ldmatrix_x1(uint32_t& r0, T* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r0) : "r"(smem_u32(p)));
}
template <class T>
__device__ __forceinline__ void ldmatrix_x2(uint32_t& r0, uint32_t& r1, T* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(smem_u32(p)));
}
template <class T>
__device__ __forceinline__ void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, T* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem_u32(p)));
}
template <class T>
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t& r0, T* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r0) : "r"(smem_u32(p)));
}
template <class T>
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t& r0, uint32_t& r1, T* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r0), "=r"(r1)
               : "r"(smem_u32(p)));
}
template <class T>
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, T* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem_u32(p)));
}

// ---- stmatrix (sm_90+; exact inverse of ldmatrix) ----
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FAE_STMATRIX(qual, regs, ...) \
  asm volatile("stmatrix.sync.aligned.m8n8." qual ".shared.b16 [%0], " regs ";\n" ::"r"(smem_u32(p)), __VA_ARGS__ : "memory")
#else
#define FAE_STMATRIX(qual, regs, ...) __trap()
#endif
template <class T>
__device__ __forceinline__ void stmatrix_x1(uint32_t r0, T* p) {
  FAE_STMATRIX("x1", "{%1}", "r"(r0));
}
template <class T>
__device__ __forceinline__ void stmatrix_x2(uint32_t r0, uint32_t r1, T* p) {
  FAE_STMATRIX("x2", "{%1,%2}", "r"(r0), "r"(r1));
}
template <class T>
__device__ __forceinline__ void stmatrix_x4(uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3, T* p) {
  FAE_STMATRIX("x4", "{%1,%2,%3,%4}", "r"(r0), "r"(r1), "r"(r2), "r"(r3));
}
template <class T>
__device__ __forceinline__ void stmatrix_x1_trans(uint32_t r0, T* p) {
  FAE_STMATRIX("x1.trans", "{%1}", "r"(r0));
}
template <class T>
__device__ __forceinline__ void stmatrix_x2_trans(uint32_t r0, uint32_t r1, T* p) {
  FAE_STMATRIX("x2.trans", "{%1,%2}", "r"(r0), "r"(r1));
}
template <class T>
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3, T* p) {
  FAE_STMATRIX("x4.trans", "{%1,%2,%3,%4}", "r"(r0), "r"(r1), "r"(r2), "r"(r3));
}
#undef FAE_STMATRIX

// ---- cp.async (global -> shared); src_bytes < Bytes zero-fills the tail, 0 reads nothing ----
template <int Bytes, class D, class S>
__device__ __forceinline__ void cp_async(D* dst, S* src, int src_bytes = Bytes) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
  if constexpr (Bytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes)
                 : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_u32(dst)), "l"(src), "n"(Bytes),
                 "r"(src_bytes)
                 : "memory");
  }
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

}  // namespace fae
