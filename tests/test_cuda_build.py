"""The CUDA attention kernels compile with nvcc for sm_80 and sm_90 without register spills.

No GPU exists where these tests run; the compiler's resource report is the evidence that the
kernels fit the hardware (the emulator tests check what they compute)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import cuda_sass

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")
CUOBJDUMP = cuda_sass.tool("cuobjdump")


def _head_dims(name: str) -> tuple:
    """A head-dim list of csrc/cuda/flash/head_dims.h, their one home."""
    text = (ROOT / "csrc/cuda/flash/head_dims.h").read_text()
    return tuple(int(x) for x in re.search(name + r"\[\] = \{([^}]*)\}", text).group(1).split(","))


HEAD_DIMS = {"forward": _head_dims("kHeadDims"), "backward": _head_dims("kBwdHeadDims")}
INSTANCE = {
    "forward": ('#include "cuda/flash/fwd_launch.cuh"\ntemplate void fae::cuda::run_forward<fae::{dt}, '
                '{d}>(const fae::FwdParams&, fae::cuda::Stream);\n'),
    "backward": ('#include "cuda/flash/bwd_launch.cuh"\ntemplate void fae::cuda::run_backward<fae::{dt}, '
                 '{d}>(const fae::BwdParams&, float*, float*, fae::cuda::Stream);\n'),
}


def compile_report(tmp: Path, direction: str, dtype: str, head_dim: int, arch: str) -> str:
    src = tmp / f"{direction}_{dtype}_{head_dim}_{arch}.cu"
    src.write_text(INSTANCE[direction].format(dt=dtype, d=head_dim))
    res = subprocess.run([NVCC, "-std=c++17", "--expt-relaxed-constexpr", f"-arch={arch}",
                          f"-I{ROOT / 'csrc'}", "-Xptxas", "-v", "-c", str(src), "-o",
                          str(src.with_suffix(".o"))], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return res.stderr


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.skipif(not (ROOT / "csrc").is_dir(), reason="needs the source tree (csrc/)")
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_kernels_compile_without_spills(tmp_path, arch, direction):
    """bfloat16 instances (float16 ones differ only in the conversion instructions)."""
    jobs = [("bf16_t", d) for d in HEAD_DIMS[direction]]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        reports = list(pool.map(lambda j: compile_report(tmp_path, direction, *j, arch), jobs))
    for (dt, d), report in zip(jobs, reports):
        for kernel in report.split("Compiling entry function")[1:]:
            name = re.search(r"(\w*(?:flash_fwd|flash_bwd|preprocess|convert_dq)\w*)", kernel)
            used = re.search(r"Used (\d+) registers", kernel)
            spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", kernel)
            assert name and used and spills, kernel
            print(f"{arch} {dt} D={d} {name.group(1)[:40]}: {used.group(1)} registers, "
                  f"spill bytes {spills}")
            assert int(used.group(1)) <= 255
            assert all(int(x) == 0 for x in spills), f"{dt} D={d} on {arch} spills: {kernel}"
            if direction == "forward":
                assert "0 bytes stack frame" in kernel, f"{dt} D={d} on {arch} uses a stack: {kernel}"
        if direction == "forward" and CUOBJDUMP:  # and no local memory in the SASS
            obj = tmp_path / f"{direction}_{dt}_{d}_{arch}.o"
            sass = subprocess.run([CUOBJDUMP, "--dump-sass", str(obj)], check=True, capture_output=True,
                                  text=True, env=cuda_sass.tool_env(CUOBJDUMP)).stdout
            assert "HMMA" in sass and not re.search(r"\b(LDL|STL)\b", sass), f"{dt} D={d} on {arch}: local memory"


@pytest.mark.skipif(NVCC is None or CUOBJDUMP is None,
                    reason="needs nvcc and cuobjdump (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
@pytest.mark.skipif(not (ROOT / "csrc").is_dir(), reason="needs the source tree (csrc/)")
@pytest.mark.parametrize("head_dim", [64, 128])
def test_forward_main_loop_instruction_mix(head_dim):
    """One steady-state iteration of the forward's loop over whole key tiles, per warp (sm_80
    SASS, tests/cuda_sass.py): at least 20% HMMA, at most 0.35 ldmatrix per HMMA (each K or V
    fragment feeds several mma), tile loads without per-chunk index arithmetic (few integer
    instructions), no branch but the loop's own and no local memory in the kernel."""
    r = cuda_sass.report("bf16_t", head_dim, "sm_80")
    loop = r["loop"]
    print(f"D={head_dim}: {loop}")
    assert r["kernel"].get("local", 0) == 0
    assert loop["hmma"] >= 0.20 * loop["total"]
    assert loop.get("ldsm", 0) <= 0.35 * loop["hmma"]
    assert loop.get("int", 0) <= 64
    assert loop.get("branch", 0) <= 3
