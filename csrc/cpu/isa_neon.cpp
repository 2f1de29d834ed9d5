// Kernels compiled for neon (aarch64 only, NEON is baseline; see CMakeLists.txt).
#define FAE_CPU_ISA neon
#define FAE_CPU_VEC VecNeon
#include "cpu/kernels.h"
#include "cpu/interp_kernels.h"
