// Two macros every header in csrc/common uses, so that one source serves nvcc, the host compiler
// and each CPU instruction set.
//
// FAE_HD marks a function callable on host and device (inline on the host).
//
// FAE_ISA_NAMESPACE_BEGIN / _END enclose the inline functions of a header. A CPU translation unit
// compiled for one instruction set defines FAE_CPU_ISA (avx2, avx512, ...) before any include, and
// those functions then live in the inline namespace fae::<isa>: copies compiled with different
// flags have different symbols, so the linker can never keep an AVX-512 copy for a caller that
// runs on a CPU without AVX-512. Everywhere else the macros expand to nothing.
#pragma once

#if defined(__CUDACC__)
#define FAE_HD __host__ __device__ __forceinline__
#else
#define FAE_HD inline
#endif

#if defined(FAE_CPU_ISA)
#define FAE_ISA_NAMESPACE_BEGIN inline namespace FAE_CPU_ISA {
#define FAE_ISA_NAMESPACE_END }
#else
#define FAE_ISA_NAMESPACE_BEGIN
#define FAE_ISA_NAMESPACE_END
#endif
