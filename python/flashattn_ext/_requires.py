"""Imports of optional dependencies with an ImportError that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType


def optional(module: str, extra: str, user: str) -> ModuleType:
    """``import module``, or ImportError saying that ``user`` needs ``pip install
    flashattn_ext[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{user} needs {module}, which is not installed: "
                          f"pip install flashattn_ext[{extra}]") from e
