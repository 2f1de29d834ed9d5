// Tiled matrix multiply C = A·B written only against the primitives: cp.async double buffering
// (with zero-fill for ragged edges), ldmatrix (A plain, B .trans) and mma.m16n8k16.
// A: M×K row-major (lda), B: K×N row-major (ldb), elements half_t or bf16_t; C: M×N float (ldc).
// Leading dimensions must be multiples of 8 elements and A/B 16-byte aligned (cp.async of 16 bytes);
// M, N, K are arbitrary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "cuda/launch.cuh"

namespace fae::emu_test {

constexpr int kMmBM = 64, kMmBN = 64, kMmBK = 32;  // block tile
constexpr int kMmThreads = 128;                    // 4 warps as 2×2, 32×32 each
constexpr int kMmLdA = kMmBK + 8;                  // padded shared row strides (elements)
constexpr int kMmLdB = kMmBN + 8;
constexpr int kMmStage = kMmBM * kMmLdA + kMmBK * kMmLdB;  // elements per pipeline stage
constexpr std::size_t kMmSmemBytes = 2 * kMmStage * 2;

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

// One stage: the A tile (BM×BK) and the B tile (BK×BN) in 16-byte chunks; chunks past the matrix
// edge read only their valid bytes (src-size) and zero-fill the rest.
template <class T>
__device__ __forceinline__ void matmul_load_stage(sptr<T> stage, gptr<const T> A, int lda, gptr<const T> B, int ldb,
                                                  int M, int N, int K, int m0, int n0, int k0) {
  for (int c = threadIdx.x; c < kMmBM * (kMmBK / 8); c += kMmThreads) {
    const int r = c / (kMmBK / 8), col = c % (kMmBK / 8) * 8;
    const int gr = m0 + r, gc = k0 + col;
    const int valid = (gr < M && gc < K) ? imin(8, K - gc) : 0;
    cp_async<16>(stage + r * kMmLdA + col, A + (valid ? std::ptrdiff_t(gr) * lda + gc : 0), valid * 2);
  }
  sptr<T> sb = stage + kMmBM * kMmLdA;
  for (int c = threadIdx.x; c < kMmBK * (kMmBN / 8); c += kMmThreads) {
    const int r = c / (kMmBN / 8), col = c % (kMmBN / 8) * 8;
    const int gr = k0 + r, gc = n0 + col;
    const int valid = (gr < K && gc < N) ? imin(8, N - gc) : 0;
    cp_async<16>(sb + r * kMmLdB + col, B + (valid ? std::ptrdiff_t(gr) * ldb + gc : 0), valid * 2);
  }
}

template <class T>
__global__ void __launch_bounds__(kMmThreads)
    matmul_kernel(gptr<const T> A, int lda, gptr<const T> B, int ldb, gptr<float> C, int ldc, int M, int N, int K) {
  sptr<T> smem = dynamic_smem<T>();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int wm = warp / 2, wn = warp % 2;
  const int m0 = blockIdx.y * kMmBM, n0 = blockIdx.x * kMmBN;
  const int ktiles = (K + kMmBK - 1) / kMmBK;

  float acc[2][4][4];
  for (int mi = 0; mi < 2; ++mi)
    for (int ni = 0; ni < 4; ++ni)
      for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0.0f;

  matmul_load_stage(smem, A, lda, B, ldb, M, N, K, m0, n0, 0);
  cp_async_commit();
  for (int kt = 0; kt < ktiles; ++kt) {
    if (kt + 1 < ktiles)
      matmul_load_stage(smem + ((kt + 1) & 1) * kMmStage, A, lda, B, ldb, M, N, K, m0, n0, (kt + 1) * kMmBK);
    cp_async_commit();
    cp_async_wait<1>();  // this thread's copies of stage kt have landed ...
    __syncthreads();     // ... and everyone else's are visible
    sptr<T> sa = smem + (kt & 1) * kMmStage;
    sptr<T> sb = sa + kMmBM * kMmLdA;
#pragma unroll
    for (int kk = 0; kk < kMmBK; kk += 16) {
      uint32_t a[2][4], b[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
        ldmatrix_x4(a[mi][0], a[mi][1], a[mi][2], a[mi][3],
                    sa + (wm * 32 + mi * 16 + lane % 16) * kMmLdA + kk + (lane / 16) * 8);
#pragma unroll
      for (int nj = 0; nj < 2; ++nj)
        ldmatrix_x4_trans(b[2 * nj][0], b[2 * nj][1], b[2 * nj + 1][0], b[2 * nj + 1][1],
                          sb + (kk + lane % 16) * kMmLdB + wn * 32 + nj * 16 + (lane / 16) * 8);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_m16n8k16<T>(acc[mi][ni], a[mi], b[ni], acc[mi][ni]);
    }
    __syncthreads();  // the stage is refilled by the next iteration's copies
  }

  const int g = lane >> 2, t = lane & 3;
  for (int mi = 0; mi < 2; ++mi)
    for (int ni = 0; ni < 4; ++ni)
      for (int i = 0; i < 4; ++i) {
        const int row = m0 + wm * 32 + mi * 16 + g + (i >= 2 ? 8 : 0);
        const int col = n0 + wn * 32 + ni * 8 + 2 * t + (i & 1);
        if (row < M && col < N) C[std::ptrdiff_t(row) * ldc + col] = acc[mi][ni][i];
      }
}

template <class T>
void matmul(const T* A, int lda, const T* B, int ldb, float* C, int ldc, int M, int N, int K, cudaStream_t stream) {
  if (M <= 0 || N <= 0 || K <= 0) throw std::invalid_argument("matmul: M, N, K must be positive");
  if (lda < K || ldb < N || ldc < N || lda % 8 || ldb % 8)
    throw std::invalid_argument("matmul: lda >= K, ldb >= N, ldc >= N, lda and ldb multiples of 8");
  if (reinterpret_cast<std::uintptr_t>(A) % 16 || reinterpret_cast<std::uintptr_t>(B) % 16)
    throw std::invalid_argument("matmul: A and B must be 16-byte aligned");
  const dim3 grid((N + kMmBN - 1) / kMmBN, (M + kMmBM - 1) / kMmBM);
  launch("matmul", matmul_kernel<T>, LaunchConfig{grid, dim3(kMmThreads), kMmSmemBytes, stream},
         gbuf(A, std::size_t(M - 1) * lda + K), lda, gbuf(B, std::size_t(K - 1) * ldb + N), ldb,
         gbuf(C, std::size_t(M - 1) * ldc + N), ldc, M, N, K);
}

}  // namespace fae::emu_test
