// Runtime (dtype, head dim) -> compiled instantiation, done once here. Built by nvcc into _C and,
// through a generated one-line .cpp wrapper, by the host compiler into the emulator module.
#include <stdexcept>
#include <string>
#include <utility>

#include "cuda/flash/api.h"
#include "cuda/flash/append_kernel.cuh"
#include "cuda/flash/bwd_traits.h"
#include "cuda/flash/common.cuh"
#include "cuda/launch.cuh"
#include "cuda/primitives.cuh"

namespace fae::cuda {
namespace {

#if defined(__CUDACC__)
// Makes `device` current for one call (a kernel's shared-memory attribute and a launch apply to
// the current device, a stream belongs to one) and restores the caller's device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (device < 0) return;
    int current = 0;
    check(cudaGetDevice(&current));
    if (current == device) return;
    check(cudaSetDevice(device));
    restore_ = current;
  }
  ~DeviceGuard() {
    if (restore_ >= 0) cudaSetDevice(restore_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  static void check(cudaError_t e) {
    if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA device guard: ") + cudaGetErrorString(e));
  }
  int restore_ = -1;
};
#else
struct DeviceGuard {  // the emulator has one device
  explicit DeviceGuard(int) {}
};
#endif

template <class T, std::size_t... I>
void forward_for_head_dim(const FwdParams& p, Stream stream, std::index_sequence<I...>) {
  const bool ran = ((p.head_dim == kHeadDims[I] && (run_forward<T, kHeadDims[I]>(p, stream), true)) || ...);
  if (!ran) throw std::invalid_argument("head_dim " + std::to_string(p.head_dim) + " has no CUDA kernel");
}

template <class T, std::size_t... I>
void backward_for_head_dim(const BwdParams& p, float* stats, float* dq_accum, Stream stream,
                           std::index_sequence<I...>) {
  const bool ran = ((p.fwd.head_dim == kBwdHeadDims[I] &&
                     (run_backward<T, kBwdHeadDims[I]>(p, stats, dq_accum, stream), true)) || ...);
  if (!ran)
    throw std::invalid_argument("head_dim " + std::to_string(p.fwd.head_dim) + " has no CUDA backward kernel");
}

template <class T>
void launch_append(const AppendParams& p, Stream stream) {
  const int64_t rows = p.seqlen_new + (p.q_rot != nullptr ? p.seqlen_q : 0), d = p.head_dim, b = p.batch;
  auto ints = [](const int32_t* a, std::size_t n) { return gbuf(a, a ? n : 0); };
  const auto qx = extent(p.q_batch_stride, p.q_row_stride, p.q_head_stride, b, p.seqlen_q, p.heads_q, d);
  const auto qrx = p.q_rot ? extent(p.qr_batch_stride, p.qr_row_stride, p.qr_head_stride, b, p.seqlen_q, p.heads_q, d) : 0;
  const auto nx = extent(p.kn_batch_stride, p.kn_row_stride, p.kn_head_stride, b, p.seqlen_new, p.heads_kv, d);
  const auto vnx = extent(p.vn_batch_stride, p.vn_row_stride, p.vn_head_stride, b, p.seqlen_new, p.heads_kv, d);
  const auto kcx = extent(p.kc_batch_stride, p.kc_row_stride, p.kc_head_stride, p.cache_batch, p.cache_rows, p.heads_kv, d);
  const auto vcx = extent(p.vc_batch_stride, p.vc_row_stride, p.vc_head_stride, p.cache_batch, p.cache_rows, p.heads_kv, d);
  const auto rx = p.rotary_cos ? std::size_t((p.rotary_rows - 1) * p.rotary_stride + p.rotary_dim / 2) : 0;
  const AppendBuffers ab{ints(p.cache_seqlens, std::size_t(b)), ints(p.kv_batch_idx, std::size_t(b)),
                         ints(p.block_table, std::size_t(b * p.block_table_stride))};
  launch("kvcache_append", kvcache_append_kernel<T>, LaunchConfig{dim3(unsigned(b * rows)), dim3(kAppendThreads), 0, stream},
         p, gbuf(static_cast<const T*>(p.q), qx), gbuf(static_cast<T*>(p.q_rot), qrx),
         gbuf(static_cast<const T*>(p.k_new), nx), gbuf(static_cast<const T*>(p.v_new), vnx),
         gbuf(static_cast<T*>(p.k_cache), kcx), gbuf(static_cast<T*>(p.v_cache), vcx),
         gbuf(static_cast<const T*>(p.rotary_cos), rx), gbuf(static_cast<const T*>(p.rotary_sin), rx), ab);
}

constexpr auto kFwdIndices = std::make_index_sequence<std::size(kHeadDims)>();
constexpr auto kBwdIndices = std::make_index_sequence<std::size(kBwdHeadDims)>();

}  // namespace

void attention_forward(const FwdParams& p, Stream stream, int device) {
  const DeviceGuard guard(device);
  switch (p.dtype) {
    case DType::f16: return forward_for_head_dim<half_t>(p, stream, kFwdIndices);
    case DType::bf16: return forward_for_head_dim<bf16_t>(p, stream, kFwdIndices);
    default: throw std::invalid_argument("the CUDA kernels take float16 or bfloat16");
  }
}

BwdWorkspace backward_workspace(const BwdParams& p) {
  const BwdWork w = bwd_work(p);
  const std::size_t rows = std::size_t(p.fwd.batch * p.fwd.heads_q * w.padded_rows);
  return {4 * rows, std::size_t(w.splits) * rows * std::size_t(p.fwd.head_dim)};
}

void attention_backward(const BwdParams& p, float* stats, float* dq_accum, Stream stream, int device) {
  const DeviceGuard guard(device);
  switch (p.fwd.dtype) {
    case DType::f16: return backward_for_head_dim<half_t>(p, stats, dq_accum, stream, kBwdIndices);
    case DType::bf16: return backward_for_head_dim<bf16_t>(p, stats, dq_accum, stream, kBwdIndices);
    default: throw std::invalid_argument("the CUDA kernels take float16 or bfloat16");
  }
}

void kvcache_append(const AppendParams& p, Stream stream, int device) {
  if (p.batch * (p.seqlen_new + (p.q_rot != nullptr ? p.seqlen_q : 0)) == 0) return;
  const DeviceGuard guard(device);
  switch (p.dtype) {
    case DType::f16: return launch_append<half_t>(p, stream);
    case DType::bf16: return launch_append<bf16_t>(p, stream);
    default: throw std::invalid_argument("the CUDA kernels take float16 or bfloat16");
  }
}

}  // namespace fae::cuda
