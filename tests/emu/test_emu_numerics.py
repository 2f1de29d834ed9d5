"""Numerics of the emulated primitives: f32 -> f16/bf16 conversions at the overflow and subnormal
edges (docs/emulator.md section 3.5), packing order, exact widening, ex2, mma rounding (exact and
hardware numerics modes), cp.async zero-fill, atomics."""

from __future__ import annotations

import os
import subprocess
import sys

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


def exp2_inputs(rng):
    return np.concatenate([rng.uniform(-130, 127.9, 5000).astype(np.float32),
                           np.array([0.0, -0.0, -np.inf, np.inf, 128.5, -149.0, 127.9, 1e-40], np.float32)])


def ulps_from_correctly_rounded(e, ref):
    """Distance in float32 steps between e and the correctly rounded ref (both positive)."""
    return np.abs(e.view(np.int32).astype(np.int64) - ref.astype(np.float32).view(np.int32).astype(np.int64))


def test_fast_exp2(emu, rng):
    """ex2.approx.ftz.f32: PTX allows 2 ulp from the correctly rounded result; the exact mode gives
    the correctly rounded value itself."""
    x = exp2_inputs(rng)
    e = emu.convert(x)["exp2"]
    ref = np.exp2(x.astype(np.float64))
    normal = (ref >= 2.0 ** -126) & (ref < 2.0 ** 128)
    dist = ulps_from_correctly_rounded(e[normal], ref[normal])
    assert dist.max() <= (0 if emu.config()["hw_numerics"] is None else 2), dist.max()
    assert (e[ref < 2.0 ** -126] == 0).all(), "ftz: subnormal results flush to zero"
    assert list(e[-8:-4]) == [1.0, 1.0, 0.0, np.inf] and np.isinf(e[-4]) and e[-3] == 0 and e[-1] == 1


@pytest.mark.parametrize("seed", (0, 1, 12345))
def test_fast_exp2_hardware_mode(emu, rng, seed):
    """Hardware numerics mode: within 2 ulp of the correctly rounded result, off it for some x,
    the same for the same seed and x; the special values stay exact."""
    emu.set_hw_numerics(seed)
    x = exp2_inputs(rng)
    e = emu.convert(x)["exp2"]
    np.testing.assert_array_equal(e, emu.convert(x)["exp2"])
    ref = np.exp2(x.astype(np.float64))
    normal = (ref >= 2.0 ** -126) & (ref < 2.0 ** 128)
    dist = ulps_from_correctly_rounded(e[normal], ref[normal])
    assert dist.max() == 2 and (dist == 0).any()
    assert list(e[-8:-4]) == [1.0, 1.0, 0.0, np.inf] and np.isinf(e[-4]) and e[-3] == 0 and e[-1] == 1
    emu.set_hw_numerics(seed + 1)
    assert (emu.convert(x)["exp2"] != e).any()


def rounds_once_operands():
    """A[0][0..1] = B[0..1][0] = 2^-12 and C[0][0] = 1: D[0][0] = 1 + 2^-24 + 2^-24."""
    tiny = int(pm.f16_bits(2.0 ** -12))
    a = np.zeros((32, 4), np.uint32)
    b = np.zeros((32, 2), np.uint32)
    a[0, 0] = pm.pack(tiny, tiny)  # lane 0 (g = t = 0): A[0][0], A[0][1]
    b[0, 0] = pm.pack(tiny, tiny)  # B[0][0], B[1][0]
    c = np.zeros((32, 4), np.float32)
    c[0, 0] = 1.0  # C[0][0]
    return a, b, c


@pytest.mark.usefixtures("exact_numerics")
def test_mma_rounds_once(emu):
    """Exact mode: two f32 roundings would give 1.0; the exact sum rounds to 1 + 2^-23."""
    d = emu.mma(*rounds_once_operands(), "float16", 16)
    assert d[0, 0] == np.float32(1.0 + 2.0 ** -23)


def test_mma_hardware_mode_truncates_in_seeded_order(emu):
    """Hardware numerics mode: 1 + 2^-24 first truncates to 1 (then 1 again); 2^-24 + 2^-24 first
    is 2^-23, then exactly 1 + 2^-23. Which happens depends on the seeded order."""
    seen = set()
    for seed in range(32):
        emu.set_hw_numerics(seed)
        d = emu.mma(*rounds_once_operands(), "float16", 16)
        np.testing.assert_array_equal(d, emu.mma(*rounds_once_operands(), "float16", 16))
        seen.add(float(d[0, 0]))
    assert seen == {1.0, 1.0 + 2.0 ** -23}


@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
@pytest.mark.parametrize("k", (16, 8))
def test_mma_hardware_mode_error_bound(emu, rng, dtype, k):
    """Each of the k additions truncates by less than one ulp of its result, at most 2^-23 of the
    sum of the terms' magnitudes; random data shows it off the exactly rounded result."""
    A = (rng.standard_normal((16, k)) * 4).astype(np.float32)
    B = (rng.standard_normal((k, 8)) * 4).astype(np.float32)
    C = (rng.standard_normal((16, 8)) * 64).astype(np.float32)
    Ab, Bb = pm.to_bits(A, dtype), pm.to_bits(B, dtype)
    a, b = pm.fragments(Ab, Bb, k)
    c = np.array([[C[pm.c_frag(l, i)] for i in range(4)] for l in range(32)], np.float32)
    A64, B64 = pm.bits_to_f64(Ab, dtype), pm.bits_to_f64(Bb, dtype)
    exact = A64 @ B64 + C.astype(np.float64)
    magnitude = np.abs(A64) @ np.abs(B64) + np.abs(C.astype(np.float64))
    emu.set_hw_numerics(7)
    d = emu.mma(a, b, c, dtype, k)
    D = np.zeros((16, 8))
    for lane in range(32):
        for i in range(4):
            D[pm.c_frag(lane, i)] = d[lane, i]
    assert (np.abs(D - exact) <= k * 2.0 ** -23 * magnitude).all()
    assert (D != exact.astype(np.float32)).any()


@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
@pytest.mark.parametrize("k", (16, 8))
def test_mma_hardware_mode_is_a_function_of_the_operands(emu, rng, dtype, k):
    """Hardware numerics mode: like a tensor core's fixed adder tree, the same mma on the same
    operands gives the same bits in every block, every warp and every repetition (kernels rely on
    recomputing a product bit for bit), while the truncated sums differ from the exact mode's."""
    A = (rng.standard_normal((16, k)) * 4).astype(np.float32)
    B = (rng.standard_normal((k, 8)) * 4).astype(np.float32)
    C = (rng.standard_normal((16, 8)) * 64).astype(np.float32)
    a, b = pm.fragments(pm.to_bits(A, dtype), pm.to_bits(B, dtype), k)
    c = np.array([[C[pm.c_frag(l, i)] for i in range(4)] for l in range(32)], np.float32)
    emu.set_hw_numerics(None)
    exact = emu.mma(a, b, c, dtype, k)
    for seed in (3, 4):
        emu.set_hw_numerics(seed)
        d = emu.mma_repeated(a, b, c, dtype, k, blocks=3, warps=4, repeats=5)
        assert (d == d[0, 0, 0]).all(), f"seed {seed}: results differ between blocks, warps or repetitions"
        assert (d[0, 0, 0] != exact).any()


def test_hardware_mode_from_environment(emu):
    """FAE_EMU_HW_NUMERICS=<seed> turns the mode on; anything but a seed is a clear error."""
    load = ("import importlib.util as u\n"
            f"s = u.spec_from_file_location('_emu', {emu.__file__!r})\n"
            "e = u.module_from_spec(s)\ns.loader.exec_module(e)\n")
    code = load + "try:\n print(e.config()['hw_numerics'])\nexcept ValueError as x:\n print(x)"
    for value, expect in (("17", "17"), ("", "None"), ("1e3", "FAE_EMU_HW_NUMERICS='1e3' is not a seed")):
        env = dict(os.environ, FAE_EMU_HW_NUMERICS=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.startswith(expect), (value, out.stdout, out.stderr)


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
