// Planted-bug kernels for the emulator's checkers: each kernel has a buggy variant (Bug = true) that
// a checker must catch and the corrected variant (Bug = false) that must pass, and kernels whose
// variant with Bug = true wastes bandwidth (reported by the profiler counters). Blocks of 64
// threads (two warps), one block unless stated otherwise; `in` holds 64 floats, `out` 1024.
#pragma once

#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cuda/launch.cuh"

namespace fae::emu_test {

constexpr int kPlantedThreads = 64;
constexpr int kPlantedOut = 1024;

// Checker 1: a neighbour's shared value read without a barrier after it was written.
template <bool Bug>
__global__ void planted_race_raw(gptr<const float> in, gptr<float> out) {
  sptr<float> s = dynamic_smem<float>();
  const int i = threadIdx.x;
  s[i] = 0.0f;
  __syncthreads();
  s[i] = in[i];
  if (!Bug) __syncthreads();
  out[i] = s[(i + 1) % kPlantedThreads];
}

// Checker 1: a loop reusing a shared buffer without the trailing barrier (WAR across iterations).
template <bool Bug>
__global__ void planted_race_war(gptr<const float> in, gptr<float> out) {
  sptr<float> s = dynamic_smem<float>();
  const int i = threadIdx.x;
  float acc = 0.0f;
  for (int it = 0; it < 3; ++it) {
    s[i] = in[i] + float(it);
    __syncthreads();
    acc += s[(i + 1) % kPlantedThreads];
    if (!Bug) __syncthreads();
  }
  out[i] = acc;
}

// Checker 2: the issuing thread reads its cp.async destination before waiting.
template <bool Bug>
__global__ void planted_async_early_read(gptr<const float> in, gptr<float> out) {
  sptr<float> s = dynamic_smem<float>();
  const int i = threadIdx.x;
  cp_async<4>(s + i, in + i);
  cp_async_commit();
  if (!Bug) cp_async_wait<0>();
  const float v = s[i];
  if (Bug) cp_async_wait<0>();
  out[i] = v;
}

// Checker 2: wait_group 1 leaves the newest group in flight; reading it is a bug.
template <bool Bug>
__global__ void planted_async_wait_group(gptr<const float> in, gptr<float> out) {
  sptr<float> s = dynamic_smem<float>();
  const int i = threadIdx.x;
  cp_async<4>(s + i, in + i);
  cp_async_commit();
  cp_async<4>(s + kPlantedThreads + i, in + (kPlantedThreads - 1 - i));
  cp_async_commit();
  cp_async_wait<1>();
  float v = s[i];
  if (!Bug) cp_async_wait<0>();
  v += s[kPlantedThreads + i];
  if (Bug) cp_async_wait<0>();
  out[i] = v;
}

// Checker 2: the barrier placed before the wait instead of after it, so another thread's copy is
// read before that thread's wait (or after it, but with no barrier in between).
template <bool Bug>
__global__ void planted_async_no_barrier(gptr<const float> in, gptr<float> out) {
  sptr<float> s = dynamic_smem<float>();
  const int i = threadIdx.x;
  cp_async<4>(s + i, in + i);
  cp_async_commit();
  if (Bug) __syncthreads();
  cp_async_wait<0>();
  if (!Bug) __syncthreads();
  out[i] = s[(i + 1) % kPlantedThreads];
}

// Checker 2: the source of a pending cp.async is overwritten before the wait.
template <bool Bug>
__global__ void planted_async_source_write(gptr<const float> in, gptr<float> out) {
  sptr<float> s = dynamic_smem<float>();
  const int i = threadIdx.x;
  out[i] = in[i];
  cp_async<4>(s + i, out + i);
  cp_async_commit();
  if (Bug) out[i] = 0.0f;
  cp_async_wait<0>();
  if (!Bug) out[i] = 0.0f;
  out[i] = out[i] + s[i];
}

// Checker 2: a second copy to the same bytes issued while the first is still in flight.
template <bool Bug>
__global__ void planted_async_double_issue(gptr<const float> in, gptr<float> out) {
  sptr<float> s = dynamic_smem<float>();
  const int i = threadIdx.x;
  cp_async<4>(s + i, in + i);
  if (!Bug) cp_async_wait_all();
  cp_async<4>(s + i, in + (kPlantedThreads - 1 - i));
  cp_async_wait_all();
  out[i] = s[i];
}

// Checker 2: copies committed but never waited for before the thread exits.
template <bool Bug>
__global__ void planted_async_never_waited(gptr<const float> in, gptr<float> out) {
  sptr<float> s = dynamic_smem<float>();
  const int i = threadIdx.x;
  cp_async<4>(s + i, in + i);
  cp_async_commit();
  if (!Bug) cp_async_wait<0>();
  out[i] = in[i];
}

// Checker 3: ldmatrix row addresses 2 bytes off the 16-byte alignment.
template <bool Bug>
__global__ void planted_ldmatrix_misaligned(gptr<const float> in, gptr<float> out) {
  sptr<uint16_t> s = dynamic_smem<uint16_t>();
  const int i = threadIdx.x;
  for (int j = i; j < 2 * 136; j += kPlantedThreads) s[j] = uint16_t(j);
  __syncthreads();
  uint32_t r[4];
  const int lane = i % 32;
  ldmatrix_x4(r[0], r[1], r[2], r[3], s + lane * 8 + (Bug ? 1 : 0) + (i / 32) * 8);
  out[i] = in[i] + float(r[0] + r[1] + r[2] + r[3]);
}

// Checker 3: ldmatrix rows past the end of the dynamic shared memory (a wrong tile offset).
template <bool Bug>
__global__ void planted_ldmatrix_outside(gptr<const float> in, gptr<float> out) {
  sptr<uint16_t> s = dynamic_smem<uint16_t>();
  const int i = threadIdx.x;
  for (int j = i; j < 2 * 136; j += kPlantedThreads) s[j] = uint16_t(j);
  __syncthreads();
  uint32_t r0, r1;
  const int lane = i % 32;
  ldmatrix_x2_trans(r0, r1, s + (lane % 16) * 8 + (Bug ? 16 * 8 + 64 : (i / 32) * 8));
  out[i] = in[i] + float(r0 + r1);
}

// Checker 3: a plain shared-memory store one element past the dynamic size.
template <bool Bug>
__global__ void planted_smem_overflow(gptr<const float> in, gptr<float> out) {
  sptr<float> s = dynamic_smem<float>();
  const int i = threadIdx.x;
  s[i + (Bug ? 1 : 0)] = in[i];
  __syncthreads();
  out[i] = s[kPlantedThreads - 1 - i];
}

// Checker 4: an off-by-one global read past the end of `in`.
template <bool Bug>
__global__ void planted_global_oob(gptr<const float> in, gptr<float> out) {
  const int i = threadIdx.x;
  out[i] = in[i] + (i + 1 < kPlantedThreads || Bug ? in[i + 1] : 0.0f);
}

// Checker 6: one thread skips its store, its neighbour reads the uninitialised element.
template <bool Bug>
__global__ void planted_uninit_read(gptr<const float> in, gptr<float> out) {
  sptr<float> s = dynamic_smem<float>();
  const int i = threadIdx.x;
  if (!Bug || i != 7) s[i] = in[i];
  __syncthreads();
  out[i] = s[(i + 1) % kPlantedThreads];
}

// Checker 5: a lane leaves before the warp's shuffle.
template <bool Bug>
__global__ void planted_shfl_lane_missing(gptr<const float> in, gptr<float> out) {
  const int i = threadIdx.x;
  if (Bug && i % 32 == 31) return;
  out[i] = __shfl_xor_sync(0xffffffffu, in[i], 1);
}

// Checker 5: odd lanes execute a different shuffle than even lanes (divergent collective).
template <bool Bug>
__global__ void planted_shfl_divergent(gptr<const float> in, gptr<float> out) {
  const int i = threadIdx.x;
  float v = in[i];
  if (Bug && i % 2) v = __shfl_down_sync(0xffffffffu, v, 1);
  else v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[i] = v;
}

// Checker 5: lane 0 uses a different membermask than the rest of its warp.
template <bool Bug>
__global__ void planted_shfl_mask_mismatch(gptr<const float> in, gptr<float> out) {
  const int i = threadIdx.x;
  const unsigned mask = (Bug && i % 32 == 0) ? 0x0000ffffu : 0xffffffffu;
  out[i] = __shfl_xor_sync(mask, in[i], 1);
}

// Checker 5: one lane skips an mma (tensor-core instructions need all 32 lanes).
template <bool Bug>
__global__ void planted_mma_lane_missing(gptr<const float> in, gptr<float> out) {
  const int i = threadIdx.x;
  if (Bug && i % 32 == 5) return;
  const uint32_t a[4] = {pack2<half_t>(in[i], 1.0f), 0, 0, 0}, b[2] = {pack2<half_t>(1.0f, 0.0f), 0};
  float d[4] = {0, 0, 0, 0};
  mma_m16n8k16<half_t>(d, a, b, d);
  out[i] = d[0];
}

// Checker 7: two blocks accumulate into the same words with a plain += instead of atomicAdd.
template <bool Bug>
__global__ void planted_global_race(gptr<const float> in, gptr<float> out) {
  const int i = threadIdx.x;
  if (Bug) out[i] += in[i];
  else atomicAdd(out + i, in[i]);
}

// Profiler: ldmatrix from a 16 x 64 tile of 16-bit values whose rows are not padded (128 bytes:
// the 8 rows of each matrix fall in the same 4 banks, 8 wavefronts per phase) versus rows padded
// to 72 elements (one wavefront per phase).
template <bool Bug>
__global__ void planted_ldmatrix_unpadded(gptr<const float> in, gptr<float> out) {
  constexpr int kLd = Bug ? 64 : 72;
  sptr<uint16_t> s = dynamic_smem<uint16_t>();
  const int i = threadIdx.x, lane = i % 32;
  for (int j = i; j < 16 * kLd; j += kPlantedThreads) s[j] = f32_to_f16_bits(in[j % kPlantedThreads]);
  __syncthreads();
  uint32_t r[4];
  ldmatrix_x4(r[0], r[1], r[2], r[3], s + (lane % 16) * kLd + (i / 32) * 32 + (lane / 16) * 8);
  out[i] = float(r[0] ^ r[1] ^ r[2] ^ r[3]);
}

// Profiler: 2-byte stores 32 bytes apart across the lanes (a sector each) versus contiguous ones.
template <bool Bug>
__global__ void planted_strided_store(gptr<const float> in, gptr<float> out) {
  const int i = threadIdx.x;
  const gptr<uint16_t> h = ptr_cast<uint16_t>(out);
  h[Bug ? i * 16 : i] = f32_to_f16_bits(in[i]);
}

// Runs the planted kernel `name` on in[64] -> out[1024]; unknown names throw std::invalid_argument.
inline void run_planted(const std::string& name, bool bug, const float* in, float* out) {
  using K = void (*)(gptr<const float>, gptr<float>);
  struct Case {
    const char* name;
    K buggy, fixed;
    std::size_t smem;
    unsigned blocks = 1;
  };
  static const Case cases[] = {
      {"race_raw", planted_race_raw<true>, planted_race_raw<false>, 256},
      {"race_war", planted_race_war<true>, planted_race_war<false>, 256},
      {"async_early_read", planted_async_early_read<true>, planted_async_early_read<false>, 256},
      {"async_wait_group", planted_async_wait_group<true>, planted_async_wait_group<false>, 512},
      {"async_no_barrier", planted_async_no_barrier<true>, planted_async_no_barrier<false>, 256},
      {"async_source_write", planted_async_source_write<true>, planted_async_source_write<false>, 256},
      {"async_double_issue", planted_async_double_issue<true>, planted_async_double_issue<false>, 256},
      {"async_never_waited", planted_async_never_waited<true>, planted_async_never_waited<false>, 256},
      {"ldmatrix_misaligned", planted_ldmatrix_misaligned<true>, planted_ldmatrix_misaligned<false>, 544},
      {"ldmatrix_outside", planted_ldmatrix_outside<true>, planted_ldmatrix_outside<false>, 544},
      {"smem_overflow", planted_smem_overflow<true>, planted_smem_overflow<false>, 256},
      {"global_oob", planted_global_oob<true>, planted_global_oob<false>, 0},
      {"shfl_lane_missing", planted_shfl_lane_missing<true>, planted_shfl_lane_missing<false>, 0},
      {"shfl_divergent", planted_shfl_divergent<true>, planted_shfl_divergent<false>, 0},
      {"shfl_mask_mismatch", planted_shfl_mask_mismatch<true>, planted_shfl_mask_mismatch<false>, 0},
      {"mma_lane_missing", planted_mma_lane_missing<true>, planted_mma_lane_missing<false>, 0},
      {"uninit_read", planted_uninit_read<true>, planted_uninit_read<false>, 256},
      {"global_race", planted_global_race<true>, planted_global_race<false>, 0, 2},
      {"ldmatrix_unpadded", planted_ldmatrix_unpadded<true>, planted_ldmatrix_unpadded<false>, 16 * 72 * 2},
      {"strided_store", planted_strided_store<true>, planted_strided_store<false>, 0},
  };
  for (const Case& c : cases)
    if (name == c.name) {
      launch(c.name, bug ? c.buggy : c.fixed, LaunchConfig{dim3(c.blocks), dim3(kPlantedThreads), c.smem, nullptr},
             gbuf(in, kPlantedThreads), gbuf(out, kPlantedOut));
      return;
    }
  throw std::invalid_argument("unknown planted kernel '" + name + "'");
}

}  // namespace fae::emu_test
