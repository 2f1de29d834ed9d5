// The one interface between kernels and the hardware.
//
// Kernels in csrc/cuda touch the GPU only through what this header provides:
//   block barrier          __syncthreads()
//   warp shuffles          __shfl_sync / __shfl_xor_sync / __shfl_up_sync / __shfl_down_sync
//   warp votes             __all_sync / __any_sync / __ballot_sync
//   tensor cores           fae::mma_m16n8k16<T>, fae::mma_m16n8k8<T>     (T = fae::half_t | fae::bf16_t)
//   matrix loads/stores    fae::ldmatrix_x{1,2,4}[_trans], fae::stmatrix_x{1,2,4}[_trans] (sm_90)
//   async copies           fae::cp_async<4|8|16>(dst, src[, src_bytes]), fae::cp_async_commit(),
//                          fae::cp_async_wait<N>(), fae::cp_async_wait_all()
//   shared memory          fae::dynamic_smem<T>()  (the only shared memory: no static __shared__)
//   atomics                atomicAdd(float*, float) on global memory
//   read-only loads        fae::load_nc(p): *p through the non-coherent cache (ld.global.nc);
//                          fae::load_nc_here(p): 16 bytes, never hoisted or merged (asm volatile)
//   math                   fae::fast_exp2(x) (ex2.approx.ftz.f32)
//   conversions (docs/emulator.md section 3.5)  fae::f32_to_f16_bits / f32_to_bf16_bits / f16_bits_to_f32 / bf16_bits_to_f32,
//                          fae::from_float<T>, fae::to_float, fae::pack2<T>(lo, hi), fae::pack_halves
//   bit casts              __float_as_uint / __uint_as_float / __float_as_int / __int_as_float
//   pointers               fae::gptr<T> (global), fae::sptr<T> (shared), fae::ptr_cast<U>(p)
//
// Under nvcc every primitive is inline PTX (or the CUDA builtin) and gptr/sptr are raw pointers.
// Under a host compiler (no __CUDACC__) every primitive calls the SIMT emulator (csrc/emu), and
// gptr/sptr are checked pointers: see docs in csrc/emu/api.h. Kernel code is the same text for both.
//
// Rules for kernel code so that both builds agree:
//   * global memory through fae::gptr<T> parameters (launchers build them with fae::gbuf);
//   * shared memory through fae::sptr<T> obtained from fae::dynamic_smem<T>();
//   * element access with p[i] / *p, pointer arithmetic with p + i; reinterpretation with ptr_cast;
//   * kernels are declared `__global__ void __launch_bounds__(N) name(...)`.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/fp16.h"  // fae::half_t, fae::bf16_t (and, for the emulator, the conversions)

#if !defined(__CUDACC__)
#include "emu/api.h"  // the emulator's dim3 and cudaStream_t
#endif

namespace fae {
// Launch geometry of one kernel launch (cuda/launch.cuh).
struct LaunchConfig {
  dim3 grid;
  dim3 block;
  std::size_t smem_bytes;
  cudaStream_t stream;
};
}  // namespace fae

#if defined(__CUDACC__)
#include "cuda/primitives_device.cuh"
#else
#include "cuda/primitives_emu.h"
#endif

namespace fae {
template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ half_t from_float<half_t>(float x) {
  return half_t{f32_to_f16_bits(x)};
}
template <>
__device__ __forceinline__ bf16_t from_float<bf16_t>(float x) {
  return bf16_t{f32_to_bf16_bits(x)};
}
__device__ __forceinline__ float to_float(half_t x) { return f16_bits_to_f32(x.bits); }
__device__ __forceinline__ float to_float(bf16_t x) { return bf16_bits_to_f32(x.bits); }

// mov.b32 d, {lo, hi}: the first 16-bit value lands in bits [15:0].
__device__ __forceinline__ uint32_t pack_halves(uint16_t lo, uint16_t hi) {
  return uint32_t(lo) | (uint32_t(hi) << 16);
}
}  // namespace fae
