"""Integrations with other libraries, each loaded on first use:
``flashattn_ext.integrations.transformers`` (Hugging Face transformers; ``pip install
flashattn_ext[transformers]``)."""

import importlib as _importlib
from types import ModuleType as _ModuleType

_LAZY_SUBMODULES = ("transformers",)


def __getattr__(name: str) -> _ModuleType:
    if name in _LAZY_SUBMODULES:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
