// The vector type the CPU kernels are written against: W float lanes and ~15 operations.
// VecScalar (W = 1) defines the contract; VecAvx2, VecAvx512 and VecNeon implement it with
// intrinsics. Each ISA translation unit includes this header compiled with its own flags, so
// everything here lives in the namespace fae::cpu::<isa> (kernels.h): no inline function compiled
// with AVX-512 can be merged by the linker into a path that runs on a CPU without it.
//
// Contract (x, y, z vectors; p pointers; n a lane count in [0, W]):
//   zero, set1(f), load(p), loadn(p, n) (lanes >= n are 0, nothing past p[n-1] is read),
//   store(p, x), storen(p, x, n) (only p[0..n-1] written), add, sub, mul, div (IEEE, x / x == 1),
//   max (a NaN in y is returned),
//   fma(x, y, z) = x*y + z, hsum(x) (sum of the lanes), hsums(x) on an array x[0 .. W) of
//   vectors: lane w of the result is hsum(x[w]) up to the order of the additions (x is
//   overwritten; a tree of shuffles that reduces W vectors at once), exp2(x) (x <= 0 accurate to ~2e-7
//   relative; 0 for x < -125, so no result is subnormal, as the GPUs' ex2.approx.ftz: a subnormal
//   result costs x86 cores a microcode assist, which made a forward whose mask removes one score
//   in ten 2.65x the plain one (bench/README.md); exp2(-inf) == 0 exactly; NaN propagates),
//   cvt(p, n) for bf16 / f16 storage loads, store_cvt(p, x, n) for stores
//   (round to nearest even, NaN stays NaN),
//   transpose(x) on an array x[0 .. W) of vectors, in place: lane w of x[j] becomes the former
//   lane j of x[w] (a W x W block of rows turned into columns in registers),
//   bool_bias(p, n) for boolean bytes: lane i < n is 0 where p[i] != 0 and -inf where p[i] == 0,
//   lanes >= n are 0 (nothing past p[n-1] is read).
// bfloat16 pairs (the dot-product path of forward.h, used for bfloat16 inputs when kBf16Dot): a
// float lane may carry the bits of two bfloat16 values, the even element in the low 16 bits.
//   pairs(e, o): bf16(e) and bf16(o) (round to nearest even; AVX512_BF16's vcvtne2ps2bf16 also
//   reads subnormal inputs as zero) packed into one lane each;
//   pairs_bf16(e, o, n): the same from two bfloat16 rows (o may be null: zeros), exact;
//   dot2(acc, a, b) = fma(a.even, b.even, fma(a.odd, b.odd, acc)), the order of the x86
//   vdpbf16ps (which also treats subnormal inputs and results as zero; the emulation keeps them).
//   Only vector types with kBf16Dot = true define these: VecAvx512 built with AVX512_BF16, and
//   VecAvx2Bf16Emu, which runs the same kernels on AVX2 so that tests can execute them
//   (kBf16DotNative tells the two apart).
// uint32 lanes (dropout's Philox generator, cpu/dropout.h), U a vector of W uint32:
//   u_set1(u), u_load(p), u_add (mod 2^32), u_xor, u_mulhilo(m, x, &hi): lo and hi words of the
//   64-bit products m * x, keep_mult(u, t, s): s where u >= t (unsigned), else 0.
//   kPhilox64: whether the type also runs the generator in 64-bit lanes (W even; W / 2 lanes of
//   64 bits, a word in the low 32 bits, the high 32 bits free): u_odd(x) (the odd uint32 lanes
//   of x in the low halves; x itself holds the even ones), u_mul64(m, x) (the 64-bit products
//   m * low32(x)), u_hi64(x) (the high halves moved to the low ones; high halves unspecified),
//   u_xor3(x, y, z), u_pack64(e, o) (uint32 lane 2i from low32(e[i]), lane 2i + 1 from
//   low32(o[i])). The scalar type has no 64-bit form (kPhilox64 = false, W = 1).
//   interleave4(x) on an array x[0 .. 4) of vectors, in place: lane l of the former x[w] becomes
//   float 4l + w of x[0], x[1], x[2], x[3] laid end to end (W groups of four words to 4W keys).
// Micro-kernel shape: MR rows x NV vectors of accumulators (see the tile table in kernels.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/convert.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__ARM_NEON)
#include <arm_neon.h>
#endif

namespace fae::cpu::FAE_CPU_ISA {

// 2^f on [-0.5, 0.5]: 1 + f*(c1 + f*(c2 + ...)), least-squares fit, max rel. error 2.2e-9.
constexpr float kExp2C[6] = {0.6931471824645996f, 0.24022647738456726f, 0.05550329014658928f,
                             0.009618373587727547f, 0.0013399857562035322f, 0.00015370715118478984f};
// exp2(x) is 0 below this: every other result is a normal float (2^-125.5 and up).
constexpr float kExp2Min = -125.f;

struct VecScalar {
  using R = float;
  static constexpr int W = 1, MR = 4, NV = 2;
  static constexpr const char* name = "scalar";
  static R zero() { return 0.f; }
  static R set1(float f) { return f; }
  static R load(const float* p) { return *p; }
  static R loadn(const float* p, int n) { return n > 0 ? *p : 0.f; }
  static void store(float* p, R x) { *p = x; }
  static void storen(float* p, R x, int n) { if (n > 0) *p = x; }
  static R add(R x, R y) { return x + y; }
  static R sub(R x, R y) { return x - y; }
  static R mul(R x, R y) { return x * y; }
  static R div(R x, R y) { return x / y; }
  static R max(R x, R y) { return (x > y) ? x : y; }
  static R fma(R x, R y, R z) { return x * y + z; }
  static float hsum(R x) { return x; }
  static R hsums(R* x) { return x[0]; }
  static R exp2(R x) { return x < kExp2Min ? 0.f : std::exp2(x); }
  template <typename T> static R cvt(const T* p, int n) { return n > 0 ? to_float(*p) : 0.f; }
  template <typename T> static void store_cvt(T* p, R x, int n) { if (n > 0) store_from(p, x); }
  static void transpose(R*) {}  // a 1 x 1 block
  static R bool_bias(const uint8_t* p, int n) { return n > 0 && *p == 0 ? -INFINITY : 0.f; }
  using U = uint32_t;
  static U u_set1(uint32_t u) { return u; }
  static U u_load(const uint32_t* p) { return *p; }
  static U u_add(U x, U y) { return x + y; }
  static U u_xor(U x, U y) { return x ^ y; }
  static U u_mulhilo(uint32_t m, U x, U* hi) {
    const uint64_t prod = uint64_t(m) * x;
    *hi = uint32_t(prod >> 32);
    return uint32_t(prod);
  }
  static R keep_mult(U u, uint32_t t, float s) { return u >= t ? s : 0.f; }
  static constexpr bool kPhilox64 = false;
  static void interleave4(R*) {}  // one group: its words are already keys 0 .. 3
  static constexpr bool kBf16Dot = false;
};

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
struct VecAvx2 {
  using R = __m256;
  static constexpr int W = 8, MR = 6, NV = 2;
  static constexpr const char* name = "avx2";
  static __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float f) { return _mm256_set1_ps(f); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static R loadn(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static void store(float* p, R x) { _mm256_storeu_ps(p, x); }
  static void storen(float* p, R x, int n) { _mm256_maskstore_ps(p, mask(n), x); }
  static R add(R x, R y) { return _mm256_add_ps(x, y); }
  static R sub(R x, R y) { return _mm256_sub_ps(x, y); }
  static R mul(R x, R y) { return _mm256_mul_ps(x, y); }
  static R div(R x, R y) { return _mm256_div_ps(x, y); }
  static R max(R x, R y) { return _mm256_max_ps(x, y); }
  static R fma(R x, R y, R z) { return _mm256_fmadd_ps(x, y, z); }
  static float hsum(R x) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
  }
  static R hsums(R* x) {  // pairs within 128-bit halves, then quads, then the halves
    for (int i = 0; i < 4; ++i) x[i] = _mm256_add_ps(_mm256_unpacklo_ps(x[2 * i], x[2 * i + 1]), _mm256_unpackhi_ps(x[2 * i], x[2 * i + 1]));
    for (int i = 0; i < 2; ++i) x[i] = _mm256_add_ps(_mm256_shuffle_ps(x[2 * i], x[2 * i + 1], 0x44), _mm256_shuffle_ps(x[2 * i], x[2 * i + 1], 0xee));
    return _mm256_add_ps(_mm256_permute2f128_ps(x[0], x[1], 0x20), _mm256_permute2f128_ps(x[0], x[1], 0x31));
  }
  static R exp2(R x) {
    const R keep = _mm256_cmp_ps(x, _mm256_set1_ps(kExp2Min), _CMP_NLT_UQ);  // NaN kept
    x = _mm256_min_ps(_mm256_set1_ps(128.f), _mm256_max_ps(_mm256_set1_ps(kExp2Min), x));
    const R n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const R f = _mm256_sub_ps(x, n);
    R p = _mm256_set1_ps(kExp2C[5]);
    for (int i = 4; i >= 0; --i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C[i]));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
    // 2^n as two factors 2^(n/2) so that n in [-160, 128] stays in the normal range.
    const __m256i ni = _mm256_cvtps_epi32(n), h = _mm256_srai_epi32(ni, 1);
    const __m256i e1 = _mm256_slli_epi32(_mm256_add_epi32(h, _mm256_set1_epi32(127)), 23);
    const __m256i e2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(keep, _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e1)), _mm256_castsi256_ps(e2)));
  }
  static R cvt8(const bf16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static R cvt8(const f16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  // bf16 bits of x in the high half of each lane, low half zero (round to nearest even).
  static __m256i round_bf16(R x) {
    const __m256i u = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    const __m256i hi = _mm256_set1_epi32(int(0xffff0000u));
    return _mm256_and_si256(_mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan), hi);
  }
  static __m128i pack8(R x, bf16*) {
    const __m256i r = _mm256_srli_epi32(round_bf16(x), 16);
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  }
  static __m128i pack8(R x, f16*) { return _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT); }
  template <typename T> static R cvt(const T* p, int n) {
    if (n == W) return cvt8(p);
    T tmp[W] = {};
    std::memcpy(tmp, p, sizeof(T) * n);
    return cvt8(tmp);
  }
  template <typename T> static void store_cvt(T* p, R x, int n) {
    const __m128i h = pack8(x, p);
    if (n == W) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h); return; }
    T tmp[W];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(tmp), h);
    std::memcpy(p, tmp, sizeof(T) * n);
  }
  static void transpose(R* x) {  // pairs, then quads within 128-bit halves, then the halves
    R t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(x[i], x[i + 1]);  // x[i][0] x[i+1][0] x[i][1] x[i+1][1] | [4], [5]
      t[i + 1] = _mm256_unpackhi_ps(x[i], x[i + 1]);
    }
    for (int g = 0; g < 8; g += 4) {  // u[g + c]: column c (and c + 4) of rows g .. g + 3
      u[g] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
      u[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xee);
      u[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
      u[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xee);
    }
    for (int c = 0; c < 4; ++c) {
      x[c] = _mm256_permute2f128_ps(u[c], u[c + 4], 0x20);
      x[c + 4] = _mm256_permute2f128_ps(u[c], u[c + 4], 0x31);
    }
  }
  static R bool_bias(const uint8_t* p, int n) {  // bytes from n on read as 1 (true): 0
    uint64_t bytes = 0x0101010101010101ull;
    std::memcpy(&bytes, p, n == W ? W : n);
    const __m256i b = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(bytes)));
    const __m256i off = _mm256_cmpeq_epi32(b, _mm256_setzero_si256());
    return _mm256_and_ps(_mm256_castsi256_ps(off), set1(-INFINITY));
  }
  using U = __m256i;
  static U u_set1(uint32_t u) { return _mm256_set1_epi32(int(u)); }
  static U u_load(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static U u_add(U x, U y) { return _mm256_add_epi32(x, y); }
  static U u_xor(U x, U y) { return _mm256_xor_si256(x, y); }
  static U u_mulhilo(uint32_t m, U x, U* hi) {  // even lanes' products, then odd lanes'
    const U mv = u_set1(m), even = _mm256_mul_epu32(x, mv), odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), mv);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xaa);
    return _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xaa);
  }
  static R keep_mult(U u, uint32_t t, float s) {  // unsigned u < t as signed after flipping the top bit
    const U top = u_set1(0x80000000u);
    const U drop = _mm256_cmpgt_epi32(u_xor(u_set1(t), top), u_xor(u, top));
    return _mm256_andnot_ps(_mm256_castsi256_ps(drop), set1(s));
  }
  static constexpr bool kPhilox64 = true;
  static U u_odd(U x) { return _mm256_srli_epi64(x, 32); }
  static U u_mul64(uint32_t m, U x) { return _mm256_mul_epu32(x, u_set1(m)); }
  static U u_hi64(U x) { return _mm256_shuffle_epi32(x, 0xb1); }  // halves swapped
  static U u_xor3(U x, U y, U z) { return _mm256_xor_si256(_mm256_xor_si256(x, y), z); }
  static U u_pack64(U e, U o) { return _mm256_blend_epi32(e, _mm256_shuffle_epi32(o, 0xb1), 0xaa); }
  static void interleave4(R* x) {  // pairs, then quads: block b of u[k] is group 4b + k
    const R t0 = _mm256_unpacklo_ps(x[0], x[1]), t1 = _mm256_unpackhi_ps(x[0], x[1]);
    const R t2 = _mm256_unpacklo_ps(x[2], x[3]), t3 = _mm256_unpackhi_ps(x[2], x[3]);
    const R u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
    const R u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
    x[0] = _mm256_permute2f128_ps(u0, u1, 0x20);
    x[1] = _mm256_permute2f128_ps(u2, u3, 0x20);
    x[2] = _mm256_permute2f128_ps(u0, u1, 0x31);
    x[3] = _mm256_permute2f128_ps(u2, u3, 0x31);
  }
  static constexpr bool kBf16Dot = false;
};

// The bfloat16 dot-product kernels of avx512bf16 run on AVX2 (dot2 emulated by two FMAs), so that
// their data layout and rounding are tested on any AVX2 machine: instruction set "avx512bf16-emu",
// never chosen automatically (it is slower than avx2).
struct VecAvx2Bf16Emu : VecAvx2 {
  static constexpr const char* name = "avx512bf16-emu";
  static constexpr bool kBf16Dot = true, kBf16DotNative = false;
  static R pairs(R e, R o) {
    return _mm256_castsi256_ps(_mm256_or_si256(_mm256_srli_epi32(round_bf16(e), 16), round_bf16(o)));
  }
  static R pairs_bf16(const bf16* e, const bf16* o, int n) {  // cvt puts a bf16 in the high half
    const __m256i lo = _mm256_srli_epi32(_mm256_castps_si256(cvt(e, n)), 16);
    return o ? _mm256_or_ps(_mm256_castsi256_ps(lo), cvt(o, n)) : _mm256_castsi256_ps(lo);
  }
  static R dot2(R acc, R a, R b) {  // two FMAs, odd elements first
    const R hi = _mm256_castsi256_ps(_mm256_set1_epi32(int(0xffff0000u)));
    acc = _mm256_fmadd_ps(_mm256_and_ps(a, hi), _mm256_and_ps(b, hi), acc);
    const R ae = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(a), 16));
    const R be = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(b), 16));
    return _mm256_fmadd_ps(ae, be, acc);
  }
};
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
struct VecAvx512 {
  using R = __m512;
  static constexpr int W = 16, MR = 6, NV = 4;
#if defined(__AVX512BF16__)
  static constexpr const char* name = "avx512bf16";
#else
  static constexpr const char* name = "avx512";
#endif
  static __mmask16 mask(int n) { return __mmask16((1u << n) - 1u); }
  static R zero() { return _mm512_setzero_ps(); }
  static R set1(float f) { return _mm512_set1_ps(f); }
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static R loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store(float* p, R x) { _mm512_storeu_ps(p, x); }
  static void storen(float* p, R x, int n) { _mm512_mask_storeu_ps(p, mask(n), x); }
  static R add(R x, R y) { return _mm512_add_ps(x, y); }
  static R sub(R x, R y) { return _mm512_sub_ps(x, y); }
  static R mul(R x, R y) { return _mm512_mul_ps(x, y); }
  static R div(R x, R y) { return _mm512_div_ps(x, y); }
  static R max(R x, R y) { return _mm512_max_ps(x, y); }
  static R fma(R x, R y, R z) { return _mm512_fmadd_ps(x, y, z); }
  static float hsum(R x) { return _mm512_reduce_add_ps(x); }
  static R hsums(R* x) {  // pairs and quads within 128-bit lanes, then the lanes in two steps
    for (int i = 0; i < 8; ++i) x[i] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]), _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]));
    for (int i = 0; i < 4; ++i) x[i] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0x44), _mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0xee));
    for (int i = 0; i < 2; ++i) x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0x88), _mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], 0x88), _mm512_shuffle_f32x4(x[0], x[1], 0xdd));
  }
  static R exp2(R x) {
    const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExp2Min), _CMP_NLT_UQ);  // NaN kept
    x = _mm512_min_ps(_mm512_set1_ps(128.f), _mm512_max_ps(_mm512_set1_ps(kExp2Min), x));
    const R n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const R f = _mm512_sub_ps(x, n);
    R p = _mm512_set1_ps(kExp2C[5]);
    for (int i = 4; i >= 0; --i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C[i]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
    return _mm512_maskz_scalef_ps(keep, p, n);  // exact 2^n scaling
  }
  template <typename T> static R cvt(const T* p, int n) {
    const __m256i h = _mm256_maskz_loadu_epi16(mask(n), p);
    if constexpr (std::is_same_v<T, f16>) return _mm512_cvtph_ps(h);
    else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static __m512i round_bf16(R x) {  // bf16 bits in the high half of each lane (nearest even)
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), u, _mm512_set1_epi32(0x400000));
    return _mm512_and_si512(r, _mm512_set1_epi32(int(0xffff0000u)));
  }
  static __m256i pack(R x, f16*) { return _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT); }
  static __m256i pack(R x, bf16*) {
#if defined(__AVX512BF16__)
    return (__m256i)_mm512_cvtneps_pbh(x);  // hardware round to nearest even, NaN stays NaN
#else
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_bf16(x), 16));
#endif
  }
  template <typename T> static void store_cvt(T* p, R x, int n) {
    _mm256_mask_storeu_epi16(p, mask(n), pack(x, p));
  }
  static void transpose(R* x) {  // as VecAvx2's within each 128-bit block, then the blocks
    R t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(x[i], x[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(x[i], x[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) {  // block L of u[g + c]: column 4L + c of rows g .. g + 3
      u[g] = _mm512_shuffle_ps(t[g], t[g + 2], 0x44);
      u[g + 1] = _mm512_shuffle_ps(t[g], t[g + 2], 0xee);
      u[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0x44);
      u[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0xee);
    }
    for (int c = 0; c < 4; ++c) {  // column 4L + c: block L of u[c], u[4 + c], u[8 + c], u[12 + c]
      const R lo01 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), hi01 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xee);
      const R lo23 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44), hi23 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xee);
      x[c] = _mm512_shuffle_f32x4(lo01, lo23, 0x88);
      x[4 + c] = _mm512_shuffle_f32x4(lo01, lo23, 0xdd);
      x[8 + c] = _mm512_shuffle_f32x4(hi01, hi23, 0x88);
      x[12 + c] = _mm512_shuffle_f32x4(hi01, hi23, 0xdd);
    }
  }
  static R bool_bias(const uint8_t* p, int n) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask(n), p));
    return _mm512_maskz_mov_ps(_mm512_mask_cmpeq_epi32_mask(mask(n), b, _mm512_setzero_si512()), set1(-INFINITY));
  }
  using U = __m512i;
  static U u_set1(uint32_t u) { return _mm512_set1_epi32(int(u)); }
  static U u_load(const uint32_t* p) { return _mm512_loadu_si512(p); }
  static U u_add(U x, U y) { return _mm512_add_epi32(x, y); }
  static U u_xor(U x, U y) { return _mm512_xor_si512(x, y); }
  static U u_mulhilo(uint32_t m, U x, U* hi) {  // even lanes' products, then odd lanes'
    const U mv = u_set1(m), even = _mm512_mul_epu32(x, mv), odd = _mm512_mul_epu32(_mm512_srli_epi64(x, 32), mv);
    *hi = _mm512_mask_blend_epi32(0xaaaa, _mm512_srli_epi64(even, 32), odd);
    return _mm512_mask_blend_epi32(0xaaaa, even, _mm512_slli_epi64(odd, 32));
  }
  static R keep_mult(U u, uint32_t t, float s) {
    return _mm512_maskz_mov_ps(_mm512_cmpge_epu32_mask(u, u_set1(t)), set1(s));
  }
  static constexpr bool kPhilox64 = true;
  static U u_odd(U x) { return _mm512_srli_epi64(x, 32); }
  static U u_mul64(uint32_t m, U x) { return _mm512_mul_epu32(x, u_set1(m)); }
  static U u_hi64(U x) { return _mm512_shuffle_epi32(x, _MM_PERM_CDAB); }  // halves swapped
  static U u_xor3(U x, U y, U z) { return _mm512_ternarylogic_epi32(x, y, z, 0x96); }
  static U u_pack64(U e, U o) { return _mm512_mask_shuffle_epi32(e, 0xaaaa, o, _MM_PERM_CDAB); }
  static void interleave4(R* x) {  // as VecAvx2's, then block j of u[0 .. 4) to x[j]
    const R t0 = _mm512_unpacklo_ps(x[0], x[1]), t1 = _mm512_unpackhi_ps(x[0], x[1]);
    const R t2 = _mm512_unpacklo_ps(x[2], x[3]), t3 = _mm512_unpackhi_ps(x[2], x[3]);
    const R u0 = _mm512_shuffle_ps(t0, t2, 0x44), u1 = _mm512_shuffle_ps(t0, t2, 0xee);
    const R u2 = _mm512_shuffle_ps(t1, t3, 0x44), u3 = _mm512_shuffle_ps(t1, t3, 0xee);
    const R lo01 = _mm512_shuffle_f32x4(u0, u1, 0x44), hi01 = _mm512_shuffle_f32x4(u0, u1, 0xee);
    const R lo23 = _mm512_shuffle_f32x4(u2, u3, 0x44), hi23 = _mm512_shuffle_f32x4(u2, u3, 0xee);
    x[0] = _mm512_shuffle_f32x4(lo01, lo23, 0x88);
    x[1] = _mm512_shuffle_f32x4(lo01, lo23, 0xdd);
    x[2] = _mm512_shuffle_f32x4(hi01, hi23, 0x88);
    x[3] = _mm512_shuffle_f32x4(hi01, hi23, 0xdd);
  }
#if defined(__AVX512BF16__)
  static constexpr bool kBf16Dot = true, kBf16DotNative = true;
  static R dot2(R acc, R a, R b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
  // Word 2i of the result from word i of x, word 2i + 1 from word 16 + i: interleaves two halves.
  static __m512i interleave_halves(__m512i x) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(idx, x);
  }
  static R pairs(R e, R o) {  // vcvtne2ps2bf16 (words 0-15 from e, 16-31 from o), then interleaved
    return _mm512_castsi512_ps(interleave_halves((__m512i)_mm512_cvtne2ps_pbh(o, e)));
  }
  static R pairs_bf16(const bf16* e, const bf16* o, int n) {
    const __m256i lo = _mm256_maskz_loadu_epi16(mask(n), e);
    const __m256i hi = o ? _mm256_maskz_loadu_epi16(mask(n), o) : _mm256_setzero_si256();
    return _mm512_castsi512_ps(interleave_halves(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)));
  }
#else
  static constexpr bool kBf16Dot = false;
#endif
};
#endif

#if defined(__ARM_NEON) && defined(__aarch64__)
struct VecNeon {
  using R = float32x4_t;
  static constexpr int W = 4, MR = 6, NV = 4;
  static constexpr const char* name = "neon";
  static R zero() { return vdupq_n_f32(0.f); }
  static R set1(float f) { return vdupq_n_f32(f); }
  static R load(const float* p) { return vld1q_f32(p); }
  static R loadn(const float* p, int n) {
    float tmp[W] = {};
    std::memcpy(tmp, p, sizeof(float) * n);
    return vld1q_f32(tmp);
  }
  static void store(float* p, R x) { vst1q_f32(p, x); }
  static void storen(float* p, R x, int n) {
    float tmp[W];
    vst1q_f32(tmp, x);
    std::memcpy(p, tmp, sizeof(float) * n);
  }
  static R add(R x, R y) { return vaddq_f32(x, y); }
  static R sub(R x, R y) { return vsubq_f32(x, y); }
  static R mul(R x, R y) { return vmulq_f32(x, y); }
  static R div(R x, R y) { return vdivq_f32(x, y); }
  static R max(R x, R y) { return vmaxq_f32(x, y); }  // NaN in either operand wins
  static R fma(R x, R y, R z) { return vfmaq_f32(z, x, y); }
  static float hsum(R x) { return vaddvq_f32(x); }
  static R hsums(R* x) { return vpaddq_f32(vpaddq_f32(x[0], x[1]), vpaddq_f32(x[2], x[3])); }
  static R exp2(R x) {
    const uint32x4_t tiny = vcltq_f32(x, vdupq_n_f32(kExp2Min));  // false for NaN
    x = vminq_f32(x, vdupq_n_f32(128.f));
    x = vbslq_f32(tiny, vdupq_n_f32(kExp2Min), x);  // keeps NaN
    const R n = vrndnq_f32(x), f = vsubq_f32(x, n);
    R p = vdupq_n_f32(kExp2C[5]);
    for (int i = 4; i >= 0; --i) p = vfmaq_f32(vdupq_n_f32(kExp2C[i]), p, f);
    p = vfmaq_f32(vdupq_n_f32(1.f), p, f);
    const int32x4_t ni = vcvtq_s32_f32(n), h = vshrq_n_s32(ni, 1);
    const int32x4_t e1 = vshlq_n_s32(vaddq_s32(h, vdupq_n_s32(127)), 23);
    const int32x4_t e2 = vshlq_n_s32(vaddq_s32(vsubq_s32(ni, h), vdupq_n_s32(127)), 23);
    const R r = vmulq_f32(vmulq_f32(p, vreinterpretq_f32_s32(e1)), vreinterpretq_f32_s32(e2));
    return vbslq_f32(tiny, vdupq_n_f32(0.f), r);
  }
  template <typename T> static R cvt(const T* p, int n) {
    float tmp[W] = {};
    for (int i = 0; i < n; ++i) tmp[i] = to_float(p[i]);
    return vld1q_f32(tmp);
  }
  template <typename T> static void store_cvt(T* p, R x, int n) {
    float tmp[W];
    vst1q_f32(tmp, x);
    for (int i = 0; i < n; ++i) store_from(p + i, tmp[i]);
  }
  static void transpose(R* x) {  // 2 x 2 blocks, then the 64-bit halves
    const float32x4x2_t a = vtrnq_f32(x[0], x[1]), b = vtrnq_f32(x[2], x[3]);
    x[0] = vcombine_f32(vget_low_f32(a.val[0]), vget_low_f32(b.val[0]));
    x[1] = vcombine_f32(vget_low_f32(a.val[1]), vget_low_f32(b.val[1]));
    x[2] = vcombine_f32(vget_high_f32(a.val[0]), vget_high_f32(b.val[0]));
    x[3] = vcombine_f32(vget_high_f32(a.val[1]), vget_high_f32(b.val[1]));
  }
  static R bool_bias(const uint8_t* p, int n) {  // bytes from n on read as 1 (true): 0
    uint8_t tmp[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    std::memcpy(tmp, p, n);
    const uint32x4_t b = vmovl_u16(vget_low_u16(vmovl_u8(vld1_u8(tmp))));
    const uint32x4_t off = vceqq_u32(b, vdupq_n_u32(0));
    return vreinterpretq_f32_u32(vandq_u32(off, vreinterpretq_u32_f32(vdupq_n_f32(-INFINITY))));
  }
  using U = uint32x4_t;
  static U u_set1(uint32_t u) { return vdupq_n_u32(u); }
  static U u_load(const uint32_t* p) { return vld1q_u32(p); }
  static U u_add(U x, U y) { return vaddq_u32(x, y); }
  static U u_xor(U x, U y) { return veorq_u32(x, y); }
  static U u_mulhilo(uint32_t m, U x, U* hi) {  // the high words of the 64-bit products are odd
    const uint32x2_t mv = vdup_n_u32(m);
    const uint64x2_t lo2 = vmull_u32(vget_low_u32(x), mv), hi2 = vmull_u32(vget_high_u32(x), mv);
    *hi = vuzp2q_u32(vreinterpretq_u32_u64(lo2), vreinterpretq_u32_u64(hi2));
    return vmulq_u32(x, vdupq_n_u32(m));
  }
  static R keep_mult(U u, uint32_t t, float s) {
    return vbslq_f32(vcgeq_u32(u, vdupq_n_u32(t)), vdupq_n_f32(s), vdupq_n_f32(0.f));
  }
  static constexpr bool kPhilox64 = false;
  static void interleave4(R* x) { transpose(x); }  // W = 4: a 4 x 4 block
  static constexpr bool kBf16Dot = false;
};
#endif

}  // namespace fae::cpu::FAE_CPU_ISA
