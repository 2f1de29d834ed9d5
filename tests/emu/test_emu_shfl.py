"""Warp shuffles of the emulator against the CUDA Programming Guide description and the PTX
formula (docs/emulator.md section 3.4), for every width, every delta / lane mask 0..31 and srcLane -40..69;
warp votes over full and partial membermasks."""

from __future__ import annotations

import numpy as np

import ptx_model as pm

MODES = {"idx": 0, "up": 1, "down": 2, "xor": 3}
FULL = -1  # 0xffffffff as int32


def guide(mode, vals, b, width):
    """The Programming Guide's prose (docs/emulator.md section 3.4), written independently of the PTX formula."""
    out = []
    for lane in range(32):
        base, i = lane - lane % width, lane % width
        if mode == "idx":
            out.append(vals[base + (b & (width - 1))])
        elif mode == "up":
            out.append(vals[lane - b] if i - b >= 0 else vals[lane])
        elif mode == "down":
            out.append(vals[lane + b] if i + b < width else vals[lane])
        else:
            j = lane ^ b
            out.append(vals[j] if j < base + width else vals[lane])
    return out


def cases():
    for width in (1, 2, 4, 8, 16, 32):
        for b in range(-40, 70):
            yield "idx", b, width
        for b in range(32):
            for mode in ("up", "down", "xor"):
                yield mode, b, width


def test_all_shuffles_all_widths(emu, rng):
    cs = list(cases())
    vals = rng.integers(-2**31, 2**31, size=(len(cs), 32), dtype=np.int64).astype(np.int32)
    table = np.array([[MODES[m], b, w, FULL] for m, b, w in cs], np.int32)
    out = emu.shfl(table, vals)
    for k, (mode, b, width) in enumerate(cs):
        v = list(vals[k])
        assert list(out[k]) == guide(mode, v, b, width), (mode, b, width)
        assert list(out[k]) == pm.shfl_model(mode, v, b, width), (mode, b, width)


def test_delta_is_taken_mod_32(emu, rng):
    vals = rng.integers(0, 1000, size=(2, 32)).astype(np.int32)
    out = emu.shfl(np.array([[MODES["down"], 32, 32, FULL], [MODES["xor"], 33, 32, FULL]], np.int32), vals)
    assert list(out[0]) == list(vals[0])
    assert list(out[1]) == [vals[1][l ^ 1] for l in range(32)]


def test_partial_masks(emu, rng):
    """Lanes 0-15 shuffle among themselves with mask 0xffff; the other lanes do not take part."""
    vals = rng.integers(0, 1000, size=(2, 32)).astype(np.int32)
    table = np.array([[MODES["xor"], 1, 32, 0xFFFF], [MODES["idx"], 3, 16, 0xFFFF]], np.int32)
    out = emu.shfl(table, vals)
    assert list(out[0][:16]) == [vals[0][l ^ 1] for l in range(16)]
    assert list(out[0][16:]) == list(vals[0][16:])
    assert list(out[1][:16]) == [vals[1][3]] * 16


def test_reading_a_lane_outside_the_mask_is_reported(emu):
    import pytest
    vals = np.arange(32, dtype=np.int32).reshape(1, 32)
    with pytest.raises(emu.EmulatorError, match="not in the membermask"):
        emu.shfl(np.array([[MODES["xor"], 16, 32, 0xFFFF]], np.int32), vals)


def test_64_bit_values_shuffle_both_halves(emu, rng):
    vals = rng.standard_normal(32) * 1e300
    for lane_mask in (1, 5, 16, 31):
        np.testing.assert_array_equal(emu.shfl64(vals, lane_mask), vals[np.arange(32) ^ lane_mask])


def test_votes_over_full_and_partial_masks(emu, rng):
    """__all_sync / __any_sync / __ballot_sync (docs/emulator.md section 3.4) on random predicates
    (sparse and dense, so all and any take both values), over the full warp and partial masks;
    lanes outside the mask take no part."""
    masks = [FULL, 0xFFFF, 0x0F0F0F0F, 0x80000001, 1]
    densities = [0.0, 0.03, 0.5, 0.97, 1.0]
    cs = [(mode, m, d) for mode in range(3) for m in masks for d in densities]
    preds = np.stack([(rng.random(32) < d) * rng.integers(1, 1 << 30, 32) for _, _, d in cs]).astype(np.int32)
    out = emu.vote(np.array([[mode, m] for mode, m, _ in cs], np.int64).astype(np.int32), preds)
    for k, (mode, m, _) in enumerate(cs):
        members = [l for l in range(32) if (m & 0xFFFFFFFF) >> l & 1]
        ballot = sum(1 << l for l in members if preds[k][l] != 0)
        want = [int(all(preds[k][l] != 0 for l in members)), int(ballot != 0), int(np.array(ballot, np.uint32).view(np.int32))][mode]
        for l in range(32):
            assert out[k][l] == (want if l in members else -1), (mode, hex(m & 0xFFFFFFFF), l)

