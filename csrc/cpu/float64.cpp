// The float64 path: attention for float64 inputs (what torch.autograd.gradcheck runs), a plain
// tiled online-softmax forward and a FlashAttention-2 style backward that accumulate in double.
// Dropout (common/philox.h): kept probabilities times 1 / (1 - p) in the output and dV, dP times
// the same mask (backward.h derives the gradient).
// Memory is O(S): score tiles of kTileQ x kTileK live in per-task buffers, never Sq x Sk.
// The SIMD kernels for float32 / float16 / bfloat16 are in forward.h and backward.h.
#define FAE_CPU_ISA float64  // the namespace of this unit's inline functions (kernels.h)
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/mask.h"
#include "common/online_softmax.h"
#include "common/philox.h"
#include "common/score_mod.h"
#include "common/seqlens.h"
#include "cpu/convert.h"
#include "cpu/isa.h"
#include "cpu/sequences.h"
#include "cpu/thread_pool.h"

namespace fae::cpu::float64 {
namespace {

constexpr int64_t kTileQ = 64;
constexpr int64_t kTileK = 64;

template <typename Acc> Acc scale_of(const FwdParams& p) { return Acc(p.scale); }
template <> double scale_of<double>(const FwdParams& p) { return p.scale_f64; }
template <typename Acc> Acc scale_log2_of(const FwdParams& p) { return Acc(p.scale_log2); }
template <typename Acc> Acc softcap_of(const FwdParams& p) { return Acc(p.softcap); }
template <> double softcap_of<double>(const FwdParams& p) { return p.softcap_f64; }
template <> double scale_log2_of<double>(const FwdParams& p) { return p.scale_f64 * kLog2e; }

// The log2-domain score of a query at ALiBi position pos and key `key` from the scaled score s,
// with softcap and ALiBi (common/score_mod.h); *grad = d(transformed) / ds.
template <typename Acc>
Acc modified_score2(const FwdParams& p, Acc s, Acc slope, int64_t pos, int64_t key, Acc* grad) {
  *grad = Acc(1);
  if (p.softcap > 0.f) {
    s = softcap_score(s, softcap_of<Acc>(p));
    *grad = softcap_grad(s, softcap_of<Acc>(p));
  }
  return (s + alibi_bias(slope, pos, key)) * Acc(kLog2e);
}

// The dropout multiplier of element (b, h, i, j): 1 without dropout, else 0 or 1 / (1 - p).
template <typename Acc>
Acc drop_mult(const FwdParams& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (!has_dropout(p)) return Acc(1);
  return keep(p, b, h, i, j) ? Acc(1) / (Acc(1) - Acc(p.dropout_p)) : Acc(0);
}

// The explicit mask (common/score_mod.h) on the log2-domain score s2 of key `key` of the mask
// row at offset `row`.
template <typename Acc>
Acc masked_score2(const FwdParams& p, Acc s2, int64_t row, int64_t key) {
  return s2 + mask_value<Acc>(p, row, key) * Acc(kLog2e);
}

template <typename Acc>
Acc dot(const Acc* a, const Acc* b, int64_t n) {
  Acc s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <typename Acc>
void axpy(Acc alpha, const Acc* x, Acc* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// Copies rows [r0, r0+n) of one head into a dense Acc buffer of row length d.
template <typename T, typename Acc>
void load_rows(const T* base, int64_t row_stride, int64_t r0, int64_t n, int64_t d, Acc* dst) {
  for (int64_t r = 0; r < n; ++r) {
    const T* src = base + (r0 + r) * row_stride;
    for (int64_t c = 0; c < d; ++c) dst[r * d + c] = load_as<Acc>(src + c);
  }
}

template <typename T, typename Acc>
void store_rows(const Acc* src, int64_t n, int64_t d, T* base, int64_t row_stride, int64_t r0) {
  for (int64_t r = 0; r < n; ++r) {
    T* dst = base + (r0 + r) * row_stride;
    for (int64_t c = 0; c < d; ++c) store_from(dst + c, src[r * d + c]);
  }
}

// Key rows [k0, k0 + n) of sequence b (paged or not) of one kv head into a dense buffer.
template <typename T, typename Acc>
void load_keys(const FwdParams& p, int64_t b, const Seq& s, const T* base, int64_t batch_stride,
               int64_t row_stride, int64_t k0, int64_t n, int64_t d, Acc* dst) {
  for (int64_t j = 0; j < n; ++j)
    load_rows(base + key_offset(p, b, s, k0 + j, batch_stride, row_stride), 0, 0, 1, d, dst + j * d);
}

template <typename T, typename Acc>
void run_forward(const FwdParams& p) {
  const int64_t d = p.head_dim, group = p.heads_q / p.heads_kv;
  const Acc scale = scale_of<Acc>(p), sl2 = scale_log2_of<Acc>(p);
  const bool mods = has_score_mod(p);
  const SeqTiles tiles(p.batch, [&](int64_t b) {
    return p.heads_q * ((sequence(p, b).seqlen_q + kTileQ - 1) / kTileQ);
  });
  auto task = [&](int64_t t) {
    const int64_t b = tiles.seq_of(t), local = t - tiles.first(b);
    const Seq seq = sequence(p, b);
    const FwdParams sp = with_lengths(p, seq);  // the mask of this sequence
    const int64_t q_tiles = (seq.seqlen_q + kTileQ - 1) / kTileQ;
    const int64_t qt = local % q_tiles, h = local / q_tiles, hk = h / group;
    const Acc slope = Acc(alibi_slope(p, b, h));
    const T* q = static_cast<const T*>(p.q) + seq.q_batch * p.q_batch_stride + seq.q_row0 * p.q_row_stride +
                 h * p.q_head_stride;
    const T* k = static_cast<const T*>(p.k) + hk * p.k_head_stride;
    const T* v = static_cast<const T*>(p.v) + hk * p.v_head_stride;
    T* o = static_cast<T*>(p.out) + seq.q_batch * p.o_batch_stride + seq.q_row0 * p.o_row_stride + h * p.o_head_stride;
    Acc* lse = static_cast<Acc*>(p.lse) + seq.q_batch * p.lse_batch_stride + h * p.lse_head_stride + seq.q_row0;

    const int64_t r0 = qt * kTileQ, nr = std::min(kTileQ, seq.seqlen_q - r0);
    std::vector<Acc> qs(nr * d), ks(kTileK * d), vs(kTileK * d), acc(nr * d, Acc(0)), s(kTileK);
    std::vector<Acc> m(nr, neg_inf<Acc>()), l(nr, Acc(0));
    load_rows(q, p.q_row_stride, r0, nr, d, qs.data());
    const KeyRange span = visible_keys_of_rows(r0, r0 + nr, sp);
    for (int64_t k0 = span.lo; k0 <= span.hi; k0 += kTileK) {
      const int64_t nk = std::min(kTileK, span.hi + 1 - k0);
      load_keys(p, b, seq, k, p.k_batch_stride, p.k_row_stride, k0, nk, d, ks.data());
      load_keys(p, b, seq, v, p.v_batch_stride, p.v_row_stride, k0, nk, d, vs.data());
      for (int64_t i = 0; i < nr; ++i) {
        const KeyRange kr = visible_keys(r0 + i, sp);
        const int64_t pos = alibi_position(r0 + i, seq.seqlen_q, seq.seqlen_k);
        const int64_t mrow = has_attn_mask(p) ? mask_row_offset(p, b, h, r0 + i) : 0;
        Acc mx = m[i], g;
        for (int64_t j = 0; j < nk; ++j) {
          const int64_t key = k0 + j;
          const Acc qk = dot(&qs[i * d], &ks[j * d], d);
          s[j] = (key < kr.lo || key > kr.hi) ? neg_inf<Acc>()
                 : mods ? modified_score2(p, qk * scale, slope, pos, key, &g) : qk * sl2;
          if (has_attn_mask(p) && !(key < kr.lo || key > kr.hi)) s[j] = masked_score2(p, s[j], mrow, key);
          if (s[j] > mx) mx = s[j];
        }
        const Acc alpha = rescale_factor(m[i], mx), base = exp_base(mx);
        Acc* oi = &acc[i * d];
        Acc sum = 0;
        for (int64_t c = 0; c < d; ++c) oi[c] *= alpha;
        for (int64_t j = 0; j < nk; ++j) {
          const Acc pj = Acc(std::exp2(s[j] - base));
          sum += pj;
          axpy(pj * drop_mult<Acc>(p, b, h, r0 + i, k0 + j), &vs[j * d], oi, d);
        }
        l[i] = l[i] * alpha + sum;
        m[i] = mx;
      }
    }
    for (int64_t i = 0; i < nr; ++i) {
      const Acc inv = inv_sum(l[i]);
      for (int64_t c = 0; c < d; ++c) acc[i * d + c] *= inv;
      lse[r0 + i] = finish_lse(m[i], l[i]);
    }
    store_rows(acc.data(), nr, d, o, p.o_row_stride, r0);
  };
  parallel_for(tiles.total(), p.num_threads, task);
}

// Backward: one task per (batch, kv head) walks its key tiles in order and owns the dq rows of
// every query head in its group, so the result is race-free and independent of the thread count.
template <typename T, typename Acc>
void run_backward(const BwdParams& bp) {
  const FwdParams& p = bp.fwd;
  const int64_t d = p.head_dim, group = p.heads_q / p.heads_kv;
  const Acc scale = scale_of<Acc>(p), sl2 = scale_log2_of<Acc>(p);
  const bool mods = has_score_mod(p);
  auto task = [&](int64_t t) {
    const int64_t hk = t % p.heads_kv, b = t / p.heads_kv;
    const Seq seq = sequence(p, b);
    const FwdParams sp = with_lengths(p, seq);  // the mask of this sequence
    const int64_t sq = seq.seqlen_q;
    // Row 0 of head h of this sequence in a q-like (qb = q batch) or k-like array.
    auto rows = [&](auto* base, int64_t bs, int64_t rs, int64_t hs, int64_t h, bool q_like) {
      return base + (q_like ? seq.q_batch * bs + seq.q_row0 * rs : seq.kv_batch * bs + seq.k_row0 * rs) + h * hs;
    };
    const T* k = rows(static_cast<const T*>(p.k), p.k_batch_stride, p.k_row_stride, p.k_head_stride, hk, false);
    const T* v = rows(static_cast<const T*>(p.v), p.v_batch_stride, p.v_row_stride, p.v_head_stride, hk, false);
    T* dk = rows(static_cast<T*>(bp.dk), bp.dk_batch_stride, bp.dk_row_stride, bp.dk_head_stride, hk, false);
    T* dv = rows(static_cast<T*>(bp.dv), bp.dv_batch_stride, bp.dv_row_stride, bp.dv_head_stride, hk, false);

    // Per group: q, dout as Acc, delta = rowsum(dout * out), lse in the log2 domain, dq accumulator.
    std::vector<Acc> qs(group * sq * d), dos(group * sq * d), dq(group * sq * d, Acc(0));
    std::vector<Acc> delta(group * sq), lse2(group * sq), orow(d);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = hk * group + g;
      const T* q = rows(static_cast<const T*>(p.q), p.q_batch_stride, p.q_row_stride, p.q_head_stride, h, true);
      const T* o = rows(static_cast<const T*>(p.out), p.o_batch_stride, p.o_row_stride, p.o_head_stride, h, true);
      const T* dout = rows(static_cast<const T*>(bp.dout), bp.do_batch_stride, bp.do_row_stride, bp.do_head_stride, h, true);
      const Acc* lse = rows(static_cast<const Acc*>(p.lse), p.lse_batch_stride, 1, p.lse_head_stride, h, true);
      load_rows(q, p.q_row_stride, 0, sq, d, &qs[g * sq * d]);
      load_rows(dout, bp.do_row_stride, 0, sq, d, &dos[g * sq * d]);
      for (int64_t i = 0; i < sq; ++i) {
        load_rows(o, p.o_row_stride, i, 1, d, orow.data());
        delta[g * sq + i] = dot(orow.data(), &dos[(g * sq + i) * d], d);
        lse2[g * sq + i] = lse2_for_backward(lse[i]);
      }
      if (bp.dlse != nullptr) {  // d lse_i / d s_ij = P_ij, which folds into delta
        const Acc* dlse = rows(static_cast<const Acc*>(bp.dlse), p.lse_batch_stride, 1, p.lse_head_stride, h, true);
        for (int64_t i = 0; i < sq; ++i) delta[g * sq + i] -= dlse[i];
      }
    }
    std::vector<Acc> ks(kTileK * d), vs(kTileK * d), dks(kTileK * d), dvs(kTileK * d);
    for (int64_t k0 = 0; k0 < seq.seqlen_k; k0 += kTileK) {
      const int64_t nk = std::min(kTileK, seq.seqlen_k - k0);
      load_rows(k, p.k_row_stride, k0, nk, d, ks.data());
      load_rows(v, p.v_row_stride, k0, nk, d, vs.data());
      std::fill(dks.begin(), dks.end(), Acc(0));
      std::fill(dvs.begin(), dvs.end(), Acc(0));
      const KeyRange qrows{visible_rows(k0, sp).lo, visible_rows(k0 + nk - 1, sp).hi};
      for (int64_t g = 0; g < group; ++g) {
        const Acc slope = Acc(alibi_slope(p, b, hk * group + g));
        for (int64_t i = qrows.lo; i <= qrows.hi; ++i) {
          const int64_t gi = g * sq + i;
          if (sees_no_key(lse2[gi])) continue;  // the row sees no key: no gradient
          const KeyRange kr = visible_keys(i, sp);
          const int64_t pos = alibi_position(i, sq, seq.seqlen_k);
          const int64_t h = hk * group + g, mrow = has_attn_mask(p) ? mask_row_offset(p, b, h, i) : 0;
          Acc* dm = bp.dmask == nullptr ? nullptr
                    : static_cast<Acc*>(bp.dmask) + b * bp.dmask_batch_stride + h * bp.dmask_head_stride +
                          i * bp.dmask_row_stride;
          const Acc* qi = &qs[gi * d];
          const Acc* doi = &dos[gi * d];
          Acc* dqi = &dq[gi * d];
          for (int64_t j = std::max<int64_t>(0, kr.lo - k0); j < nk && k0 + j <= kr.hi; ++j) {
            const Acc qk = dot(qi, &ks[j * d], d);
            Acc grad = Acc(1);
            Acc s2 = mods ? modified_score2(p, qk * scale, slope, pos, k0 + j, &grad) : qk * sl2;
            if (has_attn_mask(p)) s2 = masked_score2(p, s2, mrow, k0 + j);
            const Acc pij = Acc(std::exp2(s2 - lse2[gi]));
            const Acc mij = drop_mult<Acc>(p, b, hk * group + g, i, k0 + j);
            const Acc ds = pij * (mij * dot(doi, &vs[j * d], d) - delta[gi]);  // d loss / d transformed score
            if (dm) dm[k0 + j] = ds;
            const Acc dsij = ds * grad;
            axpy(pij * mij, doi, &dvs[j * d], d);
            axpy(dsij * scale, qi, &dks[j * d], d);
            axpy(dsij * scale, &ks[j * d], dqi, d);
          }
        }
      }
      store_rows(dks.data(), nk, d, dk, bp.dk_row_stride, k0);
      store_rows(dvs.data(), nk, d, dv, bp.dv_row_stride, k0);
    }
    zero_unused_key_rows(p, seq, dk - seq.k_row0 * bp.dk_row_stride, bp.dk_row_stride, d);
    zero_unused_key_rows(p, seq, dv - seq.k_row0 * bp.dv_row_stride, bp.dv_row_stride, d);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = hk * group + g;
      T* dqh = rows(static_cast<T*>(bp.dq), bp.dq_batch_stride, bp.dq_row_stride, bp.dq_head_stride, h, true);
      store_rows(&dq[g * sq * d], sq, d, dqh, bp.dq_row_stride, 0);
    }
  };
  parallel_for(p.batch * p.heads_kv, p.num_threads, task);
}

}  // namespace

void forward(const FwdParams& p) { run_forward<double, double>(p); }
void backward(const BwdParams& p) { run_backward<double, double>(p); }

}  // namespace fae::cpu::float64
