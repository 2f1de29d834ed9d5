"""Attention weights, hard and top-k attention against the float64 oracles of interp_oracle.py,
on each backend: random data, exact ties, rows that see no key, k_top at the edges, GQA, causal
in both alignments, gradients."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import flashattn_ext as fa
import interp_oracle as io
import oracle
from attn_testing import assert_close, needs_kernel, randn
from flashattn_ext import _interp_ops
from flashattn_ext._validate import MaskSpec

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16

# (B, Sq, Sk, Hq, Hkv, D, causal, window)
CASES = [
    (1, 1, 1, 1, 1, 8, False, (-1, -1)),
    (2, 37, 53, 4, 2, 40, True, (-1, -1)),     # GQA, Sq < Sk
    (1, 70, 33, 2, 1, 64, True, (-1, -1)),     # Sq > Sk: rows that see no key
    (2, 65, 130, 2, 2, 96, False, (7, 3)),     # sliding window, several key tiles
    (1, 20, 150, 3, 3, 128, False, (-1, -1)),
    (1, 40, 40, 2, 1, 256, True, (5, -1)),
]
IDS = [f"b{c[0]}-sq{c[1]}-sk{c[2]}-h{c[3]}x{c[4]}-d{c[5]}-{'causal' if c[6] else 'full'}-w{c[7][0]}_{c[7][1]}"
       for c in CASES]
DTYPES = [F32, F64, BF16, F16]


def _inputs(gen, case, dtype):
    b, sq, sk, hq, hkv, d = case[:6]
    return (randn(gen, b, sq, hq, d, dtype=dtype), randn(gen, b, sk, hkv, d, dtype=dtype),
            randn(gen, b, sk, hkv, d, dtype=dtype))


def _naive(dtype, fn, *args, **kw):
    return fn(*args, dtype=dtype, **kw) if dtype in (BF16, F16) else None


# ---- attention weights ---------------------------------------------------------------------------

@pytest.mark.parametrize("given_lse", [False, True], ids=["lse-computed", "lse-given"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_weights_match_oracle(backend, gen, case, dtype, given_lse):
    needs_kernel(backend, dtype)
    q, k, v = _inputs(gen, case, dtype)
    causal, window = case[6], case[7]
    hq, sq = q.shape[2], q.shape[1]
    heads = torch.randperm(hq, generator=gen)[: max(1, hq - 1)].tolist()
    rows = torch.randint(0, sq, (min(sq, 70),), generator=gen).tolist()  # any order, repeats
    lse = fa.attention(q, k, v, causal=causal, window_size=window, return_lse=True)[1] if given_lse else None
    p = fa.attention_weights(q, k, causal=causal, window_size=window, lse=lse, heads=heads, rows=rows)
    ref = io.probabilities(q, k, causal=causal, window=window)[:, heads][:, :, rows]
    assert p.dtype == (F64 if dtype == F64 else F32)
    assert_close(p, ref, None, "probabilities")
    masked = ~oracle.visible_keys(sq, k.shape[1], window[0], 0 if causal else window[1], True)[rows]
    assert (p[:, :, masked] == 0).all(), "masked keys must have probability exactly 0"


def test_weights_numpy_and_ranks(gen):
    q, k = randn(gen, 30, 16).numpy(), randn(gen, 45, 16).numpy()
    p = fa.attention_weights(q, k, causal=True)
    assert isinstance(p, np.ndarray) and p.shape == (30, 45) and p.dtype == np.float32
    ref = io.probabilities(torch.from_numpy(q)[None, :, None], torch.from_numpy(k)[None, :, None], causal=True)[0, 0]
    assert_close(torch.from_numpy(p), ref, None, "probabilities")
    _, lse = fa.attention(q, k, k, causal=True, return_lse=True)
    p2 = fa.attention_weights(q, k, causal=True, lse=lse, rows=slice(-3, None))
    assert_close(torch.from_numpy(p2), ref[-3:], None, "probabilities from lse")
    q3, k3 = randn(gen, 2, 30, 16), randn(gen, 2, 45, 16)
    assert fa.attention_weights(q3, k3, rows=4).shape == (2, 1, 45)


@pytest.mark.parametrize("given_lse", [False, True], ids=["lse-computed", "lse-given"])
def test_weights_of_a_nan_row(backend, gen, given_lse):
    """A NaN query row is NaN at the keys it sees and 0 at the masked ones; other rows are finite."""
    q, k = randn(gen, 1, 40, 2, 32, dtype=BF16), randn(gen, 1, 40, 2, 32, dtype=BF16)
    q[0, 7, 1, 3] = float("nan")
    lse = fa.attention(q, k, k, causal=True, return_lse=True)[1] if given_lse else None
    p = fa.attention_weights(q, k, causal=True, lse=lse)
    assert p[0, 1, 7, :8].isnan().all() and (p[0, 1, 7, 8:] == 0).all()
    p[0, 1, 7] = 0
    assert p.isfinite().all()


def test_flash_attn_func_returns_probabilities(backend, gen):
    q, k, v = _inputs(gen, CASES[1], BF16)
    out, lse, probs = fa.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert torch.equal(out, fa.flash_attn_func(q, k, v, causal=True))
    assert lse.shape == (2, 4, 37) and probs.shape == (2, 4, 37, 53)
    assert_close(probs, io.probabilities(q, k, causal=True), None, "S_dmask probabilities")


# ---- top-k and hard attention ----------------------------------------------------------------------

def _check_selection(index, q, k, k_top, **kw):
    """index is a valid top-k: the right count per row, visible keys, best first, and no key left
    out ranks clearly above a kept one (scores within float32 rounding may swap)."""
    s, ok = io.scores(q, k, **kw)
    n = index.shape[-1]
    want = ok.sum(-1).clamp_max(n)[None, None].expand(index.shape[:3])
    assert torch.equal((index >= 0).sum(-1), want), "kept-key count differs from min(k_top, visible)"
    assert ((index >= 0).cumsum(-1) == torch.arange(1, n + 1).clamp_max(want[..., None])).all(), "-1 only at the end"
    tol = 1e-4 * max(1.0, s.abs().max().item())
    sel = torch.where(index >= 0, s.gather(-1, index.clamp_min(0)), torch.full(index.shape, -io.INF, dtype=s.dtype))
    assert (ok.expand_as(s).gather(-1, index.clamp_min(0)) | (index < 0)).all(), "a kept key is masked"
    assert (sel[..., 1:] <= sel[..., :-1] + tol).all(), "kept keys are not best first"
    left = s.masked_fill(~ok | io.kept(index, s.shape[-1]), -io.INF).amax(-1)
    worst = torch.where(index >= 0, sel, torch.full_like(sel, io.INF)).amin(-1)
    assert (left <= worst + tol).all(), f"a key left out outranks a kept one by {(left - worst).max().item():.3e}"


def _topk(backend, q, k, v, k_top, causal, window, bottom_right=True):
    """Top-k through the operator (so that top-left alignment can be tested as well), on the GPU
    for the cuda backend."""
    mask = MaskSpec.make(causal, window, bottom_right=bottom_right)
    dev = torch.device("cuda", torch.cuda.device_count() - 1) if backend == "cuda" else "cpu"  # as conftest
    out, index = _interp_ops.topk(q.to(dev), k.to(dev), v.to(dev), k_top, q.shape[-1] ** -0.5, mask, 0)
    return out.cpu(), index.cpu()


@pytest.mark.parametrize("bottom_right", [True, False], ids=["bottom_right", "top_left"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_topk_matches_oracle(backend, gen, case, dtype, bottom_right):
    needs_kernel(backend, dtype)
    q, k, v = _inputs(gen, case, dtype)
    causal, window = case[6], case[7]
    limit = 64 if backend in ("emu", "cuda") else k.shape[1]  # the CUDA kernel keeps <= 64 keys per row
    sk = k.shape[1]
    for k_top in sorted({1, 3, max(1, min(sk - 1, limit)), min(sk, limit)}):
        out, index = _topk(backend, q, k, v, k_top, causal, window, bottom_right)
        kw = dict(causal=causal, window=window, bottom_right=bottom_right)
        _check_selection(index, q, k, k_top, **kw)
        ref = io.restricted(q, k, v, index)
        assert_close(out, ref, _naive(dtype, io.restricted, q, k, v, index), f"out (k_top={k_top})")


def test_topk_at_least_sk_is_attention(backend, gen):
    q, k, v = _inputs(gen, CASES[1], BF16)
    ref = fa.attention(q, k, v, causal=True)
    assert torch.equal(fa.topk_attention(q, k, v, 53, causal=True), ref)
    assert torch.equal(fa.topk_attention(q, k, v, 1000, causal=True), ref)
    out, index = fa.topk_attention(q, k, v, 1000, causal=True, return_index=True)
    assert index.shape == (2, 37, 4, 53)
    assert_close(out, oracle.attention(q, k, v, causal=True)[0],
                 oracle.attention(q, k, v, causal=True, dtype=BF16)[0], "out")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_exact_ties_go_to_the_lowest_index(backend, gen, dtype):
    """Small integers: every dot product is exact, and most rows have tied scores."""
    needs_kernel(backend, dtype)
    b, sq, sk, hq, hkv, d = 2, 45, 70, 4, 2, 8
    q = torch.randint(-1, 2, (b, sq, hq, d), generator=gen).to(dtype)
    k = torch.randint(-2, 3, (b, sk, hkv, d), generator=gen).to(dtype)
    k[:, 40:50] = k[:, 10:20]  # duplicate keys: exact ties of whole rows of scores
    v = randn(gen, b, sk, hkv, d, dtype=dtype)
    s = io.scores(q, k)[0]
    best = s.amax(-1, keepdim=True)
    assert ((s == best).sum(-1) > 1).float().mean() > 0.2, "the data should tie often"
    for k_top in (1, 3, 7):
        index = fa.topk_attention(q, k, v, k_top, return_index=True)[1]
        assert torch.equal(index.transpose(1, 2), io.selection(q, k, k_top)), f"k_top={k_top}"
    out, idx = fa.hard_attention(q, k, v)
    assert torch.equal(idx.transpose(1, 2), io.selection(q, k, 1)[..., 0])
    vh = v.repeat_interleave(hq // hkv, dim=2)
    assert torch.equal(out, vh.gather(1, idx[..., None].expand(-1, -1, -1, d))), "hard out must be v exactly"


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_rows_that_see_no_key(backend, gen, dtype):
    needs_kernel(backend, dtype)
    q, k, v = randn(gen, 1, 50, 2, 32, dtype=dtype), randn(gen, 1, 20, 2, 32, dtype=dtype), randn(gen, 1, 20, 2, 32, dtype=dtype)
    out, idx = fa.hard_attention(q, k, v, causal=True)  # bottom-right: rows 0..29 see no key
    assert (out[:, :30] == 0).all() and (idx[:, :30] == -1).all() and (idx[:, 30:] >= 0).all()
    out, index = fa.topk_attention(q, k, v, 4, causal=True, return_index=True)
    assert (out[:, :30] == 0).all() and (index[:, :30] == -1).all()
    p = fa.attention_weights(q, k, causal=True)
    assert (p[:, :, :30] == 0).all()
    assert torch.allclose(p[:, :, 30:].double().sum(-1), torch.ones(1, 2, 20, dtype=F64), atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [CASES[i] for i in (1, 2, 3)], ids=[IDS[i] for i in (1, 2, 3)])
def test_topk_backward_matches_oracle(backend, gen, case, dtype):
    needs_kernel(backend, dtype)
    q, k, v = (x.requires_grad_() for x in _inputs(gen, case, dtype))
    causal, window = case[6], case[7]
    dout = randn(gen, *q.shape, dtype=dtype)
    out, index = fa.topk_attention(q, k, v, 5, causal=causal, window_size=window, return_index=True)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    index = index.transpose(1, 2)
    ref = torch.autograd.grad(io.restricted(q, k, v, index), (q, k, v), dout.double())
    naive = [None] * 3
    if dtype in (BF16, F16):
        naive = torch.autograd.grad(io.restricted(q, k, v, index, dtype=dtype), (q, k, v), dout)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref, naive):
        assert g.dtype == dtype and g.shape == r.shape
        assert_close(g, r, n, name)


def test_hard_attention_gradient(backend, gen):
    q, k, v = (x.requires_grad_() for x in _inputs(gen, CASES[1], BF16))
    out, _ = fa.hard_attention(q, k, v, causal=True)
    with pytest.raises(RuntimeError, match="straight_through=True"):
        out.sum().backward()
    dout = randn(gen, *q.shape, dtype=BF16)
    out, idx = fa.hard_attention(q, k, v, causal=True, straight_through=True)
    assert torch.equal(out, fa.hard_attention(q, k, v, causal=True)[0])
    grads = torch.autograd.grad(out, (q, k, v), dout)
    soft = oracle.attention(q, k, v, causal=True)[0]
    ref = torch.autograd.grad(soft, (q, k, v), dout.double())
    naive = torch.autograd.grad(oracle.attention(q, k, v, causal=True, dtype=BF16)[0], (q, k, v), dout)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref, naive):
        assert_close(g, r, n, f"straight-through {name}")


def test_numpy_hard_and_topk(gen):
    q, k, v = (randn(gen, 2, 33, 24).numpy() for _ in range(3))
    out, idx = fa.hard_attention(q, k, v)
    assert out.shape == q.shape and idx.shape == (2, 33) and idx.dtype == np.int64
    assert np.array_equal(out, np.take_along_axis(v, idx[..., None], axis=1))
    out = fa.topk_attention(q, k, v, 4)
    index = io.selection(*(torch.from_numpy(x)[:, :, None] for x in (q, k)), 4)
    _check_selection(index, torch.from_numpy(q)[:, :, None], torch.from_numpy(k)[:, :, None], 4)
    ref = io.restricted(*(torch.from_numpy(x)[:, :, None] for x in (q, k, v)), index)[:, :, 0]
    assert_close(torch.from_numpy(out), ref, None, "numpy top-k out")


def test_bad_arguments(gen, monkeypatch):
    q, k, v = _inputs(gen, CASES[1], F32)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="k_top"):
            fa.topk_attention(q, k, v, bad)
    with pytest.raises(ValueError, match="heads: index 4 is out of range"):
        fa.attention_weights(q, k, heads=[0, 4])
    with pytest.raises(TypeError, match="rows"):
        fa.attention_weights(q, k, rows=[[1, 2]])
    with pytest.raises(ValueError, match="rows: the selection is empty"):
        fa.attention_weights(q, k, rows=[])
    with pytest.raises(ValueError, match=r"lse: expected shape \(2, 4, 37\)"):
        fa.attention_weights(q, k, lse=torch.zeros(2, 37))
    with pytest.raises(TypeError, match="straight_through"):
        fa.hard_attention(q, k, v, straight_through=1)
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    qb, kb, vb = _inputs(gen, CASES[3], BF16)  # Sk = 130
    if fa.build_info()["emulator"]:
        with pytest.raises(NotImplementedError, match="k_top: 65 exceeds"):
            fa.topk_attention(qb, kb, vb, 65)


MEMORY_SCRIPT = """
import json, resource, torch, flashattn_ext as fa
S, D = 16384, 64
g = torch.Generator().manual_seed(7)
q, k, v = (torch.randn(1, S, 1, D, generator=g) for _ in range(3))
fa.attention_weights(q[:, :64], k[:, :64]); fa.topk_attention(q[:, :64], k[:, :64], v[:, :64], 8)  # warm-up
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
before = peak()
p = fa.attention_weights(q, k, causal=True, rows=range(0, S, 512))  # lse computed in a first pass
mid = peak()
out, index = fa.topk_attention(q, k, v, 8, causal=True, return_index=True)
after = peak()
print(json.dumps({"weights_kib": mid - before, "topk_kib": after - mid,
                  "sums": float(p.sum()), "finite": bool(out.isfinite().all())}))
"""


def test_16k_weights_and_topk_peak_memory():
    """No Sq x Sk buffer (1 GiB in float32 here): the weights of 32 rows cost their 2 MiB, top-k
    its output (4 MiB) and index (1 MiB), each plus at most 8 MiB of workspace and noise."""
    res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["finite"] and abs(report["sums"] - 32) < 1e-3
    assert report["weights_kib"] < 2 * 1024 + 8 * 1024, report
    assert report["topk_kib"] < 5 * 1024 + 8 * 1024, report
