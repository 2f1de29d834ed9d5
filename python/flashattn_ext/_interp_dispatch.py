"""Calls into the attention-weights and top-k kernels (csrc/cpu/interp_kernels.h, the CUDA kernels
of csrc/cuda/flash/interp_kernels.cuh on a GPU or on the emulator), on validated (B, S, H, D)
views; the same backend choice, zero-padding and workspace rules as _dispatch.py."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from . import _C, _dispatch
from ._dispatch import _fit, _new, _padded_head_dim, _ptr, backend_for
from ._validate import DTYPES, MaskSpec, dtype_name, is_tensor, strides

try:  # torch is optional: numpy-only installs never import it
    import torch
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None  # type: ignore[assignment]


_NAMES = ("attention_weights", "topk_forward", "topk_backward")


def _kernels(q: Any) -> Tuple[Dict[str, Callable[..., None]], int, Optional[int]]:
    """(entry points by name, stream, the largest k_top) of the backend q runs on; None: any k_top.
    On a GPU the entry points run with q's device current (the kernels launch there)."""
    backend = backend_for(q)
    if backend == "cpu":
        return {n: getattr(_C, n) for n in _NAMES}, 0, None
    if backend == "emu":
        emu = _dispatch._emu_module()
        return {n: getattr(emu, n) for n in _NAMES}, 0, emu.max_top_k

    def on_device(fn: Callable[..., None]) -> Callable[..., None]:
        def run(**kw: Any) -> None:
            with torch.cuda.device(q.device):
                fn(**kw)
        return run

    return ({n: on_device(getattr(_C, "cuda_" + n)) for n in _NAMES},
            torch.cuda.current_stream(q.device).cuda_stream, _C.cuda_max_top_k)


def _head_dim(q: Any, what: str) -> int:
    """q's head dim on the CPU, else the CUDA instantiation it is padded to."""
    if backend_for(q) == "cpu":
        return q.shape[3]
    heads = _dispatch._emu_module().attention_head_dims if backend_for(q) == "emu" else _C.cuda_head_dims
    return _padded_head_dim(q, heads, what)


def _fitted(q: Any, head_dim: int, *xs: Any, copy: bool = True) -> Tuple[Any, ...]:
    """xs as the kernels read them: as they are on the CPU, else aligned and padded (_fit)."""
    return xs if backend_for(q) == "cpu" else tuple(_fit(x, head_dim, copy=copy) for x in xs)


def _common(q: Any, k: Any, scale: float, mask: MaskSpec, head_dim: int) -> Dict[str, Any]:
    b, sq, hq, _ = q.shape
    sk, hk = int(k.shape[1]), int(k.shape[2])
    return dict(dtype=DTYPES.index(dtype_name(q)), sizes=(b, sq, sk, hq, hk, head_dim), q=_ptr(q), k=_ptr(k),
                q_strides=strides(q)[:3], k_strides=strides(k)[:3], align_offset=mask.offset(sq, sk),
                window_left=mask.window_left, window_right=mask.window_right, scale=float(scale))


def max_top_k(q: Any) -> Optional[int]:
    """The largest k_top the kernels of q's backend take (None: any)."""
    return _kernels(q)[2]


def weights(q: Any, k: Any, lse: Optional[Any], heads: Any, rows: Any, probs: Any, scale: float,
            mask: MaskSpec) -> None:
    """Writes probs (B, len(heads), len(rows), Sk) from q, k (BSHD) and lse (B, Hq, Sq, row stride
    1) or, without lse, from each row's own first pass, with the mask's softcap and ALiBi slopes.
    heads, rows: int64 arrays on q's device."""
    run, stream, _ = _kernels(q)
    dp = _head_dim(q, "attention weights")
    qf, kf = _fitted(q, dp, q, k)
    slopes = mask.alibi_slopes  # softcap and ALiBi as the forward applies them
    mods = dict(softcap=mask.softcap, alibi_slopes=0 if slopes is None else _ptr(slopes),
                alibi_batch_stride=strides(slopes)[0] if slopes is not None and slopes.ndim == 2 else 0)
    run["attention_weights"](**_common(qf, kf, scale, mask, dp), **mods, lse=0 if lse is None else _ptr(lse),
                             lse_strides=(0, 0) if lse is None else strides(lse)[:2], probs=_ptr(probs),
                             probs_strides=strides(probs)[:3], heads=_ptr(heads), num_heads=len(heads),
                             rows=_ptr(rows), num_rows=len(rows), stream=stream)


def topk_forward(q: Any, k: Any, v: Any, k_top: int, scale: float, mask: MaskSpec) -> Tuple[Any, Any]:
    """out (like q) and index (B, Hq, Sq, k_top) int64: each row's kept keys, best first, -1 after."""
    run, stream, _ = _kernels(q)
    dp = _head_dim(q, "top-k")
    out = _new(q, tuple(q.shape), zero=False)
    shape = (q.shape[0], q.shape[2], q.shape[1], k_top)
    index = (torch.empty(shape, dtype=torch.int64, device=q.device) if is_tensor(q)
             else np.empty(shape, dtype=np.int64))
    qf, kf, vf = _fitted(q, dp, q, k, v)
    (of,) = _fitted(q, dp, out, copy=False)
    run["topk_forward"](**_common(qf, kf, scale, mask, dp), v=_ptr(vf), out=_ptr(of), v_strides=strides(vf)[:3],
                        out_strides=strides(of)[:3], index=_ptr(index), index_strides=strides(index)[:3],
                        k_top=k_top, stream=stream)
    _dispatch._copy_back(of, out)
    return out, index


def topk_backward(dout: Any, q: Any, k: Any, v: Any, index: Any, scale: float,
                  mask: MaskSpec) -> Tuple[Any, Any, Any]:
    """dq, dk, dv of top-k attention over the keys in index (torch tensors, BSHD)."""
    run, stream, _ = _kernels(q)
    dp = _head_dim(q, "top-k")
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    b, sk, hk = k.shape[:3]
    dk, dv = (torch.zeros((b, sk, hk, dp), dtype=acc, device=q.device) for _ in range(2))
    dq = torch.empty_like(q)
    qf, kf, vf, dof = _fitted(q, dp, q, k, v, dout)
    (dqf,) = _fitted(q, dp, dq, copy=False)
    run["topk_backward"](**_common(qf, kf, scale, mask, dp), v=_ptr(vf), v_strides=strides(vf)[:3],
                         index=_ptr(index), index_strides=strides(index)[:3], k_top=int(index.shape[3]),
                         dout=_ptr(dof), dout_strides=strides(dof)[:3], dq=_ptr(dqf), dq_strides=strides(dqf)[:3],
                         dk=_ptr(dk), dv=_ptr(dv), stream=stream)
    _dispatch._copy_back(dqf, dq)
    return dq, dk[..., :q.shape[3]].to(k.dtype), dv[..., :q.shape[3]].to(v.dtype)
