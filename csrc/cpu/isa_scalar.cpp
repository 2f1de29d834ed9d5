// Kernels compiled for scalar (no extra flags; see CMakeLists.txt).
#define FAE_CPU_ISA scalar
#define FAE_CPU_VEC VecScalar
#include "cpu/kernels.h"
#include "cpu/interp_kernels.h"
