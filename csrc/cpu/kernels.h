// The per-ISA entry points: include from one translation unit per instruction set (isa_*.cpp)
// after defining FAE_CPU_ISA (the instruction set's name) and FAE_CPU_VEC (the vector type).
// Every inline function the unit compiles lives in a namespace named for its instruction set:
// the kernel headers of csrc/cpu in fae::cpu::<isa>, those of csrc/common in the inline namespace
// fae::<isa> (common/portability.h). Copies compiled with different flags therefore never share a
// symbol, and the linker cannot keep an AVX-512 copy for a caller on a CPU without AVX-512.
// float32, float16 and bfloat16 run the float32 kernels of forward.h / backward.h (16-bit inputs
// are widened tile by tile); float64 runs on the float64 path (float64.cpp).
#pragma once
#include <stdexcept>
#include <vector>

#include "cpu/backward.h"
#include "cpu/dropout.h"
#include "cpu/forward.h"
#include "cpu/isa.h"
#include "cpu/peaks.h"

namespace fae::cpu::FAE_CPU_ISA {

void forward(const FwdParams& p) {
  switch (p.dtype) {
    case DType::f32: Forward<FAE_CPU_VEC, float>(p).run(); break;
    case DType::f16: Forward<FAE_CPU_VEC, f16>(p).run(); break;
    case DType::bf16: Forward<FAE_CPU_VEC, bf16>(p).run(); break;
    case DType::f64: throw std::logic_error("float64 runs on the float64 path");
  }
}

void backward(const BwdParams& p) {
  switch (p.fwd.dtype) {
    case DType::f32: Backward<FAE_CPU_VEC, float>(p).run(); break;
    case DType::f16: Backward<FAE_CPU_VEC, f16>(p).run(); break;
    case DType::bf16: Backward<FAE_CPU_VEC, bf16>(p).run(); break;
    case DType::f64: throw std::logic_error("float64 runs on the float64 path");
  }
}

PeakProbes peak_probes(int threads) { return measure_peaks<FAE_CPU_VEC>(threads); }

void dropout_mask(const FwdParams& p, int64_t rows, int64_t cols, uint8_t* out) {
  const Dropout<FAE_CPU_VEC> drop(p);
  std::vector<float> mult(cols);
  for (int64_t bh = 0; bh < p.batch * p.heads_q; ++bh)
    for (int64_t i = 0; i < rows; ++i) {
      drop.row(bh / p.heads_q, bh % p.heads_q, i, 0, cols, mult.data());
      for (int64_t j = 0; j < cols; ++j) out[(bh * rows + i) * cols + j] = mult[j] > 0.f;
    }
}

int vec_transpose(float* block) {
  using V = FAE_CPU_VEC;
  typename V::R x[V::W];
  for (int w = 0; w < V::W; ++w) x[w] = V::load(block + w * V::W);
  V::transpose(x);
  for (int w = 0; w < V::W; ++w) V::store(block + w * V::W, x[w]);
  return V::W;
}

int vec_bool_bias(const uint8_t* bytes, int n, float* out) {
  FAE_CPU_VEC::store(out, FAE_CPU_VEC::bool_bias(bytes, n));
  return FAE_CPU_VEC::W;
}

int vec_exp2(const float* x, float* out) {
  FAE_CPU_VEC::store(out, FAE_CPU_VEC::exp2(FAE_CPU_VEC::load(x)));
  return FAE_CPU_VEC::W;
}

}  // namespace fae::cpu::FAE_CPU_ISA
