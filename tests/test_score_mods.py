"""Softcap and ALiBi (docs/semantics.md) against the float64 oracle on every backend (the CPU
kernels, the CUDA kernels on the emulator or a GPU): forward and gradients for every dtype the
backend takes, both senses of Sq != Sk, causal and windowed masks, GQA, per-head and per-batch
slopes, a head dim past 128; the variable-length and KV-cache entry points (contiguous and paged
caches, split-KV); gradcheck in float64; bad arguments; on the emulator, results independent of
the threads' order and the deterministic backward bitwise reproducible with score mods."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flashattn_ext as fa
import oracle
from attn_testing import assert_close, assert_out_and_grads_close, naive_in, needs_kernel, randn
from test_kvcache import make_cache

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
def test_flash_attn_func_matches_oracle(backend, gen, dtype, mods, mask, shape):
    needs_kernel(backend, dtype, backward=True, head_dim=shape[-1])
    softcap, kind = mods
    causal, window = mask
    q, k, v = inputs(gen, shape, dtype)
    slopes = slopes_for(gen, kind, shape[0], shape[3])
    out = fa.flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=softcap,
                             alibi_slopes=slopes)
    kw = dict(causal=causal, window=window, softcap=softcap, alibi_slopes=slopes)
    ref, ref_lse = oracle.attention(q, k, v, **kw)
    naive = None if dtype in (F32, F64) else naive_in(dtype, q, k, v, **kw)[0]
    assert_out_and_grads_close(gen, out, ref, naive, (q, k, v))



@pytest.mark.parametrize("dtype", [F32, F64, BF16], ids=str)
@pytest.mark.parametrize("mods", MODS, ids=MOD_IDS)
@pytest.mark.parametrize("mask", MASKS[1:], ids=MASK_IDS[1:])
def test_return_attn_probs_with_score_mods(backend, gen, dtype, mods, mask):
    """flash_attn_func(..., return_attn_probs=True) with softcap and ALiBi: the probabilities of
    the transformed scores (the attention-weights kernels apply them as the forward does), against
    the float64 oracle; with dropout, the same probabilities signed by the keep mask."""
    needs_kernel(backend, dtype)
    import interp_oracle as io
    softcap, kind = mods
    causal, window = mask
    shape = SHAPES[1]
    q, k, v = (x.detach() for x in inputs(gen, shape, dtype))
    slopes = slopes_for(gen, kind, shape[0], shape[3])
    out, lse, probs = fa.flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=softcap,
                                         alibi_slopes=slopes, return_attn_probs=True)
    kw = dict(causal=causal, window=window, softcap=softcap, alibi_slopes=slopes)
    assert torch.equal(out, fa.flash_attn_func(q, k, v, causal=causal, window_size=window,
                                               softcap=softcap, alibi_slopes=slopes))
    assert_close(probs, io.probabilities(q, k, **kw), None, "probabilities")
    if dtype != F64:
        _, _, signed = fa.flash_attn_func(q, k, v, 0.3, causal=causal, window_size=window,
                                          softcap=softcap, alibi_slopes=slopes,
                                          return_attn_probs=True, seed=11)
        assert torch.equal(signed.abs(), probs) and 0.2 < (signed < 0).float().mean() / (probs > 0).float().mean() < 0.4

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


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_varlen_matches_oracle_per_sequence(backend, gen, dtype):
    needs_kernel(backend, dtype, backward=True)
    lens_q, lens_k = [5, 0, 70, 33], [40, 3, 70, 20]
    hq, hkv, d = 4, 2, 32
    cq = torch.tensor(np.cumsum([0] + lens_q), dtype=torch.int32)
    ck = torch.tensor(np.cumsum([0] + lens_k), dtype=torch.int32)
    q = (randn(gen, sum(lens_q), hq, d) * 2).to(dtype).requires_grad_()
    k = (randn(gen, sum(lens_k), hkv, d) * 2).to(dtype).requires_grad_()
    v = randn(gen, sum(lens_k), hkv, d, dtype=dtype).requires_grad_()
    slopes = torch.rand(len(lens_q), hq, generator=gen) * 0.4
    out = fa.flash_attn_varlen_func(q, k, v, cq, ck, max(lens_q), max(lens_k), causal=True,
                                    softcap=3.0, alibi_slopes=slopes)

    def per_sequence(**kw):
        outs = []
        for b in range(len(lens_q)):
            qs, ks = slice(int(cq[b]), int(cq[b + 1])), slice(int(ck[b]), int(ck[b + 1]))
            if lens_q[b]:
                outs.append(oracle.attention(q[None, qs], k[None, ks], v[None, ks], causal=True,
                                             softcap=3.0, alibi_slopes=slopes[b:b + 1], **kw)[0][0])
        return torch.cat(outs)
    ref = per_sequence()
    naive = per_sequence(dtype=dtype) if dtype == BF16 else None
    assert_out_and_grads_close(gen, out, ref, naive, (q, k, v))


@pytest.mark.parametrize("layout, num_splits", [("contiguous", 1), ("paged16", 1), ("paged16", 3)])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_kvcache_matches_oracle(backend, gen, dtype, layout, num_splits):
    """Contiguous and paged caches, unsplit and split-KV (num_splits=3), per-batch slopes."""
    needs_kernel(backend, dtype)
    b, hq, hkv, d, cap = 2, 4, 2, 32, 50
    q = (randn(gen, b, 3, hq, d) * 2).to(dtype)
    cache = make_cache(gen, layout, b, cap, hkv, d, dtype)
    cache.k.mul_(2)
    seqlens = torch.tensor([17, 41], dtype=torch.int32)
    slopes = torch.rand(b, hq, generator=gen) * 0.4
    out = fa.flash_attn_with_kvcache(q, cache.k, cache.v, cache_seqlens=seqlens, block_table=cache.table,
                                     causal=True, softcap=5.0, alibi_slopes=slopes, num_splits=num_splits)
    for i in range(b):
        n = int(seqlens[i])
        keys, vals = cache.rows(cache.k, i, 0, n)[None], cache.rows(cache.v, i, 0, n)[None]
        kw = dict(causal=True, softcap=5.0, alibi_slopes=slopes[i:i + 1])
        ref = oracle.attention(q[i:i + 1], keys, vals, **kw)[0]
        naive = oracle.attention(q[i:i + 1], keys, vals, dtype=dtype, **kw)[0] if dtype == BF16 else None
        assert_close(out[i:i + 1], ref, naive, f"out[{i}]")


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_decode_split_kv_matches_oracle(backend, gen, dtype):
    """One query row against many keys: the forward splits the keys (split-KV: the CPU's chunks,
    the CUDA kernels' automatic num_splits of a KV-cache call) and merges."""
    needs_kernel(backend, dtype)
    q, k, v = (randn(gen, 1, s, h, 64, dtype=dtype) for s, h in ((1, 8), (3000, 2), (3000, 2)))
    slopes = torch.rand(8, generator=gen) * 0.01
    kw = dict(softcap=2.0, alibi_slopes=slopes)
    out = fa.flash_attn_with_kvcache(q, k, v, **kw)
    naive = naive_in(dtype, q, k, v, **kw)[0] if dtype == BF16 else None
    assert_close(out, oracle.attention(q, k, v, **kw)[0], naive, "out")


def test_head_dim_past_128(backend, gen):
    """D = 192 (the CUDA kernels' narrower key tiles past 128), softcap and per-batch ALiBi, causal
    with Sq > Sk: forward and gradients."""
    needs_kernel(backend, BF16, backward=True, head_dim=192)
    shape = (2, 45, 38, 2, 1, 192)
    q, k, v = inputs(gen, shape, BF16)
    kw = dict(causal=True, softcap=6.0, alibi_slopes=slopes_for(gen, "batch", 2, 2))
    out = fa.flash_attn_func(q, k, v, **kw)
    ref, naive = oracle.attention(q, k, v, **kw)[0], naive_in(BF16, q, k, v, **kw)[0]
    assert_close(out, ref, naive, "out")
    dout = randn(gen, *out.shape, dtype=BF16)
    for name, g, r, n in zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), dout),
                             torch.autograd.grad(ref, (q, k, v), dout.double()),
                             torch.autograd.grad(naive, (q, k, v), dout)):
        assert_close(g, r, n, name)


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


def test_emulated_kernels_do_not_depend_on_thread_order(gen, monkeypatch):
    """Score mods on the emulator with the block's threads shuffled by seed and 1-3 worker threads:
    out, dk, dv identical (dq within a bfloat16 step: atomics in block order); the deterministic
    backward bitwise identical, dense and variable-length."""
    emu = pytest.importorskip("flashattn_ext._emu", reason="built without the emulator")
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    q, k, v = inputs(gen, (2, 40, 70, 4, 2, 64), BF16)
    dout = randn(gen, 2, 40, 4, 64, dtype=BF16)
    lens = torch.tensor([0, 30, 80], dtype=torch.int32)
    kp, vp = (x.detach().reshape(-1, 2, 64)[:80].requires_grad_() for x in (k, v))
    qp = q.detach().reshape(-1, 4, 64)[:80].requires_grad_()
    kw = dict(causal=True, softcap=3.0, alibi_slopes=slopes_for(gen, "batch", 2, 4))
    runs = []
    try:
        for threads, seed in ((1, None), (3, 1), (2, 2)):
            emu.configure(threads=threads)
            emu.set_seed(seed)
            out = fa.flash_attn_func(q, k, v, **kw)
            det = fa.flash_attn_func(q, k, v, deterministic=True, **kw)
            packed = fa.flash_attn_varlen_func(qp, kp, vp, lens, lens, 50, 50, deterministic=True, **kw)
            runs.append((out, *torch.autograd.grad(out, (q, k, v), dout),
                         *torch.autograd.grad(det, (q, k, v), dout),
                         *torch.autograd.grad(packed, (qp, kp, vp), dout.reshape(-1, 4, 64)[:80])))
    finally:
        emu.set_seed(None)
    for other in runs[1:]:
        for i, (a, b) in enumerate(zip(runs[0], other)):
            if i == 1:  # atomic dq
                assert ((a.float() - b.float()).abs() <= b.float().abs() * 2**-7 + 1e-6).all()
            else:
                assert torch.equal(a, b), i
