// Kernels compiled for avx512bf16 (the avx512 flags plus -mavx512bf16; see CMakeLists.txt).
#define FAE_CPU_ISA avx512bf16
#define FAE_CPU_VEC VecAvx512
#include "cpu/kernels.h"
#include "cpu/interp_kernels.h"
