"""The torch operators ``flashattn_ext::fwd`` and ``flashattn_ext::bwd``, and their
variable-length forms ``varlen_fwd`` / ``varlen_bwd``: custom ops with fake (meta)
implementations and registered autograd, so eager mode, autograd and
``torch.compile(fullgraph=True)`` all see one opaque, differentiable operator."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch.autograd import forward_ad

from . import _dispatch
from ._seqlens import varlen_seqs
from ._validate import MaskSpec, dtype_name


def _lse_dtype(q: torch.Tensor) -> torch.dtype:
    return getattr(torch, _dispatch.lse_dtype_name(dtype_name(q)))


def _like(x: torch.Tensor) -> torch.Tensor:
    # empty_like keeps x's dimension order for dense tensors (a (B, H, S, D) tensor viewed as BSHD
    # gets a BHSD-ordered result); other layouts get a fresh contiguous tensor.
    return torch.empty_like(x, memory_format=torch.preserve_format)


def _fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window_left: int,
         window_right: int, bottom_right: bool, deterministic: bool = False, softcap: float = 0.0,
         alibi_slopes: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
         dropout_seed: int = 0, dropout_offset: int = 0,
         dropout_rng: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None
         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward on (B, S, H, D) views; returns out (like q) and lse (B, H, Sq).
    ``deterministic`` asks the backward for its deterministic mode; softcap, alibi_slopes and
    attn_mask ((B, Hq, Sq, Sk)) are validated score transforms, dropout_p / seed / offset
    validated dropout (MaskSpec)."""
    return _forward(q, k, v, scale, _mask(window_left, window_right, bottom_right, softcap,
                                          alibi_slopes, dropout_p, dropout_seed, dropout_offset,
                                          dropout_rng, attn_mask))


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
             mask: MaskSpec) -> Tuple[torch.Tensor, torch.Tensor]:
    out = _like(q)
    lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]), dtype=_lse_dtype(q), device=q.device)
    _dispatch.forward(q, k, v, out, lse, scale, mask)
    return out, lse


attention_fwd = torch.library.custom_op("flashattn_ext::fwd", mutates_args=(),
                                        device_types=("cpu", "cuda"))(_fwd)


def _mask(window_left: int, window_right: int, bottom_right: bool, softcap: float,
          alibi_slopes: Optional[torch.Tensor], dropout_p: float, dropout_seed: int,
          dropout_offset: int, dropout_rng: Optional[torch.Tensor],
          attn_mask: Optional[torch.Tensor]) -> MaskSpec:
    return MaskSpec(window_left, window_right, bottom_right, softcap, alibi_slopes,
                    attn_mask=attn_mask, dropout_p=dropout_p, dropout_seed=dropout_seed,
                    dropout_offset=dropout_offset, dropout_rng=dropout_rng)


@attention_fwd.register_fake
def _(q, k, v, scale, window_left, window_right, bottom_right, deterministic=False, softcap=0.0,
      alibi_slopes=None, dropout_p=0.0, dropout_seed=0, dropout_offset=0, dropout_rng=None,
      attn_mask=None):
    return _like(q), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=_lse_dtype(q))


def _bwd(dout: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor,
         v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, scale: float, mask: MaskSpec,
         deterministic: bool, dmask: Optional[torch.Tensor] = None
         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if dout.stride(-1) != 1:  # e.g. the expanded gradient of .sum()
        dout = dout.contiguous()
    if dlse is not None:
        dlse = dlse.contiguous()  # lse itself is always allocated contiguous
    dq, dk, dv = _like(q), _like(k), _like(v)
    _dispatch.backward(dout, q, k, v, out, lse, dq, dk, dv, scale, mask, dlse,
                       deterministic_mode=_dispatch.deterministic(deterministic), dmask=dmask)
    return dq, dk, dv


@torch.library.custom_op("flashattn_ext::bwd", mutates_args=(), device_types=("cpu", "cuda"))
def attention_bwd(dout: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor,
                  k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                  scale: float, window_left: int, window_right: int, bottom_right: bool,
                  deterministic: bool = False, softcap: float = 0.0,
                  alibi_slopes: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                  dropout_seed: int = 0, dropout_offset: int = 0,
                  dropout_rng: Optional[torch.Tensor] = None,
                  attn_mask: Optional[torch.Tensor] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward on (B, S, H, D) views; returns dq, dk, dv (laid out like q, k, v).
    ``dlse``, when given, is the gradient flowing into lse. Deterministic mode when
    ``deterministic`` or a global switch asks for it (_dispatch.deterministic). Dropout
    regenerates the forward's mask from the same seed and offset."""
    mask = _mask(window_left, window_right, bottom_right, softcap, alibi_slopes, dropout_p,
                 dropout_seed, dropout_offset, dropout_rng, attn_mask)
    return _bwd(dout, dlse, q, k, v, out, lse, scale, mask, deterministic)


@attention_bwd.register_fake
def _(dout, dlse, q, k, v, out, lse, scale, window_left, window_right, bottom_right, deterministic=False,
      softcap=0.0, alibi_slopes=None, dropout_p=0.0, dropout_seed=0, dropout_offset=0,
      dropout_rng=None, attn_mask=None):
    return _like(q), _like(k), _like(v)


@torch.library.custom_op("flashattn_ext::bwd_dmask", mutates_args=(), device_types=("cpu", "cuda"))
def attention_bwd_dmask(dout: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor,
                        k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                        scale: float, window_left: int, window_right: int, bottom_right: bool,
                        deterministic: bool, softcap: float, alibi_slopes: Optional[torch.Tensor],
                        dropout_p: float, dropout_seed: int, dropout_offset: int,
                        dropout_rng: Optional[torch.Tensor], attn_mask: torch.Tensor
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """attention_bwd that also returns the gradient of the additive attn_mask, (B, Hq, Sq, Sk)
    dense (autograd sums it over the mask's broadcast dimensions)."""
    mask = _mask(window_left, window_right, bottom_right, softcap, alibi_slopes, dropout_p,
                 dropout_seed, dropout_offset, dropout_rng, attn_mask)
    dmask = torch.zeros(attn_mask.shape, dtype=attn_mask.dtype, device=attn_mask.device)
    return (*_bwd(dout, dlse, q, k, v, out, lse, scale, mask, deterministic, dmask), dmask)


@attention_bwd_dmask.register_fake
def _(dout, dlse, q, k, v, out, lse, scale, window_left, window_right, bottom_right, deterministic,
      softcap, alibi_slopes, dropout_p, dropout_seed, dropout_offset, dropout_rng, attn_mask):
    return _like(q), _like(k), _like(v), attn_mask.new_empty(attn_mask.shape)


_MASK_INPUT = 14  # attn_mask's position among attention_fwd's inputs


def _setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[Any, ...]) -> None:
    q, k, v, scale, window_left, window_right, bottom_right, *rest = inputs
    defaults = (False, 0.0, None, 0.0, 0, 0, None, None)
    deterministic, softcap, slopes, *drop, rng, attn_mask = tuple(rest) + defaults[len(rest):]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, slopes, rng, attn_mask)
    ctx.args = (scale, window_left, window_right, bottom_right, bool(deterministic), float(softcap))
    ctx.dropout = tuple(drop)  # p, seed, offset (and rng): the backward regenerates the mask
    ctx.set_materialize_grads(False)  # an unused lse then sends no gradient at all


def _backward(ctx: Any, dout: Optional[torch.Tensor], dlse: Optional[torch.Tensor]):
    q, k, v, out, lse, slopes, rng, attn_mask = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dmask = None
    args = (dout, dlse, q, k, v, out, lse, *ctx.args, slopes, *ctx.dropout, rng, attn_mask)
    if attn_mask is not None and ctx.needs_input_grad[_MASK_INPUT]:
        dq, dk, dv, dmask = torch.ops.flashattn_ext.bwd_dmask(*args)
    else:
        dq, dk, dv = torch.ops.flashattn_ext.bwd(*args)
    return (dq, dk, dv) + (None,) * (_MASK_INPUT - 3) + (dmask,)


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def _direct(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether a call may run the operator's implementation directly: eager (not traced by
    torch.compile), no torch function or dispatch mode and no functorch transform active, plain
    CPU or CUDA tensors, and no gradient to record. The operator's dispatch cost about 20 us per
    call (Xeon of bench/README.md), as much as the kernel of a short decoding step."""
    try:  # private torch functions: without them (another torch), always the operator
        if (torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled()
                or torch._C._len_torch_dispatch_stack() > 0
                or torch._C._functorch.peek_interpreter_stack() is not None):
            return False
    except AttributeError:
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (type(t) is not torch.Tensor or (grad and t.requires_grad)
                              or t.device.type not in ("cpu", "cuda")):
            return False
    return True


def _no_tangents(names: Tuple[str, ...], *tensors: Optional[torch.Tensor]) -> None:
    """Raises NotImplementedError for inputs that carry a forward-mode tangent (dual tensors of
    torch.autograd.forward_ad), which the kernels would drop silently."""
    if torch.compiler.is_compiling() or getattr(forward_ad, "_current_level", 0) < 0:  # no dual level
        return
    for name, t in zip(names, tensors):
        if t is not None and forward_ad.unpack_dual(t).tangent is not None:
            raise NotImplementedError(f"{name}: forward-mode automatic differentiation (a dual "
                                      f"tensor of torch.autograd.forward_ad) is not supported; "
                                      f"use reverse mode (backward / torch.autograd.grad)")


def apply(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
          mask: MaskSpec, deterministic: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Differentiable attention on BSHD views; ``deterministic``: the backward's mode. Calls
    with nothing to differentiate or trace (_direct) skip the operator's dispatch."""
    _no_tangents(("q", "k", "v", "attn_mask"), q, k, v, mask.attn_mask)
    if _direct(q, k, v, mask.alibi_slopes, mask.dropout_rng, mask.attn_mask):
        return _forward(q, k, v, scale, mask)
    return torch.ops.flashattn_ext.fwd(q, k, v, scale, mask.window_left, mask.window_right,
                                       mask.bottom_right, deterministic, mask.softcap,
                                       mask.alibi_slopes, mask.dropout_p, mask.dropout_seed,
                                       mask.dropout_offset, mask.dropout_rng, mask.attn_mask)


# ---- variable-length (packed) batches -------------------------------------------------------
# q, out: (total_q, Hq, D); k, v: (total_k, Hkv, D), or paged caches (num_blocks, page_size,
# Hkv, D) with a block_table (forward only); lse: (Hq, total_q).

def _kv(x: torch.Tensor) -> torch.Tensor:
    return x if x.ndim == 4 else x[None]


@torch.library.custom_op("flashattn_ext::varlen_fwd", mutates_args=(),
                         device_types=("cpu", "cuda"))
def varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
               cu_seqlens_k: torch.Tensor, block_table: Optional[torch.Tensor], scale: float,
               window_left: int, window_right: int, softcap: float = 0.0,
               alibi_slopes: Optional[torch.Tensor] = None, deterministic: bool = False,
               dropout_p: float = 0.0, dropout_seed: int = 0, dropout_offset: int = 0,
               dropout_rng: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward of packed sequences, each aligned bottom-right on its own lengths;
    ``deterministic`` asks the backward for its deterministic mode."""
    mask = MaskSpec(window_left, window_right, True, softcap, alibi_slopes, None, dropout_p, dropout_seed,
                    dropout_offset, dropout_rng)
    out = _like(q)
    lse = _dispatch.new_lse(q[None], packed=True)
    _dispatch.forward(q[None], _kv(k), _kv(v), out[None], lse, scale, mask,
                      varlen_seqs(cu_seqlens_q, cu_seqlens_k, block_table))
    return out, lse


@varlen_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, block_table, scale, window_left, window_right,
      softcap=0.0, alibi_slopes=None, deterministic=False, dropout_p=0.0, dropout_seed=0,
      dropout_offset=0, dropout_rng=None):
    return _like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=_lse_dtype(q))


@torch.library.custom_op("flashattn_ext::varlen_bwd", mutates_args=(),
                         device_types=("cpu", "cuda"))
def varlen_bwd(dout: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor,
               k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
               cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, scale: float,
               window_left: int, window_right: int, softcap: float = 0.0,
               alibi_slopes: Optional[torch.Tensor] = None, deterministic: bool = False,
               dropout_p: float = 0.0, dropout_seed: int = 0, dropout_offset: int = 0,
               dropout_rng: Optional[torch.Tensor] = None
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of packed sequences; dq, dk, dv laid out like q, k, v. The CUDA kernels run in
    deterministic mode when ``deterministic`` or a global switch asks for it."""
    mask = MaskSpec(window_left, window_right, True, softcap, alibi_slopes, None, dropout_p, dropout_seed,
                    dropout_offset, dropout_rng)
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    if dlse is not None:
        dlse = dlse.contiguous()
    dq, dk, dv = _like(q), _like(k), _like(v)
    _dispatch.backward(dout[None], q[None], k[None], v[None], out[None], lse, dq[None], dk[None],
                       dv[None], scale, mask, dlse, varlen_seqs(cu_seqlens_q, cu_seqlens_k, None),
                       deterministic_mode=_dispatch.deterministic(deterministic))
    return dq, dk, dv


@varlen_bwd.register_fake
def _(dout, dlse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, scale, window_left,
      window_right, softcap=0.0, alibi_slopes=None, deterministic=False, dropout_p=0.0,
      dropout_seed=0, dropout_offset=0, dropout_rng=None):
    return _like(q), _like(k), _like(v)


def _varlen_setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[Any, ...]) -> None:
    q, k, v, cu_seqlens_q, cu_seqlens_k, _, scale, window_left, window_right, *rest = inputs
    defaults = (0.0, None, False, 0.0, 0, 0, None)
    softcap, slopes, deterministic, *drop, rng = tuple(rest) + defaults[len(rest):]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, slopes, rng)
    ctx.args = (scale, window_left, window_right, float(softcap))
    ctx.deterministic = bool(deterministic)
    ctx.dropout = tuple(drop)  # p, seed, offset (and rng): the backward regenerates the mask
    ctx.set_materialize_grads(False)


def _varlen_backward(ctx: Any, dout: Optional[torch.Tensor], dlse: Optional[torch.Tensor]):
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, slopes, rng = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.flashattn_ext.varlen_bwd(dout, dlse, q, k, v, out, lse, cu_seqlens_q,
                                                    cu_seqlens_k, *ctx.args, slopes, ctx.deterministic,
                                                    *ctx.dropout, rng)
    return (dq, dk, dv) + (None,) * 13


varlen_fwd.register_autograd(_varlen_backward, setup_context=_varlen_setup_context)


def apply_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                 cu_seqlens_k: torch.Tensor, block_table: Optional[torch.Tensor], scale: float,
                 mask: MaskSpec, deterministic: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Differentiable attention on packed sequences (no gradient through a block_table);
    ``deterministic``: the backward's mode."""
    _no_tangents(("q", "k", "v"), q, k, v)
    return torch.ops.flashattn_ext.varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, block_table,
                                              scale, mask.window_left, mask.window_right,
                                              mask.softcap, mask.alibi_slopes, deterministic,
                                              mask.dropout_p, mask.dropout_seed, mask.dropout_offset,
                                              mask.dropout_rng)
