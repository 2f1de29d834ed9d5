"""Mutation check of the CUDA kernels against the emulator tests.

Each mutant below is one realistic source edit to the kernels (csrc/cuda/flash): a bug a GPU
would show a user as a wrong result, a crash or a slowdown. They are applied one at a time to a
scratch copy of the repository, rebuilt incrementally in one persistent build directory, and run
against the tests that exercise the kernels on the SIMT emulator, fastest first, stopping at the
first failure:

  1. ctest fae_emu_test                            (C++, a few seconds)
  2. pytest tests/emu/test_emu_edges.py            (edge-tile sweep)
  3. pytest tests/test_attention.py test_nan.py test_nn.py test_api.py -k emu
                                                   (numerical tests, FLASHATTN_EXT_BACKEND=emu)
  4. pytest tests/test_attn_mask.py test_score_mods.py test_dropout.py test_masked.py -k FEATURE_K
                                                   (the feature (kMod) instances: explicit masks,
                                                   softcap, ALiBi, dropout; under a minute)
  5. pytest tests/emu                              (the emulator's own tests; nvcc ones excluded)

A mutant is *caught* when some stage fails (a test failure, an emulator error or a timeout),
*missed* when every stage passes, *build-failed* when it does not compile (not counted in the
catch rate). The unmutated copy must pass every stage first.

Run by hand or nightly (not in CI: over an hour on 2 cores):
    python tools/mutate.py                 # every mutant
    python tools/mutate.py --list          # the mutants
    python tools/mutate.py NAME...         # some of them
Options: --scratch DIR (default build/mutate), --jobs N (default 2), --timeout S per stage,
--long (the edge sweep in full: FLASHATTN_EXT_LONG_TESTS=1). Exit status 1 when a mutant is
missed."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
FWD, BWD = "csrc/cuda/flash/fwd_kernel.cuh", "csrc/cuda/flash/bwd_kernel.cuh"
MASK, MODS = "csrc/cuda/flash/attn_mask.cuh", "csrc/cuda/flash/score_mod.cuh"
DROP, INTERP = "csrc/cuda/flash/dropout.cuh", "csrc/cuda/flash/interp_kernels.cuh"


class Mutant(NamedTuple):
    name: str
    file: str
    old: str
    new: str
    what: str


MUTANTS = [
    # --- forward kernel ---
    Mutant("fwd-whole-tile-hi", FWD, "int((first.hi + 1) / BN)", "int((first.hi + 2) / BN)",
           "'whole tile, skip the mask' range ends one key late: a tile the first row sees only in part runs unmasked"),
    Mutant("fwd-whole-tile-lo", FWD, "int f_lo = int((last.lo + BN - 1) / BN);",
           "int f_lo = int((first.lo + BN - 1) / BN);",
           "'whole tile' range starts at the left window edge of the block's first row, not its last"),
    Mutant("fwd-no-sync-k", FWD, "      __syncthreads();     // ... for every thread, and every warp is done with V_{j-1}\n",
           "", "missing __syncthreads: warps read K_j copied by other threads, and V_j overwrites V_{j-1} in use"),
    Mutant("fwd-no-sync-v", FWD, "      __syncthreads();     // ... for every thread, and every warp is done with K_j\n",
           "", "missing __syncthreads: warps read V_j copied by other threads, and K_{j+1} overwrites K_j in use"),
    Mutant("fwd-wait-k", FWD, "cp_async_wait<0>();  // K_j has landed", "cp_async_wait<1>();  // K_j has landed",
           "cp.async wait count lets K_j still be in flight"),
    Mutant("fwd-wait-v", FWD, "cp_async_wait<0>();  // V_j has landed", "cp_async_wait<1>();  // V_j has landed",
           "cp.async wait count lets V_j still be in flight"),
    Mutant("fwd-rescale-sum", FWD, "            row_sum[mi][hh] *= alpha;\n", "",
           "running softmax sum not rescaled when the row max moves"),
    Mutant("fwd-rescale-out", FWD, "              acc_o[mi][nt][2 * hh + 1] *= alpha;\n", "",
           "odd output columns not rescaled when the row max moves"),
    Mutant("fwd-lazy-never", FWD, "grow |= needs_rescale(m2[mi][hh], m_new[mi][hh]);",
           "grow |= m2[mi][hh] == neg_inf<float>() && m_new[mi][hh] != neg_inf<float>();",
           "lazy rescaling that never moves a row's reference max after its first finite score"),
    Mutant("fwd-scale-log2", "csrc/cuda/flash/fwd_launch.cuh", "ScoreScale::of(p.scale_log2)", "ScoreScale::of(p.scale)",
           "scores scaled by the natural-log scale in the exp2 domain"),
    Mutant("fwd-sum-unreduced", FWD, "const float sum = quad_sum(row_sum[mi][hh]);",
           "const float sum = row_sum[mi][hh];", "out and lse from the thread's partial row sum instead of the quad-reduced one"),
    Mutant("fwd-p-fragment", FWD,
           "const int hh = i % 2;\n            const float(&x)[4] = s[mi][2 * kk + i / 2];",
           "const int hh = i / 2;\n            const float(&x)[4] = s[mi][2 * kk + i % 2];",
           "P's A fragment with registers 1 and 2 swapped (rows g+8 and keys 8..15 exchanged)"),
    Mutant("fwd-mask-row", FWD, "diag = col - mi * 16 - 8 * (i / 2)", "diag = col - mi * 16 - 8 * (i % 2)",
           "mask reads an accumulator's row (g or g+8) from its column bit"),
    Mutant("fwd-mask-end", FWD, "const int end = keys_in(j) - 2 * t;", "const int end = keys_in(j) - 2 * t + 1;",
           "mask lets a row see one zero-filled key past the end of the keys"),
    Mutant("fwd-exp-base", FWD, "base[mi][hh] = exp_base(m2[mi][hh]);", "base[mi][hh] = m2[mi][hh];",
           "no guard for a row with no visible key yet: exp2(-inf - -inf) = NaN"),
    Mutant("fwd-k-prefetch", FWD, "next, kb + next * k_step);", "next, kb + (j + 1) * k_step);",
           "next K tile taken as j + 1 instead of the next tile of the schedule (masked tiles run top down)"),
    Mutant("fwd-span-last-row", FWD, "last = keys_of(m0 + rows_valid - 1)",
           "last = keys_of(m0 + rows_valid - 2)", "key span of a query tile leaves out its last row"),
    Mutant("fwd-gqa", FWD, "hk = h / int(p.heads_q / p.heads_kv)", "hk = h % int(p.heads_kv)",
           "forward GQA: query head h reads kv head h % Hkv instead of h / group"),
    Mutant("fwd-q-sign", FWD, "if (sc.q_sign != 1.0f) {", "if (sc.q_sign == 0.0f) {",
           "Q not negated for a negative scale (the row max is then taken on the wrong side)"),
    Mutant("fwd-lse-rows", FWD, "if (t == 0 && r < rows_valid)", "if (t == 0)",
           "lse written for the padding rows of the last query tile too (past the end of lse)"),
    Mutant("fwd-zero-fill", "csrc/cuda/flash/common.cuh", "const bool ok = r < valid;",
           "const bool ok = r <= valid;", "tile load reads one row past the valid rows instead of zero-filling"),
    Mutant("fwd-grid", "csrc/cuda/flash/fwd_launch.cuh",
           "m_blocks = (p.seqlen_q + bm - 1) / bm;", "m_blocks = p.seqlen_q / bm;",
           "forward grid rounds down: the last partial query tile is never computed"),
    Mutant("fwd-no-padding", "csrc/cuda/flash/fwd_traits.h",
           "static constexpr int kRowStride = HeadDim + 8;",
           "static constexpr int kRowStride = HeadDim;",
           "shared-memory row padding removed: ldmatrix bank conflicts (slow, results unchanged)"),
    Mutant("fwd-smem-size", "csrc/cuda/flash/fwd_traits.h", "(kSmemQ + 2 * kSmemKV) * sizeof(T)",
           "(kSmemQ + kSmemKV) * sizeof(T)", "dynamic shared memory sized without the V tile"),
    # --- backward kernels ---
    Mutant("bwd-dq-plain-add", BWD,
           "atomicAdd(dq_tile + (mt * 16 * D + (pass * DQ / 8 + nt) * 128 + i * 32), acc_dq[mt][nt][i]);",
           "dq_tile[mt * 16 * D + (pass * DQ / 8 + nt) * 128 + i * 32] += acc_dq[mt][nt][i];",
           "dQ accumulated with a plain += instead of atomicAdd: a race between key blocks"),
    Mutant("bwd-gqa", BWD, "const int h0 = hk * group, t_last", "const int h0 = hk, t_last",
           "backward GQA: kv head hk takes query heads hk, hk + 1, ... instead of its group"),
    Mutant("bwd-first-row", BWD, "visible_rows(n0, m).lo", "visible_rows(n0 + 1, m).lo",
           "key block's first query row taken from its second key (off by one)"),
    Mutant("bwd-whole-tiles", BWD, "int((last + 1) / BM) - 1;", "int((last + 1) / BM);",
           "'whole tile, skip the mask' range ends one query tile late: a tile whose last rows miss keys runs unmasked"),
    Mutant("bwd-mask-key", BWD, "b = hi + d < cap ? hi + d : cap;", "b = hi + d + 1 < cap ? hi + d + 1 : cap;",
           "masked tiles let a row see one key past its last"),
    Mutant("bwd-no-sync-ps", BWD, "        __syncthreads();\n        // dV += P^T.dO and dK", "        // dV += P^T.dO and dK",
           "missing __syncthreads: dV, dK and dQ read P and dS before every warp has written them"),
    Mutant("bwd-no-sync-load", BWD, "        cp_async_wait<0>();\n        __syncthreads();  // this tile",
           "        cp_async_wait<0>();  // this tile",
           "missing __syncthreads: warps read Q, dO rows and row statistics other threads still copy"),
    Mutant("bwd-stage", BWD, "        stage ^= Tr::kStages - 1;\n", "",
           "double buffering: every tile computed from the buffer of the first, the prefetch overwrites it"),
    Mutant("bwd-ds", BWD, "pt * (tile.dp[mt][nt][2 * r + c] - st.z)", "pt * tile.dp[mt][nt][2 * r + c] - st.z",
           "dS = P * dP - delta instead of P * (dP - delta)"),
    Mutant("bwd-scale-log2", BWD, "return fast_exp2(s * scale_log2 - lse2);",
           "return fast_exp2(s * scale_log2 * 0.6931472f - lse2);", "P recomputed with the natural-log scale"),
    Mutant("bwd-dlse-sign", BWD, "st.z -= dlse[", "st.z += dlse[",
           "delta adds the lse gradient instead of subtracting it"),
    Mutant("bwd-dq-scale", BWD, "const float c = p.scale;", "const float c = 1.0f;",
           "dQ not multiplied by the softmax scale"),
    Mutant("bwd-ds-fragment", BWD,
           "base + (ks * 16 + (lane / 16) * 8 + lane % 8) * ld + mt * 16 + ((lane / 8) & 1) * 8",
           "base + (ks * 16 + ((lane / 8) & 1) * 8 + lane % 8) * ld + mt * 16 + (lane / 16) * 8",
           "P^T and dS^T fragments of dV and dK with the ldmatrix row and column selectors swapped"),
    Mutant("bwd-row-stats-sync", BWD, "      __syncthreads();  // sK, sV are refilled next\n", "",
           "missing __syncthreads in the row statistics: K, V refilled while other warps read them"),
    # --- feature (kMod) instances: explicit masks, softcap, ALiBi, dropout, attention weights ---
    Mutant("fwd-mask-stage-key", FWD, "mask_row_offset(p, b, h, m0) + int64_t(j) * BN,",
           "mask_row_offset(p, b, h, m0) + int64_t(j_lo) * BN,",
           "forward's staged mask tile always copied from the block's first key tile, not tile j"),
    Mutant("bwd-mask-stage-query", BWD, "mask_row_offset(p, b, h0 + head, m) + n0",
           "mask_row_offset(p, b, h0 + head, int64_t(t_first) * BM) + n0",
           "backward's staged mask tile copied from the key block's first query tile for every query tile"),
    Mutant("mask-staged-row", MASK, "(mt * 16 + 8 * r) * Tile::kLdKeep", "(mt * 16) * Tile::kLdKeep",
           "staged boolean mask read at fragment row g for row g + 8 as well"),
    Mutant("mask-stage-key-fill", MASK, "bytes = !KeyBound || left >= 16 ? 16 : left > 0 ? left : 0;",
           "bytes = 16;", "mask stage copies whole chunks past Sk instead of zero-filling them (reads past the mask)"),
    Mutant("mask-bool-sense", MASK, "if (p.mask_bool) return load_nc(keep + at) != 0 ? 0.0f : neg_inf<float>();",
           "if (p.mask_bool) return load_nc(keep + at) == 0 ? 0.0f : neg_inf<float>();",
           "boolean mask's sense inverted on the entry-at-a-time path (strided views, tile edges, row statistics)"),
    Mutant("fwd-alibi-key", FWD, "int(alibi_position(m0 + wrow + g, seq.seqlen_q, seq.seqlen_k) - int64_t(j) * BN), 2 * t);",
           "int(alibi_position(m0 + wrow + g, seq.seqlen_q, seq.seqlen_k) - int64_t(j) * BN), 2 * t + 1);",
           "forward ALiBi distance off by one: key 2t taken as 2t + 1"),
    Mutant("bwd-alibi-sign", MODS, "return x - slope2 * fabsf(dist);", "return x + slope2 * fabsf(dist);",
           "backward's ALiBi bias with the wrong sign (+slope |pos - key|)"),
    Mutant("softcap-after-alibi", MODS,
           "    cap(s);\n    if (slope2 != 0.0f)\n#pragma unroll\n      for (int mt = 0; mt < MT; ++mt)\n#pragma unroll\n"
           "        for (int nt = 0; nt < NT; ++nt)\n#pragma unroll\n          for (int i = 0; i < 4; ++i) "
           "s[mt][nt][i] = bias(s[mt][nt][i], slope2, pos0 + mt * 16 + 8 * (i / 2), key0 + nt * 8 + i % 2);\n",
           "    if (slope2 != 0.0f)\n#pragma unroll\n      for (int mt = 0; mt < MT; ++mt)\n#pragma unroll\n"
           "        for (int nt = 0; nt < NT; ++nt)\n#pragma unroll\n          for (int i = 0; i < 4; ++i) "
           "s[mt][nt][i] = bias(s[mt][nt][i], slope2 / scale2, pos0 + mt * 16 + 8 * (i / 2), key0 + nt * 8 + i % 2);\n"
           "    cap(s);\n",
           "softcap applied after the ALiBi bias (the bias capped too) in the forward and the row statistics"),
    Mutant("bwd-softcap-grad", BWD, "*= mods.grad(capped[nt][c]);", "*= 1.0f;",
           "backward's dS not multiplied by the softcap's derivative 1 - tanh^2"),
    Mutant("dropout-partner", DROP,
           "const uint32_t lo = (odd ? other : own) >> (2 * odd), hi = (odd ? own : other) >> (2 * odd);",
           "const uint32_t lo = (odd ? own : other) >> (2 * odd), hi = (odd ? other : own) >> (2 * odd);",
           "dropout keep bits of the own and the partner lane's (shuffled) rows exchanged: rows g and g + 8 swapped"),
    Mutant("dropout-drawn-seed", DROP, "return Key{r.x, r.y, r.z};",
           "return Key{uint32_t(seed), uint32_t(seed >> 32), r.z};",
           "Dropout::key takes the parameters' seed instead of the one drawn on the device"),
    Mutant("bwd-dropout-scale", BWD,
           "x[nt][2 * r + c] = drop.apply(x[nt][2 * r + c], keep[mt], nt, 2 * r + c);",
           "x[nt][2 * r + c] = Dropout::kept(keep[mt], nt, 2 * r + c) ? x[nt][2 * r + c] : 0.0f;",
           "backward drops entries without the 1 / (1 - p) scale of the kept ones"),
    Mutant("interp-no-alibi", INTERP, "        x = ScoreMods::bias(x, slope2, int(apos[i >> 1]), int(key));\n", "",
           "attention-weights kernel (return_attn_probs) without the ALiBi bias"),
]

# The feature tests' emulator cases: the backend fixture's "emu" ids, the tests that set the
# emulator themselves ("emulated", "emulator" in their names, where="emu"), and the dropout tests
# that compare the emulated kernels' keep mask and NaNs with the CPU kernels'.
FEATURE_K = "emu or cuda_keep_mask or nan_reaches"
STAGES: List[Tuple[str, List[str]]] = [
    ("fae_emu_test", ["ctest", "--test-dir", "{build}", "-R", "^fae_emu_test$", "--output-on-failure"]),
    ("edge sweep", ["{py}", "-m", "pytest", "tests/emu/test_emu_edges.py"]),
    ("emu numerical", ["{py}", "-m", "pytest", "tests/test_attention.py", "tests/test_nan.py",
                       "tests/test_nn.py", "tests/test_api.py", "-k", "emu"]),
    ("emu features", ["{py}", "-m", "pytest", "tests/test_attn_mask.py", "tests/test_score_mods.py",
                      "tests/test_dropout.py", "tests/test_masked.py", "-k", FEATURE_K]),
    ("emulator", ["{py}", "-m", "pytest", "tests/emu", "--ignore=tests/emu/test_emu_edges.py",
                  "--ignore=tests/emu/test_emu_nvcc.py"]),
]
PYTEST_FLAGS = ["-x", "-q", "-p", "no:cacheprovider"]


def run(cmd: List[str], cwd: Path, env: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None) -> Tuple[int, str]:
    try:
        res = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timeout after {timeout:.0f} s"
    return res.returncode, res.stdout


def sync_scratch(scratch: Path) -> None:
    """Copies the repository's files (tracked and untracked-but-not-ignored, as they are in the
    working tree) into `scratch`, touching only files whose content differs so that the build
    stays incremental; files gone from the repository since the last sync are removed."""
    code, out = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT)
    if code:
        sys.exit(f"git ls-files failed:\n{out}")
    files = sorted({f for f in out.split("\0") if f and (ROOT / f).is_file()})
    manifest = scratch / ".mutate-files"
    old = set(manifest.read_text().split("\n")) if manifest.exists() else set()
    for f in old - set(files) - {""}:
        (scratch / f).unlink(missing_ok=True)
    for f in files:
        src, dst = ROOT / f, scratch / f
        data = src.read_bytes()
        if not dst.exists() or dst.read_bytes() != data:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
            shutil.copymode(src, dst)
    manifest.write_text("\n".join(files))


def configure(scratch: Path, build: Path) -> None:
    if (build / "build.ninja").exists():
        return
    code, pybind11_dir = run([sys.executable, "-m", "pybind11", "--cmakedir"], ROOT)
    if code:
        sys.exit("pybind11 is needed: pip install pybind11")
    code, out = run(["cmake", "-S", str(scratch), "-B", str(build), "-G", "Ninja",
                     "-DCMAKE_BUILD_TYPE=Release", "-DFLASHATTN_EXT_CUDA=OFF", "-DFLASHATTN_EXT_EMULATOR=ON",
                     "-DFAE_DEV_INPLACE=ON", "-DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF",  # no LTO: fast links
                     f"-Dpybind11_DIR={pybind11_dir.strip()}", f"-DPython_EXECUTABLE={sys.executable}"], ROOT)
    if code:
        sys.exit(f"cmake configure failed:\n{out}")


def build(build_dir: Path, jobs: int) -> Tuple[bool, str]:
    code, out = run(["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", "_C", "_emu",
                     "fae_emu_test"], ROOT)
    return code == 0, out


def failure_line(out: str) -> str:
    """The most telling line of a failed stage's output."""
    lines = out.strip().splitlines()
    for prefix in ("FAILED ", "E   ", "  FAIL ", "ERROR "):
        hit = next((ln for ln in lines if ln.startswith(prefix)), None)
        if hit:
            return hit.strip()[:200]
    return (lines[-1] if lines else "(no output)")[:200]


def run_stages(scratch: Path, build_dir: Path, timeout: float, long: bool) -> Optional[str]:
    """None when every stage passes, else '<stage>: <reason>' of the first that fails."""
    env = dict(os.environ, PYTHONPATH=str(scratch / "python"), FLASHATTN_EXT_BACKEND="emu")
    env.pop("FLASHATTN_EXT_LONG_TESTS", None)
    if long:
        env["FLASHATTN_EXT_LONG_TESTS"] = "1"
    for name, cmd in STAGES:
        argv = [a.format(build=build_dir, py=sys.executable) for a in cmd]
        if argv[1:3] == ["-m", "pytest"]:
            argv += PYTEST_FLAGS
        code, out = run(argv, scratch, env, timeout)
        if code:
            return f"{name}: {failure_line(out)}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="run only these mutants")
    ap.add_argument("--scratch", type=Path, default=ROOT / "build" / "mutate")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per test stage")
    ap.add_argument("--long", action="store_true", help="the full edge sweep (FLASHATTN_EXT_LONG_TESTS=1)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:22} {m.file:34} {m.what}")
        return 0
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        sys.exit(f"unknown mutants: {', '.join(sorted(unknown))} (see --list)")
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    files = list(dict.fromkeys(m.file for m in chosen))  # grouped by file: each restore rebuilds once
    chosen.sort(key=lambda m: files.index(m.file))

    scratch = args.scratch.resolve()
    build_dir = scratch / "build"
    scratch.mkdir(parents=True, exist_ok=True)
    sync_scratch(scratch)
    configure(scratch, build_dir)
    for m in chosen:
        text = (scratch / m.file).read_text()
        if text.count(m.old) != 1:
            sys.exit(f"{m.name}: its old text occurs {text.count(m.old)} times in {m.file} (must be once)")

    t0 = time.time()
    ok, out = build(build_dir, args.jobs)
    if not ok:
        sys.exit(f"the unmutated copy does not build:\n{out[-3000:]}")
    failed = run_stages(scratch, build_dir, args.timeout, args.long)
    if failed:
        sys.exit(f"the unmutated copy fails the tests ({failed}); fix that first")
    print(f"baseline: builds and passes every stage ({time.time() - t0:.0f} s)", flush=True)

    results: List[Tuple[Mutant, str, str]] = []
    for i, m in enumerate(chosen, 1):
        t1 = time.time()
        path = scratch / m.file
        original = path.read_text()
        path.write_text(original.replace(m.old, m.new))
        try:
            ok, out = build(build_dir, args.jobs)
            built = time.time()
            if not ok:
                status, why = "build-failed", failure_line(out)
            else:
                failed = run_stages(scratch, build_dir, args.timeout, args.long)
                status, why = ("caught", failed) if failed else ("missed", "every stage passed")
        finally:
            path.write_text(original)
        results.append((m, status, why))
        print(f"[{i:2}/{len(chosen)}] {status:12} {m.name:22} build {built - t1:4.0f} s, tests "
              f"{time.time() - built:4.0f} s  {why}", flush=True)

    counted = [r for r in results if r[1] != "build-failed"]
    caught = sum(r[1] == "caught" for r in counted)
    print(f"\ncaught {caught} of {len(counted)} mutants ({100 * caught / max(1, len(counted)):.0f}%), "
          f"{len(results) - len(counted)} did not build; {time.time() - t0:.0f} s in all")
    for m, status, _ in results:
        if status != "caught":
            print(f"  {status}: {m.name} ({m.file}): {m.what}")
    return 1 if any(r[1] == "missed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
