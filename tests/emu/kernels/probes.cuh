// Probe kernels that expose single primitives to tests (register layouts, shuffles, conversions,
// cp.async zero-fill, atomics, scheduling order) and a 4-warp mma loop for timing. Written only
// against the primitives, so they also compile under nvcc. One warp unless stated otherwise.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/launch.cuh"

namespace fae::emu_test {

// mma: a[32][4], b[32][2], c[32][4] per-lane registers -> d[32][4] (K = 8 uses a[.][0..1], b[.][0]).
// Every warp of every block issues the same mma `repeats` times; d holds one [32][4] result per
// (block, warp, repeat), in that order.
template <class T, int K>
__global__ void probe_mma_kernel(gptr<const uint32_t> a, gptr<const uint32_t> b, gptr<const float> c, gptr<float> d,
                                 int repeats) {
  const int l = threadIdx.x % 32;
  const int warp = int(blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32);
  float cc[4], dd[4];
  for (int i = 0; i < 4; ++i) cc[i] = c[l * 4 + i];
  for (int r = 0; r < repeats; ++r) {
    if constexpr (K == 16) {
      uint32_t ra[4] = {a[l * 4], a[l * 4 + 1], a[l * 4 + 2], a[l * 4 + 3]};
      uint32_t rb[2] = {b[l * 2], b[l * 2 + 1]};
      mma_m16n8k16<T>(dd, ra, rb, cc);
    } else {
      uint32_t ra[2] = {a[l * 4], a[l * 4 + 1]};
      mma_m16n8k8<T>(dd, ra, b[l * 2], cc);
    }
    for (int i = 0; i < 4; ++i) d[((warp * repeats + r) * 32 + l) * 4 + i] = dd[i];
  }
}

template <class T, int K>
void probe_mma(const uint32_t* a, const uint32_t* b, const float* c, float* d, int blocks = 1, int warps = 1,
               int repeats = 1) {
  launch("probe_mma", probe_mma_kernel<T, K>, LaunchConfig{dim3(blocks), dim3(32 * warps), 0, nullptr}, gbuf(a, 128),
         gbuf(b, 64), gbuf(c, 128), gbuf(d, std::size_t(blocks) * warps * repeats * 128), repeats);
}

// ldmatrix / stmatrix: shared memory holds `n` 16-bit words copied from/to `image`; lane l supplies
// the byte offset offs[l]. regs is [32][4].
template <int Num, bool Trans>
__global__ void probe_ldmatrix_kernel(gptr<const uint16_t> image, int n, gptr<const int> offs, gptr<uint32_t> regs) {
  sptr<uint16_t> s = dynamic_smem<uint16_t>();
  const int l = threadIdx.x;
  for (int i = l; i < n; i += 32) s[i] = image[i];
  __syncthreads();
  sptr<uint16_t> p = ptr_cast<uint16_t>(ptr_cast<unsigned char>(s) + offs[l]);
  uint32_t r[4] = {0, 0, 0, 0};
  if constexpr (Num == 1) {
    if constexpr (Trans) ldmatrix_x1_trans(r[0], p);
    else ldmatrix_x1(r[0], p);
  } else if constexpr (Num == 2) {
    if constexpr (Trans) ldmatrix_x2_trans(r[0], r[1], p);
    else ldmatrix_x2(r[0], r[1], p);
  } else {
    if constexpr (Trans) ldmatrix_x4_trans(r[0], r[1], r[2], r[3], p);
    else ldmatrix_x4(r[0], r[1], r[2], r[3], p);
  }
  for (int j = 0; j < 4; ++j) regs[l * 4 + j] = r[j];
}

template <int Num, bool Trans>
__global__ void probe_stmatrix_kernel(gptr<const uint32_t> regs, gptr<const int> offs, gptr<uint16_t> image, int n) {
  sptr<uint16_t> s = dynamic_smem<uint16_t>();
  const int l = threadIdx.x;
  for (int i = l; i < n; i += 32) s[i] = 0;
  __syncthreads();
  sptr<uint16_t> p = ptr_cast<uint16_t>(ptr_cast<unsigned char>(s) + offs[l]);
  const uint32_t r0 = regs[l * 4], r1 = regs[l * 4 + 1], r2 = regs[l * 4 + 2], r3 = regs[l * 4 + 3];
  if constexpr (Num == 1) {
    if constexpr (Trans) stmatrix_x1_trans(r0, p);
    else stmatrix_x1(r0, p);
  } else if constexpr (Num == 2) {
    if constexpr (Trans) stmatrix_x2_trans(r0, r1, p);
    else stmatrix_x2(r0, r1, p);
  } else {
    if constexpr (Trans) stmatrix_x4_trans(r0, r1, r2, r3, p);
    else stmatrix_x4(r0, r1, r2, r3, p);
  }
  __syncthreads();
  for (int i = l; i < n; i += 32) image[i] = s[i];
}

template <int Num, bool Trans>
void probe_matrix(bool store, uint16_t* image, int n, const int* offs, uint32_t* regs) {
  const LaunchConfig cfg{dim3(1), dim3(32), std::size_t(n) * 2, nullptr};
  if (store)
    launch("probe_stmatrix", probe_stmatrix_kernel<Num, Trans>, cfg, gbuf(static_cast<const uint32_t*>(regs), 128),
           gbuf(offs, 32), gbuf(image, n), n);
  else
    launch("probe_ldmatrix", probe_ldmatrix_kernel<Num, Trans>, cfg, gbuf(static_cast<const uint16_t*>(image), n), n,
           gbuf(offs, 32), gbuf(regs, 128));
}

// Shuffles: block k runs case k (mode 0 idx, 1 up, 2 down, 3 xor) on vals[k][32]; lanes outside
// the mask keep their input.
__global__ void probe_shfl_kernel(gptr<const int> cases, gptr<const int> vals, gptr<int> out) {
  const int k = blockIdx.x, l = threadIdx.x;
  const int mode = cases[k * 4], b = cases[k * 4 + 1], width = cases[k * 4 + 2];
  const unsigned mask = static_cast<unsigned>(cases[k * 4 + 3]);
  int v = vals[k * 32 + l];
  if (mask & (1u << l)) {
    if (mode == 0) v = __shfl_sync(mask, v, b, width);
    else if (mode == 1) v = __shfl_up_sync(mask, v, static_cast<unsigned>(b), width);
    else if (mode == 2) v = __shfl_down_sync(mask, v, static_cast<unsigned>(b), width);
    else v = __shfl_xor_sync(mask, v, b, width);
  }
  out[k * 32 + l] = v;
}

inline void probe_shfl(const int* cases, const int* vals, int* out, int ncases) {
  launch("probe_shfl", probe_shfl_kernel, LaunchConfig{dim3(ncases), dim3(32), 0, nullptr}, gbuf(cases, ncases * 4),
         gbuf(vals, ncases * 32), gbuf(out, ncases * 32));
}

// Votes: block k runs case k (mode 0 all, 1 any, 2 ballot; membermask) over the predicates
// preds[k][32]; lanes outside the mask write -1.
__global__ void probe_vote_kernel(gptr<const int> cases, gptr<const int> preds, gptr<int> out) {
  const int k = blockIdx.x, l = threadIdx.x, mode = cases[k * 2];
  const unsigned mask = static_cast<unsigned>(cases[k * 2 + 1]);
  int v = -1;
  if (mask & (1u << l)) {
    const int pred = preds[k * 32 + l];
    if (mode == 0) v = __all_sync(mask, pred);
    else if (mode == 1) v = __any_sync(mask, pred);
    else v = static_cast<int>(__ballot_sync(mask, pred));
  }
  out[k * 32 + l] = v;
}

inline void probe_vote(const int* cases, const int* preds, int* out, int ncases) {
  launch("probe_vote", probe_vote_kernel, LaunchConfig{dim3(ncases), dim3(32), 0, nullptr}, gbuf(cases, ncases * 2),
         gbuf(preds, ncases * 32), gbuf(out, ncases * 32));
}

// 64-bit shuffles move both 32-bit halves with the same lane selection: out = xor-shuffled vals.
__global__ void probe_shfl64_kernel(gptr<const double> vals, gptr<double> out, int lane_mask) {
  const int l = threadIdx.x;
  out[l] = __shfl_xor_sync(0xffffffffu, static_cast<double>(vals[l]), lane_mask);
}

inline void probe_shfl64(const double* vals, double* out, int lane_mask) {
  launch("probe_shfl64", probe_shfl64_kernel, LaunchConfig{dim3(1), dim3(32), 0, nullptr}, gbuf(vals, 32),
         gbuf(out, 32), lane_mask);
}

// Conversions (docs/emulator.md section 3.5), one element per thread: f16/bf16 bits, their exact widening, the packing
// of (x[i], x[n-1-i]) (pack_f16 is 0 where pack2 disagrees with pack_halves of the two conversions)
// and fast_exp2 (passed through the bit-cast intrinsics).
struct ConvertOut {
  gptr<uint16_t> f16, bf16;
  gptr<float> f16_back, bf16_back, exp2;
  gptr<uint32_t> pack_f16, pack_bf16;
};

__global__ void probe_convert_kernel(gptr<const float> x, int n, ConvertOut o) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float v = x[i], w = x[n - 1 - i];
  const half_t h = from_float<half_t>(v);
  const bf16_t bf = from_float<bf16_t>(v);
  o.f16[i] = h.bits;
  o.bf16[i] = bf.bits;
  o.f16_back[i] = to_float(h);
  o.bf16_back[i] = to_float(bf);
  o.exp2[i] = __uint_as_float(__float_as_uint(fast_exp2(v)));
  o.pack_f16[i] = pack2<half_t>(v, w) == pack_halves(h.bits, from_float<half_t>(w).bits) ? pack2<half_t>(v, w) : 0u;
  o.pack_bf16[i] = pack2<bf16_t>(v, w);
}

inline void probe_convert(const float* x, int n, uint16_t* f16, uint16_t* bf16, float* f16_back, float* bf16_back,
                          float* ex2, uint32_t* pack_f16, uint32_t* pack_bf16) {
  const std::size_t m = std::size_t(n);
  const ConvertOut o{gbuf(f16, m),       gbuf(bf16, m),     gbuf(f16_back, m), gbuf(bf16_back, m),
                     gbuf(ex2, m),       gbuf(pack_f16, m), gbuf(pack_bf16, m)};
  launch("probe_convert", probe_convert_kernel, LaunchConfig{dim3((n + 255) / 256), dim3(256), 0, nullptr}, gbuf(x, m),
         n, o);
}

// cp.async zero-fill: lane l copies 16 bytes with src-size l % 17 (0..16); a src-size of 0 with a
// source far outside the buffer must not be read.
__global__ void probe_zfill_kernel(gptr<const unsigned char> src, gptr<unsigned char> out) {
  sptr<unsigned char> s = dynamic_smem<unsigned char>();
  const int l = threadIdx.x, size = l % 17;
  cp_async<16>(s + 16 * l, size ? src + 16 * l : src + (1 << 24), size);
  cp_async<8>(s + 512 + 8 * l, src + 8 * l, 8);
  cp_async<4>(s + 768 + 4 * l, src + 4 * l, l % 2 ? 4 : 0);
  cp_async_wait_all();  // commits the copies above and waits for them
  __syncthreads();
  for (int i = l; i < 896; i += 32) out[i] = s[i];
}

inline void probe_zfill(const unsigned char* src, unsigned char* out) {
  launch("probe_zfill", probe_zfill_kernel, LaunchConfig{dim3(1), dim3(32), 896, nullptr}, gbuf(src, 512),
         gbuf(out, 896));
}

// Float atomics from many blocks: acc[j] += 1 for every thread with tid % nslots == j.
__global__ void probe_atomic_kernel(gptr<float> acc, int nslots) {
  atomicAdd(acc + int(threadIdx.x) % nslots, 1.0f);
}

inline void probe_atomic(float* acc, int nslots, int nblocks) {
  launch("probe_atomic", probe_atomic_kernel, LaunchConfig{dim3(nblocks), dim3(256), 0, nullptr},
         gbuf(acc, std::size_t(nslots)), nslots);
}

// Thread and block indices of a 3-D launch: per (block, thread) the 6 indices, the thread index of
// its warp's lane 0 (lane = linear thread index % 32) and the block size. Blocks whose linear index
// is >= oob_from read past the end of `out` (to check which failing block gets reported).
__global__ void probe_index_kernel(gptr<int> out, int oob_from) {
  const int nthreads = int(blockDim.x * blockDim.y * blockDim.z);
  const int tid = int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
  const int block = int(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));
  const int leader = __shfl_sync(0xffffffffu, tid, 0);
  gptr<int> o = out + (std::ptrdiff_t(block) * nthreads + tid) * 8;
  const int v[8] = {int(threadIdx.x), int(threadIdx.y), int(threadIdx.z), int(blockIdx.x),
                    int(blockIdx.y),  int(blockIdx.z),  leader,           nthreads};
  for (int i = 0; i < 8; ++i) o[i] = v[i];
  if (block >= oob_from) o[-(std::ptrdiff_t(block) * nthreads + tid) * 8 - 1] = 0;
}

inline void probe_index(int* out, dim3 grid, dim3 block, int oob_from) {
  const std::size_t n = std::size_t(grid.x) * grid.y * grid.z * block.x * block.y * block.z * 8;
  launch("probe_index", probe_index_kernel, LaunchConfig{grid, block, 0, nullptr}, gbuf(out, n), oob_from);
}

// Scheduling order: every thread appends its index to a global log without synchronisation (a
// race on a GPU): the log is the order in which the emulator ran the threads.
__global__ void probe_order_kernel(gptr<int> log) {
  const int pos = log[0];
  log[0] = pos + 1;
  log[1 + pos] = int(threadIdx.x);
}

inline void probe_order(int* log, int nthreads) {
  launch("probe_order", probe_order_kernel, LaunchConfig{dim3(1), dim3(nthreads), 0, nullptr},
         gbuf(log, std::size_t(nthreads) + 1));
}

// Timing: 4 warps, each runs `iters` dependent mma.m16n8k16 on register data.
__global__ void bench_mma_kernel(gptr<float> out, int iters) {
  const int l = threadIdx.x % 32;
  uint32_t a[4], b[2];
  for (int i = 0; i < 4; ++i) a[i] = pack2<half_t>(0.01f * float(l + i), -0.02f * float(i));
  for (int i = 0; i < 2; ++i) b[i] = pack2<half_t>(0.5f, 0.25f * float(l % 4 + i));
  float acc[4] = {0, 0, 0, 0};
  for (int it = 0; it < iters; ++it) mma_m16n8k16<half_t>(acc, a, b, acc);
  for (int i = 0; i < 4; ++i) out[int(threadIdx.x) * 4 + i] = acc[i];
}

inline void bench_mma(float* out, int warps, int iters) {
  launch("bench_mma", bench_mma_kernel, LaunchConfig{dim3(1), dim3(32 * warps), 0, nullptr},
         gbuf(out, std::size_t(warps) * 128), iters);
}

// FlashAttention-2 tile: S = Q·Kᵀ (Q 16×16, K 32×16) through ldmatrix.x4 (Q) and
// ldmatrix.x4 variant 1 (K); P = S rounded to T is taken from the S accumulators as the A operand
// (register reuse, no shared-memory round trip); O = P·V (V 32×16) through ldmatrix.x4.trans.
// Q, K, V stream into padded shared memory with cp.async. s is 16×32, o is 16×16 (row-major).
constexpr int kTileLd = 24;  // padded shared row stride (elements)

template <class T>
__global__ void probe_attention_tile_kernel(gptr<const T> q, gptr<const T> k, gptr<const T> v, gptr<float> s,
                                            gptr<float> o) {
  sptr<T> sq = dynamic_smem<T>();
  sptr<T> sk = sq + 16 * kTileLd, sv = sk + 32 * kTileLd;
  const int l = threadIdx.x, g = l >> 2, t = l & 3;
  for (int c = l; c < 16 * 2; c += 32) cp_async<16>(sq + (c / 2) * kTileLd + (c % 2) * 8, q + c * 8);
  for (int c = l; c < 32 * 2; c += 32) {
    cp_async<16>(sk + (c / 2) * kTileLd + (c % 2) * 8, k + c * 8);
    cp_async<16>(sv + (c / 2) * kTileLd + (c % 2) * 8, v + c * 8);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  uint32_t qa[4], kb[4][2];
  ldmatrix_x4(qa[0], qa[1], qa[2], qa[3], sq + (l % 16) * kTileLd + (l / 16) * 8);
  for (int np = 0; np < 2; ++np)
    ldmatrix_x4(kb[2 * np][0], kb[2 * np][1], kb[2 * np + 1][0], kb[2 * np + 1][1],
                sk + (16 * np + l % 8 + (l / 16) * 8) * kTileLd + ((l / 8) % 2) * 8);
  float acc_s[4][4];
  for (int nt = 0; nt < 4; ++nt) {
    const float zero[4] = {0, 0, 0, 0};
    mma_m16n8k16<T>(acc_s[nt], qa, kb[nt], zero);
    for (int i = 0; i < 4; ++i) s[(g + (i >= 2 ? 8 : 0)) * 32 + nt * 8 + 2 * t + (i & 1)] = acc_s[nt][i];
  }

  float acc_o[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
  for (int kk = 0; kk < 2; ++kk) {
    const uint32_t pa[4] = {pack2<T>(acc_s[2 * kk][0], acc_s[2 * kk][1]), pack2<T>(acc_s[2 * kk][2], acc_s[2 * kk][3]),
                            pack2<T>(acc_s[2 * kk + 1][0], acc_s[2 * kk + 1][1]),
                            pack2<T>(acc_s[2 * kk + 1][2], acc_s[2 * kk + 1][3])};
    uint32_t vb[2][2];
    ldmatrix_x4_trans(vb[0][0], vb[0][1], vb[1][0], vb[1][1], sv + (16 * kk + l % 16) * kTileLd + (l / 16) * 8);
    for (int dt = 0; dt < 2; ++dt) mma_m16n8k16<T>(acc_o[dt], pa, vb[dt], acc_o[dt]);
  }
  for (int dt = 0; dt < 2; ++dt)
    for (int i = 0; i < 4; ++i) o[(g + (i >= 2 ? 8 : 0)) * 16 + dt * 8 + 2 * t + (i & 1)] = acc_o[dt][i];
}

template <class T>
void probe_attention_tile(const T* q, const T* k, const T* v, float* s, float* o) {
  launch("probe_attention_tile", probe_attention_tile_kernel<T>,
         LaunchConfig{dim3(1), dim3(32), std::size_t(80 * kTileLd) * sizeof(T), nullptr}, gbuf(q, 256), gbuf(k, 512),
         gbuf(v, 512), gbuf(s, 512), gbuf(o, 256));
}

}  // namespace fae::emu_test
