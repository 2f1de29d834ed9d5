// The per-ISA entry points: include from one translation unit per instruction set (isa_*.cpp)
// after defining FAE_CPU_ISA (the instruction set's name) and FAE_CPU_VEC (the vector type).
// Every inline function the unit compiles lives in a namespace named for its instruction set:
// the kernel headers of csrc/cpu in fae::cpu::<isa>, those of csrc/common in the inline namespace
// fae::<isa> (common/portability.h). Copies compiled with different flags therefore never share a
// symbol, and the linker cannot keep an AVX-512 copy for a caller on a CPU without AVX-512.
// float32, float16 and bfloat16 run the float32 kernels of forward.h / backward.h (16-bit inputs
// are widened tile by tile); float64 runs on the float64 path (float64.cpp).
#pragma once
#include <chrono>
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

// GFLOP/s of independent register FMA chains (MR x NV of them, the micro-kernel's budget) on
// `threads` threads at once: the float32 peak the attention kernels are measured against.
double fma_peak_gflops(int threads) {
  using V = FAE_CPU_VEC;
  using R = typename V::R;
  constexpr int kChains = V::MR * V::NV;
  auto burn = [](int64_t iters) {
    R acc[kChains];
    for (int i = 0; i < kChains; ++i) acc[i] = V::set1(1e-3f * float(i));
    const R x = V::set1(0.999999f), y = V::set1(1e-7f);
    for (int64_t it = 0; it < iters; ++it)
      for (int i = 0; i < kChains; ++i) acc[i] = V::fma(acc[i], x, y);
    float sink[V::W], total = 0.f;
    for (int i = 0; i < kChains; ++i) { V::store(sink, acc[i]); total += sink[0]; }
    return total;
  };
  auto wall = [&](int64_t iters) {
    const auto t0 = std::chrono::steady_clock::now();
    volatile float sink = 0.f;
    parallel_for(threads, threads, [&](int64_t) { sink = sink + burn(iters); });
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  int64_t iters = 1 << 16;
  while (wall(iters) < 0.05) iters *= 2;  // about 0.05 s per measurement
  double best = 0.0;
  for (int rep = 0; rep < 3; ++rep) best = std::max(best, double(iters) * kChains * V::W * 2 / wall(iters));
  return best * threads / 1e9;
}

}  // namespace fae::cpu::FAE_CPU_ISA
