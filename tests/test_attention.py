"""Forward and backward of every entry point against the float64 oracle, on each backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flashattn_ext as fa
import oracle
from flashattn_ext import _torch_ops
from flashattn_ext._validate import MaskSpec
from attn_testing import CUDA_BACKENDS, assert_close, naive_in, needs_kernel, randn

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16

# (B, Sq, Sk, Hq, Hkv, D, causal, window): odd lengths, Sq != Sk both ways, GQA/MQA, every head dim.
CASES = [
    (1, 1, 1, 1, 1, 1, False, (-1, -1)),
    (2, 17, 17, 2, 2, 8, True, (-1, -1)),
    (1, 97, 33, 4, 2, 32, True, (-1, -1)),     # Sq > Sk: bottom-right leaves rows with no key
    (2, 33, 257, 4, 1, 64, True, (-1, -1)),    # MQA, Sq < Sk
    (1, 257, 97, 3, 3, 80, False, (-1, -1)),
    (1, 1025, 1025, 1, 1, 64, True, (-1, -1)),
    (1, 17, 1025, 2, 1, 128, False, (-1, -1)),
    (1, 97, 97, 2, 1, 256, True, (-1, -1)),
    (2, 97, 129, 4, 2, 64, False, (16, 8)),    # sliding window
    (1, 64, 40, 2, 2, 32, True, (3, -1)),      # causal window with empty rows
    (1, 70, 83, 2, 1, 160, True, (-1, -1)),
    (1, 65, 130, 1, 1, 192, False, (20, 5)),
    (2, 49, 100, 2, 2, 224, True, (-1, -1)),
    (1, 130, 400, 2, 1, 128, False, (300, 10)),  # key tiles that every row of a query tile sees whole
]
IDS = [f"b{c[0]}-sq{c[1]}-sk{c[2]}-h{c[3]}x{c[4]}-d{c[5]}-{'causal' if c[6] else 'full'}-w{c[7][0]}_{c[7][1]}"
       for c in CASES]


def _inputs(gen, b, sq, sk, hq, hkv, d, dtype):
    return (randn(gen, b, sq, hq, d, dtype=dtype), randn(gen, b, sk, hkv, d, dtype=dtype),
            randn(gen, b, sk, hkv, d, dtype=dtype))


@pytest.mark.parametrize("dtype", [F32, F64, BF16, F16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_oracle(backend, gen, case, dtype):
    needs_kernel(backend, dtype)
    b, sq, sk, hq, hkv, d, causal, window = case
    q, k, v = _inputs(gen, b, sq, sk, hq, hkv, d, dtype)
    out, lse, _ = fa.flash_attn_func(q, k, v, causal=causal, window_size=window,
                                     return_attn_probs=True)
    ref, ref_lse = oracle.attention(q, k, v, causal=causal, window=window)
    naive = naive_in(dtype, q, k, v, causal=causal, window=window)[0] if dtype in (BF16, F16) else None
    assert out.dtype == dtype and out.shape == q.shape
    assert lse.dtype == (F64 if dtype == F64 else F32) and lse.shape == (b, hq, sq)
    assert_close(out, ref, naive, "out")
    assert_close(lse, ref_lse.to(lse.dtype), None, "lse")  # lse is float32/float64: absolute


# Enough query tiles (16 or more) that the CPU forward walks up to 4 row tiles of a head in
# lockstep over shared key tiles (csrc/cpu/forward.h, plan_tasks): their key ranges differ under
# causal masks and windows.
GROUP_CASES = [
    (1, 600, 700, 8, 2, 64, False, (-1, -1)),
    (2, 530, 530, 4, 2, 64, True, (100, -1)),
    (1, 520, 900, 4, 4, 32, True, (-1, -1)),
    (1, 700, 640, 4, 1, 128, False, (50, 200)),
]


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
@pytest.mark.parametrize("case", GROUP_CASES, ids=[str(i) for i in range(len(GROUP_CASES))])
def test_forward_row_tile_groups(gen, case, dtype):
    b, sq, sk, hq, hkv, d, causal, window = case
    q, k, v = _inputs(gen, b, sq, sk, hq, hkv, d, dtype)
    out, lse, _ = fa.flash_attn_func(q, k, v, causal=causal, window_size=window, return_attn_probs=True)
    ref, ref_lse = oracle.attention(q, k, v, causal=causal, window=window)
    naive = naive_in(dtype, q, k, v, causal=causal, window=window)[0] if dtype in (BF16, F16) else None
    assert_close(out, ref, naive, "out")
    assert_close(lse, ref_lse.to(lse.dtype), None, "lse")


@pytest.mark.parametrize("d", [32, 64, 128])
def test_row_strides_do_not_change_float32_results(gen, d):
    """The float32 CPU kernels read dense rows (row stride D) in place and copy rows further apart
    (the (B, S, H, D) layout, padded rows) into dense tiles first (cpu/tiles.h: float_rows); the
    arithmetic is the same, so out, lse and the gradients are bitwise equal across layouts."""
    b, sq, sk, hq, hkv = 2, 150, 333, 4, 2
    base = [randn(gen, b, s, h, d, dtype=F32) for s, h in ((sq, hq), (sk, hkv), (sk, hkv))]
    dout = randn(gen, b, sq, hq, d, dtype=F32)

    def layouts(x):
        yield x.contiguous()                                 # (B, S, H, D): rows H * D apart
        yield x.transpose(1, 2).contiguous().transpose(1, 2)  # head-major: rows D apart
        wide = torch.zeros(*x.shape[:3], d + 5, dtype=F32)    # rows D + 5 apart
        wide[..., :d] = x
        yield wide[..., :d]

    results = []
    for q, k, v in zip(*(layouts(x) for x in base)):
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        out, lse, _ = fa.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
        results.append((out, lse, *torch.autograd.grad(out, (q, k, v), dout)))
    for other in results[1:]:
        for name, x, y in zip(("out", "lse", "dq", "dk", "dv"), results[0], other):
            assert torch.equal(x, y), f"{name} differs between layouts"


BWD_CASES = [CASES[i] for i in (1, 2, 3, 4, 7, 8, 9)]


@pytest.mark.parametrize("dtype", [F32, F64, BF16, F16], ids=str)
@pytest.mark.parametrize("case", BWD_CASES, ids=[IDS[CASES.index(c)] for c in BWD_CASES])
def test_backward_matches_oracle(backend, gen, case, dtype):
    b, sq, sk, hq, hkv, d, causal, window = case
    needs_kernel(backend, dtype, backward=True, head_dim=d)
    q, k, v = (x.requires_grad_() for x in _inputs(gen, b, sq, sk, hq, hkv, d, dtype))
    dout = randn(gen, b, sq, hq, d, dtype=dtype)
    out = fa.flash_attn_func(q, k, v, causal=causal, window_size=window)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref = oracle.attention(q, k, v, causal=causal, window=window)[0]
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout.double())
    naive_grads = [None] * 3
    if dtype in (BF16, F16):
        naive = naive_in(dtype, q, k, v, causal=causal, window=window)[0]
        naive_grads = torch.autograd.grad(naive, (q, k, v), dout)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref_grads, naive_grads):
        assert g.dtype == dtype
        assert torch.isfinite(g).all(), f"{name} has non-finite entries"
        assert_close(g, r, n, name)


@pytest.mark.parametrize("bottom_right", [True, False], ids=["bottom_right", "top_left"])
@pytest.mark.parametrize("sq,sk", [(17, 40), (40, 17), (23, 23)])
def test_causal_alignments(backend, gen, bottom_right, sq, sk):
    """attention/flash_attn_func align bottom-right, scaled_dot_product_attention top-left."""
    needs_kernel(backend, F64, backward=True)
    q, k, v = (x.requires_grad_() for x in _inputs(gen, 2, sq, sk, 4, 2, 32, F64))
    if bottom_right:
        out = fa.attention(q, k, v, causal=True)
    else:  # the torch entry point takes (B, H, S, D)
        out = fa.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)),
                                              is_causal=True, enable_gqa=True).transpose(1, 2)
    ref = oracle.attention(q, k, v, causal=True, bottom_right=bottom_right)[0]
    assert_close(out, ref, None, "out")
    dout = randn(gen, *out.shape, dtype=F64)
    for name, g, r in zip("qkv", torch.autograd.grad(out, (q, k, v), dout),
                          torch.autograd.grad(ref, (q, k, v), dout)):
        assert_close(g, r, None, "d" + name)


@pytest.mark.parametrize("d", [32, 96, 128])
@pytest.mark.parametrize("sk", [1, 3])
def test_top_left_window_with_rows_past_the_keys(backend, gen, d, sk):
    """Top-left alignment with a narrow window and Sq >> Sk: the last rows of a query tile see
    no key while its first rows do (the CUDA forward visited the wrong key tile there and gave
    those rows lse -inf and zeros)."""
    dtype = _dtype_for(backend)
    needs_kernel(backend, dtype, head_dim=d)
    q, k, v = _inputs(gen, 1, 130, sk, 2, 1, d, dtype)
    for window in ((0, 0), (1, 0)):
        out, lse = _torch_ops.apply(q, k, v, d ** -0.5, MaskSpec(window[0], window[1], False))
        ref, ref_lse = oracle.attention(q, k, v, window=window, bottom_right=False)
        naive = naive_in(dtype, q, k, v, window=window, bottom_right=False)[0] if dtype in (BF16, F16) else None
        assert_close(out, ref, naive, f"out {window}")
        assert_close(lse, ref_lse.to(lse.dtype), None, f"lse {window}")


def _dtype_for(backend):
    return BF16 if backend in CUDA_BACKENDS else F32


@pytest.mark.parametrize("scale", [-0.3, 0.0], ids=["negative", "zero"])
def test_forward_with_negative_or_zero_scale(backend, gen, scale):
    """The row max of scale * q.k is the min of q.k for a negative scale; a zero scale makes every
    visible score 0 (uniform weights)."""
    dtype = _dtype_for(backend)
    q, k, v = _inputs(gen, 1, 150, 200, 2, 1, 64, dtype)
    out, lse = fa.attention(q, k, v, causal=True, scale=scale, return_lse=True)
    ref, ref_lse = oracle.attention(q, k, v, causal=True, scale=scale)
    naive = naive_in(dtype, q, k, v, causal=True, scale=scale)[0] if dtype == BF16 else None
    assert_close(out, ref, naive, "out")
    assert_close(lse, ref_lse.float(), None, "lse")


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_row_max_that_keeps_growing(backend, gen, d, order):
    """Scores whose row max grows along the keys by hundreds (log2 units): the kernels that take
    a row's exponentials against a stale max (CUDA) must move it and rescale their sums and output
    whenever the max outgrows it by their slack, many times per row and at different tiles for
    different rows; descending, the first keys hold the max and no later tile rescales."""
    dtype = _dtype_for(backend)
    q, k, v = _inputs(gen, 1, 130, 400, 2, 1, d, dtype)
    ramp = 1.0 + torch.arange(400, dtype=torch.float64) / 16
    k = (k.double() * (ramp if order == "ascending" else ramp.flip(0))[None, :, None, None] * 3).to(dtype)
    for causal in (False, True):
        out, lse = fa.attention(q, k, v, causal=causal, return_lse=True)
        ref, ref_lse = oracle.attention(q, k, v, causal=causal)
        naive = naive_in(dtype, q, k, v, causal=causal)[0] if dtype == BF16 else None
        assert_close(out, ref, naive, "out")
        assert_close(lse, ref_lse.float(), None, "lse")


def test_rows_that_see_no_key(backend, gen):
    """Bottom-right causal with Sq > Sk: the first Sq - Sk rows see nothing."""
    q, k, v = (x.requires_grad_() for x in _inputs(gen, 1, 20, 5, 2, 2, 16, _dtype_for(backend)))
    out, lse = fa.attention(q, k, v, causal=True, return_lse=True)
    assert torch.equal(out[:, :15], torch.zeros_like(out[:, :15]))
    assert torch.isneginf(lse[:, :, :15]).all() and torch.isfinite(lse[:, :, 15:]).all()
    needs_kernel(backend, q.dtype, backward=True)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), randn(gen, *out.shape, dtype=q.dtype))
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))
    assert torch.equal(dq[:, :15], torch.zeros_like(dq[:, :15]))


def test_nan_propagates(backend, gen):
    q, k, v = _inputs(gen, 1, 9, 9, 1, 1, 8, _dtype_for(backend))
    q[0, 3, 0, 2] = float("nan")
    out = fa.attention(q, k, v, causal=True)
    assert torch.isnan(out[0, 3]).all()
    rows = [i for i in range(9) if i != 3]
    assert torch.isfinite(out[0, rows]).all()
    k[0, 5, 0, 0] = float("nan")  # key 5 is seen by causal rows 5..8 only
    out = fa.attention(q, k, v, causal=True)
    assert torch.isnan(out[0, 5:]).all() and torch.isfinite(out[0, [0, 1, 2, 4]]).all()


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
@pytest.mark.parametrize("sq,sk", [(37, 100), (100, 37)])
def test_sdpa_top_left_on_bhsd_views(backend, gen, dtype, sq, sk):
    """torch's (B, H, S, D) layout, top-left causal, GQA, forward and backward; strided BSHD
    views reach the kernels."""
    needs_kernel(backend, dtype, backward=True, head_dim=64)
    q, k, v = (randn(gen, 2, h, s, 64, dtype=dtype).requires_grad_()
               for h, s in ((4, sq), (2, sk), (2, sk)))
    out = fa.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert out.shape == q.shape
    dout = randn(gen, *out.shape, dtype=dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout)

    def oracle_bhsd(dt):
        bshd = [x.transpose(1, 2) for x in (q, k, v)]
        return oracle.attention(*bshd, causal=True, bottom_right=False, dtype=dt)[0].transpose(1, 2)

    ref = oracle_bhsd(F64)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout.double())
    naive, naive_grads = None, (None,) * 3
    if dtype != F32:
        naive = oracle_bhsd(dtype)
        naive_grads = torch.autograd.grad(naive, (q, k, v), dout)
    assert_close(out, ref, naive, "out")
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref_grads, naive_grads):
        assert g.stride() == {"dq": q, "dk": k, "dv": v}[name].stride()
        assert_close(g, r, n, name)


def test_lse_gradient(backend, gen):
    """A loss that uses lse sends its gradient through the backward."""
    needs_kernel(backend, F64, backward=True)
    q, k, v = (x.requires_grad_() for x in _inputs(gen, 1, 13, 21, 2, 1, 16, F64))
    out, lse = fa.attention(q, k, v, causal=True, return_lse=True)
    w = randn(gen, *lse.shape, dtype=F64)
    loss = out.sum() + (lse * w).sum()
    ref_out, ref_lse = oracle.attention(q, k, v, causal=True)
    assert_close(lse, ref_lse, None, "lse")
    ref_loss = ref_out.sum() + (ref_lse * w).sum()
    for name, g, r in zip("qkv", torch.autograd.grad(loss, (q, k, v)),
                          torch.autograd.grad(ref_loss, (q, k, v))):
        assert_close(g, r, None, "d" + name)


@pytest.mark.parametrize("rank", [2, 3, 4])
def test_numpy_in_numpy_out(backend, gen, rank):
    """(S, D), (B, S, D) and (B, S, H, D) numpy arrays in, numpy arrays out."""
    if backend == "cuda":
        pytest.skip("numpy arrays run on the CPU kernels")
    dtype = F16 if backend == "emu" else F32  # numpy has float16, not bfloat16
    lead = {2: (), 3: (2,), 4: (2,)}[rank]
    heads = (3,) if rank == 4 else ()
    q = randn(gen, *lead, 37, *heads, 24, dtype=dtype).numpy()
    k, v = (randn(gen, *lead, 51, *heads, 24, dtype=dtype).numpy() for _ in range(2))
    out, lse = fa.attention(q, k, v, causal=True, return_lse=True)
    assert isinstance(out, np.ndarray) and out.dtype == q.dtype and out.shape == q.shape
    assert isinstance(lse, np.ndarray) and lse.dtype == np.float32
    assert lse.shape == lead + heads + (37,)

    def bshd(x: np.ndarray) -> torch.Tensor:  # the same data as a (B, S, H, D) tensor
        t = torch.from_numpy(x)
        return t if rank == 4 else t.reshape(1 if rank == 2 else 2, x.shape[-2], 1, 24)

    ref, ref_lse = oracle.attention(bshd(q), bshd(k), bshd(v), causal=True)
    naive = naive_in(dtype, bshd(q), bshd(k), bshd(v), causal=True)[0] if dtype == F16 else None
    assert_close(torch.from_numpy(out).reshape(ref.shape), ref, naive, "out")
    assert_close(torch.from_numpy(lse).reshape(ref_lse.shape), ref_lse.float(), None, "lse")


def test_emulated_kernels_do_not_depend_on_thread_order(gen):
    """The emulator shuffles the order of a block's threads by seed; a missing barrier or a
    race in the CUDA kernels would change the results across seeds."""
    emu = pytest.importorskip("flashattn_ext._emu", reason="built without the emulator")
    q, k, v = (x.requires_grad_() for x in _inputs(gen, 1, 70, 90, 4, 2, 64, BF16))
    dout = randn(gen, 1, 70, 4, 64, dtype=BF16)
    results = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLASHATTN_EXT_BACKEND", "emu")
        try:
            for seed in (None, 1, 2):
                emu.set_seed(seed)
                out = fa.attention(q, k, v, causal=True)
                results.append((out,) + torch.autograd.grad(out, (q, k, v), dout))
        finally:
            emu.set_seed(None)
    out0, dq0, dk0, dv0 = results[0]
    for out, dq, dk, dv in results[1:]:
        assert torch.equal(out, out0) and torch.equal(dk, dk0) and torch.equal(dv, dv0)
        # dq is summed with atomics across key blocks that may run on different OS threads, so
        # its float rounding may differ with the block order (within a bfloat16 step).
        assert ((dq.float() - dq0.float()).abs() <= dq0.float().abs() * 2**-7 + 1e-6).all()
