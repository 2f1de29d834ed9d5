"""Fixtures: the backend every numerical test runs on, and a fresh random generator."""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Iterator, Optional

import pytest
import torch

BACKENDS = ("cpu", "emu", "cuda")


def _skip_reason(name: str) -> Optional[str]:
    if name == "cpu":
        return None
    if name == "emu":
        if importlib.util.find_spec("flashattn_ext._emu") is None:
            return "built without the emulator (FLASHATTN_EXT_EMULATOR=ON builds it)"
        return None
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    return "the numerical tests do not place their inputs on the GPU yet"


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> Iterator[str]:
    """Every numerical test runs once per backend; unavailable ones skip with the reason. With
    FLASHATTN_EXT_EMU_SEED=N the emulator runs each block's threads in an order shuffled by N."""
    reason = _skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", request.param)
    seed = os.environ.get("FLASHATTN_EXT_EMU_SEED")
    if request.param != "emu" or not seed:
        yield request.param
        return
    emu = importlib.import_module("flashattn_ext._emu")
    emu.set_seed(int(seed))
    try:
        yield request.param
    finally:
        emu.set_seed(None)


@pytest.fixture
def gen() -> torch.Generator:
    """Fresh random data every run; the seed is printed, so a failure's output shows it."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")
    return torch.Generator().manual_seed(seed)
