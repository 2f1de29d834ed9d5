"""FlashAttention 2.x's variable-length (packed) entry points and the packed-QKV wrappers.

A variable-length batch is its sequences one after the other, without padding: q is
(total_q, Hq, D), k and v (total_k, Hkv, D), and ``cu_seqlens_q`` / ``cu_seqlens_k`` (int32,
(batch + 1,), starting at 0, ending at the totals) are the prefix sums of the lengths. Each
sequence is its own attention problem: the causal mask and windows align bottom-right on its own
lengths (docs/semantics.md section 10); a sequence may be empty. lse is (Hq, total_q)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

from . import _dispatch
from ._seqlens import check_varlen, varlen_seqs
from ._validate import PACKED, PAGED, MaskSpec, _kind, flag, is_tensor, prepare
from .functional import flash_attn_func

ArrayLike = Any  # torch.Tensor or numpy.ndarray


def flash_attn_varlen_func(q: ArrayLike, k: ArrayLike, v: ArrayLike, cu_seqlens_q: ArrayLike,
                           cu_seqlens_k: ArrayLike, max_seqlen_q: int, max_seqlen_k: int,
                           dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                           causal: bool = False, window_size: Tuple[int, int] = (-1, -1),
                           softcap: float = 0.0, alibi_slopes: Optional[ArrayLike] = None,
                           deterministic: bool = False, return_attn_probs: bool = False,
                           block_table: Optional[ArrayLike] = None, *,
                           seed: Optional[int] = None) -> Any:
    """Drop-in for FlashAttention 2.x ``flash_attn_varlen_func``.

    q: (total_q, Hq, D); k, v: (total_k, Hkv, D), or with ``block_table`` (batch,
    max_blocks_per_seq) int32 paged caches (num_blocks, page_size, Hkv, D), page_size a multiple
    of 16, sequence b's keys being the first cu_seqlens_k[b + 1] - cu_seqlens_k[b] positions of
    its pages (forward only). max_seqlen_q / max_seqlen_k: ints at least every sequence's length.
    Forward and backward (gradients into the packed q, k, v; torch tensors); numpy arrays give
    numpy results. Returns out (total_q, Hq, D); with ``return_attn_probs`` (out, softmax_lse,
    None), softmax_lse (Hq, total_q) float32 (float64 for float64 inputs). softcap and
    alibi_slopes ((Hq,) or (batch, Hq) float32) as in :func:`flash_attn_func`, on each sequence's
    own lengths. ``dropout_p`` and ``seed`` as in :func:`flash_attn_func` (element (b, h, i, j):
    sequence b, its query row i and key j).
    """
    mask = MaskSpec.make(causal, window_size, bottom_right=True)
    paged = block_table is not None
    call = prepare(q, k, v, layout=PACKED, kv_layout=PAGED if paged else None, scale=softmax_scale,
                   mask=mask, scale_name="softmax_scale")
    cq, ck, bt = check_varlen(call, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                              block_table)
    mask = mask.with_score_mods(softcap, alibi_slopes, call.q, call.kind, batch=cq.shape[0] - 1)
    mask = mask.with_dropout(dropout_p, seed, call.q, call.kind)
    with_probs = flag("return_attn_probs", return_attn_probs)
    if call.kind == "numpy":
        out, lse = _dispatch.numpy_forward(call.q, call.k, call.v, call.scale, mask,
                                           varlen_seqs(cq, ck, bt))
    else:
        if paged and _wants_grad(q, k, v):
            raise NotImplementedError("block_table: no gradients through paged K/V (inference "
                                      "only); call under torch.no_grad() or detach q, k, v")
        from . import _torch_ops

        out, lse = _torch_ops.apply_varlen(q, k, v, cq, ck, bt, call.scale, mask,
                                           flag("deterministic", deterministic))
        return (out, lse, None) if with_probs else out
    out = call.output(out)
    return (out, lse, None) if with_probs else out


def _wants_grad(*xs: Any) -> bool:
    import torch

    return torch.is_grad_enabled() and any(is_tensor(x) and x.requires_grad for x in xs)


def _unpack(name: str, x: Any, n: int, dims: str, axis: int) -> Tuple[Any, ...]:
    """The n tensors packed along ``axis`` of x (views: gradients land in x)."""
    _kind(name, x)
    if x.ndim != len(dims.split(",")) or x.shape[axis] != n:
        raise ValueError(f"{name}: expected shape {dims} with {n} at dimension {axis}, got "
                         f"{tuple(x.shape)}")
    return tuple(x[(slice(None),) * axis + (i,)] for i in range(n))


def flash_attn_qkvpacked_func(qkv: ArrayLike, dropout_p: float = 0.0,
                              softmax_scale: Optional[float] = None, causal: bool = False,
                              window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                              alibi_slopes: Optional[ArrayLike] = None,
                              deterministic: bool = False, return_attn_probs: bool = False, *,
                              seed: Optional[int] = None) -> Any:
    """flash_attn_func on qkv (B, S, 3, H, D) (gradient: one (B, S, 3, H, D) tensor)."""
    q, k, v = _unpack("qkv", qkv, 3, "(B, S, 3, H, D)", 2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs, seed=seed)


def flash_attn_kvpacked_func(q: ArrayLike, kv: ArrayLike, dropout_p: float = 0.0,
                             softmax_scale: Optional[float] = None, causal: bool = False,
                             window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                             alibi_slopes: Optional[ArrayLike] = None, deterministic: bool = False,
                             return_attn_probs: bool = False, *, seed: Optional[int] = None) -> Any:
    """flash_attn_func on q (B, Sq, Hq, D) and kv (B, Sk, 2, Hkv, D)."""
    k, v = _unpack("kv", kv, 2, "(B, S, 2, H, D)", 2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs, seed=seed)


def flash_attn_varlen_qkvpacked_func(qkv: ArrayLike, cu_seqlens: ArrayLike, max_seqlen: int,
                                     dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                                     causal: bool = False,
                                     window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                                     alibi_slopes: Optional[ArrayLike] = None,
                                     deterministic: bool = False,
                                     return_attn_probs: bool = False, *,
                                     seed: Optional[int] = None) -> Any:
    """flash_attn_varlen_func on qkv (total, 3, H, D), one cu_seqlens for queries and keys."""
    q, k, v = _unpack("qkv", qkv, 3, "(total, 3, H, D)", 1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p, softmax_scale, causal, window_size, softcap,
                                  alibi_slopes, deterministic, return_attn_probs, seed=seed)


def flash_attn_varlen_kvpacked_func(q: ArrayLike, kv: ArrayLike, cu_seqlens_q: ArrayLike,
                                    cu_seqlens_k: ArrayLike, max_seqlen_q: int, max_seqlen_k: int,
                                    dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                                    causal: bool = False,
                                    window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                                    alibi_slopes: Optional[ArrayLike] = None,
                                    deterministic: bool = False,
                                    return_attn_probs: bool = False, *,
                                    seed: Optional[int] = None) -> Any:
    """flash_attn_varlen_func on q (total_q, Hq, D) and kv (total_k, 2, Hkv, D)."""
    k, v = _unpack("kv", kv, 2, "(total, 2, H, D)", 1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                  max_seqlen_k, dropout_p, softmax_scale, causal, window_size,
                                  softcap, alibi_slopes, deterministic, return_attn_probs,
                                  seed=seed)
