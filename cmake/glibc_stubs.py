"""Link-time stand-ins for an older glibc, made from the build machine's own glibc.

A program linked against glibc records, for each C library function it calls, the newest version
of that function the linked library offers (pthread_create@GLIBC_2.34 on glibc 2.36), and will not
load where that version is missing. glibc keeps every old version of a function it ever exported,
so the versions an older glibc offered can be read off the build machine's libraries: this script
writes stub libraries that define each symbol only in its versions up to TARGET (the newest of
those as the default), and linker scripts that make `-lc -lm -lpthread -ldl -lrt` find them.
Linking with `-L OUTDIR` then binds every call to a version TARGET has, and a symbol TARGET lacks
stays unresolved (tools/check_symbols.py fails on it). The stubs are never loaded at run time.

Usage: python glibc_stubs.py TARGET OUTDIR --cc COMPILER     (TARGET like 2.28)
"""
import argparse
import pathlib
import re
import subprocess

LIBS = ("libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1")


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def stub(cc: str, path: pathlib.Path, out: pathlib.Path, target: tuple[int, ...]) -> None:
    """Writes out/<soname>: the symbols of the library at path, in versions <= target only."""
    syms: dict[str, list[tuple[tuple[int, ...], str, int]]] = {}
    for line in run("readelf", "--dyn-syms", "-W", str(path)).splitlines():
        f = line.split()
        m = re.fullmatch(r"(\w+)@@?GLIBC_([\d.]+)", f[7]) if len(f) == 8 and f[6] != "UND" else None
        if m and f[3] in ("FUNC", "IFUNC", "OBJECT") and version(m[2]) <= target:
            syms.setdefault(m[1], []).append((version(m[2]), f[3], int(f[2], 0)))
    asm, nodes = [], set()
    for i, (name, vers) in enumerate(sorted(syms.items())):
        newest = max(v for v, _, _ in vers)
        for j, (v, kind, size) in enumerate(sorted(set(vers))):
            label, ver = f"fae_stub_{i}_{j}", "GLIBC_" + ".".join(map(str, v))
            nodes.add(v)
            if kind == "OBJECT":
                asm += [".data", f".type {label}, %object", f".size {label}, {max(size, 1)}",
                        f"{label}: .zero {max(size, 1)}"]
            else:
                asm += [".text", f".type {label}, %function", f"{label}:"]
            asm += [f".globl {label}", f".symver {label}, {name}@{'@' if v == newest else ''}{ver}, remove"]
    soname = path.name
    src, script = out / f"{soname}.s", out / f"{soname}.map"
    src.write_text("\n".join(asm) + "\n")
    # One node per version (".symver ..., remove" drops the labels themselves).
    script.write_text("".join(f"GLIBC_{'.'.join(map(str, v))} {{ }};\n" for v in sorted(nodes)))
    run(cc, "-shared", "-nostdlib", "-o", str(out / soname), f"-Wl,-soname,{soname}",
        f"-Wl,--version-script={script}", str(src))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", help="glibc version to link against, like 2.28")
    ap.add_argument("outdir", type=pathlib.Path)
    ap.add_argument("--cc", default="cc", help="the C or C++ compiler that links the modules")
    a = ap.parse_args()
    a.outdir.mkdir(parents=True, exist_ok=True)
    host = {name: pathlib.Path(run(a.cc, f"-print-file-name={name}").strip()) for name in LIBS}
    interp = re.search(r"\[(ld-linux[^\]]*)\]", run("readelf", "-d", str(host["libc.so.6"])))
    assert interp, "libc.so.6 names no ld-linux dynamic loader"
    host[interp[1]] = pathlib.Path(run(a.cc, f"-print-file-name={interp[1]}").strip())
    for path in host.values():
        stub(a.cc, path, a.outdir, version(a.target))
    # -lc: the stub, the build machine's libc_nonshared.a (static helpers: atexit, ...), the loader.
    nonshared = run(a.cc, "-print-file-name=libc_nonshared.a").strip()
    (a.outdir / "libc.so").write_text(
        f"GROUP ( {a.outdir / 'libc.so.6'} {nonshared} AS_NEEDED ( {a.outdir / interp[1]} ) )\n")
    for name in LIBS[1:]:
        (a.outdir / name.split(".so")[0]).with_suffix(".so").write_text(f"INPUT ( {a.outdir / name} )\n")


if __name__ == "__main__":
    main()
