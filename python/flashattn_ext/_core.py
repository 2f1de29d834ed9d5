"""Argument validation, layout normalisation and backend dispatch: the one place where Python
meets the compiled core. Every public entry point reduces its arguments to canonical BSHD
(batch, seq, heads, head_dim) views and a :class:`MaskSpec`, and calls :func:`forward` /
:func:`backward` here (directly for numpy, through the registered torch ops for tensors)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from . import _C

try:  # torch is optional: numpy-only installs never import it
    import torch
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None  # type: ignore[assignment]

MAX_HEAD_DIM = 256
NO_WINDOW = -1

# dtype codes shared with csrc/common/params.h (fae::DType)
_NUMPY_DTYPES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}
_TORCH_DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16")


@dataclass(frozen=True)
class MaskSpec:
    """The mask of DESIGN.md section 1 for one call.

    Query row ``i`` sees key ``j`` iff ``i + off - left <= j <= i + off + right`` where
    ``off = Sk - Sq`` when ``bottom_right`` else ``0``; a negative bound means unbounded.
    """

    window_left: int = NO_WINDOW
    window_right: int = NO_WINDOW
    bottom_right: bool = True

    @staticmethod
    def make(causal: bool, window_size: Sequence[int], bottom_right: bool) -> "MaskSpec":
        left, right = (int(w) for w in window_size)
        if causal:
            right = 0
        return MaskSpec(left if left >= 0 else NO_WINDOW, right if right >= 0 else NO_WINDOW,
                        bottom_right)

    def offset(self, seqlen_q: int, seqlen_k: int) -> int:
        return seqlen_k - seqlen_q if self.bottom_right else 0


def is_tensor(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _kind(name: str, x: Any) -> str:
    if isinstance(x, np.ndarray):
        return "numpy"
    if is_tensor(x):
        return "torch"
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def dtype_name(x: Any) -> str:
    return str(x.dtype).replace("torch.", "")


def _strides(x: Any) -> Tuple[int, ...]:
    """Strides in elements."""
    if is_tensor(x):
        return tuple(x.stride())
    return tuple(s // x.itemsize for s in x.strides)


def num_threads() -> int:
    return 0  # 0 lets the core use its own default (set_num_threads / FLASHATTN_EXT_NUM_THREADS)


def validate(q: Any, k: Any, v: Any, *, ranks: Sequence[int], scale: Optional[float],
             layout: str) -> str:
    """Checks q, k, v once for every entry point; returns "numpy" or "torch".

    ``layout`` names the dimension order of ``ranks``' largest form (for error messages).
    """
    kinds = {n: _kind(n, x) for n, x in (("q", q), ("k", k), ("v", v))}
    if len(set(kinds.values())) != 1:
        given = ", ".join(f"{n} is {kd}" for n, kd in kinds.items())
        raise TypeError(f"q, k, v must all be torch tensors or all numpy arrays; got {given}")
    kind = kinds["q"]
    for n, x in (("k", k), ("v", v)):
        if x.ndim != q.ndim:
            raise ValueError(f"{n}: expected {q.ndim} dimensions like q, got shape {tuple(x.shape)}")
    if q.ndim not in ranks:
        raise ValueError(f"q: expected {' or '.join(str(r) for r in ranks)} dimensions, "
                         f"{layout}; got shape {tuple(q.shape)}")
    for n, x in (("q", q), ("k", k), ("v", v)):
        name = dtype_name(x)
        if name not in _NUMPY_DTYPES:
            raise TypeError(f"{n}: dtype {name} is not supported; use float32, float64, "
                            f"float16 or bfloat16")
        if 0 in tuple(x.shape):
            raise ValueError(f"{n}: zero-size dimension in shape {tuple(x.shape)}; every "
                             f"dimension must be at least 1")
        if _strides(x)[-1] != 1 and x.shape[-1] != 1:
            raise ValueError(f"{n}: the last (head_dim) dimension must be contiguous (stride 1), "
                             f"got strides {_strides(x)}; call .contiguous() first")
        if kind == "numpy" and any(s % x.itemsize for s in x.strides):
            raise ValueError(f"{n}: byte strides {x.strides} are not multiples of the item size")
    for n, x in (("k", k), ("v", v)):
        if dtype_name(x) != dtype_name(q):
            raise TypeError(f"{n}: dtype {dtype_name(x)} differs from q's {dtype_name(q)}; "
                            f"q, k, v must share one dtype")
    if kind == "torch":
        for n, x in (("k", k), ("v", v)):
            if x.device != q.device:
                raise ValueError(f"{n}: on device {x.device}, but q is on {q.device}; "
                                 f"q, k, v must be on one device")
        if q.device.type == "cuda" and hasattr(_C, "cuda_forward"):
            if dtype_name(q) not in CUDA_KERNEL_DTYPES:
                raise NotImplementedError(f"q: dtype {dtype_name(q)} on {q.device}: the CUDA "
                                          f"kernels take float16 or bfloat16")
        elif q.device.type != "cpu":
            raise NotImplementedError(f"q: device {q.device} is not supported by this build "
                                      f"(devices: cpu{', cuda' if hasattr(_C, 'cuda_forward') else ''})")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"scale: expected a finite float or None, got {scale!r}")
    return kind


def check_bshd(q: Any, k: Any, v: Any) -> None:
    """Shape rules on canonical (B, S, H, D) views."""
    bq, sq, hq, d = q.shape
    bk, sk, hk, dk = k.shape
    if tuple(v.shape[:3]) != (bk, sk, hk):
        raise ValueError(f"v: shape {tuple(v.shape)} must match k's {tuple(k.shape)} in batch, "
                         f"sequence and heads")
    if bk != bq:
        raise ValueError(f"k: batch size {bk} differs from q's {bq}")
    if dk != d or v.shape[3] != d:
        raise ValueError(f"k, v: head_dim must equal q's {d}; got k {dk}, v {v.shape[3]}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"q: head_dim {d} is not supported; head_dim must be 1..{MAX_HEAD_DIM}")
    if hq % hk != 0:
        raise ValueError(f"k: number of heads {hk} must divide q's number of heads {hq} "
                         f"(grouped-query attention)")


def _ptr(x: Any) -> int:
    return int(x.data_ptr()) if is_tensor(x) else int(x.ctypes.data)


def _dtype_code(x: Any) -> int:
    return _NUMPY_DTYPES[dtype_name(x)]


def _sizes(q: Any, k: Any) -> Tuple[int, ...]:
    b, sq, hq, d = q.shape
    return (b, sq, int(k.shape[1]), hq, int(k.shape[2]), d)


def _fwd_args(q: Any, k: Any, v: Any, out: Any, lse: Any, scale: float, mask: MaskSpec,
              head_dim: Optional[int] = None) -> Tuple[Any, ...]:
    """The argument list of the compiled forward entry points (_C.forward and friends)."""
    ls = _strides(lse)
    sizes = _sizes(q, k)[:5] + (head_dim or q.shape[3],)
    return (_dtype_code(q), _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(lse), _strides(q)[:3],
            _strides(k)[:3], _strides(v)[:3], _strides(out)[:3], (ls[0], ls[1]), sizes,
            mask.offset(q.shape[1], k.shape[1]), mask.window_left, mask.window_right,
            float(scale), num_threads())


def _bwd_args(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, dq: Any, dk: Any, dv: Any,
              scale: float, mask: MaskSpec, dlse: Any, head_dim: Optional[int] = None) -> Tuple[Any, ...]:
    """The argument list of the compiled backward entry points (_C.backward and friends)."""
    ls = _strides(lse)
    sizes = _sizes(q, k)[:5] + (head_dim or q.shape[3],)
    return (_dtype_code(q), _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(lse), _ptr(dout),
            0 if dlse is None else _ptr(dlse), _ptr(dq), _ptr(dk), _ptr(dv), _strides(q)[:3],
            _strides(k)[:3], _strides(v)[:3], _strides(out)[:3], (ls[0], ls[1]),
            _strides(dout)[:3], _strides(dq)[:3], _strides(dk)[:3], _strides(dv)[:3], sizes,
            mask.offset(q.shape[1], k.shape[1]), mask.window_left, mask.window_right,
            float(scale), num_threads())


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
    """Runs the forward kernel on BSHD views, writing ``out`` (like q) and ``lse`` (B, H, Sq)."""
    if backend_for(q) == "cpu":
        _C.forward(*_fwd_args(q, k, v, out, lse, scale, mask), 0)
        return
    run, _, head_dims, _, stream = _entry_points(q)
    dp = _padded_head_dim(q, head_dims, "forward")
    qf, kf, vf = (_fit(x, dp) for x in (q, k, v))
    of = _fit(out, dp, copy=False)
    run(*_fwd_args(qf, kf, vf, of, lse, scale, mask, dp), stream)
    _copy_back(of, out)


def backward(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, dq: Any, dk: Any, dv: Any,
             scale: float, mask: MaskSpec, dlse: Any = None) -> None:
    """Runs the backward kernel on BSHD views, writing dq, dk, dv. ``dlse`` (optional) is the
    gradient of lse, laid out exactly like lse."""
    if backend_for(q) == "cpu":
        _C.backward(*_bwd_args(dout, q, k, v, out, lse, dq, dk, dv, scale, mask, dlse), 0, 0, 0)
        return
    _, run, _, head_dims, stream = _entry_points(q)
    dp = _padded_head_dim(q, head_dims, "backward")
    qf, kf, vf, of, dof = (_fit(x, dp) for x in (q, k, v, out, dout))
    dqf, dkf, dvf = (_fit(x, dp, copy=False) for x in (dq, dk, dv))
    rows = q.shape[0] * q.shape[2] * q.shape[1]
    stats = _new(q, (2 * rows,), zero=False, float32=True)  # delta and softmax sum per row
    dq_accum = _new(q, (rows * dp,), zero=False, float32=True)
    run(*_bwd_args(dof, qf, kf, vf, of, lse, dqf, dkf, dvf, scale, mask, dlse, dp),
        _ptr(stats), _ptr(dq_accum), stream)
    for padded, real in ((dqf, dq), (dkf, dk), (dvf, dv)):
        _copy_back(padded, real)


def lse_dtype_name(q_dtype_name: str) -> str:
    """LSE is float32, except float64 for float64 inputs (so gradients stay exact)."""
    return "float64" if q_dtype_name == "float64" else "float32"


def numpy_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
                  mask: MaskSpec) -> Tuple[np.ndarray, np.ndarray]:
    out = np.empty_like(q)  # keeps q's memory order; the kernel writes through strides
    lse = np.empty((q.shape[0], q.shape[2], q.shape[1]), dtype=lse_dtype_name(dtype_name(q)))
    forward(q, k, v, out, lse, scale, mask)
    return out, lse


def numpy_backward(dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                   out: np.ndarray, lse: np.ndarray, scale: float,
                   mask: MaskSpec) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    dout = _last_dim_contiguous(dout)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    backward(dout, q, k, v, out, lse, dq, dk, dv, scale, mask)
    return dq, dk, dv


def _last_dim_contiguous(x: Any) -> Any:
    if _strides(x)[-1] == 1:
        return x
    return x.contiguous() if is_tensor(x) else np.ascontiguousarray(x)


def default_scale(head_dim: int, scale: Optional[float]) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


CUDA_KERNEL_DTYPES = ("float16", "bfloat16")
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


def _new(like: Any, shape: Tuple[int, ...], zero: bool, float32: bool = False) -> Any:
    if is_tensor(like):
        dtype = torch.float32 if float32 else like.dtype
        return (torch.zeros if zero else torch.empty)(shape, dtype=dtype, device=like.device)
    return (np.zeros if zero else np.empty)(shape, dtype=np.float32 if float32 else like.dtype)


def _kernel_ready(x: Any, head_dim: int) -> bool:
    """What the CUDA kernels' 16-byte cp.async loads need: an instantiated head dim, rows
    16-byte aligned (strides multiples of 8 elements, aligned base), non-negative strides."""
    st = _strides(x)[:3]
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
