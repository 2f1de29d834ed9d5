"""Gradients at the edges of the softmax: rows that see one or a few keys, near one-hot rows
(scaled-up logits) and large float32 logits. There dS = P * (dP - delta) is a small difference of
large numbers, so delta must agree with the backward's own P and dP (docs/semantics.md section 5)
rather than come from the rounded output."""

from __future__ import annotations

import math

import pytest
import torch

import flashattn_ext as fa
import oracle
from attn_testing import assert_close, needs_kernel, randn


F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


def _inputs(gen, b, sq, sk, hq, hkv, d, dtype, q_scale=1.0):
    """q as a slice of a wider tensor (padded row strides), scaled by q_scale to sharpen the
    softmax; k, v, dout plain."""
    q = (randn(gen, b, sq, hq, d + 6, dtype=torch.float64) * q_scale).to(dtype)[..., 2:2 + d]
    k, v = (randn(gen, b, sk, hkv, d, dtype=dtype) for _ in range(2))
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), randn(gen, b, sq, hq, d, dtype=dtype)


def _check_backward(q, k, v, dout, causal=False, window_size=(-1, -1), float32_naive=False):
    """Gradients against the oracle, each batch element on its own: the batch holds independent
    draws of one small problem, whose tolerance the naive error of that draw alone sets (for
    float32 only with ``float32_naive``: see attn_testing.assert_close)."""
    out = fa.flash_attn_func(q, k, v, causal=causal, window_size=window_size)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    # float64 leaves: the reference gradients stay float64 (autograd would round them to the
    # inputs' dtype, for 16-bit inputs through float32: a double rounding off by one ulp at ties)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = oracle.attention(*leaves, causal=causal, window=window_size)[0]
    ref_grads = torch.autograd.grad(ref, leaves, dout.double())
    naive_grads = [[None] * q.shape[0]] * 3
    if q.dtype in (BF16, F16) or float32_naive:
        naive = oracle.attention(q, k, v, causal=causal, window=window_size, dtype=q.dtype)[0]
        naive_grads = torch.autograd.grad(naive, (q, k, v), dout)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref_grads, naive_grads):
        for i in range(q.shape[0]):
            assert_close(g[i], r[i], n[i], f"{name} of batch element {i}", float32_naive=float32_naive)
    return grads


def _within(x: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    over = (x.double().abs() - bound).max().item()
    assert over <= 0, f"{what}: exceeds one float32 rounding of 0 by {over:.3e}"


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
def test_one_key_rows(backend, gen, dtype):
    """Window (0, 0): every row sees exactly one key, so P = 1 and dS = dP - delta = 0: dq and dk
    must be 0 up to one float32 rounding of dP (not the difference of two dot products summed in
    different orders, nor P = 1 - 1e-6 from the forward's rounded lse), dv = dout exactly."""
    b, s, hq, hkv, d = 2, 70, 4, 2, 64
    needs_kernel(backend, dtype, backward=True, head_dim=d)
    q, k, v, dout = _inputs(gen, b, s, s, hq, hkv, d, dtype, q_scale=4.0)
    dq, dk, _ = _check_backward(q, k, v, dout, window_size=(0, 0))
    group = hq // hkv
    dp = (dout.double() * v.detach().double().repeat_interleave(group, dim=2)).sum(-1)
    ulp = torch.exp2(torch.floor(torch.log2(dp.abs())) - 23)[..., None]  # one float32 ulp of dP
    # 1.01: the float32 product with scale and k, and the rounding to dtype of a nonzero result;
    # half a subnormal step: float16 rounds a tiny gradient to its subnormal grid.
    step = torch.finfo(dtype).tiny * torch.finfo(dtype).eps / 2
    scale = 1 / math.sqrt(d)
    _within(dq, 1.01 * scale * ulp * k.detach().double().repeat_interleave(group, dim=2).abs() + step, "dq")
    dk_bound = (ulp * q.detach().double().abs()).unflatten(2, (hkv, group)).sum(3)  # key j: row j of each head
    _within(dk, 1.01 * scale * dk_bound + step, "dk")


@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
def test_few_keys_padded_strides(backend, gen, dtype):
    """D=128, GQA 6/3, Sq=47, Sk=2, causal bottom-right, q a slice of a wider tensor: rows see
    0, 1 or 2 keys; logits from ordinary to near one-hot (12 draws each). About one draw in ten
    failed the tolerance when delta came from the output rounded to 16 bits."""
    needs_kernel(backend, dtype, backward=True, head_dim=128)
    for q_scale in (1.0, 4.0, 12.0, 30.0):
        _check_backward(*_inputs(gen, 12, 47, 2, 6, 3, 128, dtype, q_scale), causal=True)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
def test_near_one_hot_rows(backend, gen, dtype):
    """Logits of tens (q x 30) over a few keys: rows nearly one-hot, small problems (so that the
    naive computation's error, and with it the tolerance, stays small), 16 draws each."""
    needs_kernel(backend, dtype, backward=True, head_dim=128)
    for shape in ((16, 8, 3, 2, 1, 64), (16, 4, 4, 2, 2, 128)):
        _check_backward(*_inputs(gen, *shape, dtype, q_scale=30.0), causal=True)


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
def test_all_scores_very_negative_few_keys(backend, gen, dtype):
    """Every score of a row near -100 (q pointing away from every key) and a key count that leaves
    most of a key tile empty: lse is very negative, so anything the kernels compute past the last
    key from a zero score is exp(+100)-sized; it must never reach the gradients (a tiled dQ once
    multiplied such entries by zero padding: dq came out NaN)."""
    needs_kernel(backend, dtype, backward=True, head_dim=64)
    for sk in (3, 17, 33):
        base = randn(gen, 64, dtype=torch.float64)  # every key near base, q near -c * base
        k = (base + 0.1 * randn(gen, 2, sk, 1, 64, dtype=torch.float64)).to(dtype).requires_grad_()
        c = 100.0 * 64 ** 0.5 / base.square().sum()
        q = (-c * base + 0.1 * randn(gen, 2, 24, 2, 64, dtype=torch.float64)).to(dtype).requires_grad_()
        v, dout = randn(gen, 2, sk, 1, 64, dtype=dtype).requires_grad_(), randn(gen, 2, 24, 2, 64, dtype=dtype)
        # logits of -100 are ill-conditioned for float32 too: its tolerance takes the naive float32
        # error, as test_large_logits_float32's (attn_testing.assert_close)
        _check_backward(q, k, v, dout, float32_naive=dtype == F32)


def test_large_logits_float32(backend, gen):
    """float32 with |logit| >= 50 on many pairs, rows nearly one-hot, 32 draws. The rounding of
    logits of hundreds is amplified in the gradients beyond the absolute float32 tolerance: at
    seed 96678406 the naive float32 dk erred 1.56e-5 and torch's float32 sdpa 2.71e-5 against
    2e-5, so twice the naive float32 error joins the tolerance (ours: 2.35e-5 there)."""
    needs_kernel(backend, F32, backward=True)
    q, k, v, dout = _inputs(gen, 32, 37, 5, 4, 2, 64, F32, q_scale=30.0)
    logits = torch.einsum("bqhd,bkhd->bhqk", q.detach(), k.detach().repeat_interleave(2, dim=2)) / 8
    assert (logits.abs() >= 50).double().mean() > 0.05
    _check_backward(q, k, v, dout, causal=True, float32_naive=True)
