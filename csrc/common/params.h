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

  // Score transforms (common/score_mod.h), on the scaled score before the mask: softcap > 0
  // caps it (0 = off); alibi_slopes (float32, null = none) adds the ALiBi bias with the slope
  // alibi_slopes[b * alibi_batch_stride + h] of sequence b, query head h (stride 0: one per head).
  float softcap;
  double softcap_f64;  // the same softcap for float64 inputs, unrounded
  const float* alibi_slopes;
  int64_t alibi_batch_stride;

  // Dropout (common/philox.h): dropout_p in [0, 1), 0 = off. Probabilities of the keys a query
  // sees are dropped with probability dropout_p and the kept ones scaled by 1 / (1 - dropout_p),
  // by a mask that is a pure function of (dropout_seed, dropout_offset, b, h, i, j). When
  // dropout_rng is set, the pair (seed, offset) is read from there instead: memory of the device
  // the kernels run on, where torch's generator drew it (so a call never waits for the draw).
  float dropout_p;
  uint64_t dropout_seed, dropout_offset;
  const uint64_t* dropout_rng;

  // Explicit attention mask (null = none), applied after softcap and ALiBi: the entry of batch b,
  // query head h, query row i, key j sits at
  //   attn_mask + b*mask_batch_stride + h*mask_head_stride + i*mask_row_stride + j*mask_col_stride
  // (element strides, 0 on broadcast dimensions; dense batches only). mask_bool: uint8 entries,
  // 0 = the key is masked out; else float32 values (float64 for float64 inputs) added to the
  // scaled score. The band of window_left / window_right above still applies.
  const void* attn_mask;
  bool mask_bool;
  int64_t mask_batch_stride, mask_head_stride, mask_row_stride, mask_col_stride;

  // Variable-length batches and KV caches (docs/semantics.md section 10). Every pointer is null
  // when unused; with any of them set, seqlen_q and seqlen_k above are maxima over the batch.
  // Sequence b's queries are rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1] - 1 of q and out (and
  // of its lse rows), read without q/o/lse batch strides; else rows 0 .. seqlen_q - 1 of batch b.
  // Its keys are rows [start, end) of k and v, of batch kv_batch_idx[b] (or b), read without
  // k/v batch strides when cu_seqlens_k is set:
  //   start = cu_seqlens_k[b] (or 0) + leftpad_k[b] (or 0)
  //   end   = cu_seqlens_k[b] (or 0) + seqused_k[b], or cu_seqlens_k[b + 1], or seqlen_k.
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;
  const int32_t* seqused_k;
  const int32_t* leftpad_k;
  const int32_t* kv_batch_idx;
  // Paged K/V: key row r of sequence b is row r % page_size of page
  // block_table[b * block_table_stride + r / page_size]; k/v_batch_stride step from page to page.
  const int32_t* block_table;
  int64_t block_table_stride;
  int64_t page_size;
  // Each sequence's align offset is align_offset + (its seqlen_k - its seqlen_q) when set (the
  // bottom-right mask of sequences of their own lengths), else align_offset.
  bool align_bottom_right;
  // Forward key splits per (sequence, head) tile, merged by their logsumexp: 0 = chosen from the
  // work and the thread (or SM) count, 1 = none.
  int32_t num_splits;
  // CUDA split-KV (num_splits > 1): num_splits x batch x heads_q x seqlen_q partial rows of D + 1
  // floats (normalised O, then the log2-domain lse), written by the forward, merged by the
  // combine kernel.
  float* split_workspace;
  // The (batch, rows) of the q / out and k / v arrays themselves where they differ from (batch,
  // seqlen_q / seqlen_k): packed rows, cache slots and rows, pages and page rows; 0 = not set.
  // Only bounds checks (the emulator's checked pointers) read them.
  int64_t q_array_batch, q_array_rows, kv_array_batch, kv_array_rows;
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
  // Gradient of an additive attn_mask (null = not wanted): d loss / d mask(b, h, i, j), float32
  // (float64 for float64 inputs), at dmask + b*dmask_batch_stride + h*dmask_head_stride +
  // i*dmask_row_stride + j. Written for the pairs the band lets through; the caller zeroes it.
  void* dmask;
  int64_t dmask_batch_stride, dmask_head_stride, dmask_row_stride;
};

// KV-cache append (flash_attn_with_kvcache): the new keys and values (B, Sn, Hkv, D) of batch b
// go into its cache rows cache_seqlens[b] .. cache_seqlens[b] + Sn - 1 (batch kv_batch_idx[b] or
// b, or the pages of block_table as in FwdParams). With rotary tables (cos, sin: rows of
// rotary_dim / 2 values, rotary_stride apart, q's dtype) the new keys are rotated at their cache
// positions, and q into q_rot: row i at position cache_seqlens[b] + i when q_rows_consecutive
// (causal or windowed attention), else every row at cache_seqlens[b]. Dimensions past rotary_dim
// are copied. rotary_interleaved pairs dimensions (2i, 2i + 1), else (i, i + rotary_dim / 2).
struct AppendParams {
  const void* q;
  void* q_rot;  // null: no rotary
  const void* k_new;
  const void* v_new;
  void* k_cache;
  void* v_cache;
  const void* rotary_cos;
  const void* rotary_sin;
  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t qr_batch_stride, qr_row_stride, qr_head_stride;
  int64_t kn_batch_stride, kn_row_stride, kn_head_stride;
  int64_t vn_batch_stride, vn_row_stride, vn_head_stride;
  int64_t kc_batch_stride, kc_row_stride, kc_head_stride;
  int64_t vc_batch_stride, vc_row_stride, vc_head_stride;
  int64_t rotary_stride, rotary_dim;
  bool rotary_interleaved, q_rows_consecutive;
  const int32_t* cache_seqlens;
  const int32_t* kv_batch_idx;
  const int32_t* block_table;
  int64_t block_table_stride, page_size;
  int64_t batch, seqlen_q, seqlen_new, heads_q, heads_kv, head_dim;
  // The caches' own (batch or pages, rows) and the rotary tables' rows: bounds checks only.
  int64_t cache_batch, cache_rows, rotary_rows;
  DType dtype;
  int32_t num_threads;
};

}  // namespace fae
