"""``python -m flashattn_ext``: what this build contains, a self-check against a float64
reference, and (with torch installed) a short benchmark against torch's SDPA. With a CUDA GPU and
a build with the CUDA kernels, the GPU kernels are checked against torch's SDPA on the GPU
(forward and gradients, float64 reference) and benchmarked against it."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

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
    """Why the GPU checks cannot run here (None: they can)."""
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
        for name, o, t, r in zip(("out", "dq", "dk", "dv"), ours, theirs, ref):
            scale = max(1.0, r.abs().max().item())
            err, tol = (o - r).abs().max().item(), 2 * (t - r).abs().max().item() + 1e-3 * scale
            worst = max(worst, err / tol)
            ok &= err <= tol
        print(f"  GPU check B{b} H{h} Sq{sq} Sk{sk} D{d} {'causal' if causal else 'full'} {dtype_name}"
              f"{' +grad' if grads else ''}: error / tolerance {worst:.2f} {'ok' if worst <= 1 else 'FAILED'}")
    return ok


def benchmark(reps: int, device: str = "cpu") -> None:
    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        print("benchmark: torch is not installed; skipped (pip install flashattn_ext[torch])")
        return
    gpu = device != "cpu"
    where = f"on {torch.cuda.get_device_name(device)}" if gpu else f"{fa.get_num_threads()} threads"
    print(f"benchmark: median of {reps} runs, {where}, GFLOP/s (causal counts half the score "
          f"matrix), ratio = flashattn_ext / torch SDPA(flash)")
    print(f"  {'case':34s} {'pass':8s} {'flashattn_ext':>13s} {'torch':>8s} {'ratio':>6s}")
    sync = (lambda: torch.cuda.synchronize(device)) if gpu else (lambda: None)
    cases = ([(4, 16, 2048, 64, False, torch.bfloat16), (4, 16, 2048, 64, True, torch.bfloat16),
              (4, 16, 2048, 128, False, torch.bfloat16), (4, 16, 2048, 128, True, torch.bfloat16)] if gpu else
             [(1, 8, 1024, 64, False, torch.float32), (1, 8, 1024, 64, True, torch.float32),
              (1, 8, 1024, 64, False, torch.bfloat16)])
    for b, h, s, d, causal, dtype in cases:
        q, k, v = (torch.randn(b, h, s, d, dtype=dtype, device=device, requires_grad=True) for _ in range(3))
        dout = torch.randn(b, h, s, d, dtype=dtype, device=device)
        flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
        ours = lambda: fa.scaled_dot_product_attention(q, k, v, is_causal=causal)

        def theirs():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

        name = f"B{b} H{h} S{s} D{d} {'causal' if causal else 'full'} {str(dtype)[6:]}"
        for label, mult, make in [("fwd", 1.0, lambda f: (lambda: f().detach())),
                                  ("fwd+bwd", 3.5, lambda f: (lambda: torch.autograd.grad(f(), (q, k, v), dout)))]:
            t_ours = _median_time(make(ours), reps, sync)
            t_torch = _median_time(make(theirs), reps, sync)
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
    reason = gpu_reason()
    if reason is None:
        import torch
        device = torch.device("cuda", torch.cuda.current_device())
        ok &= sdpa_check(device)
    else:
        print(f"  GPU check against torch SDPA: skipped ({reason})")
    if not args.no_bench:
        benchmark(args.reps)
        if reason is None:
            benchmark(args.reps, str(device))
        else:
            print(f"GPU benchmark: skipped ({reason})")
    print("self-check passed" if ok else "self-check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
