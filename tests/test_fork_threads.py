"""The CPU thread pool under fork() and under concurrent Python threads.

A child process made with the 'fork' or 'forkserver' start method (DataLoader workers, process
pools) computes forward + backward bitwise like the parent, also when it was forked while another
thread of the parent was inside a kernel; the parent keeps working. Python threads running
forward + backward while another thread keeps changing the thread count get the single-thread
results bitwise (the work split depends on the shapes only). A hang is a failure: every wait
has a timeout."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import sys
import threading
from multiprocessing.connection import Connection
from typing import List, Optional, Tuple

import numpy as np
import pytest
import torch

import flashattn_ext as fa
import oracle
from attn_testing import assert_close, randn

TIMEOUT = 180  # seconds for one child or thread; generous for a loaded 2-core machine
POOL_THREADS = 3  # more than one, so every call goes through the pool

Tensors = Tuple[torch.Tensor, ...]


def fwd_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor) -> Tensors:
    """out, lse, dq, dk, dv of causal attention."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out, lse = fa.attention(q, k, v, causal=True, return_lse=True)
    return (out.detach(), lse.detach()) + torch.autograd.grad(out, (q, k, v), dout)


def make_case(gen: torch.Generator, b: int, s: int, h: int, d: int,
              dtype: torch.dtype = torch.float32) -> Tensors:
    return tuple(randn(gen, b, s, h, d, dtype=dtype) for _ in range(4))


def child_main(conn: Connection, arrays: List[np.ndarray]) -> None:
    """Runs in the child: forward + backward on the parent's inputs, results sent back."""
    fa.set_num_threads(POOL_THREADS)
    results = fwd_bwd(*(torch.from_numpy(a) for a in arrays))
    conn.send(("forkserver_warmup" in sys.modules, [r.numpy() for r in results]))


def run_in_child(method: str, case: Tensors, monkeypatch: pytest.MonkeyPatch) -> Tensors:
    ctx = mp.get_context(method)
    if method == "forkserver":
        # The server imports these before forking any child: the first runs the library on
        # several threads, as a preloaded module that warms up a model would; the second saves
        # each child from importing this module again. Python < 3.12's server ignores sys.path:
        # it finds them through PYTHONPATH, read when it starts (on first use).
        ctx.set_forkserver_preload(["forkserver_warmup", __name__])
        path = [os.path.dirname(__file__)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child_main, args=(send, [x.numpy() for x in case]), daemon=True)
    proc.start()
    send.close()
    try:
        assert recv.poll(TIMEOUT), f"{method} child gave no result within {TIMEOUT} s (hung)"
        try:
            warmed_up, arrays = recv.recv()
        except EOFError:
            proc.join(TIMEOUT)
            pytest.fail(f"{method} child exited with code {proc.exitcode} before sending its result")
        assert warmed_up or method != "forkserver", "the forkserver did not preload forkserver_warmup"
        return tuple(torch.from_numpy(a) for a in arrays)
    finally:
        proc.kill()
        proc.join(TIMEOUT)


class Busy(threading.Thread):
    """Runs forward + backward on its own inputs in a loop until stopped; every result must
    equal the first one. While it runs, nearly all its time is inside a kernel (GIL released)."""

    def __init__(self, case: Tensors) -> None:
        super().__init__(daemon=True)
        self.case = case
        self.calls = 0
        self.error: Optional[str] = None
        self.running, self.stop = threading.Event(), threading.Event()

    def run(self) -> None:
        try:
            expected = fwd_bwd(*self.case)
            while not self.stop.is_set():
                self.running.set()
                got = fwd_bwd(*self.case)
                self.calls += 1
                if not all(torch.equal(a, b) for a, b in zip(got, expected)):
                    self.error = f"call {self.calls} differs from the first"
        except Exception as e:  # reported by finish()
            self.error = f"{type(e).__name__}: {e}"
            self.running.set()

    def finish(self) -> None:
        self.stop.set()
        self.join(TIMEOUT)
        assert not self.is_alive(), f"the busy thread did not finish within {TIMEOUT} s"
        assert self.error is None, self.error


@pytest.fixture
def pool_threads():
    fa.set_num_threads(POOL_THREADS)
    yield
    fa.set_num_threads(0)


@pytest.mark.parametrize("method", ["fork", "forkserver"])
@pytest.mark.parametrize("in_flight", [False, True], ids=["idle", "kernel_in_flight"])
def test_child_process_computes_like_parent(gen, pool_threads, monkeypatch, method, in_flight):
    case = make_case(gen, 2, 200, 4, 64)
    q, k, v, dout = case
    parent = fwd_bwd(*case)  # the pool and its workers exist before any fork
    busy = Busy(make_case(gen, 1, 1024, 8, 64)) if in_flight else None
    children = []
    if busy is not None:
        busy.start()
        assert busy.running.wait(TIMEOUT)
    try:
        # Forks made here can land inside the busy thread's kernel: make a few.
        for _ in range(3 if in_flight and method == "fork" else 1):
            children.append(run_in_child(method, case, monkeypatch))
    finally:
        if busy is not None:
            busy.finish()
    if busy is not None:
        assert busy.calls > 0
    for child in children:
        for name, c, p in zip(("out", "lse", "dq", "dk", "dv"), child, parent):
            assert torch.equal(c, p), f"{name}: the child's result differs from the parent's"
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    out64, lse64 = oracle.attention(q64, k64, v64, causal=True)
    refs = (out64.detach(), lse64.detach()) + torch.autograd.grad(out64, (q64, k64, v64), dout.double())
    for name, ours, ref in zip(("out", "lse", "dq", "dk", "dv"), children[0], refs):
        assert_close(ours, ref, None, name)
    after = fwd_bwd(*case)  # the parent's pool still works
    assert all(torch.equal(a, b) for a, b in zip(after, parent))


def test_threads_while_thread_count_changes(gen):
    cases = [make_case(gen, 1, 300, 4, 64), make_case(gen, 2, 129, 6, 32, torch.bfloat16),
             make_case(gen, 1, 257, 2, 96, torch.float16), make_case(gen, 1, 100, 3, 40, torch.float64)]
    try:
        fa.set_num_threads(1)
        serial = [fwd_bwd(*c) for c in cases]
        stop = threading.Event()
        results: List[List[Tensors]] = [[] for _ in cases]

        def change_counts() -> None:
            for n in itertools.cycle([2, 5, 1, 3, 8, 0]):
                if stop.wait(0.002):
                    return
                fa.set_num_threads(n)

        def work(i: int) -> None:
            for _ in range(4):
                results[i].append(fwd_bwd(*cases[i]))

        changer = threading.Thread(target=change_counts, daemon=True)
        workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(cases))]
        changer.start()
        for t in workers:
            t.start()
        for t in workers:
            t.join(TIMEOUT)
        stop.set()
        changer.join(TIMEOUT)
        assert not any(t.is_alive() for t in workers + [changer]), f"a thread hung for {TIMEOUT} s"
    finally:
        fa.set_num_threads(0)
    for i, (runs, expected) in enumerate(zip(results, serial)):
        assert len(runs) == 4, f"case {i}: a worker thread failed"
        for run in runs:
            for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), run, expected):
                assert torch.equal(got, want), f"case {i} ({want.dtype}) {name} differs from the serial run"
