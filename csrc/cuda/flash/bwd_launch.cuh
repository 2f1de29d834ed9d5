// Host launcher of the backward kernels for one (dtype, head dim): the shared-memory tier that fits
// the device, then row statistics, main, dQ conversion, in order on one stream.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

#include "cuda/flash/api.h"
#include "cuda/flash/bwd_kernel.cuh"
#include "cuda/flash/common.cuh"
#include "cuda/launch.cuh"

namespace fae::cuda {

// Blocks per SM the main kernel's registers allow (65536 per SM): ptxas gives its feature instances
// 221-255 registers (sm_80 / 86 / 89 / 90), one block of 256 threads or two of 128.
template <class Tr>
constexpr std::size_t kBwdRegBlocks = Tr::kThreads >= 256 ? 1 : 2;
// No register bound: the most blocks an SM of sm_80 - sm_90 runs.
constexpr std::size_t kMaxBlocksPerSm = 32;

template <class Tr, bool kSeqs, bool kMod = false>
void run_backward_tiles(const BwdParams& bp, float* stats, float* dq_accum, Stream stream) {
  using T = typename Tr::Element;
  const FwdParams& p = bp.fwd;
  const int64_t d = p.head_dim;
  const BwdWork w = bwd_work(bp);
  const std::size_t rows = std::size_t(p.batch * p.heads_q * w.padded_rows);
  const std::size_t accum = std::size_t(w.splits) * rows * std::size_t(d);
  // The arrays' own (batch, rows): packed rows with variable lengths (FwdParams::q_array_batch ...).
  const int64_t qb = p.q_array_batch ? p.q_array_batch : p.batch, qr = p.q_array_rows ? p.q_array_rows : p.seqlen_q;
  const int64_t kb = p.kv_array_batch ? p.kv_array_batch : p.batch, kr = p.kv_array_rows ? p.kv_array_rows : p.seqlen_k;
  const std::size_t lse_extent = std::size_t((qb - 1) * p.lse_batch_stride + (p.heads_q - 1) * p.lse_head_stride + qr);
  const auto q_like = [&](const void* ptr, int64_t bs, int64_t rs, int64_t hs) {
    return gbuf(static_cast<const T*>(ptr), extent(bs, rs, hs, qb, qr, p.heads_q, d));
  };
  const auto kv_like = [&](const void* ptr, int64_t bs, int64_t rs, int64_t hs) {
    return gbuf(static_cast<const T*>(ptr), extent(bs, rs, hs, kb, kr, p.heads_kv, d));
  };
  const dim3 stats_grid(unsigned(w.padded_rows / Tr::kBlockM), unsigned(p.heads_q), unsigned(p.batch));
  const gptr<const float> slopes = kMod ? alibi_buffer(p) : gptr<const float>{};
  const ScoreMods mods = kMod ? ScoreMods::of(p, p.scale_log2) : ScoreMods{};
  // MaskRefs::of announces the mask's buffers to the emulator's next launch: built per launch.
  const auto mask_refs = [&] { return kMod ? MaskRefs::of(p, &bp) : MaskRefs{}; };
  // Dropout (Dropout::of announces a drawn seed to the next launch: built per launch).
  const auto dropout = [&] { return kMod ? Dropout::of(p) : Dropout{}; };
  // The row statistics stage the mask's key tile past their own shared memory where the SM keeps
  // as many blocks as the shared memory allowed without it.
  MaskRefs stats_mask = mask_refs();
  const std::size_t stats_stage = stats_mask.stage_bytes(
      Tr::kSmemStatsBytes, MaskTile<Tr::kBlockM, Tr::kBlockN, Tr::kThreads>::bytes(p.mask_bool), kMaxBlocksPerSm);
  launch("flash_bwd_row_stats", bwd_row_stats<Tr, kSeqs, kMod>,
         LaunchConfig{stats_grid, dim3(Tr::kThreads), Tr::kSmemStatsBytes + stats_stage, stream}, bp, w,
         q_like(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
         kv_like(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
         kv_like(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride),
         q_like(bp.dout, bp.do_batch_stride, bp.do_row_stride, bp.do_head_stride),
         gbuf(static_cast<const float*>(p.lse), lse_extent),
         gbuf(static_cast<const float*>(bp.dlse), bp.dlse ? lse_extent : 0), gbuf(stats, 4 * rows), gbuf(dq_accum, accum),
         seq_buffers(p), mods, slopes, stats_mask, dropout());

  const int64_t key_blocks = (p.seqlen_k + Tr::kBlockN - 1) / Tr::kBlockN;
  const dim3 grid(unsigned(bp.deterministic ? w.splits : key_blocks), unsigned(p.heads_kv), unsigned(p.batch));
  // A staged mask takes kStages tiles of its own past the row statistics (MaskTile) where the SM
  // keeps its blocks (at most those the instance's registers allow: kBwdRegBlocks).
  MaskRefs am = mask_refs();
  am.stage = am.stage && kBwdStagesMask<Tr>;
  const std::size_t stage = am.stage_bytes(
      Tr::kSmemBytes, Tr::kStages * MaskTile<Tr::kBlockM, Tr::kBlockN, Tr::kThreads>::bytes(p.mask_bool),
      kBwdRegBlocks<Tr>);
  launch("flash_bwd", flash_bwd_kernel<Tr, kSeqs, kMod>,
         LaunchConfig{grid, dim3(Tr::kThreads), Tr::kSmemBytes + stage, stream}, bp,
         w, q_like(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
         kv_like(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
         kv_like(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride),
         q_like(bp.dout, bp.do_batch_stride, bp.do_row_stride, bp.do_head_stride),
         gbuf(static_cast<const float*>(stats), 4 * rows), gbuf(dq_accum, accum),
         gbuf(static_cast<T*>(bp.dk), extent(bp.dk_batch_stride, bp.dk_row_stride, bp.dk_head_stride, kb, kr, p.heads_kv, d)),
         gbuf(static_cast<T*>(bp.dv), extent(bp.dv_batch_stride, bp.dv_row_stride, bp.dv_head_stride, kb, kr, p.heads_kv, d)),
         seq_buffers(p), mods, slopes, am, dropout());

  const dim3 row_grid(unsigned((p.seqlen_q + 15) / 16), unsigned(p.heads_q), unsigned(p.batch));
  launch("flash_bwd_convert_dq", bwd_convert_dq<T, Tr::kHeadDim, kSeqs>,
         LaunchConfig{row_grid, dim3(2 * Tr::kHeadDim), 0, stream}, bp, w, gbuf(static_cast<const float*>(dq_accum), accum),
         gbuf(static_cast<T*>(bp.dq), extent(bp.dq_batch_stride, bp.dq_row_stride, bp.dq_head_stride, qb, qr, p.heads_q, d)),
         seq_buffers(p));
}

// The large tier when the device's per-block shared memory takes it, else the small one. Packed
// sequences (uses_seqs) run the small tier's tiles on every device: the variable-length
// instances hold the sequence's offsets and lengths in registers, and with the large tiles ptxas
// spilled 4 to 16 bytes (D = 32, 96, 256 on sm_90). Softcap and ALiBi run in the variable-length
// instances only (their kMod variant), for dense calls too, and so do explicit masks and dropout.
template <class T, int HeadDim>
void run_backward(const BwdParams& bp, float* stats, float* dq_accum, Stream stream) {
  using Large = BwdTraits<T, HeadDim, false>;
  using Small = BwdTraits<T, HeadDim, bwd_has_small_tier(HeadDim)>;
  using Features = BwdTraits<T, HeadDim, bwd_has_small_tier(HeadDim), true>;  // the kMod instances' tiles
  const std::size_t limit = max_dynamic_smem();
  const bool mods = has_score_mod(bp.fwd) || has_attn_mask(bp.fwd) || has_dropout(bp.fwd), seqs = mods || uses_seqs(bp.fwd);
  if (!seqs && Large::kSmemBytes <= limit) return run_backward_tiles<Large, false>(bp, stats, dq_accum, stream);
  if (mods && Features::kSmemBytes <= limit) return run_backward_tiles<Features, true, true>(bp, stats, dq_accum, stream);
  if (!mods && Small::kSmemBytes <= limit) {
    if (seqs) return run_backward_tiles<Small, true>(bp, stats, dq_accum, stream);
    if constexpr (bwd_has_small_tier(HeadDim)) return run_backward_tiles<Small, false>(bp, stats, dq_accum, stream);
  }
  const std::size_t need = mods ? Features::kSmemBytes : Small::kSmemBytes;
  throw std::invalid_argument("head_dim " + std::to_string(HeadDim) + ": the CUDA backward needs " +
                              std::to_string(need) + " bytes of shared memory per block; this GPU allows " +
                              std::to_string(limit));
}

}  // namespace fae::cuda
