"""The hook through which :func:`flashattn_ext.inspect.capture` sees attention calls: the
functional entry points call :func:`record` only while a capture is active (otherwise the cost
is one check of an empty list)."""

from __future__ import annotations

from typing import Any, Callable, List

recorders: List[Callable[[Any, Any], None]] = []


def record(call: Any, lse: Any) -> None:
    """Hands a finished call (validated BSHD views) and its (B, H, Sq) lse to every recorder."""
    for recorder in tuple(recorders):
        recorder(call, lse)
