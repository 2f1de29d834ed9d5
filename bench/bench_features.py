"""Cost of the training features on the CPU kernels against the plain kernel.

Each variant (plain, softcap, ALiBi, both, dropout p = 0.1, explicit masks: key padding at the
end, which runs as key lengths, and at the front, which the kernels read) runs
flashattn_ext.attention on the same float32 (B, S, H, D) inputs in the same process, alternating,
forward and forward+backward; the table gives medians, the ratio to the plain kernel's time and,
for masks, the mask's size (the kernels read it in place: once per query head where it is
broadcast over heads; the backward reads it twice more), the time torch takes to read it once on
the same threads (the maximum of its bytes read as int32) and what is left of the variant's cost after
the kernels' reads: (variant - plain - reads x read) / plain, where reads counts the mask's
broadcast over batch and heads (the kernels read it once per (batch, head)) times 1 forward and 3
forward+backward.

    python bench/bench_features.py [--b 1 --h 8 --s 2048 --d 64 --causal --reps 9 --threads 1
                                    --variants plain dropout]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import flashattn_ext  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--b", type=int, default=1)
    ap.add_argument("--h", type=int, default=8)
    ap.add_argument("--s", type=int, default=2048)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: the library default)")
    ap.add_argument("--variants", nargs="*", default=None, help="variant names (default: all)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time calls by the calling thread's CPU time (needs --threads 1, where the kernels "
                         "run on the calling thread): steadier than wall time on a shared machine")
    args = ap.parse_args()
    if args.cpu_time and args.threads != 1:
        ap.error(f"--cpu-time: needs --threads 1 (the kernels then run on the calling thread), got --threads {args.threads}")
    clock = time.thread_time if args.cpu_time else time.perf_counter
    flashattn_ext.set_num_threads(args.threads)
    torch.set_num_threads(flashattn_ext.get_num_threads())
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(args.b, args.s, args.h, args.d, generator=g) for _ in range(4))
    slopes = torch.rand(args.h, generator=g) * 0.1
    b, s, h = args.b, args.s, args.h
    pad = torch.zeros(b, s, dtype=torch.bool)
    pad[:, s - s // 8:] = True  # the last eighth of the keys is padding: key lengths, no mask read
    front = pad.flip(1)  # the first eighth: a mask the kernels read
    variants = {"plain": {}, "softcap": dict(softcap=30.0), "alibi": dict(alibi_slopes=slopes),
                "softcap+alibi": dict(softcap=30.0, alibi_slopes=slopes), "dropout": dict(dropout_p=0.1),
                "key padding": dict(key_padding_mask=pad), "front padding": dict(key_padding_mask=front),
                "bool (S, S)": dict(attn_mask=torch.rand(s, s, generator=g) > 0.1),
                "bias (S, S)": dict(attn_mask=torch.randn(s, s, generator=g)),
                "bias (B,H,S,S)": dict(attn_mask=torch.randn(b, h, s, s, generator=g))}
    variants = {name: kw for name, kw in variants.items() if args.variants is None or name in args.variants}
    size = {name: kw["attn_mask"].nbytes if "attn_mask" in kw else b * s
            for name, kw in variants.items() if "mask" in str(kw.keys())}

    def read_time(mask: torch.Tensor) -> float:
        data = mask.contiguous().view(torch.uint8).flatten()
        data = data[: data.numel() // 4 * 4].view(torch.int32)  # the bytes as integers
        times = []
        for _ in range(max(3, args.reps)):
            t0 = clock()
            data.amax()
            times.append(clock() - t0)
        return statistics.median(times)

    def reads(mask: torch.Tensor) -> int:  # how many times each pass reads the mask's bytes
        return b * h * s * s // mask.numel()

    read = {name: read_time(kw["attn_mask"]) for name, kw in variants.items() if "attn_mask" in kw}

    def run(kw: dict, backward: bool) -> float:
        for t in (q, k, v):
            t.requires_grad_(backward)
            t.grad = None
        t0 = clock()
        if backward:
            flashattn_ext.attention(q, k, v, causal=args.causal, **kw).backward(do)
        else:
            with torch.no_grad():
                flashattn_ext.attention(q, k, v, causal=args.causal, **kw)
        return clock() - t0

    shape = f"B={args.b} H={args.h} S={args.s} D={args.d} {'causal' if args.causal else 'non-causal'}"
    timing = "thread CPU time" if args.cpu_time else "wall time"
    print(f"{shape}, float32, {flashattn_ext.get_num_threads()} threads, median of {args.reps} ({timing})")
    print(f"{'variant':15} {'dir':8} {'ms':>8} {'vs plain':>9} {'mask MB':>8} {'read ms':>8} {'beyond read':>11}")
    for backward in (False, True):
        times = {name: [] for name in variants}
        for kw in variants.values():
            run(kw, backward)  # warm up
        for _ in range(args.reps):
            for name, kw in variants.items():
                times[name].append(run(kw, backward))
        plain = statistics.median(times["plain"]) if "plain" in times else float("nan")
        for name, t in times.items():
            med = statistics.median(t)
            mb = f"{size[name] / 1e6:9.2f}" if name in size else ""
            if name in read:
                n = reads(variants[name]["attn_mask"]) * (3 if backward else 1)
                left = (med - plain - n * read[name]) / plain
                mb += f" {read[name] * 1e3:8.2f} {left * 100:10.1f}%"
            print(f"{name:15} {'fwd+bwd' if backward else 'fwd':8} {med * 1e3:8.1f} {med / plain:8.2f}x{mb}")


if __name__ == "__main__":
    main()
