"""Per-call time of small attention calls: decoding steps (one query row per head, GQA 32/8,
D = 128) on short caches, where the time outside the kernels shows. flashattn_ext's
scaled_dot_product_attention against torch's (default CPU dispatch), same process, same threads,
alternating, medians of many calls, in microseconds per call; under torch.no_grad (inference).

    python bench/bench_overhead.py [--threads 1] [--calls 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import flashattn_ext as fa  # noqa: E402


def per_call(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=2000, help="calls per timed batch")
    ap.add_argument("--keys", type=int, nargs="*", default=[16, 256, 2048])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fa.set_num_threads(args.threads)
    print(f"flashattn_ext {fa.__version__}, torch {torch.__version__}, {args.threads} thread(s); "
          "microseconds per call, median of 7 alternated batches")
    print(f"{'case':34s} {'dtype':9s} {'ours':>8s} {'torch':>8s} {'ratio':>7s}")
    g = torch.Generator().manual_seed(0)
    for sk in args.keys:
        for dtype in (torch.float32, torch.bfloat16):
            q = torch.randn(1, 32, 1, 128, generator=g).to(dtype)
            k = torch.randn(1, 8, sk, 128, generator=g).to(dtype)
            v = torch.randn(1, 8, sk, 128, generator=g).to(dtype)
            fns = {"ours": lambda: fa.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                   "torch": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)}
            times = {name: [] for name in fns}
            with torch.no_grad():
                for fn in fns.values():
                    per_call(fn, 20)
                calls = max(20, args.calls * 16 // max(sk, 16))
                for _ in range(7):
                    for name, fn in fns.items():
                        times[name].append(per_call(fn, calls))
            ours, theirs = (statistics.median(times[n]) for n in ("ours", "torch"))
            case = f"decode Hq32/Hkv8 D128 Sk {sk}"
            print(f"{case:34s} {str(dtype)[6:]:9s} {ours:8.1f} {theirs:8.1f} {theirs / ours:6.2f}x")


if __name__ == "__main__":
    main()
