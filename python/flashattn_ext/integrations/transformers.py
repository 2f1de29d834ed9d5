"""Hugging Face transformers models on flashattn_ext's attention::

    from flashattn_ext.integrations.transformers import register
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation=register())

:func:`register` adds :func:`attention_forward` to transformers' ``AttentionInterface`` and
transformers' own ``sdpa_mask`` to its ``AttentionMaskInterface``, both under
:data:`ATTENTION_NAME`; ``model.set_attn_implementation(ATTENTION_NAME)`` switches a loaded
model. The name holds no "flash": transformers reads any implementation name containing
"flash" as a request for its FlashAttention path or for a hub kernel, which it then tries to
download.

What a call gets, as transformers' ``sdpa`` attention would compute it:

- no mask: causal (top-left, as sdpa's ``is_causal``; the module's ``is_causal`` unless the
  call says) when there is more than one query, else all keys; grouped-query heads natively;
  ``scaling`` as the scale.
- a mask (padding, KV-cache decoding, sliding windows, encoder padding in cross-attention):
  when, for each sequence of the batch, transformers' boolean mask is a causal or
  sliding-window band over the keys not padded, which the masks of left- and right-padded
  batches are, the kernels run one banded call per band (the mask's plan is worked out once per
  mask, which a model shares between its layers); any other (B or 1, 1, Sq, Sk) mask, boolean or
  additive, is read by the kernels as it is (``attn_mask`` of :func:`~flashattn_ext.attention`).
  Query rows that see no key (left padding) give 0 where sdpa gives the mean of the values;
  those rows are padding.
- packed sequences: ``position_ids`` restarting at 0 inside a row, with no ``attention_mask``
  and no cache, make transformers build a block-diagonal mask (causal, or a sliding window,
  within each sequence). Such a mask, from transformers or passed by the caller, runs as one
  :func:`~flashattn_ext.flash_attn_varlen_func` call over all the rows' sequences, with
  ``cu_seqlens`` read from the mask's blocks and the band they share; the reading is checked
  against the whole mask, so it is exact.
- ``output_attentions``: the weights are exp(scale·q·kᵀ - lse) from the kernels' logsumexp.
- ``softcap`` (Gemma 2) caps the scores at softcap·tanh(score / softcap) in the kernels (CPU and
  CUDA). Attention sinks (``s_aux``) raise
  NotImplementedError.
- falls back to transformers' sdpa attention, with a warning naming the reason, for what the
  kernels do not take: dropout while training, ``position_bias`` (T5), the paged cache of
  continuous batching, masks of other shapes, and dtypes, devices or head dims the build does
  not run.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Tuple

from .._requires import optional

torch = optional("torch", "transformers", "flashattn_ext.integrations.transformers")
transformers = optional("transformers", "transformers", "flashattn_ext.integrations.transformers")

from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: E402

from .. import _masked  # noqa: E402
from .._sdpa import unsupported  # noqa: E402
from ..functional import attention, scaled_dot_product_attention  # noqa: E402

ATTENTION_NAME = "fae"

__all__ = ["ATTENTION_NAME", "attention_forward", "register"]


def register() -> str:
    """Registers the attention function and its mask function with transformers under
    :data:`ATTENTION_NAME` and returns the name, for ``attn_implementation=register()``."""
    transformers.AttentionInterface.register(ATTENTION_NAME, attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


def _fallback_reason(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Optional[torch.Tensor], dropout: float,
                     kwargs: dict) -> Optional[str]:
    reason = unsupported(query, key, value)
    if reason is not None:
        return reason
    if dropout:
        return f"attention dropout {dropout}"
    if kwargs.get("position_bias") is not None:
        return "position_bias"
    if kwargs.get("cache") is not None:
        return "the paged cache"
    if attention_mask is not None:
        shape = tuple(attention_mask.shape)
        if (len(shape) != 4 or shape[1] != 1 or shape[0] not in (1, query.shape[0])
                or shape[2:] != (query.shape[2], key.shape[2])):
            return f"an attention mask of shape {shape}"
    return None


def _allowed(causal: bool, sq: int, sk: int, device: torch.device) -> Optional[torch.Tensor]:
    """sdpa's mask when transformers passes none: top-left causal for more than one query."""
    if not causal or sq == 1:
        return None
    return torch.ones(1, sq, sk, dtype=torch.bool, device=device).tril()


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                      dropout: float = 0.0, scaling: Optional[float] = None,
                      is_causal: Optional[bool] = None,
                      **kwargs: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """transformers' attention-function convention: query (B, Hq, Sq, D), key and value
    (B, Hkv, Sk, D), ``attention_mask`` from the registered mask function (boolean
    (B, 1, Sq, Sk), True = attend) or None. Returns the output (B, Sq, Hq, D) and the attention
    weights (B, Hq, Sq, Sk) when ``output_attentions`` asks for them, else None."""
    softcap = float(kwargs.get("softcap") or 0.0)
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("s_aux: flashattn_ext has no attention sinks yet; load this "
                                  "model with attn_implementation='eager'")
    reason = _fallback_reason(query, key, value, attention_mask, dropout, kwargs)
    plans = None
    if reason is None and attention_mask is not None:
        plans = _masked.cached_plan(attention_mask)
    if reason is not None:
        warnings.warn(f"flashattn_ext: {reason}: computed by transformers' sdpa attention",
                      stacklevel=2)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    scale = 1.0 / math.sqrt(query.shape[-1]) if scaling is None else scaling
    want_weights = kwargs.get("output_attentions",
                              getattr(getattr(module, "config", None), "output_attentions", False))
    sq, sk = query.shape[2], key.shape[2]
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    if attention_mask is not None and plans is None:  # no band: the kernels read the mask
        out, lse = attention(q, k, v, scale=scale, softcap=softcap, attn_mask=attention_mask,
                             return_lse=True)
        keep = attention_mask if attention_mask.dtype == torch.bool else None
        weights = (_masked.weights(q, k, lse, scale, keep, softcap,
                                   bias=None if keep is not None else attention_mask)
                   if want_weights else None)
        return out.contiguous(), weights
    if attention_mask is None and not want_weights and not softcap:
        out = scaled_dot_product_attention(query, key, value, is_causal=causal and sq > 1,
                                           scale=scale, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    if attention_mask is None:
        allowed = _allowed(causal, sq, sk, query.device)
        plans = _masked.plan(allowed if allowed is not None
                             else torch.ones(1, sq, sk, dtype=torch.bool, device=q.device))
    else:
        allowed = _masked.to_bool(attention_mask[:, 0])
    if isinstance(plans, _masked.Packed):
        out, lse = _masked.run_packed(q, k, v, plans, scale, softcap)
    else:
        out, lse = _masked.run(q, k, v, plans, scale, softcap)
    weights = _masked.weights(q, k, lse, scale, allowed, softcap) if want_weights else None
    return out.contiguous(), weights
