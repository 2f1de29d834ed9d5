"""Fixtures for the SIMT emulator tests: the `_emu` module (skipped when the emulator was not
built: FLASHATTN_EXT_EMULATOR=ON) with its configuration restored after every test, and the exact
numerics that bit-for-bit tests of the emulated instructions check (whatever FAE_EMU_HW_NUMERICS
says for the rest of the suite)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest


@pytest.fixture
def emu():
    try:
        mod = importlib.import_module("flashattn_ext._emu")
    except ImportError:
        pytest.skip("flashattn_ext._emu not built (build with FLASHATTN_EXT_EMULATOR=ON)")
    before = mod.config()
    yield mod
    mod.set_seed(None)
    mod.configure(threads=before["threads"], stack_kib=before["stack_kib"], smem_limit=before["smem_limit"])
    mod.set_stats(before["stats"])
    mod.set_hw_numerics(before["hw_numerics"])
    mod.reset_stats()


@pytest.fixture
def exact_numerics(emu):
    """Hardware numerics mode off for this test (restored by `emu`)."""
    emu.set_hw_numerics(None)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng()
