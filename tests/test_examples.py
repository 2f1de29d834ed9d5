"""The worked examples (examples/) run end to end for a few training steps and write their
pictures; a full run of each is under two minutes on two cores (README)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
pytestmark = [
    pytest.mark.skipif(not EXAMPLES.is_dir(), reason="needs the source tree (examples/)"),
    pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None or importlib.util.find_spec("sklearn") is None,
                       reason="the examples need matplotlib and scikit-learn (pip install '.[examples]')"),
]


def run(script: str, *args: str) -> str:
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("FLASHATTN_EXT_BACKEND", None)
    res = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                         env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_seq2seq_reversal(tmp_path):
    png = tmp_path / "cross.png"
    out = run("seq2seq_reversal.py", "--steps", "3", "--out", str(png))
    assert "sequence accuracy" in out and png.stat().st_size > 1000


def test_vit_digits(tmp_path):
    png = tmp_path / "vit.png"
    out = run("vit_digits.py", "--steps", "3", "--out", str(png))
    assert "test accuracy" in out and png.stat().st_size > 1000


def test_soft_topk_hard(tmp_path):
    png = tmp_path / "soft_topk_hard.png"
    out = run("soft_topk_hard.py", "--steps", "3", "--out", str(png))
    for name in ("soft", "top-4", "hard"):
        assert any(line.split()[:1] == [name] for line in out.splitlines()), out
    assert png.stat().st_size > 1000
