"""Explicit attention masks (docs/semantics.md section 12) against the float64 oracle on every
backend (the CPU kernels, the CUDA kernels on the emulator or a GPU): boolean and additive masks
of every broadcast shape, forward, dq/dk/dv and the gradient of an additive mask, for every dtype
a backend takes; with causal/window bands, softcap and ALiBi, GQA, decoding (split keys) and
fully masked rows; key_padding_mask; numpy; gradcheck; bad arguments; on the emulator, results
independent of the threads' order and the deterministic backward bitwise reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import flashattn_ext as fa
from flashattn_ext import _dispatch
from flashattn_ext._validate import MaskSpec
import oracle
from attn_testing import assert_close, needs_kernel, randn
from flashattn_ext.nn import MultiHeadAttention

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16

# (B, Hq, Hkv, Sq, Sk, D): Sq < Sk and Sq > Sk across tile edges, GQA
SHAPES = [(2, 4, 2, 37, 150, 64), (1, 3, 1, 130, 45, 40)]
# mask shapes, by which dimensions they keep (the others broadcast with stride 0)
MASK_DIMS = {"full": "bhqk", "batch_rows": "b.qk", "rows": "..qk", "head_keys": ".h.k", "keys": "...k"}


def mask_shape(dims: str, b: int, hq: int, sq: int, sk: int) -> tuple:
    return tuple(n if c != "." else 1 for c, n in zip(dims, (b, hq, sq, sk)))


def make_mask(gen, kind: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """Fresh random masks: booleans with about a third masked out; additive values of a few units
    with about a tenth at -inf (keys masked out by the addition)."""
    u = torch.rand(*shape, generator=gen, dtype=torch.float64)
    if kind == "bool":
        return u > 0.33
    vals = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2
    return vals.masked_fill(u < 0.1, float("-inf")).to(dtype)


def bhsd(gen, shape, dtype):
    b, hq, hkv, sq, sk, d = shape
    q = (randn(gen, b, hq, sq, d) * 1.5).to(dtype).requires_grad_()
    k = (randn(gen, b, hkv, sk, d) * 1.5).to(dtype).requires_grad_()
    v = randn(gen, b, hkv, sk, d, dtype=dtype).requires_grad_()
    return q, k, v


def oracle_sdpa(q, k, v, mask, dtype=torch.float64, **kw):
    """The oracle on (B, H, S, D) inputs with a torch-style mask (bool True = attend, or additive)."""
    t = [x.transpose(1, 2) for x in (q, k, v)]
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (B or 1, H or 1, Sq or 1, Sk)
    given = dict(visible=m) if mask.dtype == torch.bool else dict(bias=mask)
    out, lse = oracle.attention(*t, dtype=dtype, **given, **kw)
    return out.transpose(1, 2), lse


@pytest.mark.parametrize("dtype", [F32, F64, BF16, F16], ids=str)
@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("dims", list(MASK_DIMS), ids=list(MASK_DIMS))
@pytest.mark.parametrize("shape", SHAPES, ids=["sq<sk", "sq>sk"])
def test_sdpa_mask_matches_oracle(backend, gen, dtype, kind, dims, shape):
    b, hq, hkv, sq, sk, d = shape
    needs_kernel(backend, dtype, backward=True, head_dim=d)
    q, k, v = bhsd(gen, shape, dtype)
    mask = make_mask(gen, kind, mask_shape(MASK_DIMS[dims], b, hq, sq, sk), dtype)
    if kind == "additive":
        mask.requires_grad_()
    out = fa.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    ref = oracle_sdpa(q, k, v, mask)[0]
    naive = None if dtype in (F32, F64) else oracle_sdpa(q, k, v, mask, dtype=dtype)[0]
    assert_close(out, ref, naive, "out")
    dout = randn(gen, *out.shape, dtype=dtype)
    wrt = (q, k, v, mask) if kind == "additive" else (q, k, v)
    grads = torch.autograd.grad(out, wrt, dout)
    refs = torch.autograd.grad(ref, wrt, dout.double())
    naives = (None,) * 4 if naive is None else torch.autograd.grad(naive, wrt, dout)
    for name, g, r, n in zip(("dq", "dk", "dv", "dmask"), grads, refs, naives):
        assert g.shape == r.shape and g.dtype == (mask.dtype if name == "dmask" else dtype)
        assert_close(g, r, n, name)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("band", [(True, (-1, -1)), (False, (6, 3))], ids=["causal", "window6_3"])
def test_mask_with_band_softcap_and_alibi(backend, gen, dtype, kind, band):
    """The mask comes after softcap and ALiBi; the causal / window band still applies."""
    needs_kernel(backend, dtype, backward=True)
    causal, window = band
    b, hq, sq, sk, d = 2, 4, 41, 77, 32
    q = (randn(gen, b, sq, hq, d) * 2).to(dtype).requires_grad_()
    k = (randn(gen, b, sk, 2, d) * 2).to(dtype).requires_grad_()
    v = randn(gen, b, sk, 2, d, dtype=dtype).requires_grad_()
    mask = make_mask(gen, kind, (b, 1, sq, sk), F32)
    if kind == "additive":
        mask.requires_grad_()
    slopes = torch.rand(hq, generator=gen) * 0.3
    out = fa.attention(q, k, v, causal=causal, window_size=window, softcap=3.0,
                       alibi_slopes=slopes, attn_mask=mask)
    kw = dict(causal=causal, window=window, softcap=3.0, alibi_slopes=slopes)
    given = dict(visible=mask) if kind == "bool" else dict(bias=mask)
    ref = oracle.attention(q, k, v, **given, **kw)[0]
    naive = None if dtype == F32 else oracle.attention(q, k, v, dtype=dtype, **given, **kw)[0]
    assert_close(out, ref, naive, "out")
    wrt = (q, k, v, mask) if kind == "additive" else (q, k, v)
    dout = randn(gen, *out.shape, dtype=dtype)
    naives = (None,) * 4 if naive is None else torch.autograd.grad(naive, wrt, dout)
    for name, g, r, n in zip(("dq", "dk", "dv", "dmask"), torch.autograd.grad(out, wrt, dout),
                             torch.autograd.grad(ref, wrt, dout.double()), naives):
        assert_close(g, r, n, name)


@pytest.mark.parametrize("dims", ["full", "keys"])
def test_decode_with_mask(backend, gen, dims):
    """One query row per head against many keys (split keys merged by their lse); GQA heads share
    a tile, each with its own mask row when the mask differs per head."""
    dtype = F32 if backend == "cpu" else BF16
    b, hq, hkv, sk, d = 2, 8, 2, 3000, 64
    q, k, v = (randn(gen, b, h, s, d, dtype=dtype) for h, s in ((hq, 1), (hkv, sk), (hkv, sk)))
    mask = make_mask(gen, "additive", mask_shape(MASK_DIMS[dims], b, hq, 1, sk), F32)
    out = fa.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    naive = None if dtype == F32 else oracle_sdpa(q, k, v, mask, dtype=dtype)[0]
    assert_close(out, oracle_sdpa(q, k, v, mask)[0], naive, "out")


def test_fully_masked_rows_give_zero(gen):
    """Rows whose keys are all masked out give 0 and no gradient (torch's math path: NaN)."""
    q, k, v = (randn(gen, 1, 2, 9, 16).requires_grad_() for _ in range(3))
    mask = torch.rand(1, 2, 9, 9, generator=gen) > 0.4
    mask[0, 0, 3] = False
    mask[0, 1, :, :] |= torch.eye(9, dtype=torch.bool)  # head 1: every row sees a key
    add = torch.zeros(1, 2, 9, 9).masked_fill(~mask, float("-inf")).requires_grad_()
    for m in (mask, add):
        out = fa.scaled_dot_product_attention(q, k, v, attn_mask=m)
        assert torch.equal(out[0, 0, 3], torch.zeros(16))
        ref = oracle_sdpa(q, k, v, m)[0]
        assert_close(out, ref, None, "out")
        wrt = (q, k, v, m) if m.dtype != torch.bool else (q, k, v)
        dout = randn(gen, *out.shape)
        grads = torch.autograd.grad(out, wrt, dout)
        for name, g, r in zip(("dq", "dk", "dv", "dmask"), grads,
                              torch.autograd.grad(ref, wrt, dout.double())):
            assert_close(g, r, None, name)
        assert torch.equal(grads[0][0, 0, 3], torch.zeros(16))


def test_against_torch_sdpa(gen):
    """The drop-in: the same call as torch's function gives its result (rows see keys)."""
    q, k, v = randn(gen, 2, 3, 20, 16), randn(gen, 2, 3, 31, 16), randn(gen, 2, 3, 31, 16)
    for mask in (torch.rand(20, 31, generator=gen) > 0.2, randn(gen, 2, 1, 20, 31)):
        mask[..., 0] = True if mask.dtype == torch.bool else mask[..., 0]
        ours = fa.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                                   atol=2e-5, rtol=0)


def test_mask_views_are_read_through_strides(gen):
    """A transposed (non-contiguous) mask and an expanded one give the contiguous mask's result."""
    q, k, v = randn(gen, 2, 2, 24, 16), randn(gen, 2, 2, 24, 16), randn(gen, 2, 2, 24, 16)
    base = randn(gen, 2, 1, 24, 24)
    ref = fa.scaled_dot_product_attention(q, k, v, attn_mask=base.contiguous())
    transposed = base.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not transposed.is_contiguous()
    assert torch.equal(fa.scaled_dot_product_attention(q, k, v, attn_mask=transposed), ref)
    assert torch.equal(fa.scaled_dot_product_attention(q, k, v, attn_mask=base.expand(2, 2, 24, 24)),
                       fa.scaled_dot_product_attention(q, k, v, attn_mask=base.repeat(1, 2, 1, 1)))


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_mask_views_at_odd_offsets_and_strides(backend, gen, kind):
    """Masks whose key pairs are not aligned for one load (a view starting one entry in, odd row
    strides) and masks read at a key stride other than 1 give the oracle's result: the CUDA
    kernels read those one entry at a time (pair loads otherwise)."""
    dtype = F32 if backend == "cpu" else BF16
    needs_kernel(backend, dtype, backward=True)
    b, hq, sq, sk, d = 2, 2, 40, 70, 32
    q, k, v = (randn(gen, b, hq, s, d, dtype=dtype).requires_grad_() for s in (sq, sk, sk))
    base = make_mask(gen, kind, (b, hq, sq, sk + 2), F32)
    views = {"offset": base[..., 1:sk + 1],  # even strides, the first entry one off
             "odd rows": base.reshape(-1)[:b * hq * sq * (sk + 1)].view(b, hq, sq, sk + 1)[..., :sk],
             "key stride": base.transpose(-1, -2).contiguous().transpose(-1, -2)[..., :sk]}
    dout = randn(gen, b, hq, sq, d, dtype=dtype)
    for name, mask in views.items():
        mask = mask.detach().requires_grad_(kind == "additive")
        out = fa.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        wrt = (q, k, v, mask) if kind == "additive" else (q, k, v)
        ref = oracle_sdpa(q, k, v, mask)[0]
        naive, naives = naive_in(dtype, lambda dt: oracle_sdpa(q, k, v, mask, dtype=dt)[0], wrt, dout)
        assert_close(out, ref, naive, f"{name} out")
        for what, g, r, n in zip(("dq", "dk", "dv", "dmask"), torch.autograd.grad(out, wrt, dout),
                                 torch.autograd.grad(ref, wrt, dout.double()), naives):
            assert_close(g, r, n, f"{name} {what}")


def test_key_padding_mask_and_numpy(gen):
    """attention(key_padding_mask=): (B, Sk) booleans, True = ignore the key, combined with an
    attn_mask; numpy arrays in, numpy arrays out, the same numbers as tensors."""
    b, sq, sk, d = 3, 14, 19, 16
    q, k, v = randn(gen, b, sq, d), randn(gen, b, sk, d), randn(gen, b, sk, d)
    pad = torch.zeros(b, sk, dtype=torch.bool)
    pad[0, 12:] = True
    pad[2, :5] = True
    attn = make_mask(gen, "additive", (sq, sk), F32)
    out = fa.attention(q, k, v, key_padding_mask=pad, attn_mask=attn)
    bias = attn.masked_fill(pad[:, None, :], float("-inf"))[:, None]  # (B, 1, Sq, Sk)
    ref = oracle.attention(q[:, :, None], k[:, :, None], v[:, :, None], bias=bias)[0][:, :, 0]
    assert_close(out, ref, None, "out")
    out_np = fa.attention(q.numpy(), k.numpy(), v.numpy(), key_padding_mask=pad.numpy(),
                          attn_mask=attn.numpy())
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_array_equal(out_np, out.numpy())
    only_pad = fa.attention(q, k, v, key_padding_mask=pad)
    assert_close(only_pad, oracle.attention(q[:, :, None], k[:, :, None], v[:, :, None],
                                            visible=~pad[:, None, :])[0][:, :, 0], None, "out")


def test_gradcheck_float64(gen):
    q, k, v = (randn(gen, 1, 2, 7, 8, dtype=F64).requires_grad_() for _ in range(3))
    bias = randn(gen, 1, 2, 7, 7, dtype=F64).requires_grad_()
    keep = torch.rand(7, 7, generator=gen) > 0.3
    keep[:, 0] = True

    def f(q, k, v, bias):
        return fa.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(~keep, float("-inf")))
    assert torch.autograd.gradcheck(f, (q, k, v, bias))


@pytest.mark.parametrize("kw, error, text", [
    (dict(attn_mask=torch.ones(5, 6)), ValueError, r"attn_mask: shape \(5, 6\) does not broadcast"),
    (dict(attn_mask=torch.ones(3, 2, 2, 5, 5)), ValueError, "attn_mask: shape"),
    (dict(attn_mask=torch.ones(5, 5, dtype=torch.int32)), TypeError, "attn_mask: dtype int32"),
    (dict(attn_mask=np.ones((5, 5), bool)), TypeError, "attn_mask: expected"),
    (dict(attn_mask=torch.ones(5, 5, dtype=torch.bool), is_causal=True), ValueError, "is_causal"),
])
def test_bad_arguments(gen, kw, error, text):
    q = randn(gen, 2, 2, 5, 8)
    with pytest.raises(error, match=text):
        fa.scaled_dot_product_attention(q, q, q, **kw)


@pytest.mark.parametrize("pad, text", [
    (torch.ones(2, 4, dtype=torch.bool), r"key_padding_mask: expected a \(2, 5\) bool"),
    (torch.ones(2, 5), "key_padding_mask: expected"),
])
def test_bad_key_padding_mask(gen, pad, text):
    q = randn(gen, 2, 5, 8)
    with pytest.raises(ValueError, match=text):
        fa.attention(q, q, q, key_padding_mask=pad)
    with pytest.raises(ValueError, match="no batch dimension"):
        fa.attention(q[0], q[0], q[0], key_padding_mask=torch.ones(1, 5, dtype=torch.bool))


def test_emulated_kernels_do_not_depend_on_thread_order(gen, monkeypatch):
    """Masks on the emulator with the block's threads shuffled by seed: the same output and lse
    bitwise, and in deterministic mode the same dq, dk, dv and dmask bitwise."""
    emu = pytest.importorskip("flashattn_ext._emu", reason="built without the emulator")
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    monkeypatch.setenv("FLASHATTN_EXT_DETERMINISTIC", "1")  # dq summed in a fixed order
    b, hq, hkv, sq, sk, d = 2, 4, 2, 70, 150, 64
    q, k, v = (randn(gen, b, h, s, d, dtype=BF16).requires_grad_()
               for h, s in ((hq, sq), (hkv, sk), (hkv, sk)))
    mask = make_mask(gen, "additive", (b, hq, sq, sk), F32).requires_grad_()
    dout = randn(gen, b, hq, sq, d, dtype=BF16)
    runs = []
    try:
        for seed in (None, 1, 2):
            emu.set_seed(seed)
            out = fa.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
            grads = torch.autograd.grad(out, (q, k, v, mask), dout)
            runs.append((out, *grads))
    finally:
        emu.set_seed(None)
    for other in runs[1:]:
        for name, x, y in zip(("out", "dq", "dk", "dv", "dmask"), runs[0], other):
            assert torch.equal(x, y), name


def test_multihead_attention_masks_on_every_backend(backend, gen):
    """nn.MultiHeadAttention sends key padding and a per-head bias to the kernels in one call: in
    bfloat16 its output and input gradient are within the rule of the module computed in float64
    on the CPU backend (the naive error being the CPU kernels' own in bfloat16)."""
    needs_kernel(backend, BF16, backward=True)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = MultiHeadAttention(64, 4, dtype=BF16)
    b, s = 2, 37
    x = randn(gen, b, s, 64, dtype=BF16).requires_grad_()
    pad = torch.rand(b, s, generator=gen) > 0.7
    pad[:, 0] = False
    bias = randn(gen, b * 4, s, s)
    out, _ = m(x, key_padding_mask=pad, attn_mask=bias, need_weights=False)
    g = randn(gen, *out.shape, dtype=BF16)
    (dx,) = torch.autograd.grad(out, x, g)
    with pytest.MonkeyPatch.context() as mp:  # the references, on the CPU kernels
        mp.setenv("FLASHATTN_EXT_BACKEND", "cpu")
        results = []
        for dt in (F64, BF16):
            mr = MultiHeadAttention(64, 4, dtype=dt)
            mr.load_state_dict(m.state_dict())
            xr = x.detach().to(dt).requires_grad_()
            o, _ = mr(xr, key_padding_mask=pad, attn_mask=bias.to(dt), need_weights=False)
            results.append((o, torch.autograd.grad(o, xr, g.to(dt))[0]))
    (ref, dref), (naive, dnaive) = results
    assert_close(out, ref, naive, "out")
    assert_close(dx, dref, dnaive, "dx")


def suffix_padding(gen, b: int, sk: int) -> torch.Tensor:
    """(B, Sk) key padding (True = ignore) at the end of each element: the first element keeps
    every key, the second none, the others a random count."""
    lengths = torch.randint(1, sk, (b,), generator=gen)
    lengths[0], lengths[1] = sk, 0
    return torch.arange(sk)[None] >= lengths[:, None]


def calls_as_key_lengths() -> int:
    return _dispatch.mask_as_key_lengths_calls


@pytest.mark.parametrize("dtype", [F32, F64, BF16, F16], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=["sq<sk", "sq>sk"])
def test_suffix_key_padding_runs_as_key_lengths(backend, gen, dtype, causal, shape):
    """Padding at the end of the keys becomes key lengths (no mask read; on the CUDA kernels,
    seqused_k with the dense layout); the same mask given whole is read. Both: out, lse, dq, dk,
    dv against the oracle, a fully padded element gives out 0, lse -inf and zero gradients,
    padded keys get zero dk, dv."""
    b, hq, hkv, sq, sk, d = shape
    needs_kernel(backend, dtype, backward=True, head_dim=d)
    b += 2
    q = (randn(gen, b, sq, hq, d) * 1.5).to(dtype).requires_grad_()
    k = (randn(gen, b, sk, hkv, d) * 1.5).to(dtype).requires_grad_()
    v = randn(gen, b, sk, hkv, d, dtype=dtype).requires_grad_()
    pad = suffix_padding(gen, b, sk)
    dout = randn(gen, b, sq, hq, d, dtype=dtype)
    visible = ~pad[:, None, :]
    ref, ref_lse = oracle.attention(q, k, v, causal=causal, visible=visible)
    refs = torch.autograd.grad(ref, (q, k, v), dout.double())
    naive, naives = None, (None,) * 3
    if dtype in (BF16, F16):
        naive = oracle.attention(q, k, v, causal=causal, visible=visible, dtype=dtype)[0]
        naives = torch.autograd.grad(naive, (q, k, v), dout)
    whole = (~pad)[:, None, None].expand(b, hq, sq, sk).contiguous()  # not broadcast: read
    for kw, as_lengths in ((dict(key_padding_mask=pad), True), (dict(attn_mask=whole), False)):
        before = calls_as_key_lengths()
        out, lse = fa.attention(q, k, v, causal=causal, return_lse=True, **kw)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        assert calls_as_key_lengths() == before + 2 * as_lengths  # forward and backward
        assert_close(out, ref, naive, "out")
        assert_close(lse, ref_lse, None, "lse")
        for name, g, r, n in zip(("dq", "dk", "dv"), grads, refs, naives):
            assert_close(g, r, n, name)
        assert torch.equal(out[1], torch.zeros_like(out[1])) and bool((lse[1] == -torch.inf).all())
        assert not grads[0][1].any() and not grads[1][pad].any() and not grads[2][pad].any()


def test_key_lengths_on_the_emulator_deterministic_and_thread_order_free(gen, monkeypatch):
    """Key lengths on the emulated kernels (dense layout + seqused_k) in deterministic mode, whose
    blocks each walk several key blocks: with the threads shuffled by seed, the same out, dq, dk,
    dv bitwise; padded keys' dk, dv zero (the emulator reports any write two blocks share)."""
    emu = pytest.importorskip("flashattn_ext._emu", reason="built without the emulator")
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    monkeypatch.setenv("FLASHATTN_EXT_DETERMINISTIC", "1")
    b, hq, hkv, sq, sk, d = 4, 4, 2, 45, 300, 64
    q, k, v = (randn(gen, b, s, h, d, dtype=BF16).requires_grad_()
               for h, s in ((hq, sq), (hkv, sk), (hkv, sk)))
    pad = suffix_padding(gen, b, sk)
    dout = randn(gen, b, sq, hq, d, dtype=BF16)
    runs = []
    try:
        for seed in (None, 1, 2):
            emu.set_seed(seed)
            before = calls_as_key_lengths()
            out = fa.attention(q, k, v, key_padding_mask=pad, causal=True)
            runs.append((out, *torch.autograd.grad(out, (q, k, v), dout)))
            assert calls_as_key_lengths() == before + 2
    finally:
        emu.set_seed(None)
    for other in runs[1:]:
        for name, x, y in zip(("out", "dq", "dk", "dv"), runs[0], other):
            assert torch.equal(x, y), name
    assert not runs[0][2][pad].any() and not runs[0][3][pad].any()
    # The kernels write the padded keys' rows themselves: dq, dk, dv start as NaN here.
    spec = MaskSpec(attn_mask=(~pad)[:, None, None].expand(b, hq, sq, sk))
    qd, kd, vd = (x.detach() for x in (q, k, v))
    out, lse = torch.empty_like(qd), _dispatch.new_lse(qd, packed=False)
    _dispatch.forward(qd, kd, vd, out, lse, 0.125, spec)
    for det in (False, True):
        grads = [torch.full_like(x, float("nan")) for x in (qd, kd, vd)]
        _dispatch.backward(dout, qd, kd, vd, out, lse, *grads, 0.125, spec, deterministic_mode=det)
        assert all(bool(g.isfinite().all()) for g in grads)
        assert not grads[1][pad].any() and not grads[2][pad].any()


def naive_in(dtype, fn, wrt, dout):
    """The naive result of fn(dtype) and its gradients for 16-bit dtypes, else Nones."""
    if dtype not in (BF16, F16):
        return None, (None,) * len(wrt)
    naive = fn(dtype)
    return naive, torch.autograd.grad(naive, wrt, dout.to(dtype))


@pytest.mark.parametrize("case", ["front", "hole", "per head", "alibi", "with bias"])
def test_other_key_masks_are_read(backend, gen, case):
    """Padding that is not at the end, masks that differ per head, calls with ALiBi (positions
    count from the last key) and additive masks keep the mask: against the oracle."""
    dtype = F32 if backend == "cpu" else BF16
    needs_kernel(backend, dtype, backward=True)
    b, hq, sq, sk, d = 3, 4, 21, 70, 16
    q, k, v = (randn(gen, b, s, hq, d, dtype=dtype).requires_grad_() for s in (sq, sk, sk))
    keep = ~suffix_padding(gen, b, sk)
    if case == "front":
        keep = keep.flip(1)
    elif case == "hole":
        keep[:, 3] = False
    visible = keep[:, None, None].expand(b, hq, sq, sk)
    kw = dict(attn_mask=keep[:, None, None])
    if case == "per head":
        visible = visible.clone()
        visible[:, 1, :, 5:] = False
        kw = dict(attn_mask=visible[:, :, :1])
    elif case == "alibi":
        kw["alibi_slopes"] = torch.rand(hq, generator=gen) * 0.3
    elif case == "with bias":
        kw = dict(key_padding_mask=~keep, attn_mask=make_mask(gen, "additive", (sq, sk), F32))
    before = calls_as_key_lengths()
    out = fa.attention(q, k, v, **kw)
    assert calls_as_key_lengths() == before
    bias = kw["attn_mask"].masked_fill(~keep[:, None, None], -torch.inf) if case == "with bias" else None
    given = dict(bias=bias) if bias is not None else dict(visible=visible)

    def oracle_in(dt):
        return oracle.attention(q, k, v, alibi_slopes=kw.get("alibi_slopes"), dtype=dt, **given)[0]
    ref = oracle_in(torch.float64)
    dout = randn(gen, *out.shape, dtype=dtype)
    naive, naives = naive_in(dtype, oracle_in, (q, k, v), dout)
    assert_close(out, ref, naive, "out")
    for name, g, r, n in zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), dout),
                             torch.autograd.grad(ref, (q, k, v), dout.double()), naives):
        assert_close(g, r, n, name)


def test_key_lengths_with_dropout_sdpa_and_numpy(backend, gen):
    """Dropout draws the same keep mask with key lengths as with the mask read (against the
    oracle given that mask); scaled_dot_product_attention's boolean (B, 1, 1, Sk) masks and
    numpy calls (float16 off the CPU backend) take key lengths too."""
    dtype = F32 if backend == "cpu" else BF16
    needs_kernel(backend, dtype, backward=True)
    b, h, sq, sk, d, p = 4, 2, 19, 40, 16, 0.3
    q, k, v = (randn(gen, b, h, s, d, dtype=dtype).requires_grad_() for s in (sq, sk, sk))
    keep = ~suffix_padding(gen, b, sk)
    whole = keep[:, None, None].expand(b, h, sq, sk).contiguous()
    dout = randn(gen, b, h, sq, d, dtype=dtype)
    kept = torch.from_numpy(_dispatch.dropout_keep(p, 11, 0, (b, h, sq, sk)))

    def oracle_in(dt):
        return oracle_sdpa(q, k, v, keep[:, None, None], dtype=dt, dropout_p=p, keep=kept)[0]
    ref = oracle_in(torch.float64)
    refs = torch.autograd.grad(ref, (q, k, v), dout.double())
    naive, naives = naive_in(dtype, oracle_in, (q, k, v), dout)
    for mask, as_lengths in ((keep[:, None, None], True), (whole, False)):
        before = calls_as_key_lengths()
        out = fa.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, seed=11)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        assert calls_as_key_lengths() == before + 2 * as_lengths
        assert_close(out, ref, naive, "out")
        for name, g, r, n in zip(("dq", "dk", "dv"), grads, refs, naives):
            assert_close(g, r, n, name)
    if backend == "cuda":
        return  # numpy arrays run on the CPU data's backends
    np_dtype = F32 if backend == "cpu" else F16
    qn, kn, vn = (x.detach().to(np_dtype) for x in (q, k, v))
    before = calls_as_key_lengths()
    out_np = fa.attention(*(x.transpose(1, 2).numpy() for x in (qn, kn, vn)),
                          key_padding_mask=(~keep).numpy())
    assert calls_as_key_lengths() == before + 1
    naive_np = None if np_dtype == F32 else oracle_sdpa(qn, kn, vn, keep[:, None, None], dtype=F16)[0]
    assert_close(torch.from_numpy(out_np), oracle_sdpa(qn, kn, vn, keep[:, None, None])[0].transpose(1, 2),
                 None if naive_np is None else naive_np.transpose(1, 2), "out")


def test_key_lengths_inside_compiled_graphs(gen):
    """torch.compile(fullgraph=True): the check runs inside the operator, no graph break."""
    torch._dynamo.reset()
    q, k, v = (randn(gen, 3, s, 2, 16).requires_grad_() for s in (12, 30, 30))
    pad = suffix_padding(gen, 3, 30)

    def f(q, k, v, pad):
        return fa.attention(q, k, v, key_padding_mask=pad).sum()
    before = calls_as_key_lengths()
    grads = torch.autograd.grad(torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v, pad), (q, k, v))
    assert calls_as_key_lengths() == before + 2
    for g, r in zip(grads, torch.autograd.grad(f(q, k, v, pad), (q, k, v))):
        assert torch.equal(g, r)


# (Sq, Sk, D, causal, window): the CUDA forward's key tiles are 64 keys at D = 64, 48 at D = 128,
# 32 at D = 224 and 16 at D = 256, its query tiles 64 rows; Sq crosses a query tile, Sk key tiles.
STAGED = [(70, 144, 64, False, (-1, -1)), (70, 150, 64, True, (-1, -1)), (100, 130, 128, False, (20, 7)),
          (37, 100, 224, True, (-1, -1)), (40, 70, 256, False, (9, 0))]


@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("case", STAGED, ids=lambda c: f"sq{c[0]}-sk{c[1]}-d{c[2]}")
def test_masks_with_aligned_rows(backend, gen, kind, case):
    """Masks whose rows start at multiples of 16 bytes (the CUDA forward stages their tiles in
    shared memory with 16-byte copies beside K): contiguous ones (Sk = 144), views with a 160-entry
    row pitch whose last chunk holds keys past Sk (Sk = 150, 130, ...), per-head and key-only
    broadcasts; with causal and window bands that skip key tiles, against the oracle (out, lse). The
    emulator runs both shared-memory tiers (99 KiB keeps float masks at D = 128 in registers)."""
    sq, sk, d, causal, window = case
    dtype = F32 if backend == "cpu" else BF16
    needs_kernel(backend, dtype, head_dim=d)
    b, hq = 2, 2
    q, k, v = (randn(gen, b, s, hq, d, dtype=dtype) for s in (sq, sk, sk))
    pitch = 160 if sk > 144 else 144
    base = make_mask(gen, kind, (b, hq, sq, pitch), F32)
    masks = {"rows": base[..., :sk], "per head": base[:1, :, :1, :sk].expand(b, hq, sq, sk),
             "keys": base[:1, :1, :1, :sk]}
    kw = dict(causal=causal, window=window)
    emu = pytest.importorskip("flashattn_ext._emu") if backend == "emu" else None
    limit = emu.config()["smem_limit"] if emu else 0
    for name, mask in masks.items():
        try:
            outs = []
            for kib in (99, 163) if emu else (0,):
                if emu:
                    emu.configure(smem_limit=kib * 1024)
                outs.append(fa.attention(q, k, v, attn_mask=mask, return_lse=True, window_size=window, causal=causal))
        finally:
            if emu:
                emu.configure(smem_limit=limit)
        full = mask.expand(b, hq, sq, sk)
        given = dict(visible=full) if kind == "bool" else dict(bias=full)
        ref, ref_lse = oracle.attention(q, k, v, **given, **kw)
        naive = None if dtype == F32 else oracle.attention(q, k, v, dtype=dtype, **given, **kw)[0]
        for out, lse in outs:
            assert_close(out, ref, naive, f"{name} out")
            assert_close(lse, ref_lse.float(), None, f"{name} lse")


# (Sq, Sk, D, causal, window) for the CUDA backward's feature tiles (query rows x keys per block):
# 64 x 128 at D = 32 (two stages) and 64, 64 x 64 at D = 128, 32 x 32 at D = 160 (two stages),
# 64 x 16 at D = 256; Sq crosses a query tile, Sk a key block.
STAGED_BWD = [(70, 144, 64, False, (-1, -1)), (70, 150, 32, True, (-1, -1)), (100, 130, 128, False, (20, 7)),
              (37, 100, 160, True, (-1, -1)), (80, 70, 256, False, (9, 0))]


@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("case", STAGED_BWD, ids=lambda c: f"sq{c[0]}-sk{c[1]}-d{c[2]}")
def test_backward_masks_with_aligned_rows(backend, gen, kind, case):
    """Masks whose rows start at multiples of 16 bytes (the CUDA backward stages the tile of each
    query tile with its Q and dO): contiguous ones, 160-entry row pitches whose last chunk holds
    keys past Sk, per-head broadcasts; causal and window bands; dq, dk, dv and an additive mask's
    gradient against the oracle. The emulator runs both shared-memory tiers (99 KiB keeps float
    masks at D = 64 and 128 in registers)."""
    sq, sk, d, causal, window = case
    dtype = F32 if backend == "cpu" else BF16
    needs_kernel(backend, dtype, backward=True, head_dim=d)
    b, hq = 2, 2
    q, k, v = (randn(gen, b, s, hq, d, dtype=dtype).requires_grad_() for s in (sq, sk, sk))
    pitch = 160 if sk > 144 else 144
    base = make_mask(gen, kind, (b, hq, sq, pitch), F32)
    if kind == "additive":
        base.requires_grad_()
    masks = {"rows": base[..., :sk], "per head": base[:1, :, :1, :sk].expand(b, hq, sq, sk)}
    kw = dict(causal=causal, window=window)
    emu = pytest.importorskip("flashattn_ext._emu") if backend == "emu" else None
    limit = emu.config()["smem_limit"] if emu else 0
    wrt = (q, k, v, base) if kind == "additive" else (q, k, v)
    dout = randn(gen, b, sq, hq, d, dtype=dtype)
    for name, mask in masks.items():
        full = mask.expand(b, hq, sq, sk)
        given = dict(visible=full) if kind == "bool" else dict(bias=full)
        ref = oracle.attention(q, k, v, **given, **kw)[0]
        refs = torch.autograd.grad(ref, wrt, dout.double())
        naives = (None,) * 4
        if dtype != F32:
            naives = torch.autograd.grad(oracle.attention(q, k, v, dtype=dtype, **given, **kw)[0], wrt, dout)
        try:
            for kib in (99, 163) if emu else (0,):
                if emu:
                    emu.configure(smem_limit=kib * 1024)
                out = fa.attention(q, k, v, attn_mask=mask, window_size=window, causal=causal)
                grads = torch.autograd.grad(out, wrt, dout)
                for what, g, r, n in zip(("dq", "dk", "dv", "dmask"), grads, refs, naives):
                    assert_close(g, r, n, f"{name} {what} ({kib} KiB)")
        finally:
            if emu:
                emu.configure(smem_limit=limit)
