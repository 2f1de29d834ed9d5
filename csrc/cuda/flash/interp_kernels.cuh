// Kernels of the attention weights and top-k attention (docs/interpretability.md), sm_80+.
//   interp_weights:  a block owns 64 selected query rows (any rows, gathered) of one selected head;
//                    per key tile S = Q.K^T on tensor cores (Q fragments in registers), scaled into
//                    the log2 domain, then P = exp2(S - lse2) straight from the accumulators to the
//                    output. Without the forward's lse a first pass over the same tiles computes it
//                    (online softmax in registers, quad shuffles for row statistics).
//   interp_topk:     a block owns 64 consecutive query rows of one head. Per key tile the scores go
//                    through shared memory, where one thread per row offers its visible keys to the
//                    row's heap of k_top entries (common/topk.h, also in shared memory). Then the
//                    kept scores become softmax weights and every thread sums weighted V rows for
//                    (row, column) pairs of the output.
//   interp_topk_bwd: a warp owns one query row at a time: the kept scores and dP recomputed along D
//                    (lanes hold D / 32 columns each; warp sums by shuffles), the restricted softmax
//                    gradient, dQ written directly, dK and dV added to float32 accumulators with
//                    atomicAdd (a key may be kept by rows of many blocks).
// Keys are read raw and scores scaled after the product, so equal dot products tie exactly.
#pragma once

#include "common/interp_params.h"
#include "common/mask.h"
#include "common/online_softmax.h"
#include "common/topk.h"
#include "cuda/flash/common.cuh"
#include "cuda/flash/score_mod.cuh"
#include "cuda/primitives.cuh"

namespace fae::cuda::interp {

// Tile constants per (dtype, head dim): 4 warps x 16 query rows, kBlockN keys per tile; shared
// rows padded by 8 elements as in the forward. Top-k adds the score tile and the heaps:
// D = 256: Q 33792 + K 16896 + S 8448 + heaps 64 * 64 * 8 = 32768 bytes = 91904 (< 99 KiB).
template <class T, int HeadDim>
struct Traits {
  using Element = T;
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = 16 * kWarps;
  static constexpr int kBlockN = HeadDim <= 128 ? 64 : 32;
  static constexpr int kRowStride = HeadDim + 8;
  static constexpr int kNTilesS = kBlockN / 8;
  static constexpr int kKStepsQK = HeadDim / 16;
  static constexpr bool kQInRegisters = HeadDim <= 128;
  static constexpr int kChunksPerRow = HeadDim / 8;
  using KMap = ChunkMap<kBlockN, HeadDim, kThreads>;  // key tile copies (cuda/flash/common.cuh)
  static constexpr int kSmemQ = kBlockM * kRowStride;
  static constexpr int kSmemKV = kBlockN * kRowStride;
  static constexpr int kScoreStride = kBlockN + 1;  // float score tile of top-k
  static constexpr std::size_t kSmemQK = (kSmemQ + kSmemKV) * sizeof(T);
  static constexpr std::size_t kSmemScores = std::size_t(kBlockM) * kScoreStride * sizeof(float);
  static constexpr int kMaxTopK = 64;  // heap entries per row in shared memory
  static std::size_t topk_smem(int64_t k_top) {
    return kSmemQK + kSmemScores + std::size_t(kBlockM) * std::size_t(k_top) * (sizeof(float) + sizeof(int32_t));
  }
  static_assert(sizeof(T) == 2 && HeadDim % 32 == 0 && HeadDim <= 256, "16-bit elements, head dim 32..256");
};

__device__ __forceinline__ float warp_sum(float x) {
  for (int m = 16; m > 0; m /= 2) x += __shfl_xor_sync(0xffffffffu, x, m);
  return x;
}
struct FastExp2 {
  __device__ __forceinline__ float operator()(float x) const { return fast_exp2(x); }
};

// S = Q.K^T for the block's 64 rows (sQ) and one key tile (sK), this warp's 16 rows: raw dot
// products in the mma accumulator layout (rows g, g + 8; keys nt*8 + 2t + {0, 1}).
template <class Tr>
struct TileScores {
  using T = typename Tr::Element;
  sptr<T> sQ, sK;
  uint32_t qf[Tr::kQInRegisters ? Tr::kKStepsQK : 1][4];

  __device__ void load_q(uint32_t (&a)[4], int ks) const {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    ldmatrix_x4(a[0], a[1], a[2], a[3], sQ + (warp * 16 + lane % 16) * Tr::kRowStride + ks * 16 + (lane / 16) * 8);
  }
  __device__ void init() {  // after sQ has landed
    if constexpr (Tr::kQInRegisters)
      for (int ks = 0; ks < Tr::kKStepsQK; ++ks) load_q(qf[ks], ks);
  }
  __device__ void compute(float (&s)[Tr::kNTilesS][4]) {
    const int lane = threadIdx.x % 32;
    for (int nt = 0; nt < Tr::kNTilesS; ++nt)
      for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < Tr::kKStepsQK; ++ks) {
      uint32_t(&a)[4] = qf[Tr::kQInRegisters ? ks : 0];
      if constexpr (!Tr::kQInRegisters) load_q(a, ks);
#pragma unroll
      for (int np = 0; np < Tr::kNTilesS / 2; ++np) {
        uint32_t b0[2], b1[2];
        ldmatrix_x4(b0[0], b0[1], b1[0], b1[1],
                    sK + (np * 16 + (lane / 16) * 8 + lane % 8) * Tr::kRowStride + ks * 16 + ((lane / 8) & 1) * 8);
        mma_m16n8k16<T>(s[2 * np], a, b0, s[2 * np]);
        mma_m16n8k16<T>(s[2 * np + 1], a, b1, s[2 * np + 1]);
      }
    }
  }
};

// Rows [n0, n0 + BN) of one kv head into sK (zero past Sk), waited for and visible to the block.
template <class Tr>
__device__ void load_keys(sptr<typename Tr::Element> sK, gptr<const typename Tr::Element> kb, const FwdParams& p,
                          int64_t n0) {
  copy_tile_async<typename Tr::KMap, Tr::kRowStride, true>(sK, kb + n0 * p.k_row_stride, p.k_row_stride,
                                                          int(min64(Tr::kBlockN, p.seqlen_k - n0)));
  cp_async_wait_all();
  __syncthreads();
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads)
    interp_weights(WeightsParams w, gptr<const typename Tr::Element> q, gptr<const typename Tr::Element> k,
                   gptr<const float> lse, gptr<float> probs, gptr<const int64_t> heads, gptr<const int64_t> rows,
                   ScoreMods mods, gptr<const float> slopes) {
  using T = typename Tr::Element;
  constexpr int BN = Tr::kBlockN;
  const FwdParams& p = w.fwd;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
  const int64_t hi = blockIdx.y, b = blockIdx.z, h = heads[hi], hk = h / (p.heads_q / p.heads_kv);
  const int64_t m0 = int64_t(blockIdx.x) * Tr::kBlockM;
  const int rows_valid = int(min64(Tr::kBlockM, w.num_rows - m0));
  const gptr<const T> qb = q + (b * p.q_batch_stride + h * p.q_head_stride);
  const gptr<const T> kb = k + (b * p.k_batch_stride + hk * p.k_head_stride);

  TileScores<Tr> ts;
  ts.sQ = dynamic_smem<T>();
  ts.sK = ts.sQ + Tr::kSmemQ;
  for (int c = threadIdx.x; c < Tr::kBlockM * Tr::kChunksPerRow; c += Tr::kThreads) {  // gathered Q rows
    const int r = c / Tr::kChunksPerRow, col = c % Tr::kChunksPerRow * 8;
    const bool ok = r < rows_valid;
    cp_async<16>(ts.sQ + r * Tr::kRowStride + col, qb + (ok ? rows[m0 + r] * p.q_row_stride + col : 0), ok ? 16 : 0);
  }
  cp_async_wait_all();
  __syncthreads();
  ts.init();

  // The two rows of this thread (positions in the selection), their query rows, key ranges and
  // ALiBi positions.
  int64_t pos[2], row[2], apos[2];
  KeyRange keys[2];
  float lse2[2];
  const float slope2 = mods.slope2(p, slopes, int(b), int(h));
  for (int r = 0; r < 2; ++r) {
    pos[r] = m0 + warp * 16 + g + 8 * r;
    row[r] = pos[r] < w.num_rows ? int64_t(rows[pos[r]]) : -1;
    keys[r] = row[r] < 0 ? KeyRange{0, -1} : visible_keys(row[r], p);
    apos[r] = alibi_position(row[r], p.seqlen_q, p.seqlen_k);
    if (p.lse != nullptr && row[r] >= 0)
      lse2[r] = lse2_for_backward(float(lse[b * p.lse_batch_stride + h * p.lse_head_stride + row[r]]));
  }
  float s[Tr::kNTilesS][4];
  auto scaled_tile = [&](int64_t n0) {  // scores in the log2 domain (softcap, ALiBi), -inf where masked
    load_keys<Tr>(ts.sK, kb, p, n0);
    ts.compute(s);
    __syncthreads();  // every warp is done with sK
    for (int nt = 0; nt < Tr::kNTilesS; ++nt)
      for (int i = 0; i < 4; ++i) {
        const int64_t key = n0 + nt * 8 + 2 * t + (i & 1);
        const KeyRange& kr = keys[i >> 1];
        float x = s[nt][i] * mods.scale2;
        if (mods.cap2 > 0.0f) x = softcap_score(x, mods.cap2, mods.inv_cap2);
        x = ScoreMods::bias(x, slope2, int(apos[i >> 1]), int(key));
        s[nt][i] = key >= kr.lo && key <= kr.hi ? x : neg_inf<float>();
      }
  };
  if (p.lse == nullptr) {  // first pass: each row's lse, as the forward computes it
    float row_max[2] = {neg_inf<float>(), neg_inf<float>()}, row_sum[2] = {0.0f, 0.0f};
    for (int64_t n0 = 0; n0 < p.seqlen_k; n0 += BN) {
      scaled_tile(n0);
      for (int r = 0; r < 2; ++r) {
        float mx = row_max[r];
        for (int nt = 0; nt < Tr::kNTilesS; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
        mx = quad_max(mx);
        const float base = exp_base(mx);
        float sum = 0.0f;
        for (int nt = 0; nt < Tr::kNTilesS; ++nt) sum += fast_exp2(s[nt][2 * r] - base) + fast_exp2(s[nt][2 * r + 1] - base);
        row_sum[r] = row_sum[r] * rescale_factor(row_max[r], mx, FastExp2{}) + sum;
        row_max[r] = mx;
      }
    }
    for (int r = 0; r < 2; ++r) {
      const float sum = quad_sum(row_sum[r]);
      lse2[r] = sum == 0.0f ? -neg_inf<float>() : lse2_of(row_max[r], sum);
    }
  }
  for (int64_t n0 = 0; n0 < p.seqlen_k; n0 += BN) {
    scaled_tile(n0);
    for (int r = 0; r < 2; ++r) {
      if (row[r] < 0) continue;
      const gptr<float> pr = probs + (b * w.p_batch_stride + hi * w.p_head_stride + pos[r] * w.p_row_stride);
      for (int nt = 0; nt < Tr::kNTilesS; ++nt)
        for (int i = 2 * r; i < 2 * r + 2; ++i) {
          const int64_t key = n0 + nt * 8 + 2 * t + (i & 1);
          if (key < p.seqlen_k)
            pr[key] = key >= keys[r].lo && key <= keys[r].hi ? fast_exp2(s[nt][i] - lse2[r]) : 0.0f;
        }
    }
  }
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads)
    interp_topk(TopkParams tp, gptr<const typename Tr::Element> q, gptr<const typename Tr::Element> k,
                gptr<const typename Tr::Element> v, gptr<typename Tr::Element> o, gptr<int64_t> index) {
  using T = typename Tr::Element;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, SS = Tr::kScoreStride;
  const FwdParams& p = tp.fwd;
  const int kt = int(tp.k_top);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
  const int64_t h = blockIdx.y, b = blockIdx.z, hk = h / (p.heads_q / p.heads_kv);
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  const int rows_valid = int(min64(BM, p.seqlen_q - m0));
  const gptr<const T> kb = k + (b * p.k_batch_stride + hk * p.k_head_stride);
  const gptr<const T> vb = v + (b * p.v_batch_stride + hk * p.v_head_stride);

  TileScores<Tr> ts;
  ts.sQ = dynamic_smem<T>();
  ts.sK = ts.sQ + Tr::kSmemQ;
  const sptr<float> sS = ptr_cast<float>(ts.sK + Tr::kSmemKV);  // BM x SS scores
  const sptr<float> hs = sS + BM * SS;                           // BM x kt heap scores, then weights
  const sptr<int32_t> hidx = ptr_cast<int32_t>(hs + BM * kt);    // BM x kt heap keys
  load_tile<Tr>(ts.sQ, q + (b * p.q_batch_stride + m0 * p.q_row_stride + h * p.q_head_stride), p.q_row_stride, BM,
                rows_valid);
  cp_async_wait_all();
  __syncthreads();
  ts.init();

  // Thread `threadIdx.x < rows_valid` keeps the heap of row m0 + threadIdx.x.
  const bool owner = int(threadIdx.x) < rows_valid;
  const KeyRange mine = owner ? visible_keys(m0 + threadIdx.x, p) : KeyRange{0, -1};
  int count = 0;
  const KeyRange span = visible_keys_of_rows(m0, m0 + rows_valid, p);
  for (int64_t n0 = span.lo / BN * BN; n0 <= span.hi; n0 += BN) {
    float s[Tr::kNTilesS][4];
    load_keys<Tr>(ts.sK, kb, p, n0);
    ts.compute(s);
    for (int nt = 0; nt < Tr::kNTilesS; ++nt)
      for (int i = 0; i < 4; ++i)
        sS[(warp * 16 + g + 8 * (i >> 1)) * SS + nt * 8 + 2 * t + (i & 1)] = s[nt][i] * p.scale_log2;
    __syncthreads();  // scores visible, every warp done with sK
    for (int c = 0; c < BN; ++c)  // the same trip count in every thread: no divergent loop exit
      if (n0 + c >= mine.lo && n0 + c <= mine.hi)
        topk_offer<float>(hs + threadIdx.x * kt, hidx + threadIdx.x * kt, count, kt, float(sS[threadIdx.x * SS + c]), n0 + c);
    __syncthreads();  // heaps updated before the next tile's scores
  }
  const sptr<int32_t> counts = ptr_cast<int32_t>(sS);  // the score tile is free now
  if (owner) {
    const sptr<float> hr = hs + threadIdx.x * kt;
    const sptr<int32_t> ir = hidx + threadIdx.x * kt;
    heap_sort_best_first<float>(hr, ir, count);
    const float base = exp_base(count > 0 ? float(hr[0]) : neg_inf<float>());
    float sum = 0.0f;
    for (int c = 0; c < count; ++c) {
      const float e = fast_exp2(float(hr[c]) - base);
      hr[c] = e;
      sum += e;
    }
    for (int c = 0; c < count; ++c) hr[c] = float(hr[c]) / sum;  // x / x == 1: a single key weighs 1
    const gptr<int64_t> irow = index + (b * tp.idx_batch_stride + h * tp.idx_head_stride + (m0 + threadIdx.x) * tp.idx_row_stride);
    for (int c = 0; c < kt; ++c) irow[c] = c < count ? int64_t(ir[c]) : int64_t(-1);
    counts[threadIdx.x] = count;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < rows_valid * Tr::kHeadDim; e += Tr::kThreads) {
    const int r = e / Tr::kHeadDim, d = e % Tr::kHeadDim;
    float acc = 0.0f;
    for (int c = 0; c < int(counts[r]); ++c)
      acc += float(hs[r * kt + c]) * to_float(T(vb[int64_t(hidx[r * kt + c]) * p.v_row_stride + d]));
    o[b * p.o_batch_stride + (m0 + r) * p.o_row_stride + h * p.o_head_stride + d] = from_float<T>(acc);
  }
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads)
    interp_topk_bwd(TopkBwdParams bp, gptr<const typename Tr::Element> q, gptr<const typename Tr::Element> k,
                    gptr<const typename Tr::Element> v, gptr<const typename Tr::Element> dout,
                    gptr<const int64_t> index, gptr<typename Tr::Element> dq, gptr<float> dk, gptr<float> dv) {
  using T = typename Tr::Element;
  constexpr int D = Tr::kHeadDim, U = D / 32, kSlots = Tr::kMaxTopK / 32;
  const TopkParams& tp = bp.sel;
  const FwdParams& p = tp.fwd;
  const int kt = int(tp.k_top), lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t h = blockIdx.y, b = blockIdx.z, hk = h / (p.heads_q / p.heads_kv);
  const gptr<const T> kb = k + (b * p.k_batch_stride + hk * p.k_head_stride);
  const gptr<const T> vb = v + (b * p.v_batch_stride + hk * p.v_head_stride);
  const int64_t r0 = int64_t(blockIdx.x) * Tr::kWarps * 4;
  for (int64_t i = r0 + warp; i < min64(r0 + Tr::kWarps * 4, p.seqlen_q); i += Tr::kWarps) {
    const gptr<const int64_t> idx = index + (b * tp.idx_batch_stride + h * tp.idx_head_stride + i * tp.idx_row_stride);
    float qi[U], doi[U], dqi[U];
    for (int u = 0; u < U; ++u) {
      qi[u] = to_float(T(q[b * p.q_batch_stride + i * p.q_row_stride + h * p.q_head_stride + lane + 32 * u]));
      doi[u] = to_float(T(dout[b * bp.do_batch_stride + i * bp.do_row_stride + h * bp.do_head_stride + lane + 32 * u]));
      dqi[u] = 0.0f;
    }
    // Entry c of the row (score, then weight; dP, then dS) lives in lane c % 32, slot c / 32; the
    // slot loops are unrolled so that every slot index is a constant (registers, no local memory).
    float sc[kSlots], dp[kSlots];
    int n = 0;
    while (n < kt && int64_t(idx[n]) >= 0) ++n;
    float mx = neg_inf<float>();
#pragma unroll
    for (int sl = 0; sl < kSlots; ++sl)
      for (int c = 32 * sl; c < n && c < 32 * sl + 32; ++c) {
        const int64_t j = idx[c];
        float sq = 0.0f, sd = 0.0f;
        for (int u = 0; u < U; ++u) {
          sq += qi[u] * to_float(T(kb[j * p.k_row_stride + lane + 32 * u]));
          sd += doi[u] * to_float(T(vb[j * p.v_row_stride + lane + 32 * u]));
        }
        sq = warp_sum(sq) * p.scale_log2;
        sd = warp_sum(sd);
        mx = sq > mx || sq != sq ? sq : mx;
        if (lane == c % 32) {
          sc[sl] = sq;
          dp[sl] = sd;
        }
      }
    const float base = exp_base(mx);
    float sum = 0.0f, delta = 0.0f;
#pragma unroll
    for (int sl = 0; sl < kSlots; ++sl)
      if (lane + 32 * sl < n) sum += sc[sl] = fast_exp2(sc[sl] - base);
    sum = warp_sum(sum);
#pragma unroll
    for (int sl = 0; sl < kSlots; ++sl)
      if (lane + 32 * sl < n) delta += (sc[sl] /= sum) * dp[sl];
    delta = warp_sum(delta);
#pragma unroll
    for (int sl = 0; sl < kSlots; ++sl)
      if (lane + 32 * sl < n) dp[sl] = sc[sl] * (dp[sl] - delta) * p.scale;
#pragma unroll
    for (int sl = 0; sl < kSlots; ++sl)
      for (int c = 32 * sl; c < n && c < 32 * sl + 32; ++c) {
        const int64_t j = idx[c];
        const float pc = __shfl_sync(0xffffffffu, sc[sl], c % 32), ds = __shfl_sync(0xffffffffu, dp[sl], c % 32);
        const int64_t g0 = ((b * p.seqlen_k + j) * p.heads_kv + hk) * D;
        for (int u = 0; u < U; ++u) {
          dqi[u] += ds * to_float(T(kb[j * p.k_row_stride + lane + 32 * u]));
          atomicAdd(dk + (g0 + lane + 32 * u), ds * qi[u]);
          atomicAdd(dv + (g0 + lane + 32 * u), pc * doi[u]);
        }
      }
    for (int u = 0; u < U; ++u)
      dq[b * bp.dq_batch_stride + i * bp.dq_row_stride + h * bp.dq_head_stride + lane + 32 * u] = from_float<T>(dqi[u]);
  }
}

}  // namespace fae::cuda::interp
