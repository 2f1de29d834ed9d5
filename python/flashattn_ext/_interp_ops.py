"""torch operators of the attention weights and top-k attention: ``flashattn_ext::weights``,
``::topk_fwd`` (with autograd) and ``::topk_bwd``, custom ops with fake implementations like those
of _torch_ops.py. The gradient of top-k attention depends on ``grad_mode``:
restricted softmax (top-k), none (hard attention: backward raises), or straight-through (the
gradient of ordinary softmax attention, recomputed in the backward)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from . import _interp_dispatch
from ._validate import MaskSpec

GRAD_TOPK, GRAD_NONE, GRAD_STRAIGHT_THROUGH = 0, 1, 2


@torch.library.custom_op("flashattn_ext::weights", mutates_args=(), device_types=("cpu", "cuda"))
def weights_op(q: torch.Tensor, k: torch.Tensor, lse: Optional[torch.Tensor], heads: torch.Tensor,
               rows: torch.Tensor, scale: float, window_left: int, window_right: int,
               bottom_right: bool, softcap: float = 0.0,
               alibi_slopes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Probabilities (B, len(heads), len(rows), Sk) of BSHD q, k; lse (B, Hq, Sq) or None;
    softcap and alibi_slopes validated score transforms (MaskSpec)."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    probs = torch.empty((q.shape[0], heads.shape[0], rows.shape[0], k.shape[1]), dtype=dtype, device=q.device)
    if lse is not None and lse.stride(-1) != 1:
        lse = lse.contiguous()
    _interp_dispatch.weights(q, k, lse, heads, rows, probs, scale,
                             MaskSpec(window_left, window_right, bottom_right, softcap, alibi_slopes))
    return probs


@weights_op.register_fake
def _(q, k, lse, heads, rows, scale, window_left, window_right, bottom_right, softcap=0.0,
      alibi_slopes=None):
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty((q.shape[0], heads.shape[0], rows.shape[0], k.shape[1]), dtype=dtype)


@torch.library.custom_op("flashattn_ext::topk_fwd", mutates_args=(), device_types=("cpu", "cuda"))
def topk_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_top: int, scale: float,
             window_left: int, window_right: int, bottom_right: bool,
             grad_mode: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """out (like q) and index (B, Hq, Sq, k_top) int64 of BSHD q, k, v."""
    return _interp_dispatch.topk_forward(q, k, v, k_top, scale, MaskSpec(window_left, window_right, bottom_right))


@topk_fwd.register_fake
def _(q, k, v, k_top, scale, window_left, window_right, bottom_right, grad_mode):
    index = q.new_empty((q.shape[0], q.shape[2], q.shape[1], k_top), dtype=torch.int64)
    return torch.empty_like(q, memory_format=torch.contiguous_format), index


@torch.library.custom_op("flashattn_ext::topk_bwd", mutates_args=(), device_types=("cpu", "cuda"))
def topk_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor,
             scale: float, window_left: int, window_right: int,
             bottom_right: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of the softmax restricted to each row's keys in index."""
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    return _interp_dispatch.topk_backward(dout, q, k, v, index, scale,
                                          MaskSpec(window_left, window_right, bottom_right))


@topk_bwd.register_fake
def _(dout, q, k, v, index, scale, window_left, window_right, bottom_right):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[Any, ...]) -> None:
    q, k, v, _, scale, window_left, window_right, bottom_right, grad_mode = inputs
    ctx.save_for_backward(q, k, v, output[1])
    ctx.args = (scale, window_left, window_right, bottom_right)
    ctx.grad_mode = grad_mode
    ctx.set_materialize_grads(False)


def _backward(ctx: Any, dout: Optional[torch.Tensor], _dindex: Optional[torch.Tensor]):
    if ctx.grad_mode == GRAD_NONE:
        raise RuntimeError("hard_attention: the argmax has no gradient; pass straight_through=True to "
                           "back-propagate the gradient of ordinary softmax attention, use "
                           "topk_attention(..., k_top) for a differentiable sparse attention, or "
                           "detach the inputs")
    q, k, v, index = ctx.saved_tensors
    if dout is None:
        return (None,) * 9
    if ctx.grad_mode == GRAD_STRAIGHT_THROUGH:
        out, lse = torch.ops.flashattn_ext.fwd(q, k, v, *ctx.args)
        dq, dk, dv = torch.ops.flashattn_ext.bwd(dout, None, q, k, v, out, lse, *ctx.args)
    else:
        dq, dk, dv = torch.ops.flashattn_ext.topk_bwd(dout, q, k, v, index, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None


topk_fwd.register_autograd(_backward, setup_context=_setup_context)


def topk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_top: int, scale: float, mask: MaskSpec,
         grad_mode: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Differentiable top-k attention on BSHD views (gradient by grad_mode)."""
    return torch.ops.flashattn_ext.topk_fwd(q, k, v, k_top, scale, mask.window_left, mask.window_right,
                                            mask.bottom_right, grad_mode)


def weights(q: torch.Tensor, k: torch.Tensor, lse: Optional[torch.Tensor], heads: torch.Tensor,
            rows: torch.Tensor, scale: float, mask: MaskSpec) -> torch.Tensor:
    """Attention probabilities of BSHD views; no gradient flows through them."""
    return torch.ops.flashattn_ext.weights(q.detach(), k.detach(), None if lse is None else lse.detach(),
                                           heads, rows, scale, mask.window_left, mask.window_right,
                                           mask.bottom_right, mask.softcap, mask.alibi_slopes)
