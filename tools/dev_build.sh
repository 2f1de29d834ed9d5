#!/usr/bin/env bash
# Development build: compiles the extension modules into python/flashattn_ext so that
# `PYTHONPATH=python python -m pytest tests` runs against the working tree.
# Usage: bash tools/dev_build.sh [extra cmake -D options]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${FAE_BUILD_DIR:-build/dev}
cmake -S . -B "$build" -G Ninja -DFAE_DEV_INPLACE=ON -DCMAKE_BUILD_TYPE=Release \
  -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python)" "$@" >/dev/null
cmake --build "$build" -j "${FAE_JOBS:-2}"
