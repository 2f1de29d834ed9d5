"""Attention dropout (docs/semantics.md section 13) on the CPU kernels: the generator against
Random123's Philox-4x32-10 known answers (an independent Python Philox here), the kept fraction
within a binomial bound, forward and gradients against the float64 oracle given the same keep
mask (from the generator's helper), in every dtype, causal in both alignments, GQA, Sq != Sk, odd
sizes, variable-length batches and decoding splits; the mask independent of thread count and
instruction set; gradcheck in float64; reproducibility through torch.manual_seed; p = 0 is the
plain path; bad arguments; the CUDA kernels (emulator) refuse it by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import flashattn_ext as fa
import oracle
from attn_testing import assert_close, naive_in, randn
from flashattn_ext import _dispatch

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
M32 = 0xFFFFFFFF


def philox(ctr, key, rounds=10):
    """Philox-4x32 on Python ints, written from the published algorithm."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(rounds):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & M32, (p0 >> 32) ^ c3 ^ k1, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return [c0, c1, c2, c3]


def test_python_philox_known_answers_and_the_kernels_mask():
    kats = [([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
            ([M32] * 4, [M32] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
            ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
             [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1])]
    for ctr, key, expected in kats:
        assert philox(ctr, key) == expected
    # The documented layout: counter (j / 4, i, b * Hq + h, offset), key = seed's halves.
    p, seed, offset, (b, h, sq, sk) = 0.3, 0x1234_5678_9ABC_DEF0, 77, (2, 3, 5, 11)
    threshold = round(float(np.float32(p)) * 2 ** 32)
    expected = np.array([[[[philox([j // 4, i, bi * h + hi, offset], [seed & M32, seed >> 32])[j % 4]
                            >= threshold for j in range(sk)] for i in range(sq)]
                          for hi in range(h)] for bi in range(b)])
    np.testing.assert_array_equal(_dispatch.dropout_keep(p, seed, offset, (b, h, sq, sk)), expected)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_kept_fraction_within_binomial_bound(p):
    seed = int.from_bytes(np.random.default_rng().bytes(7), "little")
    kept = _dispatch.dropout_keep(p, seed, 5, (2, 4, 300, 301))
    n = kept.size
    assert abs(kept.sum() - n * (1 - p)) <= 5 * math.sqrt(n * p * (1 - p)), f"seed {seed}"
    # no structure along the key axis: each residue mod 4 (one Philox word) keeps its share
    for w in range(4):
        part = kept[..., w::4]
        assert abs(part.sum() - part.size * (1 - p)) <= 5 * math.sqrt(part.size * p * (1 - p))


def keep_for(seed, p, b, h, sq, sk, offset=0):
    return torch.from_numpy(_dispatch.dropout_keep(p, seed, offset, (b, h, sq, sk)))


def check_against_oracle(gen, out, q, k, v, keep, p, dtype, **kw):
    ref = oracle.attention(q, k, v, dropout_p=p, keep=keep, **kw)[0]
    naive = None if dtype in (F32, F64) else naive_in(dtype, q, k, v, dropout_p=p, keep=keep, **kw)[0]
    assert_close(out, ref, naive, "out")
    dout = randn(gen, *out.shape, dtype=dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    refs = torch.autograd.grad(ref, (q, k, v), dout.double())
    naives = (None,) * 3 if naive is None else torch.autograd.grad(naive, (q, k, v), dout)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, refs, naives):
        assert_close(g, r, n, name)


MASKS = [(False, (-1, -1)), (True, (-1, -1)), (False, (9, 5))]
SHAPES = [(2, 70, 150, 4, 2, 64), (1, 150, 97, 3, 1, 40), (1, 17, 33, 2, 2, 8)]


@pytest.mark.parametrize("dtype", [F32, F64, BF16, F16], ids=str)
@pytest.mark.parametrize("mask", MASKS, ids=["full", "causal", "window9_5"])
@pytest.mark.parametrize("shape", SHAPES, ids=["sq<sk_gqa", "sq>sk_mqa", "odd"])
def test_flash_attn_func_matches_oracle(gen, dtype, mask, shape):
    b, sq, sk, hq, hkv, d = shape
    causal, window = mask
    p, seed = 0.25, int(torch.randint(0, 2 ** 62, (), generator=gen))
    q = randn(gen, b, sq, hq, d, dtype=dtype).requires_grad_()
    k = randn(gen, b, sk, hkv, d, dtype=dtype).requires_grad_()
    v = randn(gen, b, sk, hkv, d, dtype=dtype).requires_grad_()
    out = fa.flash_attn_func(q, k, v, p, causal=causal, window_size=window, seed=seed)
    check_against_oracle(gen, out, q, k, v, keep_for(seed, p, b, hq, sq, sk), p, dtype,
                         causal=causal, window=window)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_sdpa_top_left_causal_matches_oracle(gen, dtype):
    b, h, sq, sk, d = 2, 3, 45, 80, 32
    q = randn(gen, b, sq, h, d, dtype=dtype).requires_grad_()
    k = randn(gen, b, sk, h, d, dtype=dtype).requires_grad_()
    v = randn(gen, b, sk, h, d, dtype=dtype).requires_grad_()
    out = fa.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), dropout_p=0.4,
                                          is_causal=True, seed=99)
    check_against_oracle(gen, out.transpose(1, 2), q, k, v, keep_for(99, 0.4, b, h, sq, sk), 0.4,
                         dtype, causal=True, bottom_right=False)


def test_varlen_matches_oracle_per_sequence(gen):
    lens_q, lens_k = [5, 0, 70, 33], [40, 3, 70, 20]
    hq, hkv, d, p, seed = 4, 2, 32, 0.3, 1234567
    cq = torch.tensor(np.cumsum([0] + lens_q), dtype=torch.int32)
    ck = torch.tensor(np.cumsum([0] + lens_k), dtype=torch.int32)
    q = randn(gen, sum(lens_q), hq, d).requires_grad_()
    k = randn(gen, sum(lens_k), hkv, d).requires_grad_()
    v = randn(gen, sum(lens_k), hkv, d).requires_grad_()
    out = fa.flash_attn_varlen_func(q, k, v, cq, ck, max(lens_q), max(lens_k), p, causal=True,
                                    seed=seed)
    keep = keep_for(seed, p, len(lens_q), hq, max(lens_q), max(lens_k))
    refs = []
    for i in range(len(lens_q)):
        qs, ks = slice(int(cq[i]), int(cq[i + 1])), slice(int(ck[i]), int(ck[i + 1]))
        if lens_q[i] == 0:
            continue
        refs.append(oracle.attention(q[None, qs], k[None, ks], v[None, ks], causal=True,
                                     dropout_p=p, keep=keep[i:i + 1, :, :lens_q[i], :lens_k[i]])[0][0])
    ref = torch.cat(refs)
    assert_close(out, ref, None, "out")
    dout = randn(gen, *out.shape)
    for name, g, r in zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), dout),
                          torch.autograd.grad(ref, (q, k, v), dout.double())):
        assert_close(g, r, None, name)


def test_decode_split_kv_matches_oracle(gen):
    """One query row against many keys: the forward splits the keys and merges the splits."""
    q, k, v = randn(gen, 1, 1, 8, 64), randn(gen, 1, 3000, 2, 64), randn(gen, 1, 3000, 2, 64)
    out = fa.flash_attn_func(q, k, v, 0.2, seed=3)
    ref = oracle.attention(q, k, v, dropout_p=0.2, keep=keep_for(3, 0.2, 1, 8, 1, 3000))[0]
    assert_close(out, ref, None, "out")


@pytest.mark.parametrize("isa", ["scalar", "avx512bf16-emu"])
def test_mask_and_results_independent_of_isa_and_threads(gen, monkeypatch, isa):
    if isa not in fa._C.available_isas():
        pytest.skip(f"instruction set {isa} is not available on this machine")
    sizes, args = (2, 3, 67, 131), (0.35, 2 ** 61 + 12345, 4242)
    auto = _dispatch.dropout_keep(*args, sizes)
    q = randn(gen, 2, 67, 3, 24, dtype=BF16)
    k, v = randn(gen, 2, 131, 3, 24, dtype=BF16), randn(gen, 2, 131, 3, 24, dtype=BF16)
    threads = fa.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            fa.set_num_threads(n)
            outs.append(fa.flash_attn_func(q, k, v, 0.35, seed=args[1]))
        assert torch.equal(outs[0], outs[1])
        monkeypatch.setenv("FLASHATTN_EXT_CPU_ISA", isa)
        np.testing.assert_array_equal(_dispatch.dropout_keep(*args, sizes), auto)
        other = fa.flash_attn_func(q, k, v, 0.35, seed=args[1])  # this ISA's kernels and mask
    finally:
        fa.set_num_threads(threads)
    keep = keep_for(args[1], 0.35, 2, 3, 67, 131)
    ref = oracle.attention(q, k, v, dropout_p=0.35, keep=keep)[0]
    naive = naive_in(BF16, q, k, v, dropout_p=0.35, keep=keep)[0]
    assert_close(other, ref, naive, f"out ({isa})")


def test_gradcheck_float64(gen):
    q, k, v = (randn(gen, 1, 9, 2, 8, dtype=F64).requires_grad_() for _ in range(3))

    def f(q, k, v):
        return fa.flash_attn_func(q, k[:, :7], v[:, :7], 0.3, causal=True, seed=2024)
    assert torch.autograd.gradcheck(f, (q, k, v))


def test_manual_seed_reproduces_and_backward_reuses_the_forwards_mask(gen):
    q, k, v = (randn(gen, 1, 40, 2, 16).requires_grad_() for _ in range(3))
    torch.manual_seed(7)
    first, lse, probs = fa.flash_attn_func(q, k, v, 0.5, return_attn_probs=True)
    torch.manual_seed(7)
    again = fa.flash_attn_func(q, k, v, 0.5)
    following = fa.flash_attn_func(q, k, v, 0.5)
    assert torch.equal(first, again)
    assert not torch.equal(first, following)
    # the signs of the probabilities give the mask the forward used; the gradients follow it
    keep = ~(probs < 0)
    assert torch.allclose(probs.abs().sum(-1), torch.ones(1, 2, 40))
    dropped = (probs < 0).float().mean().item()
    assert 0.4 < dropped < 0.6
    check_against_oracle(gen, first, q, k, v, keep, 0.5, F32)


def test_nn_module_drops_in_training_only(gen):
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (), generator=gen)))
    m = fa.nn.MultiHeadAttention(32, 4, dropout=0.3)
    x = randn(gen, 2, 10, 32)
    m.eval()
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    ref.load_state_dict(m.to_torch().state_dict())
    assert_close(m(x), ref(x, x, x, need_weights=False)[0].detach().double(), None, "eval")
    m.train()
    assert not torch.equal(m(x), m(x))
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[0, 7:] = True
    a, b = m(x, key_padding_mask=pad), m(x, key_padding_mask=pad)  # a mask and dropout together
    assert a.shape == x.shape and torch.isfinite(a).all() and not torch.equal(a, b)
    m.eval()
    assert_close(m(x, key_padding_mask=pad), ref(x, x, x, key_padding_mask=pad, need_weights=False)[0]
                 .detach().double(), None, "eval, padded")


def test_zero_p_is_the_plain_path(gen):
    q, k, v = (randn(gen, 2, 33, 2, 16) for _ in range(3))
    state = torch.get_rng_state()
    assert torch.equal(fa.flash_attn_func(q, k, v, 0.0), fa.flash_attn_func(q, k, v))
    assert torch.equal(torch.get_rng_state(), state)  # no draw either


def test_numpy_takes_a_seed(gen):
    q, k, v = (randn(gen, 1, 20, 2, 8) for _ in range(3))
    out = fa.flash_attn_func(q.numpy(), k.numpy(), v.numpy(), 0.2, seed=11)
    np.testing.assert_array_equal(out, fa.flash_attn_func(q, k, v, 0.2, seed=11).numpy())
    with pytest.raises(ValueError, match="seed"):
        fa.flash_attn_func(q.numpy(), k.numpy(), v.numpy(), 0.2)


@pytest.mark.parametrize("kw, error, text", [
    (dict(dropout_p=-0.1), ValueError, "dropout_p.*\\[0, 1\\)"),
    (dict(dropout_p=1.0), ValueError, "dropout_p.*\\[0, 1\\)"),
    (dict(dropout_p=float("nan")), ValueError, "dropout_p.*nan"),
    (dict(dropout_p="0.1"), TypeError, "dropout_p"),
    (dict(dropout_p=0.1, seed=-1), TypeError, "seed"),
    (dict(dropout_p=0.1, seed=1.5), TypeError, "seed"),
])
def test_bad_arguments(gen, kw, error, text):
    q = randn(gen, 2, 5, 2, 8)
    with pytest.raises(error, match=text):
        fa.flash_attn_func(q, q, q, **kw)


def test_emulated_cuda_kernels_refuse_by_name(gen, monkeypatch):
    pytest.importorskip("flashattn_ext._emu", reason="built without the emulator")
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    q = randn(gen, 1, 16, 2, 32, dtype=BF16)
    with pytest.raises(NotImplementedError, match="dropout_p=0.1.*CPU backend"):
        fa.flash_attn_func(q, q, q, 0.1)


def test_torch_compile_fullgraph_draws_the_seed_in_the_graph(gen):
    q, k, v = (randn(gen, 1, 24, 2, 16).requires_grad_() for _ in range(3))

    def f(q, k, v):
        return fa.flash_attn_func(q, k, v, 0.3)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.manual_seed(5)
    out = compiled(q, k, v)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    torch.manual_seed(5)
    ref = f(q, k, v)
    assert torch.equal(out, ref)
    for g, r in zip(grads, torch.autograd.grad(ref.sum(), (q, k, v))):
        assert torch.equal(g, r)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_dropout_with_an_explicit_mask(gen, dtype):
    """Dropout after an additive mask (docs/semantics.md sections 12 and 13): outputs and
    gradients, the mask's included, against the oracle with the same keep mask."""
    b, sq, sk, h, d, p = 2, 37, 50, 3, 16, 0.3
    seed = int(torch.randint(0, 2 ** 62, (), generator=gen))
    q, k, v = (randn(gen, b, s, h, d, dtype=dtype).requires_grad_() for s in (sq, sk, sk))
    bias = (randn(gen, b, 1, sq, sk) * 2).to(dtype).masked_fill(
        torch.rand(b, 1, sq, sk, generator=gen) < 0.2, float("-inf")).requires_grad_()
    out = fa.attention(q, k, v, attn_mask=bias, dropout_p=p, seed=seed)
    keep = keep_for(seed, p, b, h, sq, sk)
    ref = oracle.attention(q, k, v, bias=bias, dropout_p=p, keep=keep)[0]
    naive = None if dtype == F32 else oracle.attention(q, k, v, bias=bias, dropout_p=p, keep=keep,
                                                       dtype=dtype)[0]
    assert_close(out, ref, naive, "out")
    dout = randn(gen, *out.shape, dtype=dtype)
    wrt = (q, k, v, bias)
    naives = (None,) * 4 if naive is None else torch.autograd.grad(naive, wrt, dout)
    for name, g, r, n in zip(("dq", "dk", "dv", "dmask"), torch.autograd.grad(out, wrt, dout),
                             torch.autograd.grad(ref, wrt, dout.double()), naives):
        assert_close(g, r, n, name)
