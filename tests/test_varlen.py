"""Variable-length (packed) batches and the packed-QKV wrappers against a loop over sequences of
the float64 oracle: random length mixes with empty, one-token and tile-edge sequences, causal in
both senses (Sq < Sk and Sq > Sk per sequence), windows, GQA, forward and backward. Longer sweeps
with FLASHATTN_EXT_LONG_TESTS=1."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import flashattn_ext as fa
import oracle
from attn_testing import assert_close, needs_kernel, randn

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
LONG = os.environ.get("FLASHATTN_EXT_LONG_TESTS") == "1"

# Tile edges of the CPU kernels (forward 64 x 128, backward 48 x 64) and of the CUDA ones.
EDGES = (0, 1, 2, 15, 16, 17, 47, 48, 49, 63, 64, 65, 127, 128, 129)


def lengths(gen: torch.Generator, batch: int, top: int) -> list:
    """A random mix of tile-edge lengths and random ones in [0, top]."""
    edges = [e for e in EDGES if e <= top]
    out = []
    for _ in range(batch):
        pick = int(torch.randint(0, 2, (1,), generator=gen))
        out.append(edges[int(torch.randint(0, len(edges), (1,), generator=gen))] if pick
                   else int(torch.randint(0, top + 1, (1,), generator=gen)))
    return out


def cu(lens: list) -> torch.Tensor:
    return torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32)


def packed(gen, lens_q, lens_k, hq, hkv, d, dtype):
    return (randn(gen, sum(lens_q), hq, d, dtype=dtype), randn(gen, sum(lens_k), hkv, d, dtype=dtype),
            randn(gen, sum(lens_k), hkv, d, dtype=dtype))


def run(backend: str, fn, *args, **kw):
    """The call, or a skip with the library's reason when the backend has no such kernel."""
    try:
        return fn(*args, **kw)
    except NotImplementedError as e:
        if backend == "emu":
            pytest.skip(str(e))
        raise


MASKS = [(False, (-1, -1)), (True, (-1, -1)), (False, (7, 3)), (True, (20, -1))]
MASK_IDS = ["full", "causal", "window7_3", "causal_left20"]
HEADS = [(2, 2), (6, 2), (4, 1)]


def varlen_case(backend, gen, dtype, mask, cross):
    """Packed inputs (requiring grad) of a random length mix, and the call's keywords."""
    causal, window = mask
    hq, hkv = HEADS[int(torch.randint(0, len(HEADS), (1,), generator=gen))]
    d = (32, 64)[int(torch.randint(0, 2, (1,), generator=gen))]
    batch, top = (9 if LONG else 5), (140 if backend == "cpu" else 70)  # the emulator: shorter
    lens_q = lengths(gen, batch, top)
    lens_k = lengths(gen, batch, top) if cross else lens_q
    q, k, v = (x.requires_grad_() for x in packed(gen, lens_q, lens_k, hq, hkv, d, dtype))
    return (q, k, v, cu(lens_q), cu(lens_k), max(lens_q), max(lens_k)), dict(causal=causal, window=window)


@pytest.mark.parametrize("dtype", [F32, F64, BF16, F16], ids=str)
@pytest.mark.parametrize("mask", MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_varlen_forward_matches_oracle(backend, gen, dtype, mask, cross):
    """``cross``: each sequence has its own Sq != Sk (rows that see no key under the bottom-right
    mask when Sq > Sk)."""
    needs_kernel(backend, dtype)
    (q, k, v, cq, ck, mq, mk), kw = varlen_case(backend, gen, dtype, mask, cross)
    out, lse, _ = run(backend, fa.flash_attn_varlen_func, q, k, v, cq, ck, mq, mk, causal=kw["causal"],
                      window_size=kw["window"], return_attn_probs=True)
    assert out.shape == q.shape and out.dtype == dtype
    assert lse.shape == (q.shape[1], q.shape[0]) and lse.dtype == (F64 if dtype == F64 else F32)
    ref, ref_lse = oracle.varlen_attention(q, k, v, cq, ck, **kw)
    naive = oracle.varlen_attention(q, k, v, cq, ck, dtype=dtype, **kw)[0] if dtype in (BF16, F16) else None
    assert_close(out, ref, naive, "out")
    assert_close(lse, ref_lse.to(lse.dtype), None, "lse")


@pytest.mark.parametrize("dtype", [F32, F64, BF16, F16], ids=str)
@pytest.mark.parametrize("mask", MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_varlen_backward_matches_oracle(backend, gen, dtype, mask, cross):
    needs_kernel(backend, dtype, backward=True, head_dim=64)
    (q, k, v, cq, ck, mq, mk), kw = varlen_case(backend, gen, dtype, mask, cross)
    out = fa.flash_attn_varlen_func(q, k, v, cq, ck, mq, mk, causal=kw["causal"], window_size=kw["window"])
    dout = randn(gen, *out.shape, dtype=dtype)
    grads = run(backend, torch.autograd.grad, out, (q, k, v), dout)
    ref = oracle.varlen_attention(q, k, v, cq, ck, **kw)[0]
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout.double(), allow_unused=True)
    low = dtype in (BF16, F16)
    naive_grads = [None] * 3
    if low:
        naive = oracle.varlen_attention(q, k, v, cq, ck, dtype=dtype, **kw)[0]
        naive_grads = torch.autograd.grad(naive, (q, k, v), dout, allow_unused=True)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref_grads, naive_grads):
        r = torch.zeros_like(g, dtype=F64) if r is None else r  # no key is seen by any row
        n = torch.zeros_like(g) if low and n is None else n
        assert_close(g, r, n, name)


def test_varlen_gradient_of_lse(gen):
    """A loss on lse sends dlse through the packed (Hq, total_q) layout."""
    lens = [3, 0, 6, 1]
    q, k, v = (x.requires_grad_() for x in packed(gen, lens, lens, 2, 1, 3, F64))
    c = cu(lens)
    assert torch.autograd.gradcheck(
        lambda a, b, e: fa.flash_attn_varlen_func(a, b, e, c, c, 6, 6, causal=True,
                                                  return_attn_probs=True)[1].sin().sum(),
        (q, k, v), eps=1e-6, atol=1e-8)


def test_varlen_gradcheck_float64(gen):
    lens_q, lens_k = [4, 0, 1, 6], [5, 3, 0, 2]
    q, k, v = (x.requires_grad_() for x in packed(gen, lens_q, lens_k, 2, 1, 4, F64))
    cq, ck = cu(lens_q), cu(lens_k)
    assert torch.autograd.gradcheck(
        lambda a, b, e: fa.flash_attn_varlen_func(a, b, e, cq, ck, 6, 5, causal=True),
        (q, k, v), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_equal_lengths_match_flash_attn_func_bitwise(gen, dtype):
    """Equal lengths are flash_attn_func's batch: the same tiles, the same bits."""
    b, s, hq, hkv, d = 3, 77, 4, 2, 32
    q, k, v = (x.requires_grad_() for x in packed(gen, [s] * b, [s] * b, hq, hkv, d, dtype))
    c = cu([s] * b)
    out, lse, _ = fa.flash_attn_varlen_func(q, k, v, c, c, s, s, causal=True,
                                            return_attn_probs=True)
    shaped = [x.reshape(b, s, *x.shape[1:]) for x in (q, k, v)]
    ref, ref_lse, _ = fa.flash_attn_func(*shaped, causal=True, return_attn_probs=True)
    assert torch.equal(out, ref.reshape(out.shape))
    assert torch.equal(lse, ref_lse.transpose(0, 1).reshape(lse.shape))
    dout = randn(gen, *out.shape, dtype=dtype)
    for g, r in zip(torch.autograd.grad(out, (q, k, v), dout),
                    torch.autograd.grad(ref, (q, k, v), dout.reshape(ref.shape))):
        assert torch.equal(g, r)


def test_varlen_independent_of_thread_count(gen):
    """Many short sequences: one scheduling pass over all tiles, bitwise the same on 1 thread."""
    lens = lengths(gen, 40, 70)
    q, k, v = (x.requires_grad_() for x in packed(gen, lens, lens, 4, 2, 32, F32))
    c = cu(lens)

    def step():
        out = fa.flash_attn_varlen_func(q, k, v, c, c, max(lens), max(lens), causal=True)
        return (out,) + torch.autograd.grad(out.square().sum(), (q, k, v))

    ref = step()
    try:
        fa.set_num_threads(1)
        one = step()
    finally:
        fa.set_num_threads(0)
    for a, b in zip(ref, one):
        assert torch.equal(a, b)


def test_varlen_numpy_forward(gen):
    lens_q, lens_k = [5, 0, 33], [9, 4, 0]
    q, k, v = packed(gen, lens_q, lens_k, 4, 2, 16, F32)
    cq, ck = cu(lens_q), cu(lens_k)
    out, lse, _ = fa.flash_attn_varlen_func(q.numpy(), k.numpy(), v.numpy(), cq.numpy(),
                                            ck.numpy(), 33, 9, causal=True, return_attn_probs=True)
    assert isinstance(out, np.ndarray) and out.shape == tuple(q.shape)
    ref, ref_lse, _ = fa.flash_attn_varlen_func(q, k, v, cq, ck, 33, 9, causal=True,
                                                return_attn_probs=True)
    assert np.array_equal(out, ref.numpy()) and np.array_equal(lse, ref_lse.numpy())


@pytest.mark.parametrize("page_size", [16, 48])
def test_varlen_paged_kv(gen, page_size):
    """block_table: sequence b's keys are the first len_k[b] positions of its pages."""
    lens_q, lens_k = [3, 0, 40, 1], [50, 7, 96, 0]
    hq, hkv, d = 4, 2, 32
    q, k, v = packed(gen, lens_q, lens_k, hq, hkv, d, F32)
    cq, ck = cu(lens_q), cu(lens_k)
    pages_per_seq = -(-max(lens_k) // page_size)
    n_pages = pages_per_seq * len(lens_k) + 3
    table = torch.randperm(n_pages, generator=gen)[:pages_per_seq * len(lens_k)]
    table = table.reshape(len(lens_k), pages_per_seq).to(torch.int32)
    kc, vc = (randn(gen, n_pages, page_size, hkv, d) for _ in range(2))
    for b, n in enumerate(lens_k):
        for j in range(n):
            page, row = int(table[b, j // page_size]), j % page_size
            kc[page, row], vc[page, row] = k[int(ck[b]) + j], v[int(ck[b]) + j]
    out = fa.flash_attn_varlen_func(q, kc, vc, cq, ck, 40, 96, causal=True, block_table=table)
    assert_close(out, oracle.varlen_attention(q, k, v, cq, ck, causal=True)[0], None, "out")
    with pytest.raises(NotImplementedError, match="block_table: no gradients"):
        fa.flash_attn_varlen_func(q.requires_grad_(), kc, vc, cq, ck, 40, 96, block_table=table)


# ---- packed QKV wrappers: thin, and gradients land in the packed tensor ----------------------

def test_qkvpacked_and_kvpacked(gen):
    b, s, h, d = 2, 19, 4, 16
    qkv = randn(gen, b, s, 3, h, d, dtype=F64).requires_grad_()
    out = fa.flash_attn_qkvpacked_func(qkv, causal=True)
    q, k, v = (qkv[:, :, i].detach().clone().requires_grad_() for i in range(3))
    ref = fa.flash_attn_func(q, k, v, causal=True)
    assert torch.equal(out, ref)
    dout = randn(gen, *out.shape, dtype=F64)
    (grad,) = torch.autograd.grad(out, qkv, dout)
    assert grad.shape == qkv.shape
    assert torch.equal(grad, torch.stack(torch.autograd.grad(ref, (q, k, v), dout), dim=2))

    kv = randn(gen, b, 23, 2, 2, d, dtype=F64).requires_grad_()
    q = q.detach().requires_grad_()
    out = fa.flash_attn_kvpacked_func(q, kv, window_size=(4, 4))
    ref = oracle.attention(q, kv[:, :, 0], kv[:, :, 1], window=(4, 4))[0]
    assert_close(out, ref, None, "out")
    for g, r in zip(torch.autograd.grad(out, (q, kv), dout), torch.autograd.grad(ref, (q, kv), dout)):
        assert_close(g, r, None, "grad")


def test_varlen_qkvpacked_and_kvpacked(gen):
    lens = [6, 0, 30, 1]
    c, h, d = cu(lens), 2, 16
    qkv = randn(gen, sum(lens), 3, h, d, dtype=F64).requires_grad_()
    out = fa.flash_attn_varlen_qkvpacked_func(qkv, c, 30, causal=True)
    ref = oracle.varlen_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], c, c, causal=True)[0]
    assert_close(out, ref, None, "out")
    dout = randn(gen, *out.shape, dtype=F64)
    (grad,) = torch.autograd.grad(out, qkv, dout)
    assert_close(grad, torch.autograd.grad(ref, qkv, dout)[0], None, "dqkv")

    lens_k = [3, 9, 0, 12]
    kv = randn(gen, sum(lens_k), 2, 1, d, dtype=F64).requires_grad_()
    q = qkv[:, 0].detach().requires_grad_()
    out = fa.flash_attn_varlen_kvpacked_func(q, kv, c, cu(lens_k), 30, 12, causal=True)
    ref = oracle.varlen_attention(q, kv[:, 0], kv[:, 1], c, cu(lens_k), causal=True)[0]
    assert_close(out, ref, None, "out")
    for g, r in zip(torch.autograd.grad(out, (q, kv), dout), torch.autograd.grad(ref, (q, kv), dout)):
        assert_close(g, r, None, "grad")


def test_varlen_opcheck(gen):
    lens = [3, 0, 9]
    q, k, v = (x.requires_grad_() for x in packed(gen, lens, lens, 2, 1, 8, F64))
    c = cu(lens)
    torch.library.opcheck(torch.ops.flashattn_ext.varlen_fwd.default,
                          (q, k, v, c, c, None, 0.3, -1, 0))


def test_varlen_torch_compile_fullgraph(gen):
    torch._dynamo.reset()
    lens = [5, 17, 2]
    q, k, v = (x.requires_grad_() for x in packed(gen, lens, lens, 2, 2, 16, F32))
    c = cu(lens)
    f = lambda a, b, e: fa.flash_attn_varlen_func(a * 2, b, e, c, c, 17, 17, causal=True).sum()
    loss = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    ref = f(q, k, v)
    assert torch.equal(loss, ref)
    for g, r in zip(torch.autograd.grad(loss, (q, k, v)), torch.autograd.grad(ref, (q, k, v))):
        assert torch.equal(g, r)
