"""``torch.nn`` modules built on flashattn_ext's attention (requires torch):
:class:`MultiHeadAttention` and :func:`replace_sdpa`."""

from __future__ import annotations

import numbers
from typing import Optional, Tuple, Union

from ._requires import optional

torch = optional("torch", "torch", "flashattn_ext.nn")

import torch.nn.functional as F  # noqa: E402  (after the check that torch is there)
from torch import nn  # noqa: E402

from . import _masked  # noqa: E402
from ._dispatch import dropout_keep, dropout_scale  # noqa: E402
from ._sdpa import replace_sdpa  # noqa: E402
from ._validate import MAX_HEAD_DIM, dropout_value, scale_value  # noqa: E402
from .functional import attention  # noqa: E402

__all__ = ["MultiHeadAttention", "replace_sdpa"]

Output = Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]]


def _torch_separate(mha: nn.MultiheadAttention) -> Tuple[torch.Tensor, ...]:
    """torch's separate q, k, v projection weights (when kdim or vdim differ from embed_dim)."""
    return mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight


class MultiHeadAttention(nn.Module):
    """Multi-head attention with grouped-query heads, self- and cross-attention, called like
    ``torch.nn.MultiheadAttention``.

    ``forward(query, key=None, value=None, key_padding_mask=None, need_weights=None,
    attn_mask=None, average_attn_weights=True, is_causal=False, *, causal=None)``: query
    (B, Sq, embed_dim), key (B, Sk, kdim) and value (B, Sk, vdim); ``batch_first=False`` takes
    (S, B, E) as torch does, and unbatched (S, E) inputs are accepted. key None: self-attention
    (keys and values from query); value None: values from the key source. Queries have
    ``num_heads`` heads of size ``embed_dim // num_heads``; keys and values have
    ``num_kv_heads`` (default ``num_heads``; fewer gives grouped-query attention).

    Returns the output tensor; when ``need_weights`` is given (True or False, as torch callers
    pass it) the pair (output, weights or None), as torch's module does. The weights (B, Sq, Sk)
    averaged over heads, or (B, num_heads, Sq, Sk) with ``average_attn_weights=False``, come
    from the kernels' logsumexp, so they are exactly the softmax the output used; in training
    with dropout, as torch's module returns them, the dropped weights it used (kept ones times
    1 / (1 - dropout), dropped ones 0: the module then draws the dropout seed itself).

    Masks follow torch's module: ``key_padding_mask`` (B, Sk), True = ignore that key;
    ``attn_mask`` (Sq, Sk) or (B * num_heads, Sq, Sk), True = not allowed; float masks of either
    are added to the scores (-inf: masked out), and a float attn_mask requiring grad gets its
    gradient. Every mask runs in the kernels, in one call (read in place, per head when given per
    head). A query that may see no key gives 0 (torch: NaN).
    ``is_causal`` is torch's hint that attn_mask is causal (the mask decides). ``causal`` (the
    module's setting unless given) adds a causal mask aligned bottom-right: query i sees keys
    j <= i + Sk - Sq, the right alignment when the keys are earlier tokens plus the current ones.

    Projections: when kdim == vdim == embed_dim, one fused ``in_proj`` (weight
    ((Hq + 2*Hkv) * head_dim, embed_dim)); otherwise separate ``q_proj``, ``k_proj``,
    ``v_proj``. ``out_proj`` maps back to embed_dim. :meth:`from_torch` and :meth:`to_torch`
    convert weights from and to ``torch.nn.MultiheadAttention``. ``dropout`` in [0, 1) drops
    attention probabilities in training mode (``module.train()``; none in eval mode), with the
    keep mask drawn from torch's default generator; with dropout the returned weights are those
    before dropout, as torch's. Dropout and masks combine in one call on every backend.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, num_kv_heads: Optional[int] = None,
                 kdim: Optional[int] = None, vdim: Optional[int] = None, bias: bool = True,
                 causal: bool = False, dropout: float = 0.0, scale: Optional[float] = None,
                 batch_first: bool = True, device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None):
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
        self.dropout = dropout_value("dropout", dropout)
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first: expected a bool, got {batch_first!r}")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        if self.head_dim > MAX_HEAD_DIM:
            raise ValueError(f"embed_dim: head_dim {self.head_dim} = embed_dim // num_heads "
                             f"exceeds {MAX_HEAD_DIM}")
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.causal, self.scale = causal, scale_value("scale", scale)
        self.batch_first = batch_first
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

    def _check_inputs(self, query: torch.Tensor, key: Optional[torch.Tensor],
                      value: Optional[torch.Tensor]) -> None:
        """The module's own argument rules on batch-first inputs; q, k, v then go through
        attention()'s checks."""
        for name, t, dim, what in (("query", query, self.embed_dim, "embed_dim"),
                                   ("key", key, self.kdim, "kdim"),
                                   ("value", value, self.vdim, "vdim")):
            if t is None:
                continue
            if t.dim() != 3 or t.shape[2] != dim:
                raise ValueError(f"{name}: expected (batch, seq, {what}={dim}), got shape "
                                 f"{tuple(t.shape)}")
            if t.shape[0] != query.shape[0]:
                raise ValueError(f"{name}: batch size {t.shape[0]} differs from query's "
                                 f"{query.shape[0]}")
        keys, src = (query, "query") if key is None else (key, "key")
        if keys.shape[2] != self.kdim:
            raise ValueError(f"key: None (keys from query) needs kdim == embed_dim; this module "
                             f"has kdim={self.kdim}, embed_dim={self.embed_dim}")
        if value is None and keys.shape[2] != self.vdim:
            raise ValueError(f"value: None (values from {src}, last dimension {keys.shape[2]}) "
                             f"needs vdim == {keys.shape[2]}; this module has vdim={self.vdim}")
        if value is not None and value.shape[1] != keys.shape[1]:
            raise ValueError(f"value: sequence length {value.shape[1]} differs from {src}'s "
                             f"{keys.shape[1]}; values and keys must pair up")

    def _batch_first(self, query: torch.Tensor, key: Optional[torch.Tensor],
                     value: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
        """Inputs as (B, S, E) views: unbatched (S, E) gets a batch of one, (S, B, E) is
        transposed when batch_first is False."""
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t is not None and not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if query.dim() == 2:
            return tuple(None if t is None else t.unsqueeze(0) for t in (query, key, value))
        if self.batch_first or query.dim() != 3:
            return query, key, value
        return tuple(None if t is None or t.dim() != 3 else t.transpose(0, 1)
                     for t in (query, key, value))

    def _project(self, query: torch.Tensor, key: Optional[torch.Tensor],
                 value: Optional[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        q_out = self.num_heads * self.head_dim
        if self.fused:
            w, b = self.in_proj.weight, self.in_proj.bias
            if key is None and value is None:
                kv_out = self.num_kv_heads * self.head_dim
                return F.linear(query, w, b).split([q_out, kv_out, kv_out], dim=-1)
            q = F.linear(query, w[:q_out], None if b is None else b[:q_out])
            kv_w, kv_b = w[q_out:].chunk(2), (None, None) if b is None else b[q_out:].chunk(2)
            src = query if key is None else key
            k = F.linear(src, kv_w[0], kv_b[0])
            v = F.linear(src if value is None else value, kv_w[1], kv_b[1])
            return q, k, v
        src = query if key is None else key
        return self.q_proj(query), self.k_proj(src), self.v_proj(src if value is None else value)

    def _mask(self, key_padding_mask: Optional[torch.Tensor], attn_mask: Optional[torch.Tensor],
              b: int, sq: int, sk: int) -> Optional[torch.Tensor]:
        """torch's module masks (True or -inf: masked out; other floats are added to the
        scores) as one mask in scaled_dot_product_attention's convention, (B or 1, H or 1, Sq,
        Sk): booleans (True = attend) when both are boolean, else additive; None when neither
        is given."""
        parts = []
        for name, mask, shapes in (("attn_mask", attn_mask, ((sq, sk), (b * self.num_heads, sq, sk))),
                                   ("key_padding_mask", key_padding_mask, ((b, sk),))):
            if mask is None:
                continue
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape) not in shapes:
                got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise ValueError(f"{name}: expected a tensor of shape "
                                 f"{' or '.join(map(str, shapes))}, got {got}")
            if mask.dtype != torch.bool and not mask.is_floating_point():
                raise TypeError(f"{name}: dtype {mask.dtype} is not supported; expected bool "
                                f"(True = masked out) or a float dtype (added to the scores)")
            mask = ~mask if mask.dtype == torch.bool else mask
            shape = ((b, 1, 1, sk) if name == "key_padding_mask" else (1, 1, sq, sk)
                     if mask.dim() == 2 else (b, self.num_heads, sq, sk))
            parts.append(mask.reshape(shape))
        if not parts:
            return None
        if all(m.dtype == torch.bool for m in parts):
            return parts[0] if len(parts) == 1 else parts[0] & parts[1]
        dtype = next(m.dtype for m in parts if m.dtype != torch.bool)
        add = [torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, float("-inf"))
               if m.dtype == torch.bool else m for m in parts]
        return add[0] if len(add) == 1 else add[0] + add[1]

    def forward(self, query: torch.Tensor, key: Optional[torch.Tensor] = None,
                value: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None,
                need_weights: Optional[bool] = None, attn_mask: Optional[torch.Tensor] = None,
                average_attn_weights: bool = True, is_causal: bool = False, *,
                causal: Optional[bool] = None) -> Output:
        """See the class docstring."""
        for name, flag in (("need_weights", need_weights), ("is_causal", is_causal),
                           ("average_attn_weights", average_attn_weights), ("causal", causal)):
            if flag is not None and not isinstance(flag, bool):
                raise TypeError(f"{name}: expected a bool, got {flag!r} ({type(flag).__name__})")
        if is_causal and attn_mask is None:
            raise ValueError("is_causal=True: torch's hint that attn_mask is causal needs the "
                             "attn_mask; pass causal=True for the module's own causal mask")
        unbatched = isinstance(query, torch.Tensor) and query.dim() == 2
        if key is query and (value is None or value is query):
            key = value = None  # self-attention: one fused projection
        query, key, value = self._batch_first(query, key, value)
        self._check_inputs(query, key, value)
        q, k, v = self._project(query, key, value)
        q = q.unflatten(-1, (self.num_heads, self.head_dim))
        k = k.unflatten(-1, (self.num_kv_heads, self.head_dim))
        v = v.unflatten(-1, (self.num_kv_heads, self.head_dim))
        b, sq, sk = q.shape[0], q.shape[1], k.shape[1]
        if unbatched and key_padding_mask is not None and key_padding_mask.dim() == 1:
            key_padding_mask = key_padding_mask[None]
        causal = self.causal if causal is None else causal
        scale = 1.0 / self.head_dim ** 0.5 if self.scale is None else self.scale
        mask = self._mask(key_padding_mask, attn_mask, b, sq, sk)
        dropout_p = self.dropout if self.training else 0.0
        # Weights under dropout are the dropped ones the output used (as torch's module returns
        # them): the keep mask is regenerated from a seed drawn here (torch's CPU generator).
        seed = int(torch.randint(0, 2 ** 62, (1,)).item()) if need_weights and dropout_p > 0 else None
        out, lse = attention(q, k, v, causal=causal, scale=scale, return_lse=True,
                             attn_mask=mask, dropout_p=dropout_p, seed=seed)
        out = self.out_proj(out.flatten(2))
        weights = None
        if need_weights:
            additive = mask is not None and mask.dtype != torch.bool
            allowed = mask if mask is not None and not additive else None
            if causal:
                band = torch.ones(1, sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
                allowed = band if allowed is None else allowed & band
            weights = _masked.weights(q, k, lse, scale, allowed, bias=mask if additive else None)
            if seed is not None:
                keep = torch.from_numpy(dropout_keep(dropout_p, seed, 0, tuple(weights.shape))).to(weights.device)
                weights = torch.where(keep, weights * dropout_scale(dropout_p),
                                      torch.zeros((), dtype=weights.dtype, device=weights.device))
            weights = weights.mean(1) if average_attn_weights else weights
            weights = weights[0] if unbatched else weights
        out = out[0] if unbatched else out if self.batch_first else out.transpose(0, 1)
        return out if need_weights is None else (out, weights)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention, *, causal: bool = False) -> "MultiHeadAttention":
        """A module computing the same function as ``mha`` (a ``torch.nn.MultiheadAttention``;
        weights copied, ``batch_first`` kept)."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha: expected a torch.nn.MultiheadAttention, got "
                            f"{type(mha).__name__}")
        if mha.bias_k is not None:
            raise NotImplementedError("mha: add_bias_kv is not implemented")
        if mha.add_zero_attn:
            raise NotImplementedError("mha: add_zero_attn is not implemented")
        new = cls(mha.embed_dim, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim,
                  bias=mha.in_proj_bias is not None, causal=causal, dropout=mha.dropout,
                  batch_first=mha.batch_first,
                  device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype)
        with torch.no_grad():
            if new.fused:
                new.in_proj.weight.copy_(mha.in_proj_weight)
                if mha.in_proj_bias is not None:
                    new.in_proj.bias.copy_(mha.in_proj_bias)
            else:
                biases = (None,) * 3 if mha.in_proj_bias is None else mha.in_proj_bias.chunk(3)
                for proj, weight, bias in zip(new._separate(), _torch_separate(mha), biases):
                    proj.weight.copy_(weight)
                    if bias is not None:
                        proj.bias.copy_(bias)
            new.out_proj.load_state_dict(mha.out_proj.state_dict())
        return new

    def to_torch(self) -> nn.MultiheadAttention:
        """A ``torch.nn.MultiheadAttention`` computing the same function (weights copied).
        torch's module has neither grouped-query heads, a custom scale nor a causal setting:
        those raise ValueError (torch callers pass ``attn_mask`` for causal attention)."""
        for name, bad, need in (("num_kv_heads", self.num_kv_heads != self.num_heads,
                                 f"num_heads ({self.num_heads})"),
                                ("scale", self.scale not in (None, 1.0 / self.head_dim ** 0.5),
                                 "None (1/sqrt(head_dim))"),
                                ("causal", self.causal, "False")):
            if bad:
                raise ValueError(f"{name}: torch.nn.MultiheadAttention needs {need}, this "
                                 f"module has {getattr(self, name)}")
        w = self.out_proj.weight
        mha = nn.MultiheadAttention(self.embed_dim, self.num_heads, dropout=self.dropout,
                                    bias=self.out_proj.bias is not None, kdim=self.kdim,
                                    vdim=self.vdim, batch_first=self.batch_first,
                                    device=w.device, dtype=w.dtype)
        with torch.no_grad():
            if self.fused:
                mha.in_proj_weight.copy_(self.in_proj.weight)
                if mha.in_proj_bias is not None:
                    mha.in_proj_bias.copy_(self.in_proj.bias)
            else:
                for proj, weight in zip(self._separate(), _torch_separate(mha)):
                    weight.copy_(proj.weight)
                if mha.in_proj_bias is not None:
                    mha.in_proj_bias.copy_(torch.cat([p.bias for p in self._separate()]))
            mha.out_proj.load_state_dict(self.out_proj.state_dict())
        return mha

    def _separate(self) -> Tuple[nn.Linear, nn.Linear, nn.Linear]:
        return self.q_proj, self.k_proj, self.v_proj

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, causal={self.causal}, fused={self.fused}, "
                f"batch_first={self.batch_first}")
