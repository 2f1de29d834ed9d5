"""Tuned CPU tiles (python -m flashattn_ext tune): a table file is loaded and used (build_info
names it, and another candidate changes the computation), every candidate meets the tolerance
rule against the float64 oracle, and a file that cannot be used leaves the built-in tiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import torch

import flashattn_ext as fa
import oracle
from attn_testing import assert_close, naive_in, randn
from flashattn_ext import _C, _tiles

CANDIDATES = _C.cpu_tile_candidates()
ISAS = [i for i in fa.build_info()["cpu_isas"] if i != "scalar"] or ["scalar"]


@pytest.fixture(autouse=True)
def restore_tiles(monkeypatch) -> Iterator[None]:
    yield
    monkeypatch.undo()
    _tiles.load_tuned_tiles()


def write_table(path: Path, isa: str, entries: list) -> Path:
    path.write_text(json.dumps(dict(isa=isa, entries=entries)))
    return path


def entry(direction: str, shape: tuple, dtype: str = "float32", head_dim: int = 64) -> dict:
    return dict(dtype=dtype, head_dim=head_dim, direction=direction, bq=shape[0], bk=shape[1])


def test_a_tuned_table_is_used(tmp_path, monkeypatch, gen):
    isa = fa.build_info()["cpu_isa"]
    q, k, v = (randn(gen, 1, 300, 2, 64) for _ in range(3))
    monkeypatch.setenv(_tiles.ENV_OFF, "1")
    _tiles.load_tuned_tiles()
    assert fa.build_info()["cpu_tiles"] == "built-in"
    builtin = fa.flash_attn_func(q, k, v)
    monkeypatch.delenv(_tiles.ENV_OFF)
    other = next(c for c in CANDIDATES["fwd"][1:] if c[1] != CANDIDATES["fwd"][0][1])  # another bk
    path = write_table(tmp_path / "tiles.json", isa, [entry("fwd", other)])
    monkeypatch.setenv(_tiles.ENV_PATH, str(path))
    _tiles.load_tuned_tiles()
    assert fa.build_info()["cpu_tiles"] == str(path)
    tuned = fa.flash_attn_func(q, k, v)
    # Another key-tile length rescales the running sums at other keys: other roundings.
    assert not torch.equal(tuned, builtin)
    ref = oracle.attention(q, k, v)[0]
    assert_close(tuned, ref, None, "out (tuned)")
    assert_close(builtin, ref, None, "out (built-in)")
    write_table(path, isa, [entry("fwd", other, dtype="bfloat16")])  # another dtype: not this call's
    _tiles.load_tuned_tiles()
    assert torch.equal(fa.flash_attn_func(q, k, v), builtin)


def test_cache_dir_and_switches(tmp_path, monkeypatch):
    isa = fa.build_info()["cpu_isa"]
    monkeypatch.delenv(_tiles.ENV_PATH, raising=False)
    monkeypatch.delenv(_tiles.ENV_OFF, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tmp_path / "flashattn_ext" / f"tiles-{isa}.json"
    assert _tiles.tiles_path(isa) == path
    _tiles.load_tuned_tiles()
    assert fa.build_info()["cpu_tiles"] == "built-in"  # no file yet
    path.parent.mkdir()
    write_table(path, isa, [entry("bwd", CANDIDATES["bwd"][1])])
    _tiles.load_tuned_tiles()
    assert fa.build_info()["cpu_tiles"] == str(path)
    monkeypatch.setenv(_tiles.ENV_OFF, "1")
    _tiles.load_tuned_tiles()
    assert fa.build_info()["cpu_tiles"] == "built-in"


@pytest.mark.parametrize("bad", ["not json", json.dumps(dict(isa="avx2")),
                                 json.dumps(dict(isa="avx2", entries=[entry("fwd", (3, 5))])),
                                 json.dumps(dict(isa="avx2", entries=[dict(entry("fwd", (64, 64)), dtype="int8")]))])
def test_an_unusable_file_warns_and_keeps_the_built_in_tiles(tmp_path, monkeypatch, bad):
    path = tmp_path / "tiles.json"
    path.write_text(bad)
    monkeypatch.setenv(_tiles.ENV_PATH, str(path))
    with pytest.warns(RuntimeWarning, match="tuned CPU tiles in .* not used"):
        _tiles.load_tuned_tiles()
    assert fa.build_info()["cpu_tiles"] == "built-in"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [64, 96])
def test_every_candidate_meets_the_tolerance(monkeypatch, gen, isa, dtype, d):
    """Forward and backward with each candidate tile shape (odd lengths, causal, GQA) against the
    float64 oracle."""
    monkeypatch.setenv("FLASHATTN_EXT_CPU_ISA", isa)
    dtype_name = str(dtype)[6:]
    q = randn(gen, 2, 203, 4, d, dtype=dtype).requires_grad_()
    k, v = (randn(gen, 2, 287, 2, d, dtype=dtype).requires_grad_() for _ in range(2))
    dout = randn(gen, 2, 203, 4, d, dtype=dtype)
    ref = oracle.attention(q, k, v, causal=True)[0]
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout.double())
    naive, naive_grads = None, [None] * 3
    if dtype != torch.float32:
        naive = naive_in(dtype, q, k, v, causal=True)[0]
        naive_grads = torch.autograd.grad(naive, (q, k, v), dout)
    for fwd, bwd in zip(CANDIDATES["fwd"], CANDIDATES["bwd"]):
        _C.set_cpu_tiles(isa, [entry("fwd", fwd, dtype_name, d), entry("bwd", bwd, dtype_name, d)], "test")
        out = fa.flash_attn_func(q, k, v, causal=True)
        assert_close(out, ref, naive, f"out, tiles {fwd}")
        for name, g, r, n in zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), dout), ref_grads,
                                 naive_grads):
            assert_close(g, r, n, f"{name}, tiles {fwd} / {bwd}")


def test_tune_writes_and_uses_a_table(tmp_path, monkeypatch):
    monkeypatch.delenv(_tiles.ENV_OFF, raising=False)
    path = _tiles.tune(tmp_path / "t.json", seqlen=128, dtypes=("float32",), head_dims=(64,), reps=1,
                       verbose=False)
    table = json.loads(path.read_text())
    assert table["isa"] == fa.build_info()["cpu_isa"]
    assert {(e["direction"], e["head_dim"]) for e in table["entries"]} == {("fwd", 64), ("bwd", 64)}
    for e in table["entries"]:
        assert [e["bq"], e["bk"]] in [list(c) for c in CANDIDATES[e["direction"]]] and e["gflops"] > 0
    assert fa.build_info()["cpu_tiles"] == str(path)
