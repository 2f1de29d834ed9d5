// Kernels compiled for avx512amx (the avx512bf16 flags plus -mamx-tile -mamx-bf16; see
// CMakeLists.txt): the bfloat16 forward's and backward's products on AMX tiles (amx.h), the rest as
// avx512bf16.
#define FAE_CPU_ISA avx512amx
#define FAE_CPU_VEC VecAvx512Amx
#include "cpu/kernels.h"
#include "cpu/interp_kernels.h"
