// nvcc translation unit of the emulator's test kernels (probes, planted bugs, the test matmul):
// compiled by tests/emu/test_emu_nvcc.py for sm_80 and sm_90 to prove that the primitives header
// and these kernels build for the device, with every primitive used at least once, and do not spill.
#include "planted_bugs.cuh"
#include "probes.cuh"
#include "test_matmul.cuh"

// Never called: odr-uses every launcher so that nvcc compiles every test kernel.
void fae_emu_test_kernels_instantiate() {
  using namespace fae::emu_test;
  using fae::bf16_t;
  using fae::half_t;
  matmul<half_t>(nullptr, 8, nullptr, 8, nullptr, 8, 1, 1, 1, nullptr);
  matmul<bf16_t>(nullptr, 8, nullptr, 8, nullptr, 8, 1, 1, 1, nullptr);
  probe_mma<half_t, 16>(nullptr, nullptr, nullptr, nullptr);
  probe_mma<bf16_t, 16>(nullptr, nullptr, nullptr, nullptr);
  probe_mma<half_t, 8>(nullptr, nullptr, nullptr, nullptr);
  probe_mma<bf16_t, 8>(nullptr, nullptr, nullptr, nullptr);
  probe_matrix<1, false>(false, nullptr, 0, nullptr, nullptr);
  probe_matrix<1, true>(false, nullptr, 0, nullptr, nullptr);
  probe_matrix<2, false>(false, nullptr, 0, nullptr, nullptr);
  probe_matrix<2, true>(false, nullptr, 0, nullptr, nullptr);
  probe_matrix<4, false>(false, nullptr, 0, nullptr, nullptr);
  probe_matrix<4, true>(false, nullptr, 0, nullptr, nullptr);
  probe_shfl(nullptr, nullptr, nullptr, 1);
  probe_shfl64(nullptr, nullptr, 1);
  probe_vote(nullptr, nullptr, nullptr, 1);
  probe_convert(nullptr, 0, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr);
  probe_zfill(nullptr, nullptr);
  probe_atomic(nullptr, 1, 1);
  probe_order(nullptr, 1);
  probe_index(nullptr, dim3(1), dim3(32), 1);
  probe_attention_tile<half_t>(nullptr, nullptr, nullptr, nullptr, nullptr);
  probe_attention_tile<bf16_t>(nullptr, nullptr, nullptr, nullptr, nullptr);
  bench_mma(nullptr, 4, 1);
  run_planted("race_raw", true, nullptr, nullptr);
}
