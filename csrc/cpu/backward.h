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
// Softcap, ALiBi and an explicit mask (common/score_mod.h): S is transformed as in the forward
// before P is taken (modify_scores, mask_scores), and dS picks up the softcap's 1 - tanh^2. The
// gradient of an additive mask is P * (dP - delta), the gradient of the transformed score,
// written by task() (each (head, row, key) once).
// Dropout (common/philox.h): the forward computed O = (P * M) . V, M the keep mask times
// 1 / (1 - p) and P the undropped softmax, so with dO the output's gradient
//   dV = (P * M)^T . dO,  dP = M * (dO . V^T)   (the gradient with respect to the undropped P)
//   dS = P * (dP - delta),  delta_i = sum_j P_ij dP_ij = sum_j (P * M)_ij (dO . V^T)_ij = dO_i . O_i
// The mask is regenerated from (seed, offset, b, h, i, j): dP is multiplied by M where dS is
// taken (probabilities, dq_task's sweep), and P by M after dS for dV, only in calls that use it.
// row_stats takes delta as dO . O for float32 and float64 inputs, so that its sweep needs no mask;
// a 16-bit output is rounded to 8 or 11 bits, and dO . O then errs by that rounding for every dS
// of the row (bfloat16 dK was 1 ulp off the float64 gradient, 4x the naive bfloat16 error), so
// for 16-bit inputs row_stats sums P * M * dP from its own scores as without dropout (kDeltaFromP).
// Variable-length batches: each pass is one parallel_for over the tasks of every sequence
// (sequences.h); a sequence reads its rows through the offsets of common/seqlens.h.
#pragma once
#include <cmath>

#include "common/mask.h"
#include "cpu/amx.h"
#include "cpu/dropout.h"
#include "cpu/gemm.h"
#include "cpu/score_mod.h"
#include "cpu/sequences.h"
#include "cpu/thread_pool.h"
#include "cpu/tiles.h"

namespace fae::cpu::FAE_CPU_ISA {

template <class V, typename T>
struct Backward {
  using R = typename V::R;
  static constexpr int W = V::W;
  static constexpr int64_t kMaxRows = 256;  // upper bound of tile_sizes().bwd_bq
  // bfloat16 on AMX tiles (amx.h): the five products (and every pass's S and dP, which must agree
  // bit for bit) on tiles, P and dS rounded to bfloat16 for theirs; needs whole tile rows.
  static constexpr bool kAmx = std::is_same_v<T, bf16> && AmxOf<V>::value;
  using Amx = typename AmxOf<V>::X;

  const BwdParams& bp;
  const FwdParams& p;
  int64_t D, group, bq, bk, ldp, nchunks;
  ScoreMod<V> sm;
  bool mods;  // softcap, ALiBi or an explicit mask
  // With dropout, delta from the row's own P * M * dP rather than dO . O (see the top).
  static constexpr bool kDeltaFromP = sizeof(T) == 2;
  bool drop;  // dropout
  bool amx;   // kAmx with D a multiple of 32, bk of 32 and bq of 16
  int64_t Sq;  // the longest sequence's queries: the row stride of the per-row arrays below
  SeqTiles qtiles;  // per sequence: heads_q x its query tiles
  float* delta = nullptr;   // (b, hq, row): sum_j P_ij dP_ij - dlse
  float* psum = nullptr;    // (b, hq, row): sum_j exp2(S_ij * scale_log2 - lse2), P's normaliser
  float* lse2 = nullptr;    // (b, hq, row): lse2_for_backward(lse)

  explicit Backward(const BwdParams& prm)
      : bp(prm), p(prm.fwd), D(p.head_dim), group(p.heads_q / p.heads_kv),
        bq(tile_sizes(p.dtype, p.head_dim, kAmx && amx_shape(p.head_dim, 0)).bwd_bq),
        bk(tile_sizes(p.dtype, p.head_dim, kAmx && amx_shape(p.head_dim, 0)).bwd_bk), ldp(round_up(bk, W)), sm(p), mods(has_score_mod(p) || has_attn_mask(p)),
        drop(has_dropout(p)), amx(kAmx && amx_shape(D, bk) && bq % kAmxRows == 0), Sq(p.seqlen_q),
        qtiles(p.batch, [&](int64_t b) { return p.heads_q * ceil_div(sequence(p, b).seqlen_q, bq); }) {
    const int64_t heads = p.batch * p.heads_kv, key_tiles = ceil_div(p.seqlen_k, bk);
    nchunks = heads >= kMinTasks ? 1 : std::max<int64_t>(1, std::min(ceil_div(kMinTasks, heads), key_tiles));
  }

  // Query tile t of the call: sequence b, head h, first row i0.
  struct QTile { int64_t b, h, i0; };
  QTile qtile(int64_t t) const {
    const int64_t b = qtiles.seq_of(t), local = t - qtiles.first(b);
    const int64_t n = ceil_div(sequence(p, b).seqlen_q, bq);
    return {b, local / n, local % n * bq};
  }
  int64_t row_index(int64_t b, int64_t h, int64_t i) const { return (b * p.heads_q + h) * Sq + i; }
  // Lanes of the transposed passes for nq rows: whole vectors, and whole tile rows on tiles.
  int64_t lanes(int64_t nq) const { return round_up(nq, amx ? std::max<int64_t>(W, kAmxRows) : W); }

  // Row i0 of head h of sequence b (s) in q-like and k-like arrays.
  template <typename U, typename Base>
  U* q_rows(Base* base, const Seq& s, int64_t bs, int64_t rs, int64_t hs, int64_t h, int64_t i0) const {
    return static_cast<U*>(base) + s.q_batch * bs + (s.q_row0 + i0) * rs + h * hs;
  }
  template <typename U, typename Base>
  U* k_rows(Base* base, const Seq& s, int64_t bs, int64_t rs, int64_t hs, int64_t hk) const {
    return static_cast<U*>(base) + s.kv_batch * bs + s.k_row0 * rs + hk * hs;
  }

  void run() {
    const int64_t rows = p.batch * p.heads_q * Sq, tiles = qtiles.total();
    Scratch dl(rows), ps(rows), l2(rows);
    delta = dl.get();
    psum = ps.get();
    lse2 = l2.get();
    parallel_for(tiles, p.num_threads, [&](int64_t t) { row_stats(qtile(t)); });
    parallel_for(p.batch * p.heads_kv * nchunks, p.num_threads, [&](int64_t t) { task(t); });
    if (nchunks > 1) parallel_for(tiles, p.num_threads, [&](int64_t t) { dq_task(qtile(t)); });
  }

  // lse2, psum and delta of query rows [i0, i0 + bq) of one head.
  void row_stats(const QTile& qt) {
    const Seq s = sequence(p, qt.b);
    const int64_t b = qt.b, h = qt.h, i0 = qt.i0, nq = std::min(bq, s.seqlen_q - i0);
    const int64_t ls = p.lse_batch_stride, lh = p.lse_head_stride;
    const float* lse = q_rows<const float>(p.lse, s, ls, 1, lh, h, 0);
    const float* dlse = bp.dlse ? q_rows<const float>(bp.dlse, s, ls, 1, lh, h, 0) : nullptr;
    for (int64_t i = i0; i < i0 + nq; ++i) lse2[row_index(b, h, i)] = lse2_for_backward(lse[i]);
    const int64_t nqp = lanes(nq);
    Scratch sums(2 * nqp);
    float* ps = sums.get();  // per row: sum of P (not yet normalised), sum of P * dP
    float* pd = ps + nqp;
    for (int64_t c = 0; c < 2 * nqp; ++c) ps[c] = 0.f;
    sweep_keys(b, h, i0, nq, false, [&](int64_t, int64_t nk, const float*, int64_t, const float* pt, const float* dpt,
                                        const float*) {
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
      const int64_t i = row_index(b, h, i0 + c);
      psum[i] = ps[c];
      if (ps[c] == 0.f)  // the row sees no key: dS = 0 whatever dout and dlse hold
        delta[i] = 0.f;
      else {  // d lse_i / d s_ij = P_ij folds into delta
        const float d = drop && !kDeltaFromP ? out_dot(s, h, i0 + c) : pd[c] / ps[c];
        delta[i] = dlse ? d - dlse[i0 + c] : d;
      }
    }
  }

  // dO_i . O_i of row i of head h of sequence s: with dropout, sum_j P_ij dP_ij (see the top).
  float out_dot(const Seq& s, int64_t h, int64_t i) const {
    const T* o = q_rows<const T>(p.out, s, p.o_batch_stride, p.o_row_stride, p.o_head_stride, h, i);
    const T* d = q_rows<const T>(bp.dout, s, bp.do_batch_stride, bp.do_row_stride, bp.do_head_stride, h, i);
    float acc = 0.f;
    for (int64_t e = 0; e < D; ++e) acc += load_as<float>(o + e) * load_as<float>(d + e);
    return acc;
  }

  void task(int64_t t) {
    const int64_t chunk = t % nchunks, hk = (t / nchunks) % p.heads_kv, b = t / nchunks / p.heads_kv;
    const Seq seq = sequence(p, b);
    const FwdParams sp = with_lengths(p, seq);  // the mask of this sequence
    const int64_t Sqb = seq.seqlen_q, Skb = seq.seqlen_k, key_tiles = ceil_div(Skb, bk);
    const int64_t per = ceil_div(key_tiles, nchunks);
    const int64_t kt0 = chunk * per, kt1 = std::min(key_tiles, kt0 + per);
    const bool with_dq = nchunks == 1;  // else dq_task computes dQ
    const bool direct = std::is_same_v<T, float> && with_dq;

    const int64_t amx_elems = amx ? (ldp + D) * (bq / 2 + kAmxRows) + bq * (ldp / 2 + D) : 0;
    Scratch scratch(2 * D * ldp + 4 * bk * D + 3 * bq * ldp + 2 * bq * D + 4 * ldp + amx_elems);
    float* kt = scratch.get();      // D x ldp: K^T of the tile, padding zero
    float* vt = kt + D * ldp;       // D x ldp: V^T
    float* kbuf = vt + D * ldp;     // bk x D: K tile as dense float rows (16-bit or strided inputs)
    float* vbuf = kbuf + bk * D;    // bk x D
    float* dka = vbuf + bk * D;     // bk x D: dK accumulator
    float* dva = dka + bk * D;      // bk x D: dV accumulator
    float* s = dva + bk * D;        // bq x ldp: S, then P
    float* dp = s + bq * ldp;       // bq x ldp: dP, then dS
    float* qbuf = dp + bq * ldp;    // bq x D: Q rows as float
    float* dobuf = qbuf + bq * D;   // bq x D: dO rows as float
    float* grad = dobuf + bq * D;   // bq x ldp: softcap: 1 - tanh^2 of each score
    float* keys = grad + bq * ldp;  // ldp: ALiBi: key indices as float
    float* mult = keys + ldp;       // ldp: dropout: one row's keep multipliers
    float* mtmp = mult + ldp;       // ldp: explicit mask: one row of mask values
    float* dmrow = mtmp + ldp;      // ldp: the mask's gradient of one row
    float* amx_buf = dmrow + ldp;   // tile path: amx_grads' operands
    const AmxTiles<Amx> tiles_in_use(amx);

    // dQ destination of the group: the output itself, or a float32 accumulator.
    auto dq_head = [&](int64_t h) {
      return q_rows<T>(bp.dq, seq, bp.dq_batch_stride, bp.dq_row_stride, bp.dq_head_stride, h, 0);
    };
    const int64_t acc_elems = direct || !with_dq ? 0 : group * Sqb * D;
    Scratch local(acc_elems);
    float* dqacc = local.get();
    if (direct) {
      for (int64_t g = 0; g < group; ++g) {
        float* dq = reinterpret_cast<float*>(dq_head(hk * group + g));
        for (int64_t i = 0; i < Sqb; ++i)
          for (int64_t d = 0; d < D; ++d) dq[i * bp.dq_row_stride + d] = 0.f;
      }
    } else {
      for (int64_t i = 0; i < acc_elems; ++i) dqacc[i] = 0.f;
    }

    const T* k = k_rows<const T>(p.k, seq, p.k_batch_stride, p.k_row_stride, p.k_head_stride, hk);
    const T* v = k_rows<const T>(p.v, seq, p.v_batch_stride, p.v_row_stride, p.v_head_stride, hk);
    for (int64_t ti = kt0; ti < kt1; ++ti) {
      const int64_t k0 = ti * bk, nk = std::min(bk, Skb - k0);
      int64_t ldk = 0, ldv = 0;
      const float *kr = nullptr, *vr = nullptr;
      if (amx) {  // K^T and V^T as words along D; K as pairs of key rows for dQ (in kbuf)
        if constexpr (kAmx) {
          pack_words_t<V>(k + k0 * p.k_row_stride, p.k_row_stride, nk, ldp, D / 2, kt, ldp);
          pack_words_t<V>(v + k0 * p.v_row_stride, p.v_row_stride, nk, ldp, D / 2, vt, ldp);
          pack_row_pairs<V>(k + k0 * p.k_row_stride, p.k_row_stride, nk, round_up(ceil_div(nk, 2), kAmxRows), D, kbuf);
        }
      } else {
        kr = float_rows<V>(k + k0 * p.k_row_stride, p.k_row_stride, nk, D, kbuf, ldk);
        vr = float_rows<V>(v + k0 * p.v_row_stride, p.v_row_stride, nk, D, vbuf, ldv);
        for (int64_t d = 0; d < D; ++d)
          for (int64_t j = 0; j < ldp; ++j) {
            kt[d * ldp + j] = j < nk ? kr[j * ldk + d] : 0.f;
            vt[d * ldp + j] = j < nk ? vr[j * ldv + d] : 0.f;
          }
      }
      for (int64_t i = 0; i < bk * D; ++i) dka[i] = dva[i] = 0.f;
      for (int64_t j = 0; j < ldp; ++j) keys[j] = float(k0 + j);
      const int64_t rlo = visible_rows(k0, sp).lo, rhi = visible_rows(k0 + nk - 1, sp).hi;
      for (int64_t g = 0; g < group; ++g) {
        const int64_t h = hk * group + g;
        const T* q = q_rows<const T>(p.q, seq, p.q_batch_stride, p.q_row_stride, p.q_head_stride, h, 0);
        const T* dout = q_rows<const T>(bp.dout, seq, bp.do_batch_stride, bp.do_row_stride, bp.do_head_stride, h, 0);
        float* dqh;
        int64_t lddq;
        if (direct) {
          dqh = reinterpret_cast<float*>(dq_head(h));
          lddq = bp.dq_row_stride;
        } else {
          dqh = dqacc + g * Sqb * D;
          lddq = D;
        }
        for (int64_t i0 = rlo; i0 <= rhi; i0 += bq) {
          const int64_t nq = std::min(bq, rhi + 1 - i0);
          const T* qi = q + i0 * p.q_row_stride;
          const T* doi = dout + i0 * bp.do_row_stride;
          int64_t ldq = 0, lddo = 0;
          const float *qr = nullptr, *dor = nullptr;
          if (amx) {
            amx_scores(qi, p.q_row_stride, nq, kt, s, qbuf);
            amx_scores(doi, bp.do_row_stride, nq, vt, dp, dobuf);
          } else {
            qr = float_rows<V>(qi, p.q_row_stride, nq, D, qbuf, ldq);
            dor = float_rows<V>(doi, bp.do_row_stride, nq, D, dobuf, lddo);
            gemm<V>(nq, ldp, score_sum(Gemm{qr, ldq, 1, kt, ldp, s, ldp, D, false}));
            gemm<V>(nq, ldp, score_sum(Gemm{dor, lddo, 1, vt, ldp, dp, ldp, D, false}));
          }
          if (mods) modify_scores(b, h, seq, i0, nq, keys, s, grad);  // into the log2 domain
          if (has_attn_mask(p))
            for (int64_t r = 0; r < nq; ++r)
              mask_scores(mask_row_offset(p, b, h, i0 + r), k0, nk, s + r * ldp, mtmp, bq * p.mask_row_stride);
          probabilities(sp, b, h, i0, nq, k0, nk, s, dp, grad, mult, dmrow);
          if (amx) {
            amx_grads(qi, p.q_row_stride, doi, bp.do_row_stride, nq, nk, s, dp, dva, dka,
                      with_dq ? dqh + i0 * lddq : nullptr, lddq, kbuf, amx_buf);
            continue;
          }
          gemm<V>(nk, D, Gemm{s, 1, ldp, dor, lddo, dva, D, nq, true});
          gemm<V>(nk, D, Gemm{dp, 1, ldp, qr, ldq, dka, D, nq, true});
          if (with_dq) gemm<V>(nq, D, Gemm{dp, ldp, 1, kr, ldk, dqh + i0 * lddq, lddq, nk, true});
        }
      }
      T* dk = k_rows<T>(bp.dk, seq, bp.dk_batch_stride, bp.dk_row_stride, bp.dk_head_stride, hk);
      T* dv = k_rows<T>(bp.dv, seq, bp.dv_batch_stride, bp.dv_row_stride, bp.dv_head_stride, hk);
      store_rows<V>(dka, D, nk, D, dk + k0 * bp.dk_row_stride, bp.dk_row_stride);
      store_rows<V>(dva, D, nk, D, dv + k0 * bp.dv_row_stride, bp.dv_row_stride);
    }
    if (!direct && with_dq)
      for (int64_t g = 0; g < group; ++g)
        store_rows<V>(dqacc + g * Sqb * D, D, Sqb, D, dq_head(hk * group + g), bp.dq_row_stride);
    if (chunk == nchunks - 1) {
      zero_unused_key_rows(p, seq, static_cast<T*>(bp.dk) + seq.kv_batch * bp.dk_batch_stride + hk * bp.dk_head_stride,
                           bp.dk_row_stride, D);
      zero_unused_key_rows(p, seq, static_cast<T*>(bp.dv) + seq.kv_batch * bp.dv_batch_stride + hk * bp.dv_head_stride,
                           bp.dv_row_stride, D);
    }
  }

  // Tile path: S = Q . K^T (or dP = dO . V^T) of nq rows x (row stride xs), with kt the keys'
  // words transposed (pack_words_t), into s (nq rounded up to tile rows x ldp).
  void amx_scores(const T* x, int64_t xs, int64_t nq, const float* kt, float* s, float* buf) const {
    if constexpr (kAmx) {
      int64_t lda;
      const char* a = tile_rows(x, xs, nq, D, buf, lda);
      amx_gemm<Amx>(round_up(nq, kAmxRows), ldp, AmxGemm{a, lda, kt, ldp, s, ldp, D / 2, false});
    }
  }

  // Tile path: dV += P^T . dO and dK += dS^T . Q (P and dS as pairs of query rows, transposed;
  // dO and Q as pairs of rows), and when dq is set dQ += dS . K (dS rows rounded to bfloat16, kp: K
  // as pairs of key rows), summed into dq's nq rows (row stride lddq) from a buffer of tile rows.
  void amx_grads(const T* q, int64_t qs, const T* dout, int64_t ds, int64_t nq, int64_t nk, const float* s,
                 const float* dp, float* dva, float* dka, float* dq, int64_t lddq, const float* kp, float* buf) const {
    if constexpr (kAmx) {
      const int64_t nqh = round_up(ceil_div(nq, 2), kAmxRows), nq16 = round_up(nq, kAmxRows);
      const int64_t nk16 = round_up(nk, kAmxRows), nkh = round_up(ceil_div(nk, 2), kAmxRows);
      float* pa = buf;             // ldp x nqh: P^T or dS^T, pairs of query rows
      float* pb = pa + ldp * nqh;  // nqh x D: dO or Q, pairs of rows
      auto product = [&](const float* y, const T* x, int64_t xs, float* c) {
        pack_pairs_t<V>(y, ldp, nq, nqh, ldp, pa, nqh);
        pack_row_pairs<V>(x, xs, nq, nqh, D, pb);
        amx_gemm<Amx>(nk16, D, AmxGemm{reinterpret_cast<const char*>(pa), nqh * 4, pb, D, c, D, nqh, true});
      };
      product(s, dout, ds, dva);
      product(dp, q, qs, dka);
      if (dq == nullptr) return;
      float* dsr = pb + nqh * D;            // nq16 x ldp / 2: dS rows as bfloat16
      float* dqb = dsr + nq16 * (ldp / 2);  // nq16 x D: this tile's dQ
      for (int64_t r = 0; r < nq16; ++r) {  // keys past nk are zero: dS there is any number, even inf
        bf16* row = reinterpret_cast<bf16*>(dsr + r * (ldp / 2));
        for (int64_t j = 0; j < ldp; j += W) {
          const int n = int(std::clamp<int64_t>(nk - j, 0, W));
          V::store_cvt(row + j, r < nq && n > 0 ? V::loadn(dp + r * ldp + j, n) : V::zero(), W);
        }
      }
      amx_gemm<Amx>(nq16, D, AmxGemm{reinterpret_cast<const char*>(dsr), (ldp / 2) * 4, kp, D, dqb, D, nkh, false});
      for (int64_t r = 0; r < nq; ++r)
        for (int64_t d = 0; d < D; d += W)
          V::store(dq + r * lddq + d, V::add(V::load(dq + r * lddq + d), V::load(dqb + r * D + d)));
    }
  }

  // Softcap and ALiBi of the scores of rows i0 .. i0 + nq - 1 of head h (sequence b, seq) with the
  // keys `keys` (lanes are keys): s becomes the log2-domain transformed score, grad 1 - tanh^2.
  void modify_scores(int64_t b, int64_t h, const Seq& seq, int64_t i0, int64_t nq, const float* keys, float* s,
                     float* grad) const {
    const R sl2 = V::set1(p.scale_log2), sv = V::set1(-alibi_slope(p, b, h) * float(kLog2e));
    for (int64_t r = 0; r < nq; ++r) {
      const R pv = V::set1(float(alibi_position(i0 + r, seq.seqlen_q, seq.seqlen_k)));
      for (int64_t j = 0; j < ldp; j += W) {
        R x = V::mul(V::load(s + r * ldp + j), sl2), g;
        if (sm.cap2 > 0.f) {
          x = sm.softcap(x, &g);
          V::store(grad + r * ldp + j, g);
        }
        if (sm.alibi) x = sm.bias(x, sv, pv, V::load(keys + j));
        V::store(s + r * ldp + j, x);
      }
    }
  }

  // The explicit mask on the log2-domain scores x[0 .. nk) of keys k0 .. k0 + nk - 1 of the mask row
  // at offset `row` (t: nk rounded up to W floats of scratch): + value * log2(e), as the forward's
  // apply_mask (mask_scores_t: the same, transposed). A mask with contiguous keys is read as
  // vectors (booleans through V::bool_bias), the values `ahead` elements on (the next query
  // block's row) asked for in advance (prefetch_mask); others are gathered into t first.
  void mask_scores(int64_t row, int64_t k0, int64_t nk, float* x, float* t, int64_t ahead) const {
    const R l2e = V::set1(float(kLog2e));
    if (p.mask_bool && p.mask_col_stride == 1) {
      const uint8_t* m = static_cast<const uint8_t*>(p.attn_mask) + row + k0;
      for (int64_t j = 0; j < nk; j += W) {
        if (ahead != 0 && j % kLineBytes == 0) prefetch_mask(m + j + ahead);
        V::store(x + j, V::fma(V::bool_bias(m + j, int(std::min<int64_t>(W, nk - j))), l2e, V::load(x + j)));
      }
      return;
    }
    if (!p.mask_bool && p.mask_col_stride == 1) {
      const float* m = static_cast<const float*>(p.attn_mask) + row + k0;
      for (int64_t j = 0; j < nk; j += W) {
        if (ahead != 0 && j % (kLineBytes / 4) == 0) prefetch_mask(m + j + ahead);
        V::store(x + j, V::fma(j + W <= nk ? V::load(m + j) : V::loadn(m + j, int(nk - j)), l2e, V::load(x + j)));
      }
      return;
    }
    mask_row(p, row, k0, nk, t);
    for (int64_t j = nk; j < round_up(nk, W); ++j) t[j] = 0.f;
    for (int64_t j = 0; j < nk; j += W) V::store(x + j, V::fma(V::load(t + j), l2e, V::load(x + j)));
  }

  // In place: s becomes P, dp becomes dS * scale; entries a row may not see become 0. Row i of
  // head h of sequence b has its statistics at index row_index(b, h, i). With softcap, ALiBi or a
  // mask, s holds the transformed log2-domain scores (modify_scores) and dS is multiplied by grad
  // (softcap). With dropout dp is multiplied by the row's keep multipliers (mult, ldp) before dS,
  // and s (then P * M, for dV) after. dmrow: scratch for the additive mask's gradient
  // P * (dP - delta), written to bp.dmask for the keys the row sees.
  void probabilities(const FwdParams& sp, int64_t b, int64_t h, int64_t i0, int64_t nq, int64_t k0, int64_t nk,
                     float* s, float* dp, const float* grad, float* mult, float* dmrow) const {
    const R sc = V::set1(p.scale), sl2 = V::set1(mods ? 1.f : p.scale_log2);
    const int64_t r0 = row_index(b, h, 0);
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t row = i0 + r;
      float* sr = s + r * ldp;
      float* dr = dp + r * ldp;
      const float l2 = lse2[r0 + row];
      const KeyRange kr = visible_keys(row, sp);
      if (sees_no_key(l2) || kr.lo > k0 + nk - 1 || kr.hi < k0) {  // sees none of these keys
        for (int64_t j = 0; j < nk; ++j) sr[j] = dr[j] = 0.f;
        continue;
      }
      const R lv = V::set1(-l2), nv = V::set1(psum[r0 + row]), dv = V::set1(delta[r0 + row]);
      if (drop) {
        Dropout<V>(p).row(b, h, row, k0, ldp, mult);
        for (int64_t j = 0; j < ldp; j += W) {
          const R pv = V::div(V::exp2(V::fma(V::load(sr + j), sl2, lv)), nv), mv = V::load(mult + j);
          const R ds = V::mul(pv, V::sub(V::mul(V::load(dr + j), mv), dv));
          V::store(sr + j, V::mul(pv, mv));
          V::store(dr + j, V::mul(ds, sc));
          if (bp.dmask) V::store(dmrow + j, ds);
        }
      }
      for (int64_t j = 0; j < ldp && !drop; j += W) {
        const R pv = V::div(V::exp2(V::fma(V::load(sr + j), sl2, lv)), nv);
        const R ds = V::mul(pv, V::sub(V::load(dr + j), dv));
        V::store(sr + j, pv);
        V::store(dr + j, V::mul(ds, sc));
        if (bp.dmask) V::store(dmrow + j, ds);
      }
      if (sm.cap2 > 0.f)
        for (int64_t j = 0; j < ldp; j += W) V::store(dr + j, V::mul(V::load(dr + j), V::load(grad + r * ldp + j)));
      const int64_t j0 = std::max<int64_t>(0, kr.lo - k0), j1 = std::min(nk, kr.hi + 1 - k0);
      for (int64_t j = 0; j < j0; ++j) sr[j] = dr[j] = 0.f;
      for (int64_t j = std::max<int64_t>(0, j1); j < nk; ++j) sr[j] = dr[j] = 0.f;
      if (bp.dmask) {
        float* dm = static_cast<float*>(bp.dmask) + b * bp.dmask_batch_stride + h * bp.dmask_head_stride +
                    row * bp.dmask_row_stride + k0;
        for (int64_t j = j0; j < j1; ++j) dm[j] = dmrow[j];
      }
    }
  }

  // Walks the keys that query rows [i0, i0 + nq) of head h of sequence b see, transposed like
  // the forward (lanes are query rows): per key tile S^T = K.Q^T, dP^T = V.dO^T and P^T =
  // exp2(S^T * scale_log2 - lse2), divided by psum when `normalised`; entries a row may not see
  // are 0 in both (every entry of a row that sees no key). Calls tile(k0, nk, kr, ldk, pt, dpt, gt):
  // K rows as float, P^T and dP^T as nk x nqp (lane c < nq is row i0 + c), and with softcap its
  // 1 - tanh^2 gt (else null). Softcap and ALiBi transform S^T first, as modify_scores does S.
  // With dropout, dP^T is multiplied by the keep mask (dP of the undropped P) when `normalised`
  // (dq_task) or for 16-bit inputs (row_stats: kDeltaFromP).
  template <class Tile>
  void sweep_keys(int64_t b, int64_t h, int64_t i0, int64_t nq, bool normalised, Tile&& tile) const {
    const Seq seq = sequence(p, b);
    const FwdParams sp = with_lengths(p, seq);
    const int64_t hk = h / group, nqp = lanes(nq), r0 = row_index(b, h, i0);
    Scratch scratch(2 * D * nqp + 3 * bk * nqp + 2 * bk * D + 3 * nqp + W * bk);
    const AmxTiles<Amx> tiles_in_use(amx);
    float* qt = scratch.get();      // D x nqp: Q^T, padding zero
    float* dot = qt + D * nqp;      // D x nqp: dO^T
    float* st = dot + D * nqp;      // bk x nqp: S^T, then P^T
    float* dst = st + bk * nqp;     // bk x nqp: dP^T
    float* kbuf = dst + bk * nqp;   // bk x D: K tile as dense float rows (16-bit or strided inputs)
    float* vbuf = kbuf + bk * D;    // bk x D
    float* nl2 = vbuf + bk * D;     // nqp: -lse2 per row, padding 0
    float* ps = nl2 + nqp;          // nqp: psum per row (normalised) or 1
    float* pos = ps + nqp;          // nqp: ALiBi position per row
    float* gt = pos + nqp;          // bk x nqp: softcap: 1 - tanh^2
    float* mt = gt + bk * nqp;      // W x bk: explicit mask: W rows' mask values of one key tile
    int64_t lo[kMaxRows], hi[kMaxRows], mrow[kMaxRows];  // mrow: each row's mask row (offset)
    uint32_t rows[kMaxRows], heads[kMaxRows];  // dropout: each lane's row and head
    for (int64_t c = 0; c < nqp && drop; ++c) {
      rows[c] = uint32_t(i0 + c);
      heads[c] = uint32_t(h);
    }

    const T* q = q_rows<const T>(p.q, seq, p.q_batch_stride, p.q_row_stride, p.q_head_stride, h, i0);
    const T* dout = q_rows<const T>(bp.dout, seq, bp.do_batch_stride, bp.do_row_stride, bp.do_head_stride, h, i0);
    if (amx) {  // tile path: Q^T and dO^T as words along D
      if constexpr (kAmx) {
        pack_words_t<V>(q, p.q_row_stride, nq, nqp, D / 2, qt, nqp);
        pack_words_t<V>(dout, bp.do_row_stride, nq, nqp, D / 2, dot, nqp);
      }
    } else {
      for (int64_t i = 0; i < D * nqp; ++i) qt[i] = dot[i] = 0.f;
    }
    for (int64_t c = 0; c < nqp; ++c) {
      nl2[c] = c < nq ? -lse2[r0 + c] : 0.f;
      ps[c] = c < nq && normalised ? psum[r0 + c] : 1.f;
      pos[c] = float(alibi_position(i0 + c, seq.seqlen_q, seq.seqlen_k));
      if (c < nq && has_attn_mask(p)) mrow[c] = mask_row_offset(p, b, h, i0 + c);
    }
    const R nslope = V::set1(-alibi_slope(p, b, h) * float(kLog2e));
    for (int64_t c = 0; c < nq; ++c) {
      for (int64_t d = 0; d < D && !amx; ++d) {
        qt[d * nqp + c] = load_as<float>(q + c * p.q_row_stride + d);
        dot[d * nqp + c] = load_as<float>(dout + c * bp.do_row_stride + d);
      }
      const KeyRange kr = visible_keys(i0 + c, sp);
      const bool none = sees_no_key(-nl2[c]);  // as probabilities(): the row sees no key
      lo[c] = none ? 1 : kr.lo;
      hi[c] = none ? 0 : kr.hi;
    }
    const KeyRange span = visible_keys_of_rows(i0, i0 + nq, sp);
    const T* k = k_rows<const T>(p.k, seq, p.k_batch_stride, p.k_row_stride, p.k_head_stride, hk);
    const T* v = k_rows<const T>(p.v, seq, p.v_batch_stride, p.v_row_stride, p.v_head_stride, hk);
    const R sl2 = V::set1(mods ? 1.f : p.scale_log2);
    for (int64_t k0 = span.lo; k0 <= span.hi; k0 += bk) {
      const int64_t nk = std::min(bk, span.hi + 1 - k0);
      int64_t ldk = 0, ldv = 0;
      const float* kr = nullptr;
      if (amx) {  // S^T and dP^T on tiles; kr: K as pairs of key rows (amx dq_task)
        if constexpr (kAmx) {
          const T* kk = k + k0 * p.k_row_stride;
          const T* vv = v + k0 * p.v_row_stride;
          const int64_t nk16 = round_up(nk, kAmxRows);
          const char* a = tile_rows(kk, p.k_row_stride, nk, D, kbuf, ldk);
          amx_gemm<Amx>(nk16, nqp, AmxGemm{a, ldk, qt, nqp, st, nqp, D / 2, false});
          a = tile_rows(vv, p.v_row_stride, nk, D, vbuf, ldv);
          amx_gemm<Amx>(nk16, nqp, AmxGemm{a, ldv, dot, nqp, dst, nqp, D / 2, false});
          if (normalised) pack_row_pairs<V>(kk, p.k_row_stride, nk, round_up(ceil_div(nk, 2), kAmxRows), D, kbuf);
          kr = kbuf;
          ldk = D;
        }
      } else {
        const float* vr = float_rows<V>(v + k0 * p.v_row_stride, p.v_row_stride, nk, D, vbuf, ldv);
        kr = float_rows<V>(k + k0 * p.k_row_stride, p.k_row_stride, nk, D, kbuf, ldk);
        gemm<V>(nk, nqp, score_sum(Gemm{kr, ldk, 1, qt, nqp, st, nqp, D, false}));
        gemm<V>(nk, nqp, score_sum(Gemm{vr, ldv, 1, dot, nqp, dst, nqp, D, false}));
      }
      if (mods)
        for (int64_t j = 0; j < nk; ++j)
          for (int64_t c = 0; c < nqp; c += W) {
            R x = V::mul(V::load(st + j * nqp + c), V::set1(p.scale_log2)), g;
            if (sm.cap2 > 0.f) {
              x = sm.softcap(x, &g);
              V::store(gt + j * nqp + c, g);
            }
            if (sm.alibi) x = sm.bias(x, nslope, V::load(pos + c), V::set1(float(k0 + j)));
            V::store(st + j * nqp + c, x);
          }
      if (has_attn_mask(p)) mask_scores_t(mrow, nq, k0, nk, st, mt);
      for (int64_t j = 0; j < nk; ++j)
        for (int64_t c = 0; c < nqp; c += W) {
          const R pv = V::exp2(V::fma(V::load(st + j * nqp + c), sl2, V::load(nl2 + c)));
          V::store(st + j * nqp + c, normalised ? V::div(pv, V::load(ps + c)) : pv);
        }
      for (int64_t c = 0; c < nqp; ++c)  // keys a row may not see (and rows that see none, padding)
        if (c >= nq || lo[c] > k0 || hi[c] < k0 + nk - 1)
          for (int64_t j = 0; j < nk; ++j)
            if (c >= nq || k0 + j < lo[c] || k0 + j > hi[c]) st[j * nqp + c] = dst[j * nqp + c] = 0.f;
      for (int64_t c = 0; c < nqp && drop && (normalised || kDeltaFromP); c += W)  // dP^T of the undropped P^T
        Dropout<V>(p).columns(b, rows + c, heads + c, k0, nk, [&](int64_t j, R m) {
          V::store(dst + j * nqp + c, V::mul(V::load(dst + j * nqp + c), m));
        });
      tile(k0, nk, kr, ldk, st, dst, sm.cap2 > 0.f ? gt : nullptr);
    }
  }

  // mask_scores on S^T (lanes are rows, nqp = lanes(nq); row c reads the mask row at
  // offset mrow[c]; t: W x bk floats of scratch). A mask broadcast over rows (key padding) adds
  // one vector per key; others read W rows along the keys and transpose them (add_mask_t).
  void mask_scores_t(const int64_t* mrow, int64_t nq, int64_t k0, int64_t nk, float* st, float* t) const {
    const int64_t nqp = lanes(nq);
    bool shared = true;
    for (int64_t c = 1; c < nq; ++c) shared &= mrow[c] == mrow[0];
    if (!shared) {
      for (int64_t c = 0; c < nqp; c += W)  // these rows read the next key tile next: bk values on
        add_mask_t<V>(p, mrow + c, int(std::min<int64_t>(W, nq - c)), k0, nk, st + c, nqp, t, bk);
      return;
    }
    const R l2e = V::set1(float(kLog2e));
    for (int64_t j = 0; j < nk; ++j) {
      const R mv = V::set1(mask_value<float>(p, mrow[0], k0 + j));
      for (int64_t c = 0; c < nqp; c += W) V::store(st + j * nqp + c, V::fma(mv, l2e, V::load(st + j * nqp + c)));
    }
  }

  // dQ of query rows [i0, i0 + bq) of one head, over every key it sees: dS^T = P^T * (dP^T -
  // delta) * scale from sweep_keys, then dQ += dS . K (A = dS^T read down its columns).
  void dq_task(const QTile& qtl) const {
    const Seq seq = sequence(p, qtl.b);
    const int64_t i0 = qtl.i0, nq = std::min(bq, seq.seqlen_q - i0), nqp = lanes(nq);
    const int64_t r0 = row_index(qtl.b, qtl.h, i0);
    Scratch scratch(nqp * D + nqp + (amx ? nqp * bk / 2 : 0));
    float* dqa = scratch.get();  // nqp x D: dQ accumulator
    float* dl = dqa + nqp * D;   // nqp: delta per row, padding 0
    float* abuf = dl + nqp;      // tile path: dS as pairs of keys, nqp x (bk / 2)
    for (int64_t i = 0; i < nqp * D; ++i) dqa[i] = 0.f;
    for (int64_t c = 0; c < nqp; ++c) dl[c] = c < nq ? delta[r0 + c] : 0.f;
    const R sc = V::set1(p.scale);
    sweep_keys(qtl.b, qtl.h, i0, nq, true, [&](int64_t, int64_t nk, const float* kr, int64_t ldk, float* pt, float* dpt,
                                               const float* gt) {
      for (int64_t j = 0; j < nk; ++j)
        for (int64_t c = 0; c < nqp; c += W) {
          const R dv = V::sub(V::load(dpt + j * nqp + c), V::load(dl + c));
          V::store(dpt + j * nqp + c, V::mul(V::mul(V::load(pt + j * nqp + c), dv), sc));
        }
      if (gt)
        for (int64_t i = 0; i < nk * nqp; i += W) V::store(dpt + i, V::mul(V::load(dpt + i), V::load(gt + i)));
      if (amx) {
        if constexpr (kAmx) {
          const int64_t nkh = round_up(ceil_div(nk, 2), kAmxRows);
          pack_pairs_t<V>(dpt, nqp, nk, nkh, nqp, abuf, nkh);
          amx_gemm<Amx>(nqp, D, AmxGemm{reinterpret_cast<const char*>(abuf), nkh * 4, kr, D, dqa, D, nkh, true});
        }
      } else {
        gemm<V>(nq, D, Gemm{dpt, 1, nqp, kr, ldk, dqa, D, nk, true});
      }
    });
    store_rows<V>(dqa, D, nq, D, q_rows<T>(bp.dq, seq, bp.dq_batch_stride, bp.dq_row_stride, bp.dq_head_stride, qtl.h, i0),
                  bp.dq_row_stride);
  }
};

}  // namespace fae::cpu::FAE_CPU_ISA
