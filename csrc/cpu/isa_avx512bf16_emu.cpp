// The avx512bf16 bfloat16 dot-product kernels compiled for AVX2 with the dot product emulated
// (VecAvx2Bf16Emu, vec.h): a test path, chosen only by FLASHATTN_EXT_CPU_ISA=avx512bf16-emu.
#define FAE_CPU_ISA avx512bf16_emu
#define FAE_CPU_VEC VecAvx2Bf16Emu
#include "cpu/kernels.h"
#include "cpu/interp_kernels.h"
