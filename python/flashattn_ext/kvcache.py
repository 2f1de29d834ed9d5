"""FlashAttention 2.x's ``flash_attn_with_kvcache``: decoding (and chunked prefill) against a KV
cache, contiguous or paged, with the new keys and values appended in place and rotary embedding
applied on the way (docs/semantics.md section 10). Inference only."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _dispatch
from ._seqlens import Seqs, check_block_table, count, host, int_array
from ._validate import BSHD, CACHE, PAGED, Call, MaskSpec, _check_array, _type, dtype_name, flag
from ._validate import is_tensor, prepare

ArrayLike = Any  # torch.Tensor or numpy.ndarray


def flash_attn_with_kvcache(q: ArrayLike, k_cache: ArrayLike, v_cache: ArrayLike,
                            k: Optional[ArrayLike] = None, v: Optional[ArrayLike] = None,
                            rotary_cos: Optional[ArrayLike] = None,
                            rotary_sin: Optional[ArrayLike] = None,
                            cache_seqlens: Optional[Union[int, ArrayLike]] = None,
                            cache_batch_idx: Optional[ArrayLike] = None,
                            cache_leftpad: Optional[ArrayLike] = None,
                            block_table: Optional[ArrayLike] = None,
                            softmax_scale: Optional[float] = None, causal: bool = False,
                            window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                            rotary_interleaved: bool = True,
                            alibi_slopes: Optional[ArrayLike] = None, num_splits: int = 0,
                            return_softmax_lse: bool = False) -> Any:
    """Drop-in for FlashAttention 2.x ``flash_attn_with_kvcache``.

    q: (B, Sq, Hq, D). k_cache, v_cache: (B_cache, S_cache, Hkv, D), or with ``block_table``
    (B, max_blocks_per_seq) int32 paged caches (num_blocks, page_size, Hkv, D) with page_size
    any multiple of 16. k, v (optional, both or neither): (B, Sn, Hkv, D) new keys and values,
    written into the caches in place at rows cache_seqlens[b] .. cache_seqlens[b] + Sn - 1.
    cache_seqlens: int or (B,) int32, the rows already in each cache (default: all of them; needed
    with k, v). cache_batch_idx: (B,) int32 cache row of each batch entry (contiguous caches).
    cache_leftpad: (B,) int32, where each cache starts (contiguous caches). Batch entry b attends
    to its cache rows cache_leftpad[b] .. cache_seqlens[b] + Sn - 1, the causal mask and windows
    aligned bottom-right on those. rotary_cos, rotary_sin: (seqlen_ro, rotary_dim / 2), q's
    dtype (only with k, v): the new keys are rotated at their cache positions; q at positions
    cache_seqlens[b] + i when causal or windowed, else all at cache_seqlens[b];
    ``rotary_interleaved`` pairs dimensions (2i, 2i + 1), else (i, i + rotary_dim / 2).
    num_splits: key splits merged by logsumexp (split-KV); 0 chooses from the shapes.

    Returns out (B, Sq, Hq, D), and with ``return_softmax_lse`` (out, lse (B, Hq, Sq)). No
    gradients (NotImplementedError when any input requires one). softcap > 0 caps the scores at
    softcap·tanh(score / softcap); alibi_slopes (Hq,) or (B, Hq) float32 adds the ALiBi bias
    -slope·|i + Sk - Sq - j| with Sk the entry's keys (docs/semantics.md).
    """
    mask = MaskSpec.make(causal, window_size, bottom_right=True)
    paged = block_table is not None
    call = prepare(q, k_cache, v_cache, layout=BSHD, kv_layout=PAGED if paged else CACHE,
                   names=("q", "k_cache", "v_cache"), scale=softmax_scale, mask=mask,
                   scale_name="softmax_scale")
    mask = mask.with_score_mods(softcap, alibi_slopes, call.q, call.kind)
    _inference_only(q=q, k_cache=k_cache, v_cache=v_cache, k=k, v=v)
    new = _new_kv(call, k, v)
    sn = 0 if new is None else new[0].shape[1]
    seqlens = _cache_seqlens(call, cache_seqlens, sn, paged)
    rotary = _rotary(call, rotary_cos, rotary_sin, new is not None, rotary_interleaved, mask)
    with_lse = flag("return_softmax_lse", return_softmax_lse)
    batch, kcap = call.q.shape[0], call.k.shape[1]
    idx = leftpad = bt = None
    if cache_batch_idx is not None:
        idx = int_array("cache_batch_idx", cache_batch_idx, q, "(batch,)")
        _entries_in("cache_batch_idx", idx, batch, 0, call.k.shape[0] - 1, "k_cache's batch")
    elif not paged and call.k.shape[0] != batch:
        raise ValueError(f"k_cache: batch {call.k.shape[0]} differs from q's {batch}; pass "
                         f"cache_batch_idx to pick cache rows")
    used = host(seqlens).astype(np.int64) + sn
    if cache_leftpad is not None:
        leftpad = int_array("cache_leftpad", cache_leftpad, q, "(batch,)")
        _entries_in("cache_leftpad", leftpad, batch, 0, None, "", host(seqlens))
    if paged:
        if idx is not None or leftpad is not None:
            raise ValueError(f"{'cache_batch_idx' if idx is not None else 'cache_leftpad'}: "
                             f"not supported with a block_table (paged caches); pass None")
        bt = check_block_table(call, block_table, batch, used, "cache_seqlens", "k_cache")
    elif used.max(initial=0) > kcap:
        b = int(np.argmax(used))
        raise ValueError(f"cache_seqlens: batch entry {b} needs {used[b]} cache rows "
                         f"({used[b] - sn} cached + {sn} new), more than k_cache's {kcap}")
    if rotary is not None:
        _rotary_rows(rotary[0], host(seqlens), call.q.shape[1], sn, rotary[3])
    num_splits = count("num_splits", num_splits)

    qrun = call.q
    if new is not None:
        q_rot = _empty_like(call.q) if rotary is not None else None
        _dispatch.append_kv(call.q, q_rot, new[0], new[1], call.k, call.v, rotary, seqlens, idx,
                            bt)
        qrun = call.q if q_rot is None else q_rot
    lens_k = used - (0 if leftpad is None else host(leftpad))
    seqs = Seqs(np.full(batch, call.q.shape[1]), lens_k, seqused_k=_plus(seqlens, sn),
                leftpad_k=leftpad, kv_batch_idx=idx, block_table=bt, num_splits=num_splits)
    out = _empty_like(qrun)
    lse = _dispatch.new_lse(qrun, packed=False)
    _dispatch.forward(qrun, call.k, call.v, out, lse, call.scale, mask, seqs)
    return (out, lse) if with_lse else out


def _inference_only(**arrays: Any) -> None:
    if not any(is_tensor(x) for x in arrays.values()):
        return
    import torch

    for name, x in arrays.items():
        if torch.is_grad_enabled() and is_tensor(x) and x.requires_grad:
            raise NotImplementedError(f"{name}: requires grad, but flash_attn_with_kvcache is "
                                      f"inference only (no backward); call it under "
                                      f"torch.no_grad() or pass {name}.detach()")


def _empty_like(x: Any) -> Any:
    if is_tensor(x):
        import torch

        return torch.empty_like(x, memory_format=torch.preserve_format)
    return np.empty_like(x)


def _new_kv(call: Call, k: Any, v: Any) -> Optional[Tuple[Any, Any]]:
    """The new keys and values, checked against q and the caches."""
    if (k is None) != (v is None):
        raise ValueError(f"k, v: pass both or neither, got k {_type(k)} and v {_type(v)}")
    if k is None:
        return None
    b, _, hk, d = call.k.shape
    for name, x in (("k", k), ("v", v)):
        if is_tensor(x) != is_tensor(call.q) or not hasattr(x, "ndim"):
            raise TypeError(f"{name}: expected an array of q's kind ({_type(call.q)}), got "
                            f"{_type(x)}")
        if x.ndim != 4 or x.shape[0] != call.q.shape[0] or tuple(x.shape[2:]) != (hk, d):
            raise ValueError(f"{name}: expected (batch={call.q.shape[0]}, seqlen_new, "
                             f"heads={hk}, head_dim={d}) like q and k_cache, got "
                             f"{tuple(x.shape)}")
        _check_array(name, x)
        if dtype_name(x) != dtype_name(call.q):
            raise TypeError(f"{name}: dtype {dtype_name(x)} differs from q's {dtype_name(call.q)}")
        if is_tensor(x) and x.device != call.q.device:
            raise ValueError(f"{name}: on device {x.device}, but q is on {call.q.device}")
    if v.shape[1] != k.shape[1]:
        raise ValueError(f"v: {v.shape[1]} new rows, but k has {k.shape[1]}")
    return k, v


def _cache_seqlens(call: Call, cache_seqlens: Any, sn: int, paged: bool) -> Any:
    """cache_seqlens as a (B,) int32 array of q's kind (an int fills it)."""
    batch = call.q.shape[0]
    if cache_seqlens is None:
        if sn:
            raise ValueError("cache_seqlens: None, but k, v are appended; pass the number of "
                             "rows already in each cache (int or (batch,) int32)")
        if paged:
            raise ValueError("cache_seqlens: None with a block_table; pass the number of keys "
                             "of each sequence (int or (batch,) int32)")
        cache_seqlens = call.k.shape[1]
    if isinstance(cache_seqlens, (int, np.integer)) and not isinstance(cache_seqlens, bool):
        n = count("cache_seqlens", cache_seqlens)
        filled = np.full(batch, n, dtype=np.int32)
        if is_tensor(call.q):
            import torch

            return torch.from_numpy(filled).to(call.q.device)
        return filled
    seqlens = int_array("cache_seqlens", cache_seqlens, call.q, "(batch,) or an int")
    _entries_in("cache_seqlens", seqlens, batch, 0, None, "")
    return seqlens


def _entries_in(name: str, x: Any, batch: int, lo: int, hi: Optional[int], what: str,
                upper: Optional[np.ndarray] = None) -> None:
    """x has ``batch`` entries in [lo, hi] (and <= ``upper`` elementwise)."""
    if x.shape[0] != batch:
        raise ValueError(f"{name}: expected shape (batch,) = ({batch},), got {tuple(x.shape)}")
    h = host(x)
    bad = np.flatnonzero((h < lo) | (h > (hi if hi is not None else np.iinfo(np.int32).max)))
    if len(bad):
        b = int(bad[0])
        accepted = f"{lo}..{hi} ({what})" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: entry {b} is {h[b]}; accepted: {accepted}")
    if upper is not None and (h > upper).any():
        b = int(np.flatnonzero(h > upper)[0])
        raise ValueError(f"{name}: entry {b} is {h[b]}, past cache_seqlens[{b}] = {upper[b]}")


def _rotary(call: Call, cos: Any, sin: Any, appending: bool, interleaved: Any,
            mask: MaskSpec) -> Optional[Tuple[Any, Any, bool, bool]]:
    """(cos, sin, interleaved, q_rows_consecutive) or None."""
    interleaved = flag("rotary_interleaved", interleaved)
    if cos is None and sin is None:
        return None
    if cos is None or sin is None:
        raise ValueError(f"rotary_cos, rotary_sin: pass both or neither, got rotary_cos "
                         f"{_type(cos)} and rotary_sin {_type(sin)}")
    if not appending:
        raise ValueError("rotary_cos: rotary embedding applies to appended keys; pass k, v too")
    d = call.q.shape[3]
    for name, x in (("rotary_cos", cos), ("rotary_sin", sin)):
        if is_tensor(x) != is_tensor(call.q) or not hasattr(x, "ndim"):
            raise TypeError(f"{name}: expected an array of q's kind ({_type(call.q)}), got "
                            f"{_type(x)}")
        if x.ndim != 2 or not 1 <= 2 * x.shape[1] <= d:
            raise ValueError(f"{name}: expected (seqlen_ro, rotary_dim / 2) with rotary_dim <= "
                             f"head_dim {d}, got {tuple(x.shape)}")
        _check_array(name, x)
        if dtype_name(x) != dtype_name(call.q):
            raise TypeError(f"{name}: dtype {dtype_name(x)} differs from q's {dtype_name(call.q)}")
        if is_tensor(x) and x.device != call.q.device:
            raise ValueError(f"{name}: on device {x.device}, but q is on {call.q.device}")
    if tuple(sin.shape) != tuple(cos.shape):
        raise ValueError(f"rotary_sin: shape {tuple(sin.shape)} differs from rotary_cos's "
                         f"{tuple(cos.shape)}")
    local = mask.window_left >= 0 or mask.window_right >= 0
    return cos, sin, interleaved, local


def _rotary_rows(cos: Any, seqlens: np.ndarray, sq: int, sn: int, q_consecutive: bool) -> None:
    """The tables must have a row for every position rotated."""
    last = seqlens.astype(np.int64) + max(sn - 1, sq - 1 if q_consecutive else 0)
    if len(last) and last.max() >= cos.shape[0]:
        b = int(np.argmax(last))
        raise ValueError(f"rotary_cos: {cos.shape[0]} rows, but batch entry {b} is rotated up to "
                         f"position {last[b]} (cache_seqlens[{b}] = {seqlens[b]})")


def _plus(seqlens: Any, n: int) -> Any:
    """seqlens + n as int32, same kind and device."""
    if is_tensor(seqlens):
        import torch

        return (seqlens + n).to(torch.int32).contiguous()
    return (seqlens + n).astype(np.int32)
