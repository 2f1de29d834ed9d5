"""flashattn_ext: exact, fast, memory-lean attention for PyTorch and numpy.

Entry points: :func:`attention` (canonical), :func:`flash_attn_func` (FlashAttention 2.x
signature) with its variable-length, packed and KV-cache forms (:func:`flash_attn_varlen_func`,
:func:`flash_attn_qkvpacked_func`, :func:`flash_attn_with_kvcache`, ...),
:func:`scaled_dot_product_attention` (torch signature). For looking inside models:
:func:`attention_weights`, :func:`hard_attention`, :func:`topk_attention` and
``flashattn_ext.inspect``. Loaded on first use, so that
the numpy-only install imports without torch: ``flashattn_ext.nn`` (``MultiHeadAttention``,
``replace_sdpa``; needs torch), ``flashattn_ext.integrations`` (Hugging Face transformers),
``flashattn_ext.distributed`` (ring and Ulysses attention on torch.distributed; needs torch) and
``flashattn_ext.inspect`` (capture, plot, rollout)."""

import importlib as _importlib
from types import ModuleType as _ModuleType

from ._version import __version__
from ._C import available_isas as _available_isas
from ._C import build_info as _build_info
from ._C import get_num_threads, set_num_threads
from ._dispatch import set_deterministic
from .functional import attention, flash_attn_func, scaled_dot_product_attention
from .interpret import attention_weights, hard_attention, topk_attention
from .kvcache import flash_attn_with_kvcache
from .varlen import (flash_attn_kvpacked_func, flash_attn_qkvpacked_func,
                     flash_attn_varlen_func, flash_attn_varlen_kvpacked_func,
                     flash_attn_varlen_qkvpacked_func)


def build_info() -> dict:
    """What this build contains: version, compiler, CPU instruction set in use and the ones this
    machine can run (values of FLASHATTN_EXT_CPU_ISA), CUDA backend and architectures, whether the
    emulator module is present, default thread count."""
    info = dict(_build_info())
    info["cpu_isas"] = list(_available_isas())
    try:
        from . import _emu  # noqa: F401
        info["emulator"] = True
    except ImportError:
        info["emulator"] = False
    return info


_LAZY_SUBMODULES = ("distributed", "inspect", "integrations", "nn")


def __getattr__(name: str) -> _ModuleType:
    """``flashattn_ext.nn``, ``.integrations``, ``.distributed`` and ``.inspect`` as attributes, imported on first
    access (a module whose dependency is missing raises ImportError naming the extra)."""
    if name in _LAZY_SUBMODULES:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


__all__ = [
    "__version__",
    "attention",
    "attention_weights",
    "build_info",
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
    "get_num_threads",
    "hard_attention",
    "scaled_dot_product_attention",
    "set_deterministic",
    "set_num_threads",
    "topk_attention",
]
