// The avx512amx kernels compiled for AVX2 with the tile products emulated in scalar code
// (AmxEmulated, amx.h) and the bfloat16 dot product as in avx512bf16-emu: a test path, chosen
// only by FLASHATTN_EXT_CPU_ISA=avx512amx-emu.
#define FAE_CPU_ISA avx512amx_emu
#define FAE_CPU_VEC VecAvx2AmxEmu
#include "cpu/kernels.h"
#include "cpu/interp_kernels.h"
