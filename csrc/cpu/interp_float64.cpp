// The float64 path of the attention weights and top-k attention (interp_kernels.h has the SIMD
// kernels of the other dtypes): the same passes in plain double arithmetic, one task per
// (batch, head) or (batch, kv head); scores are dot products times scale * log2(e).
#define FAE_CPU_ISA float64  // the namespace of this unit's inline functions (kernels.h)
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/interp_params.h"
#include "common/mask.h"
#include "common/online_softmax.h"
#include "common/score_mod.h"
#include "common/topk.h"
#include "cpu/thread_pool.h"

namespace fae::cpu::float64 {
namespace {

double dot(const double* a, const double* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <typename T>
const T* row_of(const void* base, int64_t b, int64_t bs, int64_t h, int64_t hs, int64_t r, int64_t rs) {
  return static_cast<const T*>(base) + b * bs + h * hs + r * rs;
}

}  // namespace

void attention_weights(const WeightsParams& w) {
  const FwdParams& p = w.fwd;
  const int64_t D = p.head_dim, group = p.heads_q / p.heads_kv;
  parallel_for(p.batch * w.num_heads, p.num_threads, [&](int64_t t) {
    const int64_t hi = t % w.num_heads, b = t / w.num_heads, h = w.heads[hi];
    std::vector<double> s(p.seqlen_k);
    const double slope = alibi_slope(p, b, h);
    for (int64_t r = 0; r < w.num_rows; ++r) {
      const int64_t row = w.rows[r], pos = alibi_position(row, p.seqlen_q, p.seqlen_k);
      const double* q = row_of<double>(p.q, b, p.q_batch_stride, h, p.q_head_stride, row, p.q_row_stride);
      const KeyRange kr = visible_keys(row, p);
      double m = neg_inf<double>(), l = 0;
      for (int64_t j = kr.lo; j <= kr.hi; ++j) {
        // softcap and ALiBi (common/score_mod.h) on the scaled score, then the log2 domain
        double x = dot(q, row_of<double>(p.k, b, p.k_batch_stride, h / group, p.k_head_stride, j, p.k_row_stride), D) *
                   p.scale_f64;
        if (p.softcap > 0.f) x = softcap_score(x, p.softcap_f64);
        s[j] = (x + alibi_bias(slope, pos, j)) * kLog2e;
        m = s[j] > m ? s[j] : m;
      }
      double lse2;
      if (p.lse != nullptr) {
        lse2 = lse2_for_backward(static_cast<const double*>(p.lse)[b * p.lse_batch_stride + h * p.lse_head_stride + row]);
      } else {
        for (int64_t j = kr.lo; j <= kr.hi; ++j) l += std::exp2(s[j] - exp_base(m));
        lse2 = l == 0 ? -neg_inf<double>() : lse2_of(m, l);
      }
      double* pr = static_cast<double*>(w.probs) + b * w.p_batch_stride + hi * w.p_head_stride + r * w.p_row_stride;
      for (int64_t j = 0; j < p.seqlen_k; ++j) pr[j] = j < kr.lo || j > kr.hi ? 0.0 : std::exp2(s[j] - lse2);
    }
  });
}

void topk_forward(const TopkParams& tp) {
  const FwdParams& p = tp.fwd;
  const int64_t D = p.head_dim, group = p.heads_q / p.heads_kv, kt = tp.k_top;
  const double sl2 = p.scale_f64 * kLog2e;
  parallel_for(p.batch * p.heads_q, p.num_threads, [&](int64_t t) {
    const int64_t h = t % p.heads_q, b = t / p.heads_q, hk = h / group;
    std::vector<double> hs(kt), acc(D);
    std::vector<int64_t> hidx(kt);
    for (int64_t i = 0; i < p.seqlen_q; ++i) {
      const double* q = row_of<double>(p.q, b, p.q_batch_stride, h, p.q_head_stride, i, p.q_row_stride);
      const KeyRange kr = visible_keys(i, p);
      int n = 0;
      for (int64_t j = kr.lo; j <= kr.hi; ++j)
        topk_offer<double>(hs.data(), hidx.data(), n, int(kt),
                           dot(q, row_of<double>(p.k, b, p.k_batch_stride, hk, p.k_head_stride, j, p.k_row_stride), D) * sl2,
                           j);
      heap_sort_best_first<double>(hs.data(), hidx.data(), n);
      const double base = exp_base(n > 0 ? hs[0] : neg_inf<double>());
      double sum = 0;
      for (int c = 0; c < n; ++c) sum += hs[c] = std::exp2(hs[c] - base);
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int c = 0; c < n; ++c) {
        const double* v = row_of<double>(p.v, b, p.v_batch_stride, hk, p.v_head_stride, hidx[c], p.v_row_stride);
        for (int64_t d = 0; d < D; ++d) acc[d] += hs[c] * inv_sum(sum) * v[d];
      }
      double* o = static_cast<double*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride + i * p.o_row_stride;
      std::copy(acc.begin(), acc.end(), o);
      int64_t* ir = tp.index + b * tp.idx_batch_stride + h * tp.idx_head_stride + i * tp.idx_row_stride;
      for (int64_t c = 0; c < kt; ++c) ir[c] = c < n ? hidx[c] : -1;
    }
  });
}

void topk_backward(const TopkBwdParams& bp) {
  const TopkParams& tp = bp.sel;
  const FwdParams& p = tp.fwd;
  const int64_t D = p.head_dim, group = p.heads_q / p.heads_kv, kt = tp.k_top;
  const double sl2 = p.scale_f64 * kLog2e;
  double* dk = static_cast<double*>(bp.dk);
  double* dv = static_cast<double*>(bp.dv);
  parallel_for(p.batch * p.heads_kv, p.num_threads, [&](int64_t t) {
    const int64_t hk = t % p.heads_kv, b = t / p.heads_kv;
    auto grad = [&](double* g, int64_t j) { return g + ((b * p.seqlen_k + j) * p.heads_kv + hk) * D; };
    std::vector<double> pr(kt), dp(kt);
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
      for (int64_t i = 0; i < p.seqlen_q; ++i) {
        const int64_t* idx = tp.index + b * tp.idx_batch_stride + h * tp.idx_head_stride + i * tp.idx_row_stride;
        const double* q = row_of<double>(p.q, b, p.q_batch_stride, h, p.q_head_stride, i, p.q_row_stride);
        const double* dout = row_of<double>(bp.dout, b, bp.do_batch_stride, h, bp.do_head_stride, i, bp.do_row_stride);
        double* dq = static_cast<double*>(bp.dq) + b * bp.dq_batch_stride + h * bp.dq_head_stride + i * bp.dq_row_stride;
        auto krow = [&](int c) { return row_of<double>(p.k, b, p.k_batch_stride, hk, p.k_head_stride, idx[c], p.k_row_stride); };
        auto vrow = [&](int c) { return row_of<double>(p.v, b, p.v_batch_stride, hk, p.v_head_stride, idx[c], p.v_row_stride); };
        int n = 0;
        while (n < kt && idx[n] >= 0) ++n;
        double mx = neg_inf<double>(), sum = 0, delta = 0;
        for (int c = 0; c < n; ++c) {
          pr[c] = dot(q, krow(c), D) * sl2;
          dp[c] = dot(dout, vrow(c), D);
          mx = pr[c] > mx || pr[c] != pr[c] ? pr[c] : mx;
        }
        for (int c = 0; c < n; ++c) sum += pr[c] = std::exp2(pr[c] - exp_base(mx));
        for (int c = 0; c < n; ++c) delta += (pr[c] *= inv_sum(sum)) * dp[c];
        std::fill(dq, dq + D, 0.0);
        for (int c = 0; c < n; ++c) {
          const double ds = pr[c] * (dp[c] - delta) * p.scale_f64;
          const double* kr = krow(c);
          double *dkr = grad(dk, idx[c]), *dvr = grad(dv, idx[c]);
          for (int64_t d = 0; d < D; ++d) {
            dq[d] += ds * kr[d];
            dkr[d] += ds * q[d];
            dvr[d] += pr[c] * dout[d];
          }
        }
      }
  });
}

}  // namespace fae::cpu::float64
