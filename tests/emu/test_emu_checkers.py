"""Every checker catches its planted bug (EmulatorError naming kernel, block, thread, address and
the rule) and passes the corrected kernel; scheduling order is deterministic unless seeded."""

from __future__ import annotations

import re

import numpy as np
import pytest

# planted kernel -> words the report must contain
PLANTED = {
    # 1. shared-memory race within a barrier interval
    "race_raw": ("shared-memory race", "missing __syncthreads", "shared offset 0"),
    "race_war": ("shared-memory race", "read by", "written by this thread"),
    # 2. cp.async completion and visibility
    "async_early_read": ("cp.async destination still in flight", "issued by this thread"),
    "async_wait_group": ("cp.async destination still in flight",),
    "async_no_barrier": ("cp.async", "__syncthreads"),
    "async_source_write": ("source of a pending cp.async", "global address"),
    "async_double_issue": ("write to a cp.async destination still in flight", "issued by this thread"),
    "async_never_waited": ("exited with 1 cp.async copies never waited for",),
    # 3. ldmatrix alignment / shared bounds
    "ldmatrix_misaligned": ("ldmatrix row address not 16-byte aligned", "shared offset 2"),
    "ldmatrix_outside": ("ldmatrix row of 16 bytes outside the dynamic shared memory",),
    "smem_overflow": ("outside the dynamic shared memory", "256 bytes allocated"),
    # 4. global bounds
    "global_oob": ("global read of 4 bytes outside its buffer", "byte offset 256"),
    # 5. warp collectives
    "shfl_lane_missing": ("cannot complete", "lane 31 has exited"),
    "shfl_divergent": ("divergent warp collective", "shfl.sync.down", "shfl.sync.bfly"),
    "shfl_mask_mismatch": ("mismatched membermasks", "0x0000ffff"),
    "mma_lane_missing": ("mma.m16n8k16", "lane 5 has exited"),
    # 6. uninitialised shared memory
    "uninit_read": ("read of uninitialised shared memory", "thread (6,0,0)", "shared offset 28"),
}

SEEDS = (None, 1, 2, 3)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_bug_is_caught(emu, name, seed):
    emu.set_seed(seed)
    with pytest.raises(emu.EmulatorError) as info:
        emu.planted(name, True)
    msg = str(info.value)
    assert msg.startswith(f"kernel '{name}' block (0,0,0)"), msg
    assert "thread (" in msg, msg
    if seed is None:
        for word in PLANTED[name]:
            assert word in msg, (word, msg)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(PLANTED))
def test_corrected_kernel_passes(emu, name, seed):
    emu.set_seed(seed)
    out = emu.planted(name, False)
    assert np.isfinite(out).all()


def test_error_is_a_runtime_error(emu):
    assert issubclass(emu.EmulatorError, RuntimeError)


def test_unknown_planted_name(emu):
    with pytest.raises(ValueError):
        emu.planted("no_such_kernel", True)


def test_deterministic_order_by_default(emu):
    a, b = emu.order(96), emu.order(96)
    np.testing.assert_array_equal(a, b)
    assert a[0] == 96 and list(a[1:]) == list(range(96))


def test_seed_shuffles_order_reproducibly(emu):
    emu.set_seed(7)
    a, b = emu.order(96), emu.order(96)
    np.testing.assert_array_equal(a, b)
    emu.set_seed(8)
    c = emu.order(96)
    assert sorted(a[1:]) == list(range(96)) and sorted(c[1:]) == list(range(96))
    assert list(a[1:]) != list(range(96)) and list(a[1:]) != list(c[1:])


def test_shared_memory_limit_is_checked_at_launch(emu):
    emu.configure(smem_limit=1024)
    emu.zfill(np.zeros(512, np.uint8))  # 896 bytes fit
    emu.configure(smem_limit=512)
    with pytest.raises(emu.EmulatorError, match="launch: 544 bytes of dynamic shared memory exceed the limit of 512"):
        emu.planted("ldmatrix_misaligned", False)


@pytest.mark.parametrize("threads", (1, 2))
def test_thread_and_block_indices_of_3d_launches(emu, threads):
    emu.configure(threads=threads)
    grid, block = (3, 2, 2), (8, 4, 2)
    out = emu.index(grid, block)
    for b in range(12):
        bx, by, bz = b % 3, b // 3 % 2, b // 6
        for t in range(64):
            tx, ty, tz = t % 8, t // 8 % 4, t // 32
            assert list(out[b, t]) == [tx, ty, tz, bx, by, bz, t // 32 * 32, 64], (b, t)


@pytest.mark.parametrize("threads", (1, 2))
def test_first_failing_block_is_reported(emu, threads):
    emu.configure(threads=threads)
    # lane 31 completes the shuffle (last to arrive) and runs on first
    with pytest.raises(emu.EmulatorError, match=r"kernel 'probe_index' block \(0,1,0\) thread \(7,3,0\) "
                                                r"\[warp 0 lane 31\] at global address .*byte offset -4"):
        emu.index((3, 2, 2), (8, 4, 2), oob_from=3)


def test_launch_validation(emu):
    with pytest.raises(emu.EmulatorError, match="invalid block"):
        emu.index((1, 1, 1), (32, 33, 1))
    with pytest.raises(emu.EmulatorError, match="membermask 0xffffffff names lanes that do not exist"):
        emu.index((1, 1, 1), (7, 1, 1))


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("seed", SEEDS)
def test_global_race_between_blocks_is_caught(emu, threads, seed):
    """Two blocks accumulate into the same words with a plain += (checker 7): caught whatever the
    order the blocks run in; the report names both blocks."""
    emu.configure(threads=threads)
    emu.set_seed(seed)
    with pytest.raises(emu.EmulatorError) as info:
        emu.planted("global_race", True)
    msg = str(info.value)
    m = re.match(r"kernel 'global_race' block \(([01]),0,0\) thread \(\d+,0,0\) \[warp \d lane \d+\] "
                 r"at global address \S+: global-memory race between blocks: plain (read|write) "
                 r"\(byte offset (\d+) of its buffer\) of a byte (written plainly|read plainly) by "
                 r"(block \(([01]),0,0\)|several blocks) in the same launch", msg)
    assert m, msg
    assert m.group(5) == "several blocks" or m.group(6) != m.group(1), msg
    if threads == 1:  # block 0 runs to the end first; block 1's read finds its write
        assert m.group(1) == "1" and m.group(2) == "read" and m.group(6) == "0", msg


@pytest.mark.parametrize("threads", (1, 2))
def test_atomic_accumulation_between_blocks_passes(emu, threads):
    emu.configure(threads=threads)
    out = emu.planted("global_race", False)
    inp = np.arange(64, dtype=np.float32) * np.float32(0.5) + np.float32(1.0)
    np.testing.assert_array_equal(out[:64], 2 * inp)
    assert not out[64:].any()
