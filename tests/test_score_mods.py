"""Softcap and ALiBi (docs/semantics.md) against the float64 oracle on the CPU kernels: forward
and gradients for every dtype, both senses of Sq != Sk, causal and windowed masks, GQA, per-head
and per-batch slopes; the variable-length and KV-cache entry points; gradcheck in float64; bad
arguments; the CUDA kernels (emulator) refuse them by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flashattn_ext as fa
import oracle
from attn_testing import assert_close, naive_in, randn

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16

# (softcap, alibi): "head" = slopes (Hq,), "batch" = slopes (B, Hq)
MODS = [(4.0, None), (0.0, "head"), (0.0, "batch"), (3.0, "batch")]
MOD_IDS = ["softcap", "alibi_head", "alibi_batch", "softcap_alibi"]
MASKS = [(False, (-1, -1)), (True, (-1, -1)), (False, (9, 5))]
MASK_IDS = ["full", "causal", "window9_5"]
SHAPES = [(2, 70, 150, 4, 2, 64), (1, 150, 97, 3, 1, 40)]  # (B, Sq, Sk, Hq, Hkv, D): Sq < Sk, Sq > Sk


def slopes_for(gen, kind, b, hq):
    if kind is None:
        return None
    shape = (hq,) if kind == "head" else (b, hq)
    return torch.rand(*shape, generator=gen, dtype=torch.float64).float() * 0.5


def inputs(gen, shape, dtype):
    b, sq, sk, hq, hkv, d = shape
    # scores of a few units: the softcap bends them
    q = (randn(gen, b, sq, hq, d) * 2.5).to(dtype).requires_grad_()
    k = (randn(gen, b, sk, hkv, d) * 2.5).to(dtype).requires_grad_()
    v = randn(gen, b, sk, hkv, d, dtype=dtype).requires_grad_()
    return q, k, v


@pytest.mark.parametrize("dtype", [F32, F64, BF16, F16], ids=str)
@pytest.mark.parametrize("mods", MODS, ids=MOD_IDS)
@pytest.mark.parametrize("mask", MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=["sq<sk", "sq>sk"])
def test_flash_attn_func_matches_oracle(gen, dtype, mods, mask, shape):
    softcap, kind = mods
    causal, window = mask
    q, k, v = inputs(gen, shape, dtype)
    slopes = slopes_for(gen, kind, shape[0], shape[3])
    out = fa.flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=softcap,
                             alibi_slopes=slopes)
    kw = dict(causal=causal, window=window, softcap=softcap, alibi_slopes=slopes)
    ref, ref_lse = oracle.attention(q, k, v, **kw)
    naive = None if dtype in (F32, F64) else naive_in(dtype, q, k, v, **kw)[0]
    assert_close(out, ref, naive, "out")
    dout = randn(gen, *out.shape, dtype=dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    refs = torch.autograd.grad(ref, (q, k, v), dout.double())
    naives = (None,) * 3 if naive is None else torch.autograd.grad(naive, (q, k, v), dout)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, refs, naives):
        assert_close(g, r, n, name)


def test_lse_and_attention_entry_point(gen):
    q, k, v = randn(gen, 2, 33, 3, 16), randn(gen, 2, 45, 3, 16), randn(gen, 2, 45, 3, 16)
    slopes = torch.rand(3, generator=gen) * 0.3
    out, lse = fa.attention(q, k, v, causal=True, softcap=2.0, alibi_slopes=slopes, return_lse=True)
    ref, ref_lse = oracle.attention(q, k, v, causal=True, softcap=2.0, alibi_slopes=slopes)
    assert_close(out, ref, None, "out")
    assert_close(lse, ref_lse.float(), None, "lse")
    # numpy in, numpy out, the same numbers
    out_np = fa.attention(q.numpy(), k.numpy(), v.numpy(), causal=True, softcap=2.0,
                          alibi_slopes=slopes.numpy())
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_array_equal(out_np, out.numpy())


def test_gradcheck_float64(gen):
    q, k, v = (randn(gen, 1, 9, 2, 8, dtype=F64).requires_grad_() for _ in range(3))
    slopes = torch.tensor([0.25, 0.7])

    def f(q, k, v):
        return fa.flash_attn_func(q, k[:, :7], v[:, :7], causal=True, softcap=1.5,
                                  alibi_slopes=slopes)
    assert torch.autograd.gradcheck(f, (q, k, v))


def test_varlen_matches_oracle_per_sequence(gen):
    lens_q, lens_k = [5, 0, 70, 33], [40, 3, 70, 20]
    hq, hkv, d = 4, 2, 32
    cq = torch.tensor(np.cumsum([0] + lens_q), dtype=torch.int32)
    ck = torch.tensor(np.cumsum([0] + lens_k), dtype=torch.int32)
    q = (randn(gen, sum(lens_q), hq, d) * 2).requires_grad_()
    k = (randn(gen, sum(lens_k), hkv, d) * 2).requires_grad_()
    v = randn(gen, sum(lens_k), hkv, d).requires_grad_()
    slopes = torch.rand(len(lens_q), hq, generator=gen) * 0.4
    out = fa.flash_attn_varlen_func(q, k, v, cq, ck, max(lens_q), max(lens_k), causal=True,
                                    softcap=3.0, alibi_slopes=slopes)
    refs = []
    for b in range(len(lens_q)):
        qs, ks = slice(int(cq[b]), int(cq[b + 1])), slice(int(ck[b]), int(ck[b + 1]))
        if lens_q[b]:
            refs.append(oracle.attention(q[None, qs], k[None, ks], v[None, ks], causal=True,
                                         softcap=3.0, alibi_slopes=slopes[b:b + 1])[0][0])
    ref = torch.cat(refs)
    assert_close(out, ref, None, "out")
    dout = randn(gen, *out.shape)
    for name, g, r in zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), dout),
                          torch.autograd.grad(ref, (q, k, v), dout.double())):
        assert_close(g, r, None, name)


def test_kvcache_matches_oracle(gen):
    b, hq, hkv, d, cap = 2, 4, 2, 32, 50
    q = randn(gen, b, 3, hq, d) * 2
    kc, vc = randn(gen, b, cap, hkv, d) * 2, randn(gen, b, cap, hkv, d)
    seqlens = torch.tensor([17, 41], dtype=torch.int32)
    slopes = torch.rand(hq, generator=gen) * 0.4
    out = fa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, causal=True, softcap=5.0,
                                     alibi_slopes=slopes)
    for i in range(b):
        n = int(seqlens[i])
        ref = oracle.attention(q[i:i + 1], kc[i:i + 1, :n], vc[i:i + 1, :n], causal=True,
                               softcap=5.0, alibi_slopes=slopes)[0]
        assert_close(out[i:i + 1], ref, None, f"out[{i}]")


def test_decode_split_kv_matches_oracle(gen):
    """One query row against many keys: the forward splits the keys (split-KV) and merges."""
    q, k, v = randn(gen, 1, 1, 8, 64), randn(gen, 1, 3000, 2, 64), randn(gen, 1, 3000, 2, 64)
    slopes = torch.rand(8, generator=gen) * 0.01
    out = fa.flash_attn_func(q, k, v, softcap=2.0, alibi_slopes=slopes)
    assert_close(out, oracle.attention(q, k, v, softcap=2.0, alibi_slopes=slopes)[0], None, "out")


@pytest.mark.parametrize("kw, error, text", [
    (dict(softcap=-1.0), ValueError, "softcap"),
    (dict(softcap=float("nan")), ValueError, "softcap"),
    (dict(softcap="3"), TypeError, "softcap"),
    (dict(alibi_slopes=torch.ones(3)), ValueError, "alibi_slopes"),
    (dict(alibi_slopes=torch.ones(2, dtype=torch.float64)), ValueError, "float32"),
    (dict(alibi_slopes=torch.ones(3, 2)), ValueError, "alibi_slopes"),
    (dict(alibi_slopes=np.ones(2, np.float32)), TypeError, "alibi_slopes"),
    (dict(alibi_slopes=torch.ones(2, requires_grad=True)), ValueError, "detach"),
    (dict(alibi_slopes=torch.ones(2, 4)[:, ::2]), ValueError, "contiguous"),
])
def test_bad_arguments(gen, kw, error, text):
    q = randn(gen, 2, 5, 2, 8)
    with pytest.raises(error, match=text):
        fa.flash_attn_func(q, q, q, **kw)


def test_emulated_cuda_kernels_refuse_by_name(gen, monkeypatch):
    pytest.importorskip("flashattn_ext._emu", reason="built without the emulator")
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    q = randn(gen, 1, 16, 2, 32, dtype=BF16)
    with pytest.raises(NotImplementedError, match="softcap=2.0.*CPU backend"):
        fa.flash_attn_func(q, q, q, softcap=2.0)
    with pytest.raises(NotImplementedError, match="alibi_slopes.*CPU backend"):
        fa.flash_attn_func(q, q, q, alibi_slopes=torch.ones(2))
