"""python -m flashattn_ext: the library's main job, in three parts:

  report      what this build contains (version, compiler, CPU instruction sets, CUDA backend
              and architectures, emulator, threads);
  self-check  a few attention calls against a naive float64 reference (exit status 1 if one
              exceeds its tolerance);
  benchmark   forward and forward+backward against torch's own scaled_dot_product_attention
              (needs torch), one progress line per case; --csv writes the rows, --png plots
              them (the plot needs matplotlib, which is optional).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from typing import Callable, Dict, List

import numpy as np

import flashattn_ext as fa


def _reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
    """Naive float64 attention for (S, D) inputs, causal aligned bottom-right."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    s = q @ k.T / math.sqrt(q.shape[1])
    if causal:
        sq, sk = s.shape
        s = np.where(np.arange(sk)[None, :] <= np.arange(sq)[:, None] + sk - sq, s, -np.inf)
    m = s.max(axis=1, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(m), m, 0))
    l = p.sum(axis=1, keepdims=True)
    return (p / np.where(l > 0, l, 1)) @ v


def self_check() -> bool:
    rng = np.random.default_rng()
    ok = True
    for sq, sk, d, causal, dtype, tol in [(97, 131, 64, True, np.float32, 1e-5),
                                          (33, 17, 80, False, np.float64, 1e-12),
                                          (1, 257, 128, True, np.float32, 1e-5)]:
        q = rng.standard_normal((sq, d)).astype(dtype)
        k, v = (rng.standard_normal((sk, d)).astype(dtype) for _ in range(2))
        err = float(np.abs(fa.attention(q, k, v, causal=causal) - _reference(q, k, v, causal)).max())
        good = err <= tol
        ok &= good
        print(f"  self-check Sq={sq} Sk={sk} D={d} causal={causal} {np.dtype(dtype).name}: "
              f"max error {err:.2e} (tolerance {tol:.0e}) {'ok' if good else 'FAILED'}")
    return ok


def _median_time(fn: Callable[[], object], reps: int) -> float:
    fn()
    times: List[float] = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def benchmark(reps: int, seqlen: int) -> List[Dict[str, object]]:
    """Times each case, printing one line per case as it finishes; returns the rows."""
    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        print("benchmark: torch is not installed; skipped (pip install flashattn_ext[torch])")
        return []
    print(f"benchmark: median of {reps} runs, {fa.get_num_threads()} threads, GFLOP/s "
          f"(causal counts half the score matrix), ratio = flashattn_ext / torch SDPA(flash)")
    cases = [(1, 8, seqlen, 64, causal, dtype, direction)
             for causal, dtype in ((False, torch.float32), (True, torch.float32),
                                   (False, torch.bfloat16))
             for direction in ("fwd", "fwd+bwd")]
    rows: List[Dict[str, object]] = []
    for n, (b, h, s, d, causal, dtype, direction) in enumerate(cases, 1):
        q, k, v = (torch.randn(b, h, s, d, dtype=dtype, requires_grad=True) for _ in range(3))
        dout = torch.randn(b, h, s, d, dtype=dtype)
        flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0) * (3.5 if direction != "fwd" else 1)
        ours = lambda: fa.scaled_dot_product_attention(q, k, v, is_causal=causal)

        def theirs():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

        def timed(f: Callable[[], object]) -> float:
            if direction == "fwd":
                return _median_time(lambda: f().detach(), reps)
            return _median_time(lambda: torch.autograd.grad(f(), (q, k, v), dout), reps)

        t_ours, t_torch = timed(ours), timed(theirs)
        row = dict(case=f"B{b} H{h} S{s} D{d} {'causal' if causal else 'full'} {str(dtype)[6:]}",
                   batch=b, heads=h, seqlen=s, head_dim=d, causal=causal,
                   dtype=str(dtype)[6:], direction=direction,
                   flashattn_ext_gflops=round(flops / t_ours / 1e9, 2),
                   torch_gflops=round(flops / t_torch / 1e9, 2),
                   ratio=round(t_torch / t_ours, 3))
        rows.append(row)
        print(f"  [{n}/{len(cases)}] {row['case']:32s} {direction:8s} "
              f"flashattn_ext {row['flashattn_ext_gflops']:8.1f}  torch "
              f"{row['torch_gflops']:8.1f}  {row['ratio']:5.2f}x", flush=True)
    return rows


def write_csv(rows: List[Dict[str, object]], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"benchmark rows written to {path}")


def write_png(rows: List[Dict[str, object]], path: str) -> None:
    """GFLOP/s of both implementations per case, when matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: {path} not written (pip install matplotlib)")
        return
    labels = [f"{'causal' if r['causal'] in (True, 'True') else 'full'} {r['dtype']}\n"
              f"{r['direction']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows)), 4.5))
    for offset, key, name in ((-0.2, "flashattn_ext_gflops", "flashattn_ext"),
                              (0.2, "torch_gflops", "torch SDPA")):
        ax.bar(x + offset, [float(r[key]) for r in rows], width=0.4, label=name)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("GFLOP/s")
    r = rows[0]
    ax.set_title(f"flashattn_ext {fa.__version__} vs torch SDPA, B={r['batch']} H={r['heads']} "
                 f"S={r['seqlen']} D={r['head_dim']}, {fa.get_num_threads()} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"benchmark plot written to {path}")


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashattn_ext", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-bench", action="store_true", help="report and self-check only")
    parser.add_argument("--reps", type=int, default=5, help="benchmark repetitions (median)")
    parser.add_argument("--seqlen", type=int, default=1024, help="benchmark sequence length")
    parser.add_argument("--csv", metavar="PATH", help="write the benchmark rows as CSV")
    parser.add_argument("--png", metavar="PATH",
                        help="plot the benchmark rows (needs matplotlib; skipped without it)")
    args = parser.parse_args(argv)
    for name in ("reps", "seqlen"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected a positive int, got {getattr(args, name)}")
    info = fa.build_info()
    print(f"flashattn_ext {info['version']}")
    for key, value in info.items():
        if key != "version":
            print(f"  {key}: {value}")
    ok = self_check()
    rows = [] if args.no_bench else benchmark(args.reps, args.seqlen)
    if rows and args.csv:
        write_csv(rows, args.csv)
    if rows and args.png:
        write_png(rows, args.png)
    print("self-check passed" if ok else "self-check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
