"""Static performance analysis of the CUDA attention kernels (no GPU needed).

Compiles the bfloat16 forward and backward instances with nvcc for sm_80 and sm_90 (cubins,
cached under build/cuda_static), then reports per kernel: ptxas resources (registers, spills,
static shared memory), the launcher's dynamic shared memory and tile shape (from the traits,
printed by a small host program), occupancy on A100 / H100, and an instruction census of one
steady-state iteration of the main loop from the disassembly, with a per-SM bound model
(tensor cores, instruction issue, shared memory, MUFU, FP32 pipes). Writes bench/cuda_static.md.

    python bench/cuda_static.py [--all] [--jobs N] [--out PATH]

Needs nvcc (13.0 tested), a host C++ compiler, and nvdisasm
(pip install nvidia-cuda-nvdisasm, found inside site-packages/nvidia/*/bin if not on PATH).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CACHE = ROOT / "build" / "cuda_static"
ARCHS = ("sm_80", "sm_90")
DEFAULT_HEAD_DIMS = (64, 128)
NVCC_FLAGS = ("-std=c++17", "--expt-relaxed-constexpr", "-Xptxas", "-v", "-cubin")
ATTENTION_KERNELS = ("flash_fwd_kernel", "flash_fwd_seqs_kernel", "flash_bwd_kernel", "bwd_row_stats",
                     "bwd_convert_dq", "interp_weights", "interp_topk_bwd", "interp_topk")
SMALL_TIER = " (99 KiB tier)"
VARLEN = " (variable-length)"  # the kSeqs instances of the backward (the forward's has its own name)
SCORE_MODS = " + score mods"  # the kMod instances (softcap, ALiBi, masks, dropout: cuda/flash/score_mod.cuh ...)
# Dropout's code in a census path: the Philox round multipliers (IMAD.WIDE.U32 immediates, signed in
# the SASS) and the keep bits moved into predicates (R2P) for the keep multipliers (scale or 0).
PHILOX_MULTIPLIERS = ("-0x2daee0ad", "-0x326172a9", "0xd2511f53", "0xcd9e8d57")

# --------------------------------------------------------------------------------------------
# Instances and compilation


@dataclass(frozen=True)
class SeqsTiles:
    """The tiles of a forward's or backward's variable-length instances, where the score-mod
    variants run (the forward's SeqsConfig, the backward's small tier; with `features`, the
    backward's feature-instance row of bwd_traits.h)."""
    direction: str
    head_dim: int
    dtype: str = "bf16_t"
    features: bool = False

    @property
    def traits_type(self) -> str:
        if self.direction == "forward":
            return f"fae::cuda::SeqsConfig<fae::cuda::FwdTraits<fae::{self.dtype}, {self.head_dim}>>"
        small = f"fae::cuda::bwd_has_small_tier({self.head_dim})"
        return f"fae::cuda::BwdTraits<fae::{self.dtype}, {self.head_dim}, {small}, {str(self.features).lower()}>"

    def mask_stage_exprs(self) -> dict[str, str]:
        """What the launcher sizes a staged float mask by (fwd_launch.cuh, bwd_launch.cuh): whether the
        instance stages masks at all, the stage's bytes (kStages tiles in the backward) and the blocks
        per SM the instance's registers allow (the forward's launcher passes 2)."""
        t = self.traits_type
        tile = f"fae::cuda::MaskTile<{t}::kBlockM, {t}::kBlockN, {t}::kThreads>::bytes(false)"
        if self.direction == "forward":
            return {"stages": f"fae::cuda::kStagesMask<{t}>", "bytes": tile, "reg_blocks": "2"}
        return {"stages": f"fae::cuda::kBwdStagesMask<{t}>", "bytes": f"{t}::kStages * {tile}",
                "reg_blocks": f"fae::cuda::kBwdRegBlocks<{t}>"}


@dataclass(frozen=True)
class Instance:
    direction: str  # "forward" | "backward" | "interp" (attention weights and top-k, interp_launch.cuh)
    head_dim: int
    dtype: str = "bf16_t"

    @property
    def main_kernel(self) -> str:
        return {"forward": "flash_fwd_kernel", "backward": "flash_bwd_kernel"}.get(self.direction, "interp_weights")

    @property
    def traits_type(self) -> str:
        kind = "FwdTraits" if self.direction == "forward" else "BwdTraits"
        return f"fae::cuda::{kind}<fae::{self.dtype}, {self.head_dim}>"

    def source(self) -> str:
        if self.direction == "interp":
            return ('#include "cuda/flash/interp_launch.cuh"\n' + "".join(
                f"template void fae::cuda::{fn}<fae::{self.dtype}, {self.head_dim}>(const fae::{params}&, "
                "fae::cuda::Stream);\n"
                for fn, params in (("run_weights", "WeightsParams"), ("run_topk_forward", "TopkParams"),
                                   ("run_topk_backward", "TopkBwdParams"))))
        if self.direction == "forward":
            return ('#include "cuda/flash/fwd_launch.cuh"\n'
                    f"template void fae::cuda::run_forward<fae::{self.dtype}, {self.head_dim}>"
                    "(const fae::FwdParams&, fae::cuda::Stream);\n")
        return ('#include "cuda/flash/bwd_launch.cuh"\n'
                f"template void fae::cuda::run_backward<fae::{self.dtype}, {self.head_dim}>"
                "(const fae::BwdParams&, float*, float*, fae::cuda::Stream);\n")

    def name(self, arch: str) -> str:
        prefix = {"forward": "fwd", "backward": "bwd"}.get(self.direction, self.direction)
        return f"{prefix}_{self.dtype}_d{self.head_dim}_{arch}"


def instantiated_head_dims() -> dict[str, tuple[int, ...]]:
    """Head dims with a kernel, read from their one home cuda/flash/head_dims.h."""
    text = (CSRC / "cuda" / "flash" / "head_dims.h").read_text()
    dims = {}
    for direction, var in (("forward", "kHeadDims"), ("backward", "kBwdHeadDims")):
        m = re.search(var + r"\[\]\s*=\s*\{([^}]*)\}", text)
        if m is None:
            raise RuntimeError(f"cuda/flash/head_dims.h: no {var} list")
        dims[direction] = tuple(int(x) for x in m.group(1).split(","))
    return dims


def instances(all_dims: bool) -> list[Instance]:
    dims = instantiated_head_dims()
    return [Instance(d, hd) for d in ("forward", "backward") for hd in dims[d]
            if all_dims or hd in DEFAULT_HEAD_DIMS]


def interp_instances(all_dims: bool) -> list[Instance]:
    """The attention-weights and top-k kernels, one instance per forward head dim (checked for
    spills and local memory only; not part of the report)."""
    return [Instance("interp", hd) for hd in instantiated_head_dims()["forward"] if all_dims or hd in DEFAULT_HEAD_DIMS]


def nvcc() -> Optional[str]:
    return shutil.which("nvcc")


def nvdisasm() -> Optional[str]:
    """nvdisasm on PATH, or the one the nvidia-cuda-nvdisasm wheel installs (nvidia/*/bin)."""
    if found := shutil.which("nvdisasm"):
        return found
    spec = importlib.util.find_spec("nvidia")
    bases = spec.submodule_search_locations or [] if spec else []
    tools = sorted(p for base in bases for p in Path(base).glob("*/bin/nvdisasm"))
    return str(tools[-1]) if tools else None


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def source_digest() -> str:
    """Hash of every header and source under csrc/ plus the nvcc version: the cache key."""
    h = hashlib.sha256(_run([nvcc() or "nvcc", "--version"]).stdout.encode())
    for path in sorted(CSRC.rglob("*")):
        if path.suffix in (".h", ".cuh", ".cu", ".hpp") and path.is_file():
            h.update(str(path.relative_to(CSRC)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Build:
    cubin: Path
    ptxas: str  # ptxas -v report (stderr of nvcc)


def compile_instance(inst: Instance, arch: str, digest: str) -> Build:
    """nvcc -cubin of one instance, cached by (sources, nvcc version, instance, arch)."""
    key = hashlib.sha256(f"{digest}{inst.source()}{arch}{NVCC_FLAGS}".encode()).hexdigest()[:16]
    out = CACHE / f"{inst.name(arch)}-{key}"
    cubin, report = out.with_suffix(".cubin"), out.with_suffix(".ptxas.txt")
    if not (cubin.exists() and report.exists()):
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            src = Path(tmp) / f"{inst.name(arch)}.cu"
            src.write_text(inst.source())
            res = _run([nvcc() or "nvcc", *NVCC_FLAGS, f"-arch={arch}", f"-I{CSRC}", str(src),
                        "-o", str(Path(tmp) / "out.cubin")])
            if res.returncode != 0:
                raise RuntimeError(f"nvcc failed for {inst.name(arch)}:\n{res.stderr}")
            (Path(tmp) / "report").write_text(res.stderr)
            os.replace(Path(tmp) / "out.cubin", cubin)
            os.replace(Path(tmp) / "report", report)
    return Build(cubin, report.read_text())


def compile_all(insts: Iterable[Instance], archs: Iterable[str], jobs: int = 2) -> dict[tuple[Instance, str], Build]:
    digest = source_digest()
    work = [(i, a) for i in insts for a in archs]
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, 2))) as pool:
        builds = list(pool.map(lambda w: compile_instance(w[0], w[1], digest), work))
    return dict(zip(work, builds))


# --------------------------------------------------------------------------------------------
# ptxas report, traits


@dataclass(frozen=True)
class Resources:
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    static_smem: int


def kernel_name(symbol: str) -> str:
    """Short name of a kernel symbol; the backward's variable-length instances (template bool kSeqs)
    get VARLEN, the score-mod instances (the last template bool kMod) SCORE_MODS, and the 99 KiB
    shared-memory tier (BwdTraits<T, D, true>, compiled into the same cubin) SMALL_TIER appended."""
    m = re.search("|".join(ATTENTION_KERNELS), symbol)
    if m is None:
        return symbol
    base = name = m.group(0)
    if base in ("flash_bwd_kernel", "bwd_row_stats") and re.search(r"Lb1ELb[01]EEEv", symbol):
        name += VARLEN
    if base in ("flash_fwd_seqs_kernel", "flash_bwd_kernel", "bwd_row_stats") and re.search(r"Lb1EEEv", symbol):
        name += SCORE_MODS
    return name + (SMALL_TIER if re.search(r"BwdTraits\w*?Lb1E", symbol) else "")


def parse_ptxas(report: str) -> dict[str, Resources]:
    """Entry function (short name) -> resources, from `nvcc -Xptxas -v` output."""
    out = {}
    for chunk in report.split("Compiling entry function")[1:]:
        sym = re.match(r"\s*'(\w+)'", chunk)
        props = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", chunk)
        regs = re.search(r"Used (\d+) registers", chunk)
        if not (sym and props and regs):
            raise RuntimeError(f"unexpected ptxas report:\n{chunk}")
        smem = re.search(r"(\d+) bytes smem", chunk)
        out[kernel_name(sym.group(1))] = Resources(int(regs.group(1)), int(props.group(2)), int(props.group(3)),
                                                   int(props.group(1)), int(smem.group(1)) if smem else 0)
    return out


TRAIT_FIELDS = ("kSmemBytes", "kThreads", "kBlockM", "kBlockN", "kChunksPerRow")


def host_values(exprs: list[str]) -> list[int]:
    """Integer constant expressions of the kernels' headers, printed by a host program built from
    them (cached by sources and expressions)."""
    key = hashlib.sha256((source_digest() + repr(exprs)).encode()).hexdigest()[:16]
    cache = CACHE / f"host-{key}.json"
    if not cache.exists():
        lines = ['#include <cstdio>', '#include "cuda/primitives.cuh"', '#include "cuda/flash/fwd_traits.h"',
                 '#include "cuda/flash/bwd_traits.h"', '#include "cuda/flash/fwd_launch.cuh"',
                 '#include "cuda/flash/bwd_launch.cuh"', "int main() {"]
        lines += [f'  std::printf("%lld\\n", (long long)({e}));' for e in exprs]
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            src, exe = Path(tmp) / "host.cpp", Path(tmp) / "host"
            src.write_text("\n".join(lines + ["}"]) + "\n")
            cxx = os.environ.get("CXX") or shutil.which("c++") or "g++"
            res = _run([cxx, "-std=c++17", f"-I{CSRC}", str(src), "-o", str(exe)])
            if res.returncode != 0:
                raise RuntimeError(f"host program of the kernels' constants failed to build:\n{res.stderr}")
            values = [int(x) for x in _run([str(exe)]).stdout.split()]
        if len(values) != len(exprs):
            raise RuntimeError(f"host program printed {len(values)} values for {len(exprs)} expressions")
        cache.write_text(json.dumps(values))
    return json.loads(cache.read_text())


def traits(insts: list) -> dict:
    """Tile constants per instance (TRAIT_FIELDS of its traits_type), from the traits headers."""
    values = iter(host_values([f"{inst.traits_type}::{f}" for inst in insts for f in TRAIT_FIELDS]))
    return {inst: {f: next(values) for f in TRAIT_FIELDS} for inst in insts}


# --------------------------------------------------------------------------------------------
# SASS: parsing, control flow, the main loop

INSTR = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:(@!?U?P[T0-9]+)\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;")
LABEL = re.compile(r"^(\.L_x_\d+):")
FUNC = re.compile(r"^\.text\.(\S+):")
TARGET = re.compile(r"`\((\.L_x_\d+)\)")
COPY_DST = re.compile(r"^\[R\w+(?:\.X\d+)?(?:\+(0x[0-9a-f]+))?\]")


@dataclass(frozen=True)
class Instr:
    addr: int
    pred: str  # "" or a guard such as "@!P0"
    op: str  # opcode with modifiers, e.g. HMMA.16816.F32.BF16
    args: str

    @property
    def base(self) -> str:
        return self.op.split(".")[0]

    @property
    def never(self) -> bool:  # guarded by the constant-false predicate: an issue-slot filler
        return self.pred in ("@!PT", "@!UPT")


@dataclass
class Function:
    instrs: list[Instr] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)  # label -> instruction index


def disassemble(cubin: Path) -> dict[str, Function]:
    """Kernel (short name) -> instructions, via nvdisasm -c; cached next to the cubin."""
    sass = cubin.with_suffix(".sass")
    if not sass.exists():
        tool = nvdisasm()
        if tool is None:
            raise RuntimeError("nvdisasm not found: pip install nvidia-cuda-nvdisasm")
        res = _run([tool, "-c", str(cubin)])
        if res.returncode != 0:
            raise RuntimeError(f"nvdisasm failed on {cubin}:\n{res.stderr}")
        sass.write_text(res.stdout)
    funcs: dict[str, Function] = {}
    cur: Optional[Function] = None
    pending: list[str] = []
    for line in sass.read_text().splitlines():
        if m := FUNC.match(line):
            cur = funcs.setdefault(kernel_name(m.group(1)), Function())
            pending = []
        elif cur is not None and (m := LABEL.match(line)):
            pending.append(m.group(1))
        elif cur is not None and (m := INSTR.match(line)):
            for label in pending:
                cur.labels[label] = len(cur.instrs)
            pending = []
            cur.instrs.append(Instr(int(m.group(1), 16), m.group(2) or "", m.group(3), m.group(4)))
    return funcs


@dataclass
class Cfg:
    blocks: list[tuple[int, int]]  # [first, last + 1) instruction indices
    succ: list[list[int]]


def control_flow(fn: Function) -> Cfg:
    n = len(fn.instrs)
    leaders = {0} | {i for i in fn.labels.values() if i < n}
    leaders |= {k + 1 for k, ins in enumerate(fn.instrs) if ins.base in ("BRA", "BRX", "JMP", "EXIT", "RET")}
    starts = sorted(x for x in leaders if x < n)
    blocks = list(zip(starts, starts[1:] + [n]))
    index = {a: b for b, (a, _) in enumerate(blocks)}
    succ = []
    for b, (_, end) in enumerate(blocks):
        last = fn.instrs[end - 1]
        if last.never or last.base not in ("BRA", "BRX", "JMP", "EXIT", "RET"):
            succ.append([b + 1] if b + 1 < len(blocks) else [])
            continue
        if last.base in ("BRX", "JMP"):
            raise RuntimeError(f"indirect branch at {last.addr:#x}: not handled")
        targets = []
        if last.base == "BRA":
            targets.append(index[fn.labels[TARGET.search(last.args).group(1)]])
        if last.pred and b + 1 < len(blocks):
            targets.append(b + 1)
        succ.append(targets)
    return Cfg(blocks, succ)


@dataclass
class Loop:
    header: int
    body: set[int]


def natural_loops(cfg: Cfg) -> list[Loop]:
    """One loop per header: the blocks that reach a back edge's source without passing the header."""
    back: dict[int, list[int]] = {}
    for b, targets in enumerate(cfg.succ):
        for t in targets:
            if cfg.blocks[t][0] <= cfg.blocks[b][0]:
                back.setdefault(t, []).append(b)
    pred: dict[int, list[int]] = {}
    for b, targets in enumerate(cfg.succ):
        for t in targets:
            pred.setdefault(t, []).append(b)
    loops = []
    for header, latches in back.items():
        body, stack = {header}, list(latches)
        while stack:
            b = stack.pop()
            if b not in body:
                body.add(b)
                stack.extend(pred.get(b, []))
        loops.append(Loop(header, body))
    return loops


def main_loop(fn: Function, cfg: Cfg) -> Loop:
    """The innermost loop whose body contains HMMA; of several (the forward's loop over whole key
    tiles and its loop over tiles that cross a mask edge), the smallest: the unmasked one."""
    def has_mma(loop: Loop) -> bool:
        return any(fn.instrs[k].base == "HMMA" for b in loop.body for k in range(*cfg.blocks[b]))

    def size(loop: Loop) -> int:
        return sum(cfg.blocks[b][1] - cfg.blocks[b][0] for b in loop.body)
    loops = [lp for lp in natural_loops(cfg) if has_mma(lp)]
    if not loops:
        raise RuntimeError("no loop contains HMMA")
    inner = [lp for lp in loops if not any(o is not lp and o.body < lp.body for o in loops)]
    return min(inner, key=size)


def copy_offset(ins: Instr) -> int:
    """Shared-memory destination offset of an LDGSTS (identifies the tile a copy loop fills)."""
    m = COPY_DST.match(ins.args)
    if m is None:
        raise RuntimeError(f"unexpected LDGSTS operands: {ins.args}")
    return int(m.group(1) or "0", 16)


@dataclass
class Iteration:
    instrs: list[Instr]  # the path's instructions in execution order (inner-loop blocks repeated)
    loop_instrs: int  # static size of the loop body
    header_addr: int
    latch_addr: int
    conditional_skipped: int  # instructions of the loop body not on the path
    copy: list[Instr]  # the path's instructions in blocks that issue cp.async (LDGSTS)


def steady_iteration(fn: Function, cfg: Cfg, loop: Loop, copies_per_tile: int,
                     prefer: Callable[[Instr], bool] = lambda ins: False,
                     avoid: Callable[[Instr], bool] = lambda ins: False) -> Iteration:
    """The path of one steady-state iteration through the main loop.

    Conditional branches in the body are resolved by a search over all paths from the header
    back to it. (1) Copy loops inside the body (cycles not through the header that issue cp.async
    `avoid` does not pick; a run-time trip count) run so that every tile, told apart by its
    shared-memory destination offset, gets exactly `copies_per_tile` cp.async per thread (full
    tiles, from the traits); copies with compile-time trip counts are straight-line code, and the
    path with the most of them is taken (the next tile's prefetch, the busiest thread's share of an
    uneven split); other inner loops are passed once. Among those paths:
    (2) the most HMMA, (3) the most global-memory instructions (atomics, row-statistics loads: the
    busiest warp), (4) the most instructions `prefer` picks (none by default; the score-mod
    census takes the softcap's and ALiBi's warp-uniform blocks), (5) the fewest instructions (the
    unmasked variant of masking code). Before all of these, the fewest instructions `avoid` picks
    (none by default; the score-mod census without an explicit mask avoids the mask's read-only
    loads and the dmask stores).
    """
    def block_instrs(b: int) -> list[Instr]:
        return fn.instrs[slice(*cfg.blocks[b])]
    # Loops inside the body that issue cp.async `avoid` does not pick (not other inner loops, such as
    # the backward feature instance's one-at-a-time dropout calls at D = 224).
    copy_loops = any(lp.header != loop.header and lp.body < loop.body and
                     any(i.base == "LDGSTS" and not avoid(i) for b in lp.body for i in block_instrs(b))
                     for lp in natural_loops(cfg))

    def tile(ins: Instr) -> int:
        return copy_offset(ins) if copy_loops else 0
    tiles = sorted({tile(i) for b in loop.body for i in block_instrs(b) if i.base == "LDGSTS"})

    def copies(b: int) -> tuple[int, ...]:
        got = [tile(i) for i in block_instrs(b) if i.base == "LDGSTS"]
        return tuple(got.count(t) for t in tiles)

    def score(b: int) -> tuple[int, int, int, int, int, int]:
        ins = block_instrs(b)
        return (-sum(map(avoid, ins)), sum(copies(b)), sum(i.base == "HMMA" for i in ins),
                sum(CLASS_OF.get(i.base) == "global" for i in ins), sum(map(prefer, ins)), -len(ins))

    Best = Optional[tuple[tuple[int, int, int, int, int, int], tuple[int, ...]]]
    memo: dict[tuple[int, tuple[int, ...]], Best] = {}

    def best(b: int, done: tuple[int, ...]) -> Best:
        key = (b, done)
        if key in memo:
            return memo[key]
        memo[key] = None  # a copy-free cycle revisits this state: no path
        # Without copy loops the counts need no state (and a loop around other blocks ends at a revisit).
        now = tuple(x + y for x, y in zip(done, copies(b))) if copy_loops else done
        options: list[tuple[tuple[int, int, int, int, int, int], tuple[int, ...]]] = []
        if not copy_loops or all(x <= copies_per_tile for x in now):
            for s in cfg.succ[b]:
                if s == loop.header and (not copy_loops or all(x == copies_per_tile for x in now)):
                    options.append(((0, 0, 0, 0, 0, 0), ()))
                elif s in loop.body and s != loop.header and (tail := best(s, now)) is not None:
                    options.append(tail)
        if options:
            sc, path = max(options, key=lambda o: o[0])
            memo[key] = (tuple(x + y for x, y in zip(sc, score(b))), (b,) + path)
        return memo[key]

    found = best(loop.header, tuple(0 for _ in tiles))
    if found is None:
        raise RuntimeError(f"no path through the loop copies {copies_per_tile} chunks into each of tiles {tiles}")
    path = list(found[1])
    instrs = [i for b in path for i in block_instrs(b)]
    body = sum(len(block_instrs(b)) for b in loop.body)
    on_path = sum(len(block_instrs(b)) for b in set(path))
    copy = [i for b in path if any(copies(b)) for i in block_instrs(b)]
    return Iteration(instrs, body, fn.instrs[cfg.blocks[loop.header][0]].addr,
                     fn.instrs[cfg.blocks[path[-1]][1] - 1].addr, body - on_path, copy)


# --------------------------------------------------------------------------------------------
# Instruction classes, hardware, bound model

CLASSES = {
    "HMMA": ("HMMA",),
    "LDSM": ("LDSM",),
    "LDGSTS": ("LDGSTS",),
    "FP32": ("FADD", "FMUL", "FFMA", "FMNMX", "FSEL", "FSETP", "FSET", "FCHK", "FSWZADD"),
    "MUFU": ("MUFU",),
    "int": ("IADD3", "IMAD", "IADD", "LEA", "SHF", "LOP3", "ISETP", "SEL", "PRMT", "IMNMX", "IABS", "MOV",
            "CS2R", "VIADD", "VIADDMNMX", "VIMNMX", "PLOP3", "P2R", "R2P", "S2R", "S2UR", "LDC", "POPC",
            "FLO", "BMSK", "SGXT", "IDP", "LOP", "SHL", "SHR", "BREV", "VOTE"),
    "SHFL": ("SHFL",),
    "barrier": ("BAR", "DEPBAR", "LDGDEPBAR", "MEMBAR", "WARPSYNC", "ERRBAR"),
    "branch": ("BRA", "BRX", "JMP", "BSSY", "BSYNC", "EXIT", "CALL", "RET", "BREAK", "BMOV", "YIELD"),
    "global": ("LDG", "STG", "RED", "REDG", "ATOM", "ATOMG"),
    "local": ("LDL", "STL"),
    "conv": ("F2F", "F2FP", "I2F", "F2I", "I2FP", "F2IP", "FRND", "I2I"),
    "LDS/STS": ("LDS", "STS"),
}
CLASS_OF = {op: cls for cls, ops in CLASSES.items() for op in ops}
CLASS_NOTES = {
    "FP32": "FADD FMUL FFMA FMNMX FSEL FSETP", "int": "integer/address/move/predicate, incl. uniform-datapath U* ops",
    "barrier": "BAR, DEPBAR, LDGDEPBAR", "branch": "BRA BSSY BSYNC", "global": "LDG STG RED ATOM",
    "conv": "F2F F2FP I2F F2I", "other": "NOP and never-executed (@!PT) fillers, HFMA2, ...",
}


def op_class(ins: Instr) -> str:
    if ins.never:
        return "other"
    if ins.base in CLASS_OF:
        return CLASS_OF[ins.base]
    return "int" if ins.base.startswith("U") else "other"


def census(instrs: Iterable[Instr]) -> dict[str, int]:
    counts = {c: 0 for c in [*CLASSES, "other"]}
    for ins in instrs:
        counts[op_class(ins)] += 1
    return counts


def smem_wavefronts(ins: Instr) -> int:
    """128-byte shared-memory wavefronts of one warp instruction, conflict-free (padded rows)."""
    if ins.never:
        return 0
    if ins.base == "LDSM":  # LDSM.16.M88[.2|.4]: 1, 2 or 4 8x8 matrices of 128 B
        return {"4": 4, "2": 2}.get(ins.op.split(".")[-1], 1)
    if ins.base in ("LDS", "STS", "LDGSTS"):
        width = re.search(r"\.(64|128)\b", ins.op)
        return int(width.group(1)) // 32 if width else 1
    return 0


@dataclass(frozen=True)
class Hardware:
    arch: str
    part: str
    regs_per_sm: int
    reg_unit: int  # register allocation unit per warp
    smem_per_sm: int  # bytes, maximum carve-out
    smem_per_block: int  # bytes, opt-in maximum for one block
    smem_reserved: int  # bytes per block reserved by the system
    smem_unit: int
    threads_per_sm: int
    blocks_per_sm: int
    clocks_per_hmma: int  # one m16n8k16 HMMA per SM partition every this many clocks
    fp32_per_clk: int  # FADD/FMUL/FFMA results per clock per SM
    mufu_per_clk: int  # MUFU.EX2 results per clock per SM
    tensor_note: str


HARDWARE = {
    "sm_80": Hardware("sm_80", "A100 (SXM4, 108 SMs)", 65536, 256, 164 * 1024, 163 * 1024, 1024, 128, 2048, 32,
                      8, 64, 16, "312 TFLOP/s dense BF16 / (108 SMs x 1.41 GHz) = 2048 FLOP = 1024 FMA per clock "
                      "per SM = 256 per partition; an m16n8k16 HMMA is 16*8*16 = 2048 FMA -> 8 clocks"),
    "sm_90": Hardware("sm_90", "H100 (SXM5, 132 SMs)", 65536, 256, 228 * 1024, 227 * 1024, 1024, 128, 2048, 32,
                      4, 128, 16, "989 TFLOP/s dense BF16 / (132 SMs x 1.83 GHz) = 4096 FLOP = 2048 FMA per clock "
                      "per SM (twice A100's, per SM and clock) = 512 per partition -> 4 clocks per m16n8k16. That peak "
                      "is quoted for Hopper's warpgroup MMA (wgmma); HMMA (mma.sync, what these kernels issue) is not "
                      "documented to reach it, so the sm_90 tensor time is a lower bound and the fraction optimistic"),
}


@dataclass(frozen=True)
class Occupancy:
    blocks: int
    warps: int
    limiter: str


def occupancy(hw: Hardware, res: Resources, threads: int, dyn_smem: int) -> Occupancy:
    """Resident blocks per SM (CUDA occupancy calculator rules: registers per warp rounded to the
    allocation unit and allocated per SM partition; shared memory per block plus the system
    reserve, rounded to the allocation unit)."""
    warps = -(-threads // 32)
    regs_per_warp = -(-res.registers * 32 // hw.reg_unit) * hw.reg_unit
    smem = -(-(res.static_smem + dyn_smem + hw.smem_reserved) // hw.smem_unit) * hw.smem_unit
    limits = {
        "registers": (hw.regs_per_sm // 4 // regs_per_warp) * 4 // warps,
        "shared memory": hw.smem_per_sm // smem if res.static_smem + dyn_smem <= hw.smem_per_block else 0,
        "threads": hw.threads_per_sm // (warps * 32),
        "blocks": hw.blocks_per_sm,
    }
    limiter = min(limits, key=lambda k: limits[k])
    return Occupancy(limits[limiter], limits[limiter] * warps, limiter)


@dataclass(frozen=True)
class Bound:
    clocks: dict[str, float]  # per SM, one iteration of one warp per partition

    @property
    def limiter(self) -> str:
        return max(self.clocks, key=lambda k: self.clocks[k])

    @property
    def tensor_fraction(self) -> float:
        return self.clocks["tensor"] / self.clocks[self.limiter]


def bound(hw: Hardware, counts: dict[str, int], total: int, wavefronts: int, warps: int) -> Bound:
    """Clocks per SM for one iteration of a block whose `warps` warps spread over the 4 partitions."""
    per_partition = warps / 4
    return Bound({
        "tensor": counts["HMMA"] * hw.clocks_per_hmma * per_partition,
        "issue": total * per_partition,  # one warp instruction per clock per partition
        "shared": wavefronts * warps,  # 128 B per clock per SM
        "MUFU": counts["MUFU"] * 32 * warps / hw.mufu_per_clk,
        "FP32": counts["FP32"] * 32 * warps / hw.fp32_per_clk,
    })


# --------------------------------------------------------------------------------------------
# Analysis of one (instance, arch)


@dataclass
class Analysis:
    inst: Instance
    arch: str
    resources: dict[str, Resources]
    traits: dict[str, int]
    occupancy: Occupancy
    iteration: Iteration
    counts: dict[str, int]
    wavefronts: int
    bound: Bound
    expected_hmma: int

    @property
    def total(self) -> int:
        return len(self.iteration.instrs)

    @property
    def hmma(self) -> int:
        return self.counts["HMMA"]

    @property
    def main(self) -> Resources:
        return self.resources[self.inst.main_kernel]

    @property
    def tile(self) -> str:
        return f"{self.traits['kBlockM']} x {self.traits['kBlockN']}"

    @property
    def share(self) -> str:
        return _pct(self.hmma / self.total)

    def per_hmma(self, n: int) -> str:
        return f"{n / self.hmma:.2f}"


def local_memory_instrs(build: Build) -> dict[str, int]:
    """Kernel -> number of LDL/STL instructions in its SASS."""
    return {k: sum(i.base in CLASSES["local"] for i in fn.instrs) for k, fn in disassemble(build.cubin).items()}


def analyse(inst: Instance, arch: str, build: Build, tr: dict[str, int]) -> Analysis:
    fn = disassemble(build.cubin)[inst.main_kernel]
    cfg = control_flow(fn)
    loop = main_loop(fn, cfg)
    rows = tr["kBlockN"] if inst.direction == "forward" else tr["kBlockM"]  # rows of the streamed tiles
    it = steady_iteration(fn, cfg, loop, rows * tr["kChunksPerRow"] // tr["kThreads"])
    counts = census(it.instrs)
    wavefronts = sum(smem_wavefronts(i) for i in it.instrs)
    warps = tr["kThreads"] // 32
    # FLOP per block iteration: forward S = QK^T and O += PV; backward S, dP, dV, dK, dQ.
    products = 2 if inst.direction == "forward" else 5
    expected = products * tr["kBlockM"] * tr["kBlockN"] * inst.head_dim // (16 * 8 * 16) // warps
    res = parse_ptxas(build.ptxas)
    hw = HARDWARE[arch]
    return Analysis(inst, arch, res, tr, occupancy(hw, res[inst.main_kernel], tr["kThreads"], tr["kSmemBytes"]),
                    it, counts, wavefronts, bound(hw, counts, len(it.instrs), wavefronts, warps), expected)


# --------------------------------------------------------------------------------------------
# Report

FA2_REFERENCE = [  # sm_80, bf16, main loop per warp, measured on FlashAttention-2's SASS
    # (direction, D, tile, instructions, HMMA, integer, branches, LDSM per HMMA)
    ("forward", 128, "128 x 64, 4 warps", 941, 256, 106, 3, "0.31"),
    ("forward", 64, "128 x 128, 4 warps", 1185, 256, 66, 3, "0.28"),
    ("backward", 128, "64 x 128, 8 warps", 891, 320, 153, 3, "-"),
    ("backward", 64, "128 x 128, 8 warps", 1127, 320, 194, 3, "-"),
]
EARLIER = {  # the first kernels, sm_80 bf16, counted by hand: (instructions, HMMA, integer, branches)
    ("forward", 128): (968, 128, "459", "21"), ("forward", 64): (644, 64, "279", "19"),
    ("backward", 128): (797, 160, "-", "-"), ("backward", 64): (936, 160, "-", "-"),
}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def summary(results: list[Analysis]) -> list[str]:
    rows = [[a.inst.direction, a.arch, str(a.inst.head_dim), str(a.main.registers), str(a.occupancy.blocks),
             str(a.total), str(a.hmma), a.share, a.per_hmma(a.total), a.per_hmma(a.counts["LDSM"]), a.bound.limiter,
             f"{100 * a.bound.tensor_fraction:.0f}%"] for a in results]
    return _table(["kernel", "arch", "D", "registers", "blocks / SM", "instr / iteration / warp", "HMMA", "HMMA share",
                   "instr per HMMA", "LDSM per HMMA", "bound", "tensor peak fraction"], rows)


def hardware_table() -> list[str]:
    rows = [[f"{hw.arch}, {hw.part}", f"{hw.regs_per_sm // 1024} K (allocated per warp in units of {hw.reg_unit})",
             f"{hw.smem_per_sm // 1024} KiB / {hw.smem_per_block // 1024} KiB, +{hw.smem_reserved} B per block",
             f"{hw.threads_per_sm} / {hw.blocks_per_sm}", f"1 per {hw.clocks_per_hmma} clocks per partition",
             f"{hw.fp32_per_clk} / {hw.mufu_per_clk}"] for hw in HARDWARE.values()]
    return _table(["arch", "registers / SM", "shared memory / SM, / block", "threads / blocks per SM",
                   "HMMA.16816 (m16n8k16)", "FP32 / MUFU results per clock per SM"], rows)


def kernel_table(group: list[Analysis]) -> list[str]:
    rows: list[tuple[str, Callable[[Analysis], object]]] = [
        ("tile kBlockM x kBlockN, threads", lambda a: f"{a.tile}, {a.traits['kThreads']}"),
        ("registers / thread", lambda a: a.main.registers),
        ("spill stores / loads (bytes), stack frame",
         lambda a: f"{a.main.spill_stores} / {a.main.spill_loads}, {a.main.stack}"),
        ("static / dynamic shared memory (bytes)", lambda a: f"{a.main.static_smem} / {a.traits['kSmemBytes']}"),
        ("blocks / SM (limiter), warps / SM",
         lambda a: f"{a.occupancy.blocks} ({a.occupancy.limiter}), {a.occupancy.warps}"),
        ("main loop: header .. back edge",
         lambda a: f"{a.iteration.header_addr:#06x} .. {a.iteration.latch_addr:#06x}"),
        ("loop body instructions / not on the path",
         lambda a: f"{a.iteration.loop_instrs} / {a.iteration.conditional_skipped}"),
        ("**instructions per iteration per warp**", lambda a: f"**{a.total}**"),
        ("HMMA (implied by the tile FLOPs)", lambda a: f"{a.hmma} ({a.expected_hmma})"),
        ("**HMMA share of issued**", lambda a: f"**{a.share}**"),
        ("instructions per HMMA", lambda a: a.per_hmma(a.total)),
        ("LDSM (per HMMA)", lambda a: f"{a.counts['LDSM']} ({a.per_hmma(a.counts['LDSM'])})"),
        *[(f"{c} ({CLASS_NOTES[c]})" if c in CLASS_NOTES else c, (lambda c: lambda a: a.counts[c])(c))
          for c in [*CLASSES, "other"] if c not in ("HMMA", "LDSM")],
        ("instructions in cp.async blocks (with LDGSTS)", lambda a: len(a.iteration.copy)),
        ("shared-memory wavefronts per warp", lambda a: a.wavefronts),
        *[(f"{k} clocks / SM", (lambda k: lambda a: f"{a.bound.clocks[k]:.0f}")(k))
          for k in ("tensor", "issue", "shared", "MUFU", "FP32")],
        ("**bound, achievable fraction of tensor peak**",
         lambda a: f"**{a.bound.limiter}, {100 * a.bound.tensor_fraction:.0f}%**"),
    ]
    a0 = group[0]
    header = ["", *[f"D = {a.inst.head_dim}" for a in group]]
    return [f"### {a0.inst.direction}, {a0.arch} ({HARDWARE[a0.arch].part}), bf16", "",
            *_table(header, [[name, *[str(f(a)) for a in group]] for name, f in rows]), ""]


def comparison(results: list[Analysis]) -> list[str]:
    ours = {(a.inst.direction, a.inst.head_dim): a for a in results if a.arch == "sm_80"}
    rows = []
    for direction, d, tile, total, hmma, integer, branches, ldsm in FA2_REFERENCE:
        fa2 = [f"{total} / {hmma} ({_pct(hmma / total)})", f"{total / hmma:.2f}", str(integer), str(branches), ldsm]
        a = ours.get((direction, d))
        mine = [a.tile, f"{a.total} / {a.hmma} ({a.share})", a.per_hmma(a.total), str(a.counts["int"]),
                str(a.counts["branch"]), a.per_hmma(a.counts["LDSM"])] if a else ["-"] * 6
        rows.append([f"{direction} D={d}", tile, *fa2, *mine])
    cols = ["instr / HMMA (share)", "instr per HMMA", "int", "branches", "LDSM per HMMA"]
    return _table(["sm_80 bf16", "FA2 tile", *[f"FA2 {c}" for c in cols], "our tile", *[f"ours {c}" for c in cols]],
                  rows)


def cross_check(results: list[Analysis]) -> list[str]:
    rows = []
    for a in results:
        if a.arch == "sm_80" and (prev := EARLIER.get((a.inst.direction, a.inst.head_dim))):
            total, hmma, integer, branches = prev
            rows.append([f"{a.inst.direction} D={a.inst.head_dim}", f"{total} / {hmma}", integer, branches,
                         f"{a.total} / {a.hmma}", str(a.counts["int"]), str(a.counts["branch"]),
                         f"{a.total - total:+d}"])
    return _table(["sm_80 bf16", "earlier: instr / HMMA", "earlier: int", "earlier: branches", "here: instr / HMMA",
                   "here: int", "here: branches", "difference"], rows)


def backward_findings(results: list[Analysis]) -> list[str]:
    """The backward at D = 128 on sm_80 (the 163 KiB tier), when analysed."""
    b = next((x for x in results if x.inst.direction == "backward" and x.inst.head_dim == 128 and x.arch == "sm_80"),
             None)
    if b is None:
        return []
    return [f"- The backward at D = 128 (sm_80, {b.tile} per block, {b.traits['kThreads'] // 32} warps) issues "
            f"{b.total} instructions per {b.hmma} HMMA ({b.share}; FlashAttention-2: 35.9%) with {b.counts['int']} "
            f"integer instructions (FlashAttention-2: 153); it is {b.bound.limiter} bound at "
            f"{100 * b.bound.tensor_fraction:.0f}% of tensor peak: {b.per_hmma(b.counts['LDSM'])} ldmatrix per HMMA "
            "(the P, dS and dS^T operands come from shared memory) plus the P and dS stores."]


# The register path of these instances reads one mask entry per load (fwd_kernel.cuh: am.apply<MT, NS,
# (Tr::kHeadDim != 224)>; pair loads cost ptxas a spill there).
ENTRY_MASK_READS = {("forward", 224)}
MASK_ROWS = {"staged": "softcap + ALiBi + mask (staged)", "registers": "softcap + ALiBi + mask (registers)"}


def is_seed_read(ins: Instr) -> bool:  # dropout's 16-byte read of a drawn seed (dropout.cuh: Dropout::key)
    return ".CONSTANT" in ins.op and ".128" in ins.op


def is_mask_load(ins: Instr) -> bool:  # the register path's read-only loads of the explicit mask
    return ".CONSTANT" in ins.op and not is_seed_read(ins)


def is_mask_access(ins: Instr) -> bool:  # the explicit mask's read-only loads and the dmask stores
    return is_mask_load(ins) or ins.base == "STG"


def is_mask_entry_access(ins: Instr) -> bool:  # one mask entry per load or dmask store: the fallbacks to pairs
    return is_mask_access(ins) and not any(w in ins.op for w in (".U16", ".64"))


def is_staged_mask_read(ins: Instr) -> bool:  # a pair of keys read from the staged mask: float, boolean
    return ins.op in ("LDS.64", "LDS.U16")


def is_stage_copy(ins: Instr, stage_at: int) -> bool:
    """A cp.async of the staged mask: the stage lies past every tile of the traits (their kSmemBytes,
    `stage_at`), so its copies' shared-memory destinations do."""
    return ins.base == "LDGSTS" and copy_offset(ins) >= stage_at


def mask_instrs(instrs: Iterable[Instr], stage_at: int) -> dict[str, int]:
    """The explicit mask's instructions on a path by kind: the staged path's copies (LDGSTS), its
    pair reads (LDS.64 float, LDS.U16 boolean), the register path's read-only pair loads (LDG.E.64,
    LDG.E.U16), the backward's dmask pair stores (STG.E.64), and the one-entry fallbacks. A stage copy
    under a guard is counted apart: at some head dims the compiler moves the boolean tile's copy into
    the float one's block, predicated, so both are on the path."""
    kinds = {"stage copies": 0, "stage copies (guarded)": 0, "stage reads": 0, "stage reads (bool)": 0,
             "pair loads": 0, "pair loads (bool)": 0, "pair stores": 0, "entries": 0, "entries (bool)": 0}
    for ins in instrs:
        if is_stage_copy(ins, stage_at):
            kinds["stage copies (guarded)" if ins.pred else "stage copies"] += 1
        elif is_staged_mask_read(ins):
            kinds["stage reads" if ".64" in ins.op else "stage reads (bool)"] += 1
        elif is_mask_entry_access(ins):
            kinds["entries (bool)" if ".U8" in ins.op else "entries"] += 1
        elif is_mask_load(ins):
            kinds["pair loads" if ".64" in ins.op else "pair loads (bool)"] += 1
        elif is_mask_access(ins):
            kinds["pair stores"] += 1
    return kinds


def expected_mask_instrs(tr: dict[str, int], direction: str, mask: Optional[str],
                         pairs: bool = True) -> dict[str, int]:
    """mask_instrs of one iteration through a float mask's `mask` path ("staged", "registers" or None):
    the block's kBlockM x kBlockN mask tile (the forward's per key tile, the backward's per query
    tile) copied once in 16-byte chunks (the busiest thread's share) and each score's entry read once,
    in pairs; the backward stores dmask in pairs on either path; nothing of the other path and no
    one-entry fallback. The path's own boolean reads and guarded stage copies are left out: where the
    compiler predicates the float and boolean code in one block (large head dims), both are on it.
    Without `pairs` (the forward at D = 224, ENTRY_MASK_READS) the register path reads each entry
    alone: one load per score."""
    cells, threads = tr["kBlockM"] * tr["kBlockN"], tr["kThreads"]
    two, chunks = cells // (2 * threads), -(-cells * 4 // 16 // threads)
    regs = mask == "registers"
    want = {"stage copies": chunks if mask == "staged" else 0, "stage copies (guarded)": 0,
            "stage reads": two if mask == "staged" else 0, "stage reads (bool)": 0,
            "pair loads": two if regs and pairs else 0, "pair loads (bool)": 0,
            "pair stores": two if mask and direction == "backward" else 0,
            "entries": 2 * two if regs and not pairs else 0, "entries (bool)": 0}
    for k in {"staged": ("stage reads (bool)", "stage copies (guarded)"),
              "registers": ("pair loads (bool)",) if pairs else ("entries (bool)",)}.get(mask, ()):
        want.pop(k)
    return want


def is_softcap_grad(ins: Instr) -> bool:  # the backward's 1 - tanh^2 (FFMA t, -x, x, 1 from x = capped / cap)
    return ins.base == "FFMA" and re.search(r"-(R\d+), \1, 1$", ins.args) is not None


def is_score_mod(ins: Instr) -> bool:  # softcap's tanh reciprocal and derivative, ALiBi's distance conversion
    return ins.op.startswith(("MUFU.RCP", "I2F")) or is_softcap_grad(ins)


def is_score_mod_only(ins: Instr) -> bool:  # ALiBi's conversion, the tanh's selects of 1 and derivative (not paged copies' I2F.U32.RP)
    return ins.op in ("I2F", "I2FP.F32.S32") or (ins.base == "FSEL" and ", 1," in ins.args) or is_softcap_grad(ins)


def is_philox(ins: Instr) -> bool:  # the generator's rounds and its reads of a drawn seed
    return is_seed_read(ins) or (ins.base == "IMAD" and any(m in ins.args.lower() for m in PHILOX_MULTIPLIERS))


def is_dropout(ins: Instr) -> bool:  # Philox rounds, the keep-bit tests and the seed reads
    return ins.base == "R2P" or is_philox(ins)


ZERO_FILL = re.compile(r",\s*!?U?P[T0-9]+$")  # a cp.async's src-size predicate: 0 bytes read when it fails


def is_paged_copy(ins: Instr, stage_at: int) -> bool:
    """The forward's paged K and V copies (copy_rows_async, a call with a block table): each row's
    block-table read (a 32-bit LDG; the loop reads nothing else but through the read-only path or
    cp.async) and its bounds-checked cp.async (a zero-fill operand, below the mask's stage `stage_at`;
    a dense call copies whole K and V tiles without one)."""
    return ins.op == "LDG.E" or (ins.base == "LDGSTS" and ZERO_FILL.search(ins.args) is not None
                                 and not is_stage_copy(ins, stage_at))


def score_mod_census(fn: Function, tr: dict[str, int], direction: str, mask: Optional[str] = None,
                     dropout: bool = False, what: str = "", pairs: bool = True,
                     mods: bool = True) -> tuple[Iteration, dict[str, int], dict[str, int]]:
    """A steady-state iteration of a variable-length instance's main loop with softcap and ALiBi on
    (their warp-uniform blocks on the path: those with the tanh's reciprocal, the backward's 1 - tanh^2
    or ALiBi's conversion), and with an explicit float mask through one of its paths (`mask`):
    "staged" (the stage's cp.async and its pair reads on the path, no read-only mask loads),
    "registers" (the read-only pair loads, none of the stage's copies or reads), or None (no mask
    instruction); the backward's mask rows take the dmask stores in pairs, no row the one-entry
    fallbacks (but without `pairs`, ENTRY_MASK_READS, whose register path reads one entry per load).
    With `dropout`: dropout alone (the Philox rounds and the keep multipliers on the path;
    softcap, ALiBi and the mask off it). Returns the path, its census and its mask_instrs, checked
    against expected_mask_instrs and against the tile (the HMMA of its FLOPs; one K and V tile of
    cp.async in the forward, one Q and dO tile and the next tile's row statistics in the backward,
    the busiest thread's share, besides the mask's stage), with the row's own code on the path (in a
    kMod kernel, `mods`: softcap's or ALiBi's, or with `dropout` the generator's and not theirs): a
    RuntimeError (naming `what`) when the path is not the one asked."""
    cfg = control_flow(fn)
    rows = tr["kBlockN"] if direction == "forward" else tr["kBlockM"]
    at = tr["kSmemBytes"]

    def staged(ins: Instr) -> bool:
        return is_stage_copy(ins, at) or is_staged_mask_read(ins)
    if dropout:
        prefer, avoid = (lambda ins: is_dropout(ins) or is_score_mod(ins)), \
            (lambda ins: is_mask_access(ins) or staged(ins) or is_score_mod_only(ins))
    # The other rows keep the generator off the path (its seed reads would otherwise count as the
    # busiest warp's global loads).
    elif mask == "staged":
        prefer, avoid = (lambda ins: is_score_mod(ins) or is_staged_mask_read(ins)), \
            (lambda ins: is_mask_load(ins) or is_mask_entry_access(ins) or is_philox(ins))
    elif mask == "registers":
        prefer, avoid = is_score_mod, \
            (lambda ins: staged(ins) or (pairs and is_mask_entry_access(ins)) or is_philox(ins))
    else:
        prefer, avoid = is_score_mod, lambda ins: is_mask_access(ins) or staged(ins) or is_philox(ins)
    if direction == "forward":  # a dense call: K and V from strided rows, not the paged path
        avoid = (lambda row: lambda ins: row(ins) or is_paged_copy(ins, at))(avoid)
    it = steady_iteration(fn, cfg, main_loop(fn, cfg), rows * tr["kChunksPerRow"] // tr["kThreads"],
                          prefer=prefer, avoid=avoid)
    got, want = mask_instrs(it.instrs, at), expected_mask_instrs(tr, direction, None if dropout else mask, pairs)
    if any(got[k] != n for k, n in want.items()):
        raise RuntimeError(f"{what}: the census path's mask instructions {got} are not those of the "
                           f"{mask or 'unmasked'} path {want}")
    counts, warps = census(it.instrs), tr["kThreads"] // 32
    flops = (2 if direction == "forward" else 5) * tr["kBlockM"] * tr["kBlockN"] * tr["kChunksPerRow"] * 8
    tiles = 2 * -(-rows * tr["kChunksPerRow"] // tr["kThreads"]) + (direction == "backward")
    copies = counts["LDGSTS"] - got["stage copies"] - got["stage copies (guarded)"]
    own = (sum(map(is_philox, it.instrs)) > 0, sum(map(is_score_mod_only, it.instrs)) > 0)
    if counts["HMMA"] != flops // (16 * 8 * 16) // warps or copies != tiles or \
            own != ((dropout, not dropout) if mods else (False, False)):
        raise RuntimeError(f"{what}: the census path holds {counts['HMMA']} HMMA and {copies} tile cp.async "
                           f"(the tile's {flops // 2048 // warps} and {tiles}); generator, score-mod code: {own}")
    return it, counts, got


def launcher_stage_bytes(hw: Hardware, base: int, stage: int, reg_blocks: int) -> int:
    """MaskRefs::stage_bytes on `hw`: the stage's bytes where `base` + `stage` fit one block and the SM
    (one block's most plus 1 KiB, 1 KiB reserved per block) keeps as many blocks, at most
    `reg_blocks`; else 0 (the launcher reads the mask from global memory)."""
    def blocks(b: int) -> int:
        return min(reg_blocks, (hw.smem_per_block + 1024) // (b + 1024))
    return 0 if base + stage > hw.smem_per_block or blocks(base + stage) < blocks(base) else stage


def score_mods(insts: list[Instance], builds: dict[tuple[Instance, str], Build]) -> list[str]:
    """Softcap, ALiBi, explicit masks and dropout: the variable-length instance with them (kMod)
    against the one without, per forward and backward instance and architecture; then the mask's
    two paths against softcap + ALiBi (the staged one where the launcher stages a float mask)."""
    tiles = {i: SeqsTiles(i.direction, i.head_dim, i.dtype) for i in insts}
    feats = {i: SeqsTiles(i.direction, i.head_dim, i.dtype, features=True) for i in insts}
    tr = traits(list(tiles.values()) + list(feats.values()))
    exprs = [feats[i].mask_stage_exprs() for i in insts]
    values = iter(host_values([e for d in exprs for e in d.values()]))
    stage = {i: {k: next(values) for k in d} for i, d in zip(insts, exprs)}
    rows, mask_rows, extra = [], [], {}
    for inst in insts:
        for arch in ARCHS:
            build = builds[(inst, arch)]
            fns, res, t, tf = disassemble(build.cubin), parse_ptxas(build.ptxas), tr[tiles[inst]], tr[feats[inst]]
            tier = SMALL_TIER if inst.direction == "backward" and t["kSmemBytes"] <= 99 * 1024 and \
                f"flash_bwd_kernel{VARLEN}{SMALL_TIER}" in fns else ""
            base = "flash_fwd_seqs_kernel" if inst.direction == "forward" else "flash_bwd_kernel" + VARLEN
            st = stage[inst]
            staged = launcher_stage_bytes(HARDWARE[arch], tf["kSmemBytes"], st["bytes"], st["reg_blocks"]) \
                if st["stages"] else 0
            paths = ("staged", "registers") if staged else ("registers",)
            variants = (("plain", base + tier, None, False, t),
                        ("softcap + ALiBi", base + SCORE_MODS + tier, None, False, tf),
                        *[(MASK_ROWS[m], base + SCORE_MODS + tier, m, False, tf) for m in paths],
                        ("dropout", base + SCORE_MODS + tier, None, True, tf))
            its = {}
            for label, name, mask, dropout, tt in variants:
                it, c, kinds = score_mod_census(fns[name], tt, inst.direction, mask, dropout,
                                                what=f"{inst.name(arch)} {name}, {label}", mods=label != "plain",
                                                pairs=(inst.direction, inst.head_dim) not in ENTRY_MASK_READS)
                r, its[label] = res[name], (it, kinds)
                rows.append([inst.direction, arch, str(inst.head_dim), f"{tt['kBlockM']} x {tt['kBlockN']}", label,
                             str(r.registers), str(r.spill_stores + r.spill_loads), str(len(it.instrs)), str(c["HMMA"]),
                             _pct(c["HMMA"] / len(it.instrs)), str(c["MUFU"]), str(c["FP32"]), str(c["int"]),
                             str(c["conv"]), str(c["branch"])])
            totals = [len(its[v[0]][0].instrs) for v in variants]
            for i in range(1, len(variants)):
                rows[i - len(variants)][7] += f" ({totals[i] - totals[0]:+d}, {100 * (totals[i] / totals[0] - 1):+.0f}%)"
            ref = its["softcap + ALiBi"][0]
            for m in paths:
                it, kinds = its[MASK_ROWS[m]]
                more = len(it.instrs) - len(ref.instrs)
                extra[(inst.direction, arch, inst.head_dim, m)] = more
                waves = sum(map(smem_wavefronts, it.instrs)) - sum(map(smem_wavefronts, ref.instrs))
                global_more = census(it.instrs)["global"] - census(ref.instrs)["global"]
                smem = f"{tf['kSmemBytes']} + {staged} = {tf['kSmemBytes'] + staged}" if m == "staged" \
                    else str(tf["kSmemBytes"])
                mask_rows.append([inst.direction, arch, str(inst.head_dim), f"{tf['kBlockM']} x {tf['kBlockN']}", m,
                                  smem, str(len(it.instrs)), f"{more:+d} ({100 * more / len(ref.instrs):+.0f}%)",
                                  str(kinds["stage copies"]), str(kinds["stage reads"] or kinds["pair loads"]
                                                                  or f"- ({kinds['entries']} one-entry loads)"),
                                  str(kinds["pair stores"]) if inst.direction == "backward" else "-",
                                  f"{waves:+d}", f"{global_more:+d}"])
    lines = [*_table(["kernel", "arch", "D", "tile", "instance", "registers", "spill bytes", "instr / iteration / warp",
                      "HMMA", "HMMA share", "MUFU", "FP32", "int", "conv", "branch"], rows), ""]
    lines += [mask_cost_summary(extra), "",
              *_table(["kernel", "arch", "D", "tile", "mask path", "dynamic shared memory (bytes)",
                       "instr / iteration / warp", "over softcap + ALiBi", "mask cp.async (LDGSTS)",
                       "mask pair reads (LDS.64 / LDG.E.64)", "dmask pair stores (STG.E.64)",
                       "shared wavefronts over softcap + ALiBi", "global over softcap + ALiBi"], mask_rows)]
    return lines


def mask_cost_summary(extra: dict[tuple[str, str, int, str], int]) -> str:
    """One sentence on what each mask path adds per iteration over softcap + ALiBi on sm_80."""
    def costs(path: str) -> str:
        parts = []
        for direction in ("forward", "backward"):
            got = sorted((d, n) for (dr, a, d, p), n in extra.items() if dr == direction and a == "sm_80" and p == path)
            if got:
                parts.append(f"{direction} " + " and ".join(f"{n:+d} (D = {d})" for d, n in got))
        return ", ".join(parts) or "-"
    return ("The two paths of a float mask against softcap + ALiBi, the unmasked kMod row (the same kernel, so the "
            "same registers). Dynamic shared memory is the launcher's: the feature instance's kSmemBytes, plus on the "
            "staged path the stage MaskRefs::stage_bytes allocates (kBlockM x (kBlockN + 8) floats per stage, one "
            "stage in the forward, kStages in the backward), where the stage fits a block and the SM keeps as many "
            "blocks; the staged row is left out where it does not (on sm_86 / 89, not counted here, float masks "
            "of some head dims stay in registers). Instructions per iteration over softcap + ALiBi on sm_80: staged "
            f"{costs('staged')}; registers {costs('registers')}. The staged path issues more (the copies with "
            "their 64-bit source steps and zero-fill predicates) and moves more shared memory (4 wavefronts per "
            "copy, 2 per pair read), but leaves no global load between Q.K^T and the masking; this count does "
            "not model latency.")


def findings(results: list[Analysis]) -> list[str]:
    """Observations on the current kernels; left out when the kernels no longer match them."""
    fwd = {(x.inst.head_dim, x.arch): x for x in results if x.inst.direction == "forward"}
    a, h = fwd.get((128, "sm_80")), fwd.get((128, "sm_90"))
    if a is None or h is None or a.traits["kBlockM"] * 32 != 32 * a.traits["kThreads"]:  # 32 query rows per warp
        return []
    return [
        "## Reading the numbers", "",
        f"- Forward D = 128 on sm_80 issues {a.total} instructions per {a.hmma} HMMA ({a.per_hmma(a.total)} per "
        f"HMMA; FlashAttention-2: 3.68). Each warp owns 32 query rows (two m16 tiles), so every ldmatrix.x4 of K "
        f"or V feeds 4 HMMA: {a.per_hmma(a.counts['LDSM'])} LDSM per HMMA (FlashAttention-2: 0.31). The tile "
        f"loads issue {a.counts['LDGSTS']} LDGSTS with compile-time trip counts and one 64-bit pointer add per "
        f"chunk: {a.counts['int']} integer instructions in the whole iteration (FlashAttention-2: 106).",
        (f"- Its HMMA share, {a.share}, is above FlashAttention-2's 27.2% although the key tile is "
         f"{a.traits['kBlockN']} wide ({a.hmma} HMMA per iteration, FlashAttention-2 256 with 64 keys), the widest "
         f"without a spill here: the iteration issues fewer instructions per HMMA ({a.per_hmma(a.total)} "
         "against 3.68). "
         if a.hmma / a.total > 0.272 else
         f"- Its HMMA share, {a.share}, stays below FlashAttention-2's 27.2%: the key tile is {a.traits['kBlockN']} "
         f"wide ({a.hmma} HMMA per iteration, FlashAttention-2 256 with 64 keys), the widest without a spill here; "
         "the per-row softmax work (O rescale, row max and sum) is the same per iteration, so it weighs more. ")
        + "The bound model is unaffected on A100: tensor-bound.",
        f"- On sm_90 the tensor rate per SM doubles and shared-memory bandwidth does not: D = 128 moves "
        f"{h.wavefronts} wavefronts per warp per iteration, {h.bound.clocks['shared']:.0f} clocks per SM against "
        f"{h.bound.clocks['tensor']:.0f} of HMMA, so H100 is shared-memory bound "
        f"({100 * h.bound.tensor_fraction:.0f}% of the quoted tensor peak, which is wgmma's, not mma.sync's).",
        *backward_findings(results),
        "",
    ]


METHOD = """## Method

- **Build.** One translation unit per instance (an explicit instantiation of `run_forward` / `run_backward`,
  as in `csrc/cuda/flash/instances.cmake`), compiled with `nvcc -std=c++17 --expt-relaxed-constexpr
  -arch=sm_XX -Xptxas -v -cubin`, at most 2 at a time. Cubins, ptxas reports and SASS are cached under
  `build/cuda_static`, keyed by a hash of every header and source under `csrc/` and the nvcc version.
- **Resources.** Registers, spills, stack and static shared memory from ptxas; dynamic shared memory,
  threads and tile from `FwdTraits` / `BwdTraits` (`kSmemBytes`, `kThreads`, `kBlockM`, `kBlockN`),
  printed by a host program built from the traits headers: the values the launchers pass.
- **Occupancy.** CUDA occupancy-calculator rules: registers per warp rounded up to 256 and allocated per
  SM partition (16 K registers each); shared memory per block = static + dynamic + 1 KiB system reserve,
  rounded to 128 B, against the maximum carve-out; 2048 threads and 32 blocks per SM.
- **Main loop.** The SASS (nvdisasm) is split into basic blocks (at labels and after branches). A back
  edge is a branch to an earlier address; its natural loop is the set of blocks that reach the branch
  without passing the target (the header). The main loop is the innermost loop whose body contains
  HMMA: the forward's loop over the key tiles every row sees whole (of its two HMMA loops, the smaller;
  the other runs the tiles that cross a mask edge), the query-tile loop of the backward (inside its
  loop over the query heads of a group).
- **One steady-state iteration.** The loop body has inner branches, so the count follows one path from
  the header back to it: (1) loops inside the body that issue cp.async (a run-time trip count), where
  present, copy full tiles: each tile (told apart by its shared-memory destination offset) gets exactly
  rows x `kChunksPerRow` / `kThreads` 16-byte copies per thread; other inner loops (the backward's
  feature instance at D = 224 calls the dropout generator in one) are passed once; copies with
  compile-time trip counts are straight-line code, and the path with the most of them is taken
  (the next tile's prefetch; the busiest thread's share when a tile's chunks do not split evenly over
  the threads; the backward's cp.async of the next tile's row statistics, issued by threads below
  kBlockM: the busiest warp);
  among those paths, (2) the most HMMA, (3) the most global-memory instructions (the dQ atomics),
  (4) the fewest instructions: the variant of masking code for tiles no mask edge crosses, and the
  forward's path past its lazy-rescale block (taken only when a row's max outgrows its reference by
  2^8; its size is the "not on the path" count). So the counts describe a problem with full,
  unmasked tiles in the steady state. The HMMA count of the path is checked against
  the tile FLOPs (forward 2, backward 5 matrix products of kBlockM x kBlockN x D per block
  iteration, split over the block's warps, 2048 FMA per HMMA).
- **Backward tiers.** A backward cubin holds both shared-memory tiers (`BwdTraits<T, D, false>` for
  sm_80 / sm_90 and `<T, D, true>` for sm_86 / sm_89); the census is of the first, the one these GPUs
  run; the resource checks cover both (the second listed with "(99 KiB tier)").
- **Counting.** Every instruction on the path counts once per warp, predicated ones included (they take
  an issue slot); `@!PT` fillers count as "other". int = integer, address, move and predicate
  instructions, including the uniform datapath (U*); FP32 = FADD, FMUL, FFMA, FMNMX, FSEL, FSETP.
- **Bound model.** Per SM, for one iteration of one block (its 4 warps sit on the 4 partitions): tensor =
  HMMA x clocks per HMMA; issue = instructions (one warp instruction per clock per partition); shared =
  wavefronts x 4 warps (128 B per clock per SM; LDSM.x4, LDS.128, STS.128 and LDGSTS.128 = 4
  wavefronts, 32-bit LDS/STS = 1; no bank conflicts, as the 16-byte row padding intends); MUFU and FP32
  = instructions x 32 lanes x 4 warps / results per clock. The bound is the largest; the achievable
  fraction of tensor peak = tensor / bound. Not modelled: latency (hence occupancy), global memory and
  L2 traffic, the prologue and epilogue, and the integer pipes (their instructions count in issue).
"""


def report(results: list[Analysis], command: str, tools: str, mods: list[str]) -> str:
    groups: dict[tuple[str, str], list[Analysis]] = {}
    for a in results:
        groups.setdefault((a.inst.direction, a.arch), []).append(a)
    lines = ["# Static analysis of the CUDA attention kernels", "",
             f"Generated by `{command}` ({tools}), bfloat16 instances. No GPU: everything "
             "below comes from the compiler (ptxas resource report, SASS) and published hardware figures; "
             "the method is at the end.", "", "## Summary (main loop, one steady-state iteration per warp)", "",
             *summary(results), "", "## Hardware figures used", "", *hardware_table(), "",
             "From the CUDA C++ Programming Guide (compute capability table; arithmetic instruction throughput "
             "table for FP32 and MUFU) and the Ampere / Hopper tuning guides (shared memory per SM and per block, "
             "1 KiB reserved per block). One warp instruction issues per clock per SM partition (4 per SM); "
             "shared memory delivers 128 B (32 banks x 4 B) per clock per SM. Tensor cores:", "",
             *[f"- {hw.arch}: {hw.tensor_note}." for hw in HARDWARE.values()], "", "## Kernels", ""]
    for key in sorted(groups, key=lambda k: (k[0] != "forward", k[1])):
        lines += kernel_table(sorted(groups[key], key=lambda a: a.inst.head_dim))
    helpers = [f"{k} D={a.inst.head_dim} on {a.arch}: {r.registers} registers, {r.spill_stores + r.spill_loads} "
               "spill bytes" for a in results for k, r in sorted(a.resources.items()) if k != a.inst.main_kernel]
    lines += ["Backward helper kernels and the 99 KiB tier (no main-loop census): " + "; ".join(helpers) + ".", "",
              "## Comparison with FlashAttention-2 (sm_80)", "",
              "The FA2 columns are figures measured on FlashAttention-2's SASS (sm_80, bf16, main loop per warp), "
              "quoted, not recomputed here. The tiles differ: compare the shares and the per-HMMA ratios.", "",
              *comparison(results), "",
              "## Earlier count of these kernels (sm_80)", "", *cross_check(results), "",
              "The earlier columns are a first count, by hand, of the forward with 64 x 64 tiles and 16-row warps "
              "and of the backward before its row-statistics pass. On those kernels this script agreed with it: "
              "the same forward totals (the earlier integer column also counted the never-executed `@!UPT UIADD3` "
              "fillers that this count files under other) and a backward higher by the lse/delta load block "
              "(`if (threadIdx.x < kBlockM)`), which the earlier count left out. The difference column is what the "
              "kernels have changed since.", "",
              "## Softcap, ALiBi, explicit masks and dropout (score mods)", "",
              "They run in the variable-length instances' kMod variant (a dense call as one without sequence "
              "arrays), compiled beside the plain variable-length instance: the dense kernels (the tables above) "
              "contain none of their code. One steady-state iteration per warp of each variant's main loop, with "
              "softcap and ALiBi on (the tanh's and the bias's warp-uniform blocks on the path); the difference "
              "is the transforms' cost per key tile. Adding them left the dense kernels' SASS instruction for "
              "instruction the same (sm_80, D = 64 and 128), and the plain variable-length instances differ only "
              "in an unused parameter. The forward's rows take a dense call's path: K and V copied from strided "
              "rows, whole tiles without bounds checks, not the paged path of a call with a block table "
              "(`copy_rows_async`: per row a block-table read, a division by the page size and a zero-filling "
              "copy), which the census took before it avoided that path's instructions (`is_paged_copy`): the "
              "forward rows then counted 510-770 more instructions per iteration (sm_80, D = 64 and 128). "
              "Per score the softcap costs tanhf (2 MUFU, about 14 FP32 instructions) and "
              "ALiBi an integer distance, its conversion and one FFMA (the backward converts one distance per "
              "fragment row and steps it in float); the backward adds 1 - tanh^2 on dS. "
              "Explicit masks run in the same variant, through one of two paths the launcher picks per call "
              "(`MaskRefs::stage`, `csrc/cuda/flash/attn_mask.cuh`), each a row of its own (a float mask's). "
              "**Staged**: a mask with unit key stride whose base and batch, head and row strides are multiples of "
              "16 bytes (a contiguous mask whose rows hold a multiple of 4 floats or 16 booleans) is copied with "
              "16-byte cp.async (`LDGSTS`) into dynamic shared memory past the other tiles, in the commit group of K "
              "(the forward: one kBlockM x kBlockN tile per key tile) or of Q and dO (the backward: one per query "
              "tile), and the score masking reads its pairs of keys from there (`LDS.64` for a float mask, "
              "`LDS.U16` for a boolean one). **Registers**: the other masks with unit key stride and aligned pairs "
              "of keys are read from global memory through the read-only path, one pair of scores per load "
              "(`LDG.E.64.CONSTANT` for a float mask, 16 bits for a boolean one) at constant offsets from one "
              "pointer per fragment row, the rows' offsets inside the tile in 32 bits, without bounds checks where "
              "no sequence edge crosses the tile. Each mask row takes its path's instructions and none of the "
              "other's; in the backward both store dmask in pairs (`STG.E.64`), and neither takes the "
              "one-entry-per-load fallback of strided or misaligned masks (but the forward at D = 224, whose "
              "register path reads one entry per load: pair loads cost ptxas a spill there). "
              "The other rows take no mask instruction "
              "(neither the stage's copies nor its reads). The census checks each row's path against the tile "
              "(the counts in the second table below: kBlockM x kBlockN / (2 x threads) pair reads or loads per "
              "thread and iteration, and, staged, the busiest thread's share of the tile's 16-byte chunks) and "
              "stops where a path lacks them or holds the other path's; every row's path also holds the HMMA of "
              "the tile's FLOPs, one K and V (forward) or Q and dO tile (backward, with the next tile's row "
              "statistics) of cp.async, and its own code (softcap's and ALiBi's, or dropout's generator). "
              "Before the pairs (one load per score, each "
              "with its bounds checks and 64-bit address arithmetic) the register path cost, over softcap + ALiBi, "
              "sm_80: forward +692 (D = 64) and "
              "+516 (D = 128) instructions per iteration, backward +543 and +273. In the backward each feature is a "
              "block-uniform pass of its own over a fragment row (softcap's derivative after dS, ALiBi's bias, "
              "the mask's reads, the dmask stores, dropout's multipliers) around the plain instance's P and dS "
              "loop, so a call runs only the passes of its features; all feature rows share the passes' branches "
              "and register moves (about one per score at D = 64, sm_80) that keep the capped S past ALiBi's and the mask's passes. Dropout "
              "(`csrc/cuda/flash/dropout.cuh`) runs in the same variant; its row takes the path through its "
              "block-uniform blocks (the Philox rounds, one generator call per m16 x n8 tile and thread, about "
              "70 instructions each, and the keep multipliers of P and dP) with softcap, ALiBi and the mask off "
              "the path. The seed and offset come from device memory (drawn there by torch's generator, never "
              "read back by the host): each call re-reads them (one 16-byte load) and steps the round keys "
              "from the seed (one add per key and round); with the keys precomputed on the host in the kernel "
              "parameters the row cost 145-205 fewer instructions per iteration (sm_80, D = 64 and 128), but "
              "every call waited for the draw. The other feature rows pay dropout's untaken branches "
              "(against the kernels before dropout: forward -2 to +13 instructions per iteration, backward +25 to +77) "
              "and up to 22 more registers, none spilled.", "",
              *mods, "",
              *findings(results), METHOD]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all", action="store_true", help="every instantiated head dim, not only 64 and 128")
    ap.add_argument("--jobs", type=int, default=2, help="parallel nvcc jobs (at most 2)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "cuda_static.md")
    args = ap.parse_args(argv)
    if nvcc() is None or nvdisasm() is None:
        print("needs nvcc on PATH and nvdisasm (pip install nvidia-cuda-nvdisasm)", file=sys.stderr)
        return 2
    insts = instances(args.all)
    builds = compile_all(insts, ARCHS, args.jobs)
    tr = traits(insts)
    results = [analyse(i, a, builds[(i, a)], tr[i]) for i in insts for a in ARCHS]
    results.sort(key=lambda r: (r.inst.direction != "forward", r.arch, r.inst.head_dim))
    versions = [_run([t, "--version"]).stdout.strip().splitlines()[-2] for t in (nvcc() or "", nvdisasm() or "")]
    command = "python bench/cuda_static.py" + (" --all" if args.all else "")
    tools = f"nvcc {versions[0].split(', ', 1)[1]}, nvdisasm {versions[1].split(', ', 1)[1]}"
    args.out.write_text(report(results, command, tools, score_mods(insts, builds)))
    print("\n".join(summary(results)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
