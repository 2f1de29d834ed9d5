"""Static SASS of the CUDA forward kernel: instruction mix of one main-loop iteration per warp.

No GPU exists where this runs; the compiled SASS is the evidence of what the kernel issues. The
kernel is compiled with nvcc (-cubin), disassembled with cuobjdump (pip: nvidia-cuda-cuobjdump,
nvidia-cuda-nvdisasm), and every loop (a backward branch) that holds HMMA instructions is
counted from its head to its back edge by class. The steady-state loop is the one over whole key
tiles: the HMMA loop with the fewest instructions (the masked loop holds the same mma plus the
mask). Usage:

    python tests/cuda_sass.py [--arch sm_80] [--dtype bf16_t] [--config D,WARPS,MTILES,BLOCKN,QREGS] [D ...]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]

# Instruction classes by opcode (the mnemonic before the first dot); the first match wins.
CLASSES: List[Tuple[str, Tuple[str, ...]]] = [
    ("hmma", ("HMMA",)),
    ("ldsm", ("LDSM",)),
    ("ldgsts", ("LDGSTS",)),
    ("local", ("LDL", "STL")),
    ("mem", ("LDG", "STG", "LDS", "STS", "LD", "ST", "ATOM", "RED")),
    ("mufu", ("MUFU",)),
    ("fp32", ("FFMA", "FMUL", "FADD", "FMNMX", "FSEL", "FSETP", "FSET", "FCHK")),
    ("cvt", ("F2FP", "F2F", "I2F", "F2I", "I2FP", "F2IP")),
    ("shfl", ("SHFL",)),
    ("sync", ("BAR", "DEPBAR", "LDGDEPBAR", "WARPSYNC", "MEMBAR")),
    ("branch", ("BRA", "BRX", "BSSY", "BSYNC", "EXIT", "CALL", "RET", "JMP")),
    ("move", ("MOV", "IMAD.MOV", "UMOV", "CS2R", "S2R", "S2UR", "R2UR", "SHFL.IDX")),
    ("int", ("IMAD", "IADD3", "IADD", "LEA", "SHF", "LOP3", "LOP", "ISETP", "SEL", "IMNMX", "IABS", "PLOP3",
             "P2R", "R2P", "PRMT", "ICMP", "FLO", "POPC", "BMSK", "SGXT", "VIADD", "VIMNMX", "UIADD3", "UIMAD",
             "ULEA", "USHF", "ULOP3", "UISETP", "USEL", "ULDC", "UPRMT", "UFLO", "UPOPC", "UBMSK", "IDP", "IMUL")),
    ("nop", ("NOP",)),
]
INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def classify(op: str) -> str:
    for name, prefixes in CLASSES:
        for pre in prefixes:
            if op == pre or op.startswith(pre + "."):
                return name
    return "other"


def compile_sass(source: str, arch: str, csrc: Path = ROOT / "csrc") -> Tuple[str, str]:
    """(SASS, ptxas -v report) of a translation unit."""
    nvcc, cuobjdump = shutil.which("nvcc"), tool("cuobjdump")
    if nvcc is None or cuobjdump is None:
        raise RuntimeError("needs nvcc and cuobjdump (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = Path(tmp) / "k.cu", Path(tmp) / "k.cubin"
        src.write_text(source)
        ptxas = subprocess.run([nvcc, "-std=c++17", "--expt-relaxed-constexpr", f"-arch={arch}", f"-I{csrc}",
                                "-Xptxas", "-v", "-cubin", "-o", str(cubin), str(src)], check=True,
                               capture_output=True, text=True).stderr
        res = subprocess.run([cuobjdump, "--dump-sass", str(cubin)], check=True, capture_output=True, text=True,
                             env=tool_env(cuobjdump))
        return res.stdout, ptxas


def tool_env(cuobjdump: str) -> Dict[str, str]:
    """The environment to run cuobjdump in: it runs nvdisasm from PATH (its own directory)."""
    return dict(os.environ, PATH=str(Path(cuobjdump).parent) + os.pathsep + os.environ.get("PATH", ""))


def tool(name: str) -> Optional[str]:
    """A CUDA binary tool from PATH or from the pip package nvidia-cuda-<name>."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import nvidia  # type: ignore[import-not-found]
    except ImportError:
        return None
    for base in nvidia.__path__:
        for cand in Path(base).glob(f"*/bin/{name}"):
            return str(cand)
    return None


def instructions(sass: str, kernel: str) -> List[Tuple[int, str, str]]:
    """(address, opcode, operands) of the one function whose name contains `kernel`."""
    funcs = re.split(r"\n\s*Function : ", sass)
    body = [f for f in funcs[1:] if kernel in f.split("\n", 1)[0]]
    if len(body) != 1:
        raise RuntimeError(f"expected one function matching {kernel!r}, found {len(body)}")
    return [(int(m.group(1), 16), m.group(3), m.group(4)) for m in INSTR.finditer(body[0])]


def _target(args: str) -> Optional[int]:
    m = re.match(r"(?:!?U?P\w+, )?(0x[0-9a-f]+)", args.strip())
    return int(m.group(1), 16) if m else None


def hmma_loops(ins: Sequence[Tuple[int, str, str]]) -> List[Tuple[int, int]]:
    """(first, last) indices of every loop (backward branch) that holds an HMMA."""
    index = {addr: i for i, (addr, _, _) in enumerate(ins)}
    loops = []
    for i, (addr, op, args) in enumerate(ins):
        target = _target(args)
        if op.startswith("BRA") and target is not None and target <= addr:
            head = index[target]
            if any(o.startswith("HMMA") for _, o, _ in ins[head:i + 1]):
                loops.append((head, i))
    return loops


def mix(ins: Sequence[Tuple[int, str, str]]) -> Dict[str, int]:
    c = collections.Counter(classify(op) for _, op, _ in ins)
    c["total"] = len(ins)
    return dict(c)


def forward_source(dtype: str, head_dim: int, config: Optional[Tuple[int, int, int, int]]) -> str:
    if config is None:
        return ('#include "cuda/flash/fwd_launch.cuh"\n'
                f"template void fae::cuda::run_forward<fae::{dtype}, {head_dim}>(const fae::FwdParams&, "
                "fae::cuda::Stream);\n")
    w, mt, bn, qr = config
    return ('#include "cuda/flash/fwd_launch.cuh"\n'
            f"template void fae::cuda::launch_forward<fae::cuda::FwdConfig<fae::{dtype}, {head_dim}, {w}, {mt}, "
            f"{bn}, {'true' if qr else 'false'}>>(const fae::FwdParams&, fae::cuda::Stream);\n")


def report(dtype: str, head_dim: int, arch: str, config: Optional[Tuple[int, int, int, int]] = None,
           csrc: Path = ROOT / "csrc") -> dict:
    """Mix of the steady-state loop (one iteration, per warp) and of the whole kernel."""
    sass, ptxas = compile_sass(forward_source(dtype, head_dim, config), arch, csrc)
    ins = instructions(sass, "flash_fwd")
    loops = hmma_loops(ins)
    if not loops:
        raise RuntimeError("no loop holds an HMMA")
    first, last = min(loops, key=lambda fl: fl[1] - fl[0])
    inner = [i for i in range(first, last) if ins[i][1].startswith("BRA") and _target(ins[i][2]) is not None
             and _target(ins[i][2]) <= ins[i][0]]
    body = mix(ins[first:last + 1])
    regs = re.search(r"Used (\d+) registers", ptxas)
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", ptxas)]
    return {"loop": body, "loops": len(loops), "inner_loops": len(inner), "kernel": mix(ins),
            "registers": int(regs.group(1)) if regs else None, "spill_bytes": sum(spills)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dims", nargs="*", type=int, default=[64, 128])
    ap.add_argument("--arch", default="sm_80")
    ap.add_argument("--dtype", default="bf16_t")
    ap.add_argument("--csrc", type=Path, default=ROOT / "csrc", help="source tree to compile")
    ap.add_argument("--config", help="D,WARPS,MTILES,BLOCKN,QREGS: a FwdConfig instead of the table's tile")
    args = ap.parse_args()
    jobs: List[Tuple[int, Optional[Tuple[int, int, int, int]]]] = [(d, None) for d in args.dims]
    if args.config:
        d, *rest = (int(x) for x in args.config.split(","))
        jobs = [(d, tuple(rest))]  # type: ignore[list-item]
    for d, cfg in jobs:
        r = report(args.dtype, d, args.arch, cfg, args.csrc)
        body = r["loop"]
        ints = body.get("int", 0)
        print(f"D={d} {args.arch} {args.dtype}{' config ' + str(cfg) if cfg else ''}: {body['total']} instructions, "
              f"{body.get('hmma', 0)} HMMA ({100.0 * body.get('hmma', 0) / body['total']:.1f}%), {ints} integer, "
              f"{body.get('move', 0)} move, {body.get('branch', 0)} branch, "
              f"{body.get('ldsm', 0) / max(1, body.get('hmma', 0)):.2f} LDSM/HMMA; HMMA loops {r['loops']}, "
              f"inner loops {r['inner_loops']}; {r['registers']} registers, {r['spill_bytes']} spill bytes, "
              f"{r['kernel'].get('local', 0)} local-memory instructions")
        print("   ", " ".join(f"{k}={v}" for k, v in sorted(body.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
