// Kernel-facing side of the SIMT emulator: what CUDA source sees when it is compiled by a host
// compiler. CUDA builtin types and variables, the checked global/shared pointers, and the entry
// points of the runtime (runtime.cpp) that the primitives call.
//
// Checked pointers:
//   fae::gptr<T>  global memory. A fat pointer {p, lo, hi}: the launcher builds it with
//                 fae::gbuf(ptr, count) from a buffer it owns; every dereference is bounds-checked
//                 against [lo, hi), writes are also checked against pending cp.async sources, and
//                 every access against the other blocks' accesses of the launch (global races).
//   fae::sptr<T>  shared memory (from fae::dynamic_smem<T>()). Every access goes through the
//                 block's shadow memory: bounds of the dynamic size, cross-thread races within a
//                 barrier interval, cp.async bytes in flight or not yet made visible by a barrier.
// p[i], *p and p + i work as for raw pointers; p[i] returns a proxy that checks on conversion
// (read) and assignment (write). The index of p[i] carries the source line of the access (the call
// site reported by the profiler counters); *p has none.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint2 {
  unsigned x, y;
};
struct uint4 {
  unsigned x, y, z, w;
};
struct float2 {
  float x, y;
};
struct float4 {
  float x, y, z, w;
};
using cudaStream_t = struct CUstream_st*;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)

namespace fae::emu {

struct ThreadInfo {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
// The fiber currently running on this OS thread, and the number of cp.async copies pending in its
// block (a fast test before checking global writes against their sources).
extern thread_local ThreadInfo* tls_thread;
extern thread_local int tls_async_pending;

// A source location of kernel code: default arguments evaluated at the kernel's call.
struct Site {
  const char* file;
  int line;
  static constexpr Site here(const char* f = __builtin_FILE(), int l = __builtin_LINE()) { return {f, l}; }
};

// ---- runtime entry points ----
enum class GAccess : uint8_t { read, write, atomic };
void syncthreads();
void* smem_base();
void smem_access(const void* p, std::size_t n, bool write, Site site);
[[noreturn]] void global_fault(const void* p, std::size_t n, const void* lo, const void* hi, GAccess kind);
// Records a global access of the current thread's block; throws on a race with another block.
void global_access(const void* p, std::size_t n, const void* lo, GAccess kind, Site site);
void global_write_vs_async(const void* p, std::size_t n);
void cp_async(void* dst, const void* src, const void* src_lo, const void* src_hi, int cp_size, int src_size,
              Site site);
// ex2.approx.ftz.f32: correctly rounded, or within the instruction's 2 ulp in hardware numerics mode.
float ex2_approx(float x);
void cp_async_commit();
void cp_async_wait(int n);
void cp_async_wait_all();

enum class Op : uint8_t { mma, ldmatrix, stmatrix, shfl, vote };
enum ShflMode { shfl_idx = 0, shfl_up = 1, shfl_down = 2, shfl_bfly = 3 };  // Arrival::qual of a shfl
enum VoteMode { vote_all = 0, vote_any = 1, vote_ballot = 2 };                    // Arrival::qual of a vote
// One lane's part of a warp-collective operation; it lives on the lane's own stack until the warp
// has executed it (the last lane to arrive executes it for all).
struct Arrival {
  Op op;
  int qual;       // mma: shape/type code; ldmatrix/stmatrix: num | trans << 3; shfl, vote: mode
  unsigned mask;  // participating lanes
  const void* addr;
  uint32_t* out[4];
  const uint32_t* a;
  const uint32_t* b;
  const float* c;
  float* d;
  uint32_t v[4];
  int sb, sc;  // shfl b and c operands
  Site site;
};
void warp_collective(Arrival& a);

inline void check_global(const void* p, std::size_t n, const void* lo, const void* hi, GAccess kind, Site site) {
  auto a = static_cast<const char*>(p);
  if (a < static_cast<const char*>(lo) || a + n > static_cast<const char*>(hi)) global_fault(p, n, lo, hi, kind);
  if (kind != GAccess::read && tls_async_pending) global_write_vs_async(p, n);
  global_access(p, n, lo, kind, site);
}

// The index of p[i], with the source line of the expression (an implicit conversion from any
// integer, so its default arguments are evaluated in the kernel's source).
struct Index {
  std::ptrdiff_t i;
  Site site;
  template <class I, class = std::enable_if_t<std::is_integral_v<I> || std::is_enum_v<I>>>
  Index(I i_, Site s = Site::here()) : i(static_cast<std::ptrdiff_t>(i_)), site(s) {}
};

template <class T>
class gref {
 public:
  using V = std::remove_const_t<T>;
  gref(T* p, const void* lo, const void* hi, Site site) : p_(p), lo_(lo), hi_(hi), site_(site) {}
  operator V() const {
    check_global(p_, sizeof(T), lo_, hi_, GAccess::read, site_);
    V v;
    std::memcpy(&v, p_, sizeof(T));
    return v;
  }
  const gref& operator=(const V& v) const {
    static_assert(!std::is_const_v<T>, "write through a pointer to const");
    check_global(p_, sizeof(T), lo_, hi_, GAccess::write, site_);
    std::memcpy(const_cast<V*>(p_), &v, sizeof(T));
    return *this;
  }
  const gref& operator=(const gref& o) const { return *this = static_cast<V>(o); }
  template <class X>
  const gref& operator+=(const X& x) const {
    return *this = static_cast<V>(static_cast<V>(*this) + x);
  }

 private:
  T* p_;
  const void* lo_;
  const void* hi_;
  Site site_;
};

template <class T>
class sref {
 public:
  using V = std::remove_const_t<T>;
  sref(T* p, Site site) : p_(p), site_(site) {}
  operator V() const {
    smem_access(p_, sizeof(T), false, site_);
    V v;
    std::memcpy(&v, p_, sizeof(T));
    return v;
  }
  const sref& operator=(const V& v) const {
    static_assert(!std::is_const_v<T>, "write through a pointer to const");
    smem_access(p_, sizeof(T), true, site_);
    std::memcpy(const_cast<V*>(p_), &v, sizeof(T));
    return *this;
  }
  const sref& operator=(const sref& o) const { return *this = static_cast<V>(o); }
  template <class X>
  const sref& operator+=(const X& x) const {
    return *this = static_cast<V>(static_cast<V>(*this) + x);
  }

 private:
  T* p_;
  Site site_;
};

}  // namespace fae::emu

namespace fae {

template <class T>
class gptr {
 public:
  gptr() = default;
  gptr(T* p, const void* lo, const void* hi) : p_(p), lo_(lo), hi_(hi) {}
  template <class U, class = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  gptr(const gptr<U>& o) : p_(o.get()), lo_(o.lo()), hi_(o.hi()) {}

  emu::gref<T> operator[](emu::Index i) const { return emu::gref<T>(p_ + i.i, lo_, hi_, i.site); }
  emu::gref<T> operator*() const { return emu::gref<T>(p_, lo_, hi_, {nullptr, 0}); }
  gptr operator+(std::ptrdiff_t i) const { return gptr(p_ + i, lo_, hi_); }
  gptr operator-(std::ptrdiff_t i) const { return gptr(p_ - i, lo_, hi_); }
  gptr& operator+=(std::ptrdiff_t i) { return p_ += i, *this; }
  gptr& operator-=(std::ptrdiff_t i) { return p_ -= i, *this; }
  std::ptrdiff_t operator-(const gptr& o) const { return p_ - o.p_; }
  bool operator==(const gptr& o) const { return p_ == o.p_; }
  bool operator!=(const gptr& o) const { return p_ != o.p_; }
  bool operator<(const gptr& o) const { return p_ < o.p_; }

  T* get() const { return p_; }
  const void* lo() const { return lo_; }
  const void* hi() const { return hi_; }

 private:
  T* p_ = nullptr;
  const void* lo_ = nullptr;
  const void* hi_ = nullptr;
};

template <class T>
class sptr {
 public:
  sptr() = default;
  explicit sptr(T* p) : p_(p) {}
  template <class U, class = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  sptr(const sptr<U>& o) : p_(o.get()) {}

  emu::sref<T> operator[](emu::Index i) const { return emu::sref<T>(p_ + i.i, i.site); }
  emu::sref<T> operator*() const { return emu::sref<T>(p_, {nullptr, 0}); }
  sptr operator+(std::ptrdiff_t i) const { return sptr(p_ + i); }
  sptr operator-(std::ptrdiff_t i) const { return sptr(p_ - i); }
  sptr& operator+=(std::ptrdiff_t i) { return p_ += i, *this; }
  sptr& operator-=(std::ptrdiff_t i) { return p_ -= i, *this; }
  std::ptrdiff_t operator-(const sptr& o) const { return p_ - o.p_; }
  bool operator==(const sptr& o) const { return p_ == o.p_; }
  bool operator!=(const sptr& o) const { return p_ != o.p_; }

  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
};

template <class U, class T>
inline gptr<U> ptr_cast(const gptr<T>& p) {
  return gptr<U>(reinterpret_cast<U*>(p.get()), p.lo(), p.hi());
}
template <class U, class T>
inline sptr<U> ptr_cast(const sptr<T>& p) {
  return sptr<U>(reinterpret_cast<U*>(p.get()));
}

template <class T>
inline sptr<T> dynamic_smem() {
  return sptr<T>(static_cast<T*>(emu::smem_base()));
}

}  // namespace fae

#define threadIdx (::fae::emu::tls_thread->thread_idx)
#define blockIdx (::fae::emu::tls_thread->block_idx)
#define blockDim (::fae::emu::tls_thread->block_dim)
#define gridDim (::fae::emu::tls_thread->grid_dim)
