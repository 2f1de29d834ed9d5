// Forward kernel (per-ISA source, see vec.h). Work is split into tiles of query "columns": one
// query head x bq rows, or, for short queries (decoding), several heads of one GQA group x all
// rows, so that the group shares each K/V tile. Everything is computed transposed, keys x
// columns, so that the softmax runs along vector lanes without horizontal reductions:
//   S^T (bk x cols)  = K_tile . Q^T        A = K rows (no packing), B = Q^T * scale_log2, packed
//                                          once per task (scores come out in the log2 domain)
//   online softmax in the log2 domain, per column (fae::exp_base / rescale_factor / finish_lse)
//   O^T (D x cols)  += V_tile^T . P^T      A = V read down its columns, B = P^T as computed
// Only Q^T, the score tile and O^T live in task scratch (a few tens of KB, L1/L2 resident).
// Variable-length batches and KV caches: every sequence has its own tiles (one parallel_for over
// all of them, sequences.h) and reads its rows through the offsets of common/seqlens.h; a key
// tile never crosses a page of a paged cache, so pages are read in place.
// With too few tiles for the threads (decoding), or num_splits > 1, the key range of each tile is
// split and the partial results are merged by their logsumexp (split-KV). Narrow tiles
// (decoding) keep Q and O as rows (column-major products along D, see kNarrowCols).
// bfloat16 with a dot-product instruction (V::kBf16Dot): both products run on bfloat16 pairs
// (gemm<V, true>): K rows and Q^T hold pairs along D, V and P^T pairs along the keys, and P is
// rounded to bfloat16 for P.V as on GPUs (its row sums stay float32). Scores are scaled after.
// Softcap, ALiBi and an explicit attention mask (common/score_mod.h) transform each score tile
// before the band mask, only in calls that use them (modify_scores, apply_mask). Dropout
// (common/philox.h) multiplies P by the keep mask (0 or 1 / (1 - p)) after the row sums are
// taken, so l and lse are those of the undropped softmax and O = (P * mask) . V / l, only in
// calls that use it (apply_dropout).
#pragma once
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/mask.h"
#include "cpu/amx.h"
#include "cpu/dropout.h"
#include "cpu/gemm.h"
#include "cpu/score_mod.h"
#include "cpu/sequences.h"
#include "cpu/thread_pool.h"
#include "cpu/tiles.h"

namespace fae::cpu::FAE_CPU_ISA {

constexpr int64_t kMaxCols = 256;   // upper bound of tile_sizes().fwd_bq
// Tiles of at most this many columns (decoding: a few heads x a few rows) compute along D
// instead: each K / V element is loaded once as part of a vector, not once per broadcast.
// Measured: decode Hq 32 / Hkv 8, Sk 32768, D 128, 1 thread: 2.5 GB/s with the GEMM path.
constexpr int kNarrowCols = 8;

// Column panels of the tile buffers Q^T, S^T / P^T and O^T: element (r, c) of a buffer of `rows`
// rows sits at (c / pw) * rows * pw + r * pw + c % pw, with pw the micro-kernel's width
// (V::NV * W), so that each product streams one contiguous panel. One panel (plain rows) when
// ncolp <= pw, and for narrow tiles.
struct Panels {
  int64_t pw, ncolp, ncola;  // panel width, columns (padded to W), columns allocated
  int64_t col(int64_t rows, int64_t c) const { return (c / pw) * rows * pw + c % pw; }  // row 0; rows step pw
  int64_t at(int64_t rows, int64_t r, int64_t c) const { return col(rows, c) + r * pw; }
  int64_t stride(int64_t rows) const { return pw < ncolp ? rows * pw : 0; }  // Gemm::sbp / scp
};

template <class V, typename T>
struct Forward {
  using R = typename V::R;
  static constexpr int W = V::W;
  static constexpr bool kPairs = std::is_same_v<T, bf16> && V::kBf16Dot;
  // The pair path's two products on AMX tiles (amx.h) where the vector type has them; their
  // operands are padded to 16 rows and columns (columns of wide tiles: multiples of 16).
  static constexpr bool kAmx = kPairs && AmxOf<V>::value;
  using Amx = typename AmxOf<V>::X;

  const FwdParams& p;
  int64_t D, group, bq, bk, rpt, hpt, head_tiles, tiles, nsplit;
  float sl2;
  bool mods;  // softcap, ALiBi or an explicit mask
  bool drop;  // dropout
  SeqTiles seq_tiles;
  Buffer<int64_t> order, starts;  // tile ids task by task: task t walks order[starts[t] .. starts[t + 1])
  int64_t ntasks = 0;
  float* part_o = nullptr;    // nsplit > 1: [tile][split][col][D], normalised partial outputs
  float* part_lse = nullptr;  // [tile][split][col], log2-domain partial logsumexp

  // Tiles hold rpt rows of hpt heads: short queries (decoding; seqlen_q is the longest
  // sequence's) share a tile between the heads of a GQA group.
  explicit Forward(const FwdParams& prm)
      : p(prm), D(prm.head_dim), group(prm.heads_q / prm.heads_kv), bq(tile_sizes(prm.dtype, prm.head_dim).fwd_bq),
        bk(tile_sizes(prm.dtype, prm.head_dim).fwd_bk), rpt(prm.seqlen_q * 2 <= bq ? std::max<int64_t>(prm.seqlen_q, 1) : bq),
        hpt(rpt < bq ? std::min(group, bq / rpt) : 1), head_tiles(ceil_div(group, hpt)), sl2(prm.scale_log2),
        mods(has_score_mod(prm) || has_attn_mask(prm)), drop(has_dropout(prm)), seq_tiles(prm.batch, [&](int64_t b) {
          return prm.heads_kv * head_tiles * ceil_div(sequence(prm, b).seqlen_q, rpt);
        }),
        order(seq_tiles.total()), starts(seq_tiles.total() + 1) {
    tiles = seq_tiles.total();
    const int64_t nt = lock_heads() == 1 ? tiles : tiles / p.heads_kv * ceil_div(p.heads_kv, lock_heads());
    nsplit = p.num_splits;
    if (nsplit <= 0)  // by shape only (results do not depend on the thread count), >= 4 key tiles each
      nsplit = nt >= kMinTasks || nt == 0
                   ? 1 : std::max<int64_t>(1, std::min(ceil_div(kMinTasks, nt), p.seqlen_k / (4 * bk)));
    nsplit = std::min(nsplit, std::max<int64_t>(1, ceil_div(p.seqlen_k, 16)));  // splits hold 16-key groups
    plan_tasks();
  }

  struct TileId { int64_t b, hk, h0, nh, r0, nr; Seq s; };
  TileId tile_id(int64_t tile) const {
    const int64_t b = seq_tiles.seq_of(tile), local = tile - seq_tiles.first(b);
    const Seq s = sequence(p, b);
    const int64_t row_tiles = ceil_div(s.seqlen_q, rpt);
    const int64_t rt = local % row_tiles, ht = (local / row_tiles) % head_tiles, hk = local / row_tiles / head_tiles;
    const int64_t r0 = rt * rpt, h0 = hk * group + ht * hpt;
    return {b, hk, h0, std::min(hpt, group - ht * hpt), r0, std::min(rpt, s.seqlen_q - r0), s};
  }

  // Tasks: tiles that walk their keys in lockstep, key tile by key tile (walk).
  // - Decoding with several kv heads (every tile narrow): the tiles of one (sequence, head tile,
  //   row tile) and up to kLockHeads kv heads, so that the K and V rows of one key position,
  //   adjacent in memory across heads, are read close in time. One head at a time read each row
  //   from its own page (a head stride of 2-4 KB at D = 128): 3.3 GB/s against 9 GB/s with
  //   head-major K / V (Xeon of bench/README.md, 1 thread, Sk 32768).
  // - Otherwise, without splits: up to kRowGroup consecutive row tiles of one (sequence, kv head,
  //   head tile) of the same shape, which share each key tile's K rows and packed V (the packing
  //   of V^T took about 30% of the bfloat16 forward on AMX tiles, one tile at a time); fewer when
  //   there would be fewer than kMinTasks tasks. Tiles' key ranges differ (causal, windows): a
  //   tile takes part in the key tiles that meet its range.
  // By shape only: the results do not depend on the thread count.
  static constexpr int64_t kLockHeads = 16, kRowGroup = 4;
  int64_t lock_heads() const { return rpt * hpt <= kNarrowCols ? std::min(p.heads_kv, kLockHeads) : 1; }

  void plan_tasks() {
    int64_t* o = order.get();
    int64_t* st = starts.get();
    int64_t n = 0;
    st[0] = 0;
    if (lock_heads() > 1) {
      const int64_t lh = lock_heads();
      for (int64_t b = 0; b < p.batch; ++b) {
        const int64_t per = (seq_tiles.first(b + 1) - seq_tiles.first(b)) / p.heads_kv;  // tiles per kv head
        for (int64_t local = 0; local < per; ++local)
          for (int64_t h0 = 0; h0 < p.heads_kv; h0 += lh) {
            for (int64_t hk = h0; hk < std::min(p.heads_kv, h0 + lh); ++hk) o[n++] = seq_tiles.first(b) + hk * per + local;
            st[++ntasks] = n;
          }
      }
      return;
    }
    const int64_t g = nsplit == 1 ? std::clamp<int64_t>(tiles / kMinTasks, 1, kRowGroup) : 1;
    TileId prev{};
    for (int64_t t = 0; t < tiles; ++t) {
      const TileId id = tile_id(t);
      const bool join = t > 0 && n - st[ntasks] < g && id.b == prev.b && id.hk == prev.hk && id.h0 == prev.h0 &&
                        (id.nh * id.nr <= kNarrowCols) == (prev.nh * prev.nr <= kNarrowCols);
      if (t > 0 && !join) st[++ntasks] = n;
      o[n++] = t;
      prev = id;
    }
    if (tiles > 0) st[++ntasks] = n;
  }

  void run() {
    const auto task = [&](int64_t t, int64_t split) {
      walk(order.get() + starts.get()[t], starts.get()[t + 1] - starts.get()[t], split);
    };
    if (nsplit == 1) {
      parallel_for(ntasks, p.num_threads, [&](int64_t t) { task(t, 0); });
      return;
    }
    Scratch po(tiles * nsplit * bq * D), pl(tiles * nsplit * bq);
    part_o = po.get();
    part_lse = pl.get();
    parallel_for(ntasks * nsplit, p.num_threads, [&](int64_t t) { task(t / nsplit, t % nsplit); });
    parallel_for(tiles, p.num_threads, [&](int64_t t) { merge(t); });
  }

  // The state of one (tile, split) across the key tiles it walks (begin, key_tile, end). Plain
  // data: its buffers lie in the task's scratch.
  struct Walk {
    TileId id;
    int64_t ncol, ka, kb;
    bool narrow, pairs, amx, raw;
    Panels pn;
    float *qt, *ot, *st, *m, *l, *mx, *alpha, *base, *mt, *mtile;
    int64_t lo[kMaxCols], hi[kMaxCols];
    float pos[kMaxCols], nslope[kMaxCols];  // ALiBi: each column's query position and -slope * log2(e)
    int64_t mrow[kMaxCols];                 // explicit mask: each column's mask row (offset)
    uint32_t rows[kMaxCols], heads[kMaxCols];  // dropout: each column's row and head (padding 0)
  };

  // One key tile (keys k0 .. k0 + nk - 1 of one kv head, within one page of a paged cache) as the
  // products read it: rows in place; K as pairs (pair path: in place or copied to kbuf, ka / lda
  // in bytes) and V packed to vbuf (vb); or K and V as float rows (float path).
  struct KeyTile {
    int64_t k0, nk;
    const T *kt, *vt;
    const char* ka;
    int64_t lda;
    const float *vb, *kr, *vr;
    int64_t ldk, ldv;
  };

  KeyTile key_rows(const Walk& w, int64_t k0, int64_t nk, float* kbuf, float* vbuf) const {
    const TileId& id = w.id;
    KeyTile t{k0, nk,
              static_cast<const T*>(p.k) + id.hk * p.k_head_stride + key_offset(p, id.b, id.s, k0, p.k_batch_stride, p.k_row_stride),
              static_cast<const T*>(p.v) + id.hk * p.v_head_stride + key_offset(p, id.b, id.s, k0, p.v_batch_stride, p.v_row_stride),
              nullptr, 0, vbuf, nullptr, nullptr, 0, 0};
    if (w.pairs) {
      pair_keys(w.amx, t, kbuf);
      if (w.amx) pack_vt_pairs(t.vt, nk, vbuf);
      else pack_v_pairs(t.vt, nk, vbuf);
    } else if (!w.narrow) {
      t.kr = float_rows<V>(t.kt, p.k_row_stride, nk, D, kbuf, t.ldk);
      t.vr = float_rows<V>(t.vt, p.v_row_stride, nk, D, vbuf, t.ldv);
    }
    return t;
  }

  // Tiles ids[0 .. n) of one task (plan_tasks) over this split's keys, key tile by key tile; the
  // key tile is prepared once when they share their kv head.
  void walk(const int64_t* ids, int64_t n, int64_t split) {
    Buffer<Walk> walks(n);
    Walk* w = walks.get();
    int64_t own = 0, ka = std::numeric_limits<int64_t>::max(), kb = 0;
    for (int64_t i = 0; i < n; ++i) {
      new (&w[i]) Walk{};
      w[i].id = tile_id(ids[i]);
      plan(w[i], split);
      own = std::max(own, walk_floats(w[i]));
      if (w[i].ka < w[i].kb) { ka = std::min(ka, w[i].ka); kb = std::max(kb, w[i].kb); }
    }
    const bool share = w[n - 1].id.hk == w[0].id.hk;
    Scratch scratch(n * own + 2 * bk * D);
    float* kbuf = scratch.get() + n * own;  // bk x D floats: the key tile's K
    float* vbuf = kbuf + bk * D;            // bk x D floats: its V
    const AmxTiles<Amx> tiles_in_use(w[0].amx);
    for (int64_t i = 0; i < n; ++i) begin(w[i], scratch.get() + i * own);
    for (int64_t k0 = ka, nk = 0; k0 < kb; k0 += nk) {
      nk = std::min(std::min(bk, kb - k0), contiguous_keys(p, w[0].id.s, k0));  // within one page
      KeyTile t{};
      for (int64_t i = 0; i < n; ++i) {
        if (w[i].kb <= k0 || k0 + nk <= w[i].ka) continue;  // no key of this tile in its range
        if (!share || t.kt == nullptr) t = key_rows(w[i], k0, nk, kbuf, vbuf);
        key_tile(w[i], t);
      }
    }
    for (int64_t i = 0; i < n; ++i) end(w[i], ids[i], split);
  }

  // The tile's shape, path and key range (this split's share of the keys its rows can see, in
  // whole key groups of 16).
  void plan(Walk& w, int64_t split) const {
    const TileId& id = w.id;
    w.ncol = id.nh * id.nr;
    w.narrow = w.ncol <= kNarrowCols;  // then qt and ot hold rows: [col][d]
    const int64_t ncolp = round_up(w.ncol, kAmx && !w.narrow ? std::max<int64_t>(W, kAmxRows) : W);
    const int64_t pw = w.narrow ? ncolp : std::min<int64_t>(V::NV * W, ncolp);
    w.pn = Panels{pw, ncolp, round_up(ncolp, pw)};
    // With AMX, shapes the tiles cannot take run on float32 FMAs: vdpbf16ps ran at half their rate
    // on the Xeon this was measured on (bench/README.md), so the pair path would be slower there.
    w.pairs = kPairs && !w.narrow && (!kAmx || amx_shape(D, bk));  // then qt holds pairs: (D + 1) / 2 rows
    w.amx = kAmx && w.pairs;
    // Pair path without score transforms: scores stay unscaled (no pass over the tile); the max is
    // scaled and the exponent takes scores times scale_log2 in one fma.
    w.raw = w.pairs && !mods && sl2 > 0.f;
    const KeyRange span = visible_keys_of_rows(id.r0, id.r0 + id.nr, with_lengths(p, id.s));
    const int64_t chunk = round_up(ceil_div(std::max<int64_t>(0, span.hi + 1 - span.lo), nsplit), 16);
    w.ka = span.lo + split * chunk;
    w.kb = std::min(span.hi + 1, w.ka + chunk);
  }

  int64_t drop_floats(const Walk& w) const { return drop && w.pairs ? bk * W : 0; }
  int64_t walk_floats(const Walk& w) const {
    const int64_t na = w.pn.ncola;
    return 2 * D * na + bk * na + 5 * w.pn.ncolp + drop_floats(w) + (has_attn_mask(p) ? W * bk : 0);
  }

  // Buffers in `f` (walk_floats), Q^T packed, the running statistics and each column's key range,
  // score-mod and dropout coordinates.
  void begin(Walk& w, float* f) const {
    const TileId& id = w.id;
    const int64_t na = w.pn.ncola, ncolp = w.pn.ncolp;
    w.qt = f;                  // D x ncolp panels: Q^T, padding columns zero
    w.ot = w.qt + D * na;      // D x ncolp panels: unnormalised O^T
    w.st = w.ot + D * na;      // bk x ncolp panels: scores, then probabilities
    w.m = w.st + bk * na;      // running max (log2 domain) per column
    w.l = w.m + ncolp;         // running sum
    w.mx = w.l + ncolp;        // this tile's max
    w.alpha = w.mx + ncolp;    // rescale factor of this tile
    w.base = w.alpha + ncolp;  // value subtracted before exp2
    w.mt = w.base + ncolp;     // pair path with dropout: bk x W multipliers
    w.mtile = w.mt + drop_floats(w);  // explicit mask: W x bk, W columns' mask values of one key tile
    for (int64_t c = 0; c < ncolp && drop; ++c) {
      w.rows[c] = c < w.ncol ? uint32_t(id.r0 + c % id.nr) : 0u;
      w.heads[c] = c < w.ncol ? uint32_t(id.h0 + c / id.nr) : 0u;
    }
    const FwdParams sp = with_lengths(p, id.s);  // the mask of this sequence
    const T* q = static_cast<const T*>(p.q) + id.s.q_batch * p.q_batch_stride + id.s.q_row0 * p.q_row_stride;
    // Narrow tiles read and write only their columns' rows; wide ones whole panels (padding 0).
    const int64_t used = w.narrow ? w.ncol * D : D * na;
    std::fill(w.qt, w.qt + used, 0.f);
    std::fill(w.ot, w.ot + used, 0.f);
    for (int64_t c = 0; c < ncolp; ++c) { w.m[c] = neg_inf<float>(); w.l[c] = 0.f; }
    for (int64_t c = 0; c < w.ncol; ++c) {
      const int64_t h = id.h0 + c / id.nr, row = id.r0 + c % id.nr;
      const T* qr = q + h * p.q_head_stride + row * p.q_row_stride;
      if constexpr (kPairs)
        if (w.pairs)
          for (int64_t d = 0; d < D; d += 2)
            w.qt[w.pn.at((D + 1) / 2, d / 2, c)] = bits_float(uint32_t(qr[d].bits) | (d + 1 < D ? uint32_t(qr[d + 1].bits) << 16 : 0u));
      if (!w.pairs)
        for (int64_t d = 0; d < D; ++d) w.qt[w.narrow ? c * D + d : w.pn.at(D, d, c)] = load_as<float>(qr + d) * sl2;
      const KeyRange kr = visible_keys(row, sp);
      w.lo[c] = kr.lo; w.hi[c] = kr.hi;
    }
    if (mods)
      for (int64_t c = 0; c < ncolp; ++c) {
        const bool col = c < w.ncol;
        w.pos[c] = col ? float(alibi_position(id.r0 + c % id.nr, id.s.seqlen_q, id.s.seqlen_k)) : 0.f;
        w.nslope[c] = col ? -alibi_slope(p, id.b, id.h0 + c / id.nr) * float(kLog2e) : 0.f;
        w.mrow[c] = col && has_attn_mask(p) ? mask_row_offset(p, id.b, id.h0 + c / id.nr, id.r0 + c % id.nr) : 0;
      }
  }

  // One key tile (key_rows) for this tile's columns: scores, online softmax, O^T update.
  void key_tile(Walk& w, const KeyTile& t) const {
    const TileId& id = w.id;
    const Panels& pn = w.pn;
    const int64_t ncol = w.ncol, ncolp = pn.ncolp, pw = pn.pw, k0 = t.k0, nk = t.nk;
    const bool narrow = w.narrow, pairs = w.pairs, raw = w.raw;
    float *st = w.st, *ot = w.ot, *m = w.m, *l = w.l, *mx = w.mx, *alpha = w.alpha, *base = w.base;
    if (pairs) pair_scores(w.amx, raw, t, w.qt, st, pn);
    else if (narrow)  // K and V read in place (converted on the fly)
      narrow_products(ncol, true, t.kt, p.k_row_stride, nk, w.qt, st, ncolp);
    else
      gemm<V>(nk, ncolp, score_sum(Gemm{t.kr, t.ldk, 1, w.qt, pw, st, pw, D, false, pn.stride(D), pn.stride(bk)}));
    if (has_score_mod(p)) modify_scores(st, pn, k0, nk, w.pos, w.nslope);
    if (has_attn_mask(p)) apply_mask(st, pn, k0, nk, ncol, w.mrow, w.mtile);

    bool partial = false;  // -inf for the keys a column may not see (in any score domain)
    for (int64_t c = 0; c < ncol; ++c) partial |= w.lo[c] > k0 || w.hi[c] < k0 + nk - 1;
    if (partial)  // mask the scores a column may not see: keys before lo and after hi
      for (int64_t c = 0; c < ncol; ++c) {
        float* sc = st + pn.col(bk, c);
        const int64_t a = std::clamp<int64_t>(w.lo[c] - k0, 0, nk), z = std::clamp<int64_t>(w.hi[c] + 1 - k0, a, nk);
        for (int64_t j = 0; j < a; ++j) sc[j * pw] = neg_inf<float>();
        for (int64_t j = z; j < nk; ++j) sc[j * pw] = neg_inf<float>();
      }
    for (int64_t c = 0; c < ncolp; c += W) {  // four chains: one would wait on max's latency
      const float* sc = st + pn.col(bk, c);
      const R ninf = V::set1(neg_inf<float>());
      R mv[4] = {ninf, ninf, ninf, ninf};
      int64_t j = 0;
      for (; j + 4 <= nk; j += 4)
        for (int i = 0; i < 4; ++i) mv[i] = V::max(mv[i], V::load(sc + (j + i) * pw));
      for (; j < nk; ++j) mv[0] = V::max(mv[0], V::load(sc + j * pw));
      const R tm = V::max(V::max(mv[0], mv[1]), V::max(mv[2], mv[3]));
      V::store(mx + c, raw ? V::mul(tm, V::set1(sl2)) : tm);
    }
    // Vector form of fae::rescale_factor / exp_base: a column with no finite score yet
    // subtracts -FLT_MAX instead of 0, so that exp2(-inf - base) == 0 without a select.
    for (int64_t c = 0; c < ncolp; c += W) {
      const R mo = V::load(m + c), mn = V::max(V::load(mx + c), mo);  // NaN in m stays
      const R bv = V::max(mn, V::set1(-std::numeric_limits<float>::max()));
      V::store(alpha + c, V::exp2(V::sub(mo, bv)));
      V::store(base + c, bv);
      V::store(m + c, mn);
    }
    bool rescale = false;
    for (int64_t c = 0; c < ncol; ++c) rescale |= alpha[c] != 1.f;
    if (pairs) pair_probabilities(id.b, k0, nk, raw ? sl2 : 1.f, st, pn, base, alpha, l, w.rows, w.heads, w.mt);
    for (int64_t c = 0; c < ncolp && !pairs; c += W) {
      float* sc = st + pn.col(bk, c);
      const R bv = V::load(base + c);
      R sum = V::zero();
      for (int64_t j = 0; j < nk; ++j) {
        float* sp = sc + j * pw;
        const R pv = V::exp2(V::sub(V::load(sp), bv));
        V::store(sp, pv);
        sum = V::add(sum, pv);
      }
      V::store(l + c, V::fma(V::load(l + c), V::load(alpha + c), sum));
      if (drop) apply_dropout(id.b, w.rows + c, w.heads + c, k0, nk, sc, pn.pw);
    }
    if (rescale && narrow)  // rows of O: one factor per row
      for (int64_t c = 0; c < ncol; ++c) scale_row(ot + c * D, alpha[c]);
    const float* cs = rescale && !narrow ? alpha : nullptr;  // O^T *= alpha inside the product
    if (pairs) pair_values(w.amx, nk, t.vb, st, ot, pn, cs);
    else if (narrow) narrow_products(ncol, false, t.vt, p.v_row_stride, nk, st, ot, ncolp);
    else gemm<V>(D, ncolp, Gemm{t.vr, 1, t.ldv, st, pw, ot, pw, nk, true, pn.stride(bk), pn.stride(D), cs});
  }

  void scale_row(float* o, float a) const {
    const R av = V::set1(a);
    int64_t d = 0;
    for (; d + W <= D; d += W) V::store(o + d, V::mul(V::load(o + d), av));
    if (d < D) V::storen(o + d, V::mul(V::loadn(o + d, int(D - d)), av), int(D - d));
  }

  void end(const Walk& w, int64_t tile, int64_t split) const {
    finish(tile, split, w.id, w.pn, w.narrow, w.ot, w.m, w.l);
  }

  // Softcap, then the ALiBi bias, on the log2-domain scores of keys k0 .. k0 + nk - 1 (lanes are
  // columns: pos and nslope per column, padding columns 0).
  void modify_scores(float* st, const Panels& pn, int64_t k0, int64_t nk, const float* pos,
                     const float* nslope) const {
    const ScoreMod<V> sm(p);
    for (int64_t c = 0; c < pn.ncolp; c += W) {
      float* sc = st + pn.col(bk, c);
      const R pv = V::load(pos + c), sv = V::load(nslope + c);
      for (int64_t j = 0; j < nk; ++j) {
        R x = V::load(sc + j * pn.pw);
        if (sm.cap2 > 0.f) x = sm.softcap(x, nullptr);
        if (sm.alibi) x = sm.bias(x, sv, pv, V::set1(float(k0 + j)));
        V::store(sc + j * pn.pw, x);
      }
    }
  }

  // Dropout on the probabilities of keys k0 .. k0 + nk - 1 of the W columns at sc (rows pw apart)
  // of sequence b, with those columns' rows and heads.
  void apply_dropout(int64_t b, const uint32_t* rows, const uint32_t* heads, int64_t k0, int64_t nk, float* sc,
                     int64_t pw) const {
    Dropout<V>(p).columns(b, rows, heads, k0, nk, [&](int64_t j, R m) { V::store(sc + j * pw, V::mul(V::load(sc + j * pw), m)); });
  }

  // The explicit mask on the log2-domain scores of keys k0 .. k0 + nk - 1 of columns 0 .. ncol - 1
  // (mask rows at offsets mrow): + value * log2(e). Columns that all read one mask row (a mask
  // broadcast over rows and heads, such as key padding) add it as one vector per key; others
  // read W mask rows along the keys and transpose them in registers (add_mask_t; mtile: W x bk).
  void apply_mask(float* st, const Panels& pn, int64_t k0, int64_t nk, int64_t ncol, const int64_t* mrow,
                  float* mtile) const {
    bool shared = true;
    for (int64_t c = 1; c < ncol; ++c) shared &= mrow[c] == mrow[0];
    if (!shared) {
      for (int64_t c = 0; c < pn.ncolp; c += W)  // these rows read the next key tile next: bk values on
        add_mask_t<V>(p, mrow + c, int(std::clamp<int64_t>(ncol - c, 0, W)), k0, nk, st + pn.col(bk, c), pn.pw, mtile, bk);
      return;
    }
    const R l2e = V::set1(float(kLog2e));
    for (int64_t j = 0; j < nk; ++j) {
      const R mv = V::set1(mask_value<float>(p, mrow[0], k0 + j));
      for (int64_t c = 0; c < pn.ncolp; c += W) {
        float* sc = st + pn.col(bk, c) + j * pn.pw;
        V::store(sc, V::fma(mv, l2e, V::load(sc)));
      }
    }
  }

  // Pair path: K rows as pairs along D, copied as they are (a row of bfloat16 is a row of pairs).
  // On tiles (amx): read in place when the tile has whole tile rows, else copied with zero rows
  // after them; the scores of those rows are 0 and never read.
  void pair_keys(bool amx, KeyTile& t, float* kbuf) const {
    if constexpr (kPairs) {
      if (amx) {
        if constexpr (kAmx) t.ka = tile_rows(t.kt, p.k_row_stride, t.nk, D, kbuf, t.lda);
        return;
      }
      const int64_t dp = (D + 1) / 2;
      for (int64_t j = 0; j < t.nk; ++j) {
        kbuf[j * dp + dp - 1] = 0.f;  // odd D: the last pair's high half stays zero
        std::memcpy(kbuf + j * dp, t.kt + j * p.k_row_stride, sizeof(T) * D);
      }
      t.ka = reinterpret_cast<const char*>(kbuf);
      t.lda = dp * int64_t(sizeof(float));
    }
  }

  // Pair path: S^T = K . Q^T, then scaled by scale * log2(e) so that the scores are in the log2
  // domain (not when raw: pair_probabilities scales them).
  void pair_scores(bool amx, bool raw, const KeyTile& t, const float* qtp, float* st, const Panels& pn) const {
    if constexpr (kPairs) {
      const int64_t dp = (D + 1) / 2, nk = t.nk;
      if (amx) {
        if constexpr (kAmx)
          amx_gemm<Amx>(round_up(nk, kAmxRows), pn.ncolp, AmxGemm{t.ka, t.lda, qtp, pn.pw, st, pn.pw, dp, false, pn.pw, pn.stride(dp), pn.stride(bk)});
      } else {
        gemm<V, true>(nk, pn.ncolp, Gemm{reinterpret_cast<const float*>(t.ka), dp, 1, qtp, pn.pw, st, pn.pw, dp, false, pn.stride(dp), pn.stride(bk)});
      }
      const R s = V::set1(sl2);
      for (int64_t c0 = 0; c0 < pn.ncolp && !raw; c0 += pn.pw)
        for (int64_t i = c0 * bk; i < c0 * bk + nk * pn.pw; i += W) V::store(st + i, V::mul(V::load(st + i), s));
    }
  }

  // Pair path: P^T = exp2(S^T * s2 - base) as bfloat16 pairs of keys, written in place (row j / 2
  // <= j was read already; s2 is scale_log2 for unscaled scores, else 1); the row sums l are taken
  // in float32 before rounding, and dropout (its multipliers of the nk keys in mt, nk x W) after them.
  void pair_probabilities(int64_t b, int64_t k0, int64_t nk, float s2, float* st, const Panels& pn, const float* base,
                          const float* alpha, float* l, const uint32_t* rows, const uint32_t* heads, float* mt) const {
    if constexpr (kPairs)
      for (int64_t c = 0; c < pn.ncolp; c += W) {
        float* sc = st + pn.col(bk, c);
        const R nb = V::sub(V::zero(), V::load(base + c)), sv = V::set1(s2);
        R sum = V::zero();
        if (drop) Dropout<V>(p).columns(b, rows + c, heads + c, k0, nk, [&](int64_t j, R m) { V::store(mt + j * W, m); });
        for (int64_t j = 0; j < nk; j += 2) {
          R pe = V::exp2(V::fma(V::load(sc + j * pn.pw), sv, nb));
          R po = j + 1 < nk ? V::exp2(V::fma(V::load(sc + (j + 1) * pn.pw), sv, nb)) : V::zero();
          sum = V::add(sum, V::add(pe, po));
          if (drop) {
            pe = V::mul(pe, V::load(mt + j * W));
            po = j + 1 < nk ? V::mul(po, V::load(mt + (j + 1) * W)) : po;
          }
          V::store(sc + j / 2 * pn.pw, V::pairs(pe, po));
        }
        V::store(l + c, V::fma(V::load(l + c), V::load(alpha + c), sum));
      }
  }

  // Pair path: O^T += V^T . P^T on pairs of keys (vbuf from pack_v_pairs, P^T pairs in st).
  // On tiles (amx): vbuf holds V^T (pack_vt_pairs); O^T is rescaled first, and the rows of P^T
  // pairs after the tile's last are set to zero up to a whole tile row.
  void pair_values(bool amx, int64_t nk, const float* vbuf, float* st, float* ot, const Panels& pn,
                   const float* cs) const {
    if constexpr (kPairs) {
      const int64_t np = (nk + 1) / 2;
      if (!amx) {
        gemm<V, true>(D, pn.ncolp, Gemm{vbuf, 1, D, st, pn.pw, ot, pn.pw, np, true, pn.stride(bk), pn.stride(D), cs});
        return;
      }
      const int64_t np16 = round_up(np, kAmxRows);
      for (int64_t c0 = 0; c0 < pn.ncolp; c0 += pn.pw) {
        float* sp = st + pn.col(bk, c0);
        std::memset(sp + np * pn.pw, 0, sizeof(float) * (np16 - np) * pn.pw);
        if (cs == nullptr) continue;
        float* op = ot + pn.col(D, c0);
        const int64_t w = std::min(pn.pw, pn.ncolp - c0);
        for (int64_t c = 0; c < w; c += W) {
          const R a = V::load(cs + c0 + c);
          for (int64_t d = 0; d < D; ++d) V::store(op + d * pn.pw + c, V::mul(V::load(op + d * pn.pw + c), a));
        }
      }
      amx_gemm<Amx>(D, pn.ncolp, AmxGemm{reinterpret_cast<const char*>(vbuf), np16 * int64_t(sizeof(float)), st, pn.pw,
                                          ot, pn.pw, np16, true, pn.pw, pn.stride(bk), pn.stride(D)});
    }
  }

  // Tile path: V^T as pairs of keys, vbuf[d * np16 + j / 2] = (V[j][d], V[j + 1][d]), np16 the pair
  // count rounded up to a whole tile row, zero after the last key.
  void pack_vt_pairs(const T* vt, int64_t nk, float* vbuf) const {
    if constexpr (kAmx) {
      const int64_t np16 = round_up((nk + 1) / 2, kAmxRows);
      pack_row_pairs_t<V>(vt, p.v_row_stride, nk, np16, D, vbuf, np16);
    }
  }

  // Pair path: V tile as pairs of keys, vbuf[(j / 2) * D + d] = (V[j][d], V[j + 1][d]).
  void pack_v_pairs(const T* vt, int64_t nk, float* vbuf) const {
    if constexpr (kPairs)
      for (int64_t j = 0; j < nk; j += 2) {
        const T* e = vt + j * p.v_row_stride;
        const T* o = j + 1 < nk ? e + p.v_row_stride : nullptr;
        for (int64_t d = 0; d < D; d += W) {
          const int n = int(std::min<int64_t>(W, D - d));
          const R x = V::pairs_bf16(e + d, o ? o + d : nullptr, n);
          if (n == W) V::store(vbuf + j / 2 * D + d, x);
          else V::storen(vbuf + j / 2 * D + d, x, n);
        }
      }
  }

  template <typename X>  // float, or a storage dtype converted to float
  static R ld(const X* x, int n) {
    if constexpr (std::is_same_v<X, float>) return n == W ? V::load(x) : V::loadn(x, n);
    else return V::cvt(x, n);
  }

  // Narrow tiles (decoding) stream K and V from memory, one row per head stride: rows prefetched
  // this many rows ahead, about 4 KB.
  int64_t decode_ahead() const { return std::max<int64_t>(2, ceil_div(4096, D * int64_t(sizeof(T)))); }

  // Narrow tiles: scores st[j][c] = K_j . Q_c (reduced along D), or o[c] += sum_j st[j][c] V_j.
  template <int NC>
  void narrow_kernel(bool scores, const T* a, int64_t lda, int64_t nk, const float* x, float* y,
                     int64_t ncolp) const {
    const int64_t ahead = decode_ahead(), row_bytes = D * int64_t(sizeof(T));
    const auto fetch = [&](int64_t j) {
      prefetch_row(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(a) +
                                                 uintptr_t((j + ahead) * lda * int64_t(sizeof(T)))), row_bytes);
    };
    if (scores) {
      // KB keys x NC columns of accumulators (at most W), reduced together by one hsums (45
      // instructions for 16 sums on AVX-512) instead of one hsum per score (8 each).
      constexpr int KB = std::max(1, W / NC), NA = ((KB * NC + W - 1) / W) * W;
      for (int64_t j0 = 0; j0 < nk; j0 += KB) {
        const T* kj[KB];
        for (int j = 0; j < KB; ++j) {  // keys past the last repeat it (their sums are not stored)
          kj[j] = a + std::min<int64_t>(j0 + j, nk - 1) * lda;
          if (j0 + j < nk) fetch(j0 + j);
        }
        R acc[NA];
        for (int i = 0; i < NA; ++i) acc[i] = V::zero();
        for (int64_t d = 0; d < D; d += W) {
          const int n = int(std::min<int64_t>(W, D - d));
          R qv[NC];
          for (int c = 0; c < NC; ++c) qv[c] = ld(x + c * D + d, n);
          for (int j = 0; j < KB; ++j) {
            const R kv = ld(kj[j] + d, n);
            for (int c = 0; c < NC; ++c) acc[j * NC + c] = V::fma(kv, qv[c], acc[j * NC + c]);
          }
        }
        float sums[NA];
        for (int i = 0; i < NA; i += W) V::store(sums + i, V::hsums(acc + i));
        for (int j = 0; j < KB && j0 + j < nk; ++j) {
          float* yj = y + (j0 + j) * ncolp;
          for (int c = 0; c < NC; ++c) yj[c] = sums[j * NC + c];
          for (int64_t c = NC; c < ncolp; ++c) yj[c] = 0.f;
        }
      }
      return;
    }
    // Blocks of DB vectors along D (NC x DB accumulators, within the register file), as many
    // passes as that takes, with blocks as even as D allows (D = 128, NC = 4: two of 4 vectors,
    // not 6 + 2); DB is a compile-time count (1, 2, 4 or the most that fit) so that the
    // accumulators stay in registers (a run-time count spilled them). Keys in groups of
    // kValueKeys, so that a group's V rows stay in L1 for the later passes.
    constexpr int DBM = std::clamp((W >= 16 ? 24 : 12) / NC, 1, 8);
    const int64_t nvec = (D + W - 1) / W, passes = (nvec + DBM - 1) / DBM, db = (nvec + passes - 1) / passes;
    switch (db) {
      case 1: narrow_values<NC, 1>(a, lda, nk, x, y, ncolp, fetch); break;
      case 2: narrow_values<NC, std::min(2, DBM)>(a, lda, nk, x, y, ncolp, fetch); break;
      case 4: narrow_values<NC, std::min(4, DBM)>(a, lda, nk, x, y, ncolp, fetch); break;
      default: narrow_values<NC, DBM>(a, lda, nk, x, y, ncolp, fetch); break;
    }
  }

  // o[c] += sum_j st[j][c] V_j (narrow_kernel) in passes of DB vectors along D.
  static constexpr int64_t kValueKeys = 32;
  template <int NC, int DB, class Fetch>
  void narrow_values(const T* a, int64_t lda, int64_t nk, const float* x, float* y, int64_t ncolp,
                     const Fetch& fetch) const {
    for (int64_t j0 = 0; j0 < nk; j0 += kValueKeys) {
      const int64_t j1 = std::min(nk, j0 + kValueKeys);
      for (int64_t d0 = 0; d0 < D; d0 += DB * W) {
        R acc[NC][DB];
        int len[DB];
        for (int b = 0; b < DB; ++b) {
          len[b] = int(std::clamp<int64_t>(D - d0 - b * W, 0, W));
          for (int c = 0; c < NC; ++c) acc[c][b] = ld(y + c * D + d0 + b * W, len[b]);
        }
        for (int64_t j = j0; j < j1; ++j) {
          if (d0 == 0) fetch(j);
          const T* vj = a + j * lda + d0;
          R vv[DB];
          for (int b = 0; b < DB; ++b) vv[b] = ld(vj + b * W, len[b]);  // len 0: zeros, nothing read
          for (int c = 0; c < NC; ++c) {
            const R pc = V::set1(x[j * ncolp + c]);
            for (int b = 0; b < DB; ++b) acc[c][b] = V::fma(pc, vv[b], acc[c][b]);
          }
        }
        for (int b = 0; b < DB; ++b)
          for (int c = 0; c < NC; ++c) {
            if (len[b] == W) V::store(y + c * D + d0 + b * W, acc[c][b]);
            else V::storen(y + c * D + d0 + b * W, acc[c][b], len[b]);
          }
      }
    }
  }

  void narrow_products(int64_t ncol, bool scores, const T* a, int64_t lda, int64_t nk,
                       const float* x, float* y, int64_t ncolp) const {
    switch (ncol) {
      case 1: narrow_kernel<1>(scores, a, lda, nk, x, y, ncolp); break;
      case 2: narrow_kernel<2>(scores, a, lda, nk, x, y, ncolp); break;
      case 3: narrow_kernel<3>(scores, a, lda, nk, x, y, ncolp); break;
      case 4: narrow_kernel<4>(scores, a, lda, nk, x, y, ncolp); break;
      case 5: narrow_kernel<5>(scores, a, lda, nk, x, y, ncolp); break;
      case 6: narrow_kernel<6>(scores, a, lda, nk, x, y, ncolp); break;
      case 7: narrow_kernel<7>(scores, a, lda, nk, x, y, ncolp); break;
      default: narrow_kernel<8>(scores, a, lda, nk, x, y, ncolp); break;
    }
  }

  // Normalised output rows and lse of one tile (or split) from O^T panels, or from rows of O
  // (narrow tiles).
  void finish(int64_t tile, int64_t split, const TileId& id, const Panels& pn, bool narrow, const float* ot,
              const float* m, const float* l) const {
    const int64_t ncol = id.nh * id.nr, ds = narrow ? 1 : pn.pw;  // column c at ot + col(c), d at d * ds
    const auto col = [&](int64_t c) { return narrow ? ot + c * D : ot + pn.col(D, c); };
    if (nsplit > 1) {
      float* po = part_o + (tile * nsplit + split) * bq * D;
      float* pl = part_lse + (tile * nsplit + split) * bq;
      for (int64_t c = 0; c < ncol; ++c) {
        const float inv = inv_sum(l[c]);
        const float* oc = col(c);
        for (int64_t d = 0; d < D; ++d) po[c * D + d] = oc[d * ds] * inv;
        pl[c] = lse2_of(m[c], l[c]);
      }
      return;
    }
    for (int64_t c = 0; c < ncol; ++c) {
      const int64_t h = id.h0 + c / id.nr, row = id.r0 + c % id.nr;
      const float inv = inv_sum(l[c]);
      const float* oc = col(c);
      T* o = out_row(id, h, row);
      for (int64_t d = 0; d < D; ++d) store_from(o + d, oc[d * ds] * inv);
      *lse_at(id, h, row) = finish_lse(m[c], l[c]);
    }
  }

  T* out_row(const TileId& id, int64_t h, int64_t row) const {
    return static_cast<T*>(p.out) + id.s.q_batch * p.o_batch_stride + h * p.o_head_stride +
           (id.s.q_row0 + row) * p.o_row_stride;
  }
  float* lse_at(const TileId& id, int64_t h, int64_t row) const {
    return static_cast<float*>(p.lse) + id.s.q_batch * p.lse_batch_stride + h * p.lse_head_stride + id.s.q_row0 + row;
  }

  // Combines the splits of one tile: weights exp2(lse_s - max) on the normalised partials.
  void merge(int64_t tile) const {
    const TileId id = tile_id(tile);
    Scratch accs(D);
    float* acc = accs.get();
    for (int64_t c = 0; c < id.nh * id.nr; ++c) {
      float mmax = neg_inf<float>();
      for (int64_t s = 0; s < nsplit; ++s) {
        const float ls = part_lse[(tile * nsplit + s) * bq + c];
        mmax = ls > mmax ? ls : mmax;
      }
      const float b2 = exp_base(mmax);
      float wsum = 0.f;
      for (int64_t d = 0; d < D; ++d) acc[d] = 0.f;
      for (int64_t s = 0; s < nsplit; ++s) {
        const float w = std::exp2(part_lse[(tile * nsplit + s) * bq + c] - b2);
        if (w == 0.f) continue;  // an empty split holds no partial output
        const float* po = part_o + ((tile * nsplit + s) * bq + c) * D;
        for (int64_t d = 0; d < D; ++d) acc[d] += w * po[d];
        wsum += w;
      }
      const int64_t h = id.h0 + c / id.nr, row = id.r0 + c % id.nr;
      T* o = out_row(id, h, row);
      const float inv = inv_sum(wsum);
      for (int64_t d = 0; d < D; ++d) store_from(o + d, acc[d] * inv);
      *lse_at(id, h, row) = finish_lse(mmax, wsum);
    }
  }
};

}  // namespace fae::cpu::FAE_CPU_ISA
