"""Context-parallel attention: a CPU scaling table with gloo on this machine, and a model of the
ring's communication per step on N GPUs.

    python bench/distributed.py                  # both parts; writes bench/distributed.md
    python bench/distributed.py --model-only     # the model alone (instant)
    python bench/distributed.py --tflops 989 --efficiency 0.4 --links "NVLink 4=450"   # H100

Part 1 times the single-process library on the full sequence (1 process, 1 thread) against
ring_attention and ulysses_attention on 2 processes with 1 thread each (gloo over loopback),
forward and forward+backward, alternating the three, medians of --reps rounds after a warm-up
round. "CPU ratio" is the CPU time of both ranks over the single process's: the work the
distribution adds (merging, the backward's recomputed forward, copies, communication), which
other load on the machine does not change. "ring wait" is the share of the ring's wall time spent
waiting for transfers: how much of the communication the kernel does not hide. The speedup is
wall time and means something only on an otherwise idle machine: under load, two processes get
a larger share of the cores than one.

Part 2 is arithmetic. Per ring step each rank sends one K/V shard to its neighbour and, in the
backward, one K/V shard plus one float32 dK/dV accumulator; meanwhile it runs the kernel on its
queries against the visiting shard. The transfer is hidden when

    kernel time = FLOPs / (peak * efficiency)  >=  latency + bytes / bandwidth.

With S_l = S/N tokens per rank, forward FLOPs per step are 4 * B * Hq * D * S_l^2 * f (f = 1
without a mask, 1/2 with the zigzag causal layout, where every rank sees half of every block)
and bytes 2 * B * Hkv * D * S_l * e (e bytes per element); the backward does 9 matrix products
per visible pair instead of 2 (the library's 5, its 2 recomputing S and dP, and the ring's
recomputation of the block's forward: 2) and sends 2 * B * Hkv * D * S_l * (e + 4) bytes. B and D
cancel: the threshold on S_l depends on Hkv/Hq, e, f, the FLOP rate and the link only.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import flashattn_ext as fa  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed.md")


# ---- part 1: CPU scaling with gloo -------------------------------------------------------------

def _inputs(b: int, s: int, hq: int, hkv: int, d: int) -> Tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(b, s, hq, d, generator=gen), torch.randn(b, s, hkv, d, generator=gen),
            torch.randn(b, s, hkv, d, generator=gen), torch.randn(b, s, hq, d, generator=gen))


def _step(fn, q, k, v, dout, backward: bool, **kw):
    def run():
        qq, kk, vv = (x.detach().requires_grad_(backward) for x in (q, k, v))
        out = fn(qq, kk, vv, **kw)
        if backward:
            torch.autograd.backward(out, dout)
    return run


def _worker(rank: int, world: int, store: str, cases, reps: int, results) -> None:
    """Rank 0 alone runs the single-process library on the full sequence, then both ranks run
    ring and Ulysses attention on their shards, alternating, so every median sees the same
    machine state. Wall time, CPU time (summed over the ranks) and the ring's transfer waits."""
    import torch.distributed as dist
    import flashattn_ext.distributed as fd
    from flashattn_ext.distributed import _comm

    torch.set_num_threads(1)
    fa.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=900))
    waited = [0.0]
    plain_wait = _comm.Transfer.wait

    def timed_wait(self):
        t = time.perf_counter()
        try:
            return plain_wait(self)
        finally:
            waited[0] += time.perf_counter() - t

    _comm.Transfer.wait = timed_wait
    for key, (shape, causal, backward) in cases.items():
        full = _inputs(*shape)
        shards = [fd.shard(x, rank, world) for x in full]
        runs = {"one": _step(fa.attention, *full, backward, causal=causal) if rank == 0 else None,
                "ring": _step(fd.ring_attention, *shards, backward, causal=causal),
                "ulysses": _step(fd.ulysses_attention, *shards, backward, causal=causal)}
        samples: Dict[str, List[Tuple[float, float, float]]] = {name: [] for name in runs}
        for rep in range(reps + 1):  # the first round warms up
            for name, run in runs.items():
                dist.barrier()
                waited[0] = 0.0
                wall, cpu = time.perf_counter(), time.process_time()
                if run is not None:
                    run()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                cpus = [None] * world
                dist.all_gather_object(cpus, cpu)
                if rep and run is not None:
                    samples[name].append((wall, sum(cpus) if name != "one" else cpu, waited[0]))
        if rank == 0:
            results[key] = {name: tuple(statistics.median(x[i] for x in samples[name])
                                        for i in range(3)) for name in runs}
    dist.destroy_process_group()


def scaling(reps: int) -> List[str]:
    shapes = [(1, 2048, 8, 8, 64), (1, 4096, 8, 8, 64), (1, 4096, 8, 2, 64)]
    cases = {f"{i}-{c}-{b}": (shape, c, b) for i, shape in enumerate(shapes)
             for c in (False, True) for b in (False, True)}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, os.path.join(tmp, "store"), cases, reps, results), nprocs=2)
        results = dict(results)
    lines = [f"flashattn_ext {fa.__version__}, ISA {fa.build_info()['cpu_isa']}, torch "
             f"{torch.__version__}, float32, zigzag layout, {os.cpu_count()} cores, load average "
             f"{load:.1f} before and {os.getloadavg()[0]:.1f} after; medians of {reps} rounds",
             "",
             "| B, S, Hq/Hkv, D | mask | pass | 1 process (s) | ring, 2 (s) | speedup | CPU "
             "ratio | ring wait | ulysses, 2 (s) | speedup | CPU ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, (shape, causal, backward) in cases.items():
        b, s, hq, hkv, d = shape
        r = results[key]
        one = r["one"][0]
        lines.append(
            f"| {b}, {s}, {hq}/{hkv}, {d} | {'causal' if causal else 'none'} | "
            f"{'fwd+bwd' if backward else 'fwd'} | {one:.3f} | {r['ring'][0]:.3f} | "
            f"{one / r['ring'][0]:.2f}x | {r['ring'][1] / r['one'][1]:.2f} | "
            f"{100 * r['ring'][2] / r['ring'][0]:.0f}% | {r['ulysses'][0]:.3f} | "
            f"{one / r['ulysses'][0]:.2f}x | {r['ulysses'][1] / r['one'][1]:.2f} |")
    return lines


# ---- part 2: the communication model -----------------------------------------------------------

def _threshold(flop_coeff: float, byte_coeff: float, flops: float, bandwidth: float,
               latency: float) -> float:
    """Smallest S_l with flop_coeff * S_l^2 / flops >= latency + byte_coeff * S_l / bandwidth."""
    a, b = flop_coeff / flops, byte_coeff / bandwidth
    return (b + math.sqrt(b * b + 4 * a * latency)) / (2 * a)


def _coeffs(hq: int, hkv: int, e: int, causal: bool, backward: bool) -> Tuple[float, float]:
    """FLOPs per step / S_l^2 and bytes per step / S_l, per unit of B * D."""
    f = 0.5 if causal else 1.0
    products = 9 if backward else 2
    return 2.0 * products * hq * f, 2.0 * hkv * (e + 4 if backward else e)


def model(tflops: float, efficiency: float, links: Dict[str, float], latency_us: float,
          ranks: Sequence[int]) -> List[str]:
    flops = tflops * 1e12 * efficiency
    lat = latency_us * 1e-6
    lines = [f"FLOP rate: {tflops:g} TFLOP/s peak x {efficiency:g} efficiency = "
             f"{flops / 1e12:g} TFLOP/s for the local kernel (default: an A100's dense bfloat16 "
             f"tensor-core peak at 50%); bfloat16 K/V (e = 2), float32 dK/dV. Bandwidths are "
             f"per direction: each rank sends to one neighbour while receiving from the other.",
             "", "Tokens per rank S_l from which the kernel time covers the transfer of one step, "
             "bandwidth term only (then independent of B, D and N): "
             "S_l >= (bytes / S_l) / (FLOPs / S_l^2) * FLOP rate / bandwidth.", "",
             "| link (GB/s) | Hq/Hkv | fwd, no mask | fwd, causal zigzag | bwd, no mask | "
             "bwd, causal zigzag |", "|---|---|---|---|---|---|"]
    for link, gbs in links.items():
        for hq, hkv in ((32, 32), (32, 8)):
            cells = []
            for backward in (False, True):
                for causal in (False, True):
                    fc, bc = _coeffs(hq, hkv, 2, causal, backward)
                    cells.append(f"{math.ceil(_threshold(fc, bc, flops, gbs * 1e9, 0.0)):,}")
            lines.append(f"| {link} ({gbs:g}) | {hq}/{hkv} | " + " | ".join(cells) + " |")
    hq, hkv, d = 32, 8, 128
    lines += ["", f"Whole sequence S = N * S_l from which the ring hides its communication, with a "
              f"latency of {latency_us:g} us per step added to the transfer: B = 1, Hq/Hkv = "
              f"{hq}/{hkv}, D = {d} (a Llama-3-8B layer), causal zigzag, forward / backward. Each "
              f"rank sends {2 * hkv * d * 2:,} * S_l bytes per forward step and "
              f"{2 * hkv * d * 6:,} * S_l per backward step.", "",
              "| N | " + " | ".join(f"{link}" for link in links) + " |",
              "|---|" + "---|" * len(links)]
    for n in ranks:
        cells = []
        for gbs in links.values():
            per = []
            for backward in (False, True):
                fc, bc = _coeffs(hq, hkv, 2, True, backward)
                per.append(n * math.ceil(_threshold(fc * d, bc * d, flops, gbs * 1e9, lat)))
            cells.append(f"{per[0]:,} / {per[1]:,}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    s, n = 131072, 8
    s_l = s // n
    ring = (n - 1) * 2 * hkv * d * s_l * 2
    uly = (n - 1) / n * (2 * hq + 2 * hkv) * d * s_l * 2
    lines += ["", "Below a few thousand tokens per rank the kernel runs well under the assumed "
              "efficiency, so read the small thresholds as lower bounds.", "",
              f"Per forward and rank at S = {s:,}, N = {n} (same layer): the ring sends "
              f"{ring / 2**20:.0f} MiB in {n - 1} steps, overlapped with the kernel; Ulysses' two "
              f"all-to-alls send {uly / 2**20:.0f} MiB ((N-1)/N of q, k, v and of the output), "
              f"not overlapped."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model-only", action="store_true")
    ap.add_argument("--tflops", type=float, default=312.0, help="peak TFLOP/s of one GPU")
    ap.add_argument("--efficiency", type=float, default=0.5, help="kernel's share of the peak")
    ap.add_argument("--latency-us", type=float, default=10.0, help="per transfer")
    ap.add_argument("--links", default="NVLink 3=300,InfiniBand NDR=50,"
                    "InfiniBand HDR or PCIe 4=25", help="name=GB/s per direction, comma separated")
    ap.add_argument("--no-write", action="store_true", help=f"do not write {OUT}")
    args = ap.parse_args()
    links = {name.strip(): float(gbs) for name, gbs in
             (item.split("=") for item in args.links.split(","))}
    lines = ["# Context-parallel attention: CPU scaling and the ring's communication model", "",
             "Generated by `python bench/distributed.py` (see its docstring for the method).", ""]
    if not args.model_only:
        lines += ["## CPU scaling with gloo (1 thread per process)", ""] + scaling(args.reps) + [""]
    lines += ["## When the ring hides its communication (model)", ""]
    lines += model(args.tflops, args.efficiency, links, args.latency_us, (2, 4, 8, 16, 32, 64))
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        with open(OUT, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
