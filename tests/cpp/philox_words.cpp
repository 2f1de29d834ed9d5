// Dropout's vector generator (cpu/dropout.h) of one instruction set, for fae_philox_test: built
// once per set with that set's flags (tests/cpp/CMakeLists.txt defines FAE_CPU_ISA, FAE_CPU_VEC).
#include <cstring>

#include "cpu/dropout.h"

namespace fae::cpu::FAE_CPU_ISA {

// The words of 2W generators (counters (c0[l], c1[l % W], c2[l % W], offset) under seed, lane l
// < 2W) into out[4 * l + w], through Dropout::words one group at a time and the groups that run
// together (both must agree with philox4x32); returns W.
int philox_words(uint64_t seed, uint64_t offset, const uint32_t* c0, const uint32_t* c1, const uint32_t* c2,
                 uint32_t* out_one, uint32_t* out_together) {
  using V = FAE_CPU_VEC;
  using D = Dropout<V>;
  FwdParams p{};
  p.dropout_p = 0.5f;
  p.dropout_seed = seed;
  p.dropout_offset = offset;
  const D d(p);
  const typename V::U x1 = V::u_load(c1), x2 = V::u_load(c2);
  const auto put = [](const typename V::U* u, uint32_t* out) {
    alignas(64) uint32_t lanes[V::W];
    for (int w = 0; w < 4; ++w) {
      std::memcpy(lanes, &u[w], sizeof lanes);
      for (int l = 0; l < V::W; ++l) out[4 * l + w] = lanes[l];
    }
  };
  for (int n = 0; n < 2; ++n) {
    const typename V::U x0 = V::u_load(c0 + n * V::W);
    typename V::U u[1][4];
    d.words<1>(&x0, x1, x2, u);
    put(u[0], out_one + 4 * n * V::W);
  }
  for (int n = 0; n < 2; n += D::kG) {
    typename V::U x0[D::kG], u[D::kG][4];
    for (int i = 0; i < D::kG; ++i) x0[i] = V::u_load(c0 + (n + i) * V::W);
    d.words<D::kG>(x0, x1, x2, u);
    for (int i = 0; i < D::kG; ++i) put(u[i], out_together + 4 * (n + i) * V::W);
  }
  return V::W;
}

}  // namespace fae::cpu::FAE_CPU_ISA
