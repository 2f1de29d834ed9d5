"""CPU benchmark: flashattn_ext against torch's fused flash-attention CPU kernel.

For each case, dtype and direction (forward, forward+backward) the two implementations run in
the same process with the same threads on the same inputs, alternating, and the medians are
compared. Prints a table and writes bench_cpu.csv and bench_cpu.png (the plot needs matplotlib).

    python bench/bench_cpu.py                 # full table (a few minutes)
    python bench/bench_cpu.py --quick         # two rows, a few seconds
    python bench/bench_cpu.py --cases causal-4096 --dtypes float32 --dirs fwd

FLOP counts: forward 4*Sq*Sk*D per head over the visible (query, key) pairs, forward+backward
3.5x that (the backward does 2.5x the forward's matrix products). The decode case reports GB/s
of K, V, Q and O. "%peak" is against the machine's peaks measured at the start of the same run on
the same threads (flashattn_ext.cpu_peaks): the float32 FMA peak, the bfloat16 dot-product peak for
bfloat16 where the kernels use a native one (AVX512_BF16), the AMX tile-product peak for the
bfloat16 forward on avx512amx, the memory-bandwidth probe for decode.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import flashattn_ext  # noqa: E402


@dataclass
class Case:
    name: str
    b: int
    hq: int
    hkv: int
    sq: int
    sk: int
    d: int
    causal: bool
    decode: bool = False

    def pairs(self) -> int:
        if not self.causal:
            return self.sq * self.sk
        # top-left alignment (torch is_causal): row i sees keys 0..i
        return sum(min(i + 1, self.sk) for i in range(self.sq))

    def fwd_flops(self) -> float:
        return 4.0 * self.b * self.hq * self.pairs() * self.d

    def bytes(self, itemsize: int) -> float:
        return itemsize * self.b * self.d * (2 * self.hkv * self.sk + 2 * self.hq * self.sq)


CASES = [
    Case("noncausal-4096", 1, 8, 8, 4096, 4096, 64, False),
    Case("causal-4096", 1, 8, 8, 4096, 4096, 64, True),
    Case("noncausal-2048-d128", 1, 16, 16, 2048, 2048, 128, False),
    Case("causal-2048-d128", 1, 16, 16, 2048, 2048, 128, True),
    Case("causal-b4-512", 4, 8, 8, 512, 512, 64, True),
    Case("cross-1024x4096", 1, 8, 8, 1024, 4096, 64, False),
    Case("decode-gqa-32k", 1, 32, 8, 1, 32768, 128, False, decode=True),
]
QUICK = ["causal-b4-512", "decode-gqa-32k"]


def make_inputs(c: Case, dtype: torch.dtype, grad: bool):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(c.b, c.hq, c.sq, c.d, generator=g).to(dtype)
    k = torch.randn(c.b, c.hkv, c.sk, c.d, generator=g).to(dtype)
    v = torch.randn(c.b, c.hkv, c.sk, c.d, generator=g).to(dtype)
    do = torch.randn(c.b, c.hq, c.sq, c.d, generator=g).to(dtype)
    for t in (q, k, v):
        t.requires_grad_(grad)
    return q, k, v, do


def runner(impl: str, c: Case, q, k, v, do, backward: bool):
    gqa = c.hq != c.hkv

    def ours():
        return flashattn_ext.scaled_dot_product_attention(q, k, v, is_causal=c.causal, enable_gqa=gqa)

    def theirs():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=c.causal, enable_gqa=gqa)

    f = ours if impl == "ours" else theirs

    def run():
        if backward:
            for t in (q, k, v):
                t.grad = None
            f().backward(do)
        else:
            with torch.no_grad():
                f()
    return run


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(c: Case, dtype: torch.dtype, backward: bool, min_time: float):
    q, k, v, do = make_inputs(c, dtype, backward)
    fns = {name: runner(name, c, q, k, v, do, backward) for name in ("ours", "torch")}
    for fn in fns.values():  # warm up (thread pools, allocator)
        fn()
    once = max(timed(fns["ours"]), timed(fns["torch"]), 1e-4)
    reps = max(3, min(25, int(min_time / once)))
    times = {name: [] for name in fns}
    for _ in range(reps):  # alternate: both see the same machine state
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two small rows only")
    ap.add_argument("--cases", nargs="*", default=None, help="case names (default: all)")
    ap.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    ap.add_argument("--dirs", nargs="*", default=["fwd", "fwd+bwd"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    flashattn_ext.set_num_threads(args.threads)
    names = QUICK if args.quick else (args.cases or [c.name for c in CASES])
    cases = [c for c in CASES if c.name in names]
    min_time = 0.3 if args.quick else args.min_time

    peaks = flashattn_ext.cpu_peaks(args.threads)
    dot = peaks["bf16_dot_gflops"] if peaks["bf16_dot_native"] else None
    amx = peaks["amx_bf16_gflops"]  # avx512amx: the bfloat16 forward's products run on tiles
    print(f"flashattn_ext {flashattn_ext.__version__}, ISA {peaks['isa']}, "
          f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), {args.threads} threads, "
          f"peaks: float32 FMA {peaks['fma_gflops']:.0f} GFLOP/s, bfloat16 dot "
          f"{'not available' if dot is None else f'{dot:.0f} GFLOP/s'}"
          f"{'' if amx is None else f', bfloat16 AMX tiles {amx:.0f} GFLOP/s'}, "
          f"memory read {peaks['bandwidth_gbs']:.1f} GB/s")
    header = f"{'case':<22}{'dtype':<10}{'dir':<9}{'ours':>9}{'torch':>9}{'ratio':>7}{'unit':>8}{'%peak':>7}"
    print(header)
    print("-" * len(header))
    rows = []
    for c in cases:
        for dt in args.dtypes:
            dtype = getattr(torch, dt)
            for direction in args.dirs:
                backward = direction == "fwd+bwd"
                if c.decode and backward:
                    continue
                t = measure(c, dtype, backward, min_time)
                if c.decode:
                    work, unit = c.bytes(dtype.itemsize) / 1e9, "GB/s"
                else:
                    work, unit = c.fwd_flops() * (3.5 if backward else 1.0) / 1e9, "GFLOP/s"
                ours, theirs = work / t["ours"], work / t["torch"]
                peak = (peaks["bandwidth_gbs"] if c.decode
                        else amx if dt == "bfloat16" and amx  # avx512amx: both directions on tiles
                        else dot if dt == "bfloat16" and dot and not backward  # the backward: FMA
                        else peaks["fma_gflops"])
                frac = f"{100 * ours / peak:.0f}%"
                row = dict(case=c.name, dtype=dt, direction=direction, ours=round(ours, 1),
                           torch=round(theirs, 1), ratio=round(ours / theirs, 2), unit=unit,
                           peak_fraction=frac, ours_ms=round(1e3 * t["ours"], 2),
                           torch_ms=round(1e3 * t["torch"], 2))
                rows.append(row)
                print(f"{c.name:<22}{dt:<10}{direction:<9}{ours:>9.1f}{theirs:>9.1f}"
                      f"{ours / theirs:>6.2f}x{unit:>8}{frac:>7}", flush=True)

    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "bench_cpu.csv")
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {csv_path}")
    plot(rows, os.path.join(args.out, "bench_cpu.png"))


def plot(rows, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    labels = [f"{r['case']}\n{r['dtype']} {r['direction']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(rows)), 5))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["ratio"] for r in rows], 0.4, label="flashattn_ext / torch")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylabel("speed ratio (higher is better)")
    ax.set_title("flashattn_ext vs torch SDPA (flash CPU kernel), same process and threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
