// Vector forms of the score transforms of common/score_mod.h (include from an ISA unit, see
// vec.h), on scores in the log2 domain (x = s * log2(e)).
#pragma once
#include <algorithm>
#include "common/online_softmax.h"
#include "common/score_mod.h"
#include "cpu/vec.h"

namespace fae::cpu::FAE_CPU_ISA {

template <class V>
struct ScoreMod {
  using R = typename V::R;
  float cap2;  // softcap * log2(e); 0 = no softcap
  float k;     // -2 * log2(e) / cap2: exp2(k * |x|) = exp(-2 |s| / softcap)
  bool alibi;

  explicit ScoreMod(const FwdParams& p)
      : cap2(float(p.softcap * kLog2e)), k(p.softcap > 0.f ? float(-2.0 / p.softcap) : 0.f),
        alibi(p.alibi_slopes != nullptr) {}

  // Vector form of fae::softcap_score: cap2 * tanh(x / cap2) with tanh(|y|) = (1 - e) / (1 + e),
  // e = exp(-2 |y|) in (0, 1] (no overflow), and the sign of x (clamped x * 2^126: +-1 for
  // |x| >= FLT_MIN, 0 for 0, NaN for NaN). Sets *grad to 1 - tanh^2 when grad is not null.
  R softcap(R x, R* grad) const {
    const R one = V::set1(1.f), m1 = V::set1(-1.f);
    const R a = V::max(x, V::sub(V::zero(), x));
    const R e = V::exp2(V::mul(a, V::set1(k)));
    const R lo = V::max(m1, V::mul(x, V::set1(0x1p126f)));
    const R sign = V::sub(V::zero(), V::max(m1, V::sub(V::zero(), lo)));
    const R t = V::mul(V::div(V::sub(one, e), V::add(one, e)), sign);
    if (grad) *grad = V::sub(one, V::mul(t, t));
    return V::mul(t, V::set1(cap2));
  }

  // Vector form of fae::alibi_bias added to x: nslope * |pos - key| with nslope = -slope * log2(e).
  static R bias(R x, R nslope, R pos, R key) {
    const R d = V::sub(pos, key);
    return V::fma(nslope, V::max(d, V::sub(V::zero(), d)), x);
  }
};

// A mask that differs per row is read in short runs of each row (a key tile's part of W or more
// rows), which the hardware prefetchers do not follow: without a prefetch every run waited for
// memory: a per-head float mask cost 23-26% of the forward beyond its read, 13-17% with the
// prefetch (bench/README.md).
// prefetch_mask asks for the cache line at `a` to be brought into L2 (T0 and T2 measured the same);
// a prefetch never faults, so `a` may lie past the mask's end.
constexpr int64_t kLineBytes = 64;
inline void prefetch_mask(const void* a) { __builtin_prefetch(a, 0, 2); }

// t[j] = the explicit mask's value (common/score_mod.h: mask_value) for key k0 + j of the mask row
// at offset `row`, j < nk; a boolean mask with contiguous keys in a loop the compiler vectorises.
inline void mask_row(const FwdParams& p, int64_t row, int64_t k0, int64_t nk, float* t) {
  if (p.mask_bool && p.mask_col_stride == 1) {
    const uint8_t* m = static_cast<const uint8_t*>(p.attn_mask) + row + k0;
    for (int64_t j = 0; j < nk; ++j) t[j] = m[j] ? 0.f : -INFINITY;
    return;
  }
  for (int64_t j = 0; j < nk; ++j) t[j] = mask_value<float>(p, row, k0 + j);
}

// The explicit mask on transposed log2-domain scores (lanes are W query rows): x[j * ld] += the
// values of key k0 + j of the mask rows at offsets rows[0 .. n) times log2(e), j < nk (lanes
// w >= n add 0). Each row's values are read along the keys in blocks of W, in place when the keys
// are contiguous (floats as they are, booleans through V::bool_bias), else through mask_row into
// tmp (W x nk floats), and turned into vectors of W rows by V::transpose. `ahead` (elements, 0:
// none): the offset from each value read to the one this thread reads next in its place (the next
// key tile of these rows, or the next query block's rows), asked for in advance (prefetch_mask).
template <class V>
void add_mask_t(const FwdParams& p, const int64_t* rows, int n, int64_t k0, int64_t nk, float* x, int64_t ld,
                float* tmp, int64_t ahead) {
  using R = typename V::R;
  constexpr int W = V::W;
  const bool bytes = p.mask_bool && p.mask_col_stride == 1;
  const bool in_place = bytes || (!p.mask_bool && p.mask_col_stride == 1);
  const int64_t line = bytes ? kLineBytes : kLineBytes / int64_t(sizeof(float));  // values per cache line
  const float* src[W] = {};  // float values of keys k0 .. k0 + nk - 1 per lane (null: padding lane)
  const uint8_t* bsrc[W] = {};  // the same as booleans
  for (int w = 0; w < n; ++w) {
    if (bytes) bsrc[w] = static_cast<const uint8_t*>(p.attn_mask) + rows[w] + k0;
    else if (!p.mask_bool && p.mask_col_stride == 1) src[w] = static_cast<const float*>(p.attn_mask) + rows[w] + k0;
    else {
      mask_row(p, rows[w], k0, nk, tmp + w * nk);
      src[w] = tmp + w * nk;
    }
  }
  const R l2e = V::set1(float(kLog2e));
  for (int64_t j0 = 0; j0 < nk; j0 += W) {
    const int m = int(std::min<int64_t>(W, nk - j0));
    R v[W];
    if (ahead != 0 && in_place && j0 % line == 0)
      for (int w = 0; w < n; ++w)
        prefetch_mask(bytes ? static_cast<const void*>(bsrc[w] + j0 + ahead) : static_cast<const void*>(src[w] + j0 + ahead));
    for (int w = 0; w < W; ++w)
      v[w] = w >= n ? V::zero() : bytes ? V::bool_bias(bsrc[w] + j0, m)
                                : m == W ? V::load(src[w] + j0) : V::loadn(src[w] + j0, m);
    V::transpose(v);
    for (int j = 0; j < m; ++j) {
      float* xj = x + (j0 + j) * ld;
      V::store(xj, V::fma(v[j], l2e, V::load(xj)));
    }
  }
}

}  // namespace fae::cpu::FAE_CPU_ISA
