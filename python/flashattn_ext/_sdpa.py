"""``torch.nn.functional.scaled_dot_product_attention`` routed to flashattn_ext: :func:`sdpa`
computes a call on the kernels when they take its arguments and with torch's own function
otherwise; :func:`replace_sdpa` (``flashattn_ext.nn.replace_sdpa``) routes a model's calls."""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ._validate import CUDA_BUILT, CUDA_KERNEL_DTYPES, DTYPES, MAX_HEAD_DIM, dtype_name
from .functional import scaled_dot_product_attention

TORCH_SDPA = F.scaled_dot_product_attention


def unsupported(query: Any, key: Any, value: Any) -> Optional[str]:
    """Why the kernels cannot take these (B, H, S, D) or (B, S, D) tensors, or None."""
    ts = (query, key, value)
    if not all(isinstance(t, torch.Tensor) and t.layout == torch.strided for t in ts):
        return "inputs that are not dense tensors"
    if query.dim() not in (3, 4) or any(t.dim() != query.dim() for t in ts):
        return "inputs that are not all (B, H, S, D) or all (B, S, D)"
    if any(t.dtype != query.dtype for t in ts) or dtype_name(query) not in DTYPES:
        return f"dtype {dtype_name(query)} (or mixed dtypes)"
    if any(t.device != query.device for t in ts):
        return "inputs on different devices"
    if query.device.type == "cuda" and not (CUDA_BUILT and dtype_name(query) in CUDA_KERNEL_DTYPES):
        return (f"{dtype_name(query)} on CUDA" if CUDA_BUILT else
                "CUDA tensors (this build has no CUDA kernels)")
    if query.device.type not in ("cpu", "cuda"):
        return f"device {query.device}"
    d = query.shape[-1]
    if key.shape[-1] != d or value.shape[-1] != d or d > MAX_HEAD_DIM:
        return f"head dims q {d}, k {key.shape[-1]}, v {value.shape[-1]}"
    if key.shape[:-1] != value.shape[:-1] or key.shape[0] != query.shape[0]:
        return "key, value and query shapes that do not pair up"
    if any(0 in t.shape for t in ts):
        return "empty inputs"
    if any(t.stride(-1) != 1 and t.shape[-1] != 1 for t in ts):
        return "a last dimension that is not contiguous"
    return None


@dataclass
class RoutedCalls:
    """What :func:`replace_sdpa` did: calls computed by flashattn_ext (``library``) and by
    torch, counted by the reason (``torch``)."""

    library: int = 0
    torch: Counter = field(default_factory=Counter)


def sdpa(query: Any, key: Any, value: Any, attn_mask: Optional[torch.Tensor] = None,
         dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
         enable_gqa: bool = False, *, calls: Optional[RoutedCalls] = None) -> torch.Tensor:
    """torch's ``scaled_dot_product_attention`` signature and result, on the kernels when they
    take the call: dense tensors of a dtype and device the build runs, with any attention mask
    and dropout. Anything else goes to torch's own function."""
    reason = unsupported(query, key, value)
    if reason is None and attn_mask is not None and is_causal:
        reason = "attn_mask with is_causal"  # torch refuses it: let torch say so
    if reason is None and query.dim() == 4 and query.shape[1] != key.shape[1] and not enable_gqa:
        reason = "different head counts without enable_gqa"  # torch refuses it as well
    out = None
    if reason is None:  # any mask, read by the kernels as it is
        out = scaled_dot_product_attention(query, key, value, attn_mask=attn_mask,
                                           dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                                           enable_gqa=enable_gqa)
    if out is not None:
        if calls is not None:
            calls.library += 1
        return out
    if calls is not None:
        calls.torch[reason] += 1
    gqa = {"enable_gqa": True} if enable_gqa else {}  # torch < 2.5 has no enable_gqa
    return TORCH_SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                      is_causal=is_causal, scale=scale, **gqa)


@contextlib.contextmanager
def replace_sdpa(model: Optional[torch.nn.Module] = None) -> Iterator[RoutedCalls]:
    """Within the block, ``torch.nn.functional.scaled_dot_product_attention`` runs on
    flashattn_ext's kernels whenever they take the call, and is torch's own function otherwise
    (dtypes or devices the build does not run). Yields a
    :class:`RoutedCalls` counting both.

    What is routed: calls made through the attribute (``F.scaled_dot_product_attention(...)``,
    including torch's ``F.multi_head_attention_forward`` with ``need_weights=False``), and, when
    ``model`` is given, the module-level names bound to torch's function in the Python modules
    that define the model's submodules (``from torch.nn.functional import
    scaled_dot_product_attention``). Limits: the patch is process-wide for the duration of the
    block (other threads see it too); C++ paths that never call the Python function (e.g.
    ``nn.TransformerEncoderLayer``'s inference fast path) are not routed; masks go to the kernels
    as they are, also under ``torch.compile``. Results: a
    query row that may see no key gives 0, as torch's own CPU kernels do."""
    calls = RoutedCalls()

    def routed(query: Any, key: Any, value: Any, attn_mask: Optional[torch.Tensor] = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
               enable_gqa: bool = False) -> torch.Tensor:
        return sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                    calls=calls)

    patched: List[Tuple[Any, str, Callable]] = [(F, "scaled_dot_product_attention",
                                                 F.scaled_dot_product_attention)]
    if model is not None:
        names = {type(m).__module__ for m in model.modules()}
        for mod in filter(None, (sys.modules.get(n) for n in names)):
            patched += [(mod, name, fn) for name, fn in list(vars(mod).items())
                        if fn is TORCH_SDPA and mod is not F]
    for owner, name, _ in patched:
        setattr(owner, name, routed)
    try:
        yield calls
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
