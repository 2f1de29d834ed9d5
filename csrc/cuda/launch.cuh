// Kernel launch helper, so that launchers (grid, block and dynamic shared-memory sizing) are the
// same code for a GPU and for the emulator:
//
//   fae::launch("name", kernel, fae::LaunchConfig{grid, block, smem_bytes, stream}, args...);
//   fae::gbuf(ptr, count)   global buffer argument: a raw pointer under nvcc, a bounds-checked
//                           fae::gptr covering [ptr, ptr + count) under the emulator.
//   fae::max_dynamic_smem() the most dynamic shared memory one block may have on the device
//                           (the opt-in limit; under the emulator its configured limit).
// Under nvcc (here): kernel<<<grid, block, smem, stream>>>, raising the kernel's dynamic
// shared-memory limit when more than 48 KiB is asked for; launch errors throw std::runtime_error.
// Under a host compiler both come from primitives_emu.h: the grid runs on the CPU and kernel bugs
// throw fae::emu::Error. The gptr arguments and the buffers given to gbuf since the previous
// launch are the global memory the emulator watches for races between blocks.
#pragma once

#include "cuda/primitives.cuh"

#if defined(__CUDACC__)
#include <stdexcept>
#include <string>
#include <utility>

namespace fae {

template <class T>
inline T* gbuf(T* p, std::size_t) {
  return p;
}

inline std::size_t max_dynamic_smem() {
  int device = 0, bytes = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) throw std::runtime_error(std::string("shared memory per block: ") + cudaGetErrorString(e));
  return std::size_t(bytes);
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

}  // namespace fae
#endif
