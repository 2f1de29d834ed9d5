"""Helpers shared by the attention tests: random inputs, the tolerance rule of
docs/semantics.md section 7, and which kernels a backend covers."""

from __future__ import annotations

from typing import Optional, Tuple

import pytest
import torch

import oracle


EMU_BWD_MAX_HEAD_DIM = 256
CUDA_BACKENDS = ("emu", "cuda")  # the CUDA kernels: emulated on the CPU, or on a GPU


def needs_kernel(backend: str, dtype: torch.dtype, backward: bool = False,
                 head_dim: int = 0) -> None:
    """Skips what a backend's kernels do not cover (instead of testing the CPU path twice)."""
    if backend == "emu" and dtype not in (torch.float16, torch.bfloat16):
        pytest.skip("the emulated CUDA kernels take float16/bfloat16; other dtypes run on the CPU")
    if backend == "cuda" and dtype not in (torch.float16, torch.bfloat16):
        pytest.skip("the CUDA kernels take float16/bfloat16 (other dtypes are rejected on the GPU)")
    if backend in CUDA_BACKENDS and backward and head_dim > EMU_BWD_MAX_HEAD_DIM:
        pytest.skip(f"the CUDA backward kernels cover head_dim up to {EMU_BWD_MAX_HEAD_DIM}")


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


ABS_TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


def half_ulp(ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Half a unit in the last place of ``dtype`` at each entry of ``ref``: the error of the
    correctly rounded result."""
    info = torch.finfo(dtype)
    mag = ref.abs().clamp_min(info.tiny)
    return torch.exp2(torch.floor(torch.log2(mag))) * (info.eps / 2)


def assert_close(ours: torch.Tensor, ref64: torch.Tensor, naive: Optional[torch.Tensor],
                 what: str, slack: float = 1e-4, float32_naive: bool = False) -> None:
    """docs/semantics.md section 7: 16-bit errors against the float64 oracle must stay within 2x the error
    of a naive computation in the input dtype plus a slack per entry, the larger of ``slack`` times
    the magnitude and half an ulp of the entry (so the correctly rounded result always passes);
    float32/float64 get absolute tolerances (relative to the reference's magnitude). With
    ``float32_naive`` a float32 result also gets twice the error of ``naive`` computed in float32:
    for ill-conditioned inputs (logits of hundreds) float32 arithmetic itself cannot meet the
    absolute tolerance (torch's own float32 sdpa gradients err up to 1.4x it there)."""
    assert ours.shape == ref64.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    ours64, ref = ours.double(), ref64.double()
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(ours64), finite), f"{what}: non-finite entries differ"
    if not finite.any():
        return
    err = (ours64 - ref)[finite].abs()
    mag = max(1.0, ref[finite].abs().max().item())
    if ours.dtype in ABS_TOL:
        tol = torch.full_like(err, ABS_TOL[ours.dtype] * mag)
        if float32_naive:
            assert naive is not None and naive.dtype == torch.float32
            tol += 2 * (naive.double() - ref)[finite].abs().max().item()
    else:
        assert naive is not None
        naive_err = (naive.double() - ref)[finite].abs().max().item()
        tol = 2 * naive_err + half_ulp(ref[finite], ours.dtype).clamp_min(slack * mag)
    worst = (err - tol).argmax()
    assert err[worst] <= tol[worst], f"{what}: max error {err.max().item():.3e}; entry error {err[worst].item():.3e} > tolerance {tol[worst].item():.3e}"


def assert_out_and_grads_close(gen: torch.Generator, out: torch.Tensor, ref: torch.Tensor,
                               naive: Optional[torch.Tensor], inputs: Tuple[torch.Tensor, ...]) -> None:
    """out against the float64 ``ref`` (and the input-dtype ``naive``, or None), then dq, dk, dv
    of a fresh random output gradient against the gradients of both, all through assert_close."""
    assert_close(out, ref, naive, "out")
    dout = randn(gen, *out.shape, dtype=out.dtype)
    grads = torch.autograd.grad(out, inputs, dout)
    refs = torch.autograd.grad(ref, inputs, dout.double())
    naives = (None,) * len(inputs) if naive is None else torch.autograd.grad(naive, inputs, dout)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, refs, naives):
        assert_close(g, r, n, name)


def naive_in(dtype: torch.dtype, q, k, v, **kw) -> Tuple[torch.Tensor, torch.Tensor]:
    """The naive implementation in the inputs' own dtype (None-equivalent for 32/64-bit)."""
    return oracle.attention(q, k, v, dtype=dtype, **kw)
