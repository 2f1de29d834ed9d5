"""Decode and variable-length benchmark: flashattn_ext's KV-cache and packed entry points against
torch SDPA on padded tensors, in the same process with the same threads, alternating, medians.

decode: a batch of requests with mixed cache lengths, one new query each (Sq = 1, GQA).
    ours:  flash_attn_with_kvcache on the cache (contiguous, and paged with 16-row pages), each
           request reading only its own cache_seqlens rows;
    torch: SDPA (default CPU dispatch) on the cache padded to the longest request, with a
           boolean key mask.
    GB/s of KV actually needed (sum of the cache lengths x Hkv x D x 2 x itemsize) per second,
    also against the memory-bandwidth probe (flashattn_ext.cpu_peaks: a streaming read of a
    256 MiB buffer, same threads).
varlen: a training step (forward + backward) on sequences of mixed lengths, causal.
    ours:  flash_attn_varlen_func on the packed batch;
    ours padded, torch padded: flash_attn_func / SDPA (flash kernel forced) on the batch padded
           to the longest sequence; "saved" is the time not spent on padding.

    python bench/bench_decode.py            # a few minutes
    python bench/bench_decode.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import flashattn_ext as fa  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def medians(fns: dict, min_time: float) -> dict:
    for fn in fns.values():  # warm up
        fn()
    once = max(max(timed(fn) for fn in fns.values()), 1e-4)
    reps = max(3, min(25, int(min_time / once)))
    times = {name: [] for name in fns}
    for _ in range(reps):  # alternate: every implementation sees the same machine state
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def decode(args, dtype: torch.dtype, gen: torch.Generator) -> list:
    b, hq, hkv, d, cap = args.batch, 32, 8, 128, args.max_cache
    lens = torch.randint(cap // 16, cap + 1, (b,), generator=gen, dtype=torch.int32)
    k, v = (torch.randn(b, cap, hkv, d, generator=gen).to(dtype) for _ in range(2))
    q = torch.randn(b, 1, hq, d, generator=gen).to(dtype)
    page = 16
    pages = cap // page
    table = torch.randperm(b * pages, generator=gen).to(torch.int32).reshape(b, pages)
    kp, vp = (torch.empty(b * pages, page, hkv, d, dtype=dtype) for _ in range(2))
    kp[table.flatten().long()] = k.reshape(b * pages, page, hkv, d)
    vp[table.flatten().long()] = v.reshape(b * pages, page, hkv, d)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    mask = (torch.arange(cap)[None, :] < lens[:, None].long())[:, None, None, :]  # (B, 1, 1, cap)
    fns = {
        "ours": lambda: fa.flash_attn_with_kvcache(q, k, v, cache_seqlens=lens),
        "ours paged16": lambda: fa.flash_attn_with_kvcache(q, kp, vp, cache_seqlens=lens,
                                                            block_table=table),
        "torch padded": lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask,
                                                               enable_gqa=True),
    }
    with torch.no_grad():
        t = medians(fns, args.min_time)
    gb = float(lens.sum()) * hkv * d * 2 * dtype.itemsize / 1e9
    return [(f"decode B{b} cache<={cap} {str(dtype)[6:]}", name, 1e3 * s, gb / s, "GB/s")
            for name, s in t.items()]


def varlen(args, dtype: torch.dtype, gen: torch.Generator) -> list:
    hq, d, n = 8, 64, args.seqs
    lens = torch.randint(args.max_len // 8, args.max_len + 1, (n,), generator=gen)
    total, top = int(lens.sum()), int(lens.max())
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)]).to(torch.int32)
    q, k, v, do = (torch.randn(total, hq, d, generator=gen).to(dtype) for _ in range(4))
    padded = [torch.zeros(n, top, hq, d, dtype=dtype) for _ in range(4)]
    for i in range(n):
        for x, p in zip((q, k, v, do), padded):
            p[i, :int(lens[i])] = x[int(cu[i]):int(cu[i + 1])]
    for x in (q, k, v, *padded[:3]):
        x.requires_grad_()
    qp, kp, vp, dop = padded

    def step(f, inputs, dout):
        def run():
            for x in inputs:
                x.grad = None
            f().backward(dout)
        return run

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qp.transpose(1, 2), kp.transpose(1, 2),
                                                  vp.transpose(1, 2), is_causal=True).transpose(1, 2)

    fns = {
        "ours varlen": step(lambda: fa.flash_attn_varlen_func(q, k, v, cu, cu, top, top, causal=True),
                            (q, k, v), do),
        "ours padded": step(lambda: fa.flash_attn_func(qp, kp, vp, causal=True), (qp, kp, vp), dop),
        "torch padded": step(sdpa, (qp, kp, vp), dop),
    }
    t = medians(fns, args.min_time)
    pairs = float((lens * (lens + 1) // 2).sum())  # causal (query, key) pairs actually needed
    gflop = 3.5 * 4 * hq * d * pairs / 1e9
    name = f"varlen {n} seqs <= {args.max_len} (pad {100 * (1 - total / (n * top)):.0f}%) {str(dtype)[6:]}"
    return [(name, impl, 1e3 * s, gflop / s, "GFLOP/s") for impl, s in t.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    args = ap.parse_args()
    args.batch, args.max_cache, args.seqs, args.max_len = (4, 1024, 4, 256) if args.quick else (8, 8192, 16, 1024)
    if args.quick:
        args.min_time = 0.2
    torch.set_num_threads(args.threads)
    fa.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    probe = fa.cpu_peaks(args.threads)["bandwidth_gbs"]
    print(f"flashattn_ext {fa.__version__}, ISA {fa.build_info()['cpu_isa']}, torch {torch.__version__}, "
          f"{args.threads} threads, memory-bandwidth probe {probe:.1f} GB/s")
    header = f"{'case':<40}{'impl':<14}{'ms':>9}{'rate':>9}{'unit':>9}{'vs first':>10}{'%probe':>8}"
    print(header)
    print("-" * len(header))
    for dt in args.dtypes:
        dtype = getattr(torch, dt)
        for rows in (decode(args, dtype, gen), varlen(args, dtype, gen)):
            first = rows[0][2]
            for case, impl, ms, rate, unit in rows:
                frac = f"{100 * rate / probe:.0f}%" if unit == "GB/s" else ""
                print(f"{case:<40}{impl:<14}{ms:>9.2f}{rate:>9.1f}{unit:>9}{ms / first:>9.2f}x{frac:>8}",
                      flush=True)


if __name__ == "__main__":
    main()
