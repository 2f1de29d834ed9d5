"""The test oracle: naive attention with an explicit score matrix, written independently of the
code under test. Computed in float64 it is the reference; computed in an input's own dtype it is
the "naive implementation in that dtype" whose error sets the tolerance (docs/semantics.md).

The softmax steps carry the names of csrc/common/online_softmax.h (exp_base, inv_sum, finish_lse),
here in the natural-log domain and over whole rows."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

INF = float("inf")


def visible_keys(seqlen_q: int, seqlen_k: int, window_left: int, window_right: int,
                 bottom_right: bool) -> torch.Tensor:
    """Boolean (Sq, Sk) matrix of the mask rule: row i sees key j iff
    i + off - left <= j <= i + off + right, off = Sk - Sq (bottom-right) or 0; -1 = unbounded."""
    off = seqlen_k - seqlen_q if bottom_right else 0
    i = torch.arange(seqlen_q)[:, None] + off
    j = torch.arange(seqlen_k)[None, :]
    ok = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool)
    if window_left >= 0:
        ok &= j >= i - window_left
    if window_right >= 0:
        ok &= j <= i + window_right
    return ok


def exp_base(m: torch.Tensor) -> torch.Tensor:
    """The value subtracted before exp: a row with no finite max (it sees no key) uses 0."""
    return torch.where(m == -INF, torch.zeros_like(m), m)


def inv_sum(l: torch.Tensor) -> torch.Tensor:
    """1/sum for the normalisation: an empty row (sum 0) keeps out = 0; NaN stays NaN."""
    return torch.where(l == 0, torch.zeros_like(l), 1 / torch.where(l == 0, torch.ones_like(l), l))


def finish_lse(m: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """logsumexp of a row from its max and sum: -inf for an empty row, NaN for a NaN sum."""
    return torch.where(l == 0, torch.full_like(m, -INF), m + torch.log(torch.where(l == 0, torch.ones_like(l), l)))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None,
              causal: bool = False, window: Tuple[int, int] = (-1, -1), bottom_right: bool = True,
              dtype: torch.dtype = torch.float64,
              visible: Optional[torch.Tensor] = None, softcap: float = 0.0,
              alibi_slopes: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
              keep: Optional[torch.Tensor] = None,
              bias: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D) -> out (B, Sq, Hq, D), lse (B, Hq, Sq), in ``dtype``.
    ``visible`` (B or 1, Sq, Sk) or (B or 1, Hq or 1, Sq, Sk), when given, is an explicit
    boolean mask (True: the query sees the key) applied on top of the causal/window rule;
    ``bias``, broadcastable to (B, Hq, Sq, Sk), an additive mask added after ALiBi. ``softcap`` > 0 replaces the scaled score
    s by softcap * tanh(s / softcap); ``alibi_slopes`` (Hq,) or (B, Hq) then adds
    -slope * |i + Sk - Sq - j| (before the mask). ``keep`` (B, Hq, Sq, Sk) booleans, with
    ``dropout_p``: dropout of the normalised probabilities, kept ones times 1 / (1 - dropout_p)
    with dropout_p as float32 (the kernels' parameter); lse stays the undropped softmax's.

    Differentiable (torch autograd) so it is also the gradient oracle. Rows that see no key give
    out 0 and lse -inf."""
    b, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    q, k, v = (x.to(dtype).transpose(1, 2) for x in (q, k, v))  # (B, H, S, D)
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    left, right = window
    if causal:
        right = 0
    ok = visible_keys(sq, sk, left, right, bottom_right)
    if visible is not None:
        ok = ok & (visible[:, None] if visible.dim() == 3 else visible)
    s = (q @ k.transpose(-1, -2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if alibi_slopes is not None:
        dist = (torch.arange(sq)[:, None] + sk - sq - torch.arange(sk)[None, :]).abs()
        slopes = alibi_slopes.to(dtype).reshape(-1, hq, 1, 1)
        s = s - slopes * dist.to(dtype)
    if bias is not None:
        s = s + bias.to(dtype)
    s = s.masked_fill(~ok, -INF)
    m = exp_base(s.amax(dim=-1, keepdim=True).detach())
    p = torch.exp(s - m)
    l = p.sum(dim=-1, keepdim=True)
    p = p * inv_sum(l)
    if keep is not None:
        p = p * keep.to(dtype) / (1 - float(torch.tensor(dropout_p, dtype=torch.float32)))
    out = (p.to(dtype) @ v).transpose(1, 2)
    return out, finish_lse(m, l).squeeze(-1)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, **kw) -> Tuple[torch.Tensor, torch.Tensor]:
    """Packed sequences: q (total_q, Hq, D), k/v (total_k, Hkv, D) -> out (total_q, Hq, D), lse
    (Hq, total_q), each sequence attending on its own (``attention`` on each, in a loop); a
    sequence without keys gives out 0 and lse -inf."""
    dtype = kw.get("dtype", torch.float64)
    outs, lses = [], []
    for b in range(len(cu_seqlens_q) - 1):
        qs = q[int(cu_seqlens_q[b]):int(cu_seqlens_q[b + 1])]
        ks = slice(int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1]))
        if ks.stop == ks.start:
            outs.append(torch.zeros(qs.shape, dtype=dtype))
            lses.append(torch.full((qs.shape[1], qs.shape[0]), -INF, dtype=dtype))
            continue
        out, lse = attention(qs[None], k[None, ks], v[None, ks], **kw)
        outs.append(out[0])
        lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses, dim=1)
