"""Seeing what attention does: the exact attention weights on demand, and hard and top-k attention
(docs/interpretability.md). Same inputs and mask as :func:`flashattn_ext.attention`: (S, D),
(B, S, D) or (B, S, H, D), torch or numpy, causal aligned bottom-right."""

from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from . import _interp_dispatch
from ._validate import SD, Call, MaskSpec, dtype_name, flag, is_tensor, prepare
from .functional import _run

ArrayLike = Any  # torch.Tensor or numpy.ndarray
Selection = Union[None, int, Sequence[int], range, slice, ArrayLike]


def _selection(name: str, sel: Selection, n: int, like: Any) -> Any:
    """The selected indices in [0, n) as an int64 array on like's device (torch or numpy)."""
    accepted = (f"None, an int, a slice, or a sequence / 1-d integer array of indices in "
                f"[-{n}, {n})")
    if sel is None:
        idx = np.arange(n)
    elif isinstance(sel, slice):
        idx = np.arange(n)[sel]
    else:
        if is_tensor(sel):
            sel = sel.detach().cpu().numpy()
        if isinstance(sel, (bool, np.bool_)):
            raise TypeError(f"{name}: expected {accepted}, got {sel!r}")
        if isinstance(sel, numbers.Integral):
            sel = [int(sel)]
        try:
            idx = np.asarray(sel)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected {accepted}, got {type(sel).__name__}") from None
        if idx.ndim != 1 or not (idx.dtype.kind in "iu" or idx.size == 0):
            raise TypeError(f"{name}: expected {accepted}, got an array of shape {idx.shape} and "
                            f"dtype {idx.dtype}")
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = idx[(idx < -n) | (idx >= n)][0]
            raise ValueError(f"{name}: index {int(bad)} is out of range; accepted: {accepted}")
        idx = np.where(idx < 0, idx + n, idx)
    if idx.size == 0:
        raise ValueError(f"{name}: the selection is empty; accepted: {accepted}")
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    if is_tensor(like):
        import torch

        return torch.from_numpy(idx).to(like.device)
    return idx


def _lse_view(call: Call, lse: Any) -> Any:
    """The given lse as a (B, Hq, Sq) view with row stride 1, after checking it against q."""
    b, sq, hq, _ = call.q.shape
    want = {2: (sq,), 3: (b, sq), 4: (b, hq, sq)}[call.rank]
    dt = "float64" if dtype_name(call.q) == "float64" else "float32"
    kind = "torch" if is_tensor(lse) else "numpy" if isinstance(lse, np.ndarray) else None
    if kind != call.kind:
        raise TypeError(f"lse: expected a {call.kind} array like q (the lse the forward returned), "
                        f"got {type(lse).__name__}")
    if tuple(lse.shape) != want or dtype_name(lse) != dt:
        raise ValueError(f"lse: expected shape {want} and dtype {dt} (what attention(..., "
                         f"return_lse=True) returns for this q), got {tuple(lse.shape)} {dtype_name(lse)}")
    if kind == "torch" and lse.device != call.q.device:
        raise ValueError(f"lse: on device {lse.device}, but q is on {call.q.device}")
    view = lse[None, None] if call.rank == 2 else lse[:, None] if call.rank == 3 else lse
    if kind == "numpy" and view.strides[-1] != view.itemsize:
        view = np.ascontiguousarray(view)
    return view


def attention_weights(q: ArrayLike, k: ArrayLike, *, causal: bool = False,
                      window_size: Tuple[int, int] = (-1, -1), scale: Optional[float] = None,
                      lse: Optional[ArrayLike] = None, heads: Selection = None,
                      rows: Selection = None) -> ArrayLike:
    """The exact softmax probabilities P = softmax(q kᵀ · scale) of the selected heads and query
    rows, recomputed tile by tile from each row's logsumexp.

    Args:
        q, k: as for :func:`flashattn_ext.attention` (v is not needed).
        causal, window_size, scale: the mask and scale of the attention to inspect.
        lse: the logsumexp that forward returned (``attention(..., return_lse=True)``), shaped
            like it; computed here (for the selected rows only) when None.
        heads, rows: query heads and query rows to return: None (all), an int, a slice, or a
            sequence / 1-d integer array (negative indices count from the end).

    Returns:
        float32 probabilities (float64 for float64 inputs), (B, len(heads), len(rows), Sk) for
        4-d q, (B, len(rows), Sk) for (B, S, D), (len(rows), Sk) for (S, D); masked keys are 0,
        rows that see no key are all 0. Memory is the result's size only. No gradient flows
        through the result.
    """
    mask = MaskSpec.make(causal, window_size, bottom_right=True)
    call = prepare(q, k, k, layout=SD, scale=scale, mask=mask, names=("q", "k", "k"))
    hsel = _selection("heads", heads, call.q.shape[2], call.q)
    rsel = _selection("rows", rows, call.q.shape[1], call.q)
    return call.lse(weights_of(call, None if lse is None else _lse_view(call, lse), hsel, rsel))


def weights_of(call: Call, lse: Optional[ArrayLike], heads: Optional[Any] = None,
               rows: Optional[Any] = None) -> ArrayLike:
    """Probabilities (B, H, R, Sk) of a validated call from its (B, Hq, Sq) lse (or None), for
    the heads and rows given as int64 arrays on q's device (None: all)."""
    heads = _selection("heads", None, call.q.shape[2], call.q) if heads is None else heads
    rows = _selection("rows", None, call.q.shape[1], call.q) if rows is None else rows
    if call.kind == "numpy":
        dt = np.float64 if dtype_name(call.q) == "float64" else np.float32
        probs = np.empty((call.q.shape[0], len(heads), len(rows), call.k.shape[1]), dtype=dt)
        _interp_dispatch.weights(call.q, call.k, lse, heads, rows, probs, call.scale, call.mask)
        return probs
    from . import _interp_ops

    return _interp_ops.weights(call.q, call.k, lse, heads, rows, call.scale, call.mask)


def _k_top(k_top: Any) -> int:
    if isinstance(k_top, (bool, np.bool_)) or not isinstance(k_top, numbers.Integral) or k_top < 1:
        raise ValueError(f"k_top: expected an int >= 1, got {k_top!r}")
    return int(k_top)


def _select(call: Call, k_top: int, grad_mode: int) -> Tuple[Any, Any]:
    """out and index (B, Hq, Sq, k_top) of the top-k kernels for a validated call."""
    limit = _interp_dispatch.max_top_k(call.q)
    if limit is not None and k_top > limit:
        raise NotImplementedError(f"k_top: {k_top} exceeds the {limit} keys per row the CUDA top-k "
                                  f"kernel keeps in shared memory (use k_top <= {limit}, or CPU tensors)")
    if call.kind == "numpy":
        return _interp_dispatch.topk_forward(call.q, call.k, call.v, k_top, call.scale, call.mask)
    from . import _interp_ops

    return _interp_ops.topk(call.q, call.k, call.v, k_top, call.scale, call.mask, grad_mode)


def hard_attention(q: ArrayLike, k: ArrayLike, v: ArrayLike, *, causal: bool = False,
                   window_size: Tuple[int, int] = (-1, -1), scale: Optional[float] = None,
                   straight_through: bool = False) -> Tuple[ArrayLike, ArrayLike]:
    """Each query row takes the value of its highest-scoring visible key: out_i = v[argmax_j s_ij].

    Computed streaming (a running argmax per row, O(S) memory). Ties go to the lowest key index;
    a NaN score counts as the highest (as ``torch.argmax``). A row that sees no key gives out 0
    and index -1.

    Returns:
        (out, index): out shaped like q; index int64 shaped like q without its last dimension
        ((B, Sq, Hq), (B, Sq) or (Sq,)).

    Gradient: none by default; backward through out raises RuntimeError. With
    ``straight_through=True`` the backward uses the gradient of ordinary softmax attention with
    the same q, k, v, mask and scale (recomputed in the backward).
    """
    mask = MaskSpec.make(causal, window_size, bottom_right=True)
    mode = 2 if flag("straight_through", straight_through) else 1
    call = prepare(q, k, v, layout=SD, scale=scale, mask=mask)
    out, index = _select(call, 1, mode)
    return call.output(out), call.output(index.swapaxes(1, 2))[..., 0]


def topk_attention(q: ArrayLike, k: ArrayLike, v: ArrayLike, k_top: int, *, causal: bool = False,
                   window_size: Tuple[int, int] = (-1, -1), scale: Optional[float] = None,
                   return_index: bool = False) -> Union[ArrayLike, Tuple[ArrayLike, ArrayLike]]:
    """Softmax attention restricted to each row's ``k_top`` highest-scoring visible keys.

    Keys are ranked by score, ties to the lower index, NaN first (as ``torch.topk``); a row with
    fewer visible keys uses all of them. ``k_top = 1`` is hard attention; ``k_top >= Sk`` is
    ordinary attention (and runs the ordinary kernels unless ``return_index``). Computed
    streaming (a heap of k_top entries per row); the backward is the gradient of the restricted
    softmax over the keys the forward kept (memory: B·Hq·Sq·k_top indices). The CUDA kernels take
    k_top up to 64.

    Returns:
        out shaped like q; with ``return_index`` also the kept keys of every row, best first and
        -1 after the last, int64 shaped like q with its last dimension min(k_top, Sk).
    """
    mask = MaskSpec.make(causal, window_size, bottom_right=True)
    kt = _k_top(k_top)
    with_index = flag("return_index", return_index)
    call = prepare(q, k, v, layout=SD, scale=scale, mask=mask)
    if kt >= call.k.shape[1] and not with_index:
        return call.output(_run(call)[0])
    out, index = _select(call, min(kt, call.k.shape[1]), 0)
    return (call.output(out), call.output(index.swapaxes(1, 2))) if with_index else call.output(out)
