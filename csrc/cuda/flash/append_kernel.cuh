// KV-cache append with rotary embedding on the GPU (AppendParams, common/params.h), the same
// arithmetic as the CPU append (csrc/cpu/append.cpp): in double, whose products of 16-bit values
// are exact, rounded to float and then to the storage type. One block per (batch entry, row):
// rows 0 .. seqlen_new - 1 are new keys (rotated into the cache, values copied), the next
// seqlen_q rows are queries (rotated into q_rot) when there are rotary tables.
#pragma once

#include "cuda/primitives.cuh"

namespace fae::cuda {

constexpr int kAppendThreads = 128;

struct AppendBuffers {
  gptr<const int32_t> cache_seqlens, kv_batch_idx, block_table;
};

template <class T>
__device__ __forceinline__ void rotate_row(const AppendParams& p, gptr<const T> x, gptr<T> y, gptr<const T> cos,
                                           gptr<const T> sin, bool rotary) {
  const int half = rotary ? int(p.rotary_dim / 2) : 0;
  for (int i = threadIdx.x; i < half; i += kAppendThreads) {
    const int a = p.rotary_interleaved ? 2 * i : i, b = p.rotary_interleaved ? 2 * i + 1 : i + half;
    const double c = to_float(T(cos[i])), s = to_float(T(sin[i]));
    const double xa = to_float(T(x[a])), xb = to_float(T(x[b]));
    y[a] = from_float<T>(float(xa * c - xb * s));
    y[b] = from_float<T>(float(xb * c + xa * s));
  }
  for (int d = 2 * half + threadIdx.x; d < p.head_dim; d += kAppendThreads) y[d] = T(x[d]);
}

template <class T>
__global__ void __launch_bounds__(kAppendThreads)
    kvcache_append_kernel(AppendParams p, gptr<const T> q, gptr<T> q_rot, gptr<const T> k_new, gptr<const T> v_new,
                          gptr<T> k_cache, gptr<T> v_cache, gptr<const T> cos, gptr<const T> sin, AppendBuffers ab) {
  const int64_t rows = p.seqlen_new + (p.q_rot != nullptr ? p.seqlen_q : 0);
  const int64_t b = blockIdx.x / rows, r = blockIdx.x % rows, pos0 = ab.cache_seqlens[b];
  const bool rotary = p.rotary_cos != nullptr;
  if (r >= p.seqlen_new) {  // query row i
    const int64_t i = r - p.seqlen_new, pos = pos0 + (p.q_rows_consecutive ? i : 0);
    for (int h = 0; h < p.heads_q; ++h)
      rotate_row<T>(p, q + (b * p.q_batch_stride + i * p.q_row_stride + h * p.q_head_stride),
                    q_rot + (b * p.qr_batch_stride + i * p.qr_row_stride + h * p.qr_head_stride),
                    cos + pos * p.rotary_stride, sin + pos * p.rotary_stride, rotary);
    return;
  }
  const int64_t pos = pos0 + r;  // new key row r goes to cache position pos
  int64_t slot = p.kv_batch_idx != nullptr ? int64_t(ab.kv_batch_idx[b]) : b, row = pos;
  if (p.block_table != nullptr) {
    slot = ab.block_table[b * p.block_table_stride + pos / p.page_size];
    row = pos % p.page_size;
  }
  for (int h = 0; h < p.heads_kv; ++h) {
    rotate_row<T>(p, k_new + (b * p.kn_batch_stride + r * p.kn_row_stride + h * p.kn_head_stride),
                  k_cache + (slot * p.kc_batch_stride + row * p.kc_row_stride + h * p.kc_head_stride),
                  cos + pos * p.rotary_stride, sin + pos * p.rotary_stride, rotary);
    const gptr<const T> vn = v_new + (b * p.vn_batch_stride + r * p.vn_row_stride + h * p.vn_head_stride);
    const gptr<T> vc = v_cache + (slot * p.vc_batch_stride + row * p.vc_row_stride + h * p.vc_head_stride);
    for (int d = threadIdx.x; d < p.head_dim; d += kAppendThreads) vc[d] = T(vn[d]);
  }
}

}  // namespace fae::cuda
