"""The NaN contract (docs/semantics.md): a NaN in q, k or v reaches every output, lse entry and
gradient that depends on it, on every path (tiled, split-key decode, backward, the emulated CUDA
kernels); it is never lost or turned into "saw no key" (-inf, 0). Beyond those it may reach only
what a dense computation over the masked score matrix would reach (0 * NaN for a masked key that
shares a tile with visible ones); without a mask the two sets are equal, so the match is exact.

Two float64 oracles bound the NaN pattern: `exact` sums over visible keys only (a masked key never
meets a NaN), the dense tests/oracle.py multiplies masked zeros with everything."""

from __future__ import annotations

import pytest
import torch

import flashattn_ext as fa
import oracle
from attn_testing import assert_close, needs_kernel, randn

# (Sq, Sk, causal): a tiled case with a mask edge, and a decode case long enough for the CPU
# forward's split-key path (one query row, Sk >= 1024).
PATHS = {"tiled": (19, 45, True), "decode": (1, 1100, False)}


def exact_oracle(q, k, v, causal: bool, dtype: torch.dtype = torch.float64):
    """Attention over visible keys only, differentiable, in float64: masked (row, key) pairs
    multiply zeros, never the inputs, so a NaN reaches exactly what depends on it (in ``dtype``:
    the naive computation whose error sets the 16-bit tolerance)."""
    b, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    ok = oracle.visible_keys(sq, sk, -1, 0 if causal else -1, True)[None, None, :, :, None]
    q, k, v = (x.to(dtype).transpose(1, 2) for x in (q, k, v))
    k, v = (x.repeat_interleave(hq // hkv, dim=1) for x in (k, v))
    zero = torch.zeros((), dtype=dtype)
    qm = torch.where(ok, q[:, :, :, None, :], zero)  # (B, H, Sq, Sk, D)
    km = torch.where(ok, k[:, :, None, :, :], zero)
    s = torch.where(ok[..., 0], (qm * km).sum(-1) * d ** -0.5, -oracle.INF)
    m = oracle.exp_base(s.amax(-1, keepdim=True).detach())
    p = torch.where(ok[..., 0], torch.exp(s - m), zero)
    l = p.sum(-1, keepdim=True)
    pv = torch.where(ok, (p * oracle.inv_sum(l))[..., None], zero) * torch.where(ok, v[:, :, None, :, :], zero)
    return pv.sum(-2).transpose(1, 2), oracle.finish_lse(m, l).squeeze(-1)


def _where_nan(gen: torch.Generator, which: str, sq: int, sk: int):
    """Row (of q, or key of k/v) and column to poison: a row with a mask edge in the tiled case."""
    if which == "q":
        return int(torch.randint(0, sq, (1,), generator=gen)), 3
    return int(torch.randint(0, sk, (1,), generator=gen)), 5


@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_nan_reaches_exactly_what_depends_on_it(backend, gen, path, which, dtype):
    needs_kernel(backend, dtype, backward=True, head_dim=32)
    sq, sk, causal = PATHS[path]
    b, hq, hkv, d = 1, 2, 1, 32
    q, k, v = randn(gen, b, sq, hq, d, dtype=dtype), randn(gen, b, sk, hkv, d, dtype=dtype), \
        randn(gen, b, sk, hkv, d, dtype=dtype)
    row, col = _where_nan(gen, which, sq, sk)
    {"q": q, "k": k, "v": v}[which][0, row, 0, col] = float("nan")
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    dout = randn(gen, b, sq, hq, d, dtype=dtype)

    out, lse = fa.attention(q, k, v, causal=causal, return_lse=True)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref, ref_lse = exact_oracle(q, k, v, causal)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout.double())
    assert torch.isnan(ref).any(), "the poisoned input must reach some output"
    dense, dense_lse = oracle.attention(q, k, v, causal=causal)
    dense_grads = torch.autograd.grad(dense, (q, k, v), dout.double())

    naive, naive_grads = None, [None] * 3
    if dtype == torch.bfloat16:
        naive = exact_oracle(q, k, v, causal, dtype)[0]
        naive_grads = torch.autograd.grad(naive, (q, k, v), dout)
    for name, x, r, upper, n in [("out", out, ref, dense, naive), ("lse", lse, ref_lse, dense_lse, None),
                                 *zip(("dq", "dk", "dv"), grads, ref_grads, dense_grads, naive_grads)]:
        nan, must, may = torch.isnan(x), torch.isnan(r), torch.isnan(upper)
        assert not (must & ~nan).any(), f"{name}: NaN lost at {(must & ~nan).sum()} entries (NaN in {which})"
        assert not (nan & ~may).any(), f"{name}: NaN leaked to {(nan & ~may).sum()} entries (NaN in {which})"
        keep = ~nan  # compare the rest with the exact oracle
        assert_close(x[keep], r[keep].to(x.dtype if name == "lse" else r.dtype), None if n is None else n[keep], name)
