"""``torch.nn`` modules built on flashattn_ext's attention (requires torch)."""

from __future__ import annotations

import numbers
from typing import Optional, Tuple

from ._requires import optional

torch = optional("torch", "torch", "flashattn_ext.nn")

import torch.nn.functional as F  # noqa: E402  (after the check that torch is there)
from torch import nn  # noqa: E402

from ._validate import MAX_HEAD_DIM, scale_value  # noqa: E402
from .functional import attention  # noqa: E402

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with grouped-query heads, self- and cross-attention.

    Inputs are batch-first: ``x`` (B, Sq, embed_dim) and, for cross-attention, ``context``
    (B, Sk, kdim). Queries have ``num_heads`` heads of size ``embed_dim // num_heads``; keys and
    values have ``num_kv_heads`` heads (default ``num_heads``; fewer gives grouped-query, 1 gives
    multi-query attention).

    Projections: when kdim == vdim == embed_dim, one fused ``in_proj`` (weight
    ((Hq + 2*Hkv) * head_dim, embed_dim)) serves both self-attention (one matmul for q, k, v) and
    cross-attention (its q rows applied to ``x``, its k/v rows to ``context``); otherwise
    separate ``q_proj``, ``k_proj``, ``v_proj``. ``out_proj`` maps back to embed_dim.

    The causal mask is aligned bottom-right (query i sees keys j <= i + Sk - Sq), which is the
    right alignment when ``context`` holds earlier tokens plus the current ones (KV cache).
    Not implemented (raising NotImplementedError): dropout > 0, ``key_padding_mask``,
    ``attn_mask``, ``need_weights=True``.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, num_kv_heads: Optional[int] = None,
                 kdim: Optional[int] = None, vdim: Optional[int] = None, bias: bool = True,
                 causal: bool = False, dropout: float = 0.0, scale: Optional[float] = None,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads),
                            ("num_kv_heads", num_kv_heads), ("kdim", kdim), ("vdim", vdim)):
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, numbers.Integral) or value <= 0):
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim: {embed_dim} must be a multiple of num_heads "
                             f"({num_heads})")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads: {num_kv_heads} must divide num_heads ({num_heads})")
        if dropout != 0.0:
            raise NotImplementedError(f"dropout={dropout}: attention dropout is not implemented")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        if self.head_dim > MAX_HEAD_DIM:
            raise ValueError(f"embed_dim: head_dim {self.head_dim} = embed_dim // num_heads "
                             f"exceeds {MAX_HEAD_DIM}")
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.causal, self.scale = causal, scale_value("scale", scale)
        kw = {"device": device, "dtype": dtype}
        q_out, kv_out = num_heads * self.head_dim, num_kv_heads * self.head_dim
        self.fused = self.kdim == self.vdim == embed_dim
        if self.fused:
            self.in_proj = nn.Linear(embed_dim, q_out + 2 * kv_out, bias=bias, **kw)
        else:
            self.q_proj = nn.Linear(embed_dim, q_out, bias=bias, **kw)
            self.k_proj = nn.Linear(self.kdim, kv_out, bias=bias, **kw)
            self.v_proj = nn.Linear(self.vdim, kv_out, bias=bias, **kw)
        self.out_proj = nn.Linear(q_out, embed_dim, bias=bias, **kw)

    def _check_inputs(self, x: torch.Tensor, context: Optional[torch.Tensor],
                      value: Optional[torch.Tensor]) -> None:
        """The module's own argument rules; q, k, v then go through attention()'s checks."""
        for name, t, dim, what in (("x", x, self.embed_dim, "embed_dim"),
                                   ("context", context, self.kdim, "kdim"),
                                   ("value", value, self.vdim, "vdim")):
            if t is None:
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 3 or t.shape[2] != dim:
                raise ValueError(f"{name}: expected (batch, seq, {what}={dim}), got shape "
                                 f"{tuple(t.shape)}")
            if t.shape[0] != x.shape[0]:
                raise ValueError(f"{name}: batch size {t.shape[0]} differs from x's "
                                 f"{x.shape[0]}")
        keys, src = (x, "x") if context is None else (context, "context")
        if keys.shape[2] != self.kdim:
            raise ValueError(f"context: None (keys from x) needs kdim == embed_dim; this module "
                             f"has kdim={self.kdim}, embed_dim={self.embed_dim}")
        if value is None and keys.shape[2] != self.vdim:
            raise ValueError(f"value: None (values from {src}, last dimension {keys.shape[2]}) "
                             f"needs vdim == {keys.shape[2]}; this module has vdim={self.vdim}")
        if value is not None and value.shape[1] != keys.shape[1]:
            raise ValueError(f"value: sequence length {value.shape[1]} differs from the "
                             f"{keys.shape[1]} keys of {src}; value and keys must pair up")

    def _project(self, x: torch.Tensor, context: Optional[torch.Tensor],
                 value: Optional[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        q_out = self.num_heads * self.head_dim
        if self.fused:
            w, b = self.in_proj.weight, self.in_proj.bias
            if context is None and value is None:
                kv_out = self.num_kv_heads * self.head_dim
                return F.linear(x, w, b).split([q_out, kv_out, kv_out], dim=-1)
            q = F.linear(x, w[:q_out], None if b is None else b[:q_out])
            kv_w, kv_b = w[q_out:].chunk(2), (None, None) if b is None else b[q_out:].chunk(2)
            ctx = x if context is None else context
            k = F.linear(ctx, kv_w[0], kv_b[0])
            v = F.linear(ctx if value is None else value, kv_w[1], kv_b[1])
            return q, k, v
        ctx = x if context is None else context
        return self.q_proj(x), self.k_proj(ctx), self.v_proj(ctx if value is None else value)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *,
                value: Optional[torch.Tensor] = None, causal: Optional[bool] = None,
                key_padding_mask: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None,
                need_weights: bool = False) -> torch.Tensor:
        """x: (B, Sq, embed_dim); context: (B, Sk, kdim) keys source (None: self-attention);
        value: (B, Sk, vdim) values source when different from ``context``; causal overrides
        the module's setting. Returns (B, Sq, embed_dim)."""
        if key_padding_mask is not None:
            raise NotImplementedError("key_padding_mask: padding masks are not implemented")
        if attn_mask is not None:
            raise NotImplementedError("attn_mask: arbitrary masks are not implemented")
        if need_weights:
            raise NotImplementedError("need_weights=True: attention weights are never formed")
        self._check_inputs(x, context, value)
        q, k, v = self._project(x, context, value)
        b, sq, sk = x.shape[0], x.shape[1], k.shape[1]
        q = q.view(b, sq, self.num_heads, self.head_dim)
        k = k.view(b, sk, self.num_kv_heads, self.head_dim)
        v = v.view(b, sk, self.num_kv_heads, self.head_dim)
        out = attention(q, k, v, causal=self.causal if causal is None else causal,
                        scale=self.scale)
        return self.out_proj(out.reshape(b, sq, self.num_heads * self.head_dim))

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention, *, causal: bool = False) -> "MultiHeadAttention":
        """A module computing the same function as a batch-first ``torch.nn.MultiheadAttention``
        (weights copied)."""
        if not mha.batch_first:
            raise ValueError("mha: only batch_first=True modules can be converted")
        if mha.dropout != 0.0:
            raise NotImplementedError(f"mha.dropout={mha.dropout}: dropout is not implemented")
        if mha.bias_k is not None:
            raise NotImplementedError("mha: add_bias_kv is not implemented")
        w = mha.in_proj_weight if mha._qkv_same_embed_dim else None
        new = cls(mha.embed_dim, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim,
                  bias=mha.in_proj_bias is not None, causal=causal,
                  device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype)
        with torch.no_grad():
            if new.fused:
                new.in_proj.weight.copy_(w)
                if mha.in_proj_bias is not None:
                    new.in_proj.bias.copy_(mha.in_proj_bias)
            else:
                e = mha.embed_dim
                for i, (proj, weight) in enumerate(((new.q_proj, mha.q_proj_weight),
                                                    (new.k_proj, mha.k_proj_weight),
                                                    (new.v_proj, mha.v_proj_weight))):
                    proj.weight.copy_(weight)
                    if mha.in_proj_bias is not None:
                        proj.bias.copy_(mha.in_proj_bias[i * e:(i + 1) * e])
            new.out_proj.load_state_dict(mha.out_proj.state_dict())
        return new

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, causal={self.causal}, fused={self.fused}")
