// Plain parameter structs for one attention pass: pointers, int64 strides (in elements), sizes.
// Shared by every backend (CPU, CUDA, emulator); no torch, pybind or CUDA headers here.
#pragma once
#include <cstdint>

namespace fae {

enum class DType : int32_t { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// A window bound at or above this is "unbounded" (no mask on that side).
constexpr int64_t kNoWindow = int64_t(1) << 40;

// Forward pass. Layout BSHD: element (b, s, h, d) of q sits at
// q + b*q_batch_stride + s*q_row_stride + h*q_head_stride + d (last dim contiguous).
struct FwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;   // (B, Sq, Hq, D), input dtype
  void* lse;   // (B, Hq, Sq); float32, or float64 for float64 inputs; row stride 1

  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  int64_t o_batch_stride, o_row_stride, o_head_stride;
  int64_t lse_batch_stride, lse_head_stride;

  int64_t batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim;

  // Mask (docs/semantics.md): query row i sees key j iff
  //   i + align_offset - window_left <= j <= i + align_offset + window_right.
  // align_offset is Sk - Sq (bottom-right) or 0 (top-left); kNoWindow means unbounded.
  int64_t align_offset;
  int64_t window_left;
  int64_t window_right;

  float scale;       // softmax scale applied to q.k
  float scale_log2;  // scale * log2(e): scores go through exp2
  double scale_f64;  // the same scale for float64 inputs, unrounded

  DType dtype;
  int32_t num_threads;  // CPU: 0 means the library default
};

// Backward pass: the forward's tensors plus dout, and the gradients it writes.
// dq, dk, dv have the layout (and dtype) of q, k, v with their own strides.
struct BwdParams {
  FwdParams fwd;  // q, k, v, out, lse as produced by the forward
  const void* dout;
  const void* dlse;  // optional gradient of lse (same dtype and layout as lse), or nullptr
  void* dq;
  void* dk;
  void* dv;
  int64_t do_batch_stride, do_row_stride, do_head_stride;
  int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
  int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
  int64_t dv_batch_stride, dv_row_stride, dv_head_stride;
  // CUDA: dQ summed in a fixed order (bitwise reproducible) instead of with float atomics from
  // every key block; the CPU backward is always reproducible and ignores it.
  bool deterministic;
};

}  // namespace fae
