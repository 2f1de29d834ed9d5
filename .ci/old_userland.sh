#!/usr/bin/env bash
# Runs flashattn_ext in an older Linux userland: a Debian 11 root file system (glibc 2.31, Python
# 3.9, libstdc++ of GCC 10) made with debootstrap, entered with chroot (needs root). _C is built
# for that root's Python with the wheel's link settings (FLASHATTN_EXT_STATIC_CXX_RUNTIME=ON,
# FLASHATTN_EXT_GLIBC=2.28; CPU only), then imported there, checked against numpy in float64 and
# run with `python -m flashattn_ext`. Not part of .ci/run (a few minutes, root, network to
# deb.debian.org). Usage: bash .ci/old_userland.sh   (FAE_OLD_ROOT: where the root is kept)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
root=${FAE_OLD_ROOT:-$src/build/old-userland/root}
build=$src/build/old-userland/build
if [ ! -x "$root/usr/bin/python3.9" ]; then
  debootstrap --variant=minbase --include=python3,python3-numpy,libpython3.9-dev bullseye "$root" \
    http://deb.debian.org/debian
fi
# The root's interpreter, for CMake's and pybind11's questions; cmake/glibc_stubs.py runs on the
# build machine's (it reads the build machine's glibc).
py=$src/build/old-userland/python3.9
mkdir -p "$(dirname "$py")"
printf '#!/bin/sh\ncase "$1" in *glibc_stubs.py) exec python3 "$@";; esac\nexec chroot %s /usr/bin/python3.9 "$@"\n' \
  "$root" >"$py"
chmod +x "$py"
cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHATTN_EXT_CUDA=OFF \
  -DFLASHATTN_EXT_EMULATOR=OFF -DFLASHATTN_EXT_TESTS=OFF -DFLASHATTN_EXT_STATIC_CXX_RUNTIME=ON \
  -DFLASHATTN_EXT_GLIBC=2.28 -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$py" \
  -DPython_INCLUDE_DIR="$root/usr/include/python3.9" -DCMAKE_CXX_FLAGS="-idirafter $root/usr/include" >/dev/null
cmake --build "$build" -j "${FAE_JOBS:-2}"
python3 "$src/tools/check_symbols.py" --static-cxx "$build"/_C.*.so
rm -rf "$root/opt/fae" && mkdir -p "$root/opt/fae"
cp -r "$src/python/flashattn_ext" "$build"/_C.*.so "$root/opt/fae/"
mv "$root"/opt/fae/_C.*.so "$root/opt/fae/flashattn_ext/"
# The numpy float64 check of .ci/dist.sh, taken from there.
sed -n "/^smoke='/,/^'$/p" "$src/.ci/dist.sh" | sed '1d;$d' >"$root/opt/fae/smoke.py"
echo "== in the root: $(chroot "$root" ldd --version | head -n 1)"
chroot "$root" /bin/sh -c 'cd /tmp && PYTHONPATH=/opt/fae python3 /opt/fae/smoke.py /opt/fae &&
  PYTHONPATH=/opt/fae python3 -m flashattn_ext --reps 1'
