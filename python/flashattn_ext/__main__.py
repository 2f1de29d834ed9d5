"""python -m flashattn_ext: the library's main job, in three parts:

  report      what this build contains (version, compiler, CPU instruction sets, CUDA backend
              and architectures, emulator, threads, CPU tiles) and the CPU's measured peaks
              (flashattn_ext.cpu_peaks, about a second);
  self-check  a few attention calls against a naive float64 reference (exit status 1 if one
              exceeds its tolerance);
  benchmark   forward and forward+backward against torch's own scaled_dot_product_attention
              (needs torch), one progress line per case; --csv writes the rows, --png plots
              them (the plot needs matplotlib, which is optional).

python -m flashattn_ext tune: times the CPU kernels' tile candidates on this machine (about a
minute) and stores the fastest in the user's cache directory, where the kernels find them (see
flashattn_ext._tiles for the file and the environment variables).

With a CUDA GPU and a build with the CUDA kernels, the self-check also compares the GPU kernels
with torch's SDPA on the GPU (forward and gradients, against SDPA in float64), and the benchmark
runs there as well; without one, the output says why those parts are skipped.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

import numpy as np

import flashattn_ext as fa

if TYPE_CHECKING:
    import torch


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


def _median_time(fn: Callable[[], object], reps: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()
    sync()
    times: List[float] = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def gpu_reason() -> Optional[str]:
    """Why the GPU check and benchmark cannot run here (None: they can)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not fa.build_info()["cuda_built"]:
        return "this build has no CUDA kernels (built with FLASHATTN_EXT_CUDA=OFF)"
    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    return None


# (B, H, Sq, Sk, D, causal, dtype name, with gradients): the GPU check's cases.
GPU_CASES = [(2, 8, 509, 509, 64, True, "bfloat16", True), (1, 6, 300, 777, 128, False, "float16", True),
             (2, 4, 260, 260, 96, True, "bfloat16", True), (1, 4, 333, 190, 256, True, "bfloat16", False)]


def sdpa_check(device: "torch.device", cases: Sequence[tuple] = GPU_CASES) -> bool:
    """The CUDA kernels against torch's SDPA on `device`, both in the inputs' dtype, each against
    SDPA in float64: ours may err at most twice as much as torch's plus 1e-3 of the output's
    magnitude (the rule of docs/semantics.md section 7)."""
    import torch
    import torch.nn.functional as F

    ok = True
    gen = torch.Generator(device=device).manual_seed(int(time.time()))
    for b, h, sq, sk, d, causal, dtype_name, grads in cases:
        dtype = getattr(torch, dtype_name)
        q = torch.randn(b, h, sq, d, device=device, generator=gen).to(dtype).requires_grad_(grads)
        k, v = (torch.randn(b, h, sk, d, device=device, generator=gen).to(dtype).requires_grad_(grads)
                for _ in range(2))
        dout = torch.randn(b, h, sq, d, device=device, generator=gen).to(dtype)
        results = []
        for fn, x in ((fa.scaled_dot_product_attention, (q, k, v)), (F.scaled_dot_product_attention, (q, k, v)),
                      (F.scaled_dot_product_attention, tuple(t.double() for t in (q, k, v)))):
            out = fn(*x, is_causal=causal)
            got = [out] + (list(torch.autograd.grad(out, (q, k, v), dout.to(out.dtype))) if grads else [])
            results.append([t.double() for t in got])
        ours, theirs, ref = results
        worst = 0.0
        for o, t, r in zip(ours, theirs, ref):
            scale = max(1.0, r.abs().max().item())
            err, tol = (o - r).abs().max().item(), 2 * (t - r).abs().max().item() + 1e-3 * scale
            worst = max(worst, err / tol)
            ok &= err <= tol
        print(f"  GPU check B{b} H{h} Sq{sq} Sk{sk} D{d} {'causal' if causal else 'full'} {dtype_name}"
              f"{' +grad' if grads else ''}: error / tolerance {worst:.2f} {'ok' if worst <= 1 else 'FAILED'}")
    return ok


def benchmark(reps: int, seqlen: int, device: str = "cpu") -> List[Dict[str, object]]:
    """Times each case, printing one line per case as it finishes; returns the rows. On a GPU:
    bfloat16, head dims 64 and 128, B=4 H=16, timed with the device synchronised."""
    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        print("benchmark: torch is not installed; skipped (pip install flashattn_ext[torch])")
        return []
    gpu = device != "cpu"
    where = f"on {torch.cuda.get_device_name(device)}" if gpu else f"{fa.get_num_threads()} threads"
    print(f"benchmark: median of {reps} runs, {where}, GFLOP/s "
          f"(causal counts half the score matrix), ratio = flashattn_ext / torch SDPA(flash)")
    sync = (lambda: torch.cuda.synchronize(device)) if gpu else (lambda: None)
    shapes = ([(4, 16, d, causal, torch.bfloat16) for d in (64, 128) for causal in (False, True)] if gpu else
              [(1, 8, 64, causal, dtype) for causal, dtype in ((False, torch.float32), (True, torch.float32),
                                                                (False, torch.bfloat16))])
    cases = [(b, h, seqlen, d, causal, dtype, direction) for b, h, d, causal, dtype in shapes
             for direction in ("fwd", "fwd+bwd")]
    rows: List[Dict[str, object]] = []
    for n, (b, h, s, d, causal, dtype, direction) in enumerate(cases, 1):
        q, k, v = (torch.randn(b, h, s, d, dtype=dtype, device=device, requires_grad=True) for _ in range(3))
        dout = torch.randn(b, h, s, d, dtype=dtype, device=device)
        flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0) * (3.5 if direction != "fwd" else 1)
        ours = lambda: fa.scaled_dot_product_attention(q, k, v, is_causal=causal)

        def theirs():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

        def timed(f: Callable[[], object]) -> float:
            if direction == "fwd":
                return _median_time(lambda: f().detach(), reps, sync)
            return _median_time(lambda: torch.autograd.grad(f(), (q, k, v), dout), reps, sync)

        t_ours, t_torch = timed(ours), timed(theirs)
        row = dict(case=f"B{b} H{h} S{s} D{d} {'causal' if causal else 'full'} {str(dtype)[6:]}",
                   device=device, batch=b, heads=h, seqlen=s, head_dim=d, causal=causal,
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
              f"{r['direction']}" + ("" if r["device"] == "cpu" else f"\n{r['device']} D{r['head_dim']}")
              for r in rows]
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
    parser.add_argument("command", nargs="?", choices=["tune"], help="tune: time the CPU tile candidates")
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
    if args.command == "tune":
        from ._tiles import tune
        print(f"tuning CPU tiles ({fa.build_info()['cpu_isa']}, {fa.get_num_threads()} threads), GFLOP/s "
              "per candidate bq x bk, * = fastest:")
        print(f"tuned tiles written to {tune()} and in use")
        return 0
    info = fa.build_info()
    print(f"flashattn_ext {info['version']}")
    for key, value in info.items():
        if key != "version":
            print(f"  {key}: {value}")
    peaks = fa.cpu_peaks()
    dot = peaks["bf16_dot_gflops"]
    dot_text = ("not available" if dot is None else
                f"{dot:.0f} GFLOP/s{'' if peaks['bf16_dot_native'] else ' (emulated on AVX2)'}")
    amx = peaks["amx_bf16_gflops"]
    amx_text = "" if amx is None else f", bfloat16 AMX tiles {amx:.0f} GFLOP/s"
    print(f"  CPU peaks on {peaks['threads']} threads: float32 FMA {peaks['fma_gflops']:.0f} GFLOP/s, "
          f"bfloat16 dot product {dot_text}{amx_text}, memory read {peaks['bandwidth_gbs']:.1f} GB/s")
    ok = self_check()
    reason = gpu_reason()
    if reason is None:
        import torch
        gpu = f"cuda:{torch.cuda.current_device()}"
        ok &= sdpa_check(torch.device(gpu))
    else:
        print(f"  GPU check against torch SDPA: skipped ({reason})")
    rows = [] if args.no_bench else benchmark(args.reps, args.seqlen)
    if not args.no_bench:
        if reason is None:
            rows += benchmark(args.reps, args.seqlen, gpu)
        else:
            print(f"GPU benchmark: skipped ({reason})")
    if rows and args.csv:
        write_csv(rows, args.csv)
    if rows and args.png:
        write_png(rows, args.png)
    print("self-check passed" if ok else "self-check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
