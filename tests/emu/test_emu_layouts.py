"""Register layouts of the emulated warp instructions, lane by lane, against the PTX closed forms
and the decoded CuTe layouts (docs/emulator.md section 3.2)."""

from __future__ import annotations

import numpy as np
import pytest

import ptx_model as pm

DTYPES = ("float16", "bfloat16")


def one_hot_probe(emu, dtype, k):
    """For every (lane, register, half) put a distinct power-of-two-free marker in A or B and find
    where the emulator's mma sees it: returns {('a'|'b', lane, elem): (row, col)}."""
    found = {}
    nregs = {"a": 4 if k == 16 else 2, "b": 2 if k == 16 else 1}
    one = int(pm.to_bits(1.0, dtype))
    for which in ("a", "b"):
        for r in range(nregs[which]):
            for half in range(2):
                a = np.zeros((32, 4), np.uint32)
                b = np.zeros((32, 2), np.uint32)
                # every lane holds 1.0 in this slot of the probed operand and the other operand is
                # all ones, so D[m][n] counts which (row, col) elements were set
                target = a if which == "a" else b
                target[:, r] = one << (16 * half)
                other = b if which == "a" else a
                other[:, : (2 if which == "a" else 4)] = one | (one << 16)
                d = emu.mma(a, b, np.zeros((32, 4), np.float32), dtype, k)
                D = np.zeros((16, 8))
                for lane in range(32):
                    for i in range(4):
                        D[pm.c_frag(lane, i)] = d[lane, i]
                found[(which, r, half)] = D
    return found


@pytest.mark.usefixtures("exact_numerics")  # bit-exact: the exact mode's single rounding
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", (16, 8))
def test_mma_matches_ptx_formulas_lane_by_lane(emu, rng, dtype, k):
    A = rng.standard_normal((16, k)).astype(np.float32)
    B = rng.standard_normal((k, 8)).astype(np.float32)
    C = rng.standard_normal((16, 8)).astype(np.float32)
    Ab, Bb = pm.to_bits(A, dtype), pm.to_bits(B, dtype)
    a, b = pm.fragments(Ab, Bb, k)
    c = np.array([[C[pm.c_frag(l, i)] for i in range(4)] for l in range(32)], np.float32)
    d = emu.mma(a, b, c, dtype, k)
    ref = pm.bits_to_f64(Ab, dtype) @ pm.bits_to_f64(Bb, dtype) + C.astype(np.float64)
    for lane in range(32):
        for i in range(4):
            # exact products, wide accumulation, one rounding to f32
            assert d[lane, i] == np.float32(ref[pm.c_frag(lane, i)]), (lane, i)


@pytest.mark.parametrize("k", (16, 8))
def test_mma_one_hot_layout(emu, k):
    """Each register half feeds exactly the row/column the PTX formula names (f16)."""
    found = one_hot_probe(emu, "float16", k)
    fa, fb = (pm.a_k16, pm.b_k16) if k == 16 else (pm.a_k8, pm.b_k8)
    for (which, r, half), D in found.items():
        expect = np.zeros((16, 8))
        for lane in range(32):
            if which == "a":
                row, _ = fa(lane, 2 * r + half)
                expect[row, :] += 1  # A[row][col] = 1, B all ones: row gets +1 in every column
            else:
                _, col = fb(lane, 2 * r + half)
                expect[:, col] += 1
        np.testing.assert_array_equal(D, expect, err_msg=f"{which} reg {r} half {half}")


def test_ptx_formulas_equal_cute_traits():
    for lane in range(32):
        for i in range(8):
            assert pm.cute_coord(pm.CUTE_A_16x8x16, lane, i, 16) == pm.a_k16(lane, i)
        for i in range(4):
            n, kk = pm.cute_coord(pm.CUTE_B_16x8x16, lane, i, 8)
            assert (kk, n) == pm.b_k16(lane, i)
            assert pm.cute_coord(pm.CUTE_C_16x8, lane, i, 16) == pm.c_frag(lane, i)
            assert pm.cute_coord(pm.CUTE_C_16x8, lane, i, 16) == pm.a_k8(lane, i)
        for i in range(2):
            n, kk = pm.cute_coord(pm.CUTE_B_16x8x8, lane, i, 8)
            assert (kk, n) == pm.b_k8(lane, i)


@pytest.mark.usefixtures("exact_numerics")  # bit-exact: the exact mode's single rounding
@pytest.mark.parametrize("dtype", DTYPES)
def test_mma_with_cute_built_fragments(emu, rng, dtype):
    """Fragments assembled from the CuTe layouts (independent encoding) give A·B + C."""
    A = rng.standard_normal((16, 16)).astype(np.float32)
    B = rng.standard_normal((16, 8)).astype(np.float32)
    Ab, Bb = pm.to_bits(A, dtype), pm.to_bits(B, dtype)
    a = np.zeros((32, 4), np.uint32)
    b = np.zeros((32, 2), np.uint32)
    for lane in range(32):
        for v in range(8):
            a[lane, v // 2] |= np.uint32(int(Ab[pm.cute_coord(pm.CUTE_A_16x8x16, lane, v, 16)]) << (16 * (v % 2)))
        for v in range(4):
            n, kk = pm.cute_coord(pm.CUTE_B_16x8x16, lane, v, 8)
            b[lane, v // 2] |= np.uint32(int(Bb[kk, n]) << (16 * (v % 2)))
    d = emu.mma(a, b, np.zeros((32, 4), np.float32), dtype, 16)
    ref = pm.bits_to_f64(Ab, dtype) @ pm.bits_to_f64(Bb, dtype)
    for lane in range(32):
        for v in range(4):
            assert d[lane, v] == np.float32(ref[pm.cute_coord(pm.CUTE_C_16x8, lane, v, 16)])


def test_mma_d_aliases_c_and_gathers_before_scatter(emu, rng):
    A = rng.standard_normal((16, 16)).astype(np.float32)
    B = rng.standard_normal((16, 8)).astype(np.float32)
    a, b = pm.fragments(pm.f16_bits(A), pm.f16_bits(B), 16)
    c = rng.standard_normal((32, 4)).astype(np.float32)
    d1 = emu.mma(a, b, c, "float16", 16)
    d2 = emu.mma(a, b, d1, "float16", 16)  # accumulating twice adds A·B twice
    once = d1 - c
    np.testing.assert_allclose(d2, c + 2 * once, rtol=1e-5, atol=1e-5)


def scattered_offsets(rng, base=256):
    return (rng.permutation(64)[:32] * 16 + base).astype(np.int32)


@pytest.mark.parametrize("num", (1, 2, 4))
@pytest.mark.parametrize("trans", (False, True))
def test_ldmatrix_closed_form_scattered_rows(emu, rng, num, trans):
    image = rng.integers(0, 65536, size=(256 + 64 * 16) // 2, dtype=np.uint16)
    offs = scattered_offsets(rng)
    got = emu.ldmatrix(image, offs, num, trans)
    ref = pm.ldmatrix_model(num, trans, offs, image)
    np.testing.assert_array_equal(got[:, :num], ref[:, :num])


@pytest.mark.parametrize("name", sorted(pm.CUTE_LDSM))
def test_ldmatrix_bit_exact_vs_cute_traits(emu, rng, name):
    num, trans, _, _ = pm.CUTE_LDSM[name]
    image = rng.integers(0, 65536, size=(256 + 64 * 16) // 2, dtype=np.uint16)
    offs = scattered_offsets(rng)
    got = emu.ldmatrix(image, offs, num, trans)
    np.testing.assert_array_equal(got[:, :num], pm.ldmatrix_cute(name, offs, image)[:, :num])


@pytest.mark.parametrize("num", (1, 2, 4))
@pytest.mark.parametrize("trans", (False, True))
def test_stmatrix_is_inverse_of_ldmatrix(emu, rng, num, trans):
    n = (256 + 64 * 16) // 2
    offs = scattered_offsets(rng)
    regs = rng.integers(0, 2**32, size=(32, 4), dtype=np.uint64).astype(np.uint32)
    regs[:, num:] = 0
    image = emu.stmatrix(regs, offs, num, trans, n)
    back = emu.ldmatrix(image, offs, num, trans)
    np.testing.assert_array_equal(back[:, :num], regs[:, :num])
    written = np.zeros(n, bool)
    for l in range(8 * num):
        written[offs[l] // 2: offs[l] // 2 + 8] = True
    assert not image[~written].any(), "stmatrix wrote outside the supplied rows"


LD = 40  # padded row stride (elements) of the Q/K/V images


def qkv_image(rng):
    Q, K, V = (rng.integers(0, 65536, size=(16, 32), dtype=np.uint16) for _ in range(3))
    image = np.zeros(3 * 16 * LD, np.uint16)
    for m, base in ((Q, 0), (K, 16 * LD), (V, 32 * LD)):
        image[base: base + 16 * LD].reshape(16, LD)[:, :32] = m
    return Q, K, V, image


def addr(base_rows, r, c):
    return 2 * ((base_rows + r) * LD + c)


def b_frag_expect(lane, get):
    return [pm.pack(get(*pm.b_k16(lane, 2 * j)), get(*pm.b_k16(lane, 2 * j + 1))) for j in range(2)]


def test_qkv_ldmatrix_recipes_give_mma_fragments(emu, rng):
    Q, K, V, image = qkv_image(rng)
    L = range(32)
    for k0 in (0, 16):
        regs = emu.ldmatrix(image, [addr(0, l % 16, k0 + (l // 16) * 8) for l in L], 4, False)
        for lane in L:
            exp = [pm.pack(Q[pm.a_k16(lane, 2 * j)[0], k0 + pm.a_k16(lane, 2 * j)[1]],
                           Q[pm.a_k16(lane, 2 * j + 1)[0], k0 + pm.a_k16(lane, 2 * j + 1)[1]]) for j in range(4)]
            assert list(regs[lane]) == exp, ("Q", lane)
        for n0 in (0, 8):  # K .x2: B[k][n] = K[n0+n][k0+k]
            regs = emu.ldmatrix(image, [addr(16, n0 + l % 8, k0 + ((l // 8) % 2) * 8) for l in L], 2, False)
            for lane in L:
                assert list(regs[lane, :2]) == b_frag_expect(lane, lambda kk, n: K[n0 + n, k0 + kk]), ("K x2", lane)
        regs = emu.ldmatrix(image, [addr(16, l % 8 + (l // 16) * 8, k0 + ((l // 8) % 2) * 8) for l in L], 4, False)
        for lane in L:
            for nt in range(2):
                exp = b_frag_expect(lane, lambda kk, n: K[8 * nt + n, k0 + kk])
                assert list(regs[lane, 2 * nt: 2 * nt + 2]) == exp, ("K x4 v1", lane)
    regs = emu.ldmatrix(image, [addr(16, l % 8, (l // 8) * 8) for l in L], 4, False)
    for lane in L:
        for kc in range(2):
            exp = b_frag_expect(lane, lambda kk, n: K[n, 16 * kc + kk])
            assert list(regs[lane, 2 * kc: 2 * kc + 2]) == exp, ("K x4 v2", lane)
    regs = emu.ldmatrix(image, [addr(16, l % 16, (l // 16) * 8) for l in L], 4, False)
    for lane in L:
        for nt in range(2):
            exp = b_frag_expect(lane, lambda kk, n: K[8 * nt + n, kk])
            assert [regs[lane, nt], regs[lane, 2 + nt]] == exp, ("K x4 v3", lane)
    for n0 in (0, 16):  # V .trans: B[k][n] = V[k][n0+n]
        regs = emu.ldmatrix(image, [addr(32, l % 16, n0 + (l // 16) * 8) for l in L], 4, True)
        for lane in L:
            for dt in range(2):
                exp = b_frag_expect(lane, lambda kk, n: V[kk, n0 + 8 * dt + n])
                assert list(regs[lane, 2 * dt: 2 * dt + 2]) == exp, ("V x4.trans", lane)
        regs = emu.ldmatrix(image, [addr(32, l % 16, n0) for l in L], 2, True)
        for lane in L:
            assert list(regs[lane, :2]) == b_frag_expect(lane, lambda kk, n: V[kk, n0 + n]), ("V x2.trans", lane)


def test_fa2_register_reuse_identity():
    """C fragments of n-tiles 2kk and 2kk+1 are, element for element, the A fragment of block kk."""
    S = np.arange(16 * 32).reshape(16, 32)
    for lane in range(32):
        C = [[S[pm.c_frag(lane, i)[0], 8 * nt + pm.c_frag(lane, i)[1]] for i in range(4)] for nt in range(4)]
        for kk in range(2):
            a_vals = C[2 * kk] + C[2 * kk + 1]
            for i in range(8):
                r, c = pm.a_k16(lane, i)
                assert a_vals[i] == S[r, 16 * kk + c]


@pytest.mark.usefixtures("exact_numerics")  # tolerances of the exact mode's single rounding
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_tile_end_to_end(emu, rng, dtype):
    """S = Q·Kᵀ and O = P·V through cp.async, ldmatrix, mma and the register reuse of P."""
    q, k, v = (pm.to_bits(rng.standard_normal(shape).astype(np.float32), dtype)
               for shape in ((16, 16), (32, 16), (32, 16)))
    s, o = emu.attention_tile(q, k, v, dtype)
    Q, K, V = (pm.bits_to_f64(x, dtype) for x in (q, k, v))
    s_ref = Q @ K.T
    np.testing.assert_allclose(s, s_ref, rtol=1e-6, atol=1e-6)
    p = pm.bits_to_f64(pm.to_bits(s.astype(np.float32), dtype), dtype)  # P rounded to the input type
    np.testing.assert_allclose(o, p @ V, rtol=1e-5, atol=1e-5)


def test_stmatrix_epilogue_recipe(emu):
    """Packed C of two adjacent n-tiles + lane address &O[l%16][(l/16)*8] stores the tile row-major."""
    O = (np.arange(256).reshape(16, 16) + 1000).astype(np.uint16)
    ld = 24
    regs = np.zeros((32, 4), np.uint32)
    for lane in range(32):
        C = [[O[pm.c_frag(lane, i)[0], 8 * nt + pm.c_frag(lane, i)[1]] for i in range(4)] for nt in range(2)]
        regs[lane] = [pm.pack(C[0][0], C[0][1]), pm.pack(C[0][2], C[0][3]),
                      pm.pack(C[1][0], C[1][1]), pm.pack(C[1][2], C[1][3])]
    offs = [2 * ((l % 16) * ld + (l // 16) * 8) for l in range(32)]
    image = emu.stmatrix(regs, offs, 4, False, 16 * ld)
    np.testing.assert_array_equal(image.reshape(16, ld)[:, :16], O)


@pytest.mark.usefixtures("exact_numerics")  # bit-exact: the exact mode's single rounding
def test_mma_subnormal_and_special_inputs(emu, rng):
    """f16 subnormal operands are exact (no flush); Inf and NaN propagate as in IEEE arithmetic."""
    Ab = rng.integers(1, 0x400, size=(16, 16), dtype=np.uint16) | (rng.integers(0, 2, size=(16, 16)) << 15).astype(np.uint16)
    Bb = pm.f16_bits(rng.standard_normal((16, 8)).astype(np.float32) * 1000)
    Ab[3, 5] = 0x7C00  # +Inf
    Ab[9, 2] = 0x7E00  # NaN
    a, b = pm.fragments(Ab, Bb, 16)
    d = emu.mma(a, b, np.zeros((32, 4), np.float32), "float16", 16)
    with np.errstate(invalid="ignore"):
        ref = pm.bits_to_f64(Ab, "float16") @ pm.bits_to_f64(Bb, "float16")
    for lane in range(32):
        for i in range(4):
            r = ref[pm.c_frag(lane, i)]
            if np.isnan(r):
                assert np.isnan(d[lane, i])
            else:
                assert d[lane, i] == np.float32(r), (lane, i)
