// Kernels compiled for avx512 (-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c; see CMakeLists.txt).
#define FAE_CPU_ISA avx512
#define FAE_CPU_VEC VecAvx512
#include "cpu/kernels.h"
#include "cpu/interp_kernels.h"
