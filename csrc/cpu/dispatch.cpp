// Chooses the kernels for each call: the best instruction set this CPU supports, or the one named
// by FLASHATTN_EXT_CPU_ISA (read on every call, so tests can force each path in one process).
#include <cstdlib>
#include <stdexcept>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <string>
#include <vector>

#include "cpu/backend.h"
#include "cpu/isa.h"
#include "cpu/thread_pool.h"

namespace fae::cpu {
namespace {

struct Isa {
  const char* name;
  bool (*supported)();
  void (*forward)(const FwdParams&);
  void (*backward)(const BwdParams&);
  PeakProbes (*peak_probes)(int);
  void (*dropout_mask)(const FwdParams&, int64_t, int64_t, uint8_t*);
  int (*vec_transpose)(float*);
  int (*vec_bool_bias)(const uint8_t*, int, float*);
  int (*vec_exp2)(const float*, float*);
  bool automatic = true;  // false: only when named by FLASHATTN_EXT_CPU_ISA (test paths)
};

#if defined(__x86_64__) || defined(__i386__)
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
bool has_avx512bf16() { return has_avx512() && __builtin_cpu_supports("avx512bf16"); }
// AMX-TILE and AMX-BF16 (cpuid leaf 7, edx bits 24 and 22), and Linux's permission for this
// process to use the tile data state (asked once; without it the first tile load faults).
bool has_amx() {
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!has_avx512bf16() || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(d & (1u << 24)) || !(d & (1u << 22))) return false;
#if defined(__linux__)
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtileData) == 0;
#else
    return false;
#endif
  }();
  return ok;
}
#endif
bool always() { return true; }

// In order of preference, worst first.
const Isa kIsas[] = {
    {"scalar", always, scalar::forward, scalar::backward, scalar::peak_probes, scalar::dropout_mask,
     scalar::vec_transpose, scalar::vec_bool_bias, scalar::vec_exp2},
#if defined(__x86_64__) || defined(__i386__)
    {"avx2", has_avx2, avx2::forward, avx2::backward, avx2::peak_probes, avx2::dropout_mask, avx2::vec_transpose,
     avx2::vec_bool_bias, avx2::vec_exp2},
    {"avx512", has_avx512, avx512::forward, avx512::backward, avx512::peak_probes, avx512::dropout_mask,
     avx512::vec_transpose, avx512::vec_bool_bias, avx512::vec_exp2},
    {"avx512bf16", has_avx512bf16, avx512bf16::forward, avx512bf16::backward, avx512bf16::peak_probes,
     avx512bf16::dropout_mask, avx512bf16::vec_transpose, avx512bf16::vec_bool_bias, avx512bf16::vec_exp2},
    // The bfloat16 dot-product kernels of avx512bf16 with the dot product emulated on AVX2.
    {"avx512bf16-emu", has_avx2, avx512bf16_emu::forward, avx512bf16_emu::backward,
     avx512bf16_emu::peak_probes, avx512bf16_emu::dropout_mask, avx512bf16_emu::vec_transpose,
     avx512bf16_emu::vec_bool_bias, avx512bf16_emu::vec_exp2, false},
    // AMX tiles for the bfloat16 forward's and backward's products; and the same kernels with the
    // tile products emulated.
    {"avx512amx", has_amx, avx512amx::forward, avx512amx::backward, avx512amx::peak_probes,
     avx512amx::dropout_mask, avx512amx::vec_transpose, avx512amx::vec_bool_bias, avx512amx::vec_exp2},
    {"avx512amx-emu", has_avx2, avx512amx_emu::forward, avx512amx_emu::backward, avx512amx_emu::peak_probes,
     avx512amx_emu::dropout_mask, avx512amx_emu::vec_transpose, avx512amx_emu::vec_bool_bias, avx512amx_emu::vec_exp2, false},
#elif defined(__aarch64__)
    {"neon", always, neon::forward, neon::backward, neon::peak_probes, neon::dropout_mask, neon::vec_transpose,
     neon::vec_bool_bias, neon::vec_exp2},
#endif
};

// Every value of FLASHATTN_EXT_CPU_ISA on any architecture (kIsas holds this build's).
const char* const kAllIsaNames[] = {"scalar",    "avx2",      "avx512",        "avx512bf16",
                                    "avx512bf16-emu", "avx512amx", "avx512amx-emu", "neon"};

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

const Isa& select() {
  const char* env = std::getenv("FLASHATTN_EXT_CPU_ISA");
  const std::string want = env ? env : "";
  if (want.empty() || want == "auto") {
    const Isa* best = &kIsas[0];
    for (const Isa& isa : kIsas)
      if (isa.automatic && isa.supported()) best = &isa;
    return *best;
  }
  const std::string available = "available here: auto, " + join(available_isas());
  for (const Isa& isa : kIsas) {
    if (want != isa.name) continue;
    if (!isa.supported())
      throw std::invalid_argument("FLASHATTN_EXT_CPU_ISA='" + want + "' is not available on this machine (the "
                                  "CPU does not support it); " + available);
    return isa;
  }
  for (const char* name : kAllIsaNames)
    if (want == name)
      throw std::invalid_argument("FLASHATTN_EXT_CPU_ISA='" + want + "' is not available in this build (its "
                                  "kernels are for another CPU architecture); " + available);
  throw std::invalid_argument("FLASHATTN_EXT_CPU_ISA='" + want + "' is not a known instruction set; " + available);
}

}  // namespace

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (const Isa& isa : kIsas)
    if (isa.supported()) names.push_back(isa.name);
  return names;
}

std::string active_isa() { return select().name; }

PeakProbes peak_probes(int threads) {
  return select().peak_probes(threads > 0 ? threads : default_num_threads());
}

void dropout_mask(const FwdParams& p, int64_t rows, int64_t cols, uint8_t* out) {
  select().dropout_mask(p, rows, cols, out);
}

int vec_transpose(float* block) { return select().vec_transpose(block); }

int vec_bool_bias(const uint8_t* bytes, int n, float* out) { return select().vec_bool_bias(bytes, n, out); }

int vec_exp2(const float* x, float* out) { return select().vec_exp2(x, out); }

namespace {
// p with a dropout seed and offset drawn into memory (FwdParams::dropout_rng, host memory here)
// read into dropout_seed and dropout_offset, once per call.
FwdParams with_drawn_seed(FwdParams p) {
  if (p.dropout_rng != nullptr) {
    p.dropout_seed = p.dropout_rng[0];
    p.dropout_offset = p.dropout_rng[1];
    p.dropout_rng = nullptr;
  }
  return p;
}
}  // namespace

void attention_forward(const FwdParams& params) {
  const Isa& isa = select();  // validates the environment even for float64
  const FwdParams p = with_drawn_seed(params);
  if (p.dtype == DType::f64) float64::forward(p);
  else isa.forward(p);
}

void attention_backward(const BwdParams& params) {
  const Isa& isa = select();
  BwdParams p = params;
  p.fwd = with_drawn_seed(p.fwd);
  if (p.fwd.dtype == DType::f64) float64::backward(p);
  else isa.backward(p);
}

}  // namespace fae::cpu
