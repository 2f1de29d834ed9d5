"""Measured limits of this machine's CPU for the kernels: :func:`cpu_peaks`."""

from __future__ import annotations

from typing import Optional, TypedDict

from . import _C


class CpuPeaks(TypedDict):
    """Result of :func:`cpu_peaks`."""

    isa: str                          # instruction set the kernels (and probes) run with
    threads: int
    fma_gflops: float                 # float32 FMA: the reference for float32 / float16 kernels
    bf16_dot_gflops: Optional[float]  # bfloat16 dot product; None when the ISA has none
    bf16_dot_native: bool             # False with a dot product: its AVX2 emulation (avx512bf16-emu)
    amx_bf16_gflops: Optional[float]  # bfloat16 AMX tile products (avx512amx); None elsewhere
    bandwidth_gbs: float              # streaming read from memory: the reference for decoding
    bandwidth_bytes: int


def cpu_peaks(threads: Optional[int] = None) -> CpuPeaks:
    """Peaks of the active CPU instruction set on ``threads`` threads at once (default: the
    kernels' default count), measured now in about a second: float32 FMA and bfloat16
    dot-product (``vdpbf16ps``) GFLOP/s of register loops with enough independent chains to fill
    every FMA unit, bfloat16 AMX tile products (``tdpbf16ps`` on four accumulator tiles; the
    avx512amx instruction set only), and the GB/s of a multi-threaded streaming read of a 256 MiB buffer (what a
    decoding kernel, which reads the KV cache once, can reach). Each figure is the best of a few
    runs; on a busy machine they read low."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"cpu_peaks: threads must be a positive int or None, got {threads!r}")
    peaks = dict(_C.peak_probes(threads or 0))
    peaks["isa"] = _C.build_info()["cpu_isa"]
    return CpuPeaks(**peaks)  # type: ignore[typeddict-item]
