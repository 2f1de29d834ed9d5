"""Attention dropout (docs/semantics.md section 13) on every backend (the CPU kernels, the CUDA
kernels on the emulator or a GPU): the generator against Random123's Philox-4x32-10 known answers
(an independent Python Philox here), the kept fraction within a binomial bound, forward and
gradients against the float64 oracle given the same keep mask (from the generator's helper), in
every dtype a backend takes, causal in both alignments, windows, GQA, Sq != Sk, odd sizes,
softcap and ALiBi, explicit masks, variable-length batches and decoding splits; the CUDA
kernels' keep mask bitwise the CPU's (forward and backward, dense and variable-length); the mask
independent of thread count and instruction set; gradcheck in float64; reproducibility through
torch.manual_seed; p = 0 is the plain path; bad arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import flashattn_ext as fa
import oracle
from attn_testing import assert_close, assert_out_and_grads_close, naive_in, needs_kernel, randn
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
    assert_out_and_grads_close(gen, out, ref, naive, (q, k, v))


MASKS = [(False, (-1, -1)), (True, (-1, -1)), (False, (9, 5))]
SHAPES = [(2, 70, 150, 4, 2, 64), (1, 150, 97, 3, 1, 40), (1, 17, 33, 2, 2, 8)]


@pytest.mark.parametrize("dtype", [F32, F64, BF16, F16], ids=str)
@pytest.mark.parametrize("mask", MASKS, ids=["full", "causal", "window9_5"])
@pytest.mark.parametrize("shape", SHAPES, ids=["sq<sk_gqa", "sq>sk_mqa", "odd"])
def test_flash_attn_func_matches_oracle(backend, gen, dtype, mask, shape):
    b, sq, sk, hq, hkv, d = shape
    needs_kernel(backend, dtype, backward=True, head_dim=d)
    causal, window = mask
    p, seed = 0.25, int(torch.randint(0, 2 ** 62, (), generator=gen))
    q = randn(gen, b, sq, hq, d, dtype=dtype).requires_grad_()
    k = randn(gen, b, sk, hkv, d, dtype=dtype).requires_grad_()
    v = randn(gen, b, sk, hkv, d, dtype=dtype).requires_grad_()
    out = fa.flash_attn_func(q, k, v, p, causal=causal, window_size=window, seed=seed)
    check_against_oracle(gen, out, q, k, v, keep_for(seed, p, b, hq, sq, sk), p, dtype,
                         causal=causal, window=window)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_sdpa_top_left_causal_matches_oracle(backend, gen, dtype):
    needs_kernel(backend, dtype, backward=True)
    b, h, sq, sk, d = 2, 3, 45, 80, 32
    q = randn(gen, b, sq, h, d, dtype=dtype).requires_grad_()
    k = randn(gen, b, sk, h, d, dtype=dtype).requires_grad_()
    v = randn(gen, b, sk, h, d, dtype=dtype).requires_grad_()
    out = fa.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), dropout_p=0.4,
                                          is_causal=True, seed=99)
    check_against_oracle(gen, out.transpose(1, 2), q, k, v, keep_for(99, 0.4, b, h, sq, sk), 0.4,
                         dtype, causal=True, bottom_right=False)


def varlen_oracle(q, k, v, cq, ck, keep, p, dtype=F64, **kw):
    """The oracle per sequence of a packed batch (rows of empty sequences left out)."""
    outs = []
    for i in range(len(cq) - 1):
        qs, ks = slice(int(cq[i]), int(cq[i + 1])), slice(int(ck[i]), int(ck[i + 1]))
        lq, lk = qs.stop - qs.start, ks.stop - ks.start
        if lq:
            outs.append(oracle.attention(q[None, qs], k[None, ks], v[None, ks], dtype=dtype,
                                         dropout_p=p, keep=keep[i:i + 1, :, :lq, :lk], **kw)[0][0])
    return torch.cat(outs)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_varlen_matches_oracle_per_sequence(backend, gen, dtype):
    needs_kernel(backend, dtype, backward=True)
    lens_q, lens_k = [5, 0, 70, 33], [40, 3, 70, 20]
    hq, hkv, d, p, seed = 4, 2, 32, 0.3, int(torch.randint(0, 2 ** 62, (), generator=gen))
    cq = torch.tensor(np.cumsum([0] + lens_q), dtype=torch.int32)
    ck = torch.tensor(np.cumsum([0] + lens_k), dtype=torch.int32)
    q = randn(gen, sum(lens_q), hq, d, dtype=dtype).requires_grad_()
    k = randn(gen, sum(lens_k), hkv, d, dtype=dtype).requires_grad_()
    v = randn(gen, sum(lens_k), hkv, d, dtype=dtype).requires_grad_()
    out = fa.flash_attn_varlen_func(q, k, v, cq, ck, max(lens_q), max(lens_k), p, causal=True,
                                    seed=seed)
    keep = keep_for(seed, p, len(lens_q), hq, max(lens_q), max(lens_k))
    ref = varlen_oracle(q, k, v, cq, ck, keep, p, causal=True)
    naive = None if dtype == F32 else varlen_oracle(q, k, v, cq, ck, keep, p, dtype, causal=True)
    assert_out_and_grads_close(gen, out, ref, naive, (q, k, v))


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_decode_split_kv_matches_oracle(backend, gen, dtype):
    """One query row against many keys: the forward splits the keys and merges the splits (the
    CUDA kernels split variable-length calls whose query tiles leave SMs idle)."""
    needs_kernel(backend, dtype)
    q, k, v = (randn(gen, 1, s, h, 64, dtype=dtype) for s, h in ((1, 8), (3000, 2), (3000, 2)))
    out = fa.flash_attn_func(q, k, v, 0.2, seed=3)
    keep = keep_for(3, 0.2, 1, 8, 1, 3000)
    ref = oracle.attention(q, k, v, dropout_p=0.2, keep=keep)[0]
    naive = None if dtype == F32 else naive_in(dtype, q, k, v, dropout_p=0.2, keep=keep)[0]
    assert_close(out, ref, naive, "out")
    cq, ck = torch.tensor([0, 1, 2], dtype=torch.int32), torch.tensor([0, 3000, 3900], dtype=torch.int32)
    q2, k2, v2 = randn(gen, 2, 8, 64, dtype=dtype), randn(gen, 3900, 2, 64, dtype=dtype), randn(gen, 3900, 2, 64, dtype=dtype)
    out = fa.flash_attn_varlen_func(q2, k2, v2, cq, ck, 1, 3000, 0.2, seed=5)
    keep = keep_for(5, 0.2, 2, 8, 1, 3000)
    ref = varlen_oracle(q2, k2, v2, cq, ck, keep, 0.2)
    naive = None if dtype == F32 else varlen_oracle(q2, k2, v2, cq, ck, keep, 0.2, dtype)
    assert_close(out, ref, naive, "out (varlen)")


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


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_manual_seed_reproduces_and_backward_reuses_the_forwards_mask(backend, gen, dtype):
    needs_kernel(backend, dtype, backward=True)
    q, k, v = (randn(gen, 1, 40, 2, 16, dtype=dtype).requires_grad_() for _ in range(3))
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
    check_against_oracle(gen, first, q, k, v, keep, 0.5, dtype)


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


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_zero_p_is_the_plain_path(backend, gen, dtype):
    needs_kernel(backend, dtype)
    q, k, v = (randn(gen, 2, 33, 2, 16, dtype=dtype) for _ in range(3))
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
def test_dropout_with_an_explicit_mask(backend, gen, dtype):
    """Dropout after an additive mask (docs/semantics.md sections 12 and 13): outputs and
    gradients, the mask's included, against the oracle with the same keep mask."""
    needs_kernel(backend, dtype, backward=True)
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


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
def test_mask_gradient_rows_sum_to_zero(backend, gen, dtype):
    """The gradient of an additive mask is dS = P (M dP - delta), whose rows sum to zero when
    delta is sum_j P_ij M_ij dP_ij of the same P and dP. A delta taken as dO . O from a 16-bit
    output errs by its rounding (2^-9 of the row's terms in bfloat16), and every dS of the row
    with it: row sums of the float32 mask gradient must stay at float32 rounding."""
    needs_kernel(backend, dtype, backward=True)
    b, sq, sk, h, d, p = 2, 37, 50, 3, 16, 0.3
    seed = int(torch.randint(0, 2 ** 62, (), generator=gen))
    q, k, v = (randn(gen, b, s, h, d, dtype=dtype).requires_grad_() for s in (sq, sk, sk))
    bias = randn(gen, b, h, sq, sk).requires_grad_()
    out = fa.attention(q, k, v, attn_mask=bias, dropout_p=p, seed=seed)
    dmask, = torch.autograd.grad(out, (bias,), randn(gen, *out.shape, dtype=dtype))
    rows = dmask.double()
    assert rows.sum(-1).abs().max() <= 1e-4 * rows.abs().sum(-1).max()


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
@pytest.mark.parametrize("band", [(False, (-1, -1)), (True, (-1, -1)), (False, (20, 7))],
                         ids=["full", "causal", "window20_7"])
def test_dropout_with_softcap_and_alibi(backend, gen, dtype, band):
    """Dropout after softcap and ALiBi (one feature call), GQA, Sq > Sk, against the oracle."""
    needs_kernel(backend, dtype, backward=True)
    causal, window = band
    b, sq, sk, hq, hkv, d, p = 2, 83, 61, 4, 2, 64, 0.2
    seed = int(torch.randint(0, 2 ** 62, (), generator=gen))
    q = (randn(gen, b, sq, hq, d) * 2).to(dtype).requires_grad_()
    k = (randn(gen, b, sk, hkv, d) * 2).to(dtype).requires_grad_()
    v = randn(gen, b, sk, hkv, d, dtype=dtype).requires_grad_()
    slopes = torch.rand(hq, generator=gen) * 0.3
    out = fa.flash_attn_func(q, k, v, p, causal=causal, window_size=window, softcap=4.0,
                             alibi_slopes=slopes, seed=seed)
    check_against_oracle(gen, out, q, k, v, keep_for(seed, p, b, hq, sq, sk), p, dtype,
                         causal=causal, window=window, softcap=4.0, alibi_slopes=slopes)


def one_hot_keys(b: int, s: int, h: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    """(b, s, h, d) rows e_j: row j of every batch and head is the j-th unit vector (s <= d)."""
    return torch.eye(s, d, dtype=dtype)[None, :, None].expand(b, s, h, d).contiguous()



@pytest.mark.parametrize("where", ["cpu", "emu"])
def test_the_kernels_read_a_drawn_seed_where_they_run(gen, monkeypatch, where):
    """A seed and offset drawn from torch's generator stay on q's device: the kernels read them
    there (the host never does, so a CUDA call does not wait for the draw). Results bitwise those
    of the same pair given as seed and offset, different once the pair in memory changes; a pair
    of the wrong kind is refused by name."""
    if where == "emu":
        pytest.importorskip("flashattn_ext._emu", reason="built without the emulator")
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", where)
    from flashattn_ext import _torch_ops
    from flashattn_ext._validate import MaskSpec
    q, k, v = (randn(gen, 2, 45, 2, 32, dtype=BF16).requires_grad_() for _ in range(3))
    dout = randn(gen, 2, 45, 2, 32, dtype=BF16)
    seed, offset = (int(x) for x in torch.randint(0, 2 ** 62, (2,), generator=gen))

    def run(**dropout):
        out, _ = _torch_ops.apply(q, k, v, 32 ** -0.5, MaskSpec(dropout_p=0.3, **dropout))
        return (out, *torch.autograd.grad(out, (q, k, v), dout))
    given = run(dropout_seed=seed, dropout_offset=offset % 2 ** 32)
    rng = torch.tensor([seed, offset])
    monkeypatch.setattr(MaskSpec, "resolved", lambda self: pytest.fail("the host read the drawn seed"))
    drawn = run(dropout_rng=rng)
    for name, a, b in zip(("out", "dq", "dk", "dv"), given, drawn):
        assert torch.equal(a, b), name
    rng[0] += 1
    assert not torch.equal(run(dropout_rng=rng)[0], drawn[0])
    for bad in (rng.int(), torch.cat([rng[:1], rng])[1:]):  # int32; 8 bytes past an allocation
        with pytest.raises(ValueError, match="dropout_rng: expected a contiguous int64 tensor"):
            run(dropout_rng=bad)

@pytest.mark.parametrize("d, sq, sk", [(128, 100, 128), (256, 70, 256)])
def test_cuda_keep_mask_bitwise_the_cpus(gen, monkeypatch, d, sq, sk):
    """The emulated CUDA kernels drop exactly the CPU kernels' entries, in the forward and the
    backward. With q = 0 every key gets probability 1 / Sk, so with V's rows the unit vectors
    out[b, i, h, j] = keep(b, h, i, j) / (Sk (1 - p)), zero iff dropped; with dO's rows the unit
    vectors dV[b, j, h, i] = keep(b, h, i, j) / (Sk (1 - p)). Seeds and offsets drawn by
    torch.manual_seed (offset != 0), then a fixed seed against the generator's helper."""
    pytest.importorskip("flashattn_ext._emu", reason="built without the emulator")
    b, h, p = 2, 3, 0.4
    q = torch.zeros(b, sq, h, d, dtype=BF16, requires_grad=True)
    k = randn(gen, b, sk, h, d, dtype=BF16).requires_grad_()
    v = one_hot_keys(b, sk, h, d, BF16).requires_grad_()
    dout = one_hot_keys(b, sq, h, d, BF16)
    draw = int(torch.randint(0, 2 ** 31, (), generator=gen))
    masks = {}
    for backend in ("cpu", "emu"):
        monkeypatch.setenv("FLASHATTN_EXT_BACKEND", backend)
        torch.manual_seed(draw)
        out = fa.flash_attn_func(q, k, v, p)
        dv = torch.autograd.grad(out, v, dout)[0]
        masks[backend] = (out[..., :sk].permute(0, 2, 1, 3) != 0, dv[..., :sq].permute(0, 2, 3, 1) != 0)
        fixed = fa.flash_attn_func(q.detach(), k.detach(), v.detach(), p, seed=draw)
        np.testing.assert_array_equal(fixed[..., :sk].permute(0, 2, 1, 3) != 0,
                                      keep_for(draw, p, b, h, sq, sk), err_msg=backend)
    for what, cpu, emu in zip(("out", "dv"), masks["cpu"], masks["emu"]):
        assert 0.5 < cpu.float().mean() < 0.7, what
        assert torch.equal(cpu, emu), f"{what}: {(cpu != emu).sum().item()} entries differ"


def test_cuda_keep_mask_of_packed_sequences(gen, monkeypatch):
    """Variable-length batches on the emulated CUDA kernels: each sequence's rows and keys are
    counted within it (out as in test_cuda_keep_mask_bitwise_the_cpus)."""
    pytest.importorskip("flashattn_ext._emu", reason="built without the emulator")
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    lens_q, lens_k, h, d, p, seed = [9, 70, 1, 33], [64, 100, 128, 5], 2, 128, 0.3, 2 ** 40 + 17
    cq = torch.tensor(np.cumsum([0] + lens_q), dtype=torch.int32)
    ck = torch.tensor(np.cumsum([0] + lens_k), dtype=torch.int32)
    q = torch.zeros(sum(lens_q), h, d, dtype=F16)
    k = randn(gen, sum(lens_k), h, d, dtype=F16)
    v = torch.cat([one_hot_keys(1, n, h, d, F16)[0] for n in lens_k])
    out = fa.flash_attn_varlen_func(q, k, v, cq, ck, max(lens_q), max(lens_k), p, seed=seed)
    keep = keep_for(seed, p, len(lens_q), h, max(lens_q), max(lens_k))
    for i, (lq, lk) in enumerate(zip(lens_q, lens_k)):
        got = out[int(cq[i]):int(cq[i + 1]), :, :lk].permute(1, 0, 2) != 0
        assert torch.equal(got, keep[i, :, :lq, :lk]), f"sequence {i}"


def test_emulated_kernels_do_not_depend_on_thread_order(gen, monkeypatch):
    """Dropout on the emulator with the block's threads shuffled by seed (the keep bits cross
    lanes by shuffles): the same output bitwise, and in deterministic mode the same dq, dk, dv;
    D = 256 runs the feature instances' own backward tiles."""
    emu = pytest.importorskip("flashattn_ext._emu", reason="built without the emulator")
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    monkeypatch.setenv("FLASHATTN_EXT_DETERMINISTIC", "1")  # dq summed in a fixed order
    for d in (64, 256):
        q, k, v = (randn(gen, 2, s, h, d, dtype=BF16).requires_grad_() for s, h in ((50, 4), (90, 2), (90, 2)))
        dout = randn(gen, 2, 50, 4, d, dtype=BF16)
        runs = []
        try:
            for seed in (None, 1, 2):
                emu.set_seed(seed)
                out = fa.flash_attn_func(q, k, v, 0.3, causal=True, seed=77)
                runs.append((out, *torch.autograd.grad(out, (q, k, v), dout)))
        finally:
            emu.set_seed(None)
        for other in runs[1:]:
            for name, x, y in zip(("out", "dq", "dk", "dv"), runs[0], other):
                assert torch.equal(x, y), f"{name}, D = {d}"


def test_nan_reaches_the_same_entries_as_on_the_cpu(gen, monkeypatch):
    """docs/semantics.md section 6 with dropout: a NaN query element is not lost through its
    dropped pairs (kept probabilities are multiplied by the keep mask, 0 * NaN = NaN), on the
    emulated CUDA kernels exactly where the CPU kernels have it."""
    pytest.importorskip("flashattn_ext._emu", reason="built without the emulator")
    q, k, v = (randn(gen, 1, s, 2, 32, dtype=BF16) for s in (40, 70, 70))
    q[0, 7, 1, 3] = float("nan")
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    dout = randn(gen, 1, 40, 2, 32, dtype=BF16)
    nans = {}
    for backend in ("cpu", "emu"):
        monkeypatch.setenv("FLASHATTN_EXT_BACKEND", backend)
        out = fa.flash_attn_func(q, k, v, 0.5, seed=9)  # no mask: no tile-edge NaN (section 6)
        nans[backend] = [x.isnan() for x in (out, *torch.autograd.grad(out, (q, k, v), dout))]
    for name, cpu, emu in zip(("out", "dq", "dk", "dv"), nans["cpu"], nans["emu"]):
        assert cpu.any(), name
        assert torch.equal(cpu, emu), f"{name}: {(cpu != emu).sum().item()} entries differ"
