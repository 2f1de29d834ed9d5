// Host launcher of the forward kernel for one (dtype, head dim): grid and shared-memory sizing,
// the same code under nvcc and under the emulator.
#pragma once

#include <cstddef>

#include "cuda/flash/api.h"
#include "cuda/flash/common.cuh"
#include "cuda/flash/fwd_kernel.cuh"
#include "cuda/launch.cuh"

namespace fae::cuda {

// The tiles of flash_fwd_seqs_kernel: warps of 16 rows (MTiles = 1), Q in shared memory and, past
// D = 128, narrower key tiles, so that the sequence offsets and paged addressing fit in registers
// without a spill at every head dim (ptxas -v, sm_80 and sm_90: D = 256 with 32 keys spilled 8
// bytes); a short (decoding) query tile wastes half as many rows.
template <class Tr>
using SeqsConfig = FwdConfig<typename Tr::Element, Tr::kHeadDim, Tr::kWarps, 1,
                             (Tr::kHeadDim >= 256 ? 16 : Tr::kHeadDim > 128 ? 32 : Tr::kBlockN), false>;

// The forward with the tile configuration Tr (a FwdConfig), or with SeqsConfig<Tr> for variable
// lengths, KV caches and splits; with num_splits > 1 the split blocks write the workspace and the
// combine kernel finishes out and lse.
template <class Tr>
void launch_forward(const FwdParams& p, Stream stream) {
  using T = typename Tr::Element;
  using Ts = SeqsConfig<Tr>;
  // Score mods, explicit masks and dropout run in the seqs kernel's kMod instance only.
  const bool mods = has_score_mod(p) || has_attn_mask(p) || has_dropout(p), seqs = mods || uses_seqs(p);
  const int nsplit = p.num_splits > 1 ? p.num_splits : 1, bm = seqs ? Ts::kBlockM : Tr::kBlockM;
  const int64_t m_blocks = (p.seqlen_q + bm - 1) / bm;
  const dim3 grid(unsigned(m_blocks * nsplit), unsigned(p.heads_q), unsigned(p.batch));
  const int64_t d = p.head_dim;
  // The arrays' own (batch, rows): packed rows, cache slots, pages (FwdParams::q_array_batch ...).
  const int64_t qb = p.q_array_batch ? p.q_array_batch : p.batch, qr = p.q_array_rows ? p.q_array_rows : p.seqlen_q;
  const int64_t kb = p.kv_array_batch ? p.kv_array_batch : p.batch, kr = p.kv_array_rows ? p.kv_array_rows : p.seqlen_k;
  const auto q = gbuf(static_cast<const T*>(p.q), extent(p.q_batch_stride, p.q_row_stride, p.q_head_stride, qb, qr,
                                                         p.heads_q, d));
  const auto k = gbuf(static_cast<const T*>(p.k), extent(p.k_batch_stride, p.k_row_stride, p.k_head_stride, kb, kr,
                                                         p.heads_kv, d));
  const auto v = gbuf(static_cast<const T*>(p.v), extent(p.v_batch_stride, p.v_row_stride, p.v_head_stride, kb, kr,
                                                         p.heads_kv, d));
  const gptr<T> o = gbuf(static_cast<T*>(p.out), extent(p.o_batch_stride, p.o_row_stride, p.o_head_stride, qb, qr,
                                                        p.heads_q, d));
  const gptr<float> lse = gbuf(static_cast<float*>(p.lse), std::size_t((qb - 1) * p.lse_batch_stride +
                                                                       (p.heads_q - 1) * p.lse_head_stride + qr));
  const ScoreScale sc = ScoreScale::of(p.scale_log2);
  if (!seqs) {
    launch("flash_fwd", flash_fwd_kernel<Tr>, LaunchConfig{grid, dim3(Tr::kThreads), Tr::kSmemBytes, stream}, p, sc,
           q, k, v, o, lse);
    return;
  }
  const std::size_t parts = nsplit > 1 ? std::size_t(split_row(p, nsplit, 0, 0, 0)) : 0;
  const LaunchConfig cfg{grid, dim3(Ts::kThreads), Ts::kSmemBytes, stream};
  if (mods) {
    // A staged mask takes its tile's stage past K and V (MaskTile) where the SM keeps its blocks (at
    // most the 2 the instance's registers allow): sm_86 / 89 keep float masks at D = 128 in
    // registers; none at D = 224 (kStagesMask).
    MaskRefs am = MaskRefs::of(p);
    am.stage = am.stage && kStagesMask<Ts>;
    const std::size_t stage =
        am.stage_bytes(Ts::kSmemBytes, MaskTile<Ts::kBlockM, Ts::kBlockN, Ts::kThreads>::bytes(p.mask_bool), 2);
    launch("flash_fwd_seqs_mod", flash_fwd_seqs_kernel<Ts, true>,
           LaunchConfig{grid, dim3(Ts::kThreads), Ts::kSmemBytes + stage, stream}, p, sc, q, k, v, o, lse,
           seq_buffers(p), gbuf(p.split_workspace, parts), ScoreMods::of(p, sc.factor), alibi_buffer(p), am,
           Dropout::of(p));
  } else
    launch("flash_fwd_seqs", flash_fwd_seqs_kernel<Ts, false>, cfg, p, sc, q, k, v, o, lse, seq_buffers(p),
           gbuf(p.split_workspace, parts), ScoreMods{}, gptr<const float>{}, MaskRefs{}, Dropout{});
  if (nsplit == 1) return;
  const dim3 cgrid(unsigned((p.seqlen_q + kCombineRows - 1) / kCombineRows), unsigned(p.heads_q), unsigned(p.batch));
  launch("flash_fwd_combine", flash_fwd_combine_kernel<T>, LaunchConfig{cgrid, dim3(kCombineThreads), 0, stream}, p,
         gbuf(static_cast<const float*>(p.split_workspace), parts), o, lse, seq_buffers(p));
}

template <class T, int HeadDim>
void run_forward(const FwdParams& p, Stream stream) {
  launch_forward<FwdTraits<T, HeadDim>>(p, stream);
}

}  // namespace fae::cuda
