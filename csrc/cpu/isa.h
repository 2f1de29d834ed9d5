// Entry points of each compiled instruction set (kernels.h, one isa_*.cpp each) and of the
// float64 path (float64.cpp). dispatch.cpp picks one per call.
#pragma once
#include "common/params.h"
#include "cpu/backend.h"

namespace fae::cpu {

#define FAE_CPU_DECLARE_ENTRY_POINTS(ns)  \
  namespace ns {                          \
  void forward(const FwdParams& p);       \
  void backward(const BwdParams& p);      \
  PeakProbes peak_probes(int threads);    \
  void dropout_mask(const FwdParams& p, int64_t rows, int64_t cols, uint8_t* out); \
  int vec_transpose(float* block);                                                 \
  int vec_bool_bias(const uint8_t* bytes, int n, float* out);                      \
  int vec_exp2(const float* x, float* out);                                        \
  }
FAE_CPU_DECLARE_ENTRY_POINTS(scalar)
FAE_CPU_DECLARE_ENTRY_POINTS(avx2)
FAE_CPU_DECLARE_ENTRY_POINTS(avx512)
FAE_CPU_DECLARE_ENTRY_POINTS(avx512bf16)
FAE_CPU_DECLARE_ENTRY_POINTS(avx512bf16_emu)
FAE_CPU_DECLARE_ENTRY_POINTS(avx512amx)
FAE_CPU_DECLARE_ENTRY_POINTS(avx512amx_emu)
FAE_CPU_DECLARE_ENTRY_POINTS(neon)
namespace float64 {
void forward(const FwdParams& p);
void backward(const BwdParams& p);
}  // namespace float64
#undef FAE_CPU_DECLARE_ENTRY_POINTS

}  // namespace fae::cpu
