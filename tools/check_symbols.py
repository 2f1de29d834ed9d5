"""Checks that shared objects load on a manylinux_2_28 system (glibc 2.28, GCC 8's runtime).

Lists, for every .so given (or inside every wheel given), each versioned symbol it needs from the
system, grouped by version, and fails if any version is newer than the policy allows, or if a
symbol is needed without a version and is not Python's C API (a symbol the linked C library did
not have: it would be looked up by name at load time, and an older system may lack it).
Usage: python tools/check_symbols.py [--static-cxx] FILE.so|WHEEL.whl ...
  --static-cxx: libstdc++ is linked in, so no GLIBCXX_ / CXXABI_ version may be needed at all.
"""
import argparse
import pathlib
import re
import subprocess
import sys
import tempfile
import zipfile

# Newest version of each family on manylinux_2_28 (AlmaLinux 8: glibc 2.28, GCC 8).
LIMITS = {"GLIBC": (2, 28), "GCC": (7, 0, 0), "GLIBCXX": (3, 4, 25), "CXXABI": (1, 3, 11)}
PYTHON_API = re.compile(r"_?Py[A-Z_a-z]\w*")


def check(so: pathlib.Path, name: str, static_cxx: bool) -> list[str]:
    """Prints what so needs; returns the violations."""
    needs: dict[str, list[str]] = {}
    bad = []
    for line in subprocess.run(["readelf", "--dyn-syms", "-W", str(so)], check=True,
                               capture_output=True, text=True).stdout.splitlines():
        f = line.split()
        if len(f) < 8 or f[6] != "UND" or not f[7]:
            continue
        sym, _, ver = f[7].partition("@")
        m = re.fullmatch(r"([A-Z]+)_([\d.]+)", ver)
        if m:
            needs.setdefault(ver, []).append(sym)
            family, v = m[1], tuple(int(x) for x in m[2].split("."))
            if static_cxx and family in ("GLIBCXX", "CXXABI"):
                bad.append(f"{sym}@{ver}: libstdc++ is meant to be linked in")
            elif family not in LIMITS or v > LIMITS[family]:
                bad.append(f"{sym}@{ver}: newer than manylinux_2_28 allows")
        elif f[4] != "WEAK" and not PYTHON_API.fullmatch(sym):
            bad.append(f"{sym}: needed without a version (not in the linked C library?)")
    print(f"{name}:")
    key = lambda v: (v.split("_")[0], tuple(int(x) for x in v.split("_")[1].split(".")))
    for ver in sorted(needs, key=key):
        print(f"  {ver:<14} {' '.join(sorted(needs[ver]))}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--static-cxx", action="store_true")
    ap.add_argument("files", nargs="+", type=pathlib.Path)
    a = ap.parse_args()
    bad, checked = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in a.files:
            if path.suffix == ".whl":
                with zipfile.ZipFile(path) as z:
                    sos = [n for n in z.namelist() if re.search(r"\.so(\.\d+)*$", n)]
                    z.extractall(tmp, sos)
                items = [(pathlib.Path(tmp, n), f"{path.name}:{n}") for n in sos]
            else:
                items = [(path, str(path))]
            for so, name in items:
                bad += [f"{name}: {b}" for b in check(so, name, a.static_cxx)]
                checked += 1
    if not checked:
        print("no shared objects found", file=sys.stderr)
        return 1
    for b in bad:
        print("FAIL", b, file=sys.stderr)
    print(f"{checked} shared object(s): {'OK for manylinux_2_28' if not bad else f'{len(bad)} violation(s)'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
