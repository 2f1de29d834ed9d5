"""Backend choice and the calls into the compiled core: the CPU kernels (_C), the CUDA kernels
(_C on the GPU, or their source on the SIMT emulator, _emu). Arrays arrive as validated
(B, S, H, D) views (numpy arrays, or tensors through the torch ops of _torch_ops.py) and go to
the kernels as addresses and element strides, by keyword (csrc/bindings/bind_attention.h).
Variable-length and KV-cache calls add their sequence arrays (_seqlens.Seqs): q, out (and k, v
unless paged or cached) are then (1, total, H, D) views of the packed tensors."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from . import _C
from ._seqlens import Seqs, address
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


def _drawn_seed(mask: MaskSpec, q: Any) -> int:
    """The address of a dropout seed and offset drawn on q's device (MaskSpec.dropout_rng), which
    the kernels read where they run (0: none, or the seed is mask.dropout_seed)."""
    rng = mask.dropout_rng
    if rng is None or mask.dropout_p == 0.0:
        return 0
    if not (is_tensor(rng) and str(rng.dtype) == "torch.int64" and tuple(rng.shape) == (2,)
            and rng.is_contiguous() and rng.device == q.device and rng.data_ptr() % 16 == 0):
        raise ValueError(f"dropout_rng: expected a contiguous int64 tensor of shape (2,) (seed, "
                         f"offset) on q's device {q.device}, 16-byte aligned, got {rng!r}")
    return _ptr(rng)


def _common_kwargs(q: Any, k: Any, v: Any, out: Any, lse: Any, scale: float, mask: MaskSpec,
                   head_dim: int, seqs: Optional[Seqs]) -> Dict[str, Any]:
    """The arguments every compiled entry point takes (bind_attention.h: common_args, seq_args).
    lse is (B, H, Sq), or (H, total_q) for packed queries."""
    b, sq, hq, _ = q.shape
    sk, hk = int(k.shape[1]), int(k.shape[2])
    lse_strides = strides(lse)[:2] if lse.ndim == 3 else (0, strides(lse)[0])
    kw = dict(dtype=DTYPES.index(dtype_name(q)), **_arrays(q=q, k=k, v=v, out=out), lse=_ptr(lse),
              lse_strides=lse_strides, window_left=mask.window_left,
              window_right=mask.window_right, scale=float(scale), softcap=mask.softcap,
              dropout_p=mask.dropout_p, dropout_seed=mask.dropout_seed,
              dropout_offset=mask.dropout_offset, dropout_rng=_drawn_seed(mask, q))
    slopes = mask.alibi_slopes
    if slopes is not None:  # (Hq,) or (B, Hq) float32, heads contiguous
        kw.update(alibi_slopes=_ptr(slopes),
                  alibi_batch_stride=strides(slopes)[0] if slopes.ndim == 2 else 0)
    am = mask.attn_mask
    if am is not None:  # (B, Hq, Sq, Sk), dense calls only
        kw.update(attn_mask=_ptr(am), mask_bool=dtype_name(am) == "bool", mask_strides=strides(am))
    if seqs is None:
        return dict(kw, sizes=(b, sq, sk, hq, hk, head_dim), align_offset=mask.offset(sq, sk))
    kw.update(seqs.kwargs(page_size=sk), array_sizes=seqs.array_sizes(q, k))
    return dict(kw, sizes=(seqs.batch, seqs.max_q(), seqs.max_k(), hq, hk, head_dim),
                align_offset=0, align_bottom_right=mask.bottom_right)


# Calls whose boolean mask ran as key lengths (key_lengths), forward and backward counted apart.
mask_as_key_lengths_calls: int = 0


def key_lengths(mask: MaskSpec) -> Optional[Any]:
    """Each batch element's key count, int32 (B,) of the mask's kind, when the call's explicit
    mask amounts to one: booleans the same for every head and query row of a batch element
    (broadcast with stride 0), true on a prefix of the keys and false after it (padding at the
    end); else None. The kernels then take the counts as seqused_k and read no mask, with the
    same results: the band stays aligned on the full key count, dropout's keep mask does not
    depend on it and padded keys get zero gradients. Calls with ALiBi keep the mask (its
    positions count from the last key). Costs a few element-wise operations on (B, Sk)."""
    am = mask.attn_mask
    if am is None or dtype_name(am) != "bool" or mask.alibi_slopes is not None:
        return None
    if is_tensor(am) and am.device.type == "cuda":  # the check would synchronise every call
        return None
    st = strides(am)
    if any(st[d] != 0 and am.shape[d] > 1 for d in (1, 2)):
        return None
    keep = am[:, 0, 0]  # (B, Sk)
    if bool((keep[:, 1:] & ~keep[:, :-1]).any()):  # a kept key after a padded one
        return None
    return keep.sum(1, dtype=torch.int32 if is_tensor(keep) else np.int32)


def _kernel_kwargs(q: Any, k: Any, v: Any, out: Any, lse: Any, scale: float, mask: MaskSpec,
                   head_dim: int, seqs: Optional[Seqs]) -> Tuple[Dict[str, Any], Optional[Any]]:
    """The kernels' arguments (_common_kwargs), CPU or CUDA alike, and the key lengths they read
    by address (the caller keeps them alive through the call) when the mask runs as key lengths."""
    lengths = key_lengths(mask) if seqs is None else None
    if lengths is None:
        return _common_kwargs(q, k, v, out, lse, scale, mask, head_dim, seqs), None
    global mask_as_key_lengths_calls
    mask_as_key_lengths_calls += 1
    kw = _common_kwargs(q, k, v, out, lse, scale, mask.with_attn_mask(None), head_dim, None)
    return dict(kw, seqused_k=_ptr(lengths)), lengths


def _entry_points(q: Any) -> Tuple[Any, Any, Sequence[int], Sequence[int], Dict[str, int]]:
    """(forward, backward, forward head dims, backward head dims, launch arguments) of the CUDA
    kernels: on the GPU, on q's device (made current for the launch, whatever device is current)
    and the stream torch is using there; or on the emulator."""
    if backend_for(q) == "emu":
        emu = _emu_module()
        return (emu.attention_forward, emu.attention_backward, emu.attention_head_dims,
                emu.attention_bwd_head_dims, dict(stream=0, device=-1))
    device = q.device.index if q.device.index is not None else torch.cuda.current_device()
    launch = dict(stream=torch.cuda.current_stream(device).cuda_stream, device=device)
    return _C.cuda_forward, _C.cuda_backward, _C.cuda_head_dims, _C.cuda_bwd_head_dims, launch


# Split-KV on the CUDA kernels (num_splits=0): split when the blocks of a call fill less than
# this share of the SMs, into at most kMaxSplits splits of at least 4 key tiles of 64.
SPLIT_FILL, MAX_SPLITS, SPLIT_KEYS = 0.8, 128, 4 * 64
EMU_SMS = 108  # the emulator models an A100's SM count for the choice


def _sm_count(q: Any) -> int:
    if is_tensor(q) and q.device.type == "cuda":
        return torch.cuda.get_device_properties(q.device).multi_processor_count
    return EMU_SMS


def cuda_splits(q: Any, seqs: Seqs, block_m: int = 64) -> int:
    """The split count of a variable-length or KV-cache forward on the CUDA kernels (query tiles
    of ``block_m`` rows): the caller's num_splits, or (0) enough splits to fill the SMs when the
    query tiles do not."""
    if seqs.num_splits:
        return seqs.num_splits
    blocks = -(-seqs.max_q() // block_m) * q.shape[2] * seqs.batch
    if blocks >= SPLIT_FILL * _sm_count(q):
        return 1
    return max(1, min(-(-_sm_count(q) // max(blocks, 1)), seqs.max_k() // SPLIT_KEYS, MAX_SPLITS))


def forward(q: Any, k: Any, v: Any, out: Any, lse: Any, scale: float, mask: MaskSpec,
            seqs: Optional[Seqs] = None) -> None:
    """Runs the forward kernel on BSHD views, writing ``out`` (like q) and ``lse`` (B, H, Sq),
    or (H, total_q) with packed sequences. Raises ValueError when finite q and k overflow the
    scores (see check_overflow)."""
    backend = backend_for(q)
    if backend == "cpu":
        kw, _lengths = _kernel_kwargs(q, k, v, out, lse, scale, mask, q.shape[3], seqs)
        _C.forward(**kw, stream=0)
    else:
        run, _, head_dims, _, launch = _entry_points(q)
        dp = _padded_head_dim(q, head_dims, "forward")
        qf, kf, vf = (_fit(x, dp) for x in (q, k, v))
        of = _fit(out, dp, copy=False)
        kw, _lengths = _kernel_kwargs(qf, kf, vf, of, lse, scale, mask, dp, seqs)
        splits = 1 if seqs is None else cuda_splits(q, seqs)
        if splits > 1:  # partial rows of dp + 1 floats per split (csrc/cuda/flash/split_kv.cuh)
            work = _new(q, (splits * seqs.batch * q.shape[2] * seqs.max_q() * (dp + 1),),
                        zero=False, float32=True)
            kw.update(num_splits=splits, split_workspace=_ptr(work))
        run(**kw, **launch)
        _copy_back(of, out)
    if backend != "cuda":  # on a GPU the check would synchronise the device at every call
        check_overflow(q, k, lse, scale, mask, seqs)


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
             seqs: Optional[Seqs] = None, deterministic_mode: bool = False,
             dmask: Optional[Any] = None) -> None:
    """Runs the backward kernel on BSHD views, writing dq, dk, dv. ``dlse`` (optional) is the
    gradient of lse, laid out exactly like lse. ``deterministic_mode``: the CUDA kernels sum dq
    in a fixed order (bitwise reproducible; the CPU backward always is). ``dmask``: a zeroed
    (B, Hq, Sq, Sk) array (keys contiguous) that receives the gradient of the additive
    mask.attn_mask."""
    dlse_ptr = 0 if dlse is None else _ptr(dlse)
    extra = {} if dmask is None else dict(dmask=_ptr(dmask), dmask_strides=strides(dmask)[:3])
    if backend_for(q) == "cpu":
        kw, _lengths = _kernel_kwargs(q, k, v, out, lse, scale, mask, q.shape[3], seqs)
        _C.backward(**kw, **_arrays(dout=dout, dq=dq, dk=dk, dv=dv), dlse=dlse_ptr, stats=0,
                    dq_accum=0, stream=0, **extra)
        return
    _, run, _, head_dims, launch = _entry_points(q)
    dp = _padded_head_dim(q, head_dims, "backward")
    qf, kf, vf, of, dof = (_fit(x, dp) for x in (q, k, v, out, dout))
    dqf, dkf, dvf = (_fit(x, dp, copy=False) for x in (dq, dk, dv))
    kw, _lengths = _kernel_kwargs(qf, kf, vf, of, lse, scale, mask, dp, seqs)
    workspace = _emu_module().attention_bwd_workspace if backend_for(q) == "emu" else _C.cuda_bwd_workspace
    # sizes: (batch, Sq, Sk, ...), with packed sequences (sequences, longest Sq, longest Sk, ...)
    n_stats, n_accum = workspace(sizes=kw["sizes"], deterministic=deterministic_mode)
    stats = _new(q, (n_stats,), zero=False, float32=True)  # lse2, 1 / softmax sum, delta per row
    dq_accum = _new(q, (n_accum,), zero=False, float32=True)
    run(**kw, **_arrays(dout=dof, dq=dqf, dk=dkf, dv=dvf), dlse=dlse_ptr, stats=_ptr(stats),
        dq_accum=_ptr(dq_accum), deterministic=deterministic_mode, **extra, **launch)
    for padded, real in ((dqf, dq), (dkf, dk), (dvf, dv)):
        _copy_back(padded, real)


def append_kv(q: Any, q_rot: Optional[Any], k: Any, v: Any, k_cache: Any, v_cache: Any,
              rotary: Optional[Tuple[Any, Any, bool, bool]], cache_seqlens: Any,
              kv_batch_idx: Optional[Any], block_table: Optional[Any]) -> None:
    """KV-cache append (csrc/common/params.h: AppendParams): k, v (B, Sn, Hkv, D) into the caches
    in place at cache_seqlens; with ``rotary`` = (cos, sin, interleaved, q_rows_consecutive) the
    new keys are rotated on the way and q is rotated into q_rot."""
    backend = backend_for(q)
    run, launch = _C.kvcache_append, dict(stream=0, device=-1)
    if backend == "emu":
        run = _emu_module().kvcache_append
    elif backend == "cuda":
        run, launch = _C.cuda_kvcache_append, _entry_points(q)[4]
    b, sq, hq, d = q.shape
    cos, sin, interleaved, consecutive = rotary or (None, None, False, False)
    none3 = (0, 0, 0)
    run(
        dtype=DTYPES.index(dtype_name(q)), sizes=(b, sq, k.shape[1], hq, k.shape[2], d),
        q=_ptr(q), q_rot=address(q_rot), k_new=_ptr(k), v_new=_ptr(v), k_cache=_ptr(k_cache),
        v_cache=_ptr(v_cache), q_strides=strides(q)[:3],
        q_rot_strides=none3 if q_rot is None else strides(q_rot)[:3],
        k_new_strides=strides(k)[:3], v_new_strides=strides(v)[:3],
        k_cache_strides=strides(k_cache)[:3], v_cache_strides=strides(v_cache)[:3],
        rotary_cos=address(cos), rotary_sin=address(sin),
        rotary_stride=0 if cos is None else strides(cos)[0],
        rotary_dim=0 if cos is None else 2 * cos.shape[1], rotary_interleaved=interleaved,
        q_rows_consecutive=consecutive, cache_seqlens=_ptr(cache_seqlens),
        kv_batch_idx=address(kv_batch_idx), block_table=address(block_table),
        block_table_stride=0 if block_table is None else strides(block_table)[0],
        page_size=k_cache.shape[1] if block_table is not None else 0,
        bounds=(k_cache.shape[0], k_cache.shape[1], 0 if cos is None else cos.shape[0]),
        **launch)


def new_lse(q: Any, packed: bool) -> Any:
    """lse for BSHD q: (B, H, Sq), or (H, total_q) for packed sequences (q (1, total_q, H, D))."""
    shape = (q.shape[2], q.shape[1]) if packed else (q.shape[0], q.shape[2], q.shape[1])
    name = lse_dtype_name(dtype_name(q))
    if is_tensor(q):
        return torch.empty(shape, dtype=getattr(torch, name), device=q.device)
    return np.empty(shape, dtype=name)


def dropout_keep(dropout_p: float, seed: int, offset: int,
                 sizes: Tuple[int, int, int, int]) -> np.ndarray:
    """Dropout's keep mask (B, Hq, Sq, Sk) of booleans for these generator arguments, from the
    CPU kernels' generator (csrc/common/philox.h): what the kernels apply."""
    kept = np.empty(sizes, dtype=np.uint8)
    _C.dropout_mask(out=kept.ctypes.data, sizes=sizes, dropout_p=dropout_p, seed=seed,
                    offset=offset)
    return kept.view(np.bool_)


def call_keep(q: Any, k: Any, mask: MaskSpec) -> np.ndarray:
    """The keep mask (B, Hq, Sq, Sk) the kernels apply in a call on BSHD q, k with ``mask``'s
    dropout (a drawn seed read back to the host)."""
    m = mask.resolved()
    b, sq, hq, _ = q.shape
    return dropout_keep(m.dropout_p, m.dropout_seed, m.dropout_offset, (b, hq, sq, k.shape[1]))


def dropout_scale(dropout_p: float) -> float:
    """The factor of kept probabilities, 1 / (1 - p) with p as the kernels take it (float32)."""
    return 1.0 / (1.0 - float(np.float32(dropout_p)))


def numpy_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, mask: MaskSpec,
                  seqs: Optional[Seqs] = None) -> Tuple[np.ndarray, np.ndarray]:
    out = np.empty_like(q)  # keeps q's memory order; the kernel writes through strides
    lse = new_lse(q, packed=seqs is not None and seqs.cu_seqlens_q is not None)
    forward(q, k, v, out, lse, scale, mask, seqs)
    return out, lse


def _all_finite(x: Any) -> bool:
    return bool(torch.isfinite(x).all()) if is_tensor(x) else bool(np.isfinite(x).all())


def check_overflow(q: Any, k: Any, lse: Any, scale: float, mask: MaskSpec,
                   seqs: Optional[Seqs] = None) -> None:
    """Raises ValueError when finite q and k gave scaled scores beyond the accumulation type's
    range: lse is then NaN or +inf, or -inf in a row that sees keys (the kernels return NaN or
    zeros there). NaN or inf in q or k propagates silently instead. Costs one pass over
    lse (B*H*Sq values); q and k are read only when lse is not finite."""
    values = lse.numpy() if is_tensor(lse) else lse
    if np.isfinite(values).all():
        return
    if mask.attn_mask is not None:  # rows the explicit mask empties have lse -inf as well
        values = np.where(values == -np.inf, 0.0, values)
        if np.isfinite(values).all():
            return
    if seqs is None:
        empty = mask.empty_rows(q.shape[1], k.shape[1])
    else:  # (total_q,) against lse (H, total_q); (B, 1, Sq) against lse (B, H, Sq)
        empty = mask.empty_rows_of(seqs.lens_q, seqs.lens_k)
        empty = empty if values.ndim == 2 else empty.reshape(seqs.batch, 1, -1)
    if np.isfinite(values[~np.broadcast_to(empty, values.shape)]).all() or not (
            _all_finite(q) and _all_finite(k)):
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
