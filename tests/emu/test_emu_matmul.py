"""The test tiled matmul (cp.async double buffering + ldmatrix + mma, written only against the
primitives) run on the emulator against numpy, on odd sizes: proof that the pieces compose."""

from __future__ import annotations

import time

import numpy as np
import pytest

import ptx_model as pm


def aligned_view(bits: np.ndarray, ld: int) -> np.ndarray:
    """A (rows × cols) uint16 view with row stride `ld` elements, 16-byte aligned."""
    rows, cols = bits.shape
    raw = np.zeros(rows * ld + 8, np.uint16)
    start = (-raw.ctypes.data % 16) // 2
    buf = raw[start: start + rows * ld].reshape(rows, ld)
    buf[:, :cols] = bits
    return buf[:, :cols]


def run(emu, rng, M, N, K, dtype, pad=0):
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    a, b = pm.to_bits(A, dtype), pm.to_bits(B, dtype)
    lda, ldb = (K + 7) // 8 * 8 + pad, (N + 7) // 8 * 8 + pad
    av, bv = aligned_view(a, lda), aligned_view(b, ldb)
    t0 = time.perf_counter()
    c = emu.matmul(av, bv, dtype)
    elapsed = time.perf_counter() - t0
    A64, B64 = pm.bits_to_f64(a, dtype), pm.bits_to_f64(b, dtype)
    ref = A64 @ B64
    bound = 4 * K * 2.0 ** -24 * (np.abs(A64) @ np.abs(B64)) + 1e-30
    assert c.shape == (M, N)
    assert (np.abs(c - ref) <= bound).all(), np.max(np.abs(c - ref) / bound)
    return elapsed


@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (17, 23, 9), (97, 71, 53), (130, 65, 100)])
def test_matmul_odd_sizes(emu, rng, M, N, K, dtype):
    run(emu, rng, M, N, K, dtype)


def test_matmul_padded_strides_and_seeded_order(emu, rng):
    emu.set_seed(11)
    run(emu, rng, 33, 45, 70, "float16", pad=16)


def test_matmul_rejects_unaligned_leading_dimension(emu):
    a = np.zeros((4, 9), np.uint16)  # lda = 9 is not a multiple of 8
    b = np.zeros((9, 8), np.uint16)
    with pytest.raises(ValueError, match="multiples of 8"):
        emu.matmul(a, b, "float16")


def test_timings(emu, rng, record_property):
    """Reports emulator speed (printed with -s, recorded as test properties); bounds are loose."""
    emu.bench_mma(4, 10)  # warm-up: fiber stacks
    t_mma = min(emu.bench_mma(4, 100) for _ in range(3))
    t_mm = min(run(emu, rng, 128, 128, 128, "float16") for _ in range(3))
    record_property("mma_4warps_x100_s", t_mma)
    record_property("matmul_128_s", t_mm)
    print(f"\nemulator: 4 warps x 100 mma.m16n8k16 = {t_mma * 1e3:.2f} ms; "
          f"matmul 128x128x128 (4 blocks of 4 warps, 64 mma per warp) = {t_mm * 1e3:.1f} ms")
    assert t_mma < 2.0 and t_mm < 20.0
