// Register-blocked float GEMM used by every attention product: C (M x N) = or += A . B.
// A is read by scalar broadcasts through two strides, A(m, k) = a[m*sam + k*sak], so a transposed
// operand (K rows for S^T, V columns for O^T, P columns for dV) needs no packing; B is read by
// rows of N contiguous floats, row k at b + k*ldb. The micro-kernel keeps an MR x NV block of
// vector accumulators in registers (V::MR x V::NV, 12 on AVX2, 24 on AVX-512 / NEON) and walks
// the whole K extent once (or K in blocks, Gemm::kblock); a column tail is handled with masked
// loads / stores, never over-read.
// With kDot2 the operands hold bfloat16 pairs (vec.h) and each step of K is a pair: C += A . B
// with V::dot2 instead of V::fma (A elements are 32-bit words, each two consecutive k).
// Part of the per-ISA kernel source: include only from an ISA translation unit (see vec.h).
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

namespace fae::cpu::FAE_CPU_ISA {

struct Gemm {
  const float* a;
  int64_t sam, sak;  // A(m, k) = a[m*sam + k*sak]
  const float* b;
  int64_t ldb;       // B(k, n) = b[k*ldb + n]
  float* c;
  int64_t ldc;       // C(m, n) = c[m*ldc + n]
  int64_t k;         // reduction length
  bool accumulate;   // C += A.B instead of C = A.B
  // Column panels: when nonzero, B and C are stored as panels of V::NV * W columns, panel p at
  // b + p * sbp and c + p * scp (ldb / ldc then being the panel width); else plainly by rows.
  int64_t sbp = 0, scp = 0;
  // With accumulate: C is first scaled per column, C(m, n) *= cscale[n] (the forward's online
  // softmax rescale of O^T, fused into the accumulator loads).
  const float* cscale = nullptr;
  // When nonzero: K is summed in blocks of kblock steps, each block from zero and then added to
  // C (blocked summation). For the score products S = Q.K^T and dP = dO.V^T, whose absolute
  // error the exponential turns into relative error of P: a sum in one chain over D = 64 erred
  // 2.4x as much as blocks of 16 on logits of 100 (tests/test_grad_edges.py's large logits).
  int64_t kblock = 0;
};

// The block length of the score products (Gemm::kblock).
inline constexpr int64_t kScoreSumBlock = 16;

// g with K summed in blocks of kScoreSumBlock (the score products S and dP).
inline Gemm score_sum(Gemm g) {
  g.kblock = kScoreSumBlock;
  return g;
}

template <class V, bool kDot2, int MR, int NV, bool kTail>
void micro_kernel(const Gemm& g, const float* a, const float* b, float* c, const float* cs, int tail) {
  using R = typename V::R;
  constexpr int W = V::W;
  R acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) {
      float* cp = c + m * g.ldc + v * W;
      acc[m][v] = !g.accumulate ? V::zero() : (kTail && v == NV - 1) ? V::loadn(cp, tail) : V::load(cp);
    }
  if (cs != nullptr)
    for (int v = 0; v < NV; ++v) {
      const R sv = (kTail && v == NV - 1) ? V::loadn(cs + v * W, tail) : V::load(cs + v * W);
      for (int m = 0; m < MR; ++m) acc[m][v] = V::mul(acc[m][v], sv);
    }
  const float* ap[MR];
  for (int m = 0; m < MR; ++m) ap[m] = a + m * g.sam;
  const int64_t sak = g.sak, ldb = g.ldb, kb = g.kblock > 0 ? g.kblock : std::max<int64_t>(g.k, 1);
  int64_t ka = 0;
  for (int64_t k0 = 0; k0 == 0 || k0 < g.k; k0 += kb) {  // once when K is 0: C = 0 or C
    if (k0 > 0)
      for (int m = 0; m < MR; ++m)
        for (int v = 0; v < NV; ++v) acc[m][v] = V::zero();
    const int64_t k1 = std::min(g.k, k0 + kb);
    for (int64_t k = k0; k < k1; ++k, ka += sak, b += ldb) {
      R bv[NV];
      for (int v = 0; v < NV; ++v) bv[v] = (kTail && v == NV - 1) ? V::loadn(b + v * W, tail) : V::load(b + v * W);
      for (int m = 0; m < MR; ++m) {
        const R av = V::set1(ap[m][ka]);
        for (int v = 0; v < NV; ++v) {
          if constexpr (kDot2) acc[m][v] = V::dot2(acc[m][v], av, bv[v]);
          else acc[m][v] = V::fma(av, bv[v], acc[m][v]);
        }
      }
    }
    for (int m = 0; m < MR; ++m)  // the first block stores its sum, every later one adds to C
      for (int v = 0; v < NV; ++v) {
        float* cp = c + m * g.ldc + v * W;
        const bool t = kTail && v == NV - 1;
        const R sum = k0 == 0 ? acc[m][v] : V::add(acc[m][v], t ? V::loadn(cp, tail) : V::load(cp));
        if (t) V::storen(cp, sum, tail);
        else V::store(cp, sum);
      }
  }
}

template <class V>
using MicroFn = void (*)(const Gemm&, const float*, const float*, float*, const float*, int);

// Entry ((mr - 1) * NV + (nv - 1)) * 2 + has_tail: every row count and vector count of a block.
template <class V, bool kDot2, int... I>
constexpr std::array<MicroFn<V>, sizeof...(I)> micro_table(std::integer_sequence<int, I...>) {
  return {&micro_kernel<V, kDot2, I / (2 * V::NV) + 1, (I / 2) % V::NV + 1, (I % 2) == 1>...};
}

template <class V, bool kDot2 = false>
void gemm(int64_t M, int64_t N, const Gemm& g) {
  constexpr int W = V::W, MR = V::MR, NV = V::NV;
  static constexpr auto table = micro_table<V, kDot2>(std::make_integer_sequence<int, MR * NV * 2>{});
  for (int64_t n0 = 0, pi = 0; n0 < N; n0 += int64_t(NV) * W, ++pi) {
    const int nn = int(std::min<int64_t>(NV * W, N - n0));
    const int nv = (nn + W - 1) / W, tail = nn - (nv - 1) * W;
    const float* b = g.sbp ? g.b + pi * g.sbp : g.b + n0;
    float* c = g.scp ? g.c + pi * g.scp : g.c + n0;
    const float* cs = g.cscale ? g.cscale + n0 : nullptr;
    for (int64_t m0 = 0, mr; m0 < M; m0 += mr) {
      // A remainder of r < MR rows is shared with the last full block (MR + r rows as two
      // blocks of about half), so no block is much narrower than MR: narrow blocks reload B
      // for few FMAs (D = 128: 21 x 6 + 2 rows became 20 x 6 + 4 + 4).
      const int64_t rest = M - m0;
      mr = rest >= 2 * MR || rest <= MR ? std::min<int64_t>(MR, rest) : (rest + 1) / 2;
      table[((int(mr) - 1) * NV + (nv - 1)) * 2 + (tail != W)](g, g.a + m0 * g.sam, b, c + m0 * g.ldc, cs, tail);
    }
  }
}

}  // namespace fae::cpu::FAE_CPU_ISA
