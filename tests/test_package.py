"""The package surface: torch-only submodules as lazy attributes, the numpy-only install without
torch (a subprocess in which importing torch fails), and ``python -m flashattn_ext``."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

import flashattn_ext as fa
from flashattn_ext.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fa.__file__)))


def run_python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """A fresh interpreter that imports this same flashattn_ext."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_submodules_are_lazy_attributes():
    res = run_python("-c", textwrap.dedent("""
        import sys, flashattn_ext as fa
        assert "flashattn_ext.nn" not in sys.modules
        assert {"nn", "integrations"} <= set(dir(fa))
        m = fa.nn.MultiHeadAttention(32, 4)
        assert "flashattn_ext.nn" in sys.modules and fa.nn is sys.modules["flashattn_ext.nn"]
        assert fa.integrations.__name__ == "flashattn_ext.integrations"
        try:
            fa.no_such_thing
        except AttributeError as e:
            assert "no attribute 'no_such_thing'" in str(e)
        else:
            raise AssertionError("fa.no_such_thing did not raise")
        print("ok")
    """))
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


NO_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, NoTorch())
""")


def test_numpy_only_without_torch():
    res = run_python("-c", NO_TORCH + textwrap.dedent("""
        import numpy as np
        import flashattn_ext as fa
        assert "torch" not in sys.modules
        rng = np.random.default_rng()
        q, k, v = (rng.standard_normal((2, 19, 3, 16)) for _ in range(3))
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / 4.0
        p = np.exp(s - s.max(-1, keepdims=True))
        ref = np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v)
        assert np.abs(fa.attention(q, k, v) - ref).max() < 1e-10
        for what, extra in (("fa.nn", "torch"), ("fa.distributed", "torch"),
                            ("fa.integrations.transformers", "transformers")):
            try:
                eval(what)
            except ImportError as e:
                assert f"pip install flashattn_ext[{extra}]" in str(e), str(e)
            else:
                raise AssertionError(f"{what} imported without torch")
        try:
            import flashattn_ext.nn
        except ImportError as e:
            assert "flashattn_ext.nn needs torch" in str(e), str(e)
        else:
            raise AssertionError("import flashattn_ext.nn worked without torch")
        from flashattn_ext.__main__ import main
        assert main(["--reps", "1"]) == 0
        print("ok")
    """))
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout + res.stderr
    assert "benchmark: torch is not installed; skipped (pip install flashattn_ext[torch])" \
        in res.stdout


def test_main_help_lists_the_jobs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for job in ("report", "self-check", "benchmark", "--csv", "--png", "--no-bench"):
        assert job in out, job


def test_main_benchmark_progress_and_csv(tmp_path, capsys):
    csv_path, png_path = tmp_path / "bench.csv", tmp_path / "bench.png"
    assert main(["--seqlen", "64", "--reps", "1", "--csv", str(csv_path),
                 "--png", str(png_path)]) == 0
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.strip().startswith("[")]
    assert [line.split()[0] for line in progress] == [f"[{i}/6]" for i in range(1, 7)]
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["direction"] for r in rows} == {"fwd", "fwd+bwd"}
    assert all(float(r["flashattn_ext_gflops"]) > 0 and float(r["torch_gflops"]) > 0
               for r in rows)
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in out and not png_path.exists()
    else:
        assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("arg", ["--reps", "--seqlen"])
def test_main_rejects_bad_counts(arg, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([arg, "0"])
    assert exit_.value.code == 2
    assert f"{arg}: expected a positive int, got 0" in capsys.readouterr().err
