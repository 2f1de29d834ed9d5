"""Oracles of the attention weights and top-k / hard attention: explicit score matrices in float64
(or an input's own dtype for the naive error of the tolerance rule), the selection by sorting.
Written independently of the kernels: the kernels stream a heap, this sorts every row."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

import oracle

INF = float("inf")


def scores(q: torch.Tensor, k: torch.Tensor, *, scale: Optional[float] = None, causal: bool = False,
           window: Tuple[int, int] = (-1, -1), bottom_right: bool = True,
           dtype: torch.dtype = torch.float64, softcap: float = 0.0,
           alibi_slopes: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scaled scores (B, Hq, Sq, Sk) in ``dtype``, softcapped and with the ALiBi bias as in
    oracle.attention, and the visibility mask (Sq, Sk)."""
    b, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qh = q.to(dtype).transpose(1, 2)
    kh = k.to(dtype).transpose(1, 2).repeat_interleave(hq // hkv, dim=1)
    left, right = window
    ok = oracle.visible_keys(sq, sk, left, 0 if causal else right, bottom_right)
    s = (qh @ kh.transpose(-1, -2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if alibi_slopes is not None:
        dist = (torch.arange(sq)[:, None] + sk - sq - torch.arange(sk)[None, :]).abs()
        s = s - alibi_slopes.to(dtype).reshape(-1, hq, 1, 1) * dist.to(dtype)
    return s, ok


def probabilities(q: torch.Tensor, k: torch.Tensor, **kw) -> torch.Tensor:
    """softmax over visible keys, (B, Hq, Sq, Sk) float64; masked entries and empty rows 0."""
    s, ok = scores(q, k, **kw)
    s = s.masked_fill(~ok, -INF)
    m = oracle.exp_base(s.amax(dim=-1, keepdim=True))
    p = torch.exp(s - m)
    return p * oracle.inv_sum(p.sum(dim=-1, keepdim=True))


def selection(q: torch.Tensor, k: torch.Tensor, k_top: int, **kw) -> torch.Tensor:
    """The k_top best visible keys of every row by sorting (B, Hq, Sq, k_top): higher score first,
    ties to the lower index, NaN first; -1 where a row has fewer visible keys."""
    s, ok = scores(q, k, **kw)
    sk = s.shape[-1]
    key = torch.where(torch.isnan(s), torch.full_like(s, INF), s).masked_fill(~ok, -INF)
    # Stable sort on the score alone keeps equal scores in index order.
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices[..., :k_top]
    visible = ok.sum(dim=-1)[None, None, :, None]
    rank = torch.arange(min(k_top, sk))[None, None, None, :]
    return torch.where(rank < visible, order, torch.full_like(order, -1))


def kept(index: torch.Tensor, seqlen_k: int) -> torch.Tensor:
    """Boolean (..., Sk) matrix of the keys in ``index`` (-1 entries mark nothing)."""
    counts = torch.zeros(index.shape[:-1] + (seqlen_k,), dtype=torch.int64)
    return counts.scatter_add_(-1, index.clamp_min(0), (index >= 0).long()) > 0


def restricted(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor, *,
               scale: Optional[float] = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Softmax attention over the keys in ``index`` (B, Hq, Sq, n; -1 = none) only, out (B, Sq, Hq, D)
    in ``dtype``; differentiable in q, k, v (the gradient oracle of top-k attention)."""
    b, sq, hq, d = q.shape
    hkv = k.shape[2]
    s, _ = scores(q, k, scale=scale, dtype=dtype)
    s = s.masked_fill(~kept(index, s.shape[-1]), -INF)
    m = oracle.exp_base(s.amax(dim=-1, keepdim=True).detach())
    p = torch.exp(s - m)
    p = p * oracle.inv_sum(p.sum(dim=-1, keepdim=True))
    vh = v.to(dtype).transpose(1, 2).repeat_interleave(hq // hkv, dim=1)
    return (p.to(dtype) @ vh).transpose(1, 2)
