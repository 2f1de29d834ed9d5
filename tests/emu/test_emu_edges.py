"""Edge tiles of the CUDA kernels, run on the SIMT emulator through the torch entry points.

For every distinct (query tile BM, key tile BN) of the forward and of the backward kernel (both
shared-memory tiers of the backward, the emulator's limit raised to sm_80's for the large one),
read from the kernels' traits (``_emu.attention_tiles``) and taken at the smallest head dim that
has it: Sk in {BN-1, BN, BN+1, 2BN-1} (a partial tile, an exact one, one key past it, one key short of
two) under bottom-right causal, top-left causal and a sliding window; Sq in {1, 2, BM-1, BM+1}.
out, and the backward's dq, dk, dv of a loss that uses out and lse, follow the bfloat16 tolerance rule against the float64 oracle; lse is
checked with its absolute tolerance every time.

Sq <= 2 makes rows that see one or two keys (top-left causal), where the backward's dS is a
small difference: its delta and softmax sum come from the kernel's own P and dP, so these rows
meet the rule too.

By default half of the sweep runs (Sq = 1 and BM+1 forward, Sq = 2 and BM+1 backward);
FLASHATTN_EXT_LONG_TESTS=1 runs all of it."""

from __future__ import annotations

import importlib
import os
from typing import Dict, List, Tuple

import pytest
import torch

import flashattn_ext as fa
import flashattn_ext._torch_ops  # noqa: F401  (registers torch.ops.flashattn_ext.fwd)
import oracle
from attn_testing import assert_close, randn

BF16 = torch.bfloat16
LONG = os.environ.get("FLASHATTN_EXT_LONG_TESTS", "") == "1"
MASKS = ("bottom_right", "top_left", "window")


def _window(bn: int) -> Tuple[int, int]:
    """(left, right) of the window cases. left = BN-2: with Sq = 1, Sk = 2BN-1 the row skips key
    tile 0; with Sq = BM+1, Sk = 2BN-1 the first row of query tile 0 sees all of key tile 0 and its
    last row does not. right = 1: with Sq = BM+1, Sk = BN+1 (BM = BN or BN/2) row BM-1, the last of
    a query tile, is the first row that sees key tile 1."""
    return bn - 2, 1


def _tile_shapes() -> List[Tuple[str, int, int, int]]:
    """(direction, head dim, BM, BN): each distinct tile shape once, at its smallest head dim;
    direction "backward_large" is the backward's tile for sm_80 / sm_90 where it differs."""
    try:
        emu = importlib.import_module("flashattn_ext._emu")
    except ImportError:
        return []
    first: Dict[Tuple[str, int, int], int] = {}
    for (direction, d), tile in sorted(emu.attention_tiles.items()):
        first.setdefault((direction, tile["block_m"], tile["block_n"]), d)
    return [(direction, d, bm, bn) for (direction, bm, bn), d in first.items()]


SM80_SMEM = 163 * 1024  # bytes of shared memory per block on sm_80: the large tier's limit


def _cases() -> List[Tuple[str, int, int, int, int, int, str]]:
    cases = []
    for direction, d, bm, bn in _tile_shapes():
        if LONG:
            sqs = (1, 2, bm - 1, bm + 1)
        else:
            sqs = (1, bm + 1) if direction == "forward" else (2, bm + 1)
        for sq in sqs:
            for sk in (bn - 1, bn, bn + 1, 2 * bn - 1):
                cases += [(direction, d, bm, bn, sq, sk, mask) for mask in MASKS]
    return cases


CASES = _cases()
IDS = [f"{c[0]}-d{c[1]}-bm{c[2]}-bn{c[3]}-sq{c[4]}-sk{c[5]}-{c[6]}" for c in CASES]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: str, bn: int):
    """out, lse of the public functions' alignment rules; top-left causal (the alignment of
    scaled_dot_product_attention, which returns no lse) through the torch operator they call."""
    if mask == "top_left":
        return torch.ops.flashattn_ext.fwd(q, k, v, q.shape[-1] ** -0.5, -1, 0, False)
    window = _window(bn) if mask == "window" else (-1, -1)
    out, lse, _ = fa.flash_attn_func(q, k, v, causal=mask == "bottom_right", window_size=window,
                                     return_attn_probs=True)
    return out, lse


def _oracle(q, k, v, mask: str, bn: int, dtype: torch.dtype):
    return oracle.attention(q, k, v, causal=mask != "window", bottom_right=mask != "top_left",
                            window=_window(bn) if mask == "window" else (-1, -1), dtype=dtype)


@pytest.mark.skipif(not CASES, reason="built without the emulator (FLASHATTN_EXT_EMULATOR=ON)")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_edge_tiles(emu, monkeypatch, gen, case):
    direction, d, _, bn, sq, sk, mask = case
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    if direction == "backward_large":
        emu.configure(smem_limit=SM80_SMEM)
    q, k, v = (randn(gen, 1, s, 1, d, dtype=BF16).requires_grad_() for s in (sq, sk, sk))
    out, lse = _attend(q, k, v, mask, bn)
    exact = [x.detach().double().requires_grad_() for x in (q, k, v)]  # gradients not rounded
    ref, ref_lse = _oracle(*exact, mask, bn, torch.float64)
    naive, naive_lse = _oracle(q, k, v, mask, bn, BF16)
    assert_close(out, ref, naive, "out")
    assert_close(lse, ref_lse.float(), None, "lse")
    if direction == "forward":
        return
    # The loss uses out and lse, so the backward also takes the lse gradient.
    dout, dlse = randn(gen, *out.shape, dtype=BF16), randn(gen, *lse.shape)
    grads = torch.autograd.grad((out, lse), (q, k, v), (dout, dlse))
    ref_grads = torch.autograd.grad((ref, ref_lse), exact, (dout.double(), dlse.double()))
    naive_grads = torch.autograd.grad((naive, naive_lse), (q, k, v), (dout, dlse.to(BF16)))
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref_grads, naive_grads):
        assert_close(g, r, n, name)
