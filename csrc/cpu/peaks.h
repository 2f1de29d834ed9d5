// Peak probes of one instruction set (per-ISA source, included by kernels.h): the float32 FMA
// and bfloat16 dot-product throughput of register loops, and the read bandwidth of a buffer far
// larger than any cache. Every thread of the pool runs its share at once (a barrier starts them
// together); each figure is the best of a few timed runs of about 50 ms.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <thread>
#include <utility>

#include "cpu/amx.h"
#include "cpu/backend.h"
#include "cpu/thread_pool.h"
#include "cpu/vec.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fae::cpu::FAE_CPU_ISA {

// Independent accumulator chains per thread: more than FMA latency (4-5 cycles) x FMA ports (2)
// on current x86 and Arm cores, and with the two operands within 16 vector registers.
constexpr int kProbeChains = 12;
constexpr int64_t kProbeBytes = int64_t(256) << 20;  // bandwidth buffer: far beyond any L3 of 2026
constexpr int kProbeReps = 3;

using Clock = std::chrono::steady_clock;

// Runs body(thread) on `threads` threads that start together; returns the seconds from the start
// to the last thread's end. A thread that waits over a second for the others goes ahead alone.
template <class Body>
double timed_together(int threads, const Body& body) {
  std::atomic<int> arrived{0};
  std::atomic<int64_t> end_ns{0};
  Clock::time_point start;
  std::atomic<bool> started{false};
  parallel_for(threads, threads, [&](int64_t t) {
    if (arrived.fetch_add(1) + 1 == threads) {
      start = Clock::now();
      started.store(true);
    }
    const auto give_up = Clock::now() + std::chrono::seconds(1);
    while (!started.load() && Clock::now() < give_up) std::this_thread::yield();
    body(int(t));
    const int64_t ns = Clock::now().time_since_epoch() / std::chrono::nanoseconds(1);
    for (int64_t seen = end_ns.load(); seen < ns && !end_ns.compare_exchange_weak(seen, ns);) {}
  });
  const int64_t start_ns = start.time_since_epoch() / std::chrono::nanoseconds(1);
  return double(end_ns.load() - start_ns) * 1e-9;
}

// Work units per second (units(n) done by body at size n): n doubles until a run takes ~50 ms,
// then the best of kProbeReps runs.
template <class Body>
double best_rate(int threads, double units_per_n, const Body& body) {
  int64_t n = 1 << 12;
  while (timed_together(threads, [&](int t) { body(t, n); }) < 0.05) n *= 2;
  double best = 0.0;
  for (int rep = 0; rep < kProbeReps; ++rep)
    best = std::max(best, units_per_n * double(n) / timed_together(threads, [&](int t) { body(t, n); }));
  return best;
}

// acc = step(acc) on kProbeChains register chains, `iters` times; returns a value depending on all.
template <class V, class Step, size_t... I>
float chains(int64_t iters, const Step& step, std::index_sequence<I...>) {
  typename V::R acc[] = {V::set1(1e-3f * float(I + 1))...};
  for (int64_t it = 0; it < iters; ++it) ((acc[I] = step(acc[I])), ...);
  typename V::R total = V::zero();
  ((total = V::add(total, acc[I])), ...);
  return V::hsum(total);
}

template <class V>
float fma_chains(int64_t iters) {
  const typename V::R x = V::set1(0.999999f), y = V::set1(1e-7f);  // acc stays near y / (1 - x)
  return chains<V>(iters, [&](typename V::R a) { return V::fma(a, x, y); },
                   std::make_index_sequence<kProbeChains>());
}

template <class V>
float dot_chains(int64_t iters) {
  const typename V::R a = V::pairs(V::set1(0.999f), V::set1(0.998f)), b = V::pairs(V::set1(1e-6f), V::set1(2e-6f));
  return chains<V>(iters, [&](typename V::R acc) { return V::dot2(acc, a, b); },
                   std::make_index_sequence<kProbeChains>());
}

// Tile products on four independent accumulator tiles (amx_block's register plan), `iters` times:
// 4 x 16 x 16 x 32 multiply-adds each. Returns an element of the result.
template <class X>
float amx_chains(int64_t iters) {
  alignas(64) float a[kAmxRows * kAmxRows], c[kAmxRows * kAmxRows];
  for (int i = 0; i < kAmxRows * kAmxRows; ++i) a[i] = bits_float(0x3c003c00u);  // bfloat16 pairs (2^-7, 2^-7)
  const AmxTiles<X> on(true);
  X::template zero<0>(); X::template zero<1>(); X::template zero<2>(); X::template zero<3>();
  X::template load<4>(a, 64); X::template load<5>(a, 64); X::template load<6>(a, 64); X::template load<7>(a, 64);
  for (int64_t it = 0; it < iters; ++it) {
    X::template dot<0, 4, 6>();
    X::template dot<1, 4, 7>();
    X::template dot<2, 5, 6>();
    X::template dot<3, 5, 7>();
  }
  X::template store<0>(c, 64);
  return c[0];
}

// Sum of floats [0, n) with four vector accumulators (n a multiple of 4 W).
template <class V>
float stream_sum(const float* x, int64_t n) {
  constexpr int W = V::W;
  typename V::R s0 = V::zero(), s1 = s0, s2 = s0, s3 = s0;
  for (int64_t i = 0; i < n; i += 4 * W) {
    s0 = V::add(s0, V::load(x + i));
    s1 = V::add(s1, V::load(x + i + W));
    s2 = V::add(s2, V::load(x + i + 2 * W));
    s3 = V::add(s3, V::load(x + i + 3 * W));
  }
  return V::hsum(V::add(V::add(s0, s1), V::add(s2, s3)));
}

// n floats in 2 MiB pages where Linux gives them (transparent huge pages, as numpy asks for):
// with 4 KiB pages TLB misses cost a streaming read 10-30% on some machines.
inline float* huge_page_floats(int64_t n) {
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t bytes = (size_t(n) * 4 + kHuge - 1) / kHuge * kHuge;
  void* p = std::aligned_alloc(kHuge, bytes);
  if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__)
  madvise(p, bytes, MADV_HUGEPAGE);  // a hint: without it the probe reads 4 KiB pages
#endif
  return static_cast<float*>(p);
}

template <class V>
PeakProbes measure_peaks(int threads) {
  std::atomic<float> sink{0.f};  // results are kept, so no loop is optimised away
  auto keep = [&](float f) { sink.store(sink.load(std::memory_order_relaxed) + f, std::memory_order_relaxed); };
  PeakProbes r;
  r.threads = threads;
  const double fma_flops = double(threads) * kProbeChains * V::W * 2;  // per iteration, all threads
  r.fma_gflops = best_rate(threads, fma_flops, [&](int, int64_t n) { keep(fma_chains<V>(n)); }) / 1e9;
  if constexpr (V::kBf16Dot) {
    r.bf16_dot_gflops = best_rate(threads, 2 * fma_flops, [&](int, int64_t n) { keep(dot_chains<V>(n)); }) / 1e9;
    r.bf16_dot_native = V::kBf16DotNative;
  }
  if constexpr (AmxOf<V>::value) {
    if constexpr (V::kBf16DotNative) {  // the emulation has no peak worth measuring
      constexpr double kTileFlops = 4.0 * kAmxRows * kAmxRows * 2 * kAmxRows * 2;  // per iteration
      r.amx_bf16_gflops = best_rate(threads, threads * kTileFlops,
                                    [&](int, int64_t n) { keep(amx_chains<typename AmxOf<V>::X>(n)); }) / 1e9;
    }
  }
  // Bandwidth: each thread fills (first touch: its own memory node) and then reads its own slice.
  const int64_t n = kProbeBytes / 4, slice = n / threads / (4 * V::W) * (4 * V::W);
  const std::unique_ptr<float, void (*)(void*)> buf(huge_page_floats(n), std::free);
  float* x = buf.get();
  parallel_for(threads, threads, [&](int64_t t) {
    for (int64_t i = t * slice; i < (t + 1) * slice; ++i) x[i] = float(i & 1023) * 1e-3f;
  });
  double best = 0.0;
  for (int rep = 0; rep < kProbeReps + 2; ++rep) {
    const double s = timed_together(threads, [&](int t) { keep(stream_sum<V>(x + t * slice, slice)); });
    best = std::max(best, double(threads * slice) * 4 / s);
  }
  r.bandwidth_gbs = best / 1e9;
  r.bandwidth_bytes = kProbeBytes;
  r.checksum = sink.load();
  return r;
}

}  // namespace fae::cpu::FAE_CPU_ISA
