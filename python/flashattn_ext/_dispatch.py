"""Backend choice and the calls into the compiled core: the CPU kernels (_C), the CUDA kernels
(_C on the GPU, or their source on the SIMT emulator, _emu). Arrays arrive as validated
(B, S, H, D) views (numpy arrays, or tensors through the torch ops of _torch_ops.py) and go to
the kernels as addresses and element strides, by keyword (csrc/bindings/bind_attention.h)."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from . import _C
from ._validate import CUDA_KERNEL_DTYPES, DTYPES, MaskSpec, dtype_name, is_tensor, strides

try:  # torch is optional: numpy-only installs never import it
    import torch
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None  # type: ignore[assignment]

BACKENDS = ("auto", "cpu", "emu")


def _emu_module() -> Any:
    try:
        from . import _emu
    except ImportError:
        return None
    return _emu


def backend_for(q: Any) -> str:
    """The backend this call runs on: "cuda" for CUDA tensors; for CPU data "cpu", or "emu" (the
    CUDA kernel source on the SIMT emulator). FLASHATTN_EXT_BACKEND is read at every call; "emu"
    applies to float16/bfloat16 inputs (the CUDA kernels' dtypes), other dtypes stay on the CPU
    kernels."""
    if is_tensor(q) and q.device.type == "cuda":
        return "cuda"
    choice = os.environ.get("FLASHATTN_EXT_BACKEND", "").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"FLASHATTN_EXT_BACKEND={choice!r} is not available; accepted: "
                         f"{', '.join(BACKENDS)}")
    if choice == "emu":
        if _emu_module() is None:
            raise ValueError("FLASHATTN_EXT_BACKEND='emu': this build has no emulator; build with "
                             "FLASHATTN_EXT_EMULATOR=ON")
        return "emu" if dtype_name(q) in CUDA_KERNEL_DTYPES else "cpu"
    return "cpu"


def lse_dtype_name(q_dtype_name: str) -> str:
    """LSE is float32, except float64 for float64 inputs (so gradients stay exact)."""
    return "float64" if q_dtype_name == "float64" else "float32"


def _ptr(x: Any) -> int:
    return int(x.data_ptr()) if is_tensor(x) else int(x.ctypes.data)


def _arrays(**arrays: Any) -> Dict[str, Any]:
    """Address and (batch, seq, head) element strides of each (B, S, H, D) array."""
    out: Dict[str, Any] = {}
    for name, x in arrays.items():
        out[name] = _ptr(x)
        out[name + "_strides"] = strides(x)[:3]
    return out


def _common_kwargs(q: Any, k: Any, v: Any, out: Any, lse: Any, scale: float, mask: MaskSpec,
                   head_dim: int) -> Dict[str, Any]:
    """The arguments every compiled entry point takes (bind_attention.h: common_args)."""
    b, sq, hq, _ = q.shape
    sk, hk = int(k.shape[1]), int(k.shape[2])
    return dict(dtype=DTYPES.index(dtype_name(q)), sizes=(b, sq, sk, hq, hk, head_dim),
                **_arrays(q=q, k=k, v=v, out=out), lse=_ptr(lse), lse_strides=strides(lse)[:2],
                align_offset=mask.offset(sq, sk), window_left=mask.window_left,
                window_right=mask.window_right, scale=float(scale))


def _entry_points(q: Any) -> Tuple[Any, Any, Sequence[int], Sequence[int], int]:
    """(forward, backward, forward head dims, backward head dims, stream) of the CUDA kernels:
    on the GPU (launched on the stream torch is using for q's device) or on the emulator."""
    if backend_for(q) == "emu":
        emu = _emu_module()
        return (emu.attention_forward, emu.attention_backward, emu.attention_head_dims,
                emu.attention_bwd_head_dims, 0)
    return (_C.cuda_forward, _C.cuda_backward, _C.cuda_head_dims, _C.cuda_bwd_head_dims,
            torch.cuda.current_stream(q.device).cuda_stream)


def forward(q: Any, k: Any, v: Any, out: Any, lse: Any, scale: float, mask: MaskSpec) -> None:
    """Runs the forward kernel on BSHD views, writing ``out`` (like q) and ``lse`` (B, H, Sq).
    Raises ValueError when finite q and k overflow the scores (see check_overflow)."""
    backend = backend_for(q)
    if backend == "cpu":
        _C.forward(**_common_kwargs(q, k, v, out, lse, scale, mask, q.shape[3]), stream=0)
    else:
        run, _, head_dims, _, stream = _entry_points(q)
        dp = _padded_head_dim(q, head_dims, "forward")
        qf, kf, vf = (_fit(x, dp) for x in (q, k, v))
        of = _fit(out, dp, copy=False)
        run(**_common_kwargs(qf, kf, vf, of, lse, scale, mask, dp), stream=stream)
        _copy_back(of, out)
    if backend != "cuda":  # on a GPU the check would synchronise the device at every call
        check_overflow(q, k, lse, scale, mask)


_deterministic = False


def set_deterministic(flag: bool) -> None:
    """Global switch of the CUDA backward's deterministic mode (see :func:`deterministic`)."""
    global _deterministic
    if not isinstance(flag, bool):
        raise TypeError(f"set_deterministic: flag must be a bool, got {type(flag).__name__}")
    _deterministic = flag


def deterministic(requested: bool = False) -> bool:
    """Whether a backward runs in deterministic mode: asked for by the call
    (``flash_attn_func(deterministic=True)``), by :func:`set_deterministic`, by
    FLASHATTN_EXT_DETERMINISTIC=1 (read at every call) or by
    ``torch.use_deterministic_algorithms(True)``."""
    env = os.environ.get("FLASHATTN_EXT_DETERMINISTIC", "").strip()
    if env not in ("", "0", "1"):
        raise ValueError(f"FLASHATTN_EXT_DETERMINISTIC={env!r}; accepted: 0 or 1")
    torch_flag = torch is not None and torch.are_deterministic_algorithms_enabled()
    return bool(requested or _deterministic or env == "1" or torch_flag)


def backward(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, dq: Any, dk: Any, dv: Any,
             scale: float, mask: MaskSpec, dlse: Optional[Any] = None,
             deterministic_mode: bool = False) -> None:
    """Runs the backward kernel on BSHD views, writing dq, dk, dv. ``dlse`` (optional) is the
    gradient of lse, laid out exactly like lse. ``deterministic_mode``: the CUDA kernels sum dq
    in a fixed order (bitwise reproducible; the CPU backward always is)."""
    dlse_ptr = 0 if dlse is None else _ptr(dlse)
    if backend_for(q) == "cpu":
        _C.backward(**_common_kwargs(q, k, v, out, lse, scale, mask, q.shape[3]),
                    **_arrays(dout=dout, dq=dq, dk=dk, dv=dv), dlse=dlse_ptr, stats=0, dq_accum=0,
                    stream=0)
        return
    _, run, _, head_dims, stream = _entry_points(q)
    dp = _padded_head_dim(q, head_dims, "backward")
    qf, kf, vf, of, dof = (_fit(x, dp) for x in (q, k, v, out, dout))
    dqf, dkf, dvf = (_fit(x, dp, copy=False) for x in (dq, dk, dv))
    b, sq, hq, _ = q.shape
    workspace = _emu_module().attention_bwd_workspace if backend_for(q) == "emu" else _C.cuda_bwd_workspace
    n_stats, n_accum = workspace(sizes=(b, sq, k.shape[1], hq, k.shape[2], dp), deterministic=deterministic_mode)
    stats = _new(q, (n_stats,), zero=False, float32=True)  # lse2, 1 / softmax sum, delta per row
    dq_accum = _new(q, (n_accum,), zero=False, float32=True)
    run(**_common_kwargs(qf, kf, vf, of, lse, scale, mask, dp),
        **_arrays(dout=dof, dq=dqf, dk=dkf, dv=dvf), dlse=dlse_ptr, stats=_ptr(stats),
        dq_accum=_ptr(dq_accum), deterministic=deterministic_mode, stream=stream)
    for padded, real in ((dqf, dq), (dkf, dk), (dvf, dv)):
        _copy_back(padded, real)


def numpy_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
                  mask: MaskSpec) -> Tuple[np.ndarray, np.ndarray]:
    out = np.empty_like(q)  # keeps q's memory order; the kernel writes through strides
    lse = np.empty((q.shape[0], q.shape[2], q.shape[1]), dtype=lse_dtype_name(dtype_name(q)))
    forward(q, k, v, out, lse, scale, mask)
    return out, lse


def _all_finite(x: Any) -> bool:
    return bool(torch.isfinite(x).all()) if is_tensor(x) else bool(np.isfinite(x).all())


def check_overflow(q: Any, k: Any, lse: Any, scale: float, mask: MaskSpec) -> None:
    """Raises ValueError when finite q and k gave scaled scores beyond the accumulation type's
    range: lse is then NaN or +inf, or -inf in a row that sees keys (the kernels return NaN or
    zeros there). NaN or inf in q or k propagates silently instead. Costs one pass over
    lse (B*H*Sq values); q and k are read only when lse is not finite."""
    values = lse.numpy() if is_tensor(lse) else lse
    if np.isfinite(values).all():
        return
    empty = mask.empty_rows(q.shape[1], k.shape[1])
    if np.isfinite(values[..., ~empty]).all() or not (_all_finite(q) and _all_finite(k)):
        return
    acc = "float64" if dtype_name(q) == "float64" else "float32"
    hint = "" if acc == "float64" else ", or float64 inputs"
    raise ValueError(f"scale: q·kᵀ·scale overflows the {acc} range of the kernels for these "
                     f"finite q and k (scale={scale:g}), which would give NaN or zero outputs; "
                     f"accepted: |scale·(q·k)| below {np.finfo(acc).max:.1e} (use a smaller "
                     f"scale or smaller q, k{hint})")


# ---- the CUDA kernels' alignment and head-dim rules (GPU and emulator) ------------------------

def _new(like: Any, shape: Tuple[int, ...], zero: bool, float32: bool = False) -> Any:
    if is_tensor(like):
        dtype = torch.float32 if float32 else like.dtype
        return (torch.zeros if zero else torch.empty)(shape, dtype=dtype, device=like.device)
    return (np.zeros if zero else np.empty)(shape, dtype=np.float32 if float32 else like.dtype)


def _kernel_ready(x: Any, head_dim: int) -> bool:
    """What the CUDA kernels' 16-byte cp.async loads need: an instantiated head dim, rows
    16-byte aligned (strides multiples of 8 elements, aligned base), non-negative strides."""
    st = strides(x)[:3]
    return (x.shape[3] == head_dim and _ptr(x) % 16 == 0
            and all(s >= 0 and s % 8 == 0 for s in st))


def _padded_head_dim(q: Any, head_dims: Sequence[int], what: str) -> int:
    """The instantiated head dim a call runs with: q's own or the next larger one (the extra
    columns are zeros, which change neither q.k nor, once sliced off, the outputs)."""
    d = q.shape[3]
    fits = [h for h in head_dims if h >= d]
    if not fits:
        raise NotImplementedError(f"q: head_dim {d} has no CUDA {what} kernel (head dims up to "
                                  f"{max(head_dims)})")
    return min(fits)


def _fit(x: Any, head_dim: int, copy: bool = True) -> Any:
    """x itself when the kernels can read (or write) it as it is, else a zero-padded aligned
    buffer (holding a copy of x when ``copy``)."""
    if _kernel_ready(x, head_dim):
        return x
    y = _new(x, tuple(x.shape[:3]) + (head_dim,), zero=True)
    if copy:
        y[..., :x.shape[3]] = x
    return y


def _copy_back(padded: Any, real: Any) -> None:
    if padded is not real:
        real[...] = padded[..., :real.shape[3]]
