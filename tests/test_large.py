"""A tensor of more than 2**31 elements (opt-in, FLASHATTN_EXT_SLOW_TESTS=1): any 32-bit element
offset would wrap around. A float16 query of shape (1, 2**21 + 32, 16, 64), 2**31 + 32768 elements
(4 GiB), attends to 64 keys; forward and backward run on the CPU, and query rows at the start, the
middle and the end (rows from 2**21 on start past element 2**31) are checked against the float64
oracle: out, lse and dq of a row depend on that row alone. dout is one random (16, 64) block
broadcast over the rows (stride 0), so it costs no memory. Peak memory about 14 GiB (13.7 GiB
measured): q, out and dq of 4 GiB each plus per-task float32 dq accumulators of 512 MiB; under
3 min of CPU time on 2 cores."""

from __future__ import annotations

import os

import pytest
import torch

import flashattn_ext as fa
import oracle
from attn_testing import assert_close, naive_in, randn

pytestmark = pytest.mark.skipif(
    os.environ.get("FLASHATTN_EXT_SLOW_TESTS") != "1",
    reason="slow (minutes) and about 14 GiB of memory: set FLASHATTN_EXT_SLOW_TESTS=1 to run")

F16 = torch.float16
SQ, SK, H, D = 2**21 + 32, 64, 16, 64


def random_f16(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Standard normal float16, filled in row blocks so no float32 copy of it ever exists."""
    x = torch.empty(*shape, dtype=F16)
    for start in range(0, shape[1], 2**16):
        x[:, start:start + 2**16].normal_(generator=gen)
    return x


def test_query_of_more_than_2_pow_31_elements(gen):
    q = random_f16(gen, 1, SQ, H, D).requires_grad_()
    assert q.numel() > 2**31
    k, v = (randn(gen, 1, SK, H, D, dtype=F16).requires_grad_() for _ in range(2))
    dout_block = randn(gen, 1, 1, H, D, dtype=F16)
    out, lse = fa.attention(q, k, v, return_lse=True)
    (dq,) = torch.autograd.grad(out, (q,), dout_block.expand(1, SQ, H, D))

    picks = torch.randint(0, SQ, (4,), generator=gen).tolist()
    rows = torch.tensor(sorted({0, 1, SQ // 2, 2**21 - 1, 2**21, SQ - 1, *picks}))
    q_rows = q.detach()[:, rows].requires_grad_()
    dout_rows = dout_block.expand(1, len(rows), H, D)
    ref, ref_lse = oracle.attention(q_rows, k, v)
    (ref_dq,) = torch.autograd.grad(ref, (q_rows,), dout_rows.double())
    naive = naive_in(F16, q_rows, k, v)[0]
    (naive_dq,) = torch.autograd.grad(naive, (q_rows,), dout_rows)
    assert_close(out[:, rows], ref, naive, "out")
    assert_close(lse[:, :, rows], ref_lse.float(), None, "lse")
    assert_close(dq[:, rows], ref_dq, naive_dq, "dq")
