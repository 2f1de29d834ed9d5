#include <cuda_runtime.h>

#include "bindings/cuda_runtime_info.h"

namespace fae {
CudaRuntimeInfo cuda_runtime_info() {
  CudaRuntimeInfo info{0, 0, "ok"};
  cudaRuntimeGetVersion(&info.runtime_version);
  const cudaError_t err = cudaGetDeviceCount(&info.device_count);
  if (err != cudaSuccess) {
    info.device_count = 0;
    info.status = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
  }
  return info;
}
}  // namespace fae
