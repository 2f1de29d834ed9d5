"""Numerics of the emulated primitives: f32 -> f16/bf16 conversions at the overflow and subnormal
edges (docs/emulator.md section 3.5), packing order, exact widening, ex2, mma rounding, cp.async zero-fill, atomics."""

from __future__ import annotations

import numpy as np
import pytest

import ptx_model as pm


def edge_values(rng):
    xs = [rng.standard_normal(20000).astype(np.float32) * np.float32(3000),
          (rng.standard_normal(20000) * 1e-5).astype(np.float32)]
    specials = [0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0, 65536.0, 1e9, -1e9, 5.96e-8, 2.98e-8, 2.99e-8,
                -2.98e-8, 6.1e-5, 6.104e-5, 1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, np.inf, -np.inf, 3.4e38, 1e-45]
    return np.concatenate(xs + [np.array(specials, np.float32)])


def test_f16_conversion_bit_exact_vs_numpy(emu, rng):
    x = edge_values(rng)
    r = emu.convert(x)
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16)
    np.testing.assert_array_equal(r["f16"], ref.view(np.uint16))
    np.testing.assert_array_equal(r["f16_back"], ref.astype(np.float32))


def test_f16_overflow_and_subnormal_edges(emu):
    x = np.array([65504.0, 65519.99, 65520.0, -65520.0, 2.0 ** -24, 2.0 ** -25, 1.5 * 2.0 ** -25, 2.0 ** -14,
                  2.0 ** -14 - 2.0 ** -25], np.float32)
    h = emu.convert(x)["f16"]
    assert list(h) == [0x7BFF, 0x7BFF, 0x7C00, 0xFC00, 0x0001, 0x0000, 0x0001, 0x0400, 0x0400]


def test_nan_becomes_canonical(emu):
    r = emu.convert(np.array([np.nan, -np.nan], np.float32))
    assert list(r["f16"]) == [0x7FFF, 0x7FFF] and list(r["bf16"]) == [0x7FFF, 0x7FFF]
    assert np.isnan(r["f16_back"]).all() and np.isnan(r["bf16_back"]).all()


def test_bf16_round_to_nearest_even(emu, rng):
    x = edge_values(rng)
    x = x[np.isfinite(x) & (np.abs(x) < 3e38)]
    r = emu.convert(x)
    np.testing.assert_array_equal(r["bf16"], pm.bf16_bits(x))
    np.testing.assert_array_equal(r["bf16_back"], (r["bf16"].astype(np.uint32) << 16).view(np.float32))
    ties = np.array([0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x00008000, 0x00018000], np.uint32).view(np.float32)
    assert list(emu.convert(ties)["bf16"]) == [0x3F80, 0x3F82, 0x7F80, 0x0000, 0x0002]


def test_packing_order_first_argument_low(emu):
    x = np.array([1.0, 2.0], np.float32)  # element 0 is packed with x[n-1-0] = 2.0
    r = emu.convert(x)
    # pack2(1.0, 2.0): 1.0 low; this is PTX `cvt.rn.f16x2.f32 d, 2.0, 1.0` (first source high)
    assert r["pack_f16"][0] == 0x40003C00 and r["pack_f16"][1] == 0x3C004000
    assert r["pack_bf16"][0] == 0x40003F80


def test_fast_exp2(emu, rng):
    x = np.concatenate([rng.uniform(-130, 127.9, 5000).astype(np.float32),
                        np.array([0.0, -0.0, -np.inf, np.inf, 128.5, -149.0, 127.9, 1e-40], np.float32)])
    e = emu.convert(x)["exp2"]
    ref = np.exp2(x.astype(np.float64))
    normal = (ref >= 2.0 ** -126) & (ref < 2.0 ** 128)
    ulp = np.spacing(ref[normal].astype(np.float32)).astype(np.float64)
    assert (np.abs(e[normal] - ref[normal]) <= 2 * ulp).all(), "within the 2 ulp of ex2.approx"
    assert (e[ref < 2.0 ** -126] == 0).all(), "ftz: subnormal results flush to zero"
    assert list(e[-8:-4]) == [1.0, 1.0, 0.0, np.inf] and np.isinf(e[-4]) and e[-3] == 0 and e[-1] == 1


def test_mma_rounds_once(emu):
    """1 + 2^-24 + 2^-24: two f32 roundings would give 1.0; the exact sum rounds to 1 + 2^-23."""
    one, tiny = int(pm.f16_bits(1.0)), int(pm.f16_bits(2.0 ** -12))
    a = np.zeros((32, 4), np.uint32)
    b = np.zeros((32, 2), np.uint32)
    for lane in range(32):
        g, t = pm.gt(lane)
        if g == 0 and t == 0:
            a[lane, 0] = pm.pack(tiny, tiny)  # A[0][0], A[0][1] = 2^-12
        if g == 0 and t == 0:
            b[lane, 0] = pm.pack(tiny, tiny)  # B[0][0], B[1][0] = 2^-12
    c = np.zeros((32, 4), np.float32)
    c[0, 0] = 1.0  # C[0][0]
    d = emu.mma(a, b, c, "float16", 16)
    assert d[0, 0] == np.float32(1.0 + 2.0 ** -23)
    assert one  # f16 1.0 exists (sanity of the helper)


def test_cp_async_zero_fill(emu, rng):
    src = rng.integers(1, 256, size=512, dtype=np.uint8)
    out = emu.zfill(src)
    for l in range(32):
        n = l % 17
        np.testing.assert_array_equal(out[16 * l: 16 * l + n], src[16 * l: 16 * l + n])
        assert not out[16 * l + n: 16 * l + 16].any()
    np.testing.assert_array_equal(out[512:768], src[:256])
    for l in range(32):
        chunk = out[768 + 4 * l: 772 + 4 * l]
        np.testing.assert_array_equal(chunk, src[4 * l: 4 * l + 4] if l % 2 else 0)


@pytest.mark.parametrize("threads", (1, 2))
def test_float_atomic_add_from_parallel_blocks(emu, threads):
    emu.configure(threads=threads)
    acc = emu.atomic(nslots=7, nblocks=40)
    counts = np.bincount(np.arange(256) % 7, minlength=7) * 40
    np.testing.assert_array_equal(acc, counts.astype(np.float32))
