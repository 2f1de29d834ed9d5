"""Independent Python model of the PTX lane layouts (docs/emulator.md) used as the oracle
for the emulator tests: PTX closed forms, a decoder of CuTe layouts, ldmatrix/stmatrix closed forms,
the shfl formula, and bit-level helpers for f16/bf16."""

from __future__ import annotations

import numpy as np


def gt(lane: int):
    return lane >> 2, lane & 3


# ---- mma fragments (row, col) of element i held by `lane` ----
def a_k16(lane, i):
    g, t = gt(lane)
    return g + (8 if i & 2 else 0), 2 * t + (i & 1) + (8 if i >= 4 else 0)


def b_k16(lane, i):  # (k, n)
    g, t = gt(lane)
    return 2 * t + (i & 1) + (8 if i >= 2 else 0), g


def a_k8(lane, i):
    g, t = gt(lane)
    return g + (8 if i >= 2 else 0), 2 * t + (i & 1)


def b_k8(lane, i):
    g, t = gt(lane)
    return 2 * t + i, g


def c_frag(lane, i):
    g, t = gt(lane)
    return g + (8 if i >= 2 else 0), 2 * t + (i & 1)


# ---- CuTe layouts: ((thread shape), (value shape)) : ((thread stride), (value stride)) ----
def _size(shape):
    if isinstance(shape, tuple):
        n = 1
        for s in shape:
            n *= _size(s)
        return n
    return shape


def _eval(shape, stride, idx):
    if isinstance(shape, tuple):
        off = 0
        for s, d in zip(shape, stride):
            off += _eval(s, d, idx % _size(s))
            idx //= _size(s)
        return off
    return idx * stride


def cute_coord(layout, thread, value, nrows):
    (ts, vs), (td, vd) = layout
    idx = _eval(ts, td, thread) + _eval(vs, vd, value)
    return idx % nrows, idx // nrows  # column-major (rows, cols) tile


def cute_tv(layout, thread, value):
    (ts, vs), (td, vd) = layout
    return _eval(ts, td, thread) + _eval(vs, vd, value)


# ldmatrix as bit layouts (CuTe copy_traits_sm75.hpp, docs/emulator.md section 3.2): name -> (num, trans, Src, Dst);
# Src maps (thread, bit of its 128-bit row) and Dst maps (thread, bit of its registers) to one
# logical bit index.
CUTE_LDSM = {
    "x1": (1, False, (((8, 4), 128), ((128, 0), 1)), ((32, 32), (32, 1))),
    "x2": (2, False, (((16, 2), 128), ((128, 0), 1)), ((32, (32, 2)), (32, (1, 1024)))),
    "x4": (4, False, ((32, 128), (128, 1)), ((32, (32, 4)), (32, (1, 1024)))),
    "x1.trans": (1, True, (((8, 4), 128), ((128, 0), 1)), (((4, 8), (16, 2)), ((256, 16), (1, 128)))),
    "x2.trans": (2, True, (((16, 2), 128), ((128, 0), 1)), (((4, 8), (16, 2, 2)), ((256, 16), (1, 128, 1024)))),
    "x4.trans": (4, True, ((32, 128), (128, 1)), (((4, 8), (16, 2, 4)), ((256, 16), (1, 128, 1024)))),
}


def ldmatrix_cute(name, offsets, mem16):
    """Registers by moving bits through the CuTe Src/Dst layouts (lowest thread wins duplicates)."""
    num, _, src, dst = CUTE_LDSM[name]
    owner = {}
    for thr in range(32):
        for bit in range(128):
            owner.setdefault(cute_tv(src, thr, bit), (thr, bit))
    regs = np.zeros((32, 4), np.uint32)
    for thr in range(32):
        for v in range(32 * num):
            sthr, sbit = owner[cute_tv(dst, thr, v)]
            elem = int(mem16[offsets[sthr] // 2 + sbit // 16])
            regs[thr, v // 32] |= np.uint32(((elem >> (sbit % 16)) & 1) << (v % 32))
    return regs


CUTE_A_16x8x16 = (((4, 8), (2, 2, 2)), ((32, 1), (16, 8, 128)))
CUTE_B_16x8x16 = (((4, 8), (2, 2)), ((16, 1), (8, 64)))
CUTE_C_16x8 = (((4, 8), (2, 2)), ((32, 1), (16, 8)))
CUTE_B_16x8x8 = (((4, 8), 2), ((16, 1), 8))


# ---- 16-bit packing ----
def f16_bits(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float16).view(np.uint16)


def bf16_bits(x) -> np.ndarray:
    """Round-to-nearest-even f32 -> bf16 bits (finite inputs)."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return r.astype(np.uint16)


def bits_to_f64(bits, dtype: str) -> np.ndarray:
    b = np.asarray(bits, dtype=np.uint16)
    if dtype == "float16":
        return b.view(np.float16).astype(np.float64)
    return (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def to_bits(x, dtype: str) -> np.ndarray:
    return f16_bits(x) if dtype == "float16" else bf16_bits(x)


def pack(lo, hi) -> int:
    return int(lo) | (int(hi) << 16)


def fragments(A_bits, B_bits, k):
    """Per-lane registers a[32][4], b[32][2] (uint32) of A (16×k) and B (k×8) 16-bit bit patterns."""
    a = np.zeros((32, 4), np.uint32)
    b = np.zeros((32, 2), np.uint32)
    fa, fb = (a_k16, b_k16) if k == 16 else (a_k8, b_k8)
    for lane in range(32):
        for r in range(4 if k == 16 else 2):
            a[lane, r] = pack(A_bits[fa(lane, 2 * r)], A_bits[fa(lane, 2 * r + 1)])
        for r in range(2 if k == 16 else 1):
            b[lane, r] = pack(B_bits[fb(lane, 2 * r)], B_bits[fb(lane, 2 * r + 1)])
    return a, b


# ---- ldmatrix / stmatrix closed forms (docs/emulator.md section 3.2) over a dict/array of 16-bit words ----
def ldmatrix_model(num, trans, offsets, mem16):
    """offsets[l]: byte offset supplied by lane l; mem16: uint16 array indexed by byte offset // 2."""
    regs = np.zeros((32, 4), np.uint32)
    for lane in range(32):
        g, t = gt(lane)
        for j in range(num):
            if trans:
                lo = mem16[offsets[8 * j + 2 * t] // 2 + g]
                hi = mem16[offsets[8 * j + 2 * t + 1] // 2 + g]
            else:
                lo = mem16[offsets[8 * j + g] // 2 + 2 * t]
                hi = mem16[offsets[8 * j + g] // 2 + 2 * t + 1]
            regs[lane, j] = pack(lo, hi)
    return regs


# ---- shfl (docs/emulator.md section 3.4, with the CUDA-header c operand) ----
def shfl_model(mode, vals, b, width):
    seg, cval = (32 - width) & 31, (0 if mode == "up" else 31)
    seg_mask = seg
    out = []
    for lane in range(32):
        bval = b & 31
        max_lane = (lane & seg_mask) | (cval & ~seg_mask & 31)
        min_lane = lane & seg_mask
        if mode == "up":
            j = lane - bval
            p = j >= max_lane
        elif mode == "down":
            j = lane + bval
            p = j <= max_lane
        elif mode == "xor":
            j = lane ^ bval
            p = j <= max_lane
        else:
            j = min_lane | (bval & ~seg_mask & 31)
            p = j <= max_lane
        out.append(vals[j] if p else vals[lane])
    return out
