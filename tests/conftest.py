"""Fixtures: the backend every numerical test runs on, and a fresh random generator."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from typing import Any, Callable, Iterator, Optional

import pytest
import torch

import flashattn_ext as fa

BACKENDS = ("cpu", "emu", "cuda")
# The entry points the numerical tests call; the cuda backend runs them on the GPU.
GPU_ENTRY_POINTS = ("attention", "flash_attn_func", "scaled_dot_product_attention",
                    "attention_weights", "hard_attention", "topk_attention")


def _skip_reason(name: str) -> Optional[str]:
    if name == "cpu":
        return None
    if name == "emu":
        if importlib.util.find_spec("flashattn_ext._emu") is None:
            return "built without the emulator (FLASHATTN_EXT_EMULATOR=ON builds it)"
        return None
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    if not fa.build_info()["cuda_built"]:
        return "this build has no CUDA kernels (FLASHATTN_EXT_CUDA=ON builds them)"
    return None


def gpu_device() -> torch.device:
    """The GPU the cuda backend runs on: the last one, so that with several GPUs the kernels run
    on a device other than the current one (device 0)."""
    return torch.device("cuda", torch.cuda.device_count() - 1)


def on_gpu(fn: Callable[..., Any], device: torch.device) -> Callable[..., Any]:
    """fn with its tensor arguments copied to `device` and its tensor results copied back: the
    tests keep their CPU tensors, and gradients flow back through the copies."""
    def move(x: Any, to: Any) -> Any:
        return x.to(to) if isinstance(x, torch.Tensor) else x

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        out = fn(*(move(a, device) for a in args), **{k: move(v, device) for k, v in kwargs.items()})
        return tuple(move(x, "cpu") for x in out) if isinstance(out, tuple) else move(out, "cpu")
    return run


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> Iterator[str]:
    """Every numerical test runs once per backend; unavailable ones skip with the reason. The
    cuda backend copies the inputs of the entry points in GPU_ENTRY_POINTS to the GPU (and the
    results back); numpy inputs and the dtypes without a CUDA kernel skip there (needs_kernel).
    With FLASHATTN_EXT_EMU_SEED=N the emulator runs each block's threads in an order shuffled by N."""
    reason = _skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    if request.param == "cuda":
        monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "auto")  # CUDA tensors pick their backend
        for name in GPU_ENTRY_POINTS:
            monkeypatch.setattr(fa, name, on_gpu(getattr(fa, name), gpu_device()))
        yield request.param
        return
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", request.param)
    seed = os.environ.get("FLASHATTN_EXT_EMU_SEED")
    if request.param != "emu" or not seed:
        yield request.param
        return
    emu = importlib.import_module("flashattn_ext._emu")
    emu.set_seed(int(seed))
    try:
        yield request.param
    finally:
        emu.set_seed(None)


@pytest.fixture
def gen() -> torch.Generator:
    """Fresh random data every run; the seed is printed, so a failure's output shows it, and
    FAE_TEST_SEED=<seed> replays it."""
    env = os.environ.get("FAE_TEST_SEED")
    seed = int(env) if env else int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")
    return torch.Generator().manual_seed(seed)
