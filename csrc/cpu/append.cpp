// KV-cache append with rotary embedding on the CPU (AppendParams, common/params.h): each new key
// row is rotated on its way into the cache (contiguous or paged), each query row into q_rot.
// Arithmetic in double: the products of float32 / 16-bit values are exact, so each rotated element
// is its exact value rounded to double (with or without fused multiply-adds), then to float, then
// (16-bit) to the storage dtype.
#define FAE_CPU_ISA append  // the namespace of this unit's inline functions (kernels.h)
#include <algorithm>
#include <type_traits>

#include "cpu/backend.h"
#include "cpu/convert.h"
#include "cpu/thread_pool.h"

namespace fae::cpu::append {
namespace {

// y = x rotated by the table row (cos, sin) in its first rotary_dim dimensions, copied past them.
template <typename T>
void rotate_row(const AppendParams& p, const T* x, T* y, const T* cos, const T* sin) {
  using Out = std::conditional_t<std::is_same_v<T, double>, double, float>;  // what store_from takes
  const int64_t half = cos == nullptr ? 0 : p.rotary_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t a = p.rotary_interleaved ? 2 * i : i, b = p.rotary_interleaved ? 2 * i + 1 : i + half;
    const double c = load_as<double>(cos + i), s = load_as<double>(sin + i);
    const double xa = load_as<double>(x + a), xb = load_as<double>(x + b);
    store_from(y + a, Out(xa * c - xb * s));
    store_from(y + b, Out(xb * c + xa * s));
  }
  std::copy(x + 2 * half, x + p.head_dim, y + 2 * half);
}

template <typename T>
void run(const AppendParams& p) {
  const T* cos = static_cast<const T*>(p.rotary_cos);
  const T* sin = static_cast<const T*>(p.rotary_sin);
  auto table = [&](const T* t, int64_t pos) { return t == nullptr ? nullptr : t + pos * p.rotary_stride; };
  const int64_t rows = p.seqlen_new + (p.q_rot != nullptr ? p.seqlen_q : 0);
  parallel_for(p.batch * rows, p.num_threads, [&](int64_t t) {
    const int64_t b = t / rows, r = t % rows, pos0 = p.cache_seqlens[b];
    if (r >= p.seqlen_new) {  // query row i
      const int64_t i = r - p.seqlen_new, pos = pos0 + (p.q_rows_consecutive ? i : 0);
      const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + i * p.q_row_stride;
      T* qr = static_cast<T*>(p.q_rot) + b * p.qr_batch_stride + i * p.qr_row_stride;
      for (int64_t h = 0; h < p.heads_q; ++h)
        rotate_row(p, q + h * p.q_head_stride, qr + h * p.qr_head_stride, table(cos, pos), table(sin, pos));
      return;
    }
    const int64_t pos = pos0 + r;  // new key row r goes to cache position pos
    int64_t slot = p.kv_batch_idx != nullptr ? p.kv_batch_idx[b] : b, row = pos;
    if (p.block_table != nullptr) {
      slot = p.block_table[b * p.block_table_stride + pos / p.page_size];
      row = pos % p.page_size;
    }
    const T* kn = static_cast<const T*>(p.k_new) + b * p.kn_batch_stride + r * p.kn_row_stride;
    const T* vn = static_cast<const T*>(p.v_new) + b * p.vn_batch_stride + r * p.vn_row_stride;
    T* kc = static_cast<T*>(p.k_cache) + slot * p.kc_batch_stride + row * p.kc_row_stride;
    T* vc = static_cast<T*>(p.v_cache) + slot * p.vc_batch_stride + row * p.vc_row_stride;
    for (int64_t h = 0; h < p.heads_kv; ++h) {
      rotate_row(p, kn + h * p.kn_head_stride, kc + h * p.kc_head_stride, table(cos, pos), table(sin, pos));
      std::copy(vn + h * p.vn_head_stride, vn + h * p.vn_head_stride + p.head_dim, vc + h * p.vc_head_stride);
    }
  });
}

}  // namespace
}  // namespace fae::cpu::append

namespace fae::cpu {

void kvcache_append(const AppendParams& p) {
  switch (p.dtype) {
    case DType::f32: return append::run<float>(p);
    case DType::f64: return append::run<double>(p);
    case DType::f16: return append::run<append::f16>(p);
    case DType::bf16: return append::run<append::bf16>(p);
  }
}

}  // namespace fae::cpu
