"""Public attention functions. Each validates its arguments once, reduces them to (B, S, H, D)
views and a mask, and runs the kernels: through the differentiable torch operator for tensors,
directly for numpy arrays (which get numpy arrays back).

Causal alignment (docs/semantics.md section 2): :func:`attention` and :func:`flash_attn_func` align the
causal mask bottom-right (query ``i`` sees keys ``j <= i + Sk - Sq``, as FlashAttention >= 2.1 and
KV-cache decoding); :func:`scaled_dot_product_attention` aligns it top-left (``j <= i``, as
``torch.nn.functional.scaled_dot_product_attention``). They agree when Sq == Sk."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _capture, _dispatch
from ._validate import (BHSD, BSHD, SD, Call, MaskSpec, _kind, attn_mask_value, dtype_name, flag,
                        prepare, torch)

ArrayLike = Any  # torch.Tensor or numpy.ndarray


def _run(call: Call, deterministic: bool = False) -> Tuple[ArrayLike, ArrayLike]:
    """out (B, S, H, D) and lse (B, H, S) of a validated call; ``deterministic``: the mode of
    its backward."""
    if call.kind == "numpy":
        out, lse = _dispatch.numpy_forward(call.q, call.k, call.v, call.scale, call.mask)
    else:
        from . import _torch_ops

        out, lse = _torch_ops.apply(call.q, call.k, call.v, call.scale, call.mask, deterministic)
    if _capture.recorders:  # flashattn_ext.inspect.capture is active
        if call.mask.attn_mask is not None and call.kind == "numpy" and torch is None:
            raise NotImplementedError("attn_mask: flashattn_ext.inspect.capture records numpy calls "
                                      "with an explicit mask only when torch is installed")
        _capture.record(call, lse)
    return out, lse


def signed_probs(call: Call, lse: ArrayLike) -> ArrayLike:
    """The (B, Hq, Sq, Sk) probabilities of a validated call from its lse, dropped entries
    negated when the call has dropout (as FlashAttention's S_dmask marks them)."""
    from .interpret import weights_of

    probs = weights_of(call, lse)
    if not call.mask.dropout_p:
        return probs
    kept = _dispatch.call_keep(call.q, call.k, call.mask)
    if call.kind == "numpy":
        return np.where(kept, probs, -probs)
    import torch

    return torch.where(torch.from_numpy(kept).to(probs.device), probs, -probs)


def attention(q: ArrayLike, k: ArrayLike, v: ArrayLike, *, causal: bool = False,
              scale: Optional[float] = None, window_size: Tuple[int, int] = (-1, -1),
              return_lse: bool = False, softcap: float = 0.0,
              alibi_slopes: Optional[ArrayLike] = None, dropout_p: float = 0.0,
              seed: Optional[int] = None, attn_mask: Optional[ArrayLike] = None,
              key_padding_mask: Optional[ArrayLike] = None
              ) -> Union[ArrayLike, Tuple[ArrayLike, ArrayLike]]:
    """Exact softmax(q kᵀ · scale) v, computed tile by tile in O(S) memory.

    Args:
        q: queries, (Sq, D), (B, Sq, D) or (B, Sq, Hq, D); a torch.Tensor or numpy.ndarray of
            float32, float64, float16 or bfloat16. Only the last dimension must be contiguous.
        k: keys, (Sk, D), (B, Sk, D) or (B, Sk, Hkv, D); Sk may differ from Sq
            (cross-attention) and Hq must be a multiple of Hkv (grouped-query attention).
        v: values, shaped like k.
        causal: mask keys "after" each query, aligned bottom-right: query i sees keys
            j <= i + Sk - Sq. Rows that see no key give 0 (and lse -inf).
        scale: score scale, a real number (Python, numpy scalar or 0-d CPU tensor without
            grad); default 1/sqrt(D).
        window_size: (left, right) ints >= -1, a sliding window around the aligned diagonal;
            -1 = unbounded.
        return_lse: also return the natural-log logsumexp of each row's scaled scores.
        softcap: a number >= 0; > 0 replaces each scaled score s by softcap·tanh(s / softcap)
            (Gemma 2), 0 = off.
        alibi_slopes: None, or float32 slopes (Hq,) or (B, Hq) (same kind and device as q; Hq
            = 1 for q without a head dimension): adds -slope·|i + Sk - Sq - j| to the score of
            query i, key j (ALiBi, after the softcap).
        dropout_p: a probability in [0, 1): each attention probability is dropped with it and
            the kept ones scaled by 1 / (1 - dropout_p) (docs/semantics.md section 13; lse stays
            that of the undropped softmax). Applied whenever > 0 (pass 0.0 for evaluation); CPU
            backend.
        seed: the keep mask's seed (an int in [0, 2**63)); None draws seed and offset from
            torch's default generator (torch.manual_seed makes runs reproducible). numpy
            arrays with dropout need it.
        attn_mask: None, or a mask of q's kind and device broadcastable to the scores' shape,
            (Sq, Sk), (B, Sq, Sk) or (B, Hq, Sq, Sk) following q's rank: booleans (True =
            attend) or float values added to the scaled scores after softcap and ALiBi (a
            tensor requiring grad gets its gradient). Read with its own strides, never
            expanded. The causal and window bands still apply.
        key_padding_mask: None, or (B, Sk) booleans for batched q, True = ignore that key
            (``torch.nn.MultiheadAttention``'s convention); combined with attn_mask.

    Returns:
        out shaped like q (same kind: tensor or array), and with ``return_lse`` the pair
        (out, lse) with lse (B, Hq, Sq), (B, Sq) or (Sq,) following q's rank; lse is float32
        (float64 for float64 inputs).

    Raises:
        TypeError, ValueError, NotImplementedError naming the argument (docs/bad_inputs.md);
        ValueError when finite q and k with this scale give scores beyond the float32 range
        (float64 for float64 inputs) on CPU data, where the result would be NaN. NaN or inf in
        the inputs propagates without an error.
    """
    mask = MaskSpec.make(causal, window_size, bottom_right=True)
    with_lse = flag("return_lse", return_lse)
    call = prepare(q, k, v, layout=SD, scale=scale, mask=mask)
    call = call.with_mask(call.mask.with_score_mods(softcap, alibi_slopes, call.q, call.kind)
                          .with_dropout(dropout_p, seed, call.q, call.kind))
    call = _with_masks(call, attn_mask, key_padding_mask)
    out, lse = _run(call)
    return (call.output(out), call.lse(lse)) if with_lse else call.output(out)


def _with_masks(call: Call, attn_mask: Any, key_padding_mask: Any) -> Call:
    """The call with its explicit mask: attn_mask (attn_mask_value) and key_padding_mask, (B, Sk)
    booleans with True = ignore, folded into one (B, Hq, Sq, Sk) view."""
    mask = attn_mask_value(attn_mask, call)
    if key_padding_mask is not None:
        b, sk = call.q.shape[0], call.k.shape[1]
        accepted = f"a ({b}, {sk}) bool {call.kind} array (batch, keys; True = ignore the key)"
        kpm = key_padding_mask
        if call.rank == 2:
            raise ValueError("key_padding_mask: q has no batch dimension; pass an (Sq, Sk) "
                             "attn_mask instead")
        if _kind("key_padding_mask", kpm) != call.kind or dtype_name(kpm) != "bool" or \
                tuple(kpm.shape) != (b, sk):
            raise ValueError(f"key_padding_mask: expected {accepted}, got {type(kpm).__name__} "
                             f"of shape {tuple(kpm.shape)} {dtype_name(kpm)}")
        keep = attn_mask_value(~(kpm[:, None] if call.rank == 3 else kpm[:, None, None]), call,
                               "key_padding_mask")
        if mask is None:
            mask = keep
        elif dtype_name(mask) == "bool":
            mask = mask & keep
        elif call.kind == "torch":
            mask = mask.masked_fill(~keep, float("-inf"))
        else:
            mask = np.where(keep, mask, -np.inf).astype(mask.dtype)
    return call if mask is None else call.with_mask(call.mask.with_attn_mask(mask))


def flash_attn_func(q: ArrayLike, k: ArrayLike, v: ArrayLike, dropout_p: float = 0.0,
                    softmax_scale: Optional[float] = None, causal: bool = False,
                    window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                    alibi_slopes: Optional[ArrayLike] = None, deterministic: bool = False,
                    return_attn_probs: bool = False, *, seed: Optional[int] = None) -> Any:
    """Drop-in for FlashAttention 2.x ``flash_attn_func``.

    q: (B, Sq, Hq, D); k, v: (B, Sk, Hkv, D). The causal mask is aligned bottom-right and
    ``window_size=(left, right)`` is a sliding window (-1 = unbounded), as in FlashAttention.
    Returns out (B, Sq, Hq, D); with ``return_attn_probs`` returns (out, softmax_lse, probs):
    softmax_lse is (B, Hq, Sq) and probs (B, Hq, Sq, Sk) the exact attention probabilities
    (float32, float64 for float64 inputs; no gradient), recomputed from softmax_lse by
    :func:`flashattn_ext.attention_weights`: O(Sq·Sk) memory, for inspection and tests (the
    position of FlashAttention's debug-only S_dmask). ``deterministic=True`` makes the CUDA
    backward sum dq in a fixed order, so gradients are bitwise reproducible (docs/semantics.md
    section 8; the CPU backward always is; :func:`set_deterministic` switches it on for every
    call). ``softcap > 0`` replaces each scaled score s by softcap·tanh(s / softcap);
    ``alibi_slopes`` (Hq,) or (B, Hq) float32 adds -slope·|i + Sk - Sq - j| to the score of query
    i, key j after it (FlashAttention's definitions, docs/semantics.md).
    ``dropout_p`` in [0, 1) drops probabilities and scales the kept ones by 1 / (1 - dropout_p),
    with a keep mask drawn from torch's default generator, or from ``seed`` (required for numpy
    arrays); with it the probabilities of ``return_attn_probs`` are negated where dropped
    (docs/semantics.md section 13; the CPU and CUDA kernels apply the same keep mask).
    """
    mask = MaskSpec.make(causal, window_size, bottom_right=True)
    det = flag("deterministic", deterministic)
    call = prepare(q, k, v, layout=BSHD, scale=softmax_scale, mask=mask, scale_name="softmax_scale")
    call = call.with_mask(call.mask.with_score_mods(softcap, alibi_slopes, call.q, call.kind)
                          .with_dropout(dropout_p, seed, call.q, call.kind))
    out, lse = _run(call, det)
    if not flag("return_attn_probs", return_attn_probs):
        return out
    return out, lse, signed_probs(call, lse)


def scaled_dot_product_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                                 attn_mask: Optional[ArrayLike] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False, *, seed: Optional[int] = None
                                 ) -> ArrayLike:
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention``.

    query: (B, Hq, Sq, D) or (B, Sq, D); key, value: (B, Hkv, Sk, D) or (B, Sk, D). The causal
    mask is aligned top-left (query i sees keys j <= i), as in torch. Hq != Hkv needs
    ``enable_gqa=True``. ``attn_mask``, as in torch: booleans (True = attend) or float values added
    to the scaled scores, broadcastable to (B, Hq, Sq, Sk) ((B, Sq, Sk) for 3-d inputs), read
    with its own strides (never expanded); a float tensor requiring grad gets its gradient. A
    query row whose keys are all masked out gives 0 (torch's math path gives NaN).
    ``dropout_p`` > 0 drops attention probabilities whenever given, as torch
    does (:func:`flash_attn_func`'s dropout; ``seed`` as there).
    """
    if attn_mask is not None and flag("is_causal", is_causal):
        raise ValueError("attn_mask, is_causal: pass one of them (as torch requires); fold the "
                         "causal mask into attn_mask to combine them")
    mask = MaskSpec.make(is_causal, (-1, -1), bottom_right=False, causal_name="is_causal")
    call = prepare(query, key, value, layout=BHSD, scale=scale, mask=mask,
                   names=("query", "key", "value"), enable_gqa=flag("enable_gqa", enable_gqa))
    call = call.with_mask(call.mask.with_dropout(dropout_p, seed, call.q, call.kind))
    call = _with_masks(call, attn_mask, None)
    return call.output(_run(call)[0])
