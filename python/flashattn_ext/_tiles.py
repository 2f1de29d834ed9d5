"""Tile tables tuned per machine: ``python -m flashattn_ext tune`` times the CPU kernels' tile
candidates (``_C.cpu_tile_candidates()``) per (dtype, head-dim class, direction) for the active
instruction set and stores the winners in ``$XDG_CACHE_HOME/flashattn_ext/tiles-<isa>.json``
(``~/.cache/...`` without XDG_CACHE_HOME). The package loads the files of every instruction set
this machine can run when it is imported; ``build_info()["cpu_tiles"]`` names the file in use, or
``built-in``. FLASHATTN_EXT_TILES_PATH names another file (for reading and for ``tune``);
FLASHATTN_EXT_NO_TUNED_TILES=1 keeps the built-in tiles."""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import _C

ENV_PATH = "FLASHATTN_EXT_TILES_PATH"
ENV_OFF = "FLASHATTN_EXT_NO_TUNED_TILES"
DTYPES = ("float32", "float16", "bfloat16")
HEAD_DIMS = (64, 128, 256)  # one per class: <= 64, <= 128, larger


def tiles_path(isa: str) -> Path:
    """Where the tuned table of instruction set ``isa`` is read from and written to."""
    if os.environ.get(ENV_PATH):
        return Path(os.environ[ENV_PATH])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "flashattn_ext" / f"tiles-{isa}.json"


def _apply(path: Path) -> None:
    table = json.loads(path.read_text(encoding="utf-8"))
    _C.set_cpu_tiles(table["isa"], table["entries"], str(path))


def load_tuned_tiles() -> None:
    """(Re)reads the tuned tables from their files (see the module's docstring); a file that
    cannot be used is reported with a warning and the built-in tiles stay."""
    isas = list(_C.available_isas())
    for isa in isas:
        _C.set_cpu_tiles(isa, [], "")
    if os.environ.get(ENV_OFF, "") not in ("", "0"):
        return
    paths = [Path(os.environ[ENV_PATH])] if os.environ.get(ENV_PATH) else [tiles_path(isa) for isa in isas]
    for path in paths:
        if not path.is_file():
            continue
        try:
            _apply(path)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            warnings.warn(f"flashattn_ext: tuned CPU tiles in {path} not used ({e}); built-in tiles instead "
                          f"(rerun python -m flashattn_ext tune, or set {ENV_OFF}=1)", RuntimeWarning, stacklevel=2)


def _time(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def tune(path: Optional[Path] = None, seqlen: int = 1024, dtypes: Sequence[str] = DTYPES,
         head_dims: Sequence[int] = HEAD_DIMS, reps: int = 3, verbose: bool = True) -> Path:
    """Times every tile candidate on (1, seqlen, 4, D) non-causal attention (forward, and forward
    + backward for the backward's tiles), best of ``reps``, on the default threads, writes the
    fastest per (dtype, head dim class, direction) to ``path`` (default :func:`tiles_path`) and
    uses them from now on. Needs torch (for bfloat16 and gradients)."""
    import torch

    import flashattn_ext as fa

    isa = _C.build_info()["cpu_isa"]
    path = Path(path) if path is not None else tiles_path(isa)
    candidates = _C.cpu_tile_candidates()
    entries: List[Dict[str, object]] = []
    gen = torch.Generator().manual_seed(0)
    try:
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            for d in head_dims:
                q, k, v, dout = (torch.randn(1, seqlen, 4, d, generator=gen).to(dtype) for _ in range(4))
                for x in (q, k, v):
                    x.requires_grad_()
                flops = 4.0 * 4 * seqlen * seqlen * d
                runs = {"fwd": (lambda: fa.flash_attn_func(q, k, v).detach(), flops),
                        "bwd": (lambda: torch.autograd.grad(fa.flash_attn_func(q, k, v), (q, k, v), dout),
                                3.5 * flops)}
                for direction, (fn, work) in runs.items():
                    rates = {}
                    for bq, bk in candidates[direction]:
                        entry = dict(dtype=dtype_name, head_dim=d, direction=direction, bq=bq, bk=bk)
                        _C.set_cpu_tiles(isa, [entry], "tuning")
                        rates[(bq, bk)] = work / _time(fn, reps) / 1e9
                    (bq, bk), best = max(rates.items(), key=lambda kv: kv[1])
                    entries.append(dict(dtype=dtype_name, head_dim=d, direction=direction, bq=bq, bk=bk,
                                        gflops=round(best, 1)))
                    if verbose:
                        print(f"  {dtype_name:9s} D<={d:<4d}{direction}: " + ", ".join(
                            f"{c[0]}x{c[1]}{'*' if c == (bq, bk) else ''} {r:.1f}" for c, r in rates.items())
                            + " GFLOP/s", flush=True)
    except BaseException:
        load_tuned_tiles()  # what was in use before
        raise
    table = dict(isa=isa, cpu=platform.processor() or platform.machine(), threads=fa.get_num_threads(),
                 seqlen=seqlen, entries=entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    _apply(path)
    return path
