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

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")
HEAD_DIMS = (32, 64, 96, 128, 256)


def compile_report(tmp: Path, dtype: str, head_dim: int, arch: str) -> str:
    src = tmp / f"fwd_{dtype}_{head_dim}_{arch}.cu"
    src.write_text('#include "cuda/flash/fwd_launch.cuh"\n'
                   f"template void fae::cuda::run_forward<fae::{dtype}, {head_dim}>"
                   "(const fae::FwdParams&, fae::cuda::Stream);\n")
    res = subprocess.run([NVCC, "-std=c++17", "--expt-relaxed-constexpr", f"-arch={arch}",
                          f"-I{ROOT / 'csrc'}", "-Xptxas", "-v", "-c", str(src), "-o",
                          str(src.with_suffix(".o"))], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return res.stderr


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.skipif(not (ROOT / "csrc").is_dir(), reason="needs the source tree (csrc/)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_forward_kernels_compile_without_spills(tmp_path, arch):
    jobs = [(dt, d) for dt in ("half_t", "bf16_t") for d in HEAD_DIMS]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        reports = list(pool.map(lambda j: compile_report(tmp_path, j[0], j[1], arch), jobs))
    for (dt, d), report in zip(jobs, reports):
        used = re.search(r"Used (\d+) registers", report)
        spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", report)
        assert used and spills, report
        print(f"{arch} {dt} D={d}: {used.group(1)} registers, spill bytes {spills}")
        assert int(used.group(1)) <= 255
        assert all(int(x) == 0 for x in spills), f"{dt} D={d} on {arch} spills: {report}"
