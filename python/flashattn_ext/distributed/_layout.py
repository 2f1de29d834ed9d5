"""Where each rank's tokens sit in the full sequence, and the mask of one (query chunk, key chunk)
pair as a call of the library's kernels.

Layouts of a sequence of S tokens over N ranks, each rank holding S/N of them:

- ``"contiguous"``: rank r holds chunk r of N equal chunks.
- ``"zigzag"``: the sequence is cut into 2N equal chunks and rank r holds chunks r and 2N-1-r,
  in that order, so under a causal mask every rank attends to the same number of keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

LAYOUTS = ("zigzag", "contiguous")


@dataclass(frozen=True)
class Chunk:
    """``length`` tokens starting at ``start`` in the full sequence and at ``offset`` in the
    rank's shard."""

    start: int
    offset: int
    length: int


def check_layout(layout: object) -> str:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    return layout


def pieces(layout: str, world_size: int) -> int:
    """How many equal chunks the full sequence is cut into."""
    return 2 * world_size if layout == "zigzag" else world_size


def chunks(layout: str, rank: int, world_size: int, local_len: int) -> Tuple[Chunk, ...]:
    """The chunks of rank ``rank``'s shard of ``local_len`` tokens (local_len is even for
    zigzag: the caller checks)."""
    if layout == "contiguous":
        return (Chunk(rank * local_len, 0, local_len),)
    half = local_len // 2
    return (Chunk(rank * half, 0, half), Chunk((2 * world_size - 1 - rank) * half, half, half))


def _check_length(name: str, seqlen: int, world_size: int, layout: str, dim: int) -> None:
    n = pieces(layout, world_size)
    if seqlen % n:
        raise ValueError(
            f"{name}: sequence length {seqlen} (dim {dim}) is not a multiple of {n}, the number of "
            f"equal chunks the {layout!r} layout cuts it into for {world_size} ranks; pad it to "
            f"{-(-seqlen // n) * n} tokens. With causal=True, tokens appended at the end change no "
            f"earlier output or gradient (drop their outputs); without it they would be attended "
            f"to, and this library has no key padding mask")


def shard(x: torch.Tensor, rank: int, world_size: int, *, layout: str = "zigzag",
          dim: int = 1) -> torch.Tensor:
    """Rank ``rank``'s shard of the full sequence ``x`` (sequence along ``dim``), in ``layout``.
    No communication. Raises ValueError when the sequence does not split into equal chunks."""
    layout = check_layout(layout)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
    seqlen = x.shape[dim]
    _check_length("x", seqlen, world_size, layout, dim)
    local = seqlen // world_size
    parts = [x.narrow(dim, c.start, c.length) for c in chunks(layout, rank, world_size, local)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def unshard(shards: Sequence[torch.Tensor], *, layout: str = "zigzag",
            dim: int = 1) -> torch.Tensor:
    """The full sequence from every rank's shard (``shards[r]`` from rank r, e.g. gathered with
    ``torch.distributed.all_gather``): the inverse of :func:`shard`. No communication."""
    layout = check_layout(layout)
    world = len(shards)
    if world == 0 or len({tuple(s.shape) for s in shards}) != 1:
        raise ValueError(f"shards: expected one tensor per rank, all of one shape, got shapes "
                         f"{[tuple(s.shape) for s in shards]}")
    local = shards[0].shape[dim]
    if layout == "zigzag" and local % 2:
        raise ValueError(f"shards: a zigzag shard holds two equal chunks, got an odd length "
                         f"{local} (dim {dim})")
    placed: List[Tuple[int, torch.Tensor]] = []
    for r, s in enumerate(shards):
        placed += [(c.start, s.narrow(dim, c.offset, c.length))
                   for c in chunks(layout, r, world, local)]
    return torch.cat([t for _, t in sorted(placed, key=lambda p: p[0])], dim)


@dataclass(frozen=True)
class Block:
    """One kernel call: query rows ``q`` of the chunk against keys ``k`` of the chunk (slices
    relative to each chunk), masked with the library's top-left aligned window (left, right),
    -1 = unbounded. Rows of the chunk outside ``q`` see no key of this chunk."""

    q: slice
    k: slice
    left: int
    right: int


def block(qc: Chunk, kc: Chunk, left: int, right: int) -> Optional[Block]:
    """The smallest rectangle of the pair (query chunk qc, key chunk kc) holding every visible
    pair under the global mask "query i sees key j iff i - left <= j <= i + right" (global
    positions, -1 = unbounded), with its mask as a library window; None if nothing is visible.

    In chunk coordinates the mask is d - left <= j - i <= d + right with d = qc.start - kc.start.
    Dropping the leading rows that see no key (qs) and leading keys that no kept row sees (ks)
    shifts the diagonal to e = d + qs - ks, with -right <= e <= left, so the window
    (left - e, right + e) is non-negative: the library's mask (top-left, offset 0) expresses it."""
    d = qc.start - kc.start
    lo = d - left if left >= 0 else -qc.length
    hi = d + right if right >= 0 else kc.length
    if max(lo, 1 - qc.length) > min(hi, kc.length - 1):
        return None
    qs = max(0, -hi)                 # row qs is the first that sees key 0 or later
    ks = max(0, qs + lo)             # the first key row qs sees
    q_end = min(qc.length, kc.length - lo) if left >= 0 else qc.length
    k_end = min(kc.length, qc.length + hi) if right >= 0 else kc.length
    e = d + qs - ks
    new_left = left - e if left >= 0 and left - e < q_end - qs - 1 else -1
    new_right = right + e if right >= 0 and right + e < k_end - ks - 1 else -1
    return Block(slice(qs, q_end), slice(ks, k_end), new_left, new_right)
