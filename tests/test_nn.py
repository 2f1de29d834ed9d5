"""nn.MultiHeadAttention against an equivalent module built from torch's own SDPA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import oracle

from flashattn_ext import _dispatch
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


def torch_pairs(m: MultiHeadAttention, mha: torch.nn.MultiheadAttention):
    """(our parameters, torch's parameter) pairs of two modules holding the same weights: torch's
    in_proj_bias is our q, k, v biases end to end."""
    if m.fused:
        pairs = [([m.in_proj.weight], mha.in_proj_weight)]
    else:
        pairs = [([p.weight], w) for p, w in ((m.q_proj, mha.q_proj_weight),
                                              (m.k_proj, mha.k_proj_weight),
                                              (m.v_proj, mha.v_proj_weight))]
    pairs.append(([m.out_proj.weight], mha.out_proj.weight))
    if mha.in_proj_bias is not None:
        ours = [m.in_proj.bias] if m.fused else [m.q_proj.bias, m.k_proj.bias, m.v_proj.bias]
        pairs += [(ours, mha.in_proj_bias), ([m.out_proj.bias], mha.out_proj.bias)]
    return pairs


def padding(gen, b: int, s: int, side: str) -> torch.Tensor:
    """torch's key_padding_mask (True = ignore): each sequence keeps at least one key."""
    keep = torch.randint(1, s + 1, (b,), generator=gen)
    pos = torch.arange(s)[None]
    if side == "right":
        return pos >= keep[:, None]
    if side == "left":
        return pos < (s - keep)[:, None]
    mask = torch.rand(b, s, generator=gen) > 0.6
    mask[:, 0] = False
    return mask


CAUSAL_BOOL = "causal bool"
CAUSAL_FLOAT = "causal float"


PARITY_CASES = [  # batch_first, kdim, cross, bias, key padding, attn_mask, weights
    (True, None, False, True, None, None, None),
    (False, None, False, True, None, None, "average"),
    (True, None, True, False, "right", None, "per head"),
    (False, 24, True, True, "left", None, None),
    (True, 24, True, True, "scattered", None, "average"),
    (True, None, True, True, "scattered", None, None),
    (False, None, True, True, "left", None, "per head"),
    (True, None, False, True, None, CAUSAL_FLOAT, "per head"),
    (False, None, False, False, "right", CAUSAL_BOOL, "average"),
    (True, None, True, True, "right", CAUSAL_BOOL, None),
    (True, None, False, True, None, "per-head causal", None),
    (False, 24, True, True, None, CAUSAL_FLOAT, "per head"),
    # masks that are no band: run in the kernels on the CPU backend
    (True, None, True, True, "scattered", "random bool", "average"),
    (False, None, False, True, None, "per-head random bool", "per head"),
    (True, None, True, True, "right", "bias", "per head"),
    (False, 24, True, True, "scattered", "per-head bias", "average"),
]


@pytest.mark.parametrize("batch_first,kdim,cross,bias,pad,attn,weights", PARITY_CASES)
def test_matches_torch_multihead_attention(gen, batch_first, kdim, cross, bias, pad, attn,
                                           weights):
    """Same weights, same call as torch.nn.MultiheadAttention: outputs, weights and gradients
    of the inputs and of every parameter (float64)."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    mha = torch.nn.MultiheadAttention(48, 6, bias=bias, kdim=kdim, vdim=kdim,
                                      batch_first=batch_first, dtype=F64)
    m = MultiHeadAttention.from_torch(mha)
    b, sq = 3, 10
    sk = 13 if cross else sq
    shape = (lambda s, e: (b, s, e)) if batch_first else (lambda s, e: (s, b, e))
    query = randn(gen, *shape(sq, 48), dtype=F64).requires_grad_()
    key = randn(gen, *shape(sk, kdim or 48), dtype=F64).requires_grad_() if cross else query
    value = randn(gen, *shape(sk, kdim or 48), dtype=F64).requires_grad_() if cross else query
    kw = dict(key_padding_mask=None if pad is None else padding(gen, b, sk, pad))
    if attn is not None and "causal" in attn:
        causal = torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq)
        mask = ~causal if attn == CAUSAL_BOOL else \
            torch.zeros(sq, sk, dtype=F64).masked_fill(~causal, float("-inf"))
        kw["attn_mask"] = mask.expand(b * 6, sq, sk) if attn == "per-head causal" else mask
    elif attn is not None:  # torch's convention: True = not allowed; floats are added
        shape = (b * 6, sq, sk) if attn.startswith("per-head") else (sq, sk)
        if attn.endswith("bool"):
            kw["attn_mask"] = torch.rand(*shape, generator=gen) > 0.7
            kw["attn_mask"][..., 0] = False  # every query keeps a key
        else:
            kw["attn_mask"] = randn(gen, *shape, dtype=F64)
    if weights is not None:
        kw.update(need_weights=True, average_attn_weights=weights == "average")
    else:
        kw["need_weights"] = False
    before = _dispatch.mask_as_key_lengths_calls
    out, w = m(query, key, value, **kw)
    # a key padding mask alone with the padding at the end runs as key lengths (no mask read)
    assert (_dispatch.mask_as_key_lengths_calls > before) == (pad == "right" and attn is None)
    ref, ref_w = mha(query, key, value, **kw)
    assert_close(out, ref, None, "out")
    assert (w is None) == (ref_w is None)
    if w is not None:
        assert_close(w, ref_w, None, "weights")
    inputs = [query] + ([key, value] if cross else [])
    pairs = torch_pairs(m, mha)
    g = randn(gen, *out.shape, dtype=F64)
    loss = lambda o, wt: (o * g).sum() + (0.0 if wt is None else (wt * wt).sum())
    ours = list(torch.autograd.grad(loss(out, w), inputs + [p for ps, _ in pairs for p in ps]))
    theirs = torch.autograd.grad(loss(ref, ref_w), inputs + [p for _, p in pairs])
    for x, r in zip(inputs, theirs):
        assert_close(ours.pop(0), r, None, "input grad")
    for (ps, _), r in zip(pairs, theirs[len(inputs):]):
        assert_close(torch.cat([ours.pop(0) for _ in ps]), r, None, "parameter grad")


def test_unbatched_input_and_bare_output(gen):
    """Unbatched (S, E) inputs as torch takes them; without need_weights the module returns
    the output tensor alone."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    mha = torch.nn.MultiheadAttention(32, 4, dtype=F64)
    m = MultiHeadAttention.from_torch(mha)
    x = randn(gen, 9, 32, dtype=F64)
    kpm = torch.arange(9) >= 6
    out, w = m(x, x, x, key_padding_mask=kpm, need_weights=True)
    ref, ref_w = mha(x, x, x, key_padding_mask=kpm)
    assert_close(out, ref, None, "out")
    assert_close(w, ref_w, None, "weights")
    bare = m(x[None].transpose(0, 1))  # (S, B=1, E) with batch_first=False
    assert isinstance(bare, torch.Tensor)
    assert_close(bare[:, 0], mha(x, x, x, need_weights=False)[0], None, "out")


def test_a_query_that_sees_no_key_gives_zero(gen):
    m = MultiHeadAttention(32, 4, dtype=F64)
    x = randn(gen, 2, 5, 32, dtype=F64)
    kpm = torch.tensor([[True] * 5, [False] * 5])
    out, w = m(x, key_padding_mask=kpm, need_weights=True)
    assert torch.equal(w[0], torch.zeros(5, 5, dtype=F64))
    assert torch.equal(out[0], m.out_proj.bias.detach().expand(5, -1))  # attention output 0
    assert_close(out[1], m(x[1:])[0], None, "out")


def test_to_torch_round_trip(gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    for kdim in (None, 20):
        m = MultiHeadAttention(40, 5, kdim=kdim, vdim=kdim, batch_first=False, dtype=F64)
        mha = m.to_torch()
        assert isinstance(mha, torch.nn.MultiheadAttention) and not mha.batch_first
        x = randn(gen, 7, 2, 40, dtype=F64)
        ctx = randn(gen, 11, 2, kdim or 40, dtype=F64)
        assert_close(m(x, ctx, ctx), mha(x, ctx, ctx, need_weights=False)[0], None, "out")
        back = MultiHeadAttention.from_torch(mha)
        assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(),
                                                     m.state_dict().values()))


def test_additive_attn_mask_gradient_matches_torch(gen):
    """A float attn_mask requiring grad (a learned bias) gets torch's module's gradient."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True, dtype=F64)
    m = MultiHeadAttention.from_torch(mha)
    x = randn(gen, 2, 9, 32, dtype=F64)
    for shape in ((9, 9), (8, 9, 9)):
        bias = randn(gen, *shape, dtype=F64).requires_grad_()
        kpm = torch.arange(9)[None].expand(2, 9) >= torch.tensor([[9], [6]])
        out = m(x, key_padding_mask=kpm, attn_mask=bias)
        ref = mha(x, x, x, key_padding_mask=kpm, attn_mask=bias, need_weights=False)[0]
        assert_close(out, ref, None, "out")
        g = randn(gen, *out.shape, dtype=F64)
        assert_close(torch.autograd.grad(out, bias, g)[0], torch.autograd.grad(ref, bias, g)[0],
                     None, "dmask")


def test_weights_under_dropout_are_the_dropped_ones_the_output_used(gen):
    """In training with dropout, need_weights returns the weights the output was computed with,
    as torch's module does: kept ones times 1 / (1 - p), dropped ones 0, so that
    out_proj(weights . V) is the output."""
    m = MultiHeadAttention(32, 4, num_kv_heads=2, dropout=0.4, dtype=F64).train()
    x = randn(gen, 2, 7, 32, dtype=F64)
    out, w = m(x, need_weights=True, average_attn_weights=False)
    _, _, v = m._project(x, None, None)
    v = v.unflatten(-1, (2, 8)).repeat_interleave(2, dim=2)  # (B, Sk, Hq, D)
    o = torch.einsum("bhqk,bkhd->bqhd", w, v).flatten(2)
    assert_close(out, m.out_proj(o), None, "out_proj(weights . V)")
    kept = (w != 0).double().mean()
    assert 0.45 < kept < 0.75, kept
    m.eval()
    out, w = m(x, need_weights=True, average_attn_weights=False)
    assert (w > 0).all() and torch.allclose(w.sum(-1), torch.ones((), dtype=F64))
