"""Profiler counters of the emulator (_emu.set_stats / stats): shared-memory bank wavefronts and
global sectors per warp-level request, per launch and kernel source line. Planted layouts show
the figures they must; every shared-memory access of the forward and backward kernels is
conflict-free and every global access of them uses whole sectors (tile copies, 16-byte O, dK,
dV and dQ stores, lse and the row statistics, dQ atomics of 128 contiguous bytes per warp)."""

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


SHARED_OPS = ("ldmatrix", "cp.async shared", "shared load", "shared store")
GLOBAL_OPS = ("cp.async global", "global load", "global store")


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("head_dim", FWD_HEAD_DIMS)
def test_forward_conflict_free_and_whole_sectors(emu, monkeypatch, head_dim, dtype):
    """Every shared-memory request of the forward takes its ideal wavefronts (ldmatrix, the
    cp.async destinations, O staged in shared memory and read back) and every global one uses
    whole sectors (tile copies, O in 16-byte stores, lse)."""
    launches = [launch for launch in collect(emu, lambda: run_attention(monkeypatch, head_dim, dtype, False))
                if launch["kernel"] == "flash_fwd"]
    found = {s["op"] for launch in launches for s in launch["sites"]}
    assert set(SHARED_OPS) <= found and {"cp.async global", "global store"} <= found, found
    for s in (s for launch in launches for s in launch["sites"]):
        if s["op"] in SHARED_OPS:
            assert s["wavefronts"] == s["ideal_wavefronts"], ("shared bank conflicts", s)
        else:
            assert s["op"] in GLOBAL_OPS and s["bytes"] == 32 * s["sectors"], ("partial sectors", s)


BWD_KERNELS = ("flash_bwd_row_stats", "flash_bwd", "flash_bwd_convert_dq")


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


@pytest.mark.parametrize("head_dim", (64, 128))
def test_forward_output_stores_are_16_bytes_in_whole_sectors(emu, monkeypatch, head_dim):
    launches = collect(emu, lambda: run_attention(monkeypatch, head_dim, torch.float16, False))
    figures = store_figures(launches, "flash_fwd", "common.cuh", {"O": "// O store"})
    (o,) = [s for s in sites(launches, "flash_fwd", "global store") if s["file"] == "cuda/flash/common.cuh"]
    assert o["bytes_per_access"] == 16 and o["bytes"] == 128 * 2 * head_dim * 2, o
    assert figures == {"O": 1.0}, figures


@pytest.mark.parametrize("smem_kib", (99, 163))
@pytest.mark.parametrize("kind", ("bool", "float"))
@pytest.mark.parametrize("head_dim", (64, 128))
def test_staged_mask_copies_and_reads(emu, monkeypatch, head_dim, kind, smem_kib):
    """An explicit mask with 16-byte aligned rows is staged in shared memory (attn_mask.cuh): its
    tile copies (cp.async, 16 bytes) and the pair loads of the scores' entries take their ideal
    wavefronts, and the copies use whole sectors where a tile row is whole sectors (every float
    tile: 64 x 4 and 48 x 4 bytes; boolean ones of 64 keys, not those of 48). Only the key tiles
    the causal band leaves are copied, and of the last one only its keys before Sk. Where the stage
    would cost the SM its second block (a float mask at D = 128 with 99 KiB: 2 x 57 KiB) the mask
    is read from global memory instead."""
    emu.configure(smem_limit=smem_kib * 1024)
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    q, k, v = (torch.randn(1, 128, 2, head_dim, generator=gen, dtype=torch.bfloat16) for _ in range(3))
    u = torch.rand(1, 2, 128, 192, generator=gen)[..., :128]  # 768-byte float, 192-byte boolean rows
    mask = u > 0.3 if kind == "bool" else torch.log(u)
    launches = [launch for launch in collect(emu, lambda: fa.attention(q, k, v, causal=True, attn_mask=mask))
                if launch["kernel"] == "flash_fwd_seqs_mod"]
    assert launches
    staged = [s for launch in launches for s in launch["sites"] if s["file"] == "cuda/flash/attn_mask.cuh"]
    copies, loads = source_lines("attn_mask.cuh", "// mask tile copy"), source_lines("attn_mask.cuh", "// mask pair load")
    if kind == "float" and head_dim == 128 and smem_kib == 99:
        assert not staged, staged  # load_nc's global loads count at their own site
        return
    assert {s["op"] for s in staged} == {"cp.async shared", "cp.async global", "shared load"}, staged
    # 64-row query tiles, key tiles of 64 (D = 64) or 48 keys (D = 128): query tile i sees key tiles
    # 0 .. (64 i + 63) // bn under the causal band; a tile row is bn * size bytes in 16-byte chunks.
    bn, size = (64 if head_dim == 64 else 48), (1 if kind == "bool" else 4)
    tiles = [j for i in range(2) for j in range((64 * i + 63) // bn + 1)]
    (copy,) = [s for s in staged if s["op"] == "cp.async global"]
    assert copy["requests"] == 2 * len(tiles) * 64 * (bn * size // 16) // 32, copy
    assert copy["bytes"] == 2 * sum(64 * min(bn, 128 - j * bn) * size for j in tiles), copy
    for s in staged:
        assert s["line"] in (copies if s["op"].startswith("cp.async") else loads), s
        if s["op"] in SHARED_OPS:
            assert s["wavefronts"] == s["ideal_wavefronts"], ("shared bank conflicts", s)
        elif kind == "float" or head_dim == 64:
            assert s["bytes"] == 32 * s["sectors"], ("partial sectors", s)


@pytest.mark.parametrize("smem_kib", (99, 163))
@pytest.mark.parametrize("kind", ("bool", "float"))
@pytest.mark.parametrize("head_dim", (64, 128))
def test_staged_mask_copies_and_reads_backward(emu, monkeypatch, head_dim, kind, smem_kib):
    """The backward's main kernel stages the mask as the forward does (attn_mask.cuh), the tile of
    each query tile it visits copied with that tile's Q and dO: ideal wavefronts for the copies and
    the pair loads, whole sectors, and only the query tiles whose rows see the block's keys under
    the causal band. A float mask's stage (64 rows of 136 or 72 floats) does not fit beside the
    feature tiles in 99 KiB: read from global memory there."""
    emu.configure(smem_limit=smem_kib * 1024)
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    q, k, v = (torch.randn(1, 128, 2, head_dim, generator=gen, dtype=torch.bfloat16).requires_grad_()
               for _ in range(3))
    u = torch.rand(1, 2, 128, 192, generator=gen)[..., :128]  # 768-byte float, 192-byte boolean rows
    mask = u > 0.3 if kind == "bool" else torch.log(u)
    dout = torch.randn(1, 128, 2, head_dim, generator=gen, dtype=torch.bfloat16)
    run = lambda: fa.attention(q, k, v, causal=True, attn_mask=mask).backward(dout)  # noqa: E731
    launches = [launch for launch in collect(emu, run) if launch["kernel"] == "flash_bwd"]
    assert launches
    staged = [s for launch in launches for s in launch["sites"] if s["file"] == "cuda/flash/attn_mask.cuh"]
    copies, loads = source_lines("attn_mask.cuh", "// mask tile copy"), source_lines("attn_mask.cuh", "// mask pair load")
    if kind == "float" and smem_kib == 99:
        assert not staged, staged  # load_nc's global loads count at their own site
        return
    assert {s["op"] for s in staged} == {"cp.async shared", "cp.async global", "shared load"}, staged
    # The feature tiles: 64 query rows x 128 keys (D = 64) or 64 keys (D = 128); key block j is
    # seen by query tiles i with 64 i + 63 >= j * bn, per head (2); a row is bn * size bytes.
    bn, size = (128 if head_dim == 64 else 64), (1 if kind == "bool" else 4)
    tiles = [(i, j) for j in range(128 // bn) for i in range(2) if 64 * i + 63 >= j * bn]
    (copy,) = [s for s in staged if s["op"] == "cp.async global"]
    assert copy["requests"] == 2 * len(tiles) * 64 * (bn * size // 16) // 32, copy
    assert copy["bytes"] == 2 * len(tiles) * 64 * bn * size, copy
    for s in staged:
        assert s["line"] in (copies if s["op"].startswith("cp.async") else loads), s
        if s["op"] in SHARED_OPS:
            assert s["wavefronts"] == s["ideal_wavefronts"], ("shared bank conflicts", s)
        else:
            assert s["bytes"] == 32 * s["sectors"], ("partial sectors", s)
