"""Attention under explicit masks on the kernels (flashattn_ext._masked): the plans of padding,
KV-cache and sliding-window masks against the float64 oracle given the same mask, what gets no
plan, packed sequences (block-diagonal masks) as one variable-length call, the weights from the
logsumexp, and nn.replace_sdpa's routed torch.nn.functional.scaled_dot_product_attention against
torch's own."""

from __future__ import annotations

from typing import Tuple

import pytest
import torch
import torch.nn.functional as F
from torch.nn.functional import scaled_dot_product_attention as imported_sdpa

import oracle
from attn_testing import assert_close, needs_kernel, randn
from flashattn_ext import _dispatch, _masked, _sdpa
from flashattn_ext.nn import replace_sdpa

F64 = torch.float64


def randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """An int in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def band_with_padding(gen: torch.Generator, b: int, sq: int, sk: int) -> torch.Tensor:
    """A random band (alignment offset, left, right) over a random contiguous run of keys per
    batch element (left, right or both ends padded, or none), as (B, Sq, Sk) booleans."""
    off, left, right = randint(gen, -sq, sk), randint(gen, -1, sk), randint(gen, -1, 3)
    ok = oracle.visible_keys(sq, sk + off if off > 0 else sk, left, right, True)
    ok = oracle.visible_keys(sq, sk, left, right, False) if off <= 0 else ok[:, off:off + sk]
    masks = []
    for _ in range(b):
        a = randint(gen, 0, sk - 1)
        keys = torch.zeros(sk, dtype=torch.bool)
        keys[a:randint(gen, a + 1, sk)] = True
        masks.append(ok & keys)
    return torch.stack(masks)


def qkv(gen: torch.Generator, b: int, sq: int, sk: int, dtype: torch.dtype,
        heads: Tuple[int, int] = (4, 2), d: int = 16) -> Tuple[torch.Tensor, ...]:
    return (randn(gen, b, sq, heads[0], d, dtype=dtype).requires_grad_(),
            randn(gen, b, sk, heads[1], d, dtype=dtype).requires_grad_(),
            randn(gen, b, sk, heads[1], d, dtype=dtype).requires_grad_())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_band_masks_run_on_the_kernels(backend, gen, dtype):
    """Every band over a contiguous run of keys has a plan; out, lse and the gradients under it
    match the oracle given the explicit mask (rows that see no key: 0 and -inf)."""
    needs_kernel(backend, dtype, backward=True)
    for _ in range(12):
        sq, sk = randint(gen, 1, 40), randint(gen, 1, 40)
        visible = band_with_padding(gen, 3, sq, sk)
        plans = _masked.plan(visible)
        assert plans is not None, visible
        q, k, v = qkv(gen, 3, sq, sk, dtype)
        out, lse = _masked.run(q, k, v, plans, 0.3)
        ref, ref_lse = oracle.attention(q, k, v, scale=0.3, visible=visible)
        naive, _ = oracle.attention(q, k, v, scale=0.3, visible=visible, dtype=dtype)
        assert_close(out, ref, naive, "out")
        assert_close(lse, ref_lse, None, "lse")
        dout = randn(gen, *out.shape, dtype=dtype)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        for g, r, n, name in zip(grads, torch.autograd.grad(ref, (q, k, v), dout),
                                 torch.autograd.grad(naive, (q, k, v), dout), "qkv"):
            assert_close(g, r, n, f"d{name}")


def test_scattered_padding_is_gathered(gen):
    """Bidirectional attention with keys padded anywhere: the seen keys are gathered."""
    visible = torch.rand(4, 1, 23, generator=gen) > 0.5
    visible[:, :, 3] = True
    plans = _masked.plan(visible.expand(-1, 9, -1))
    assert plans is not None and any(p.gather is not None for p in plans)
    q, k, v = qkv(gen, 4, 9, 23, F64)
    out, lse = _masked.run(q, k, v, plans, None)
    ref, ref_lse = oracle.attention(q, k, v, visible=visible)
    assert_close(out, ref, None, "out")
    assert_close(lse, ref_lse, None, "lse")


def test_masks_that_are_no_band_get_no_plan(gen):
    i, j = torch.arange(8)[:, None], torch.arange(8)[None]
    packed = (i // 4 == j // 4) & (j <= i)  # two packed sequences
    sink = ((j <= i) & (j >= i - 2)) | (j == 0)  # a window plus an always-seen first key
    scattered_causal = (j <= i) & (torch.arange(8) % 3 != 1)
    for mask in (packed, sink, scattered_causal):
        assert _masked.plan(mask[None]) is None
    below = _masked.plan((j < i)[None])  # strictly below the diagonal: row 0 and key 7 unseen
    assert below == [_masked.Plan((1, 8), (0, 7), (-1, 0))]
    assert _masked.plan(torch.zeros(1, 8, 8, dtype=torch.bool))[0].empty


def packed_mask(gen: torch.Generator, rows: int, s: int, left: int,
                right: int) -> Tuple[torch.Tensor, list]:
    """Rows of s tokens cut into random sequences, each attending within itself under the band
    (left, right) (-1 unbounded), as (B, S, S) booleans, and the sequences' lengths."""
    i, j = torch.arange(s)[:, None], torch.arange(s)[None]
    masks, lengths = [], []
    for _ in range(rows):
        cuts = sorted({randint(gen, 1, s - 1) for _ in range(randint(gen, 1, 4))})
        lengths += [b - a for a, b in zip([0] + cuts, cuts + [s])]
        seg = torch.zeros(s, dtype=torch.long)
        seg[cuts] = 1
        seg = seg.cumsum(0)
        m = seg[:, None] == seg[None]
        m &= (j >= i - left) if left >= 0 else True
        m &= (j <= i + right) if right >= 0 else True
        masks.append(m)
    return torch.stack(masks), lengths


@pytest.mark.parametrize("window", [(-1, 0), (4, 0), (-1, -1), (3, 2)],
                         ids=["causal", "causal_left4", "full", "window3_2"])
def test_packed_sequences_run_as_one_varlen_call(gen, window):
    """A square block-diagonal mask with one band in every block reads as its sequences, one
    variable-length call over all rows whose out, lse and gradients match the oracle given the
    mask (float64); one packed row broadcasts over a batch."""
    for rows, batch in ((3, 3), (1, 2)):
        mask, lengths = packed_mask(gen, rows, 17, *window)
        p = _masked.packed(mask)
        assert p is not None and p.rows == rows and p.lengths.tolist() == lengths, mask
        q, k, v = qkv(gen, batch, 17, 17, F64)
        out, lse = _masked.run_packed(q, k, v, p, 0.3)
        visible = mask.expand(batch, -1, -1)
        ref, ref_lse = oracle.attention(q, k, v, scale=0.3, visible=visible)
        assert_close(out, ref, None, "out")
        assert_close(lse, ref_lse, None, "lse")
        dout = randn(gen, *out.shape, dtype=F64)
        for g, r, name in zip(torch.autograd.grad(out, (q, k, v), dout),
                              torch.autograd.grad(ref, (q, k, v), dout), "qkv"):
            assert_close(g, r, None, f"d{name}")


def test_masks_that_are_no_packing_get_none(gen):
    i, j = torch.arange(8)[:, None], torch.arange(8)[None]
    blocks = i // 4 == j // 4
    mixed = blocks & ((j <= i) | (i >= 4))  # a causal block beside a bidirectional one
    windows = blocks & (j <= i) & ((j >= i - 1) | (i < 4))  # two different windows
    unseen = blocks & (j < i)  # the first row of each block sees nothing
    leaking = (blocks & (j <= i)) | (j == 0)  # every row also sees the first key
    for mask in (mixed, windows, unseen, leaking):
        assert _masked.packed(mask[None]) is None
    assert _masked.packed((blocks & (j <= i))[None, :6]) is None  # not square
    causal = _masked.packed((blocks & (j <= i))[None])
    assert causal.lengths.tolist() == [4, 4] and causal.window == (-1, 0)


def test_float_masks_are_masks_only_when_zero_or_minus_infinity(gen):
    keep = torch.rand(2, 5, 7, generator=gen) > 0.3
    for low in (float("-inf"), torch.finfo(torch.float32).min):
        additive = torch.zeros(2, 5, 7).masked_fill(~keep, low)
        assert torch.equal(_masked.to_bool(additive), keep)
    assert _masked.to_bool(randn(gen, 2, 5, 7)) is None  # a bias
    assert _masked.to_bool(torch.zeros(2, 5, 7, requires_grad=True)) is None


def test_weights_from_lse_are_the_softmax(gen):
    visible = band_with_padding(gen, 2, 13, 17)
    q, k, v = qkv(gen, 2, 13, 17, F64)
    out, lse = _masked.run(q, k, v, _masked.plan(visible), 0.25)
    w = _masked.weights(q, k, lse, 0.25, visible)
    kk = k.repeat_interleave(2, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, kk) * 0.25
    ref = torch.softmax(s.masked_fill(~visible[:, None], float("-inf")), -1).nan_to_num(0.0)
    assert_close(w, ref, None, "weights")
    gw = randn(gen, *w.shape, dtype=F64)
    for g, r in zip(torch.autograd.grad(w, (q, k), gw), torch.autograd.grad(ref, (q, k), gw)):
        assert_close(g, r, None, "grad")


class Block(torch.nn.Module):
    """Calls scaled_dot_product_attention through F and through a name imported from it."""

    def forward(self, q, k, v, imported: bool = False, **kw):
        return (imported_sdpa if imported else F.scaled_dot_product_attention)(q, k, v, **kw)


def sdpa_cases(gen):
    """(name, q, k, v, kwargs, routed to the kernels?) in float64, torch's (B, H, S, D)."""
    def t(*shape):
        return randn(gen, *shape, dtype=F64).requires_grad_()

    q, k, v = t(3, 4, 9, 16), t(3, 2, 12, 16), t(3, 2, 12, 16)
    pad = torch.ones(3, 1, 1, 12, dtype=torch.bool)
    pad[0, ..., :4] = False  # left padding
    pad[1, ..., 10:] = False  # right padding
    causal_pad = pad & torch.ones(9, 12, dtype=torch.bool).tril(3)
    bias = randn(gen, 1, 1, 9, 12, dtype=F64)
    return [
        ("causal gqa", q, k, v, dict(is_causal=True, enable_gqa=True), True),
        ("scale", q, k, v, dict(scale=0.2, enable_gqa=True), True),
        ("padding", q, k, v, dict(attn_mask=pad, enable_gqa=True), True),
        ("padded kv cache", q, k, v, dict(attn_mask=causal_pad, enable_gqa=True), True),
        ("additive padding", q, k, v,
         dict(attn_mask=torch.zeros(3, 1, 9, 12, dtype=F64).masked_fill(~causal_pad, float("-inf")),
              enable_gqa=True), True),
        ("3-d", q[:, 0], k[:, 0], v[:, 0], dict(is_causal=True), True),
        ("bias", q, k, v, dict(attn_mask=bias, enable_gqa=True), True),  # CPU: any mask
        ("per-head mask", q[:, :2], k, v,
         dict(attn_mask=torch.rand(3, 2, 9, 12, generator=gen) > 0.2), True),
    ]


def test_replace_sdpa_matches_torch_and_counts(gen):
    block = Block()
    cases = sdpa_cases(gen)
    for name, q, k, v, kw, routed in cases:
        expected = _sdpa.TORCH_SDPA(q, k, v, **kw)
        with replace_sdpa() as calls:
            got = block(q, k, v, **kw)
            assert (calls.library, sum(calls.torch.values())) == ((1, 0) if routed else (0, 1)), name
        assert_close(got, expected, None, name)
        g = randn(gen, *got.shape, dtype=F64)
        for a, b in zip(torch.autograd.grad(got, (q, k, v), g),
                        torch.autograd.grad(expected, (q, k, v), g)):
            assert_close(a, b, None, f"{name} grad")
    assert F.scaled_dot_product_attention is _sdpa.TORCH_SDPA


def test_replace_sdpa_model_names_and_restores(gen):
    q, k, v = (randn(gen, 2, 3, 8, 16, dtype=F64) for _ in range(3))
    block = Block()
    with replace_sdpa() as calls:
        block(q, k, v, imported=True)
    assert calls.library == 0  # the imported name is only routed with the model given
    with pytest.raises(RuntimeError, match="inside"):
        with replace_sdpa(block) as calls:
            assert_close(block(q, k, v, imported=True), _sdpa.TORCH_SDPA(q, k, v), None, "out")
            raise RuntimeError("inside")
    assert calls.library == 1
    assert imported_sdpa is _sdpa.TORCH_SDPA and F.scaled_dot_product_attention is _sdpa.TORCH_SDPA
    assert globals()["imported_sdpa"] is _sdpa.TORCH_SDPA


def test_replace_sdpa_routes_torch_multihead_attention(gen):
    """torch's MultiheadAttention calls F.scaled_dot_product_attention when need_weights=False
    (training mode keeps it off its C++ fast path)."""
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True, dtype=F64)
    x = randn(gen, 2, 7, 32, dtype=F64)
    mask = torch.ones(7, 7, dtype=torch.bool).triu(1)  # torch's convention: True = masked out
    expected, _ = mha(x, x, x, attn_mask=mask, need_weights=False)
    with replace_sdpa() as calls:
        got, _ = mha(x, x, x, attn_mask=mask, need_weights=False)
    assert calls.library == 1
    assert_close(got, expected, None, "out")


def test_replace_sdpa_routes_dropout_on_the_cpu_backend(gen):
    """Dropout, with and without a mask, runs in the CPU kernels (its keep mask is checked in
    tests/test_dropout.py)."""
    q, k, v = (randn(gen, 2, 3, 8, 16) for _ in range(3))
    mask = torch.ones(8, 8, dtype=torch.bool).tril()
    with replace_sdpa() as calls:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
        masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.5)
    assert calls.library == 2 and out.shape == q.shape and masked.shape == q.shape
    assert not calls.torch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_replace_sdpa_padding_masks_on_the_kernels(backend, gen, dtype):
    """Routed padding masks in a 16-bit model on every backend: right padding as (B, 1, 1, Sk)
    booleans runs as key lengths (no mask read), left padding reads the mask; both match the
    oracle, forward and backward."""
    needs_kernel(backend, dtype, backward=True)
    b, hq, sq, sk, d = 3, 4, 21, 37, 32
    q, k, v = (randn(gen, b, hq, s, d, dtype=dtype).requires_grad_() for s in (sq, sk, sk))
    lengths = torch.tensor([sk, 9, 25])
    right = torch.arange(sk)[None] < lengths[:, None]
    dout = randn(gen, b, hq, sq, d, dtype=dtype)
    for keep, as_lengths in ((right, True), (right.flip(1), False)):
        mask = keep[:, None, None]
        before = _dispatch.mask_as_key_lengths_calls
        with replace_sdpa() as calls:
            out = Block()(q, k, v, attn_mask=mask)
            grads = torch.autograd.grad(out, (q, k, v), dout)
        assert calls.library == 1
        assert (_dispatch.mask_as_key_lengths_calls - before == 2) == as_lengths
        t = [x.transpose(1, 2) for x in (q, k, v)]
        visible = keep[:, None, None].expand(b, hq, sq, sk)
        ref = oracle.attention(*t, visible=visible)[0].transpose(1, 2)
        naive = naives = None
        if dtype != torch.float32:
            naive = oracle.attention(*t, visible=visible, dtype=dtype)[0].transpose(1, 2)
            naives = torch.autograd.grad(naive, (q, k, v), dout)
        assert_close(out, ref, naive, "out")
        for i, (g, r) in enumerate(zip(grads, torch.autograd.grad(ref, (q, k, v), dout.double()))):
            assert_close(g, r, None if naives is None else naives[i], ("dq", "dk", "dv")[i])
