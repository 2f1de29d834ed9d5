"""Public attention functions. Each validates its arguments once, reduces them to (B, S, H, D)
views and a mask, and runs the kernels: through the differentiable torch operator for tensors,
directly for numpy arrays (which get numpy arrays back).

Causal alignment (DESIGN.md section 1): :func:`attention` and :func:`flash_attn_func` align the
causal mask bottom-right (query ``i`` sees keys ``j <= i + Sk - Sq``, as FlashAttention >= 2.1 and
KV-cache decoding); :func:`scaled_dot_product_attention` aligns it top-left (``j <= i``, as
``torch.nn.functional.scaled_dot_product_attention``). They agree when Sq == Sk."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _core
from ._core import MaskSpec

ArrayLike = Any  # torch.Tensor or numpy.ndarray


def _run(q: ArrayLike, k: ArrayLike, v: ArrayLike, kind: str, scale: Optional[float],
         mask: MaskSpec) -> Tuple[ArrayLike, ArrayLike]:
    """q, k, v are validated (B, S, H, D) views."""
    _core.check_bshd(q, k, v)
    s = _core.default_scale(q.shape[3], scale)
    if kind == "numpy":
        return _core.numpy_forward(q, k, v, s, mask)
    from . import _torch_ops

    return _torch_ops.apply(q, k, v, s, mask)


def _unsqueeze(x: ArrayLike, axis: int) -> ArrayLike:
    return np.expand_dims(x, axis) if isinstance(x, np.ndarray) else x.unsqueeze(axis)


def _transpose12(x: ArrayLike) -> ArrayLike:
    return x.swapaxes(1, 2) if isinstance(x, np.ndarray) else x.transpose(1, 2)


def attention(q: ArrayLike, k: ArrayLike, v: ArrayLike, *, causal: bool = False,
              scale: Optional[float] = None, window_size: Tuple[int, int] = (-1, -1),
              return_lse: bool = False) -> Union[ArrayLike, Tuple[ArrayLike, ArrayLike]]:
    """Exact softmax(q kᵀ · scale) v, computed tile by tile in O(S) memory.

    Args:
        q: queries, (Sq, D), (B, Sq, D) or (B, Sq, Hq, D); a torch.Tensor or numpy.ndarray of
            float32, float64, float16 or bfloat16. Only the last dimension must be contiguous.
        k: keys, (Sk, D), (B, Sk, D) or (B, Sk, Hkv, D); Sk may differ from Sq
            (cross-attention) and Hq must be a multiple of Hkv (grouped-query attention).
        v: values, shaped like k.
        causal: mask keys "after" each query, aligned bottom-right: query i sees keys
            j <= i + Sk - Sq. Rows that see no key give 0 (and lse -inf).
        scale: score scale; default 1/sqrt(D).
        window_size: (left, right) sliding window around the aligned diagonal, -1 = unbounded.
        return_lse: also return the natural-log logsumexp of each row's scaled scores.

    Returns:
        out shaped like q (same kind: tensor or array), and with ``return_lse`` the pair
        (out, lse) with lse (B, Hq, Sq), (B, Sq) or (Sq,) following q's rank; lse is float32
        (float64 for float64 inputs).
    """
    kind = _core.validate(q, k, v, ranks=(2, 3, 4), scale=scale, layout="(S, D), (B, S, D) or "
                          "(B, S, H, D)")
    rank = q.ndim
    if rank == 2:
        q, k, v = (_unsqueeze(x, 0) for x in (q, k, v))
    if rank <= 3:
        q, k, v = (_unsqueeze(x, 2) for x in (q, k, v))
    out, lse = _run(q, k, v, kind, scale, MaskSpec.make(causal, window_size, bottom_right=True))
    if rank <= 3:
        out, lse = out[:, :, 0], lse[:, 0]
    if rank == 2:
        out, lse = out[0], lse[0]
    return (out, lse) if return_lse else out


def flash_attn_func(q: ArrayLike, k: ArrayLike, v: ArrayLike, dropout_p: float = 0.0,
                    softmax_scale: Optional[float] = None, causal: bool = False,
                    window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                    alibi_slopes: Optional[ArrayLike] = None, deterministic: bool = False,
                    return_attn_probs: bool = False) -> Any:
    """Drop-in for FlashAttention 2.x ``flash_attn_func``.

    q: (B, Sq, Hq, D); k, v: (B, Sk, Hkv, D). The causal mask is aligned bottom-right and
    ``window_size=(left, right)`` is a sliding window (-1 = unbounded), as in FlashAttention.
    Returns out (B, Sq, Hq, D); with ``return_attn_probs`` returns (out, softmax_lse, None):
    softmax_lse is (B, Hq, Sq) and the third item, FlashAttention's debug-only dropout mask, is
    None because dropout is not applied. The backward is always deterministic, so
    ``deterministic`` is accepted either way. Not implemented (raising NotImplementedError):
    dropout_p > 0, softcap != 0, alibi_slopes.
    """
    if dropout_p != 0.0:
        raise NotImplementedError(f"dropout_p={dropout_p}: dropout is not implemented; pass 0.0")
    if softcap != 0.0:
        raise NotImplementedError(f"softcap={softcap}: softcapping is not implemented; pass 0.0")
    if alibi_slopes is not None:
        raise NotImplementedError("alibi_slopes: ALiBi is not implemented; pass None")
    if len(tuple(window_size)) != 2:
        raise ValueError(f"window_size: expected (left, right), got {window_size!r}")
    kind = _core.validate(q, k, v, ranks=(4,), scale=softmax_scale, layout="(B, S, H, D)")
    out, lse = _run(q, k, v, kind, softmax_scale,
                    MaskSpec.make(causal, window_size, bottom_right=True))
    return (out, lse, None) if return_attn_probs else out


def scaled_dot_product_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                                 attn_mask: Optional[ArrayLike] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> ArrayLike:
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention``.

    query: (B, Hq, Sq, D) or (B, Sq, D); key, value: (B, Hkv, Sk, D) or (B, Sk, D). The causal
    mask is aligned top-left (query i sees keys j <= i), as in torch. Hq != Hkv needs
    ``enable_gqa=True``. Not implemented (raising NotImplementedError): attn_mask, dropout_p > 0.
    """
    if attn_mask is not None:
        raise NotImplementedError("attn_mask: arbitrary masks are not implemented; use "
                                  "is_causal=True or flash_attn_func's window_size")
    if dropout_p != 0.0:
        raise NotImplementedError(f"dropout_p={dropout_p}: dropout is not implemented; pass 0.0")
    kind = _core.validate(query, key, value, ranks=(3, 4), scale=scale,
                          layout="(B, H, S, D) or (B, S, D)")
    rank = query.ndim
    q, k, v = query, key, value
    if rank == 3:
        q, k, v = (_unsqueeze(x, 1) for x in (q, k, v))
    if q.shape[1] != k.shape[1] and not enable_gqa:
        raise ValueError(f"key: {k.shape[1]} heads differ from query's {q.shape[1]}; pass "
                         f"enable_gqa=True for grouped-query attention")
    q, k, v = (_transpose12(x) for x in (q, k, v))  # (B, H, S, D) -> BSHD views, no copy
    out, _ = _run(q, k, v, kind, scale, MaskSpec.make(is_causal, (-1, -1), bottom_right=False))
    out = _transpose12(out)
    return out[:, 0] if rank == 3 else out
