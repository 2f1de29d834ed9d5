"""Ring attention: each rank keeps its queries while the K/V shards travel around the ring; every
step runs the library's kernel on (local queries, visiting K/V) and merges the partial result by
its logsumexp, with the next block's transfer in flight during the kernel.

Backward. The library's backward normalises P by the softmax sum of the keys it is given, so it
cannot be handed one block with the global lse. For block j with its own forward (out_j, lse_j)
and weight w_j = exp(lse_j - lse), the merged result is out = sum_j w_j out_j and
lse = log sum_j exp(lse_j); differentiating,

    dL/d out_j = w_j dO,    dL/d lse_j = w_j (rowsum(dO * (out_j - out)) + dlse),

which is exact. The backward therefore recomputes (out_j, lse_j) with the library's forward and
calls the library's backward with those two gradients: one extra forward per block (about 2/9 of
the backward's matrix products) instead of keeping N partial outputs per rank, which would make
the saved activations grow with the full sequence length."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from .._torch_ops import attention_bwd as bwd
from .._torch_ops import attention_fwd as fwd
from ._comm import Group, Transfer
from ._layout import Block, Chunk, block, chunks


class Plan:
    """The blocks this rank computes at every ring step, and the mask parameters."""

    def __init__(self, g: Group, layout: str, local_len: int, scale: float, left: int,
                 right: int) -> None:
        self.g, self.scale = g, scale
        mine = chunks(layout, g.rank, g.world, local_len)
        self.steps: List[List[Tuple[slice, slice, Block]]] = []
        for step in range(g.world):
            theirs = chunks(layout, (g.rank - step) % g.world, g.world, local_len)
            self.steps.append([(_rows(qc, b.q), _rows(kc, b.k), b) for qc in mine for kc in theirs
                               for b in [block(qc, kc, left, right)] if b is not None])


def _rows(c: Chunk, s: slice) -> slice:
    return slice(c.offset + s.start, c.offset + s.stop)


def _weight(lse_part: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """exp(lse_part - lse), 0 where the row saw no key at all (lse = -inf); NaN stays NaN."""
    return torch.where(lse == float("-inf"), torch.zeros_like(lse), torch.exp(lse_part - lse))


def _per_row(x: torch.Tensor) -> torch.Tensor:
    """(B, H, S) -> (B, S, H, 1), to scale (B, S, H, D) rows."""
    return x.transpose(1, 2).unsqueeze(-1)


def _forward(plan: Plan, q: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
    lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("-inf"), dtype=acc_dtype,
                     device=q.device)
    kv = [k, v]
    for step, blocks in enumerate(plan.steps):
        transfer = (Transfer(plan.g, kv, "the K/V block (forward)", step)
                    if step + 1 < plan.g.world else None)
        for rows, keys, b in blocks:
            o, l = fwd(q[:, rows], kv[0][:, keys], kv[1][:, keys], plan.scale, b.left, b.right,
                       False)
            new = torch.logaddexp(lse[:, :, rows], l)
            out[:, rows] = (out[:, rows] * _per_row(_weight(lse[:, :, rows], new))
                            + o * _per_row(_weight(l, new)))
            lse[:, :, rows] = new
        if transfer is not None:
            kv = transfer.wait()
    return out.to(q.dtype), lse


def _backward(plan: Plan, dout: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor,
              k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
              lse: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    acc = lse.dtype
    dout_acc = dout.to(acc)
    # rowsum(dO * out) - dlse, the part of each block's dL/d lse_j that is the same for all j
    common = _rows_dot(dout_acc, out.to(acc))
    if dlse is not None:
        common = common - dlse
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    kv = [k, v]
    incoming: Optional[Transfer] = None  # the dK/dV accumulator of the block arriving next
    for step, blocks in enumerate(plan.steps):
        last = step + 1 == plan.g.world
        transfer = None if last else Transfer(plan.g, kv, "the K/V block (backward)", step)
        dkv = [torch.zeros(t.shape, dtype=acc, device=t.device) for t in kv]
        for rows, keys, b in blocks:
            qb, kb, vb = q[:, rows], kv[0][:, keys], kv[1][:, keys]
            args = (plan.scale, b.left, b.right, False)
            o, l = fwd(qb, kb, vb, *args)
            w = _weight(l, lse[:, :, rows])
            d_o = (dout_acc[:, rows] * _per_row(w)).to(q.dtype)
            d_l = w * (_rows_dot(dout_acc[:, rows], o.to(acc)) - common[:, :, rows])
            dqb, dkb, dvb = bwd(d_o, d_l, qb, kb, vb, o, l, *args)
            dq[:, rows] += dqb
            dkv[0][:, keys] += dkb
            dkv[1][:, keys] += dvb
        if plan.g.world > 1:
            if incoming is not None:
                for mine, theirs in zip(dkv, incoming.wait()):
                    mine += theirs
            # to the next rank; after the last step that is the block's own rank
            incoming = Transfer(plan.g, dkv, "the dK/dV accumulator", step, tag=2)
        if transfer is not None:
            kv = transfer.wait()
    if incoming is not None:  # waiting a transfer also waits its sends
        dkv = incoming.wait()
    return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype)


def _rows_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, S, H, D) x2 -> (B, H, S) row dot products."""
    return (a * b).sum(-1).transpose(1, 2)


class RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                plan: Plan) -> Tuple[torch.Tensor, torch.Tensor]:
        k, v = k.contiguous(), v.contiguous()  # point-to-point transfers take dense tensors
        out, lse = _forward(plan, q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan = plan
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx: Any, dout: Optional[torch.Tensor], dlse: Optional[torch.Tensor]):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = _backward(ctx.plan, dout, dlse, q, k, v, out, lse)
        return dq, dk, dv, None


def ring(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
         plan: Plan) -> Tuple[torch.Tensor, torch.Tensor]:
    return RingAttention.apply(q, k, v, plan)
