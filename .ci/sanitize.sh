#!/usr/bin/env bash
# The C++ tests (fae_cpu_test, fae_pool_test, fae_philox_test; fae_emu_test with FAE_ASAN_EMU=1 / FAE_TSAN_EMU=1)
# built and run with AddressSanitizer + UndefinedBehaviorSanitizer and with ThreadSanitizer. Each build has its own
# directory (FAE_SANITIZE_DIR, default build/sanitize) and builds only the test executables.
# The emulator's fibers tell both sanitizers about every stack switch (csrc/emu/fiber.cpp).
# Usage: bash .ci/sanitize.sh [asan|tsan]...   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
root=${FAE_SANITIZE_DIR:-build/sanitize}
jobs=${FAE_JOBS:-2}
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(asan tsan)

# A sanitizer report is a failure: halt on the first one, with a non-zero exit code.
export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1:check_initialization_order=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# die_after_fork=0: fae_pool_test starts threads in a child forked from a threaded parent.
export TSAN_OPTIONS=halt_on_error=1:die_after_fork=0:second_deadlock_stack=1

for kind in "${kinds[@]}"; do
  case $kind in
    asan) flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined" ;;
    tsan) flags="-fsanitize=thread" ;;
    *) echo "unknown sanitizer '$kind': expected asan or tsan" >&2; exit 2 ;;
  esac
  t0=$(date +%s)
  build=$root/$kind
  # By default both build and run the CPU tests only: building the emulator's kernel instances
  # under AddressSanitizer took 13 of CI's minutes (2 cores) and fae_emu_test ran past its 900 s
  # timeout under ThreadSanitizer. FAE_ASAN_EMU=1 / FAE_TSAN_EMU=1 (set by .ci/run with
  # FAE_CI_FULL=1) add the emulator tests; the emulator's own checked pointers bound every
  # kernel access in the default test run.
  emu=OFF targets=(fae_cpu_test fae_pool_test fae_philox_test)
  want=FAE_${kind^^}_EMU
  if [ "${!want:-0}" = 1 ]; then emu=ON targets=(fae_cpu_test fae_pool_test fae_philox_test fae_emu_test); fi
  cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DFLASHATTN_EXT_CUDA=OFF -DFLASHATTN_EXT_EMULATOR=$emu -DFLASHATTN_EXT_TESTS=ON \
    "-DCMAKE_CXX_FLAGS=$flags -fno-omit-frame-pointer" "-DCMAKE_EXE_LINKER_FLAGS=$flags" \
    -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python3)" >/dev/null
  cmake --build "$build" -j "$jobs" --target "${targets[@]}" >/dev/null
  t1=$(date +%s)
  ctest --test-dir "$build" --output-on-failure
  echo "sanitizer $kind: build $((t1 - t0)) s, tests $(( $(date +%s) - t1 )) s"
done
