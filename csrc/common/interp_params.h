// Parameter structs of the interpretability and sparse-attention passes (docs/interpretability.md):
//   attention weights on demand: the softmax probabilities of selected heads and query rows,
//     recomputed tile by tile from each row's lse;
//   top-k attention: each row's softmax restricted to its k_top highest-scoring visible keys
//     (k_top = 1 is hard attention: out = v of the best key), and its backward.
// Same conventions as params.h: element strides, BSHD inputs, the mask of FwdParams.
#pragma once
#include <cstdint>
#include "common/params.h"

namespace fae {

struct WeightsParams {
  FwdParams fwd;      // q, k, sizes, mask, scale, dtype; fwd.lse: the forward's lse, or nullptr to
                      // compute it here (rows of the selection only); v and out are not used
  void* probs;        // (B, num_heads, num_rows, Sk): float32, float64 for float64 inputs; key stride 1
  int64_t p_batch_stride, p_head_stride, p_row_stride;
  const int64_t* heads;  // query heads to return, each in [0, Hq)
  int64_t num_heads;
  const int64_t* rows;   // query rows to return, each in [0, Sq), any order
  int64_t num_rows;
};

// Top-k forward: out (like FwdParams.out) and the selected keys of every row.
struct TopkParams {
  FwdParams fwd;      // q, k, v, out, mask, scale; fwd.lse is not used
  int64_t* index;     // (B, Hq, Sq, k_top) int64: selected keys, best first, -1 after the last
  int64_t idx_batch_stride, idx_head_stride, idx_row_stride;  // entry stride 1
  int64_t k_top;
};

// Top-k backward: the gradient of the restricted softmax, over the keys the forward selected.
struct TopkBwdParams {
  TopkParams sel;     // the forward's inputs and index (index is read only)
  const void* dout;
  void* dq;           // like q
  void* dk;           // (B, Sk, Hkv, D) contiguous accumulators, float32 (float64 for float64
  void* dv;           // inputs), zeroed by the caller: the kernels add to them
  int64_t do_batch_stride, do_row_stride, do_head_stride;
  int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
};

}  // namespace fae
