"""flashattn_ext: exact, fast, memory-lean attention for PyTorch and numpy.

Entry points: :func:`attention` (canonical), :func:`flash_attn_func` (FlashAttention 2.x
signature), :func:`scaled_dot_product_attention` (torch signature), and
``flashattn_ext.nn.MultiHeadAttention`` (needs torch)."""

from ._version import __version__
from ._C import available_isas as _available_isas
from ._C import build_info as _build_info
from ._C import get_num_threads, set_num_threads
from ._dispatch import set_deterministic
from .functional import attention, flash_attn_func, scaled_dot_product_attention


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


__all__ = [
    "__version__",
    "attention",
    "build_info",
    "flash_attn_func",
    "get_num_threads",
    "scaled_dot_product_attention",
    "set_deterministic",
    "set_num_threads",
]
