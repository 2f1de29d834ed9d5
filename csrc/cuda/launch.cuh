// Kernel launch helper shared by nvcc and the emulator, so that launchers (grid, block and dynamic
// shared-memory sizing) are the same code in both builds.
//
//   fae::launch("name", kernel, fae::LaunchConfig{grid, block, smem_bytes, stream}, args...);
//   fae::gbuf(ptr, count)   global buffer argument: raw pointer under nvcc, bounds-checked fae::gptr
//                           covering [ptr, ptr + count) under the emulator.
// Under nvcc: kernel<<<grid, block, smem, stream>>> (raising the kernel's dynamic shared-memory
// limit when more than 48 KiB is asked for); launch errors throw std::runtime_error.
// Under the emulator: runs the grid on the CPU; kernel bugs throw fae::emu::Error. The gptr
// arguments and the buffers given to gbuf since the previous launch are the global memory the
// emulator watches for races between blocks.
#pragma once

#include <cstddef>
#include <tuple>
#include <utility>

#include "primitives.cuh"

#if defined(__CUDACC__)
#include <stdexcept>
#include <string>
#else
#include <vector>

#include "../emu/runtime.h"
#endif

namespace fae {

struct LaunchConfig {
  dim3 grid;
  dim3 block;
  std::size_t smem_bytes;
  cudaStream_t stream;
};

#if defined(__CUDACC__)

template <class T>
inline T* gbuf(T* p, std::size_t) {
  return p;
}

template <class... KArgs, class... Args>
void launch(const char* name, void (*kernel)(KArgs...), const LaunchConfig& cfg, Args&&... args) {
  if (cfg.smem_bytes > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(cfg.smem_bytes));
    if (e != cudaSuccess) throw std::runtime_error(std::string(name) + ": " + cudaGetErrorString(e));
  }
  kernel<<<cfg.grid, cfg.block, cfg.smem_bytes, cfg.stream>>>(std::forward<Args>(args)...);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string(name) + ": " + cudaGetErrorString(e));
}

#else

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

template <class... KArgs, class... Args>
void launch(const char* name, void (*kernel)(KArgs...), const LaunchConfig& cfg, Args&&... args) {
  std::tuple<std::decay_t<KArgs>...> params(std::forward<Args>(args)...);
  std::vector<emu::Buffer> buffers;
  std::apply([&buffers](const auto&... a) { (detail::add_buffer(buffers, a), ...); }, params);
  emu::launch(name, cfg.grid, cfg.block, cfg.smem_bytes, [kernel, &params] { std::apply(kernel, params); }, buffers);
}

#endif

}  // namespace fae
