// Kernels compiled for avx2 (-mavx2 -mfma -mf16c; see CMakeLists.txt).
#define FAE_CPU_ISA avx2
#define FAE_CPU_VEC VecAvx2
#include "cpu/kernels.h"
#include "cpu/interp_kernels.h"
