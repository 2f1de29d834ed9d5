"""flash_attn_with_kvcache against the float64 oracle on the appended cache: contiguous and paged
caches (page sizes 16 and 48), cache_batch_idx, cache_leftpad, rotary embedding (interleaved and
not, full and partial), GQA, masks, several decoding steps in a row with the whole cache checked
after each, every split count against the unsplit result, more kv heads than the CPU decode walks
in lockstep."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest
import torch

import flashattn_ext as fa
import oracle
from attn_testing import assert_close, half_ulp, needs_kernel, randn
from test_varlen import run

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
           interleaved: bool) -> torch.Tensor:
    """Rotary embedding in float64: x (S, H, D) at positions pos (S,)."""
    half = cos.shape[1]
    c, s = cos.double()[pos][:, None], sin.double()[pos][:, None]
    x = x.double()
    y = x.clone()
    a, b = (x[..., 0:2 * half:2], x[..., 1:2 * half:2]) if interleaved else (x[..., :half], x[..., half:2 * half])
    ra, rb = a * c - b * s, b * c + a * s
    if interleaved:
        y[..., 0:2 * half:2], y[..., 1:2 * half:2] = ra, rb
    else:
        y[..., :half], y[..., half:2 * half] = ra, rb
    return y


def stored(x64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A rotated float64 value as the append stores it: rounded to double, float, then dtype."""
    return x64 if dtype == F64 else x64.float().to(dtype).double()


@dataclass
class Cache:
    """A KV cache and where each batch entry's rows live: contiguous (slot per entry, with
    cache_batch_idx) or paged (block_table)."""

    k: torch.Tensor
    v: torch.Tensor
    idx: Optional[torch.Tensor] = None
    table: Optional[torch.Tensor] = None

    def where(self, b: int, pos: int):
        """(slot or page, row) of cache position pos of batch entry b."""
        if self.table is None:
            return (int(self.idx[b]) if self.idx is not None else b), pos
        ps = self.k.shape[1]
        return int(self.table[b, pos // ps]), pos % ps

    def rows(self, x: torch.Tensor, b: int, lo: int, hi: int) -> torch.Tensor:
        return torch.stack([x[self.where(b, p)] for p in range(lo, hi)]) if hi > lo else x[0, :0]


def make_cache(gen, layout: str, batch: int, capacity: int, hkv: int, d: int, dtype) -> Cache:
    if layout.startswith("paged"):
        ps = int(layout[5:])
        per = -(-capacity // ps)
        pages = batch * per + 2
        table = torch.randperm(pages, generator=gen)[:batch * per].reshape(batch, per)
        return Cache(randn(gen, pages, ps, hkv, d, dtype=dtype), randn(gen, pages, ps, hkv, d, dtype=dtype),
                     table=table.to(torch.int32))
    slots = batch + 2 if layout == "batch_idx" else batch
    idx = torch.randperm(slots, generator=gen)[:batch].to(torch.int32) if layout == "batch_idx" else None
    return Cache(randn(gen, slots, capacity, hkv, d, dtype=dtype), randn(gen, slots, capacity, hkv, d, dtype=dtype),
                 idx=idx)


def step(backend, gen, cache: Cache, q, kn, vn, seqlens, leftpad=None, rotary=None, causal=False,
         window=(-1, -1), num_splits=0):
    """One call, then checks of the whole cache (untouched rows bitwise, v appended exactly, k
    within one rounding of the exact rotation) and of out, lse against the oracle over each
    entry's cache rows leftpad .. seqlens + Sn - 1."""
    dtype, (b, sq, _, _) = q.dtype, q.shape
    sn = 0 if kn is None else kn.shape[1]
    k_before, v_before = cache.k.clone(), cache.v.clone()
    cos, sin, inter = rotary if rotary else (None, None, True)
    out, lse = run(backend, fa.flash_attn_with_kvcache, q, cache.k, cache.v, kn, vn, rotary_cos=cos,
                   rotary_sin=sin, cache_seqlens=seqlens, cache_batch_idx=cache.idx, cache_leftpad=leftpad,
                   block_table=cache.table, causal=causal, window_size=window, rotary_interleaved=inter,
                   num_splits=num_splits, return_softmax_lse=True)
    consecutive = causal or window != (-1, -1)
    k_expected, v_expected = k_before.clone(), v_before.clone()
    refs, lses, naives = [], [], []
    for i in range(b):
        n0 = int(seqlens[i]) if torch.is_tensor(seqlens) else seqlens
        pos = torch.arange(n0, n0 + sn)
        new_k = rotate(kn[i], cos, sin, pos, inter) if rotary and sn else (kn[i].double() if sn else None)
        for j in range(sn):
            at = cache.where(i, n0 + j)
            got = cache.k[at].double()
            tol = 2 * half_ulp(new_k[j], dtype) if dtype in (BF16, F16) else {F32: 1e-6, F64: 1e-13}[dtype]
            assert ((got - new_k[j]).abs() <= tol).all(), f"appended k row {j} of entry {i}"
            k_expected[at], v_expected[at] = cache.k[at], vn[i, j]
        qpos = torch.arange(n0, n0 + sq) if consecutive else torch.full((sq,), n0)
        q64 = rotate(q[i], cos, sin, qpos, inter) if rotary else q[i].double()
        q64 = stored(q64, dtype)  # the kernels attend with the rotated q in q's dtype
        lo = 0 if leftpad is None else int(leftpad[i])
        keys, vals = cache.rows(cache.k, i, lo, n0 + sn), cache.rows(cache.v, i, lo, n0 + sn)
        if len(keys) == 0:
            refs.append(torch.zeros(sq, *q.shape[2:], dtype=F64))
            lses.append(torch.full((q.shape[2], sq), -math.inf, dtype=F64))
            naives.append(refs[-1].to(dtype))
            continue
        kw = dict(causal=causal, window=window)
        o, l = oracle.attention(q64[None], keys[None], vals[None], **kw)
        refs.append(o[0])
        lses.append(l[0])
        naives.append(oracle.attention(q64.to(dtype)[None], keys[None], vals[None], dtype=dtype, **kw)[0][0])
    assert torch.equal(cache.k, k_expected) and torch.equal(cache.v, v_expected), "cache rows changed"
    ref, ref_lse = torch.stack(refs), torch.stack(lses)
    assert out.shape == q.shape and lse.shape == (b, q.shape[2], sq)
    assert_close(out, ref, torch.stack(naives) if dtype in (BF16, F16) else None, "out")
    assert_close(lse, ref_lse.to(lse.dtype), None, "lse")
    return out, lse, ref


def tables(gen, rows: int, rotary_dim: int, dtype):
    angle = torch.rand(rows, rotary_dim // 2, generator=gen, dtype=F64) * 2 * math.pi
    return angle.cos().to(dtype), angle.sin().to(dtype)


ROTARY = ["none", "interleaved", "neox_half"]
MASKS = [(False, (-1, -1)), (True, (-1, -1)), (False, (9, 2))]


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "batch_idx", "paged16", "paged48"])
@pytest.mark.parametrize("rope", ROTARY)
@pytest.mark.parametrize("mask", MASKS, ids=["full", "causal", "window9_2"])
def test_kvcache_matches_oracle(backend, gen, dtype, layout, rope, mask):
    needs_kernel(backend, dtype)
    hq, hkv, d, batch, capacity = 6, 2, 32, 3, 160
    cache = make_cache(gen, layout, batch, capacity, hkv, d, dtype)
    sq = (1, 4)[int(torch.randint(0, 2, (1,), generator=gen))]
    sn = int(torch.randint(1, 6, (1,), generator=gen))
    seqlens = torch.tensor([0, 1, 97], dtype=torch.int32)[torch.randperm(3, generator=gen)]
    leftpad = None
    if layout == "batch_idx":  # cache_leftpad with contiguous caches
        leftpad = torch.minimum(seqlens, torch.tensor([3, 0, 20], dtype=torch.int32))
    rotary = None
    if rope != "none":
        cos, sin = tables(gen, capacity + 8, d if rope == "interleaved" else d // 2, dtype)
        rotary = (cos, sin, rope == "interleaved")
    q = randn(gen, batch, sq, hq, d, dtype=dtype)
    kn, vn = (randn(gen, batch, sn, hkv, d, dtype=dtype) for _ in range(2))
    step(backend, gen, cache, q, kn, vn, seqlens, leftpad, rotary, causal=mask[0], window=mask[1])


@pytest.mark.parametrize("layout", ["contiguous", "paged16"])
@pytest.mark.parametrize("dtype", [F16, F32], ids=str)
def test_decode_steps(backend, gen, layout, dtype):
    """A prefill chunk, then one token at a time: the cache is checked after every step."""
    needs_kernel(backend, dtype)
    hq, hkv, d, batch, capacity = 4, 1, 64, 2, 96
    cache = make_cache(gen, layout, batch, capacity, hkv, d, dtype)
    cos, sin = tables(gen, capacity, d, dtype)
    seqlens = torch.tensor([0, 5], dtype=torch.int32)
    for n in (7, 1, 1, 1, 1, 2):
        q = randn(gen, batch, n, hq, d, dtype=dtype)
        kn, vn = (randn(gen, batch, n, hkv, d, dtype=dtype) for _ in range(2))
        step(backend, gen, cache, q, kn, vn, seqlens, rotary=(cos, sin, False), causal=True)
        seqlens = seqlens + n


@pytest.mark.parametrize("layout", ["contiguous", "paged16"])
def test_every_split_count_matches_unsplit(gen, layout):
    """Split-KV: every num_splits gives the unsplit result up to float32 rounding (and the
    oracle's); 0 chooses splits for this one-tile decode (fewer tiles than threads)."""
    d, capacity = 64, 1000
    cache = make_cache(gen, layout, 1, capacity, 1, d, F32)
    q = randn(gen, 1, 1, 2, d)
    seqlens = torch.tensor([990], dtype=torch.int32)
    args = dict(cache_seqlens=seqlens, block_table=cache.table, return_softmax_lse=True)
    ref, ref_lse = fa.flash_attn_with_kvcache(q, cache.k, cache.v, num_splits=1, **args)
    for splits in range(0, 9):
        out, lse, _ = step("cpu", gen, cache, q, None, None, seqlens, num_splits=splits)
        assert (out - ref).abs().max() <= 4e-6 * ref.abs().max(), splits
        assert (lse - ref_lse).abs().max() <= 4e-6 * ref_lse.abs().max(), splits


def test_emulated_split_kv_matches_unsplit(gen, monkeypatch):
    """The CUDA split-KV forward and combine kernel on the emulator: every split count (and 0, the
    SM-filling choice) passes the oracle, and differs from the unsplit output by at most twice the
    unsplit kernel's own error plus half an ulp (the kernels round P to bfloat16 relative to each
    split's row max, so the splits' roundings differ); paged with pages of 16 (tiles of 96 keys
    cross pages)."""
    if importlib.util.find_spec("flashattn_ext._emu") is None:
        pytest.skip("built without the emulator (FLASHATTN_EXT_EMULATOR=ON builds it)")
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    d, capacity = 64, 640
    cache = make_cache(gen, "paged16", 2, capacity, 1, d, BF16)
    q = randn(gen, 2, 1, 2, d, dtype=BF16)
    seqlens = torch.tensor([600, 37], dtype=torch.int32)
    ref, ref_lse, exact = step("emu", gen, cache, q, None, None, seqlens, num_splits=1)
    err = (ref.double() - exact).abs().max()
    for splits in (0, 2, 3, 7):
        out, lse, _ = step("emu", gen, cache, q, None, None, seqlens, num_splits=splits)
        assert ((out.double() - ref.double()).abs() <= 2 * err + half_ulp(ref.double(), BF16)).all(), splits
        assert (lse - ref_lse).abs().max() <= 4e-6 * ref_lse.abs().max(), splits


@pytest.mark.parametrize("layout", ["contiguous", "paged16"])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("splits", [0, 3])
def test_decode_many_kv_heads(gen, layout, dtype, splits):
    """Decoding with more kv heads than the CPU forward walks in lockstep (16): heads 0-15 and
    16-18 in two groups, GQA groups of 2, an empty, a one-key and a long cache entry."""
    hkv, d, batch, capacity = 19, 32, 3, 200
    cache = make_cache(gen, layout, batch, capacity, hkv, d, dtype)
    seqlens = torch.tensor([0, 1, 180], dtype=torch.int32)[torch.randperm(3, generator=gen)]
    for sq in (1, 2):
        q = randn(gen, batch, sq, 2 * hkv, d, dtype=dtype)
        step("cpu", gen, cache, q, None, None, seqlens, causal=sq > 1, num_splits=splits)


def test_without_new_keys(gen):
    """No k, v: attention over each entry's first cache_seqlens rows (an int, or the whole cache
    when None); the cache is left as it was."""
    cache = make_cache(gen, "contiguous", 2, 50, 2, 16, F32)
    q = randn(gen, 2, 3, 4, 16)
    step("cpu", gen, cache, q, None, None, 33, causal=True)
    out = fa.flash_attn_with_kvcache(q, cache.k, cache.v)
    ref = oracle.attention(q, cache.k, cache.v)[0]
    assert_close(out, ref, None, "out")


def test_numpy_kvcache_appends_in_place(gen):
    cache = make_cache(gen, "contiguous", 2, 40, 1, 16, F32)
    q, kn, vn = randn(gen, 2, 1, 2, 16), randn(gen, 2, 1, 1, 16), randn(gen, 2, 1, 1, 16)
    cos, sin = tables(gen, 40, 16, F32)
    seqlens = torch.tensor([4, 30], dtype=torch.int32)
    kc, vc = cache.k.numpy().copy(), cache.v.numpy().copy()
    out = fa.flash_attn_with_kvcache(q.numpy(), kc, vc, kn.numpy(), vn.numpy(), cos.numpy(), sin.numpy(),
                                     seqlens.numpy(), causal=True)
    ref = fa.flash_attn_with_kvcache(q, cache.k, cache.v, kn, vn, cos, sin, seqlens, causal=True)
    assert isinstance(out, np.ndarray) and np.array_equal(out, ref.numpy())
    assert np.array_equal(kc, cache.k.numpy()) and np.array_equal(vc, cache.v.numpy())


def test_inference_only(gen):
    cache = make_cache(gen, "contiguous", 1, 8, 1, 8, F32)
    q = randn(gen, 1, 1, 1, 8).requires_grad_()
    with pytest.raises(NotImplementedError, match="q: requires grad, but flash_attn_with_kvcache "
                                                  "is inference only"):
        fa.flash_attn_with_kvcache(q, cache.k, cache.v, cache_seqlens=3)
    with torch.no_grad():
        fa.flash_attn_with_kvcache(q, cache.k, cache.v, cache_seqlens=3)


@pytest.mark.parametrize("d", [8, 40, 72, 100, 136])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_decode_every_column_count_and_head_dim(gen, d, dtype):
    """The CPU decode's narrow tiles (csrc/cpu/forward.h, narrow_kernel) for every column count
    1-8 (GQA group x query rows) and head dims that are not whole vectors, against the oracle:
    the scores' blocks of keys reduced together, with a key count that leaves a partial block, and
    the values' passes along D with a partial last vector."""
    sk = 141
    for hq, sq in ((1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (3, 2), (7, 1), (4, 2)):
        q = randn(gen, 1, sq, 2 * hq, d, dtype=dtype)
        k, v = (randn(gen, 1, sk, 2, d, dtype=dtype) for _ in range(2))
        out = fa.flash_attn_func(q, k, v, causal=sq > 1)
        ref = oracle.attention(q, k, v, causal=sq > 1)[0]
        naive = oracle.attention(q, k, v, causal=sq > 1, dtype=dtype)[0]
        assert_close(out, ref, naive, f"out hq {hq} sq {sq}")
