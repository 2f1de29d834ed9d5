"""Profiler counters of the emulator (_emu.set_stats / stats): shared-memory bank wavefronts and
global sectors per warp-level request, per launch and kernel source line. Planted layouts show
the figures they must; the attention kernels' shared loads are conflict-free and their tile copies
use whole sectors; the figures of their output stores are reported."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List

import pytest
import torch

import flashattn_ext as fa

FLASH = Path(__file__).resolve().parents[2] / "csrc" / "cuda" / "flash"
try:  # the head dims with a kernel instance, from their one home (csrc/cuda/flash/head_dims.h)
    from flashattn_ext._emu import attention_bwd_head_dims as BWD_HEAD_DIMS
    from flashattn_ext._emu import attention_head_dims as FWD_HEAD_DIMS
except ImportError:  # the emu fixture skips every test then
    FWD_HEAD_DIMS = BWD_HEAD_DIMS = [64]


def collect(emu, run) -> List[dict]:
    emu.reset_stats()
    emu.set_stats(True)
    try:
        run()
    finally:
        emu.set_stats(False)
    return emu.stats()


def sites(launches: List[dict], kernel: str, op: str) -> List[dict]:
    found = [s for launch in launches if launch["kernel"] == kernel for s in launch["sites"] if s["op"] == op]
    assert found, (kernel, op, launches)
    return found


def source_lines(name: str, needle: str) -> List[int]:
    text = (FLASH / name).read_text().splitlines()
    return [i + 1 for i, line in enumerate(text) if needle in line]


def efficiency(s: dict) -> float:
    return s["bytes"] / (32 * s["sectors"])


def test_counters_only_when_enabled(emu):
    emu.reset_stats()
    emu.planted("strided_store", True)
    assert emu.stats() == []
    assert emu.config()["stats"] is False
    launches = collect(emu, lambda: emu.planted("strided_store", True))
    assert [launch["kernel"] for launch in launches] == ["strided_store"]
    assert launches[0]["grid"] == (1, 1, 1) and launches[0]["block"] == (64, 1, 1)


@pytest.mark.parametrize("bug", (True, False))
def test_unpadded_ldmatrix_rows_conflict_8_ways(emu, bug):
    """Rows of 64 halves (128 bytes): the 8 rows of each 8x8 matrix share 4 banks, 8 wavefronts
    per phase instead of 1; rows padded to 72 halves take one."""
    (ld,) = sites(collect(emu, lambda: emu.planted("ldmatrix_unpadded", bug)), "ldmatrix_unpadded", "ldmatrix")
    assert ld["site"] == "tests/emu/kernels/planted_bugs.cuh:" + str(ld["line"])
    assert ld["requests"] == 2 and ld["ideal_wavefronts"] == 2 * 4 and ld["bytes"] == 2 * 512
    assert ld["wavefronts"] == (8 if bug else 1) * ld["ideal_wavefronts"]


@pytest.mark.parametrize("bug", (True, False))
def test_strided_two_byte_stores_waste_sectors(emu, bug):
    """2-byte stores 32 bytes apart touch a sector per lane (64 bytes in 32 sectors); contiguous
    ones 2 sectors, 3 when the buffer is not 32-byte aligned."""
    (st,) = sites(collect(emu, lambda: emu.planted("strided_store", bug)), "strided_store", "global store")
    assert st["requests"] == 2 and st["accesses"] == 64 and st["bytes"] == 128 and st["bytes_per_access"] == 2
    if bug:
        assert st["sectors"] == 2 * 32
    else:
        assert 2 * 2 <= st["sectors"] <= 2 * 3


def run_attention(monkeypatch, head_dim: int, dtype: torch.dtype, backward: bool) -> None:
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    q, k, v = (torch.randn(1, 128, 2, head_dim, generator=gen, dtype=dtype, requires_grad=backward)
               for _ in range(3))
    out = fa.attention(q, k, v, causal=True)
    if backward:
        out.backward(torch.randn(out.shape, generator=gen, dtype=dtype))


def check_tiles(launches: List[dict], kernel: str) -> None:
    for s in sites(launches, kernel, "ldmatrix"):
        assert s["wavefronts"] == s["ideal_wavefronts"], ("ldmatrix bank conflicts", s)
    for s in sites(launches, kernel, "cp.async global"):
        assert s["bytes"] == 32 * s["sectors"], ("cp.async sources not whole sectors", s)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("head_dim", FWD_HEAD_DIMS)
def test_forward_tiles_conflict_free_and_whole_sectors(emu, monkeypatch, head_dim, dtype):
    check_tiles(collect(emu, lambda: run_attention(monkeypatch, head_dim, dtype, False)), "flash_fwd")


BWD_KERNELS = ("flash_bwd_row_stats", "flash_bwd", "flash_bwd_convert_dq")
SHARED_OPS = ("ldmatrix", "cp.async shared", "shared load", "shared store")


@pytest.mark.parametrize("deterministic", (False, True))
@pytest.mark.parametrize("smem_kib", (99, 163))
@pytest.mark.parametrize("head_dim", BWD_HEAD_DIMS)
def test_backward_conflict_free_and_whole_sectors(emu, monkeypatch, head_dim, smem_kib, deterministic):
    """Every shared-memory request of the three backward kernels takes its ideal wavefronts (tile
    copies, ldmatrix, P and dS, the row statistics, dK and dV staged for their stores) and every
    global one uses whole sectors (tile copies, lse, the statistics, dQ atomics, 16-byte dK, dV
    and dQ stores), in both shared-memory tiers and both modes."""
    emu.configure(smem_limit=smem_kib * 1024)
    monkeypatch.setenv("FLASHATTN_EXT_DETERMINISTIC", "1" if deterministic else "0")
    launches = [launch for launch in collect(emu, lambda: run_attention(monkeypatch, head_dim, torch.float16, True))
                if launch["kernel"] in BWD_KERNELS]
    assert {launch["kernel"] for launch in launches} == set(BWD_KERNELS)
    found = {s["op"] for launch in launches for s in launch["sites"]}
    assert set(SHARED_OPS) | {"cp.async global", "global load", "global store", "global atomic"} <= found, found
    for launch in launches:
        for s in launch["sites"]:
            if s["op"] in SHARED_OPS:
                assert s["wavefronts"] == s["ideal_wavefronts"], ("shared bank conflicts", launch["kernel"], s)
            else:
                assert s["bytes"] == 32 * s["sectors"], ("partial sectors", launch["kernel"], s)


@pytest.mark.parametrize("head_dim", (64, 128))
def test_backward_stores_and_atomics(emu, monkeypatch, head_dim):
    """dK and dV leave in 16-byte stores (through store_tile), dQ in 16-byte stores of the
    conversion, and each dQ atomic instruction of a warp covers 128 contiguous bytes."""
    launches = collect(emu, lambda: run_attention(monkeypatch, head_dim, torch.float16, True))
    stores = sites(launches, "flash_bwd", "global store")
    assert [s["bytes_per_access"] for s in stores] == [16] * len(stores)
    assert sum(s["bytes"] for s in stores) == 2 * 128 * 2 * head_dim * 2  # dK and dV: 128 keys, 2 kv heads
    (dq,) = sites(launches, "flash_bwd_convert_dq", "global store")
    assert dq["bytes_per_access"] == 16 and dq["bytes"] == 128 * 2 * head_dim * 2, dq
    (atomic,) = sites(launches, "flash_bwd", "global atomic")
    assert atomic["bytes_per_access"] == 4 and atomic["bytes"] == 128 * atomic["requests"], atomic
    assert atomic["sectors"] == 4 * atomic["requests"], atomic


@pytest.mark.parametrize("head_dim", FWD_HEAD_DIMS)
def test_tile_copy_destination_wavefronts(emu, monkeypatch, head_dim):
    """cp.async destinations: 8 lanes of 16 bytes per phase. With 4 or 12 chunks per row (head dims
    32, 96) a phase spans two padded rows whose words meet in 4 banks."""
    launches = collect(emu, lambda: run_attention(monkeypatch, head_dim, torch.float16, head_dim <= 128))
    copies = [s for k in ("flash_fwd", "flash_bwd") if any(l["kernel"] == k for l in launches)
              for s in sites(launches, k, "cp.async shared")]
    ratio = sum(s["wavefronts"] for s in copies) / sum(s["ideal_wavefronts"] for s in copies)
    print(f"head_dim {head_dim}: cp.async destinations take {ratio:.2f}x the ideal wavefronts")
    if ratio > 1:
        pytest.xfail(f"known gap, head_dim {head_dim}: cp.async destinations take {ratio:.2f}x the ideal "
                     "wavefronts (a phase of 8 chunks spans two padded rows)")


def store_figures(launches: List[dict], kernel: str, file: str, needles: Dict[str, str]) -> Dict[str, float]:
    """Sector efficiency (requested bytes / bytes of the sectors touched) of the global stores on
    the source lines containing each needle."""
    stores = sites(launches, kernel, "global store")
    figures = {}
    for what, needle in needles.items():
        lines = source_lines(file, needle)
        found = [s for s in stores if s["file"] == "cuda/flash/" + file and s["line"] in lines]
        assert found, (what, lines, stores)
        for s in found:
            assert s["bytes"] == s["accesses"] * s["bytes_per_access"] and 32 * s["sectors"] >= s["bytes"], s
        figures[what] = sum(s["bytes"] for s in found) / (32 * sum(s["sectors"] for s in found))
    return figures


def report(figures: Dict[str, float]) -> None:
    text = ", ".join(f"{what} {eff:.0%} of the sector bytes used" for what, eff in figures.items())
    print(text)
    if min(figures.values()) < 1:
        pytest.xfail("known gap, stores of 2-byte elements per lane (4 lanes per row, 2 columns each): " + text)


@pytest.mark.parametrize("head_dim", (64, 128))
def test_forward_output_store_sectors(emu, monkeypatch, head_dim):
    launches = collect(emu, lambda: run_attention(monkeypatch, head_dim, torch.float16, False))
    report(store_figures(launches, "flash_fwd", "fwd_kernel.cuh", {"O": "orow["}))
