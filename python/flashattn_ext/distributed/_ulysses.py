"""Ulysses attention: an all-to-all turns sequence sharding (every head, S/N tokens) into head
sharding (H/N heads, every token); each rank runs the library's attention on the full sequence
for its heads, and a second all-to-all turns the output back. Both all-to-alls are
differentiable, so the backward is the library's own backward between two all-to-alls."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..functional import attention
from ._comm import AllToAll, Group
from ._layout import chunks


def _orders(layout: str, g: Group, local_len: int,
            device: torch.device) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(natural, gathered): index_select orders taking the gathered sequence (rank 0's shard,
    rank 1's, ...) to natural order and back; None when they are the identity."""
    if layout == "contiguous":
        return None
    natural = torch.empty(g.world * local_len, dtype=torch.long)
    for r in range(g.world):
        for c in chunks(layout, r, g.world, local_len):
            natural[c.start:c.start + c.length] = torch.arange(c.length) + r * local_len + c.offset
    return natural.to(device), torch.argsort(natural).to(device)


def ulysses(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Group, layout: str,
            causal: bool, window_size: Tuple[int, int], scale: float,
            with_lse: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    orders = _orders(layout, g, q.shape[1], q.device)

    def to_heads(x: torch.Tensor) -> torch.Tensor:
        x = AllToAll.apply(x, 2, 1, g)  # (B, S, H/N, D), shards in rank order
        return x if orders is None else x.index_select(1, orders[0])

    out, lse = attention(to_heads(q), to_heads(k), to_heads(v), causal=causal,
                         window_size=window_size, scale=scale, return_lse=True)
    if orders is not None:
        out, lse = out.index_select(1, orders[1]), lse.index_select(2, orders[1])
    return AllToAll.apply(out, 1, 2, g), AllToAll.apply(lse, 2, 1, g) if with_lse else None
