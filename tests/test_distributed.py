"""Ring and Ulysses attention across processes: gloo on the CPU, 2 and 4 ranks.

Each rank gets its shard of fresh random full-sequence inputs, runs forward and backward (with a
gradient into lse where the case says so), and sends its shards of out, lse, dq, dk, dv back;
reassembled, they must match the single-process library and the float64 oracle within the
tolerance rule of docs/semantics.md section 7. Also: bad calls fail on every rank with the same
error, padding a causal sequence to the layout's multiple is exact for the real tokens, a
compiled function calling ring_attention, and faults (a rank raising mid-ring, which exits or
stays alive) make the other ranks fail within a bounded time.

Starting Python and importing torch dominates the time on a small machine, so one spawned
launcher imports everything once and forks the ranks of every job (a clean, single-threaded
parent: fork is safe there). One thread per rank. Every wait is bounded: the process group's
timeout, the launcher's deadline per job, and the test's own deadline on the launcher."""

from __future__ import annotations

import datetime
import importlib.util
import math
import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
import torch.distributed as dist

import flashattn_ext as fa
import flashattn_ext.distributed as fd
import oracle
from attn_testing import assert_close, naive_in, randn

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
PG_TIMEOUT = 30      # seconds: the process group's timeout in the regular jobs
FAULT_TIMEOUT = 6    # seconds: the process group's timeout in the fault jobs
JOB_DEADLINE = 150   # seconds for one job's ranks (the launcher kills them after that)
TOTAL_DEADLINE = 400  # seconds for the launcher (imports and every job)

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="this torch has no torch.distributed with gloo")


@dataclass
class Case:
    """One call of ``fn`` ("ring" or "ulysses") on every rank. ``variant``: "" plain,
    "compiled" (inside torch.compile), "padded" (a causal sequence padded at the end to the
    layout's multiple; only the real tokens are compared), "mismatch" (rank 1 passes a shorter
    shard). With ``expect`` set the call must raise ValueError starting with it on every rank."""

    fn: str
    layout: str = "zigzag"
    causal: bool = False
    window: Tuple[int, int] = (-1, -1)
    dtype: torch.dtype = F32
    shape: Tuple[int, int, int, int, int] = (2, 32, 4, 2, 16)  # B, S (full), Hq, Hkv, D
    lse_grad: bool = False
    scale: Optional[float] = None
    variant: str = ""
    expect: str = ""
    backend: str = "cpu"  # FLASHATTN_EXT_BACKEND of the ranks and of the references
    inputs: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def name(self) -> str:
        b, s, hq, hkv, d = self.shape
        mask = "causal" if self.causal else "full"
        if self.window != (-1, -1):
            mask += f"-window{self.window[0]},{self.window[1]}"
        extra = "".join(f"-{x}" for x in (self.variant, "dlse" * self.lse_grad,
                                           "emu" * (self.backend == "emu")) if x)
        return f"{self.fn}-{self.layout}-{mask}-{str(self.dtype)[6:]}-B{b}S{s}H{hq}/{hkv}D{d}{extra}"


CASES: Dict[int, List[Case]] = {
    2: [
        Case("ring", "zigzag", True, dtype=F64, lse_grad=True),
        Case("ring", "contiguous", False, (5, 3), F64, (2, 32, 2, 2, 16), lse_grad=True),
        Case("ring", "zigzag", False, dtype=F32, scale=0.3),
        Case("ring", "contiguous", True, (7, -1), F32),
        Case("ring", "zigzag", True, dtype=BF16, shape=(2, 64, 4, 2, 32), lse_grad=True),
        Case("ring", "contiguous", False, dtype=F16, shape=(1, 48, 4, 4, 24)),
        Case("ulysses", "zigzag", True, dtype=F64, lse_grad=True),
        Case("ulysses", "contiguous", False, (5, 3), F32),
        Case("ulysses", "zigzag", True, dtype=BF16, shape=(2, 64, 4, 2, 32)),
        Case("ring", "zigzag", True, dtype=F32, variant="compiled"),
        Case("ring", "zigzag", True, (24, -1), BF16, (1, 64, 4, 2, 32), lse_grad=True,
             backend="emu"),  # the CUDA kernels' source on the emulator
        Case("ring", variant="mismatch", expect="q.shape: rank "),
        Case("ulysses", shape=(2, 32, 4, 1, 16), expect="k: 1 heads are not a multiple of the 2"),
    ],
    4: [
        Case("ring", "zigzag", True, dtype=F64, shape=(1, 64, 4, 2, 16), lse_grad=True),
        Case("ring", "contiguous", True, (9, -1), F32, (2, 64, 4, 2, 16)),
        Case("ring", "zigzag", False, (9, 4), BF16, (1, 64, 4, 1, 32)),
        Case("ulysses", "zigzag", True, dtype=F32, shape=(1, 64, 8, 4, 16), lse_grad=True),
        Case("ring", "zigzag", True, dtype=F32, shape=(2, 30, 4, 2, 16), variant="padded"),
        Case("ring", "zigzag", shape=(1, 36, 4, 2, 16), variant="odd",
             expect="q: a zigzag shard holds two equal chunks, got an odd sequence length 9"),
    ],
}
HAVE_EMU = importlib.util.find_spec("flashattn_ext._emu") is not None
FAULTS = ("exits", "stays")  # what the rank that raises mid-ring does next
FAULT_WORLD = 3


# ---- in the ranks ------------------------------------------------------------------------------

def _run_case(case: Case, rank: int, world: int) -> Dict[str, Any]:
    if case.backend == "emu" and not HAVE_EMU:
        return {}
    os.environ["FLASHATTN_EXT_BACKEND"] = case.backend
    x = case.inputs
    layout = "contiguous" if case.variant == "odd" else case.layout
    shard = lambda t, dim=1: fd.shard(t, rank, world, layout=layout, dim=dim)  # noqa: E731
    q, k, v = (shard(x[n]).clone().requires_grad_() for n in ("q", "k", "v"))
    fn = fd.ring_attention if case.fn == "ring" else fd.ulysses_attention
    kw = dict(causal=case.causal, window_size=case.window, scale=case.scale, layout=case.layout,
              return_lse=True)
    if case.variant == "mismatch":
        q, k, v = (t[:, 2:] if rank == 1 else t for t in (q, k, v))
    if case.variant == "compiled":
        # q * 2 with half the scale: the same attention, with compiled work around the call
        kw["scale"] = 0.5 / math.sqrt(case.shape[4])
        out, lse = torch.compile(lambda a, b, c: fn(a * 2, b, c, **kw))(q, k, v)
        from torch._dynamo.utils import counters
        graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
        if graphs < 1 or breaks < 1:
            raise AssertionError(f"compiled {graphs} graphs with {breaks} graph breaks")
    else:
        out, lse = fn(q, k, v, **kw)
    if case.expect:
        raise AssertionError("no error")
    loss = (out.double() * shard(x["dout"]).double()).sum()
    if case.lse_grad:
        loss = loss + (lse.double() * shard(x["dlse"], 2).double()).sum()
    grads = torch.autograd.grad(loss, (q, k, v))
    return dict(zip(("out", "lse", "dq", "dk", "dv"), (out.detach(), lse.detach()) + grads))


def _fault(mode: str, rank: int, world: int, results: Path) -> Dict[str, Any]:
    """Every rank runs forward and backward. Rank 1's queries and keys hold a huge row whose
    scores overflow, so rank 1's kernel raises ValueError on its own block, at ring step 0 with
    the first transfers in flight. The other ranks must fail with an error naming the ring step
    and peer."""
    gen = torch.Generator().manual_seed(rank)
    q, k, v = (torch.randn(1, 16, 2, 16, generator=gen) for _ in range(3))
    if rank == 1:
        q[0, 3] = k[0, 5] = 1e25
    q.requires_grad_()
    start = time.monotonic()
    try:
        fd.ring_attention(q, k, v, layout="contiguous").sum().backward()
        return {"error": None}
    except Exception as err:  # reported to the test
        report = {"error": f"{type(err).__name__}: {err}", "seconds": time.monotonic() - start}
        if rank == 1 and mode == "stays":  # alive, holding its connections, until the others end
            torch.save(report, results / "rank1.pt")
            while len(list(results.glob("rank*.pt"))) < world:
                time.sleep(0.05)
        return report


def _rank_main(job: Dict[str, Any], rank: int, results: Path) -> None:
    torch.set_num_threads(1)
    fa.set_num_threads(1)
    world = job["world"]
    timeout = FAULT_TIMEOUT if job.get("fault") else PG_TIMEOUT
    dist.init_process_group("gloo", init_method=f"file://{results / 'store'}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=timeout))
    report: Dict[str, Any] = {}
    if job.get("fault"):
        report = _fault(job["fault"], rank, world, results)
    else:
        for case in job["cases"]:
            try:
                report[case.name] = _run_case(case, rank, world)
            except Exception as err:  # the test reports it with the case
                report[case.name] = {"error": f"{type(err).__name__}: {err}",
                                     "traceback": traceback.format_exc()}
        dist.destroy_process_group()
    torch.save(report, results / f"rank{rank}.tmp")
    os.replace(results / f"rank{rank}.tmp", results / f"rank{rank}.pt")


def _launch(jobs_file: str) -> None:
    """The spawned launcher: forks the ranks of each job and bounds their time."""
    jobs = torch.load(jobs_file, weights_only=False)
    fork = mp.get_context("fork")
    for job in jobs:
        results = Path(job["dir"])
        ranks = [fork.Process(target=_rank_main, args=(job, r, results), daemon=True)
                 for r in range(job["world"])]
        start = time.monotonic()
        for p in ranks:
            p.start()
        for p in ranks:
            p.join(max(0.0, JOB_DEADLINE - (time.monotonic() - start)))
        hung = [r for r, p in enumerate(ranks) if p.is_alive()]
        for p in ranks:
            p.kill()
            p.join()
        torch.save({"seconds": time.monotonic() - start, "hung": hung,
                    "exitcodes": [p.exitcode for p in ranks]}, results / "job.pt")


# ---- in the test process -----------------------------------------------------------------------

def _make_inputs(case: Case, world: int, gen: torch.Generator) -> None:
    """Fresh random inputs on the full sequence; "padded" cases get random tokens appended up to
    the layout's multiple, with dout = 0 there (their outputs are dropped)."""
    b, s, hq, hkv, d = case.shape
    if case.variant == "padded":
        n = 2 * world if case.layout == "zigzag" else world
        s = -(-s // n) * n
    x = {"q": randn(gen, b, s, hq, d, dtype=case.dtype), "k": randn(gen, b, s, hkv, d, dtype=case.dtype),
         "v": randn(gen, b, s, hkv, d, dtype=case.dtype), "dout": randn(gen, b, s, hq, d, dtype=case.dtype),
         "dlse": randn(gen, b, hq, s, dtype=F64 if case.dtype == F64 else F32)}
    x["dout"][:, case.shape[1]:] = 0
    x["dlse"][:, :, case.shape[1]:] = 0
    case.inputs = x


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Dict[str, Dict[str, Any]]:
    """Runs every job once; returns job name -> {"job": launcher report, "ranks": [reports]}."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    tmp = tmp_path_factory.mktemp("distributed")
    jobs = []
    for world, cases in CASES.items():
        for case in cases:
            _make_inputs(case, world, gen)
        jobs.append({"name": f"world{world}", "world": world, "cases": cases})
    jobs += [{"name": f"fault-{m}", "world": FAULT_WORLD, "fault": m} for m in FAULTS]
    for job in jobs:
        job["dir"] = str(tmp / job["name"])
        os.makedirs(job["dir"])
    torch.save(jobs, tmp / "jobs.pt")
    launcher = mp.get_context("spawn").Process(target=_launch, args=(str(tmp / "jobs.pt"),))
    launcher.start()
    launcher.join(TOTAL_DEADLINE)
    if launcher.is_alive():
        launcher.kill()
        launcher.join()
    out = {}
    for job in jobs:
        d = Path(job["dir"])
        report = torch.load(d / "job.pt", weights_only=False) if (d / "job.pt").exists() else None
        ranks = [torch.load(d / f"rank{r}.pt", weights_only=False)
                 if (d / f"rank{r}.pt").exists() else None for r in range(job["world"])]
        out[job["name"]] = {"job": report, "ranks": ranks}
    return out


def _ranks(runs, world: int, case: Case) -> List[Dict[str, Any]]:
    job = runs[f"world{world}"]
    assert job["job"] is not None, f"the launcher did not finish within {TOTAL_DEADLINE} s"
    assert not job["job"]["hung"], (f"ranks {job['job']['hung']} still running after "
                                    f"{JOB_DEADLINE} s (hung)")
    reports = []
    for r, rank in enumerate(job["ranks"]):
        assert rank is not None, f"rank {r} exited with code {job['job']['exitcodes'][r]}"
        reports.append(rank[case.name])
    return reports


def _references(case: Case) -> Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor],
                                                torch.Tensor]]:
    """name -> (single-process library result, naive result in the dtype or None, float64
    oracle), each on the full sequence."""
    s = case.shape[1]
    x = {n: t.narrow(2 if n == "dlse" else 1, 0, s) for n, t in case.inputs.items()}
    q, k, v = (x[n].clone().requires_grad_() for n in ("q", "k", "v"))

    def run(fn) -> Tuple[torch.Tensor, ...]:
        out, lse = fn()
        loss = (out.double() * x["dout"].double()).sum()
        if case.lse_grad:
            loss = loss + (lse.double() * x["dlse"].double()).sum()
        return (out.detach(), lse.detach()) + torch.autograd.grad(loss, (q, k, v))

    kw = dict(causal=case.causal, window=case.window, scale=case.scale)
    lib = run(lambda: fa.attention(q, k, v, causal=case.causal, window_size=case.window,
                                   scale=case.scale, return_lse=True))
    ref = run(lambda: oracle.attention(q, k, v, **kw))
    naive = run(lambda: naive_in(case.dtype, q, k, v, **kw)) if case.dtype in (BF16, F16) else None
    names = ("out", "lse", "dq", "dk", "dv")
    return {n: (lib[i], None if naive is None else naive[i], ref[i]) for i, n in enumerate(names)}


def _params(errors: bool):
    return [pytest.param(w, c, id=f"{w}ranks-{c.name}")
            for w, cases in CASES.items() for c in cases if bool(c.expect) == errors]


@pytest.mark.parametrize("world,case", _params(errors=False))
def test_matches_single_process(runs, world, case, monkeypatch):
    """Each rank's shards of out, lse, dq, dk, dv, reassembled, against the single-process
    library and the float64 oracle (for "padded", the real tokens of the padded sequence against
    the unpadded references)."""
    if case.backend == "emu" and not HAVE_EMU:
        pytest.skip("built without the emulator (FLASHATTN_EXT_EMULATOR=ON builds it)")
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", case.backend)
    reports = _ranks(runs, world, case)
    for r, rep in enumerate(reports):
        assert "error" not in rep, f"rank {r}: {rep['error']}\n{rep['traceback']}"
    refs = _references(case)
    for name, (lib, naive, ref) in refs.items():
        dim = 2 if name == "lse" else 1
        got = fd.unshard([rep[name] for rep in reports], layout=case.layout, dim=dim)
        got = got.narrow(dim, 0, case.shape[1])
        assert got.dtype == lib.dtype, f"{name}: dtype {got.dtype}, the library gives {lib.dtype}"
        if name == "lse":  # lse follows the float32 (float64) rule whatever the input dtype
            naive = None
        assert_close(got, ref, naive, f"{name} against the float64 oracle")
        assert_close(got, lib, naive, f"{name} against the single-process library")


@pytest.mark.parametrize("world,case", _params(errors=True))
def test_bad_call_fails_on_every_rank(runs, world, case):
    for r, rep in enumerate(_ranks(runs, world, case)):
        assert rep["error"].startswith(f"ValueError: {case.expect}"), f"rank {r}: {rep['error']}"


@pytest.mark.parametrize("mode", FAULTS)
def test_rank_raising_mid_ring_fails_the_others(runs, mode):
    """Rank 1 raises at ring step 0 and then exits, or stays alive holding its connections; the
    others fail with an error naming the entry point, rank and ring step: at once when the peer
    exits, within the process group's timeout when it stays."""
    job = runs[f"fault-{mode}"]
    assert job["job"] is not None, f"the launcher did not finish within {TOTAL_DEADLINE} s"
    assert not job["job"]["hung"], f"ranks {job['job']['hung']} hung for {JOB_DEADLINE} s"
    reports = job["ranks"]
    assert all(rep is not None for rep in reports), f"exit codes {job['job']['exitcodes']}"
    assert reports[1]["error"].startswith("ValueError: scale: q·kᵀ·scale overflows")
    bound = FAULT_TIMEOUT + 10 if mode == "stays" else 10
    for r in (0, 2):
        err = reports[r]["error"]
        print(f"rank {r}, after {reports[r].get('seconds', 0):.1f} s: {err}")
        assert err is not None and err.startswith(f"RuntimeError: ring_attention: rank {r} of 3: "
                                                  f"ring step "), f"rank {r}: {err}"
        assert "failed" in err
        assert reports[r]["seconds"] < bound, f"rank {r} took {reports[r]['seconds']:.1f} s"


# ---- in this process: the per-block masks and the layouts --------------------------------------

def test_block_masks_tile_the_global_mask():
    """Every (query chunk, key chunk) pair: the block's rectangle with its library mask equals
    the global mask restricted to the pair, for causal, windows and no mask."""
    from flashattn_ext.distributed._layout import Chunk, block
    seqlen = 9
    windows = [(-1, -1), (-1, 0), (0, 0), (2, 0), (-1, 1), (3, 2), (1, -1), (0, 4)]
    chunks = [Chunk(start, 0, n) for start in range(seqlen) for n in (1, 2, 3, 5)
              if start + n <= seqlen]
    checked = 0
    for left, right in windows:
        full = oracle.visible_keys(seqlen, seqlen, left, right, bottom_right=True)
        for qc in chunks:
            for kc in chunks:
                want = full[qc.start:qc.start + qc.length, kc.start:kc.start + kc.length]
                got = torch.zeros_like(want)
                b = block(qc, kc, left, right)
                if b is not None:
                    rows, keys = range(qc.length)[b.q], range(kc.length)[b.k]
                    assert len(rows) and len(keys), f"{qc} {kc} ({left}, {right}): empty {b}"
                    got[b.q, b.k] = oracle.visible_keys(len(rows), len(keys), b.left, b.right,
                                                        bottom_right=False)
                assert torch.equal(got, want), f"{qc} {kc} window ({left}, {right}): {b}"
                checked += 1
    assert checked > 1000


@pytest.mark.parametrize("layout", fd.LAYOUTS)
def test_shard_unshard(gen, layout):
    x = randn(gen, 2, 24, 3, 4)
    shards = [fd.shard(x, r, 3, layout=layout) for r in range(3)]
    assert all(s.shape == (2, 8, 3, 4) for s in shards)
    assert torch.equal(fd.unshard(shards, layout=layout), x)
    lse = randn(gen, 2, 3, 24)
    assert torch.equal(fd.unshard([fd.shard(lse, r, 3, layout=layout, dim=2) for r in range(3)],
                                  layout=layout, dim=2), lse)
    if layout == "zigzag":  # rank r holds chunks r and 2N-1-r of 2N
        assert torch.equal(shards[1], torch.cat([x[:, 4:8], x[:, 16:20]], 1))


def test_shard_errors(gen):
    x = randn(gen, 1, 20, 2, 4)
    with pytest.raises(ValueError, match=r"^x: sequence length 20 \(dim 1\) is not a multiple of "
                                         r"8, .* pad it to 24 tokens. With causal=True"):
        fd.shard(x, 0, 4)
    with pytest.raises(ValueError, match=r"^layout: expected one of 'zigzag', 'contiguous', got "
                                         r"'ring'"):
        fd.shard(x, 0, 2, layout="ring")
    with pytest.raises(ValueError, match=r"^rank: expected 0 <= rank < world_size=2, got 2"):
        fd.shard(x, 2, 2)
    with pytest.raises(ValueError, match=r"^shards: expected one tensor per rank, all of one shape"):
        fd.unshard([x, x[:, :4]])


def test_without_process_group(gen):
    q = randn(gen, 1, 8, 2, 4)
    if dist.is_initialized():
        pytest.skip("a process group exists in this process")
    for fn in (fd.ring_attention, fd.ulysses_attention):
        with pytest.raises(RuntimeError, match=rf"^{fn.__name__}: torch.distributed is not "
                                               r"initialized; call torch.distributed"):
            fn(q, q, q)
