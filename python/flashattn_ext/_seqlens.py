"""Variable-length batches and KV caches: checks of the sequence arguments (cu_seqlens,
max_seqlen, cache_seqlens, cache_batch_idx, cache_leftpad, block_table, rotary tables,
num_splits) and the :class:`Seqs` they become. Each error names the argument, what was given and
what is accepted (docs/bad_inputs.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ._validate import Call, _type, dtype_name, is_tensor, strides

PAGE_MULTIPLE = 16


def host(x: Any) -> np.ndarray:
    """A host (numpy) copy of an int array, torch tensor or numpy array."""
    return x.detach().cpu().numpy() if is_tensor(x) else np.asarray(x)


def address(x: Any) -> int:
    """The data address of an array, 0 for None."""
    if x is None:
        return 0
    return int(x.data_ptr()) if is_tensor(x) else int(x.ctypes.data)


@dataclass(frozen=True)
class Seqs:
    """Where each sequence of a call lives (FwdParams, csrc/common/params.h): int32 arrays of
    the call's kind on q's device, or None, and host copies of the lengths (queries of each
    sequence, keys it attends to)."""

    lens_q: np.ndarray
    lens_k: np.ndarray
    cu_seqlens_q: Any = None
    cu_seqlens_k: Any = None
    seqused_k: Any = None
    leftpad_k: Any = None
    kv_batch_idx: Any = None
    block_table: Any = None
    num_splits: int = 0

    @property
    def batch(self) -> int:
        return len(self.lens_q)

    def max_q(self) -> int:
        return int(self.lens_q.max(initial=0))

    def max_k(self) -> int:
        return int(self.lens_k.max(initial=0))

    def kwargs(self, page_size: int) -> Dict[str, Any]:
        """The sequence arguments of the compiled entry points (bind_attention.h: seq_args)."""
        bt = self.block_table
        return dict(cu_seqlens_q=address(self.cu_seqlens_q),
                    cu_seqlens_k=address(self.cu_seqlens_k), seqused_k=address(self.seqused_k),
                    leftpad_k=address(self.leftpad_k), kv_batch_idx=address(self.kv_batch_idx),
                    block_table=address(bt),
                    block_table_stride=0 if bt is None else strides(bt)[0],
                    page_size=page_size if bt is not None else 0, align_bottom_right=True,
                    num_splits=self.num_splits)

    def array_sizes(self, q: Any, k: Any) -> Tuple[int, int, int, int]:
        """The (batch, rows) of the (B, S, H, D) views of q and k: bounds for checked pointers."""
        return (int(q.shape[0]), int(q.shape[1]), int(k.shape[0]), int(k.shape[1]))


def varlen_seqs(cu_seqlens_q: Any, cu_seqlens_k: Any, block_table: Any) -> Seqs:
    """Seqs of a checked variable-length call; with a block_table the keys of sequence b are the
    first cu_seqlens_k[b + 1] - cu_seqlens_k[b] positions of its pages (seqused_k)."""
    lens_q, lens_k = np.diff(host(cu_seqlens_q)), np.diff(host(cu_seqlens_k))
    if block_table is None:
        return Seqs(lens_q, lens_k, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    used = cu_seqlens_k[1:] - cu_seqlens_k[:-1]
    return Seqs(lens_q, lens_k, cu_seqlens_q=cu_seqlens_q, seqused_k=_int32(used),
                block_table=block_table)


def _int32(x: Any) -> Any:
    """x as a contiguous int32 array of its own kind."""
    if is_tensor(x):
        import torch

        return x.to(torch.int32).contiguous()
    return np.ascontiguousarray(x, dtype=np.int32)


def int_array(name: str, x: Any, like: Any, shape: str, ndim: int = 1) -> Any:
    """An int32 array argument of a call whose data is ``like`` (same kind and device), as a
    contiguous array; ``shape`` describes what is accepted."""
    torch_call = is_tensor(like)
    kind = "torch.Tensor" if torch_call else "numpy.ndarray"
    if torch_call != is_tensor(x) or not (is_tensor(x) or isinstance(x, np.ndarray)):
        raise TypeError(f"{name}: expected an int32 {kind} of shape {shape} like q, got "
                        f"{_type(x)}")
    if dtype_name(x) != "int32":
        raise TypeError(f"{name}: dtype {dtype_name(x)} is not supported; expected int32 of "
                        f"shape {shape} (e.g. {name}.{'int()' if torch_call else 'astype(np.int32)'})")
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(x.shape)}")
    if torch_call and x.device != like.device:
        raise ValueError(f"{name}: on device {x.device}, but q is on {like.device}")
    return _int32(x)


def count(name: str, x: Any, lowest: int = 0) -> int:
    """An int argument (Python or numpy int, not bool) >= lowest."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {lowest}, got {x!r} ({_type(x)})")
    if x < lowest:
        raise ValueError(f"{name}: expected an int >= {lowest}, got {x}")
    return int(x)


def _cumulative(name: str, x: Any, total: Optional[int], what: str) -> np.ndarray:
    """Checks prefix sums: start at 0, non-decreasing, last entry ``total`` (when given)."""
    h = host(x).astype(np.int64)
    if len(h) < 2:
        raise ValueError(f"{name}: expected (batch + 1,) prefix sums with batch >= 1, got shape "
                         f"{tuple(h.shape)}")
    if h[0] != 0:
        raise ValueError(f"{name}: prefix sums must start at 0, got {name}[0] = {h[0]}")
    down = np.flatnonzero(np.diff(h) < 0)
    if len(down):
        i = int(down[0])
        raise ValueError(f"{name}: prefix sums must be non-decreasing, got {name}[{i + 1}] = "
                         f"{h[i + 1]} < {name}[{i}] = {h[i]}")
    if total is not None and h[-1] != total:
        raise ValueError(f"{name}: the last entry {h[-1]} must be the number of rows of {what} "
                         f"({total})")
    return h


def _max_seqlen(name: str, value: Any, lens: np.ndarray) -> None:
    value = count(name, value)
    if len(lens) and lens.max() > value:
        b = int(np.argmax(lens))
        raise ValueError(f"{name}: {value} is smaller than sequence {b}'s length {lens[b]}; "
                         f"expected an int >= every sequence length")


def check_varlen(call: Call, cu_seqlens_q: Any, cu_seqlens_k: Any, max_seqlen_q: Any,
                 max_seqlen_k: Any, block_table: Any) -> Tuple[Any, Any, Any]:
    """Checks the sequence arguments of flash_attn_varlen_func; returns cu_seqlens_q,
    cu_seqlens_k and block_table as contiguous int32 arrays."""
    like = call.q
    cq = int_array("cu_seqlens_q", cu_seqlens_q, like, "(batch + 1,)")
    ck = int_array("cu_seqlens_k", cu_seqlens_k, like, "(batch + 1,)")
    if len(ck) != len(cq):
        raise ValueError(f"cu_seqlens_k: {len(ck)} entries, but cu_seqlens_q has {len(cq)}; "
                         f"both are (batch + 1,)")
    paged = block_table is not None
    if tracing(cq):  # torch.compile: the values are checked when the graph runs eagerly
        count("max_seqlen_q", max_seqlen_q)
        count("max_seqlen_k", max_seqlen_k)
        return cq, ck, None if block_table is None else _int32(block_table)
    hq = _cumulative("cu_seqlens_q", cq, call.q.shape[1], "q")
    hk = _cumulative("cu_seqlens_k", ck, None if paged else call.k.shape[1], "k")
    _max_seqlen("max_seqlen_q", max_seqlen_q, np.diff(hq))
    _max_seqlen("max_seqlen_k", max_seqlen_k, np.diff(hk))
    if paged:
        block_table = check_block_table(call, block_table, len(cq) - 1, np.diff(hk),
                                        "cu_seqlens_k", "k")
    return cq, ck, block_table


def tracing(x: Any) -> bool:
    """True while torch.compile traces the call: array values are not known then."""
    if not is_tensor(x):
        return False
    import torch

    return torch.compiler.is_compiling()


def check_block_table(call: Call, block_table: Any, batch: int, used: np.ndarray,
                      used_name: str, k_name: str) -> Any:
    """block_table (batch, max_blocks) int32 over the pages of a paged cache (call.k, named
    ``k_name``: pages as its batch); the pages holding the ``used`` keys of each sequence must
    exist."""
    bt = int_array("block_table", block_table, call.q, "(batch, max_blocks_per_seq)", ndim=2)
    pages, page_size = call.k.shape[0], call.k.shape[1]
    if page_size % PAGE_MULTIPLE:
        raise ValueError(f"{k_name}: page size {page_size} (dimension 1 with a block_table) is "
                         f"not a multiple of {PAGE_MULTIPLE}")
    if bt.shape[0] != batch:
        raise ValueError(f"block_table: {bt.shape[0]} rows, expected one per sequence ({batch})")
    capacity = bt.shape[1] * page_size
    if len(used) and used.max() > capacity:
        b = int(np.argmax(used))
        raise ValueError(f"{used_name}: sequence {b} needs {used[b]} keys, more than its "
                         f"{bt.shape[1]} block_table pages of {page_size} hold ({capacity})")
    h = host(bt)
    needed = np.arange(h.shape[1])[None, :] < -(-used[:, None] // page_size)
    bad = np.argwhere(needed & ((h < 0) | (h >= pages)))
    if len(bad):
        b, j = (int(i) for i in bad[0])
        raise ValueError(f"block_table: entry [{b}, {j}] = {h[b, j]} is out of range; {k_name} "
                         f"has pages 0..{pages - 1}")
    return bt
