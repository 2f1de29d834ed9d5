#!/usr/bin/env bash
# NEON path: cross-compiles the CPU backend and fae_cpu_test for aarch64 with Debian's cross
# compiler and runs the test under qemu-user through ctest (CMAKE_CROSSCOMPILING_EMULATOR).
# Installs g++-aarch64-linux-gnu and qemu-user from Debian when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends g++-aarch64-linux-gnu qemu-user >/dev/null; }; then
    echo "NEON check SKIPPED: could not install g++-aarch64-linux-gnu and qemu-user from Debian"
    exit 0
  fi
fi
t1=$(date +%s)
build=$(mktemp -d)
cmake -S .ci/neon -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
  "-DCMAKE_CROSSCOMPILING_EMULATOR=qemu-aarch64;-L;/usr/aarch64-linux-gnu" >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null
t2=$(date +%s)
if ! ctest --test-dir "$build" -V >"$build/ctest.log" 2>&1; then
  cat "$build/ctest.log"
  exit 1
fi
grep -E "== fae_cpu_test|passed|failed" "$build/ctest.log"
echo "NEON: install $((t1 - t0)) s, cross build $((t2 - t1)) s, test under qemu $(( $(date +%s) - t2 )) s"
rm -rf "$build"
