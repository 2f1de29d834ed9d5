"""Context parallelism on torch.distributed: attention over a sequence sharded across the ranks of
a process group (NCCL on GPUs, gloo on CPUs), with the library's kernels doing the local work.

- :func:`ring_attention`: K/V shards travel around the ring; works for any number of heads.
- :func:`ulysses_attention`: all-to-all to head sharding and back; heads divisible by ranks.
- :func:`shard`, :func:`unshard`: a full sequence to this rank's shard and back, in the
  ``"zigzag"`` (causal load balance, the default) or ``"contiguous"`` layout.

Both entry points take this rank's shard (B, S_local, H, D) of q, k, v (the same positions: self
attention over one sequence) and give this rank's shard of the output, and of lse (B, H, S_local)
with ``return_lse``. Causal masks and windows refer to positions in the full sequence. Every rank
of the group must make the same calls with shards of equal shape (checked: a mismatch raises the
same ValueError on every rank). Both run eagerly inside ``torch.compile`` (a graph break before
and after the call). See docs/distributed.md."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

from .._requires import optional

torch = optional("torch", "torch", "flashattn_ext.distributed")

from .._validate import BSHD, MaskSpec, flag, prepare, scale_value  # noqa: E402
from ._comm import Group, check_same_call  # noqa: E402
from ._layout import LAYOUTS, check_layout, shard, unshard  # noqa: E402
from ._ring import Plan, ring  # noqa: E402
from ._ulysses import ulysses  # noqa: E402

Result = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def _prepare(what: str, q: Any, k: Any, v: Any, group: Any, causal: Any, window_size: Any,
             scale: Any, layout: Any) -> Tuple[Group, Any, str]:
    """Validated arguments. The ranks compare their arguments before any check that depends on
    their own tensors' shapes, so such a check fails on every rank or on none."""
    g = Group.of(group, what)
    mask = MaskSpec.make(causal, window_size, bottom_right=True)
    layout = check_layout(layout)
    scale = scale_value("scale", scale)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: {what} takes torch tensors, got {type(x).__name__}")
    check_same_call(g, [("q.shape", tuple(q.shape)), ("k.shape", tuple(k.shape)),
                        ("v.shape", tuple(v.shape)), ("q.dtype", q.dtype), ("causal", causal),
                        ("window_size", tuple(window_size)), ("scale", scale),
                        ("layout", layout)])
    call = prepare(q, k, v, layout=BSHD, scale=scale, mask=mask)
    if k.shape[1] != q.shape[1]:
        raise ValueError(f"k: sequence length {k.shape[1]} differs from q's {q.shape[1]}; {what} "
                         f"shards one sequence (self-attention): q, k, v hold the same positions")
    if layout == "zigzag" and q.shape[1] % 2:
        raise ValueError(f"q: a zigzag shard holds two equal chunks, got an odd sequence length "
                         f"{q.shape[1]}; pad the full sequence to a multiple of {2 * g.world} "
                         f"(see flashattn_ext.distributed.shard) or use layout='contiguous'")
    return g, call, layout


@torch.compiler.disable
def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   group: Optional[Any] = None, causal: bool = False,
                   window_size: Tuple[int, int] = (-1, -1), scale: Optional[float] = None,
                   return_lse: bool = False, layout: str = "zigzag") -> Result:
    """Ring attention over the sequence sharded across ``group`` (default: the world).

    Args:
        q: this rank's queries (B, S_local, Hq, D), a CPU or CUDA tensor.
        k, v: this rank's keys and values (B, S_local, Hkv, D), Hq % Hkv == 0 (GQA).
        group: the torch.distributed process group; None is the default group.
        causal: query i (a position in the full sequence) sees keys j <= i.
        window_size: (left, right), query i sees i - left <= j <= i + right; -1 = unbounded.
        scale: score scale; default 1/sqrt(D).
        return_lse: also return lse (B, Hq, S_local), float32 (float64 for float64 inputs).
        layout: how the full sequence is sharded, "zigzag" or "contiguous" (:func:`shard`).

    The K/V shards rotate around the ring with batched isend/irecv, the next shard's transfer
    running while the kernel computes on the current one; partial results merge by lse. The
    backward rotates K/V again and sends each shard's dK/dV home. Differentiable in q, k, v.
    """
    with_lse = flag("return_lse", return_lse)
    g, call, layout = _prepare("ring_attention", q, k, v, group, causal, window_size, scale,
                               layout)
    plan = Plan(g, layout, q.shape[1], call.scale, call.mask.window_left,
                call.mask.window_right)
    out, lse = ring(q, k, v, plan)
    return (out, lse) if with_lse else out


@torch.compiler.disable
def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                      group: Optional[Any] = None, causal: bool = False,
                      window_size: Tuple[int, int] = (-1, -1), scale: Optional[float] = None,
                      return_lse: bool = False, layout: str = "zigzag") -> Result:
    """Ulysses (all-to-all) attention; arguments and results as :func:`ring_attention`. Hq and
    Hkv must be multiples of the group's size: each rank computes Hq/N heads over the full
    sequence, so it holds the full sequence's K/V for Hkv/N heads."""
    with_lse = flag("return_lse", return_lse)
    g, call, layout = _prepare("ulysses_attention", q, k, v, group, causal, window_size, scale,
                               layout)
    for name, heads in (("q", q.shape[2]), ("k", k.shape[2])):
        if heads % g.world:
            raise ValueError(f"{name}: {heads} heads are not a multiple of the {g.world} ranks; "
                             f"ulysses_attention gives each rank heads/ranks heads (use "
                             f"ring_attention, or repeat the kv heads)")
    out, lse = ulysses(q, k, v, g, layout, causal, window_size, call.scale, with_lse)
    return (out, lse) if with_lse else out


__all__ = ["LAYOUTS", "ring_attention", "shard", "ulysses_attention", "unshard"]
