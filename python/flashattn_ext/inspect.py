"""Looking inside models that attend through flashattn_ext (docs/interpretability.md):
:func:`capture` records the exact attention weights of every call while active, :func:`plot`
draws one as a heatmap (matplotlib, the ``plot`` extra), :func:`rollout` combines layers
(attention rollout, Abnar & Zuidema 2020)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import _capture
from .interpret import Selection, _selection, weights_of

ArrayLike = Any  # torch.Tensor or numpy.ndarray


@dataclass
class Record:
    """One attention call: the layer (module name) it ran in, its position among the recorded
    calls, and its weights (B, len(heads), Sq, Sk), float32 (float64 for float64 inputs)."""

    layer: str
    step: int
    weights: ArrayLike


@dataclass
class Capture:
    """What :func:`capture` recorded, in call order."""

    records: List[Record] = field(default_factory=list)

    @property
    def layers(self) -> List[str]:
        """The layers that attended, in order of their first call."""
        return list(dict.fromkeys(r.layer for r in self.records))

    def __getitem__(self, layer: str) -> List[ArrayLike]:
        """The weights of every call of ``layer``, in call order."""
        found = [r.weights for r in self.records if r.layer == layer]
        if not found:
            raise KeyError(f"layer {layer!r} recorded no attention; recorded: {self.layers}")
        return found

    def __len__(self) -> int:
        return len(self.records)


def _attention_layers(model: Any) -> List[str]:
    from .nn import MultiHeadAttention

    return [name for name, m in model.named_modules() if isinstance(m, MultiHeadAttention)]


def _selected(model: Any, layers: Union[None, str, int, Sequence[Union[str, int]]]) -> Optional[set]:
    """Module names whose attention is recorded (None: the innermost module of every call)."""
    if layers is None:
        return None
    items = [layers] if isinstance(layers, (str, int)) else list(layers)
    names = dict(model.named_modules())
    attention = _attention_layers(model)
    out = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise TypeError(f"layers: expected module names (str) or indices (int) into the model's "
                            f"{len(attention)} MultiHeadAttention layers, got {item!r}")
        if isinstance(item, int):
            if not -len(attention) <= item < len(attention):
                raise ValueError(f"layers: index {item} is out of range for the model's "
                                 f"{len(attention)} MultiHeadAttention layers {attention}")
            out.add(attention[item])
        elif item not in names:
            raise ValueError(f"layers: {item!r} is not a module of the model; its attention "
                             f"layers: {attention}")
        else:
            out.add(item)
    return out


@contextlib.contextmanager
def capture(model: Any = None, *, layers: Union[None, str, int, Sequence[Union[str, int]]] = None,
            heads: Selection = None) -> Iterator[Capture]:
    """Records the exact attention weights of every flashattn_ext attention call made inside
    the block (``attention``, ``flash_attn_func``, ``scaled_dot_product_attention`` and the
    ``flashattn_ext.nn`` modules, so also models that route their attention through the library).

    Args:
        model: a ``torch.nn.Module``: calls are attributed to the innermost running submodule
            (its name in ``model.named_modules()``) and calls outside the model's forward are
            not recorded. None: every call is recorded, with layer "".
        layers: record only calls inside these submodules: names, or indices into the model's
            ``flashattn_ext.nn.MultiHeadAttention`` layers (in ``named_modules()`` order).
        heads: query heads to record (as ``attention_weights``); None: all.

    Yields a :class:`Capture`. The forward's results are unchanged; the weights are recomputed
    from each call's lse after it (O(Sq·Sk) per recorded call). Outside the block nothing is
    recorded and the attention calls do one check of an empty list.
    """
    selected = None if model is None else _selected(model, layers)
    if model is None and layers is not None:
        raise ValueError("layers: selecting layers needs the model; pass capture(model, layers=...)")
    stack: List[str] = []
    result = Capture()

    def recorder(call: Any, lse: Any) -> None:
        if model is not None:
            inside = [n for n in stack if selected is None or n in selected]
            if not stack or not inside:
                return
            layer = inside[-1]
        else:
            layer = ""
        hsel = _selection("heads", heads, call.q.shape[2], call.q)
        w = weights_of(call, lse, hsel) if call.mask.attn_mask is None else _masked_weights(call, lse, hsel)
        if call.mask.dropout_p:
            w = _dropped(call, w, hsel)
        result.records.append(Record(layer, len(result.records), w))

    def enter(name: str) -> Any:
        def hook(module: Any, args: Any) -> None:
            stack.append(name)
        return hook

    def leave(module: Any, args: Any, output: Any) -> None:
        stack.pop()

    handles = []
    if model is not None:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave, always_call=True))
    _capture.recorders.append(recorder)
    try:
        yield result
    finally:
        _capture.recorders.remove(recorder)
        for h in handles:
            h.remove()


def _dropped(call: Any, w: Any, heads: Any) -> Any:
    """Weights (B, len(heads), Sq, Sk) of a call with dropout as its output used them: the kept
    ones times 1 / (1 - dropout_p), the dropped ones 0, from the kernels' keep mask (so that
    weights . V gives the call's output)."""
    from . import _dispatch

    keep = _dispatch.call_keep(call.q, call.k, call.mask)
    keep = keep[:, heads if isinstance(heads, np.ndarray) else heads.cpu().numpy()]
    s = _dispatch.dropout_scale(call.mask.dropout_p)
    if isinstance(w, np.ndarray):
        return np.where(keep, w * w.dtype.type(s), 0).astype(w.dtype)
    import torch

    return torch.where(torch.from_numpy(keep).to(w.device), w * s, torch.zeros((), dtype=w.dtype, device=w.device))


def _masked_weights(call: Any, lse: Any, heads: Any) -> Any:
    """The weights (B, len(heads), Sq, Sk) of a torch call with an explicit mask, from its lse:
    the scores with softcap, ALiBi and the mask (as the kernels apply them), 0 outside the call's
    band and where a boolean mask is False."""
    import torch

    from . import _masked

    if call.kind == "numpy":  # the same in torch on the CPU, back as numpy like weights_of's
        t = lambda x: None if x is None else torch.from_numpy(np.ascontiguousarray(x))
        m = call.mask
        tcall = replace(call, q=t(call.q), k=t(call.k), kind="torch",
                        mask=replace(m, attn_mask=t(m.attn_mask), alibi_slopes=t(m.alibi_slopes)))
        w = _masked_weights(tcall, t(lse), t(heads))
        return w.to(torch.float64 if w.dtype == torch.float64 else torch.float32).numpy()
    q, k, m = call.q, call.k, call.mask
    sq, sk = q.shape[1], k.shape[1]
    first, last = (torch.from_numpy(x).to(q.device)[:, None] for x in m.key_bounds(np.arange(sq), sq, sk))
    i = torch.arange(sq, device=q.device)[:, None]
    j = torch.arange(sk, device=q.device)[None, :]
    band = (j >= first) & (j <= last)
    mask = m.attn_mask
    allowed = band[None, None] & mask if mask.dtype == torch.bool else band[None, None].expand(mask.shape)
    bias = None if mask.dtype == torch.bool else mask
    if m.alibi_slopes is not None:
        slopes = m.alibi_slopes.reshape(-1, q.shape[2], 1, 1).to(torch.float64)
        alibi = -slopes * (i + sk - sq - j).abs().to(torch.float64)
        bias = alibi if bias is None else bias.to(torch.float64) + alibi
    w = _masked.weights(q, k, lse, call.scale, allowed, m.softcap, bias)
    return w.index_select(1, heads.to(w.device))


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    return x.detach().cpu().float().numpy()


def plot(weights: ArrayLike, query_labels: Optional[Sequence[Any]] = None,
         key_labels: Optional[Sequence[Any]] = None, *, ax: Any = None, title: Optional[str] = None,
         cmap: str = "viridis") -> Any:
    """A heatmap of one attention matrix (Sq, Sk): rows are queries, columns keys. Leading
    dimensions of size 1 are dropped. Returns the matplotlib Figure (drawn on ``ax`` when given).
    Needs matplotlib (``pip install flashattn_ext[plot]``)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("flashattn_ext.inspect.plot needs matplotlib: pip install "
                          "'flashattn_ext[plot]' (or matplotlib)") from None
    w = _numpy(weights)
    while w.ndim > 2 and w.shape[0] == 1:
        w = w[0]
    if w.ndim != 2:
        raise ValueError(f"weights: expected one (Sq, Sk) matrix (leading dimensions of size 1 "
                         f"allowed), got shape {tuple(_numpy(weights).shape)}")
    for name, labels, n in (("query_labels", query_labels, w.shape[0]), ("key_labels", key_labels, w.shape[1])):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{name}: {len(labels)} labels for {n} {name.split('_')[0]} positions")
    if ax is None:
        fig, ax = plt.subplots(figsize=(2 + 0.4 * w.shape[1], 1.5 + 0.4 * w.shape[0]))
    else:
        fig = ax.figure
    im = ax.imshow(w, cmap=cmap, aspect="auto", vmin=0.0)
    fig.colorbar(im, ax=ax)
    if query_labels is not None:
        ax.set_yticks(range(w.shape[0]), [str(x) for x in query_labels])
    if key_labels is not None:
        ax.set_xticks(range(w.shape[1]), [str(x) for x in key_labels], rotation=90)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    return fig


def rollout(weights: Sequence[ArrayLike], *, residual: bool = True) -> ArrayLike:
    """Attention rollout (Abnar & Zuidema 2020): how much each output position draws on each
    input position through a stack of self-attention layers.

    ``weights``: the layers' weights in forward order, each (B, H, S, S), (B, S, S) or (S, S)
    (heads are averaged). With ``residual`` each layer is ``0.5·A + 0.5·I`` (the skip
    connection), rows renormalised; the result is ``Â_L ··· Â_1``, shaped (B, S, S) or (S, S) like
    the inputs without heads, torch or numpy like the first layer.
    """
    if len(weights) == 0:
        raise ValueError("weights: expected at least one layer's attention weights")
    mats = []
    for i, w in enumerate(weights):
        a = _numpy(w).astype(np.float64)
        a = a.mean(axis=1) if a.ndim == 4 else a
        if a.ndim not in (2, 3) or a.shape[-1] != a.shape[-2] or (mats and a.shape != mats[0].shape):
            raise ValueError(f"weights[{i}]: expected square self-attention (B, H, S, S), (B, S, S) or "
                             f"(S, S), all layers alike; got shape {tuple(_numpy(w).shape)}")
        if residual:
            a = 0.5 * a + 0.5 * np.eye(a.shape[-1])
            a = a / a.sum(axis=-1, keepdims=True)
        mats.append(a)
    out = mats[0]
    for a in mats[1:]:
        out = a @ out
    if isinstance(weights[0], np.ndarray):
        return out
    import torch

    return torch.from_numpy(out).to(weights[0].device)
