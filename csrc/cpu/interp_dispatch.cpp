// Picks the per-ISA attention-weights and top-k kernels (interp_kernels.h, compiled in every
// isa_*.cpp) for the instruction set dispatch.cpp chooses; float64 goes to interp_float64.cpp.
#include <stdexcept>
#include <string>

#include "cpu/backend.h"
#include "cpu/interp_backend.h"

namespace fae::cpu {

#define FAE_CPU_DECLARE_INTERP(ns)                   \
  namespace ns {                                     \
  void attention_weights(const WeightsParams& p);    \
  void topk_forward(const TopkParams& p);            \
  void topk_backward(const TopkBwdParams& p);        \
  }
FAE_CPU_DECLARE_INTERP(scalar)
FAE_CPU_DECLARE_INTERP(avx2)
FAE_CPU_DECLARE_INTERP(avx512)
FAE_CPU_DECLARE_INTERP(avx512bf16)
FAE_CPU_DECLARE_INTERP(avx512bf16_emu)
FAE_CPU_DECLARE_INTERP(avx512amx)
FAE_CPU_DECLARE_INTERP(avx512amx_emu)
FAE_CPU_DECLARE_INTERP(neon)
FAE_CPU_DECLARE_INTERP(float64)
#undef FAE_CPU_DECLARE_INTERP

namespace {

struct InterpIsa {
  const char* name;
  void (*weights)(const WeightsParams&);
  void (*topk_forward)(const TopkParams&);
  void (*topk_backward)(const TopkBwdParams&);
};

#define FAE_INTERP_ENTRY(name, ns) {name, ns::attention_weights, ns::topk_forward, ns::topk_backward}
const InterpIsa kInterpIsas[] = {
    FAE_INTERP_ENTRY("scalar", scalar),
#if defined(__x86_64__) || defined(__i386__)
    FAE_INTERP_ENTRY("avx2", avx2),
    FAE_INTERP_ENTRY("avx512", avx512),
    FAE_INTERP_ENTRY("avx512bf16", avx512bf16),
    FAE_INTERP_ENTRY("avx512bf16-emu", avx512bf16_emu),
    FAE_INTERP_ENTRY("avx512amx", avx512amx),
    FAE_INTERP_ENTRY("avx512amx-emu", avx512amx_emu),
#elif defined(__aarch64__)
    FAE_INTERP_ENTRY("neon", neon),
#endif
};
#undef FAE_INTERP_ENTRY

// The kernels of the instruction set active_isa() names (float64: the float64 path, after the
// same check of FLASHATTN_EXT_CPU_ISA).
const InterpIsa& select(DType dtype) {
  static const InterpIsa kFloat64 = {"float64", float64::attention_weights, float64::topk_forward,
                                     float64::topk_backward};
  const std::string name = active_isa();
  if (dtype == DType::f64) return kFloat64;
  for (const InterpIsa& isa : kInterpIsas)
    if (name == isa.name) return isa;
  throw std::logic_error("no attention-weights kernels for instruction set " + name);
}

}  // namespace

void attention_weights(const WeightsParams& p) { select(p.fwd.dtype).weights(p); }
void topk_forward(const TopkParams& p) { select(p.fwd.dtype).topk_forward(p); }
void topk_backward(const TopkBwdParams& p) { select(p.sel.fwd.dtype).topk_backward(p); }

}  // namespace fae::cpu
