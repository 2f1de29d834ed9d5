// Attention weights on demand and top-k attention (per-ISA source, see vec.h; included by each
// isa_*.cpp after kernels.h). Semantics: docs/interpretability.md. A task owns up to bq query
// rows of one head; per key tile it computes the raw scores S = Q . K^T (nq x ldp, the GEMM of
// gemm.h with K^T packed) and scales them into the log2 domain, so equal dot products give equal
// scores whatever the scale (exact ties stay ties).
//   Weights:  P = exp2(S * scale_log2 - lse2) into the caller's (rows x Sk) output, with lse2 from
//             the forward's lse or, without one, from a first online-softmax pass over the same
//             tiles; memory beyond the output is the task's tiles.
//   TopK:     each row offers its visible scores to a heap of its k_top best (common/topk.h);
//             then out = softmax over the kept scores . their V rows, and the kept keys, best first.
//   TopKBackward: the gradient of that restricted softmax, one task per (batch, kv head) so that
//             it owns its dK, dV rows: per row, the kept scores and dP recomputed along D.
#pragma once
#include <cmath>

#include "common/interp_params.h"
#include "common/mask.h"
#include "common/topk.h"
#include "cpu/gemm.h"
#include "cpu/score_mod.h"
#include "cpu/thread_pool.h"
#include "cpu/tiles.h"

namespace fae::cpu::FAE_CPU_ISA {

constexpr int64_t kInterpRows = 48;  // query rows per task (8 x MR: no narrow GEMM row block)

// Raw scores of nq query rows (float rows qr, stride D) against key tiles of one kv head.
template <class V, typename T>
struct ScoreTile {
  int64_t D, bk, ldp;
  float* kt;    // D x ldp: K^T of the tile, padding zero
  float* kbuf;  // bk x D: the tile as float (16-bit inputs)
  float* s;     // nq x ldp: scores

  static int64_t floats(int64_t D, int64_t bk, int64_t ldp, int64_t rows) { return D * ldp + bk * D + rows * ldp; }
  ScoreTile(int64_t d, int64_t keys, float* buf)
      : D(d), bk(keys), ldp(round_up(keys, V::W)), kt(buf), kbuf(buf + d * ldp), s(kbuf + keys * d) {}

  // s = (Q . K^T) * sl2 for keys [k0, k0 + nk) (k: the head's first key row, rows `ks` apart).
  void compute(const T* k, int64_t ks, int64_t k0, int64_t nk, const float* qr, int64_t nq, float sl2) {
    int64_t ldk;
    const float* kr = float_rows<V>(k + k0 * ks, ks, nk, D, kbuf, ldk);
    for (int64_t d = 0; d < D; ++d)
      for (int64_t j = 0; j < ldp; ++j) kt[d * ldp + j] = j < nk ? kr[j * ldk + d] : 0.f;
    gemm<V>(nq, ldp, score_sum(Gemm{qr, D, 1, kt, ldp, s, ldp, D, false}));
    const typename V::R sv = V::set1(sl2);
    for (int64_t i = 0; i < nq * ldp; i += V::W) V::store(s + i, V::mul(V::load(s + i), sv));
  }
};

template <class V, typename T>
struct Weights {
  using R = typename V::R;
  static constexpr int W = V::W;
  const WeightsParams& w;
  const FwdParams& p;
  int64_t D, bk, rtiles;

  explicit Weights(const WeightsParams& prm) : w(prm), p(prm.fwd) {
    D = p.head_dim;
    bk = tile_sizes(p.dtype, D).fwd_bk;
    rtiles = ceil_div(w.num_rows, kInterpRows);
  }

  void run() {
    parallel_for(p.batch * w.num_heads * rtiles, p.num_threads, [&](int64_t t) { task(t); });
  }

  void task(int64_t t) {
    const int64_t rt = t % rtiles, hi = t / rtiles % w.num_heads, b = t / rtiles / w.num_heads;
    const int64_t h = w.heads[hi], hk = h / (p.heads_q / p.heads_kv);
    const int64_t r0 = rt * kInterpRows, nq = std::min(kInterpRows, w.num_rows - r0);
    const int64_t ldp = round_up(bk, W);
    Scratch scratch(nq * D + ScoreTile<V, T>::floats(D, bk, ldp, nq) + 3 * kInterpRows + W);
    float* qbuf = scratch.get();
    ScoreTile<V, T> st(D, bk, qbuf + nq * D);
    float* lse2 = st.s + nq * ldp;
    float* m = lse2 + kInterpRows;
    float* l = m + kInterpRows;
    float* lanes = l + kInterpRows;
    int64_t lo[kInterpRows], hi_[kInterpRows];

    const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
    const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + hk * p.k_head_stride;
    KeyRange span{p.seqlen_k, -1};
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t row = w.rows[r0 + r];
      load_rows<V>(q + row * p.q_row_stride, p.q_row_stride, 1, D, qbuf + r * D, D);
      const KeyRange kr = visible_keys(row, p);
      lo[r] = kr.lo;
      hi_[r] = kr.hi;
      if (!kr.empty()) span = {std::min(span.lo, kr.lo), std::max(span.hi, kr.hi)};
    }
    if (p.lse != nullptr) {
      const float* lse = static_cast<const float*>(p.lse) + b * p.lse_batch_stride + h * p.lse_head_stride;
      for (int64_t r = 0; r < nq; ++r) lse2[r] = lse2_for_backward(lse[w.rows[r0 + r]]);
    } else {
      for (int64_t r = 0; r < nq; ++r) { m[r] = neg_inf<float>(); l[r] = 0.f; }
      for (int64_t k0 = span.lo; k0 <= span.hi; k0 += bk) {
        const int64_t nk = std::min(bk, span.hi + 1 - k0);
        st.compute(k, p.k_row_stride, k0, nk, qbuf, nq, p.scale_log2);
        modify(st.s, ldp, b, h, w.rows + r0, nq, k0);
        for (int64_t r = 0; r < nq; ++r) online_softmax(st.s + r * ldp, k0, nk, lo[r], hi_[r], m[r], l[r], lanes);
      }
      for (int64_t r = 0; r < nq; ++r) lse2[r] = l[r] == 0.f ? -neg_inf<float>() : lse2_of(m[r], l[r]);
    }

    float* probs = static_cast<float*>(w.probs) + b * w.p_batch_stride + hi * w.p_head_stride;
    for (int64_t r = 0; r < nq; ++r) {  // keys no row of the task sees
      float* pr = probs + (r0 + r) * w.p_row_stride;
      for (int64_t j = 0; j < p.seqlen_k; ++j)
        if (j < span.lo || j > span.hi) pr[j] = 0.f;
    }
    for (int64_t k0 = span.lo; k0 <= span.hi; k0 += bk) {
      const int64_t nk = std::min(bk, span.hi + 1 - k0);
      st.compute(k, p.k_row_stride, k0, nk, qbuf, nq, p.scale_log2);
      modify(st.s, ldp, b, h, w.rows + r0, nq, k0);
      for (int64_t r = 0; r < nq; ++r) {
        float* pr = probs + (r0 + r) * w.p_row_stride + k0;
        const float* sr = st.s + r * ldp;
        const R nl = V::set1(-lse2[r]);
        for (int64_t j = 0; j < nk; j += W) {
          const int n = int(std::min<int64_t>(W, nk - j));
          const R pv = V::exp2(V::add(V::load(sr + j), nl));
          if (n == W) V::store(pr + j, pv);
          else V::storen(pr + j, pv, n);
        }
        for (int64_t j = 0; j < nk; ++j)  // masked keys (all of them for a row that sees none)
          if (k0 + j < lo[r] || k0 + j > hi_[r]) pr[j] = 0.f;
      }
    }
  }

  // Softcap and ALiBi on the log2-domain scores s (nq rows, ldp apart, ldp a multiple of W) of
  // query rows `rows` against keys k0 .. k0 + ldp - 1, with the forward's vector transforms
  // (cpu/score_mod.h: ScoreMod), so that the probabilities match the forward's lse.
  void modify(float* s, int64_t ldp, int64_t b, int64_t h, const int64_t* rows, int64_t nq, int64_t k0) const {
    if (!has_score_mod(p)) return;
    const ScoreMod<V> sm(p);
    const R nslope = V::set1(-alibi_slope(p, b, h) * float(kLog2e));
    float lane[W];
    for (int w = 0; w < W; ++w) lane[w] = float(w);
    const R lanes = V::load(lane);
    for (int64_t r = 0; r < nq; ++r) {
      const R pos = V::set1(float(alibi_position(rows[r], p.seqlen_q, p.seqlen_k)));
      for (int64_t j = 0; j < ldp; j += W) {
        R x = V::load(s + r * ldp + j);
        if (sm.cap2 > 0.f) x = sm.softcap(x, nullptr);
        if (sm.alibi) x = sm.bias(x, nslope, pos, V::add(V::set1(float(k0 + j)), lanes));
        V::store(s + r * ldp + j, x);
      }
    }
  }

  // One tile of a row's online softmax (log2 domain): masked scores and the tile's padding
  // become -inf, then the running max m and sum l are updated as in the forward
  // (fae::rescale_factor, exp_base). A NaN score reaches l through its exp2.
  void online_softmax(float* sr, int64_t k0, int64_t nk, int64_t lo, int64_t hi, float& m, float& l,
                      float* lanes) const {
    if (lo > k0 + nk - 1 || hi < k0) return;
    const int64_t ldp = round_up(bk, W);
    for (int64_t j = 0; j < ldp; ++j)
      if (j >= nk || k0 + j < lo || k0 + j > hi) sr[j] = neg_inf<float>();
    R mv = V::set1(neg_inf<float>());
    for (int64_t j = 0; j < ldp; j += W) mv = V::max(mv, V::load(sr + j));
    V::store(lanes, mv);
    float mx = m;
    for (int i = 0; i < W; ++i) mx = lanes[i] > mx ? lanes[i] : mx;
    const R base = V::set1(exp_base(mx));
    R sum = V::zero();
    for (int64_t j = 0; j < ldp; j += W) sum = V::add(sum, V::exp2(V::sub(V::load(sr + j), base)));
    l = l * rescale_factor(m, mx) + V::hsum(sum);
    m = mx;
  }
};

template <class V, typename T>
struct TopK {
  using R = typename V::R;
  static constexpr int W = V::W;
  const TopkParams& tp;
  const FwdParams& p;
  int64_t D, bk, ktop, rtiles;

  explicit TopK(const TopkParams& prm) : tp(prm), p(prm.fwd) {
    D = p.head_dim;
    bk = tile_sizes(p.dtype, D).fwd_bk;
    ktop = tp.k_top;
    rtiles = ceil_div(p.seqlen_q, kInterpRows);
  }

  void run() {
    parallel_for(p.batch * p.heads_q * rtiles, p.num_threads, [&](int64_t t) { task(t); });
  }

  void task(int64_t t) {
    const int64_t rt = t % rtiles, h = t / rtiles % p.heads_q, b = t / rtiles / p.heads_q;
    const int64_t hk = h / (p.heads_q / p.heads_kv);
    const int64_t r0 = rt * kInterpRows, nq = std::min(kInterpRows, p.seqlen_q - r0);
    const int64_t ldp = round_up(bk, W);
    // Heap entries: scores, then key indices as int32 in the same float scratch.
    Scratch scratch(nq * D + ScoreTile<V, T>::floats(D, bk, ldp, nq) + 2 * nq * ktop + round_up(D, W));
    float* qbuf = scratch.get();
    ScoreTile<V, T> st(D, bk, qbuf + nq * D);
    float* hs = st.s + nq * ldp;
    int32_t* hidx = reinterpret_cast<int32_t*>(hs + nq * ktop);
    float* acc = hs + 2 * nq * ktop;
    int count[kInterpRows] = {};

    const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
    const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + hk * p.k_head_stride;
    load_rows<V>(q + r0 * p.q_row_stride, p.q_row_stride, nq, D, qbuf, D);
    const KeyRange span = visible_keys_of_rows(r0, r0 + nq, p);
    for (int64_t k0 = span.lo; k0 <= span.hi; k0 += bk) {
      const int64_t nk = std::min(bk, span.hi + 1 - k0);
      st.compute(k, p.k_row_stride, k0, nk, qbuf, nq, p.scale_log2);
      for (int64_t r = 0; r < nq; ++r) {
        const KeyRange kr = visible_keys(r0 + r, p);
        const float* sr = st.s + r * ldp;
        const int64_t j1 = std::min(kr.hi + 1, k0 + nk);
        for (int64_t j = std::max(kr.lo, k0); j < j1; ++j)
          topk_offer<float>(hs + r * ktop, hidx + r * ktop, count[r], int(ktop), sr[j - k0], j);
      }
    }
    for (int64_t r = 0; r < nq; ++r) finish(b, h, hk, r0 + r, hs + r * ktop, hidx + r * ktop, count[r], acc);
  }

  // out = sum_j P_j V_j over the kept keys, P the softmax of their scores; the kept keys, best first.
  void finish(int64_t b, int64_t h, int64_t hk, int64_t row, float* s, int32_t* idx, int n, float* acc) const {
    heap_sort_best_first<float>(s, idx, n);
    const float base = exp_base(n > 0 ? s[0] : neg_inf<float>());  // the best score is the max (or NaN)
    float sum = 0.f;
    for (int i = 0; i < n; ++i) sum += s[i] = std::exp2(s[i] - base);
    const float inv = inv_sum(sum);
    for (int64_t d = 0; d < round_up(D, W); ++d) acc[d] = 0.f;
    const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + hk * p.v_head_stride;
    for (int i = 0; i < n; ++i) {
      const T* vr = v + idx[i] * p.v_row_stride;
      const R pv = V::set1(s[i] * inv);
      for (int64_t d = 0; d < D; d += W) {
        const int c = int(std::min<int64_t>(W, D - d));
        V::store(acc + d, V::fma(pv, load_vec(vr + d, c), V::load(acc + d)));
      }
    }
    T* o = static_cast<T*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride + row * p.o_row_stride;
    store_rows<V>(acc, D, 1, D, o, D);
    int64_t* ir = tp.index + b * tp.idx_batch_stride + h * tp.idx_head_stride + row * tp.idx_row_stride;
    for (int64_t i = 0; i < ktop; ++i) ir[i] = i < n ? idx[i] : -1;
  }

  static R load_vec(const T* x, int n) {
    if constexpr (std::is_same_v<T, float>) return n == W ? V::load(x) : V::loadn(x, n);
    else return V::cvt(x, n);
  }
};

template <class V, typename T>
struct TopKBackward {
  using R = typename V::R;
  static constexpr int W = V::W;
  const TopkBwdParams& bp;
  const TopkParams& tp;
  const FwdParams& p;
  int64_t D, Dp, kt;

  explicit TopKBackward(const TopkBwdParams& prm) : bp(prm), tp(prm.sel), p(prm.sel.fwd) {
    D = p.head_dim;
    Dp = round_up(D, W);
    kt = tp.k_top;
  }

  void run() {
    parallel_for(p.batch * p.heads_kv, p.num_threads, [&](int64_t t) { task(t / p.heads_kv, t % p.heads_kv); });
  }

  float* grad_row(void* g, int64_t b, int64_t j, int64_t hk) const {
    return static_cast<float*>(g) + ((b * p.seqlen_k + j) * p.heads_kv + hk) * D;
  }

  void task(int64_t b, int64_t hk) const {
    Scratch scratch(5 * Dp + 3 * kt);
    float *qi = scratch.get(), *doi = qi + Dp, *dqi = doi + Dp, *kr = dqi + Dp, *vr = kr + Dp;
    float *pr = vr + Dp, *dp = pr + kt, *ds = dp + kt;
    for (int64_t d = D; d < Dp; ++d) qi[d] = doi[d] = kr[d] = vr[d] = 0.f;
    const int64_t group = p.heads_q / p.heads_kv;
    const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + hk * p.k_head_stride;
    const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + hk * p.v_head_stride;
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
      for (int64_t i = 0; i < p.seqlen_q; ++i) {
        const int64_t* idx = tp.index + b * tp.idx_batch_stride + h * tp.idx_head_stride + i * tp.idx_row_stride;
        int n = 0;
        while (n < kt && idx[n] >= 0) ++n;
        load_rows<V>(static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride + i * p.q_row_stride,
                     0, 1, D, qi, D);
        load_rows<V>(static_cast<const T*>(bp.dout) + b * bp.do_batch_stride + h * bp.do_head_stride +
                         i * bp.do_row_stride, 0, 1, D, doi, D);
        float mx = neg_inf<float>();
        for (int c = 0; c < n; ++c) {
          load_rows<V>(k + idx[c] * p.k_row_stride, 0, 1, D, kr, D);
          load_rows<V>(v + idx[c] * p.v_row_stride, 0, 1, D, vr, D);
          pr[c] = dot(qi, kr) * p.scale_log2;
          dp[c] = dot(doi, vr);
          mx = pr[c] > mx || pr[c] != pr[c] ? pr[c] : mx;
        }
        const float base = exp_base(mx);
        float sum = 0.f, delta = 0.f;
        for (int c = 0; c < n; ++c) sum += pr[c] = std::exp2(pr[c] - base);
        const float inv = inv_sum(sum);
        for (int c = 0; c < n; ++c) delta += (pr[c] *= inv) * dp[c];
        for (int64_t d = 0; d < Dp; ++d) dqi[d] = 0.f;
        for (int c = 0; c < n; ++c) {
          ds[c] = pr[c] * (dp[c] - delta) * p.scale;
          load_rows<V>(k + idx[c] * p.k_row_stride, 0, 1, D, kr, D);
          axpy(ds[c], kr, dqi);
          axpy(ds[c], qi, grad_row(bp.dk, b, idx[c], hk));
          axpy(pr[c], doi, grad_row(bp.dv, b, idx[c], hk));
        }
        T* dq = static_cast<T*>(bp.dq) + b * bp.dq_batch_stride + h * bp.dq_head_stride + i * bp.dq_row_stride;
        store_rows<V>(dqi, D, 1, D, dq, D);
      }
  }

  float dot(const float* x, const float* y) const {  // both padded with zeros to Dp
    R acc = V::zero();
    for (int64_t d = 0; d < Dp; d += W) acc = V::fma(V::load(x + d), V::load(y + d), acc);
    return V::hsum(acc);
  }
  void axpy(float a, const float* x, float* y) const {  // y[0, D) += a x; y need not be padded
    const R av = V::set1(a);
    for (int64_t d = 0; d < D; d += W) {
      const int n = int(std::min<int64_t>(W, D - d));
      const R r = V::fma(av, V::load(x + d), n == W ? V::load(y + d) : V::loadn(y + d, n));
      if (n == W) V::store(y + d, r);
      else V::storen(y + d, r, n);
    }
  }
};

void attention_weights(const WeightsParams& w) {
  switch (w.fwd.dtype) {
    case DType::f32: Weights<FAE_CPU_VEC, float>(w).run(); break;
    case DType::f16: Weights<FAE_CPU_VEC, f16>(w).run(); break;
    case DType::bf16: Weights<FAE_CPU_VEC, bf16>(w).run(); break;
    case DType::f64: throw std::logic_error("float64 runs on the float64 path");
  }
}

void topk_forward(const TopkParams& t) {
  switch (t.fwd.dtype) {
    case DType::f32: TopK<FAE_CPU_VEC, float>(t).run(); break;
    case DType::f16: TopK<FAE_CPU_VEC, f16>(t).run(); break;
    case DType::bf16: TopK<FAE_CPU_VEC, bf16>(t).run(); break;
    case DType::f64: throw std::logic_error("float64 runs on the float64 path");
  }
}

void topk_backward(const TopkBwdParams& t) {
  switch (t.sel.fwd.dtype) {
    case DType::f32: TopKBackward<FAE_CPU_VEC, float>(t).run(); break;
    case DType::f16: TopKBackward<FAE_CPU_VEC, f16>(t).run(); break;
    case DType::bf16: TopKBackward<FAE_CPU_VEC, bf16>(t).run(); break;
    case DType::f64: throw std::logic_error("float64 runs on the float64 path");
  }
}

}  // namespace fae::cpu::FAE_CPU_ISA
