// Scratch memory of the CPU kernels (include from an ISA unit, see vec.h).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace fae::cpu::FAE_CPU_ISA {

// Owning, 64-byte aligned scratch of n elements (no std::vector: its out-of-line code would be
// shared between translation units compiled for different instruction sets).
template <typename X>
class Buffer {
 public:
  explicit Buffer(int64_t n) {
    const size_t bytes = (size_t(std::max<int64_t>(n, 1)) * sizeof(X) + 63) / 64 * 64;
    p_ = static_cast<X*>(std::aligned_alloc(64, bytes));
    if (p_ == nullptr) throw std::bad_alloc();
  }
  ~Buffer() { std::free(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  X* get() const { return p_; }

 private:
  X* p_;
};
using Scratch = Buffer<float>;

}  // namespace fae::cpu::FAE_CPU_ISA
