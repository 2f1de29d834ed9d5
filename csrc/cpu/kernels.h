// The per-ISA entry points: include from one translation unit per instruction set after
// defining FAE_CPU_ISA (the namespace of the entry points) and FAE_CPU_VEC (the vector type).
// float32, float16 and bfloat16 run the float32 kernels of forward.h / backward.h (16-bit inputs
// are widened tile by tile); float64 is served by the reference path in reference.cpp.
#pragma once
#include <stdexcept>

#include "cpu/backward.h"
#include "cpu/forward.h"
#include "cpu/isa.h"

namespace fae::cpu::FAE_CPU_ISA {

void forward(const FwdParams& p) {
  switch (p.dtype) {
    case DType::f32: Forward<FAE_CPU_VEC, float>(p).run(); break;
    case DType::f16: Forward<FAE_CPU_VEC, f16>(p).run(); break;
    case DType::bf16: Forward<FAE_CPU_VEC, bf16>(p).run(); break;
    case DType::f64: throw std::logic_error("float64 runs on the reference path");
  }
}

void backward(const BwdParams& p) {
  switch (p.fwd.dtype) {
    case DType::f32: Backward<FAE_CPU_VEC, float>(p).run(); break;
    case DType::f16: Backward<FAE_CPU_VEC, f16>(p).run(); break;
    case DType::bf16: Backward<FAE_CPU_VEC, bf16>(p).run(); break;
    case DType::f64: throw std::logic_error("float64 runs on the reference path");
  }
}

}  // namespace fae::cpu::FAE_CPU_ISA
