"""nn.MultiHeadAttention against an equivalent module built from torch's own SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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


def test_module_rejects_unsupported_options(gen):
    with pytest.raises(ValueError, match="num_kv_heads: 3 must divide num_heads"):
        MultiHeadAttention(64, 8, num_kv_heads=3)
    with pytest.raises(ValueError, match="embed_dim: 60 must be a positive multiple of num_heads"):
        MultiHeadAttention(60, 8)
    with pytest.raises(NotImplementedError, match="dropout=0.1"):
        MultiHeadAttention(64, 8, dropout=0.1)
    m = MultiHeadAttention(64, 8)
    x = randn(gen, 1, 5, 64)
    with pytest.raises(NotImplementedError, match="key_padding_mask"):
        m(x, key_padding_mask=torch.zeros(1, 5, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="need_weights"):
        m(x, need_weights=True)
    with pytest.raises(ValueError, match=r"x: expected \(batch, seq, embed_dim\)"):
        m(x[0])


def test_module_compiles_fullgraph(gen):
    torch._dynamo.reset()
    m = MultiHeadAttention(32, 4, num_kv_heads=2, causal=True)
    x = randn(gen, 2, 9, 32)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), m(x))
