"""Argument checks and layout normalisation. Every public entry point turns its arguments into a
:class:`Call`: canonical (B, S, H, D) views of q, k, v, a float scale and a :class:`MaskSpec`.
Each error names the argument, what was given and what is accepted (docs/bad_inputs.md)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _C

try:  # torch is optional: numpy-only installs never import it
    import torch
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None  # type: ignore[assignment]

MAX_HEAD_DIM = 256
NO_WINDOW = -1
DTYPES = ("float32", "float64", "float16", "bfloat16")
CUDA_KERNEL_DTYPES = ("float16", "bfloat16")

CUDA_BUILT = hasattr(_C, "cuda_forward")


@dataclass(frozen=True)
class Layout:
    """The shapes an entry point accepts (rank -> dimension names); ``bhsd``: heads come before
    the sequence (torch's order); ``packed``: the sequences of a batch one after the other, with
    no batch dimension (variable-length batches)."""

    shapes: Mapping[int, str]
    bhsd: bool = False
    packed: bool = False


SD = Layout({2: "(S, D)", 3: "(B, S, D)", 4: "(B, S, H, D)"})
BSHD = Layout({4: "(B, S, H, D)"})
BHSD = Layout({3: "(B, S, D)", 4: "(B, H, S, D)"}, bhsd=True)
PACKED = Layout({3: "(total, H, D)"}, packed=True)
CACHE = Layout({4: "(batch_cache, seqlen_cache, H, D)"})
PAGED = Layout({4: "(num_blocks, page_size, H, D)"})


def is_tensor(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def dtype_name(x: Any) -> str:
    # No cache: a dict filled during a call that torch.compile traces fails its guards.
    return str(x.dtype).replace("torch.", "")


def strides(x: Any) -> Tuple[int, ...]:
    """Strides in elements."""
    if is_tensor(x):
        return tuple(x.stride())
    return tuple(s // x.itemsize for s in x.strides)


def _type(x: Any) -> str:
    return type(x).__name__


def _one_of(items: Sequence[str]) -> str:
    """"a", "a or b", "a, b or c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {value!r} ({_type(value)})")
    return bool(value)


@dataclass(frozen=True)
class MaskSpec:
    """The mask of one call: query row ``i`` sees key ``j`` iff
    ``i + off - left <= j <= i + off + right`` where ``off = Sk - Sq`` when ``bottom_right`` else
    ``0``; a bound of -1 means unbounded. The score transforms applied before it
    (docs/semantics.md): ``softcap`` (0 = off) and ``alibi_slopes``, a float32 (Hq,) or (B, Hq)
    array of q's kind and device, or None; then ``attn_mask``, an explicit mask: None, or a
    (B, Hq, Sq, Sk) view (broadcast dimensions with stride 0) of booleans (True = attend) or of
    values added to the scaled scores (float32, float64 for float64 inputs; see
    :func:`attn_mask_value`). Dropout of the probabilities (docs/semantics.md section 13):
    ``dropout_p`` in [0, 1) (0 = off) with the generator's seed and offset, or ``dropout_rng``,
    an int64 torch tensor (seed, offset) drawn from torch's generator on q's device and read by
    the kernels where they run (the host never waits for the draw; torch.compile and CUDA graphs
    keep it in the graph)."""

    window_left: int = NO_WINDOW
    window_right: int = NO_WINDOW
    bottom_right: bool = True
    softcap: float = 0.0
    alibi_slopes: Any = field(default=None, compare=False)
    attn_mask: Any = field(default=None, compare=False)
    dropout_p: float = 0.0
    dropout_seed: int = 0
    dropout_offset: int = 0
    dropout_rng: Any = field(default=None, compare=False)

    @property
    def score_mods(self) -> bool:
        return self.softcap > 0.0 or self.alibi_slopes is not None

    def with_attn_mask(self, attn_mask: Any) -> "MaskSpec":
        return replace(self, attn_mask=attn_mask)

    def with_score_mods(self, softcap: Any, alibi_slopes: Any, q: Any, kind: str,
                        batch: Optional[int] = None) -> "MaskSpec":
        """This mask with validated softcap and ALiBi slopes for BSHD q (batch q.shape[0] or, for
        packed sequences, ``batch``)."""
        return replace(self, softcap=softcap_value(softcap),
                       alibi_slopes=alibi_value(alibi_slopes, q, kind, batch))

    def with_dropout(self, dropout_p: Any, seed: Any, q: Any, kind: str,
                     name: str = "dropout_p") -> "MaskSpec":
        """This mask with validated dropout: the seed and offset of the keep mask are ``seed``
        (offset 0) when given, else drawn from torch's default generator of q's device (numpy
        calls with dropout need a seed)."""
        p = dropout_value(name, dropout_p)
        if p == 0.0:
            return self
        if seed is not None:
            if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) \
                    or not 0 <= seed < 2 ** 63:
                raise TypeError(f"seed: expected an int in [0, 2**63) or None, got {seed!r} "
                                f"({_type(seed)})")
            return replace(self, dropout_p=p, dropout_seed=int(seed), dropout_offset=0)
        if kind != "torch":
            raise ValueError(f"seed: {name}={p} on numpy arrays needs seed=<int> (the keep mask "
                             f"is a pure function of the seed), got None")
        import torch

        # the default generator of q's device; the offset's low 32 bits are used (philox.h)
        rng = torch.randint(0, 2 ** 62, (2,), dtype=torch.int64, device=q.device)
        return replace(self, dropout_p=p, dropout_rng=rng)

    def resolved(self) -> "MaskSpec":
        """This mask with a drawn dropout_rng read into dropout_seed and dropout_offset, on the
        host (a wait for the draw): for helpers that rebuild the keep mask outside the kernels."""
        if self.dropout_rng is None:
            return self
        seed, offset = (int(x) for x in self.dropout_rng.tolist())
        return replace(self, dropout_seed=seed, dropout_offset=offset % 2 ** 32, dropout_rng=None)

    @staticmethod
    def make(causal: Any, window_size: Any, bottom_right: bool,
             causal_name: str = "causal") -> "MaskSpec":
        causal = flag(causal_name, causal)
        accepted = "expected a pair (left, right) of ints >= -1 (-1 = unbounded)"
        if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
            raise TypeError(f"window_size: {accepted}, got {window_size!r} ({_type(window_size)})")
        for w in window_size:
            if isinstance(w, (bool, np.bool_)) or not isinstance(w, (int, np.integer)):
                raise TypeError(f"window_size: {accepted}, got {window_size!r} with a "
                                f"{_type(w)} item")
            if w < -1:
                raise ValueError(f"window_size: {accepted}, got {window_size!r}")
        left, right = (int(w) for w in window_size)
        return MaskSpec(left, 0 if causal else right, bottom_right)

    def offset(self, seqlen_q: int, seqlen_k: int) -> int:
        return seqlen_k - seqlen_q if self.bottom_right else 0

    def empty_rows(self, seqlen_q: int, seqlen_k: int) -> np.ndarray:
        """Which query rows see no key at all (their lse is -inf by definition)."""
        return self.empty_rows_of(np.array([seqlen_q]), np.array([seqlen_k]))

    def empty_rows_of(self, lens_q: np.ndarray, lens_k: np.ndarray) -> np.ndarray:
        """empty_rows of sequences of their own lengths, their rows one after the other."""
        lens_q, lens_k = np.asarray(lens_q, np.int64), np.asarray(lens_k, np.int64)
        sq, sk = np.repeat(lens_q, lens_q), np.repeat(lens_k, lens_q)
        first, last = self.key_bounds(np.arange(len(sq)) - np.repeat(np.cumsum(lens_q) - lens_q, lens_q), sq, sk)
        return first > last

    def key_bounds(self, i: np.ndarray, seqlen_q: Any, seqlen_k: Any) -> Tuple[np.ndarray, np.ndarray]:
        """The first and last key that query rows ``i`` (of Sq rows and Sk keys, scalars or arrays
        like ``i``) see; a row with first > last sees none."""
        i = i + (seqlen_k - seqlen_q if self.bottom_right else 0)
        first = np.maximum(i - self.window_left if self.window_left >= 0 else 0, 0)
        last = np.minimum(i + self.window_right if self.window_right >= 0 else seqlen_k - 1, seqlen_k - 1)
        return first, last


def dropout_value(name: str, dropout_p: Any) -> float:
    """The dropout probability as a float in [0, 1): a real number, numpy scalar or 0-d CPU
    tensor."""
    value = scale_value(name, dropout_p) if not isinstance(dropout_p, float) or \
        math.isfinite(dropout_p) else dropout_p
    if value is None or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1) (0 = no dropout), got "
                         f"{dropout_p!r}")
    return value


def softcap_value(softcap: Any) -> float:
    """softcap as a float >= 0 (0 = off): a real number, numpy scalar or 0-d CPU tensor."""
    value = scale_value("softcap", softcap)
    if value is None or value < 0.0:
        raise ValueError(f"softcap: expected a finite number >= 0 (0 = no softcapping), got "
                         f"{softcap!r}")
    return value


def alibi_value(slopes: Any, q: Any, kind: str, batch: Optional[int] = None) -> Any:
    """ALiBi slopes for BSHD q: None, or float32 (Hq,) or (batch, Hq) of q's kind and device
    whose head dimension is contiguous (batch: q's, or the number of packed sequences)."""
    if slopes is None:
        return None
    hq, batch = q.shape[2], q.shape[0] if batch is None else batch
    accepted = f"a float32 {kind} array of shape ({hq},) or ({batch}, {hq})"
    if _kind("alibi_slopes", slopes) != kind:
        raise TypeError(f"alibi_slopes: expected {accepted} (like q), got {_type(slopes)}")
    if dtype_name(slopes) != "float32" or tuple(slopes.shape) not in ((hq,), (batch, hq)):
        raise ValueError(f"alibi_slopes: expected {accepted}, got shape {tuple(slopes.shape)} "
                         f"{dtype_name(slopes)}")
    if kind == "torch" and slopes.device != q.device:
        raise ValueError(f"alibi_slopes: on device {slopes.device}, but q is on {q.device}")
    if kind == "torch" and slopes.requires_grad:
        raise ValueError("alibi_slopes: gradients with respect to the slopes are not computed; "
                         "pass alibi_slopes.detach()")
    if strides(slopes)[-1] != 1 and hq > 1 or min(strides(slopes)) < 0:
        raise ValueError(f"alibi_slopes: the head dimension must be contiguous, got strides "
                         f"{strides(slopes)}; pass a contiguous copy")
    return slopes


MASK_DTYPES = ("bool", "float16", "bfloat16", "float32", "float64")


def attn_mask_value(mask: Any, call: "Call", name: str = "attn_mask") -> Any:
    """An explicit mask for a validated call as the kernels read it: a (B, Hq, Sq, Sk) view,
    broadcast (stride 0) from ``mask``, which must broadcast to the call's score shape in the
    caller's layout: (Sq, Sk) for (S, D) inputs, (B, Sq, Sk) for 3-d inputs, (B, H, Sq, Sk) for
    4-d ones. Booleans (True = attend) stay booleans; float masks are added to the scaled
    scores and become float32 (float64 for float64 inputs; a differentiable conversion for
    tensors, so a mask requiring grad gets its gradient)."""
    if mask is None:
        return None
    b, sq, hq, _ = call.q.shape
    sk = call.k.shape[1]
    shape = {2: (sq, sk), 3: (b, sq, sk), 4: (b, hq, sq, sk)}[call.rank]
    accepted = f"a bool or float {call.kind} array broadcastable to {shape} (the scores' shape)"
    if _kind(name, mask) != call.kind:
        raise TypeError(f"{name}: expected {accepted}, like q; got {_type(mask)}")
    if dtype_name(mask) not in MASK_DTYPES:
        raise TypeError(f"{name}: dtype {dtype_name(mask)} is not supported; expected bool (True "
                        f"= attend) or a float dtype (added to the scores)")
    got = tuple(mask.shape)
    if len(got) > len(shape) or any(g not in (1, w) for g, w in zip(got[::-1], shape[::-1])):
        raise ValueError(f"{name}: shape {got} does not broadcast to {shape}; expected {accepted}")
    if call.kind == "torch" and mask.device != call.q.device:
        raise ValueError(f"{name}: on device {mask.device}, but q is on {call.q.device}")
    if call.kind == "torch" and mask.layout != torch.strided:
        raise TypeError(f"{name}: layout {mask.layout} is not supported; pass a dense tensor")
    if dtype_name(mask) != "bool":
        dt = "float64" if dtype_name(call.q) == "float64" else "float32"
        mask = mask.to(getattr(torch, dt)) if call.kind == "torch" else mask.astype(dt, copy=False)
    mask = mask.reshape((1,) * (len(shape) - len(got)) + got)
    mask = mask[None, None] if len(shape) == 2 else mask[:, None] if len(shape) == 3 else mask
    full = (b, hq, sq, sk)
    return mask.expand(full) if call.kind == "torch" else np.broadcast_to(mask, full)


def scale_value(name: str, scale: Any) -> Optional[float]:
    """None, or the scale as a float: a real number, numpy scalar or 0-d CPU tensor."""
    if scale is None:
        return None
    what = f"{scale!r} ({_type(scale)})"
    if is_tensor(scale):
        if scale.ndim != 0 or scale.device.type != "cpu" or scale.is_complex():
            raise TypeError(f"{name}: a tensor must be 0-d, real and on the CPU, got shape "
                            f"{tuple(scale.shape)} {dtype_name(scale)} on {scale.device}")
        if scale.requires_grad:
            raise ValueError(f"{name}: gradients with respect to the scale are not computed; "
                             f"pass float({name}) or {name}.detach(), got a tensor requiring grad")
        scale = scale.item()
    elif isinstance(scale, np.ndarray) and scale.ndim == 0:
        scale = scale[()]
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{name}: expected a real number (float, int, numpy scalar or 0-d tensor) "
                        f"or None, got {what}")
    if not math.isfinite(scale):
        raise ValueError(f"{name}: expected a finite number or None, got {what}")
    return float(scale)


def _kind(name: str, x: Any) -> str:
    if isinstance(x, np.ndarray):
        return "numpy"
    if is_tensor(x):
        return "torch"
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {_type(x)}")


def _check_array(name: str, x: Any) -> None:
    if is_tensor(x) and x.layout != torch.strided:
        raise TypeError(f"{name}: layout {x.layout} is not supported; pass a dense (strided) "
                        f"tensor, e.g. {name}.to_dense()")
    dt = dtype_name(x)
    if isinstance(x, np.ndarray) and not x.dtype.isnative:
        raise TypeError(f"{name}: dtype {dt} has non-native byte order; use "
                        f"{name}.astype({name}.dtype.newbyteorder('='))")
    if dt not in DTYPES:
        raise TypeError(f"{name}: dtype {dt} is not supported; use {_one_of(DTYPES)}")
    if 0 in tuple(x.shape):
        raise ValueError(f"{name}: zero-size dimension in shape {tuple(x.shape)}; every "
                         f"dimension must be at least 1")
    if isinstance(x, np.ndarray) and any(s % x.itemsize for s in x.strides):
        raise ValueError(f"{name}: byte strides {x.strides} are not multiples of the "
                         f"{x.itemsize}-byte item size; pass a copy (numpy.array({name}))")
    if isinstance(x, np.ndarray) and not x.flags.aligned:
        raise ValueError(f"{name}: the data address is not a multiple of the {x.itemsize}-byte "
                         f"item size (an unaligned buffer); pass a copy (numpy.array({name}))")
    if strides(x)[-1] != 1 and x.shape[-1] != 1:
        raise ValueError(f"{name}: the last (head_dim) dimension must be contiguous (stride 1), "
                         f"got strides {strides(x)}; call .contiguous() first")


def _check_device(names: Sequence[str], q: Any, k: Any, v: Any) -> None:
    for n, x in zip(names[1:], (k, v)):
        if x.device != q.device:
            raise ValueError(f"{n}: on device {x.device}, but {names[0]} is on {q.device}; "
                             f"{', '.join(names)} must be on one device")
    if q.device.type == "cuda" and CUDA_BUILT:
        if dtype_name(q) not in CUDA_KERNEL_DTYPES:
            raise NotImplementedError(f"{names[0]}: dtype {dtype_name(q)} on {q.device}: the CUDA "
                                      f"kernels take float16 or bfloat16")
    elif q.device.type != "cpu":
        raise NotImplementedError(f"{names[0]}: device {q.device} is not supported by this build "
                                  f"(devices: cpu{', cuda' if CUDA_BUILT else ''})")


def _check_bshd(names: Sequence[str], q: Any, k: Any, v: Any, same_batch: bool = True) -> None:
    """Shape rules on canonical (B, S, H, D) views (k's batch may differ from q's unless
    ``same_batch``: KV caches)."""
    nq, nk, nv = names
    bq, _, hq, d = q.shape
    bk, sk, hk, dk = k.shape
    if tuple(v.shape[:3]) != (bk, sk, hk):
        raise ValueError(f"{nv}: batch, sequence and heads {tuple(v.shape[:3])} must match "
                         f"{nk}'s {(bk, sk, hk)}")
    if bk != bq and same_batch:
        raise ValueError(f"{nk}: batch size {bk} differs from {nq}'s {bq}")
    if dk != d or v.shape[3] != d:
        raise ValueError(f"{nk}, {nv}: head_dim must equal {nq}'s {d}; got {nk} {dk}, "
                         f"{nv} {v.shape[3]}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"{nq}: head_dim {d} is not supported; head_dim must be "
                         f"1..{MAX_HEAD_DIM}")
    if hq % hk != 0:
        raise ValueError(f"{nk}: number of heads {hk} must divide {nq}'s number of heads {hq} "
                         f"(grouped-query attention)")


@dataclass(frozen=True)
class Call:
    """One validated call: (B, S, H, D) views, the scale and mask, and how to give results back
    in the caller's layout."""

    q: Any
    k: Any
    v: Any
    kind: str  # "numpy" or "torch"
    scale: float
    mask: MaskSpec
    layout: Layout
    rank: int

    def with_mask(self, mask: MaskSpec) -> "Call":
        return self if mask is self.mask else replace(self, mask=mask)

    def output(self, out: Any) -> Any:
        """out (B, S, H, D) in the caller's layout."""
        if self.layout.packed:
            return out[0]
        if self.layout.bhsd:
            out = out.swapaxes(1, 2)
            return out[:, 0] if self.rank == 3 else out
        return out[0, :, 0] if self.rank == 2 else out[:, :, 0] if self.rank == 3 else out

    def lse(self, lse: Any) -> Any:
        """lse (B, H, S) following the caller's (B, S, [H,] D) rank: (B, S) or (S,)."""
        return lse[0, 0] if self.rank == 2 else lse[:, 0] if self.rank == 3 else lse


def _bshd(x: Any, layout: Layout, rank: int) -> Any:
    if layout.packed:
        return x[None]
    if layout.bhsd:
        return (x[:, None] if rank == 3 else x).swapaxes(1, 2)
    return x[None, :, None] if rank == 2 else x[:, :, None] if rank == 3 else x


def prepare(q: Any, k: Any, v: Any, *, layout: Layout, scale: Any, mask: MaskSpec,
            names: Sequence[str] = ("q", "k", "v"), scale_name: str = "scale",
            enable_gqa: bool = True, kv_layout: Optional[Layout] = None) -> Call:
    """Checks q, k, v (given in ``layout``) and the scale once for every entry point. With
    ``kv_layout`` (KV caches) k and v have a layout of their own and a batch of their own."""
    kinds = {n: _kind(n, x) for n, x in zip(names, (q, k, v))}
    if len(set(kinds.values())) != 1:
        given = ", ".join(f"{n} is {kd}" for n, kd in kinds.items())
        raise TypeError(f"{', '.join(names)} must all be torch tensors or all numpy arrays; "
                        f"got {given}")
    kind = kinds[names[0]]
    for n, x in zip(names[1:], (k, v)):
        if x.ndim != q.ndim and kv_layout is None:
            raise ValueError(f"{n}: expected {q.ndim} dimensions like {names[0]}, got shape "
                             f"{tuple(x.shape)}")
    ranks = [(names[0], q, layout)]
    if kv_layout is not None:
        ranks += [(n, x, kv_layout) for n, x in zip(names[1:], (k, v))]
    for n, x, lay in ranks:
        if x.ndim not in lay.shapes:
            raise ValueError(f"{n}: expected {_one_of([str(r) for r in lay.shapes])} dimensions, "
                             f"{_one_of(list(lay.shapes.values()))}; got shape {tuple(x.shape)}")
    for n, x in zip(names, (q, k, v)):
        _check_array(n, x)
    for n, x in zip(names[1:], (k, v)):
        if dtype_name(x) != dtype_name(q):
            raise TypeError(f"{n}: dtype {dtype_name(x)} differs from {names[0]}'s "
                            f"{dtype_name(q)}; {', '.join(names)} must share one dtype")
    if kind == "torch":
        _check_device(names, q, k, v)
    s = scale_value(scale_name, scale)
    qb = _bshd(q, layout, q.ndim)
    kb, vb = (_bshd(x, kv_layout or layout, x.ndim) for x in (k, v))
    if qb.shape[2] != kb.shape[2] and not enable_gqa:
        raise ValueError(f"{names[1]}: {kb.shape[2]} heads differ from {names[0]}'s "
                         f"{qb.shape[2]}; pass enable_gqa=True for grouped-query attention")
    _check_bshd(names, qb, kb, vb, same_batch=kv_layout is None)
    s = 1.0 / math.sqrt(qb.shape[3]) if s is None else s
    return Call(qb, kb, vb, kind, s, mask, layout, q.ndim)
