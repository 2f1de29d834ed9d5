// CPU backend entry points. Arguments are validated by the Python API before they get here.
#pragma once
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

// Float32 FMA throughput (GFLOP/s) of the active instruction set on `threads` threads (0 = the
// default count), from a register loop: the peak the benchmark reports fractions of.
double fma_peak_gflops(int threads);

}  // namespace fae::cpu
