// CPU backend entry points. Arguments are validated by the Python API before they get here.
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include "common/params.h"

namespace fae::cpu {

void attention_forward(const FwdParams& p);
void attention_backward(const BwdParams& p);

// KV-cache append with rotary embedding (AppendParams): writes the new keys and values into the
// cache in place, and the rotated queries into q_rot when rotary tables are given.
void kvcache_append(const AppendParams& p);

// Name of the instruction set the kernels run with ("scalar", "avx2", "avx512", "avx512bf16",
// "neon"): the best one the CPU supports, or FLASHATTN_EXT_CPU_ISA when set, which may also name
// the test path "avx512bf16-emu" (never chosen automatically). An unknown or unsupported value
// throws std::invalid_argument naming the variable and the accepted values.
std::string active_isa();

// Instruction sets compiled in and supported by this CPU, worst first.
std::vector<std::string> available_isas();

// Measured peaks of the active instruction set on `threads` threads at once (cpu/peaks.h): the
// references the benchmarks report fractions of.
struct PeakProbes {
  int threads = 0;
  double fma_gflops = 0;        // float32 FMA, register loop
  double bf16_dot_gflops = 0;   // bfloat16 dot product (dot2), register loop; 0: the ISA has none
  bool bf16_dot_native = false; // false with a dot product: the AVX2 emulation (avx512bf16-emu)
  double bandwidth_gbs = 0;     // streaming read of bandwidth_bytes, vector loads summed
  int64_t bandwidth_bytes = 0;
  float checksum = 0;           // depends on every loop, so that none is optimised away
};
PeakProbes peak_probes(int threads);  // threads <= 0: the default count

}  // namespace fae::cpu
