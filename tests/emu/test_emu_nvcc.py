"""Under nvcc (when present): the primitives header and the emulator test kernels compile for sm_80 and
sm_90, every primitive appears in the generated PTX, and ptxas reports zero spill bytes."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARCHS = ("80", "90")

# PTX instruction text that each primitive must produce somewhere in the emulator test kernels.
PRIMITIVE_PTX = {
    "mma m16n8k16 f16": "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
    "mma m16n8k16 bf16": "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
    "mma m16n8k8 f16": "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32",
    "mma m16n8k8 bf16": "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32",
    **{f"ldmatrix {n}{t}": f"ldmatrix.sync.aligned.m8n8.{n}{t}.shared.b16"
       for n in ("x1", "x2", "x4") for t in ("", ".trans")},
    "cp.async 16 zfill": "cp.async.cg.shared.global",
    "cp.async 4/8": "cp.async.ca.shared.global",
    "commit_group": "cp.async.commit_group",
    "wait_group": "cp.async.wait_group",
    "wait_all": "cp.async.wait_all",
    "barrier": "bar.sync",
    "shfl idx": "shfl.sync.idx.b32",
    "shfl up": "shfl.sync.up.b32",
    "shfl down": "shfl.sync.down.b32",
    "shfl xor": "shfl.sync.bfly.b32",
    "float atomicAdd": ".global.add.f32",
    "exp2": "ex2.approx.ftz.f32",
    "f32->f16": "cvt.rn.f16.f32",
    "f32->bf16": "cvt.rn.bf16.f32",
    "f16->f32": "cvt.f32.f16",
    "pack f16x2": "cvt.rn.f16x2.f32",
    "pack bf16x2": "cvt.rn.bf16x2.f32",
}
SM90_ONLY = {f"stmatrix {n}{t}": f"stmatrix.sync.aligned.m8n8.{n}{t}.shared.b16"
             for n in ("x1", "x2", "x4") for t in ("", ".trans")}


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    nvcc = shutil.which("nvcc")
    if not nvcc:
        pytest.skip("nvcc not on PATH: the device build of the primitives is checked where the CUDA toolkit exists")
    out = tmp_path_factory.mktemp("nvcc")
    cmd = [nvcc, "-std=c++17", f"-I{ROOT / 'csrc'}", "-Xptxas", "-v", "-keep", f"-keep-dir={out}",
           f"-I{ROOT / 'tests/emu/kernels'}", "-c", str(ROOT / "tests/emu/kernels/all_kernels.cu"),
           "-o", str(out / "all_kernels.o")]
    for a in ARCHS:
        cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr, {p.name: p.read_text() for p in out.glob("*.ptx")}


def kernels(report: str):
    """{(kernel, arch): {'registers': int, 'spill_stores': int, 'spill_loads': int, 'stack': int}}"""
    info, current = {}, None
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", line)
        if m:
            current = (m.group(1), m.group(2))
            info[current] = {}
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            info[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            info[current]["registers"] = int(m.group(1))
    return info


def test_every_kernel_compiles_without_spills(build):
    report, _ = build
    info = kernels(report)
    for arch in ARCHS:
        assert sum(1 for (_, a) in info if a == arch) > 40, f"test kernels missing for sm_{arch}"
    for (name, arch), k in info.items():
        assert k["spill_stores"] == 0 and k["spill_loads"] == 0, (name, arch, k)


def test_matmul_resources(build):
    report, _ = build
    info = kernels(report)
    found = {(n, a): k for (n, a), k in info.items() if "matmul_kernel" in n}
    assert len(found) == 2 * len(ARCHS)  # half and bf16 per arch
    for (name, arch), k in sorted(found.items()):
        print(f"sm_{arch} {name}: {k['registers']} registers, {k['stack']} B stack, "
              f"{k['spill_stores']}/{k['spill_loads']} B spill stores/loads")
        assert k["spill_stores"] == 0 and k["spill_loads"] == 0 and k["registers"] <= 255


def test_every_primitive_reaches_the_device_code(build):
    _, ptx = build
    assert len(ptx) >= len(ARCHS), sorted(ptx)
    for name, text in ptx.items():
        wanted = dict(PRIMITIVE_PTX)
        if "90" in name:
            wanted.update(SM90_ONLY)
        missing = [p for p, ins in wanted.items() if ins not in text]
        assert not missing, (name, missing)
