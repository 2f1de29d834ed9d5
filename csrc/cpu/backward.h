// Backward kernel (per-ISA source, see vec.h), FlashAttention-2 shape. A first pass over query
// tiles computes each row's softmax statistics from the backward's own scores (row_stats):
//   psum_i  = sum_j exp2(S_ij * scale_log2 - lse2_i),  delta_i = sum_j P_ij dP_ij - dlse_i
// with P = exp2(S * scale_log2 - lse2) / psum, so that P sums to 1 and delta agrees with the dP
// it is subtracted from: dS = P * (dP - delta) then cancels the way the exact gradient does (a
// row that sees one key has P = 1 and dS = 0 up to one rounding), whatever the rounding of the
// forward's output and lse. Then a task owns one (batch, kv head) and a contiguous chunk of its
// key tiles; for each key tile it packs K^T and V^T once, then walks every query head of the GQA
// group and every query tile that can see the keys:
//   S  = Q . K^T,  dP = dO . V^T            (A = Q / dO rows in place, B = packed K^T / V^T)
//   P  = exp2(S * scale_log2 - lse2) / psum,  dS = P * (dP - delta) * scale
//   dV += P^T . dO,  dK += dS^T . Q          (float32 tile accumulators, owned by the task)
//   dQ += dS . K                              (rows owned by the task: no races)
// S and dP are the same dot products, summed in the same order, in every pass (transposed or
// not), so every pass sees the same P and dP bit for bit.
// dQ goes straight into a float32 output, else into a float32 accumulator of the task. When
// batch x kv heads gives too few tasks, each head is split into key chunks that compute dK and
// dV only, and dQ follows in a second pass over query tiles (dq_task: each owns its rows and
// recomputes dS for them, transposed like the forward), so no chunk keeps a copy of dQ. The work
// split depends only on the shapes, never on the thread count: results are bitwise reproducible.
#pragma once
#include <cmath>

#include "common/mask.h"
#include "cpu/gemm.h"
#include "cpu/thread_pool.h"
#include "cpu/tiles.h"

namespace fae::cpu::FAE_CPU_ISA {

template <class V, typename T>
struct Backward {
  using R = typename V::R;
  static constexpr int W = V::W;
  static constexpr int64_t kMaxRows = 256;  // upper bound of tile_sizes().bwd_bq

  const BwdParams& bp;
  const FwdParams& p;
  int64_t D, Sq, Sk, group, bq, bk, ldp, key_tiles, nchunks;
  float* delta = nullptr;   // (b, hq, row): sum_j P_ij dP_ij - dlse
  float* psum = nullptr;    // (b, hq, row): sum_j exp2(S_ij * scale_log2 - lse2), P's normaliser
  float* lse2 = nullptr;    // (b, hq, row): lse2_for_backward(lse)

  explicit Backward(const BwdParams& prm) : bp(prm), p(prm.fwd) {
    const TileSizes ts = tile_sizes(p.head_dim);
    D = p.head_dim; Sq = p.seqlen_q; Sk = p.seqlen_k; group = p.heads_q / p.heads_kv;
    bq = ts.bwd_bq; bk = ts.bwd_bk; ldp = round_up(bk, W);
    key_tiles = ceil_div(Sk, bk);
    const int64_t heads = p.batch * p.heads_kv;
    nchunks = heads >= kMinTasks ? 1 : std::max<int64_t>(1, std::min(ceil_div(kMinTasks, heads), key_tiles));
  }

  template <typename U> const U* at(const void* base, int64_t b, int64_t bs, int64_t h, int64_t hs) const {
    return static_cast<const U*>(base) + b * bs + h * hs;
  }
  template <typename U> U* at(void* base, int64_t b, int64_t bs, int64_t h, int64_t hs) const {
    return static_cast<U*>(base) + b * bs + h * hs;
  }

  void run() {
    const int64_t qtiles = ceil_div(Sq, bq), rows = p.batch * p.heads_q * Sq;
    Scratch dl(rows), ps(rows), l2(rows);
    delta = dl.get();
    psum = ps.get();
    lse2 = l2.get();
    parallel_for(p.batch * p.heads_q * qtiles, p.num_threads, [&](int64_t t) { row_stats(t / qtiles, t % qtiles); });
    parallel_for(p.batch * p.heads_kv * nchunks, p.num_threads, [&](int64_t t) { task(t); });
    if (nchunks > 1)
      parallel_for(p.batch * p.heads_q * qtiles, p.num_threads, [&](int64_t t) { dq_task(t / qtiles, t % qtiles); });
  }

  // lse2, psum and delta of query rows [i0, i0 + bq) of one head.
  void row_stats(int64_t bh, int64_t qtile) {
    const int64_t b = bh / p.heads_q, h = bh % p.heads_q, i0 = qtile * bq, nq = std::min(bq, Sq - i0);
    const float* lse = at<float>(p.lse, b, p.lse_batch_stride, h, p.lse_head_stride);
    const float* dlse = bp.dlse ? at<float>(bp.dlse, b, p.lse_batch_stride, h, p.lse_head_stride) : nullptr;
    for (int64_t i = i0; i < i0 + nq; ++i) lse2[bh * Sq + i] = lse2_for_backward(lse[i]);
    const int64_t nqp = round_up(nq, W);
    Scratch sums(2 * nqp);
    float* ps = sums.get();  // per row: sum of P (not yet normalised), sum of P * dP
    float* pd = ps + nqp;
    for (int64_t c = 0; c < 2 * nqp; ++c) ps[c] = 0.f;
    sweep_keys(bh, i0, nq, false, [&](int64_t, int64_t nk, const float*, int64_t, const float* pt, const float* dpt) {
      for (int64_t c = 0; c < nqp; c += W) {
        R sp = V::load(ps + c), sd = V::load(pd + c);
        for (int64_t j = 0; j < nk; ++j) {
          const R pv = V::load(pt + j * nqp + c);
          sp = V::add(sp, pv);
          sd = V::fma(pv, V::load(dpt + j * nqp + c), sd);
        }
        V::store(ps + c, sp);
        V::store(pd + c, sd);
      }
    });
    for (int64_t c = 0; c < nq; ++c) {
      const int64_t i = bh * Sq + i0 + c;
      psum[i] = ps[c];
      if (ps[c] == 0.f)  // the row sees no key: dS = 0 whatever dout and dlse hold
        delta[i] = 0.f;
      else  // d lse_i / d s_ij = P_ij folds into delta
        delta[i] = dlse ? pd[c] / ps[c] - dlse[i0 + c] : pd[c] / ps[c];
    }
  }

  void task(int64_t t) {
    const int64_t chunk = t % nchunks, hk = (t / nchunks) % p.heads_kv, b = t / nchunks / p.heads_kv;
    const int64_t per = ceil_div(key_tiles, nchunks);
    const int64_t kt0 = chunk * per, kt1 = std::min(key_tiles, kt0 + per);
    const bool with_dq = nchunks == 1;  // else dq_task computes dQ
    const bool direct = std::is_same_v<T, float> && with_dq;

    Scratch scratch(2 * D * ldp + 4 * bk * D + 2 * bq * ldp + 2 * bq * D);
    float* kt = scratch.get();      // D x ldp: K^T of the tile, padding zero
    float* vt = kt + D * ldp;       // D x ldp: V^T
    float* kbuf = vt + D * ldp;     // bk x D: K tile as float (16-bit inputs)
    float* vbuf = kbuf + bk * D;    // bk x D
    float* dka = vbuf + bk * D;     // bk x D: dK accumulator
    float* dva = dka + bk * D;      // bk x D: dV accumulator
    float* s = dva + bk * D;        // bq x ldp: S, then P
    float* dp = s + bq * ldp;       // bq x ldp: dP, then dS
    float* qbuf = dp + bq * ldp;    // bq x D: Q rows as float
    float* dobuf = qbuf + bq * D;   // bq x D: dO rows as float

    // dQ destination of the group: the output itself, or a float32 accumulator.
    const int64_t acc_elems = direct || !with_dq ? 0 : group * Sq * D;
    Scratch local(acc_elems);
    float* dqacc = local.get();
    if (direct) {
      for (int64_t g = 0; g < group; ++g) {
        float* dq = at<float>(bp.dq, b, bp.dq_batch_stride, hk * group + g, bp.dq_head_stride);
        for (int64_t i = 0; i < Sq; ++i)
          for (int64_t d = 0; d < D; ++d) dq[i * bp.dq_row_stride + d] = 0.f;
      }
    } else {
      for (int64_t i = 0; i < acc_elems; ++i) dqacc[i] = 0.f;
    }

    const T* k = at<T>(p.k, b, p.k_batch_stride, hk, p.k_head_stride);
    const T* v = at<T>(p.v, b, p.v_batch_stride, hk, p.v_head_stride);
    for (int64_t ti = kt0; ti < kt1; ++ti) {
      const int64_t k0 = ti * bk, nk = std::min(bk, Sk - k0);
      int64_t ldk, ldv;
      const float* kr = float_rows<V>(k + k0 * p.k_row_stride, p.k_row_stride, nk, D, kbuf, ldk);
      const float* vr = float_rows<V>(v + k0 * p.v_row_stride, p.v_row_stride, nk, D, vbuf, ldv);
      for (int64_t d = 0; d < D; ++d)
        for (int64_t j = 0; j < ldp; ++j) {
          kt[d * ldp + j] = j < nk ? kr[j * ldk + d] : 0.f;
          vt[d * ldp + j] = j < nk ? vr[j * ldv + d] : 0.f;
        }
      for (int64_t i = 0; i < bk * D; ++i) dka[i] = dva[i] = 0.f;
      const int64_t rlo = visible_rows(k0, p).lo, rhi = visible_rows(k0 + nk - 1, p).hi;
      for (int64_t g = 0; g < group; ++g) {
        const int64_t h = hk * group + g, bh = b * p.heads_q + h;
        const T* q = at<T>(p.q, b, p.q_batch_stride, h, p.q_head_stride);
        const T* dout = at<T>(bp.dout, b, bp.do_batch_stride, h, bp.do_head_stride);
        float* dqh;
        int64_t lddq;
        if (direct) {
          dqh = at<float>(bp.dq, b, bp.dq_batch_stride, h, bp.dq_head_stride);
          lddq = bp.dq_row_stride;
        } else {
          dqh = dqacc + g * Sq * D;
          lddq = D;
        }
        for (int64_t i0 = rlo; i0 <= rhi; i0 += bq) {
          const int64_t nq = std::min(bq, rhi + 1 - i0);
          int64_t ldq, lddo;
          const float* qr = float_rows<V>(q + i0 * p.q_row_stride, p.q_row_stride, nq, D, qbuf, ldq);
          const float* dor = float_rows<V>(dout + i0 * bp.do_row_stride, bp.do_row_stride, nq, D, dobuf, lddo);
          gemm<V>(nq, ldp, Gemm{qr, ldq, 1, kt, ldp, s, ldp, D, false});
          gemm<V>(nq, ldp, Gemm{dor, lddo, 1, vt, ldp, dp, ldp, D, false});
          probabilities(bh, i0, nq, k0, nk, s, dp);
          gemm<V>(nk, D, Gemm{s, 1, ldp, dor, lddo, dva, D, nq, true});
          gemm<V>(nk, D, Gemm{dp, 1, ldp, qr, ldq, dka, D, nq, true});
          if (with_dq) gemm<V>(nq, D, Gemm{dp, ldp, 1, kr, ldk, dqh + i0 * lddq, lddq, nk, true});
        }
      }
      T* dk = at<T>(bp.dk, b, bp.dk_batch_stride, hk, bp.dk_head_stride);
      T* dv = at<T>(bp.dv, b, bp.dv_batch_stride, hk, bp.dv_head_stride);
      store_rows<V>(dka, D, nk, D, dk + k0 * bp.dk_row_stride, bp.dk_row_stride);
      store_rows<V>(dva, D, nk, D, dv + k0 * bp.dv_row_stride, bp.dv_row_stride);
    }
    if (!direct && with_dq)
      for (int64_t g = 0; g < group; ++g)
        store_rows<V>(dqacc + g * Sq * D, D, Sq, D,
                      at<T>(bp.dq, b, bp.dq_batch_stride, hk * group + g, bp.dq_head_stride), bp.dq_row_stride);
  }

  // In place: s becomes P, dp becomes dS * scale; entries a row may not see become 0.
  void probabilities(int64_t bh, int64_t i0, int64_t nq, int64_t k0, int64_t nk, float* s, float* dp) const {
    const R sc = V::set1(p.scale), sl2 = V::set1(p.scale_log2);
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t row = i0 + r;
      float* sr = s + r * ldp;
      float* dr = dp + r * ldp;
      const float l2 = lse2[bh * Sq + row];
      const KeyRange kr = visible_keys(row, p);
      if (sees_no_key(l2) || kr.lo > k0 + nk - 1 || kr.hi < k0) {  // sees none of these keys
        for (int64_t j = 0; j < nk; ++j) sr[j] = dr[j] = 0.f;
        continue;
      }
      const R lv = V::set1(-l2), nv = V::set1(psum[bh * Sq + row]), dv = V::set1(delta[bh * Sq + row]);
      for (int64_t j = 0; j < ldp; j += W) {
        const R pv = V::div(V::exp2(V::fma(V::load(sr + j), sl2, lv)), nv);
        V::store(sr + j, pv);
        V::store(dr + j, V::mul(V::mul(pv, V::sub(V::load(dr + j), dv)), sc));
      }
      for (int64_t j = 0; j < kr.lo - k0; ++j) sr[j] = dr[j] = 0.f;
      for (int64_t j = std::max<int64_t>(0, kr.hi + 1 - k0); j < nk; ++j) sr[j] = dr[j] = 0.f;
    }
  }

  // Walks the keys that query rows [i0, i0 + nq) of one head see, transposed like the forward
  // (lanes are query rows): per key tile S^T = K.Q^T, dP^T = V.dO^T and P^T = exp2(S^T *
  // scale_log2 - lse2), divided by psum when `normalised`; entries a row may not see are 0 in
  // both (every entry of a row that sees no key). Calls tile(k0, nk, kr, ldk, pt, dpt): K rows
  // as float, P^T and dP^T as nk x nqp (lane c < nq is row i0 + c).
  template <class Tile>
  void sweep_keys(int64_t bh, int64_t i0, int64_t nq, bool normalised, Tile&& tile) const {
    const int64_t b = bh / p.heads_q, h = bh % p.heads_q, hk = h / group, nqp = round_up(nq, W);
    Scratch scratch(2 * D * nqp + 2 * bk * nqp + 2 * bk * D + 2 * nqp);
    float* qt = scratch.get();      // D x nqp: Q^T, padding zero
    float* dot = qt + D * nqp;      // D x nqp: dO^T
    float* st = dot + D * nqp;      // bk x nqp: S^T, then P^T
    float* dst = st + bk * nqp;     // bk x nqp: dP^T
    float* kbuf = dst + bk * nqp;   // bk x D: K tile as float (16-bit inputs)
    float* vbuf = kbuf + bk * D;    // bk x D
    float* nl2 = vbuf + bk * D;     // nqp: -lse2 per row, padding 0
    float* ps = nl2 + nqp;          // nqp: psum per row (normalised) or 1
    int64_t lo[kMaxRows], hi[kMaxRows];

    const T* q = at<T>(p.q, b, p.q_batch_stride, h, p.q_head_stride) + i0 * p.q_row_stride;
    const T* dout = at<T>(bp.dout, b, bp.do_batch_stride, h, bp.do_head_stride) + i0 * bp.do_row_stride;
    for (int64_t i = 0; i < D * nqp; ++i) qt[i] = dot[i] = 0.f;
    for (int64_t c = 0; c < nqp; ++c) {
      nl2[c] = c < nq ? -lse2[bh * Sq + i0 + c] : 0.f;
      ps[c] = c < nq && normalised ? psum[bh * Sq + i0 + c] : 1.f;
    }
    for (int64_t c = 0; c < nq; ++c) {
      for (int64_t d = 0; d < D; ++d) {
        qt[d * nqp + c] = load_as<float>(q + c * p.q_row_stride + d);
        dot[d * nqp + c] = load_as<float>(dout + c * bp.do_row_stride + d);
      }
      const KeyRange kr = visible_keys(i0 + c, p);
      const bool none = sees_no_key(-nl2[c]);  // as probabilities(): the row sees no key
      lo[c] = none ? 1 : kr.lo;
      hi[c] = none ? 0 : kr.hi;
    }
    const KeyRange span = visible_keys_of_rows(i0, i0 + nq, p);
    const T* k = at<T>(p.k, b, p.k_batch_stride, hk, p.k_head_stride);
    const T* v = at<T>(p.v, b, p.v_batch_stride, hk, p.v_head_stride);
    const R sl2 = V::set1(p.scale_log2);
    for (int64_t k0 = span.lo; k0 <= span.hi; k0 += bk) {
      const int64_t nk = std::min(bk, span.hi + 1 - k0);
      int64_t ldk, ldv;
      const float* kr = float_rows<V>(k + k0 * p.k_row_stride, p.k_row_stride, nk, D, kbuf, ldk);
      const float* vr = float_rows<V>(v + k0 * p.v_row_stride, p.v_row_stride, nk, D, vbuf, ldv);
      gemm<V>(nk, nqp, Gemm{kr, ldk, 1, qt, nqp, st, nqp, D, false});
      gemm<V>(nk, nqp, Gemm{vr, ldv, 1, dot, nqp, dst, nqp, D, false});
      for (int64_t j = 0; j < nk; ++j)
        for (int64_t c = 0; c < nqp; c += W) {
          const R pv = V::exp2(V::fma(V::load(st + j * nqp + c), sl2, V::load(nl2 + c)));
          V::store(st + j * nqp + c, normalised ? V::div(pv, V::load(ps + c)) : pv);
        }
      for (int64_t c = 0; c < nqp; ++c)  // keys a row may not see (and rows that see none, padding)
        if (c >= nq || lo[c] > k0 || hi[c] < k0 + nk - 1)
          for (int64_t j = 0; j < nk; ++j)
            if (c >= nq || k0 + j < lo[c] || k0 + j > hi[c]) st[j * nqp + c] = dst[j * nqp + c] = 0.f;
      tile(k0, nk, kr, ldk, st, dst);
    }
  }

  // dQ of query rows [i0, i0 + bq) of one head, over every key it sees: dS^T = P^T * (dP^T -
  // delta) * scale from sweep_keys, then dQ += dS . K (A = dS^T read down its columns).
  void dq_task(int64_t bh, int64_t qtile) const {
    const int64_t b = bh / p.heads_q, h = bh % p.heads_q;
    const int64_t i0 = qtile * bq, nq = std::min(bq, Sq - i0), nqp = round_up(nq, W);
    Scratch scratch(nq * D + nqp);
    float* dqa = scratch.get();  // nq x D: dQ accumulator
    float* dl = dqa + nq * D;    // nqp: delta per row, padding 0
    for (int64_t i = 0; i < nq * D; ++i) dqa[i] = 0.f;
    for (int64_t c = 0; c < nqp; ++c) dl[c] = c < nq ? delta[bh * Sq + i0 + c] : 0.f;
    const R sc = V::set1(p.scale);
    sweep_keys(bh, i0, nq, true, [&](int64_t, int64_t nk, const float* kr, int64_t ldk, float* pt, float* dpt) {
      for (int64_t j = 0; j < nk; ++j)
        for (int64_t c = 0; c < nqp; c += W) {
          const R dv = V::sub(V::load(dpt + j * nqp + c), V::load(dl + c));
          V::store(dpt + j * nqp + c, V::mul(V::mul(V::load(pt + j * nqp + c), dv), sc));
        }
      gemm<V>(nq, D, Gemm{dpt, 1, nqp, kr, ldk, dqa, D, nk, true});
    });
    store_rows<V>(dqa, D, nq, D, at<T>(bp.dq, b, bp.dq_batch_stride, h, bp.dq_head_stride) + i0 * bp.dq_row_stride,
                  bp.dq_row_stride);
  }
};

}  // namespace fae::cpu::FAE_CPU_ISA
