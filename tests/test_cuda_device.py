"""The CUDA kernels launch on q's device, not on whatever device is current.

The Python dispatch passes q's device ordinal and the stream torch uses on that device to the
compiled entry point; its C++ side (csrc/cuda/flash/dispatch.cu, DeviceGuard) makes that device
current around the kernels' attribute settings and launches and restores the caller's device.
No GPU exists here: tensors that report cuda:1 as their device stand in for GPU tensors, a fake
compiled module records what the dispatch passes, and torch.cuda's current device is 0. The C++
guard is compiled by nvcc in the wheel build (.ci/dist.sh) and, on a machine with two GPUs,
exercised by the cuda backend of the numerical tests (tests/conftest.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import pytest
import torch

from flashattn_ext import _dispatch
from flashattn_ext._validate import MaskSpec

STREAM = 0x5EED


class OnGpu(torch.Tensor):
    """A CPU tensor that reports a CUDA device (the data stays on the CPU: the kernels are fakes)."""

    where: torch.device = torch.device("cuda", 1)

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.where


def on(device: torch.device, x: torch.Tensor) -> torch.Tensor:
    y = x.as_subclass(OnGpu)
    y.where = device
    return y


@pytest.fixture
def fake_gpu(monkeypatch):
    """Records every compiled-kernel call, the devices torch.cuda is asked for streams of, and the
    devices workspace is allocated on; torch.cuda's current device is 0."""
    calls: List[Dict[str, Any]] = []
    stream_devices: List[int] = []
    alloc_devices: List[torch.device] = []

    def kernel(**kwargs: Any) -> None:
        calls.append(kwargs)

    def current_stream(device: Optional[int] = None) -> SimpleNamespace:
        stream_devices.append(device)
        return SimpleNamespace(cuda_stream=STREAM)

    def new(like: Any, shape: tuple, zero: bool, float32: bool = False) -> torch.Tensor:
        alloc_devices.append(like.device)
        return torch.zeros(shape, dtype=torch.float32 if float32 else like.dtype)

    def bwd_workspace(sizes: tuple, deterministic: bool) -> tuple:
        return 4 * sizes[0] * sizes[1] * sizes[3], sizes[0] * sizes[1] * sizes[3] * sizes[5]

    fake_c = SimpleNamespace(cuda_forward=kernel, cuda_backward=kernel, cuda_head_dims=[64],
                             cuda_bwd_head_dims=[64], cuda_bwd_workspace=bwd_workspace)
    monkeypatch.setattr(_dispatch, "_C", fake_c)
    monkeypatch.setattr(_dispatch, "_new", new)
    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return SimpleNamespace(calls=calls, stream_devices=stream_devices, alloc_devices=alloc_devices)


def inputs(device: torch.device, n: int) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [on(device, torch.randn(1, 16, 2, 64, generator=gen).to(torch.bfloat16)) for _ in range(n)]


@pytest.mark.parametrize("index", [1, 3])
def test_forward_launches_on_q_device(fake_gpu, index):
    device = torch.device("cuda", index)
    q, k, v, out = inputs(device, 4)
    lse = on(device, torch.empty(1, 2, 16))
    _dispatch.forward(q, k, v, out, lse, 0.125, MaskSpec())
    (call,) = fake_gpu.calls
    assert call["device"] == index and call["stream"] == STREAM
    assert fake_gpu.stream_devices == [index]


def test_backward_launches_and_allocates_on_q_device(fake_gpu):
    device = torch.device("cuda", 1)
    q, k, v, out, dout, dq, dk, dv = inputs(device, 8)
    lse = on(device, torch.randn(1, 2, 16))
    _dispatch.backward(dout, q, k, v, out, lse, dq, dk, dv, 0.125, MaskSpec())
    (call,) = fake_gpu.calls
    assert call["device"] == 1 and call["stream"] == STREAM
    assert fake_gpu.stream_devices == [1]
    assert fake_gpu.alloc_devices == [device, device]  # stats and dq_accum workspace


def test_device_without_index_is_the_current_one(fake_gpu):
    q, k, v, out = inputs(torch.device("cuda"), 4)
    lse = on(torch.device("cuda"), torch.empty(1, 2, 16))
    _dispatch.forward(q, k, v, out, lse, 0.125, MaskSpec())
    assert fake_gpu.calls[0]["device"] == 0 and fake_gpu.stream_devices == [0]


def test_main_gpu_check_runs_on_the_emulated_kernels(monkeypatch, capsys):
    """`python -m flashattn_ext` checks the GPU kernels against torch's SDPA with sdpa_check; with
    no GPU here the same code runs on CPU tensors through the emulated kernels."""
    pytest.importorskip("flashattn_ext._emu", reason="built without the emulator")
    from flashattn_ext import __main__ as cli

    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    assert cli.sdpa_check(torch.device("cpu"), [(1, 2, 37, 45, 64, True, "bfloat16", True),
                                                 (1, 1, 20, 33, 160, False, "float16", False)])
    assert capsys.readouterr().out.count(" ok\n") == 2


def test_main_says_why_the_gpu_part_is_skipped(capsys):
    from flashattn_ext import __main__ as cli

    reason = cli.gpu_reason()
    if reason is None:
        pytest.skip("a CUDA GPU is present: the GPU check runs instead")
    assert cli.main(["--no-bench"]) == 0
    assert f"GPU check against torch SDPA: skipped ({reason})" in capsys.readouterr().out
