"""The communication of ring and Ulysses attention on torch.distributed: the process group, the
check that every rank passes matching arguments, the ring's point-to-point exchange and a
differentiable all-to-all. A failed transfer (a peer that died, or the process group's timeout)
raises RuntimeError saying which rank, step and peer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    """A process group as the ring sees it: this rank, the world size, the neighbours."""

    group: Any
    rank: int
    world: int
    what: str  # the entry point, for messages

    @staticmethod
    def of(group: Optional[Any], what: str) -> "Group":
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"{what}: torch.distributed is not initialized; call "
                               f"torch.distributed.init_process_group first")
        if group is not None and not isinstance(group, dist.ProcessGroup):
            raise TypeError(f"group: expected a torch.distributed.ProcessGroup or None (the "
                            f"default group), got {type(group).__name__}")
        group = group if group is not None else dist.group.WORLD
        rank = dist.get_rank(group)
        if rank < 0:
            raise ValueError(f"group: this process (global rank {dist.get_rank()}) is not a "
                             f"member of the group")
        return Group(group, rank, dist.get_world_size(group), what)

    @property
    def next(self) -> int:
        return (self.rank + 1) % self.world

    @property
    def prev(self) -> int:
        return (self.rank - 1) % self.world

    def failed(self, action: str, err: Exception) -> RuntimeError:
        return RuntimeError(f"{self.what}: rank {self.rank} of {self.world}: {action} failed: a "
                            f"peer process failed or the process group's timeout passed ({err})")


def check_same_call(g: Group, fields: Sequence[Tuple[str, Any]]) -> None:
    """Raises the same ValueError on every rank unless every rank passed equal ``fields``,
    (name, value) pairs: mismatched shapes would otherwise hang or corrupt the transfers. One
    all_gather_object of a few small values per call."""
    if g.world == 1:
        return
    gathered: List[Any] = [None] * g.world
    try:
        dist.all_gather_object(gathered, list(fields), group=g.group)
    except RuntimeError as err:
        raise g.failed("comparing the arguments of every rank (all_gather_object)", err) from err
    for r, theirs in enumerate(gathered):
        for (name, mine), (_, other) in zip(fields, theirs):
            if other != mine:
                raise ValueError(f"{name}: rank {r} passed {other}, rank {g.rank} passed {mine}; "
                                 f"every rank of the group must pass the same (shards of equal "
                                 f"length: flashattn_ext.distributed.shard)")


class Transfer:
    """Batched isend/irecv around the ring: ``send`` to the next rank, new buffers like them
    received from the previous one, with tags from ``tag`` on (transfers in flight together
    use different tags). Started at construction; :meth:`wait` returns the received tensors."""

    def __init__(self, g: Group, send: Sequence[torch.Tensor], what: str, step: int,
                 tag: int = 0) -> None:
        self.g, self.what, self.step = g, what, step
        self.recv = [torch.empty_like(t) for t in send]
        ops = [dist.P2POp(dist.isend, t, group=g.group, group_peer=g.next, tag=tag + i)
               for i, t in enumerate(send)]
        ops += [dist.P2POp(dist.irecv, t, group=g.group, group_peer=g.prev, tag=tag + i)
                for i, t in enumerate(self.recv)]
        try:
            self.works = dist.batch_isend_irecv(ops)
        except RuntimeError as err:
            raise self._failed(err) from err

    def _failed(self, err: Exception) -> RuntimeError:
        return self.g.failed(f"ring step {self.step}: sending {self.what} to rank {self.g.next} "
                             f"and receiving from rank {self.g.prev}", err)

    def wait(self) -> List[torch.Tensor]:
        try:
            for w in self.works:
                w.wait()
        except RuntimeError as err:
            raise self._failed(err) from err
        return self.recv


def _all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, g: Group) -> torch.Tensor:
    """Part i of x (cut along scatter_dim) goes to rank i; the parts received, in rank order,
    are joined along gather_dim."""
    send = torch.stack(x.chunk(g.world, dim=scatter_dim))
    recv = torch.empty_like(send)
    try:
        dist.all_to_all_single(recv, send, group=g.group)
    except RuntimeError as err:
        raise g.failed("all_to_all", err) from err
    return torch.cat(recv.unbind(0), dim=gather_dim)


class AllToAll(torch.autograd.Function):
    """Differentiable all-to-all: the gradient goes back by the inverse all-to-all."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scatter_dim: int, gather_dim: int,
                g: Group) -> torch.Tensor:
        ctx.args = (gather_dim, scatter_dim, g)
        return _all_to_all(x, scatter_dim, gather_dim, g)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        return _all_to_all(grad, *ctx.args), None, None, None
