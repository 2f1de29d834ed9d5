// fae_philox_test: dropout's generator (common/philox.h) against the published Philox-4x32-10
// known-answer vectors of Random123 (counter, key -> output; recomputed independently by
// tests/test_dropout.py), and the vector generator of every CPU instruction set (cpu/dropout.h):
// its words bitwise against philox4x32 (philox_words.cpp, one group at a time and the groups run
// together) at edge and random counters and keys, and its mask (fae::cpu::dropout_mask) against
// the scalar keep() at tile-edge shapes.
// Usage: fae_philox_test   exit status 0 when every check passes.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "common/philox.h"
#include "cpu/backend.h"

#define FAE_WORDS_DECL(isa)                                                                                  \
  namespace fae::cpu::isa {                                                                                  \
  int philox_words(uint64_t seed, uint64_t offset, const uint32_t* c0, const uint32_t* c1, const uint32_t* c2, \
                   uint32_t* out_one, uint32_t* out_together);                                               \
  }
FAE_WORDS_DECL(scalar)
#if defined(FAE_WORDS_X86)
FAE_WORDS_DECL(avx2)
FAE_WORDS_DECL(avx512)
#elif defined(FAE_WORDS_NEON)
FAE_WORDS_DECL(neon)
#endif

namespace {

using WordsFn = int (*)(uint64_t, uint64_t, const uint32_t*, const uint32_t*, const uint32_t*, uint32_t*, uint32_t*);

int g_failures = 0, g_checks = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("FAIL %s\n", what.c_str());
  }
}

struct Kat { uint32_t ctr[4], key[2], out[4]; };
const Kat kKats[] = {
    {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};

void known_answers() {
  for (const Kat& k : kKats) {
    const fae::Philox4 r = fae::philox4x32(fae::Philox4{{k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3]}}, k.key[0], k.key[1]);
    for (int w = 0; w < 4; ++w) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "philox4x32-10 ctr %08x.. word %d: %08x, expected %08x", k.ctr[0], w, r.w[w],
                    k.out[w]);
      check(r.w[w] == k.out[w], buf);
    }
  }
}

void thresholds() {
  check(fae::dropout_threshold(0.f) == 0u, "threshold of p = 0 keeps everything");
  check(fae::dropout_threshold(0.5f) == 0x80000000u, "threshold of p = 0.5");
  check(fae::dropout_threshold(0.99999999f) == 0xffffffffu, "threshold of p -> 1 is clamped");
}

// The active instruction set's mask against keep() for every element of a (B, H, Sq, Sk) block.
void vector_mask(const std::string& isa, float p, uint64_t seed, uint64_t offset, int64_t rows, int64_t cols) {
  fae::FwdParams prm{};
  prm.batch = 2;
  prm.heads_q = 3;
  prm.dropout_p = p;
  prm.dropout_seed = seed;
  prm.dropout_offset = offset;
  std::vector<uint8_t> mask(prm.batch * prm.heads_q * rows * cols, 7);
  fae::cpu::dropout_mask(prm, rows, cols, mask.data());
  int64_t bad = 0, kept = 0;
  for (int64_t b = 0; b < prm.batch; ++b)
    for (int64_t h = 0; h < prm.heads_q; ++h)
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
          const uint8_t m = mask[((b * prm.heads_q + h) * rows + i) * cols + j];
          bad += m != uint8_t(fae::keep(prm, b, h, i, j));
          kept += m;
        }
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s mask p=%g seed=%llu offset=%llu %lldx%lld: %lld of %lld differ from keep()",
                isa.c_str(), double(p), (unsigned long long)seed, (unsigned long long)offset, (long long)rows,
                (long long)cols, (long long)bad, (long long)mask.size());
  check(bad == 0, buf);
  check(p > 0.f || kept == int64_t(mask.size()), isa + ": p = 0 keeps every element");
}

// An instruction set's vector words against philox4x32, lane by lane, at counters and keys with
// all bits set, zero and random.
void vector_words(const std::string& isa, WordsFn fn) {
  std::mt19937_64 rng(15);
  const uint64_t seeds[] = {0, ~0ull, 0x0123456789abcdefull, rng(), rng()};
  const uint64_t offsets[] = {0, 0xffffffffull, rng(), rng()};
  int64_t bad = 0, words = 0;
  for (const uint64_t seed : seeds)
    for (const uint64_t offset : offsets)
      for (int t = 0; t < 4; ++t) {
        uint32_t c0[32], c1[16], c2[16], one[128], together[128];
        for (int l = 0; l < 32; ++l) c0[l] = t == 0 ? ~0u : t == 1 ? uint32_t(l) : uint32_t(rng());
        for (int l = 0; l < 16; ++l) c1[l] = t == 0 ? ~0u : uint32_t(rng()), c2[l] = t == 0 ? 0u : uint32_t(rng());
        const int W = fn(seed, offset, c0, c1, c2, one, together);
        for (int l = 0; l < 2 * W; ++l) {
          const fae::Philox4 r = fae::philox4x32(fae::Philox4{{c0[l], c1[l % W], c2[l % W], uint32_t(offset)}},
                                                 uint32_t(seed), uint32_t(seed >> 32));
          for (int w = 0; w < 4; ++w) {
            bad += one[4 * l + w] != r.w[w];
            bad += together[4 * l + w] != r.w[w];
            words += 2;
          }
        }
      }
  char buf[128];
  std::snprintf(buf, sizeof buf, "%s vector words: %lld of %lld differ from philox4x32", isa.c_str(), (long long)bad,
                (long long)words);
  check(bad == 0 && words > 0, buf);
}

}  // namespace

int main() {
  const std::vector<std::string> isas = fae::cpu::available_isas();
  const auto has = [&](const char* isa) { return std::find(isas.begin(), isas.end(), isa) != isas.end(); };
  vector_words("scalar", fae::cpu::scalar::philox_words);
#if defined(FAE_WORDS_X86)
  if (has("avx2")) vector_words("avx2", fae::cpu::avx2::philox_words);
  if (has("avx512")) vector_words("avx512", fae::cpu::avx512::philox_words);
#elif defined(FAE_WORDS_NEON)
  if (has("neon")) vector_words("neon", fae::cpu::neon::philox_words);
#endif
  known_answers();
  thresholds();
  for (const std::string& isa : fae::cpu::available_isas()) {
    setenv("FLASHATTN_EXT_CPU_ISA", isa.c_str(), 1);
    vector_mask(isa, 0.1f, 0x0123456789abcdefull, 7, 5, 37);
    vector_mask(isa, 0.5f, 42, 0xfffffffful, 33, 131);
    vector_mask(isa, 0.9f, ~0ull, 0, 1, 1);
    vector_mask(isa, 0.f, 3, 1, 4, 9);
  }
  unsetenv("FLASHATTN_EXT_CPU_ISA");
  std::printf("%d passed, %d failed\n", g_checks - g_failures, g_failures);
  return g_failures == 0 ? 0 : 1;
}
