"""CPU benchmark of the variable-length and KV-cache paths against torch in the same process.

    python bench/bench_varlen.py            # the table below, about a minute; writes bench_varlen.csv
    python bench/bench_varlen.py --quick    # one row of each kind

- varlen: sequences of mixed lengths packed into one (total, H, D) tensor, causal, forward and
  forward+backward. flashattn_ext runs one ``flash_attn_varlen_func`` call; torch has no
  variable-length attention on the CPU, so it runs (a) its flash kernel once per sequence
  (``loop``: no wasted work, one call each) and (b) one call on the batch padded to the longest
  sequence with a boolean mask (``padded``: what a padded model does; the mask sends torch to its
  math kernel). GFLOP/s count the visible (query, key) pairs only, as in bench_cpu.py.
- decode: one new token per sequence against a paged KV cache of mixed lengths (pages of 256
  keys, GQA 32/8, D=128). flashattn_ext reads the pages in place (``block_table``); torch gets
  each sequence's keys already gathered into one contiguous tensor (the gather is not timed) and
  runs its flash kernel per sequence. GB/s count the K and V bytes the cache lengths cover.
Both run alternately on the same inputs and threads; medians are compared.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import flashattn_ext as fa  # noqa: E402

LENGTHS = [1024, 300, 77, 700, 1500, 450, 33]  # 4084 tokens
CACHE = [4096, 513, 2000, 1024, 3333, 64, 2600, 1500]  # 15130 keys in 8 sequences


def median_times(fns: Dict[str, Callable[[], None]], min_time: float) -> Dict[str, float]:
    for fn in fns.values():  # warm up
        fn()
    once = max(max(_timed(fn) for fn in fns.values()), 1e-4)
    reps = max(3, min(25, int(min_time / once)))
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(reps):  # alternate: every implementation sees the same machine state
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def varlen_case(lengths: List[int], h: int, d: int, dtype: torch.dtype, backward: bool,
                min_time: float) -> Dict[str, float]:
    g = torch.Generator().manual_seed(0)
    total, longest = sum(lengths), max(lengths)
    q, k, v, do = (torch.randn(total, h, d, generator=g).to(dtype) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(backward)
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    starts = cu[:-1].tolist()
    # the padded batch (B, H, S, D) and its mask: row i of a sequence sees keys 0..i of it
    pad = [torch.zeros(len(lengths), h, longest, d, dtype=dtype) for _ in range(3)]
    for i, (s, n) in enumerate(zip(starts, lengths)):
        for p, t in zip(pad, (q, k, v)):
            p[i, :, :n] = t.detach()[s:s + n].transpose(0, 1)
    for p in pad:
        p.requires_grad_(backward)
    keep = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    mask = (keep[:, None, None, :] & torch.ones(longest, longest, dtype=torch.bool).tril())
    mask |= ~keep[:, None, :, None]  # padded query rows see every key (no NaN); not counted
    do_pad = torch.randn(len(lengths), h, longest, d, generator=g).to(dtype)

    def ours():
        return fa.flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, causal=True)

    def loop():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.cat([F.scaled_dot_product_attention(
                *(t[s:s + n].transpose(0, 1)[None] for t in (q, k, v)), is_causal=True)[0]
                .transpose(0, 1) for s, n in zip(starts, lengths)])

    def padded():
        return F.scaled_dot_product_attention(*pad, attn_mask=mask)

    def run(f: Callable[[], torch.Tensor], grad_out: torch.Tensor) -> Callable[[], None]:
        def go() -> None:
            if backward:
                f().backward(grad_out)
            else:
                with torch.no_grad():
                    f()
        return go

    t = median_times({"ours": run(ours, do), "torch-loop": run(loop, do),
                      "torch-padded": run(padded, do_pad)}, min_time)
    flops = sum(4.0 * h * d * n * (n + 1) / 2 for n in lengths) * (3.5 if backward else 1.0)
    return {name: flops / s / 1e9 for name, s in t.items()}


def decode_case(cache: List[int], hq: int, hkv: int, d: int, page: int, dtype: torch.dtype,
                min_time: float) -> Dict[str, float]:
    g = torch.Generator().manual_seed(0)
    b = len(cache)
    pages = [-(-n // page) for n in cache]
    k_pages, v_pages = (torch.randn(sum(pages), page, hkv, d, generator=g).to(dtype) for _ in range(2))
    perm = torch.randperm(sum(pages), generator=g)  # pages scattered through the pool
    table = torch.zeros(b, max(pages), dtype=torch.int32)
    at = 0
    for i, n in enumerate(pages):
        table[i, :n] = perm[at:at + n]
        at += n
    seqlens = torch.tensor(cache, dtype=torch.int32)
    q = torch.randn(b, 1, hq, d, generator=g).to(dtype)
    gathered = [tuple(p[table[i, :n].long()].flatten(0, 1)[:cache[i]].transpose(0, 1)[None]
                      .contiguous() for p in (k_pages, v_pages)) for i, n in enumerate(pages)]

    def ours() -> None:
        fa.flash_attn_with_kvcache(q, k_pages, v_pages, cache_seqlens=seqlens, block_table=table)

    def loop() -> None:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            for i, (kk, vv) in enumerate(gathered):
                F.scaled_dot_product_attention(q[i:i + 1].transpose(1, 2), kk, vv, enable_gqa=True)

    with torch.no_grad():
        t = median_times({"ours": ours, "torch-loop": loop}, min_time)
    nbytes = 2 * sum(cache) * hkv * d * q.element_size()
    return {name: nbytes / s / 1e9 for name, s in t.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one row of each kind")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fa.set_num_threads(args.threads)
    rows = []
    dtypes = [torch.float32] if args.quick else [torch.float32, torch.bfloat16]
    for dtype in dtypes:
        for d in ([64] if args.quick else [64, 128]):
            for backward in ([False] if args.quick else [False, True]):
                r = varlen_case(LENGTHS, 8, d, dtype, backward, args.min_time)
                rows.append(("varlen", f"{len(LENGTHS)} seqs {sum(LENGTHS)} tok H8 D{d} causal",
                             str(dtype)[6:], "fwd+bwd" if backward else "fwd", "GFLOP/s", r))
        r = decode_case(CACHE, 32, 8, 128, 256, dtype, args.min_time)
        rows.append(("decode", f"{len(CACHE)} seqs {sum(CACHE)} keys paged 256 H32/8 D128",
                     str(dtype)[6:], "fwd", "GB/s", r))
    print(f"threads {args.threads}; ratio = flashattn_ext / torch")
    with open(os.path.join(args.out, "bench_varlen.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "case", "dtype", "direction", "unit", "ours", "torch_loop",
                    "ratio_loop", "torch_padded", "ratio_padded"])
        for kind, case, dt, direction, unit, r in rows:
            pad = r.get("torch-padded")
            cells = [kind, case, dt, direction, unit, f"{r['ours']:.1f}", f"{r['torch-loop']:.1f}",
                     f"{r['ours'] / r['torch-loop']:.2f}",
                     "" if pad is None else f"{pad:.1f}", "" if pad is None else f"{r['ours'] / pad:.2f}"]
            w.writerow(cells)
            print(f"{kind:7s} {case:42s} {dt:9s} {direction:8s} ours {cells[5]:>7s} {unit:8s}"
                  f" torch loop {cells[6]:>7s} ({cells[7]}x)"
                  + ("" if pad is None else f" torch padded {cells[8]:>7s} ({cells[9]}x)"))


if __name__ == "__main__":
    main()
