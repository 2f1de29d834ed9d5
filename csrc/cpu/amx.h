// Tile matrix products on Intel AMX (per-ISA source, see vec.h): the bfloat16 forward's two
// products (forward.h, pair path) and the backward's five (backward.h) when the vector type has
// them (AmxOf). One tile register holds 16 rows
// of 64 bytes: 16 x 16 float32 accumulators, or 16 rows x 16 bfloat16 pairs of an operand.
//
// Contract (the emulated definition below, AmxEmulated, is the reference): with A an M x K matrix
// of bfloat16 pairs (32-bit words, the even element in the low half, as vec.h's pairs) and B a
// K x N matrix of pairs,
//   C(m, n) (+)= sum over k of  A(m, k).even * B(k, n).even  then  A(m, k).odd * B(k, n).odd,
// each step a float32 fused multiply-add in the order written (tdpbf16ps; the hardware also treats
// subnormal inputs and results as zero, the emulation keeps them). M, N and K are multiples of 16:
// callers pad operands with zero rows and columns.
// AmxNative runs the instructions; AmxEmulated runs the same kernel in scalar code on a
// thread-local register file, so the AMX path of the forward is tested on any x86 machine
// (instruction set "avx512amx-emu"). The operating system must have granted the process the
// tile data state (dispatch.cpp asks Linux once, before choosing "avx512amx").
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/vec.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <immintrin.h>
#endif

namespace fae::cpu::FAE_CPU_ISA {

constexpr int kAmxRows = 16;  // rows of a tile; also its float32 columns and its pair columns

// C (M x N float32) (+)= A (M x K pairs) . B (K x N pairs). A row m starts at a + m * lda bytes
// (pairs contiguous along K). B and C are float-sized words, rows ldb and ldc words apart; with
// column panels (the forward's tile buffers, forward.h Panels) column n sits in panel n / pw, at
// (n / pw) * panel stride + n % pw (panel strides 0: plain rows).
struct AmxGemm {
  const char* a;
  int64_t lda;        // bytes
  const float* b;
  int64_t ldb;        // words
  float* c;
  int64_t ldc;        // words
  int64_t k;          // pairs
  bool accumulate;
  int64_t pw = 0;     // panel width of B and C, a multiple of 16, when panel strides are set
  int64_t sbp = 0, scp = 0;
  const float* bcol(int64_t kk, int64_t n) const { return b + (sbp ? (n / pw) * sbp + n % pw : n) + kk * ldb; }
  float* ccol(int64_t m, int64_t n) const { return c + (scp ? (n / pw) * scp + n % pw : n) + m * ldc; }
};

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
struct AmxNative {
  // Palette 1, every tile 16 rows x 64 bytes.
  static void configure() {
    alignas(64) uint8_t cfg[64] = {};
    cfg[0] = 1;
    for (int t = 0; t < 8; ++t) {
      const uint16_t colsb = 64;
      std::memcpy(cfg + 16 + 2 * t, &colsb, 2);
      cfg[48 + t] = kAmxRows;
    }
    _tile_loadconfig(cfg);
  }
  static void release() { _tile_release(); }
  // The intrinsics take tile numbers as literals: one branch per register.
#define FAE_AMX_EACH_TILE(op) \
  if constexpr (T == 0) op(0); else if constexpr (T == 1) op(1); else if constexpr (T == 2) op(2); \
  else if constexpr (T == 3) op(3); else if constexpr (T == 4) op(4); else if constexpr (T == 5) op(5); \
  else if constexpr (T == 6) op(6); else op(7)
#define FAE_AMX_LOAD(t) _tile_loadd(t, p, stride)
#define FAE_AMX_STORE(t) _tile_stored(t, p, stride)
  template <int T> static void load(const void* p, int64_t stride) { FAE_AMX_EACH_TILE(FAE_AMX_LOAD); }
  template <int T> static void store(void* p, int64_t stride) { FAE_AMX_EACH_TILE(FAE_AMX_STORE); }
  template <int T> static void zero() { FAE_AMX_EACH_TILE(_tile_zero); }
#undef FAE_AMX_LOAD
#undef FAE_AMX_STORE
#undef FAE_AMX_EACH_TILE
  template <int C, int A, int B> static void dot() {  // the four products of amx_block
    static_assert((C == 0 && A == 4 && B == 6) || (C == 1 && A == 4 && B == 7) || (C == 2 && A == 5 && B == 6) ||
                  (C == 3 && A == 5 && B == 7), "amx_block's register plan");
    if constexpr (C == 0) _tile_dpbf16ps(0, 4, 6);
    else if constexpr (C == 1) _tile_dpbf16ps(1, 4, 7);
    else if constexpr (C == 2) _tile_dpbf16ps(2, 5, 6);
    else _tile_dpbf16ps(3, 5, 7);
  }
};
#endif

struct AmxEmulated {
  struct File { float t[8][kAmxRows][kAmxRows]; };
  static File& regs() {
    static thread_local File f;
    return f;
  }
  static void configure() {}
  static void release() {}
  template <int T> static void load(const void* p, int64_t stride) {
    for (int r = 0; r < kAmxRows; ++r) std::memcpy(regs().t[T][r], static_cast<const char*>(p) + r * stride, 64);
  }
  template <int T> static void store(void* p, int64_t stride) {
    for (int r = 0; r < kAmxRows; ++r) std::memcpy(static_cast<char*>(p) + r * stride, regs().t[T][r], 64);
  }
  template <int T> static void zero() { std::memset(regs().t[T], 0, sizeof(regs().t[T])); }
  static float half(float word, int odd) {
    uint32_t u;
    std::memcpy(&u, &word, 4);
    u = odd ? (u & 0xffff0000u) : (u << 16);
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  template <int C, int A, int B> static void dot() {
    File& f = regs();
    for (int m = 0; m < kAmxRows; ++m)
      for (int k = 0; k < kAmxRows; ++k) {
        const float a = f.t[A][m][k];
        for (int n = 0; n < kAmxRows; ++n) {
          const float b = f.t[B][k][n];
          float& c = f.t[C][m][n];
          c = std::fma(half(a, 0), half(b, 0), c);
          c = std::fma(half(a, 1), half(b, 1), c);
        }
      }
  }
};

// One block of MB x NB tiles of C (tile registers 0-3), with A in registers 4-5 and B in 6-7.
template <class X, int MB, int NB>
void amx_block(const AmxGemm& g, int64_t m0, int64_t n0) {
  const int64_t bs = g.ldb * 4, cs = g.ldc * 4;  // row strides of B and C, bytes
  auto each_c = [](auto&& f) {  // f(tile register, tile row, tile column) for the block's C tiles
    f(std::integral_constant<int, 0>{}, 0, 0);
    if constexpr (NB > 1) f(std::integral_constant<int, 1>{}, 0, 1);
    if constexpr (MB > 1) f(std::integral_constant<int, 2>{}, 1, 0);
    if constexpr (MB > 1 && NB > 1) f(std::integral_constant<int, 3>{}, 1, 1);
  };
  auto c_at = [&](int i, int j) { return g.ccol(m0 + i * kAmxRows, n0 + j * kAmxRows); };
  each_c([&](auto t, int i, int j) {
    if (g.accumulate) X::template load<decltype(t)::value>(c_at(i, j), cs);
    else X::template zero<decltype(t)::value>();
  });
  for (int64_t kk = 0; kk < g.k; kk += kAmxRows) {
    const char* a = g.a + m0 * g.lda + kk * 4;
    X::template load<4>(a, g.lda);
    if constexpr (MB > 1) X::template load<5>(a + kAmxRows * g.lda, g.lda);
    X::template load<6>(g.bcol(kk, n0), bs);
    if constexpr (NB > 1) X::template load<7>(g.bcol(kk, n0 + kAmxRows), bs);
    X::template dot<0, 4, 6>();
    if constexpr (NB > 1) X::template dot<1, 4, 7>();
    if constexpr (MB > 1) X::template dot<2, 5, 6>();
    if constexpr (MB > 1 && NB > 1) X::template dot<3, 5, 7>();
  }
  each_c([&](auto t, int i, int j) { X::template store<decltype(t)::value>(c_at(i, j), cs); });
}

// The whole product, in blocks of 2 x 2 tiles (32 x 32 of C), narrower at odd edges.
template <class X>
void amx_gemm(int64_t M, int64_t N, const AmxGemm& g) {
  for (int64_t n0 = 0; n0 < N; n0 += 2 * kAmxRows) {
    const bool n2 = n0 + 2 * kAmxRows <= N;
    for (int64_t m0 = 0; m0 < M; m0 += 2 * kAmxRows) {
      const bool m2 = m0 + 2 * kAmxRows <= M;
      if (m2 && n2) amx_block<X, 2, 2>(g, m0, n0);
      else if (m2) amx_block<X, 2, 1>(g, m0, n0);
      else if (n2) amx_block<X, 1, 2>(g, m0, n0);
      else amx_block<X, 1, 1>(g, m0, n0);
    }
  }
}

// Shapes the tile paths take: head dims of whole tile rows of pairs, key tiles of whole pair rows.
constexpr bool amx_shape(int64_t head_dim, int64_t keys) {
  return head_dim % (2 * kAmxRows) == 0 && keys % (2 * kAmxRows) == 0;
}

// n rows of bfloat16 x (row stride xs, d elements each) as the A operand of a tile product: in
// place when n fills whole tile rows, else copied into buf (rows of d / 2 words) with zero rows
// up to a whole tile row. Returns the rows and sets lda to their stride in bytes.
inline const char* tile_rows(const bf16* x, int64_t xs, int64_t n, int64_t d, float* buf, int64_t& lda) {
  const int64_t n16 = (n + kAmxRows - 1) / kAmxRows * kAmxRows, dw = d / 2;
  if (n == n16) {
    lda = xs * int64_t(sizeof(bf16));
    return reinterpret_cast<const char*>(x);
  }
  for (int64_t r = 0; r < n16; ++r)
    if (r < n) std::memcpy(buf + r * dw, x + r * xs, sizeof(bf16) * d);
    else std::memset(buf + r * dw, 0, sizeof(float) * dw);
  lda = dw * int64_t(sizeof(float));
  return reinterpret_cast<const char*>(buf);
}

// Operand packing for the tile products (V a vector type of vec.h; counts are multiples of W).
// out[c * ldo + r] = lane c - c0 of row(r, c0) for r < nr and c < nc: rows of W lanes turned into
// columns, W x W blocks at a time in registers.
template <class V, class Row>
void store_transposed(int64_t nr, int64_t nc, const Row& row, float* out, int64_t ldo) {
  constexpr int W = V::W;
  for (int64_t r0 = 0; r0 < nr; r0 += W)
    for (int64_t c0 = 0; c0 < nc; c0 += W) {
      typename V::R v[W];
      for (int i = 0; i < W; ++i) v[i] = row(r0 + i, c0);
      V::transpose(v);
      for (int i = 0; i < W; ++i) V::store(out + (c0 + i) * ldo + r0, v[i]);
    }
}

// The words (bfloat16 pairs along a row) of rows [0, n) of x (row stride xs elements), transposed:
// out[w * ldo + r] = word w of row r, for w < nw and r < nr; rows n .. nr - 1 read as zero.
template <class V>
void pack_words_t(const bf16* x, int64_t xs, int64_t n, int64_t nr, int64_t nw, float* out, int64_t ldo) {
  store_transposed<V>(nr, nw, [&](int64_t r, int64_t w0) {
    return r < n ? V::load(reinterpret_cast<const float*>(x + r * xs) + w0) : V::zero();
  }, out, ldo);
}

// Pairs of rows of x as words: W of them from column e, (x[2 rp][e + i], x[2 rp + 1][e + i]),
// zero past row n - 1.
template <class V>
typename V::R row_pair(const bf16* x, int64_t xs, int64_t n, int64_t rp, int64_t e) {
  const bf16* a = x + 2 * rp * xs + e;
  return 2 * rp >= n ? V::zero() : V::pairs_bf16(a, 2 * rp + 1 < n ? a + xs : nullptr, V::W);
}

// out[rp * d + e] = (x[2 rp][e], x[2 rp + 1][e]) for rp < np and e < d, rows past n - 1 zero.
template <class V>
void pack_row_pairs(const bf16* x, int64_t xs, int64_t n, int64_t np, int64_t d, float* out) {
  for (int64_t rp = 0; rp < np; ++rp)
    for (int64_t e = 0; e < d; e += V::W) V::store(out + rp * d + e, row_pair<V>(x, xs, n, rp, e));
}

// The same pairs transposed: out[e * ldo + rp] for e < d and rp < np.
template <class V>
void pack_row_pairs_t(const bf16* x, int64_t xs, int64_t n, int64_t np, int64_t d, float* out, int64_t ldo) {
  store_transposed<V>(np, d, [&](int64_t rp, int64_t e) { return row_pair<V>(x, xs, n, rp, e); }, out, ldo);
}

// Pairs of float rows of y (row stride ly) rounded to bfloat16 and transposed: out[c * ldo + rp] =
// (y[2 rp][c], y[2 rp + 1][c]) for c < m and rp < np, rows past n - 1 zero.
template <class V>
void pack_pairs_t(const float* y, int64_t ly, int64_t n, int64_t np, int64_t m, float* out, int64_t ldo) {
  store_transposed<V>(np, m, [&](int64_t rp, int64_t c0) {
    const int64_t r = 2 * rp;
    return r >= n ? V::zero() : V::pairs(V::load(y + r * ly + c0), r + 1 < n ? V::load(y + (r + 1) * ly + c0) : V::zero());
  }, out, ldo);
}

// Tiles configured for the lifetime of this object when `use` (one forward task).
template <class X>
struct AmxTiles {
  bool on;
  explicit AmxTiles(bool use) : on(use) {
    if (on) X::configure();
  }
  ~AmxTiles() {
    if (on) X::release();
  }
  AmxTiles(const AmxTiles&) = delete;
  AmxTiles& operator=(const AmxTiles&) = delete;
};

// Vector types whose kernels run the forward's bfloat16 products on tiles (forward.h): AmxOf<V>.
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
struct VecAvx512Amx : VecAvx512 {
  static constexpr const char* name = "avx512amx";
  using Amx = AmxNative;
};
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
struct VecAvx2AmxEmu : VecAvx2Bf16Emu {  // test path: the tile products emulated, vectors AVX2
  static constexpr const char* name = "avx512amx-emu";
  using Amx = AmxEmulated;
};
#endif

template <class V, class = void>
struct AmxOf {
  static constexpr bool value = false;
  using X = AmxEmulated;  // never run
};
template <class V>
struct AmxOf<V, std::void_t<typename V::Amx>> {
  static constexpr bool value = true;
  using X = typename V::Amx;
};

}  // namespace fae::cpu::FAE_CPU_ISA
