"""The CUDA backward on the SIMT emulator: every head dim in both shared-memory tiers, the
deterministic mode, and the error where a device's shared memory holds no tile."""

from __future__ import annotations

import pytest
import torch

import flashattn_ext as fa
import oracle
from attn_testing import assert_close, naive_in, randn

try:  # the head dims with a backward kernel, from their one home (csrc/cuda/flash/head_dims.h)
    from flashattn_ext._emu import attention_bwd_head_dims as BWD_HEAD_DIMS
except ImportError:  # the emu fixture skips every test then
    BWD_HEAD_DIMS = [64]

BF16 = torch.bfloat16
TIERS = {"99KiB": 99 * 1024, "163KiB": 163 * 1024}  # sm_86 / sm_89, and sm_80 per-block limits


def _grads(q, k, v, dout, deterministic: bool):
    out = fa.flash_attn_func(q, k, v, causal=True, deterministic=deterministic)
    return torch.autograd.grad(out, (q, k, v), dout)


@pytest.mark.parametrize("deterministic", (False, True), ids=("atomic", "deterministic"))
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("head_dim", BWD_HEAD_DIMS)
def test_backward_every_head_dim_and_tier(emu, monkeypatch, gen, head_dim, tier, deterministic):
    """GQA (4 query heads on 2 kv heads), causal, Sq != Sk with partial tiles: dq, dk, dv within the
    bfloat16 rule of the float64 oracle."""
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    emu.configure(smem_limit=TIERS[tier])
    q = randn(gen, 1, 70, 4, head_dim, dtype=BF16).requires_grad_()
    k, v = (randn(gen, 1, 135, 2, head_dim, dtype=BF16).requires_grad_() for _ in range(2))
    dout = randn(gen, 1, 70, 4, head_dim, dtype=BF16)
    grads = _grads(q, k, v, dout, deterministic)
    ref = oracle.attention(q, k, v, causal=True)[0]
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout.double())
    naive_grads = torch.autograd.grad(naive_in(BF16, q, k, v, causal=True)[0], (q, k, v), dout)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref_grads, naive_grads):
        assert_close(g, r, n, name)


@pytest.mark.parametrize("head_dim", (64, 128))
@pytest.mark.parametrize("how", ("argument", "set_deterministic", "environment"))
def test_deterministic_mode_is_bitwise_reproducible(emu, monkeypatch, gen, how, head_dim):
    """dq, dk, dv bitwise identical for 1, 2 and 3 emulator worker threads (blocks of different
    key blocks run concurrently or not) and shuffled thread orders, GQA, 8-16 key blocks per kv
    head. In the default atomic mode dq is summed over key blocks in the order the blocks happen
    to run: for these inputs it differs between worker counts in most runs."""
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    q = randn(gen, 1, 64, 4, head_dim, dtype=BF16).requires_grad_()
    k, v = (randn(gen, 1, 1024, 2, head_dim, dtype=BF16).requires_grad_() for _ in range(2))
    dout = randn(gen, 1, 64, 4, head_dim, dtype=BF16)
    if how == "set_deterministic":
        fa.set_deterministic(True)
    elif how == "environment":
        monkeypatch.setenv("FLASHATTN_EXT_DETERMINISTIC", "1")
    try:
        runs = []
        for threads, seed in ((1, None), (2, None), (3, 1), (2, 2)):
            emu.configure(threads=threads)
            emu.set_seed(seed)
            runs.append(_grads(q, k, v, dout, how == "argument"))
    finally:
        fa.set_deterministic(False)
    for other in runs[1:]:
        for name, a, b in zip(("dq", "dk", "dv"), runs[0], other):
            assert torch.equal(a, b), name


def test_workspace_of_the_deterministic_mode(emu):
    """Workspace (float32 elements): 4 statistics per row and the dQ accumulator, rows rounded up to
    128 per (batch, head); deterministic mode keeps min(ceil(Sk / 128), ceil(128 / (B * Hkv)))
    copies of the accumulator."""
    b, sq, sk, hq, hkv, d = 2, 300, 1000, 8, 2, 64
    rows = b * hq * 384
    assert emu.attention_bwd_workspace(sizes=(b, sq, sk, hq, hkv, d), deterministic=False) == (4 * rows, rows * d)
    assert emu.attention_bwd_workspace(sizes=(b, sq, sk, hq, hkv, d), deterministic=True) == (4 * rows, 8 * rows * d)
    assert emu.attention_bwd_workspace(sizes=(b, sq, 100, hq, hkv, d), deterministic=True) == (4 * rows, rows * d)


def test_head_dim_beyond_the_devices_shared_memory(emu, monkeypatch, gen):
    """A device whose blocks get less shared memory than the head dim's smallest tile: a ValueError
    naming the head dim and the limit, not a launch failure."""
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    q, k, v = (randn(gen, 1, 40, 1, 256, dtype=BF16).requires_grad_() for _ in range(3))
    out = fa.flash_attn_func(q, k, v, causal=True)
    emu.configure(smem_limit=64 * 1024)
    with pytest.raises(ValueError, match=r"head_dim 256: .* 65536"):
        torch.autograd.grad(out, (q, k, v), torch.ones_like(out))


def test_varlen_backward_both_modes(emu, monkeypatch, gen):
    """Packed sequences on the variable-length backward kernels (lengths 0, 1, a tile edge and
    several key blocks, Sq != Sk per sequence, GQA, causal): dq, dk, dv within the bfloat16 rule
    of the float64 oracle in both modes; deterministic mode bitwise identical across worker counts
    and thread orders."""
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    lens_q, lens_k = [33, 0, 1, 64, 90], [70, 5, 0, 64, 260]
    cq, ck = (torch.tensor([0, *torch.tensor(x).cumsum(0).tolist()], dtype=torch.int32) for x in (lens_q, lens_k))
    q = randn(gen, sum(lens_q), 4, 64, dtype=BF16).requires_grad_()
    k, v = (randn(gen, sum(lens_k), 2, 64, dtype=BF16).requires_grad_() for _ in range(2))
    dout = randn(gen, sum(lens_q), 4, 64, dtype=BF16)

    def grads(deterministic: bool):
        out = fa.flash_attn_varlen_func(q, k, v, cq, ck, max(lens_q), max(lens_k), causal=True,
                                        deterministic=deterministic)
        return torch.autograd.grad(out, (q, k, v), dout)

    ref = oracle.varlen_attention(q, k, v, cq, ck, causal=True)[0]
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout.double())
    naive = oracle.varlen_attention(q, k, v, cq, ck, causal=True, dtype=BF16)[0]
    naive_grads = torch.autograd.grad(naive, (q, k, v), dout)
    runs = []
    for threads, seed in ((1, None), (3, 1), (2, 2)):
        emu.configure(threads=threads)
        emu.set_seed(seed)
        runs.append(grads(True))
    for name, g, r, n in zip(("dq", "dk", "dv"), grads(False), ref_grads, naive_grads):
        assert_close(g, r, n, name)
    for name, g, r, n in zip(("dq", "dk", "dv"), runs[0], ref_grads, naive_grads):
        assert_close(g, r, n, name)
    for other in runs[1:]:
        for name, a, b in zip(("dq", "dk", "dv"), runs[0], other):
            assert torch.equal(a, b), name
