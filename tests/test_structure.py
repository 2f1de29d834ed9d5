"""The layering of docs/architecture.md, checked on the source tree: includes point one way, and
nothing cites a file outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
pytestmark = pytest.mark.skipif(not CSRC.is_dir(), reason="needs the source tree (csrc/)")

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
SOURCES = ("*.h", "*.cuh", "*.cpp", "*.cu")


def includes(layer: str) -> list[tuple[str, str]]:
    """(file, included path) for every quoted include of csrc/<layer>."""
    found = []
    for pattern in SOURCES:
        for f in (CSRC / layer).rglob(pattern):
            found += [(str(f.relative_to(ROOT)), inc) for inc in INCLUDE.findall(f.read_text())]
    return found


# layer -> the project directories its files may include from (besides their own directory).
ALLOWED = {
    "common": {"common"},
    "cpu": {"common", "cpu"},
    "emu": {"common", "emu"},
    "cuda": {"common", "cuda"},
}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_includes_point_one_way(layer):
    bad = []
    for f, inc in includes(layer):
        top = inc.split("/")[0] if "/" in inc else layer
        ok = top in ALLOWED[layer]
        if layer == "cuda" and top == "emu":  # the kernels reach the emulator only through here
            ok = Path(f).name in ("primitives.cuh", "primitives_emu.h")
        if not ok:
            bad.append(f"{f} includes {inc}")
    assert not bad, "\n".join(bad)


def test_nothing_cites_outside_the_repository():
    pattern = re.compile(r"DESIGN\.md|ptx-emulation-spec|\.\./shared")
    hits = []
    for top in ("csrc", "python", "tests", "docs", "bench", "tools", ".ci"):
        for f in (ROOT / top).rglob("*"):
            if f.is_file() and f.suffix in {".h", ".cuh", ".cpp", ".cu", ".py", ".md", ".sh", ".txt", ".cmake"} \
                    and f.name != Path(__file__).name:
                hits += [f"{f.relative_to(ROOT)}" for line in f.read_text(errors="replace").splitlines()
                         if pattern.search(line)]
    for f in (ROOT / "README.md", ROOT / "CMakeLists.txt", ROOT / "pyproject.toml"):
        if pattern.search(f.read_text()):
            hits.append(f.name)
    assert not hits, f"citations of files outside the repository: {sorted(set(hits))}"
