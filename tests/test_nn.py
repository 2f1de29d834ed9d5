"""nn.MultiHeadAttention against an equivalent module built from torch's own SDPA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import oracle

from flashattn_ext.nn import MultiHeadAttention
from attn_testing import assert_close, needs_kernel, randn

F64 = torch.float64


def reference(m: MultiHeadAttention, x, context=None, causal=False):
    """The same computation written with torch.nn.functional only, in float64."""
    hd, hq, hkv = m.head_dim, m.num_heads, m.num_kv_heads
    ctx = x if context is None else context
    lin = lambda t, w, b: F.linear(t.double(), w.double(), None if b is None else b.double())
    if m.fused:
        w, b = m.in_proj.weight, m.in_proj.bias
        sizes = [hq * hd, hkv * hd, hkv * hd]
        ws, bs = w.split(sizes), (b.split(sizes) if b is not None else (None,) * 3)
        q, k, v = lin(x, ws[0], bs[0]), lin(ctx, ws[1], bs[1]), lin(ctx, ws[2], bs[2])
    else:
        q = lin(x, m.q_proj.weight, m.q_proj.bias)
        k = lin(ctx, m.k_proj.weight, m.k_proj.bias)
        v = lin(ctx, m.v_proj.weight, m.v_proj.bias)
    bsz, sq, sk = x.shape[0], x.shape[1], ctx.shape[1]
    q = q.view(bsz, sq, hq, hd).transpose(1, 2)
    k = k.view(bsz, sk, hkv, hd).transpose(1, 2)
    v = v.view(bsz, sk, hkv, hd).transpose(1, 2)
    mask = None
    if causal:  # bottom-right alignment, spelled out as a boolean mask for torch
        mask = torch.ones(sq, sk, dtype=torch.bool).tril(diagonal=sk - sq)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=hq != hkv)
    o = o.transpose(1, 2).reshape(bsz, sq, hq * hd)
    return lin(o, m.out_proj.weight, m.out_proj.bias)


@pytest.mark.parametrize("kv_heads,kdim,causal,cross", [
    (None, None, False, False), (2, None, True, False), (1, None, False, True),
    (4, 24, False, True), (2, None, True, True)])
def test_module_matches_torch_sdpa(backend, gen, kv_heads, kdim, causal, cross):
    needs_kernel(backend, F64, backward=True)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = MultiHeadAttention(64, 8, num_kv_heads=kv_heads, kdim=kdim, vdim=kdim, causal=causal,
                           dtype=F64)
    x = randn(gen, 2, 19, 64, dtype=F64).requires_grad_()
    ctx = randn(gen, 2, 31, kdim or 64, dtype=F64).requires_grad_() if cross else None
    y = m(x, ctx)
    ref = reference(m, x, ctx, causal)
    assert y.shape == (2, 19, 64)
    assert_close(y, ref, None, "y")
    gy = randn(gen, *y.shape, dtype=F64)
    params = [p for p in m.parameters()]
    inputs = [x] + ([ctx] if cross else [])
    for g, r in zip(torch.autograd.grad(y, inputs + params, gy),
                    torch.autograd.grad(ref, inputs + params, gy)):
        assert_close(g, r, None, "grad")


def test_from_torch_multihead_attention(gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    mha = torch.nn.MultiheadAttention(48, 6, batch_first=True, dtype=F64)
    m = MultiHeadAttention.from_torch(mha)
    x = randn(gen, 3, 10, 48, dtype=F64)
    expected, _ = mha(x, x, x, need_weights=False)
    assert_close(m(x), expected, None, "y")


def test_module_separate_value_source(gen):
    """value (B, Sk, vdim) with keys from x (self-attention keys) or from context."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = MultiHeadAttention(32, 4, kdim=32, vdim=24, dtype=F64)
    x, val = randn(gen, 2, 9, 32, dtype=F64), randn(gen, 2, 9, 24, dtype=F64)
    hd = m.head_dim
    q, k, v = (p(t).view(2, 9, 4, hd) for p, t in ((m.q_proj, x), (m.k_proj, x), (m.v_proj, val)))
    ref = m.out_proj(oracle.attention(q, k, v)[0].reshape(2, 9, 32))
    assert_close(m(x, value=val), ref, None, "y")
    ctx = randn(gen, 2, 9, 32, dtype=F64)
    assert torch.equal(m(x, ctx, value=val), m(x, ctx.clone(), value=val))


def test_module_validates_through_attention(gen):
    """The module's attention call goes through flashattn_ext.attention (one validation path):
    a numpy scale is accepted, an overflowing one is refused there."""
    m = MultiHeadAttention(32, 4, scale=np.float32(0.25))
    x = randn(gen, 2, 9, 32)
    assert m.scale == 0.25 and torch.isfinite(m(x)).all()
    m.scale = 1e38
    with pytest.raises(ValueError, match="scale: q·kᵀ·scale overflows the float32 range"):
        m(x)


def test_module_compiles_fullgraph(gen):
    torch._dynamo.reset()
    m = MultiHeadAttention(32, 4, num_kv_heads=2, causal=True)
    x = randn(gen, 2, 9, 32)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), m(x))
