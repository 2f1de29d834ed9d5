// Hardware numerics mode (Config::hw_numerics): results that differ from the exact emulation the
// way a GPU's may, within documented or plausible bounds, reproducibly for a seed.
//   mma: the K products and C are added one at a time in an order drawn from the seed and the
//        instruction (K, input type), each sum truncated (rounded toward zero) to float32, as
//        tensor cores truncate their aligned sums instead of rounding the exact sum once; the
//        error is at most K ulps of the largest partial sum. Like the hardware's fixed adder tree,
//        the result is a function of the operands: the same in every block, warp and repetition.
//   ex2.approx.ftz.f32: the correctly rounded 2^x moved by -2..+2 ulps (PTX ISA: at most 2 ulp
//        from the correctly rounded result), a fixed function of the seed and x; 2^0 stays 1.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "internal.h"

namespace fae::emu {

namespace {

uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// a + y rounded toward zero to float32 (y: a float or an exact product of two 16-bit floats).
float add_toward_zero(float a, double y) {
  const double x = a, s = x + y;
  const double yy = s - x, e = (x - (s - yy)) + (y - yy);  // s + e == x + y exactly (TwoSum)
  float f = static_cast<float>(s);
  const double over = (static_cast<double>(f) - s) - e;  // f - (x + y), with its exact sign
  if (f != 0.0f && (f > 0.0f ? over > 0.0 : over < 0.0)) {  // rounded away from zero: step back
    uint32_t u;
    std::memcpy(&u, &f, 4);
    --u;
    std::memcpy(&f, &u, 4);
  }
  return f;
}

}  // namespace

void mma_truncating(const double (&A)[16][16], const double (&B)[16][8], const double (&C)[16][8], int K,
                    uint64_t key, float (&D)[16][8]) {
  int order[17];
  for (int i = 0; i <= K; ++i) order[i] = i;  // term K is C
  uint64_t h = key;
  for (int i = K; i > 0; --i) {
    h = mix(h);
    std::swap(order[i], order[h % uint64_t(i + 1)]);
  }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      auto term = [&](int t) { return t == K ? C[m][n] : A[m][t] * B[t][n]; };  // products exact
      float acc = add_toward_zero(0.0f, term(order[0]));
      for (int i = 1; i <= K; ++i) acc = add_toward_zero(acc, term(order[i]));
      D[m][n] = acc;
    }
}

uint64_t hw_key(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) { return mix(mix(mix(seed ^ a) ^ b) ^ c); }

float ex2_approx(float x) {
  if (std::fpclassify(x) == FP_SUBNORMAL) x = 0.0f;
  float r = static_cast<float>(std::exp2(static_cast<double>(x)));
  const Runner* run = tls_runner;
  if (run && run->launch->cfg.hw_numerics && x != 0.0f && std::isnormal(r)) {
    uint32_t bits, xb;
    std::memcpy(&bits, &r, 4);
    std::memcpy(&xb, &x, 4);
    const int k = int(hw_key(run->launch->cfg.hw_seed, xb, 0x65783200, 0) % 5) - 2;
    // Stay normal and finite: 2^x is positive, so its bits order as its values.
    bits = uint32_t(std::min<int64_t>(std::max<int64_t>(int64_t(bits) + k, 0x00800000), 0x7F7FFFFF));
    std::memcpy(&r, &bits, 4);
  }
  return std::fpclassify(r) == FP_SUBNORMAL ? 0.0f : r;
}

}  // namespace fae::emu
