// Host-compiler implementation of the primitives (included by primitives.cuh only): each one calls
// the SIMT emulator (csrc/emu) or, for pure arithmetic, computes the bit-exact result of the PTX
// instruction in software (docs/emulator.md). This header is the one place where kernel code
// meets the emulator: csrc/emu itself knows nothing of the kernels.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/fp16.h"
#include "emu/api.h"
#include "emu/runtime.h"

namespace fae {

// ---- conversions: f32_to_f16_bits and friends come from common/fp16.h (the cvt rules) ----
template <class T>
inline uint32_t pack2(float lo, float hi) {
  static_assert(std::is_same_v<T, half_t> || std::is_same_v<T, bf16_t>, "pack2 packs half_t or bf16_t");
  if constexpr (std::is_same_v<T, half_t>)
    return uint32_t(f32_to_f16_bits(lo)) | (uint32_t(f32_to_f16_bits(hi)) << 16);
  else
    return uint32_t(f32_to_bf16_bits(lo)) | (uint32_t(f32_to_bf16_bits(hi)) << 16);
}

// ex2.approx.ftz.f32: the correctly rounded 2^x (within the instruction's 2 ulp; moved within them in
// the emulator's hardware numerics mode), subnormal input and output flushed to zero.
inline float fast_exp2(float x) { return emu::ex2_approx(x); }

// ---- tensor cores: qual = K | (bf16 ? 0x100 : 0) ----
template <class T>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  static_assert(std::is_same_v<T, half_t> || std::is_same_v<T, bf16_t>, "mma inputs are half_t or bf16_t");
  emu::Arrival r{};
  r.op = emu::Op::mma;
  r.qual = 16 | (std::is_same_v<T, bf16_t> ? 0x100 : 0);
  r.mask = ~0u;
  r.a = a;
  r.b = b;
  r.c = c;
  r.d = d;
  emu::warp_collective(r);
}
template <class T>
inline void mma_m16n8k8(float (&d)[4], const uint32_t (&a)[2], uint32_t b, const float (&c)[4]) {
  static_assert(std::is_same_v<T, half_t> || std::is_same_v<T, bf16_t>, "mma inputs are half_t or bf16_t");
  emu::Arrival r{};
  r.op = emu::Op::mma;
  r.qual = 8 | (std::is_same_v<T, bf16_t> ? 0x100 : 0);
  r.mask = ~0u;
  r.a = a;
  r.b = &b;
  r.c = c;
  r.d = d;
  emu::warp_collective(r);
}

// ---- ldmatrix / stmatrix ----
namespace emu {
inline void matrix_op(Op op, int num, bool trans, const void* p, uint32_t* r0, uint32_t* r1, uint32_t* r2,
                      uint32_t* r3, Site site) {
  Arrival r{};
  r.site = site;
  r.op = op;
  r.qual = num | (trans ? 8 : 0);
  r.mask = ~0u;
  r.addr = p;
  r.out[0] = r0;
  r.out[1] = r1;
  r.out[2] = r2;
  r.out[3] = r3;
  warp_collective(r);
}
}  // namespace emu

template <class T>
inline void ldmatrix_x1(uint32_t& r0, sptr<T> p, emu::Site site = emu::Site::here()) {
  emu::matrix_op(emu::Op::ldmatrix, 1, false, p.get(), &r0, nullptr, nullptr, nullptr, site);
}
template <class T>
inline void ldmatrix_x2(uint32_t& r0, uint32_t& r1, sptr<T> p, emu::Site site = emu::Site::here()) {
  emu::matrix_op(emu::Op::ldmatrix, 2, false, p.get(), &r0, &r1, nullptr, nullptr, site);
}
template <class T>
inline void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, sptr<T> p,
                        emu::Site site = emu::Site::here()) {
  emu::matrix_op(emu::Op::ldmatrix, 4, false, p.get(), &r0, &r1, &r2, &r3, site);
}
template <class T>
inline void ldmatrix_x1_trans(uint32_t& r0, sptr<T> p, emu::Site site = emu::Site::here()) {
  emu::matrix_op(emu::Op::ldmatrix, 1, true, p.get(), &r0, nullptr, nullptr, nullptr, site);
}
template <class T>
inline void ldmatrix_x2_trans(uint32_t& r0, uint32_t& r1, sptr<T> p, emu::Site site = emu::Site::here()) {
  emu::matrix_op(emu::Op::ldmatrix, 2, true, p.get(), &r0, &r1, nullptr, nullptr, site);
}
template <class T>
inline void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, sptr<T> p,
                              emu::Site site = emu::Site::here()) {
  emu::matrix_op(emu::Op::ldmatrix, 4, true, p.get(), &r0, &r1, &r2, &r3, site);
}
template <class T>
inline void stmatrix_x1(uint32_t r0, sptr<T> p, emu::Site site = emu::Site::here()) {
  emu::matrix_op(emu::Op::stmatrix, 1, false, p.get(), &r0, nullptr, nullptr, nullptr, site);
}
template <class T>
inline void stmatrix_x2(uint32_t r0, uint32_t r1, sptr<T> p, emu::Site site = emu::Site::here()) {
  emu::matrix_op(emu::Op::stmatrix, 2, false, p.get(), &r0, &r1, nullptr, nullptr, site);
}
template <class T>
inline void stmatrix_x4(uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3, sptr<T> p,
                        emu::Site site = emu::Site::here()) {
  emu::matrix_op(emu::Op::stmatrix, 4, false, p.get(), &r0, &r1, &r2, &r3, site);
}
template <class T>
inline void stmatrix_x1_trans(uint32_t r0, sptr<T> p, emu::Site site = emu::Site::here()) {
  emu::matrix_op(emu::Op::stmatrix, 1, true, p.get(), &r0, nullptr, nullptr, nullptr, site);
}
template <class T>
inline void stmatrix_x2_trans(uint32_t r0, uint32_t r1, sptr<T> p, emu::Site site = emu::Site::here()) {
  emu::matrix_op(emu::Op::stmatrix, 2, true, p.get(), &r0, &r1, nullptr, nullptr, site);
}
template <class T>
inline void stmatrix_x4_trans(uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3, sptr<T> p,
                              emu::Site site = emu::Site::here()) {
  emu::matrix_op(emu::Op::stmatrix, 4, true, p.get(), &r0, &r1, &r2, &r3, site);
}

// ---- cp.async ----
template <int Bytes, class D, class S>
inline void cp_async(sptr<D> dst, gptr<S> src, int src_bytes = Bytes, emu::Site site = emu::Site::here()) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
  emu::cp_async(dst.get(), src.get(), src.lo(), src.hi(), Bytes, src_bytes, site);
}
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  emu::cp_async_wait(N);
}
inline void cp_async_wait_all() { emu::cp_async_wait_all(); }

// ---- read-only loads: a checked load (the cache path is a device matter) ----
template <class T>
inline T load_nc(gptr<const T> p) {
  return *p;
}
inline uint4 load_nc_here(gptr<const uint4> p) { return *p; }

}  // namespace fae

// ---- CUDA builtins ----
inline void __syncthreads() { ::fae::emu::syncthreads(); }
inline unsigned __float_as_uint(float x) { return ::fae::float_bits(x); }
inline float __uint_as_float(unsigned u) { return ::fae::bits_float(u); }
inline int __float_as_int(float x) { return static_cast<int>(::fae::float_bits(x)); }
inline float __int_as_float(int i) { return ::fae::bits_float(static_cast<uint32_t>(i)); }

namespace fae::emu {
// shfl.sync with the c operand the CUDA headers build from `width` (docs/emulator.md section 3.4); qual = mode.
inline uint32_t shfl32(int mode, unsigned mask, uint32_t v, int b, int width) {
  Arrival r{};
  r.op = Op::shfl;
  r.qual = mode;
  r.mask = mask;
  r.v[0] = v;
  r.sb = b;
  r.sc = ((32 - width) << 8) | (mode == shfl_up ? 0 : 0x1F);
  r.v[1] = static_cast<uint32_t>(width);
  warp_collective(r);
  return r.v[0];
}
template <class T>
inline T shfl(int mode, unsigned mask, T v, int b, int width) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffles move 32- or 64-bit values");
  uint32_t w[sizeof(T) / 4];
  std::memcpy(w, &v, sizeof(T));
  for (auto& x : w) x = shfl32(mode, mask, x, b, width);
  std::memcpy(&v, w, sizeof(T));
  return v;
}
}  // namespace fae::emu

namespace fae::emu {
// vote.sync over the lanes of `mask`; qual = mode.
inline uint32_t vote(int mode, unsigned mask, int pred) {
  Arrival r{};
  r.op = Op::vote;
  r.qual = mode;
  r.mask = mask;
  r.v[0] = pred != 0;
  warp_collective(r);
  return r.v[0];
}
}  // namespace fae::emu
inline int __all_sync(unsigned mask, int pred) { return int(::fae::emu::vote(::fae::emu::vote_all, mask, pred)); }
inline int __any_sync(unsigned mask, int pred) { return int(::fae::emu::vote(::fae::emu::vote_any, mask, pred)); }
inline unsigned __ballot_sync(unsigned mask, int pred) { return ::fae::emu::vote(::fae::emu::vote_ballot, mask, pred); }

// The CUDA overload set (one per value type), so that proxies such as p[i] convert as on nvcc.
#define FAE_EMU_SHFL(T)                                                                  \
  inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {               \
    return ::fae::emu::shfl(::fae::emu::shfl_idx, mask, v, src_lane, width);             \
  }                                                                                      \
  inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {          \
    return ::fae::emu::shfl(::fae::emu::shfl_up, mask, v, static_cast<int>(delta), width);   \
  }                                                                                      \
  inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {        \
    return ::fae::emu::shfl(::fae::emu::shfl_down, mask, v, static_cast<int>(delta), width); \
  }                                                                                      \
  inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {          \
    return ::fae::emu::shfl(::fae::emu::shfl_bfly, mask, v, lane_mask, width);           \
  }
FAE_EMU_SHFL(int)
FAE_EMU_SHFL(unsigned)
FAE_EMU_SHFL(long)
FAE_EMU_SHFL(unsigned long)
FAE_EMU_SHFL(long long)
FAE_EMU_SHFL(unsigned long long)
FAE_EMU_SHFL(float)
FAE_EMU_SHFL(double)
#undef FAE_EMU_SHFL

// Global float atomic add (device-scope; blocks may run on several OS threads).
inline float atomicAdd(::fae::gptr<float> p, float v, ::fae::emu::Site site = ::fae::emu::Site::here()) {
  ::fae::emu::check_global(p.get(), sizeof(float), p.lo(), p.hi(), ::fae::emu::GAccess::atomic, site);
  uint32_t* w = reinterpret_cast<uint32_t*>(p.get());
  uint32_t old = __atomic_load_n(w, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(w, &old, ::fae::float_bits(::fae::bits_float(old) + v), true, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED)) {
  }
  return ::fae::bits_float(old);
}

// ---- launch (cuda/launch.cuh documents both builds) ----
namespace fae {

// Also announces the buffer to the next launch from this thread (gptrs may sit inside structs).
template <class T>
inline gptr<T> gbuf(T* p, std::size_t count) {
  emu::announce_buffer({p, p + count});
  return gptr<T>(p, p, p + count);
}

namespace detail {
template <class T>
void add_buffer(std::vector<emu::Buffer>& v, const gptr<T>& p) {
  v.push_back({p.lo(), p.hi()});
}
template <class T>
void add_buffer(std::vector<emu::Buffer>&, const T&) {}
}  // namespace detail

inline std::size_t max_dynamic_smem() { return emu::get_config().smem_limit; }

template <class... KArgs, class... Args>
void launch(const char* name, void (*kernel)(KArgs...), const LaunchConfig& cfg, Args&&... args) {
  std::tuple<std::decay_t<KArgs>...> params(std::forward<Args>(args)...);
  std::vector<emu::Buffer> buffers;
  std::apply([&buffers](const auto&... a) { (detail::add_buffer(buffers, a), ...); }, params);
  emu::launch(name, cfg.grid, cfg.block, cfg.smem_bytes, [kernel, &params] { std::apply(kernel, params); }, buffers);
}

}  // namespace fae
