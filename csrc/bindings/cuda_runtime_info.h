// What the CUDA runtime linked into the module reports (built only with the CUDA backend).
#pragma once
#include <string>

namespace fae {
struct CudaRuntimeInfo {
  int runtime_version;   // e.g. 13000
  int device_count;      // 0 when no driver or no GPU
  std::string status;    // "ok" or the runtime's error text
};
CudaRuntimeInfo cuda_runtime_info();
}  // namespace fae
