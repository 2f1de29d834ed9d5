"""Attention under an explicit mask, run on the kernels whenever the mask has their shape.

The kernels take one band per call: query row ``i`` sees key ``j`` iff
``i + off - left <= j <= i + off + right`` with ``off = Sk - Sq`` (docs/semantics.md section 2).
Padding masks, KV-cache masks and sliding windows are that band on part of the keys and rows.
:func:`plan` finds, for each batch element, the keys some row sees (a slice, or a gather when
they are not contiguous), the rows from the first to the last that sees a key (the others give
0 and lse -inf, as in the kernels), and the (left, right) band the rest follows. A mask that is
no such band (block-diagonal packing, per-head masks, additive biases) gets no plan: the caller
falls back or refuses. Used by ``nn.MultiHeadAttention``, ``nn.replace_sdpa`` and the
transformers integration. :func:`packed` reads a square block-diagonal mask (sequences packed
back to back in a row, each attending within itself under one band) as one variable-length
call; the transformers integration runs packed sequences on it."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .functional import attention
from .varlen import flash_attn_varlen_func


@dataclass(frozen=True)
class Plan:
    """One batch element's call: query rows [rows[0], rows[1]), keys [keys[0], keys[1]) or, when
    ``gather`` is set, the keys at those indices; ``window`` (left, right) on those slices."""

    rows: Tuple[int, int]
    keys: Tuple[int, int]
    window: Tuple[int, int]
    gather: Optional[torch.Tensor] = field(default=None, compare=False)

    @property
    def empty(self) -> bool:
        return self.rows[0] == self.rows[1]


def to_bool(mask: torch.Tensor) -> Optional[torch.Tensor]:
    """A boolean mask (True: attend) from a boolean one or an additive float one whose entries
    are 0 (attend) or at most half the dtype's lowest value, -inf included (masked out); None
    for any other float mask (a bias, which is not a mask)."""
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point() or mask.requires_grad:
        return None
    keep = mask == 0
    if not bool((keep | (mask <= torch.finfo(mask.dtype).min / 2)).all()):
        return None
    return keep


def _plan_one(m: torch.Tensor) -> Optional[Plan]:
    """The plan of one (Sq, Sk) boolean mask, or None."""
    cols = m.any(0).nonzero().flatten()
    rows = m.any(1).nonzero().flatten()
    if cols.numel() == 0:
        return Plan((0, 0), (0, 0), (-1, -1))
    ks, ke, qs, qe = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    n = cols.numel()
    gather = None if ke - ks == n else cols
    m = m[qs:qe, ks:ke] if gather is None else m[qs:qe][:, cols]
    count = m.sum(1)
    first = m.to(torch.uint8).argmax(1)
    last = n - 1 - m.flip(1).to(torch.uint8).argmax(1)
    sq = qe - qs
    off = n - sq
    # The band's edges from the first row's last key and the last row's first key (-1: the
    # edge never cuts); a band edge strictly beyond the diagonal is not one the kernels take.
    right = -1 if int(last[0]) == n - 1 else int(last[0]) - off
    left = -1 if int(first[-1]) == 0 else sq - 1 + off - int(first[-1])
    if (right < 0 and int(last[0]) != n - 1) or (left < 0 and int(first[-1]) != 0):
        return None
    i = torch.arange(sq, device=m.device)
    lo = (i + off - left).clamp(min=0) if left >= 0 else torch.zeros_like(i)
    hi = (i + off + right).clamp(max=n - 1) if right >= 0 else torch.full_like(i, n - 1)
    seen = count > 0
    want = torch.where(lo <= hi, hi - lo + 1, 0)
    if not bool(((count == want) & (~seen | ((first == lo) & (last == hi)))).all()):
        return None
    return Plan((qs, qe), (ks, ke), (left, right), gather)


def plan(mask: torch.Tensor) -> Optional[List[Plan]]:
    """Plans for a boolean mask (B, Sq, Sk) (True: attend), one per batch element, or None when
    some element's mask is not a band on a subset of its keys."""
    plans = []
    for m in mask:
        p = _plan_one(m)
        if p is None:
            return None
        plans.append(p)
    return plans


@dataclass(frozen=True)
class Packed:
    """Sequences packed back to back along each row of a square (B, S, S) mask: ``lengths``
    (int32) are the sequences' lengths, row after row (``rows`` rows of S tokens), each sequence
    attending within itself under the band ``window`` (left, right; -1 unbounded)."""

    lengths: torch.Tensor
    rows: int
    window: Tuple[int, int]


def packed(mask: torch.Tensor) -> Optional[Packed]:
    """The packing of a boolean mask (B, S, S) (True: attend) that is block-diagonal with one
    band in every diagonal block, or None. The blocks are the finest the mask allows; the result
    is checked against the mask it stands for, so it is exact."""
    b, sq, sk = mask.shape
    if sq != sk or not bool(mask.any(2).all()):
        return None
    i = torch.arange(sq, device=mask.device)
    first = mask.to(torch.uint8).argmax(2)
    last = sk - 1 - mask.flip(2).to(torch.uint8).argmax(2)
    # A block starts at token t when no row from t on sees a key before t and no row before t
    # sees one from t on.
    later_first = first.flip(1).cummin(1).values.flip(1)
    earlier_last = last.cummax(1).values
    starts = torch.ones(b, sq, dtype=torch.bool, device=mask.device)
    starts[:, 1:] = (later_first[:, 1:] >= i[1:]) & (earlier_last[:, :-1] < i[1:])
    seg = starts.cumsum(1)
    at = starts.flatten().nonzero().flatten()
    lengths = torch.diff(at, append=at.new_tensor([b * sq]))
    longest = int(lengths.max())
    left, right = int((i - first).max()), int((last - i).max())
    left, right = (-1 if w >= longest - 1 else w for w in (left, right))
    want = seg[:, :, None] == seg[:, None, :]
    if left >= 0:
        want &= i[None, :] >= i[:, None] - left
    if right >= 0:
        want &= i[None, :] <= i[:, None] + right
    if not bool((want == mask).all()):
        return None
    return Packed(lengths.to(torch.int32), b, (left, right))


def run_packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: Packed,
               scale: Optional[float], softcap: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """out (B, S, H, D) and lse (B, H, S) of BSHD q, k, v under a packing (one packed row
    broadcast to every element when ``p.rows`` is 1): one variable-length call."""
    b, s, h, _ = q.shape
    lengths = p.lengths if p.rows == b else p.lengths.repeat(b)
    cu = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    longest = int(lengths.max())
    flat = (t.reshape(b * s, t.shape[2], t.shape[3]) for t in (q, k, v))
    out, lse, _ = flash_attn_varlen_func(*flat, cu, cu, longest, longest, softmax_scale=scale,
                                         window_size=p.window, softcap=softcap,
                                         return_attn_probs=True)
    return out.view(b, s, h, -1), lse.reshape(h, b, s).transpose(0, 1)


_CACHE: Dict[int, Tuple[weakref.ref, int, Union[List[Plan], Packed, None]]] = {}
_CACHE_SIZE = 8


def cached_plan(mask: torch.Tensor) -> Union[List[Plan], Packed, None]:
    """:func:`plan` of ``to_bool(mask)`` for a mask (B, 1, Sq, Sk), else its :func:`packed`,
    else None; remembered for the last few mask tensors: a model passes one mask object to
    every layer."""
    hit = _CACHE.get(id(mask))
    if hit is not None and hit[0]() is mask and hit[1] == mask._version:
        return hit[2]
    bool_mask = to_bool(mask[:, 0])
    result = None if bool_mask is None else plan(bool_mask) or packed(bool_mask)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[id(mask)] = (weakref.ref(mask), mask._version, result)
    return result


def _run_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: Plan,
             scale: Optional[float], softcap: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """out (b, Sq, H, D) and lse (b, H, Sq) of BSHD q, k, v under one plan."""
    b, sq, h, _ = q.shape
    if p.empty:  # zeros still connected to q, k, v (zero gradients), as torch's would be
        link = q[:, :0].sum() + k[:, :0].sum() + v[:, :0].sum()
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        lse = torch.full((b, h, sq), float("-inf"), dtype=lse_dtype, device=q.device)
        return q.new_zeros(b, sq, h, v.shape[3]) + link, lse + link.to(lse_dtype)
    if p.gather is None:
        k, v = k[:, p.keys[0]:p.keys[1]], v[:, p.keys[0]:p.keys[1]]
    else:
        k, v = k[:, p.gather], v[:, p.gather]
    out, lse = attention(q[:, p.rows[0]:p.rows[1]], k, v, scale=scale, window_size=p.window,
                         return_lse=True, softcap=softcap)
    pad = (p.rows[0], sq - p.rows[1])
    return F.pad(out, (0, 0, 0, 0) + pad), F.pad(lse, pad, value=float("-inf"))


def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plans: List[Plan],
        scale: Optional[float], softcap: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """out (B, Sq, H, D) and lse (B, H, Sq) of BSHD q, k, v under per-element plans (one plan
    for a batch of one broadcast mask); a single call when every element has the same plan."""
    first = plans[0]
    if len(plans) == 1 or all(p.gather is None and p == first for p in plans):
        return _run_one(q, k, v, first, scale, softcap)
    parts = [_run_one(q[i:i + 1], k[i:i + 1], v[i:i + 1], p, scale, softcap)
             for i, p in enumerate(plans)]
    return torch.cat([o for o, _ in parts]), torch.cat([l for _, l in parts])


def weights(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, scale: float,
            allowed: Optional[torch.Tensor], softcap: float = 0.0,
            bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The softmax weights (B, Hq, Sq, Sk) of BSHD q, k from the kernels' lse (B, Hq, Sq):
    exp(s - lse) with s = scale·q·kᵀ (softcap·tanh(s / softcap) when softcap > 0) plus ``bias``
    (broadcast to (B, Hq, Sq, Sk)), 0 where ``allowed`` (broadcast to (B, Sq, Sk), or to
    (B, Hq, Sq, Sk) when 4-d) is False; rows that see no key are 0. Differentiable (through lse
    as well)."""
    group = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(group, dim=2) if group > 1 else k
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.einsum("bqhd,bkhd->bhqk", q.to(acc), k.to(acc)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias.to(acc)
    s = s - lse[..., None].to(acc)
    hidden = torch.isinf(lse)[..., None]  # rows that see no key
    if allowed is not None:
        hidden = hidden | ~(allowed if allowed.dim() == 4 else allowed[:, None])
    return s.masked_fill(hidden, float("-inf")).exp().to(q.dtype)
