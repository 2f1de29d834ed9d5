"""``python -m flashattn_ext``: what this build contains, a self-check against a float64
reference, and (with torch installed) a short benchmark against torch's SDPA."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Callable, List

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


def benchmark(reps: int) -> None:
    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        print("benchmark: torch is not installed; skipped (pip install flashattn_ext[torch])")
        return
    print(f"benchmark: median of {reps} runs, {fa.get_num_threads()} threads, GFLOP/s "
          f"(causal counts half the score matrix), ratio = flashattn_ext / torch SDPA(flash)")
    print(f"  {'case':34s} {'pass':8s} {'flashattn_ext':>13s} {'torch':>8s} {'ratio':>6s}")
    for b, h, s, d, causal, dtype in [(1, 8, 1024, 64, False, torch.float32),
                                      (1, 8, 1024, 64, True, torch.float32),
                                      (1, 8, 1024, 64, False, torch.bfloat16)]:
        q, k, v = (torch.randn(b, h, s, d, dtype=dtype, requires_grad=True) for _ in range(3))
        dout = torch.randn(b, h, s, d, dtype=dtype)
        flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
        ours = lambda: fa.scaled_dot_product_attention(q, k, v, is_causal=causal)

        def theirs():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

        name = f"B{b} H{h} S{s} D{d} {'causal' if causal else 'full'} {str(dtype)[6:]}"
        for label, mult, make in [("fwd", 1.0, lambda f: (lambda: f().detach())),
                                  ("fwd+bwd", 3.5, lambda f: (lambda: torch.autograd.grad(f(), (q, k, v), dout)))]:
            t_ours = _median_time(make(ours), reps)
            t_torch = _median_time(make(theirs), reps)
            g_ours, g_torch = flops * mult / t_ours / 1e9, flops * mult / t_torch / 1e9
            print(f"  {name:34s} {label:8s} {g_ours:13.1f} {g_torch:8.1f} {t_torch / t_ours:6.2f}x")


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashattn_ext", description=__doc__)
    parser.add_argument("--no-bench", action="store_true", help="skip the benchmark")
    parser.add_argument("--reps", type=int, default=5, help="benchmark repetitions (median)")
    args = parser.parse_args(argv)
    info = fa.build_info()
    print(f"flashattn_ext {info['version']}")
    for key, value in info.items():
        if key != "version":
            print(f"  {key}: {value}")
    ok = self_check()
    if not args.no_bench:
        benchmark(args.reps)
    print("self-check passed" if ok else "self-check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
