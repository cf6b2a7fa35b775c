"""llama.cpp block formats (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) rewritten at load into the MLX affine
layout (``w = scale * q + bias`` per group, codes packed low bits first), value for value: every
block format is a code times a per-group scale plus a per-group offset, so the affine kernels
(kernels.quant: int8-activation integer dots, float tiles for the exact path) run them all.

ggml layouts: Q8_0 is an f16 scale and 32 signed bytes; Q4_0/Q4_1 an f16 scale (Q4_1 also an f16
min) and 16 bytes, byte j holding element j (low nibble) and j + 16 (high); Q4_K per 256 weights an
f16 scale and min, 12 bytes of 6-bit (scale, min) pairs for eight groups of 32, and 128 bytes in
which each run of 32 holds a group in its low nibbles and the next in its high ones; Q6_K per 256
weights 128 bytes of low nibbles, 64 of 2-bit high parts, sixteen int8 scales (one per 16 weights)
and an f16 scale, codes offset by 32 (kept at 6 bits here: nibbles in the 4-bit layout, high parts
in a plane after them).
"""

import numpy as np
from numba import njit, prange

from .numeric import JIT, to_f32
Q8_0, Q4_0, Q4_1, Q4_K, Q6_K = 8, 2, 3, 12, 14


@njit(inline="always", **JIT)
def _f16(raw, i):
    # the little-endian f16 at byte offset i of a row, as float32
    return to_f32(np.int16(np.int32(raw[i]) | (np.int32(raw[i + 1]) << 8)))


@njit(inline="always", **JIT)
def _scale_min_k4(j, sc, base):
    # the 6-bit (scale, min) pair of sub-block j of a Q4_K super-block; sc at byte offset base
    if j < 4:
        return np.int32(sc[base + j]) & 63, np.int32(sc[base + j + 4]) & 63
    a = np.int32(sc[base + j + 4])
    return (a & 0xF) | ((np.int32(sc[base + j - 4]) >> 6) << 4), (a >> 4) | ((np.int32(sc[base + j]) >> 6) << 4)


@njit(parallel=True, **JIT)
def to_affine(raw, qtype, wq, scales, biases):
    # Q8_0 / Q4_0 / Q4_1 in the MLX layout, w = scale * q + bias per block of 32: raw (N, row_bytes)
    # u8 -> wq (N, K/2) u8 nibbles (element 2j low, 2j + 1 high), (N, K) u8 for Q8_0 (signed codes
    # + 128, bias -128 scale); scales (N, K/32) f32 the blocks' f16 scales; biases (N, K/32) f32
    # Q4_1's mins (Q4_0's bias is -8 scale, Q8_0's -128 scale: not stored, biases may be (N, 0))
    for r in prange(raw.shape[0]):
        src = raw[r]
        dst = wq[r]
        if qtype == Q8_0:
            for g in range(scales.shape[1]):
                o = g * 34
                scales[r, g] = _f16(src, o)
                for j in range(32):
                    dst[32 * g + j] = src[o + 2 + j] ^ np.uint8(0x80)
        else:
            size = 18 if qtype == Q4_0 else 20
            for g in range(scales.shape[1]):
                o = g * size
                scales[r, g] = _f16(src, o)
                if qtype == Q4_1:
                    biases[r, g] = _f16(src, o + 2)
                _pair_nibbles(src, o + size - 16, dst, 16 * g, 16 * g + 8, 8)


@njit(parallel=True, **JIT)
def q4_k_to_affine(raw, wq, scales, mins, supers):
    # Q4_K: raw (N, K/256*144) u8 -> wq (N, K/2) u8 nibbles as to_affine; per group of 32 the 6-bit
    # scale and min, scales, mins (N, K/32) u8; per 256 weights supers (N, K/128) f32 (d, dmin):
    # w = d * scale * q - dmin * min. Per 64 weights ggml keeps 32 bytes: the first group in their
    # low nibbles, the next in their high ones.
    for r in prange(raw.shape[0]):
        src = raw[r]
        dst = wq[r]
        for sb in range(supers.shape[1] // 2):
            o = sb * 144
            supers[r, 2 * sb] = _f16(src, o)
            supers[r, 2 * sb + 1] = _f16(src, o + 2)
            for j in range(8):
                sc, m = _scale_min_k4(j, src, o + 4)
                scales[r, 8 * sb + j] = np.uint8(sc)
                mins[r, 8 * sb + j] = np.uint8(m)
            for c in range(4):
                g = 8 * sb + 2 * c
                _pair_nibbles(src, o + 16 + 32 * c, dst, 16 * g, 16 * g + 16, 16)


@njit(parallel=True, **JIT)
def q6_k_to_affine(raw, wq, scales, supers):
    # Q6_K: raw (N, K/256*210) u8 -> wq (N, 3K/4) u8 6-bit codes 0..63 in the layout of
    # simd.affine_q8_dot's bits=6 (_put6); scales (N, K/16) i8 per 16 weights; supers (N, K/128) f32
    # (d, 0) per 256: w = d * scale * (q - 32)
    k = scales.shape[1] * 16
    for r in prange(raw.shape[0]):
        src = raw[r]
        dst = wq[r]
        dst[:] = 0
        for sb in range(supers.shape[1] // 2):
            o = sb * 210
            supers[r, 2 * sb] = _f16(src, o + 208)
            supers[r, 2 * sb + 1] = 0.0
            for j in range(16):
                scales[r, 16 * sb + j] = np.int8(src[o + 192 + j])
            for n in range(2):  # per 128 weights: 64 low-nibble bytes, 32 bytes of 2-bit high parts
                ql = o + 64 * n
                qh = o + 128 + 32 * n
                y = 256 * sb + 128 * n
                for l in range(32):
                    h = np.int32(src[qh + l])
                    lo = np.int32(src[ql + l])
                    lo2 = np.int32(src[ql + l + 32])
                    _put6(dst, k, y + l, (lo & 15) | ((h & 3) << 4))
                    _put6(dst, k, y + l + 32, (lo2 & 15) | (((h >> 2) & 3) << 4))
                    _put6(dst, k, y + l + 64, (lo >> 4) | (((h >> 4) & 3) << 4))
                    _put6(dst, k, y + l + 96, (lo2 >> 4) | (((h >> 6) & 3) << 4))


@njit(inline="always", **JIT)
def _slot6(k, e):
    # where code e of a K-wide 6-bit row lives: (nibble byte, its shift, high-part byte, its shift).
    # Nibbles as the 4-bit layout (byte j: elements 2j, 2j + 1); per 128 weights u, 32 bytes after
    # the K/2 nibble bytes hold the high 2 bits: byte j bits 4-5 / 6-7 for nibble byte 64u + j,
    # bits 0-1 / 2-3 for nibble byte 64u + j + 32
    p = (e % 128) // 2
    odd = e % 2
    return e // 2, 4 * odd, k // 2 + 32 * (e // 128) + p % 32, (4 if p < 32 else 0) + 2 * odd


@njit(inline="always", **JIT)
def _put6(dst, k, e, q):
    nb, ns, hb, hs = _slot6(k, e)
    dst[nb] |= np.uint8((q & 15) << ns)
    dst[hb] |= np.uint8((q >> 4) << hs)


@njit(parallel=True, **JIT)
def q6_codes(wq, ids, out):
    # the 6-bit codes of rows ``ids`` as one byte each: out (len(ids), K) u8 (the float kernels' input)
    k = out.shape[1]
    for t in prange(ids.shape[0]):
        row = wq[ids[t]]
        for e in range(k):
            nb, ns, hb, hs = _slot6(k, e)
            out[t, e] = ((row[nb] >> ns) & 15) | (((row[hb] >> hs) & 3) << 4)


@njit(inline="always", **JIT)
def _pair_nibbles(src, q, dst, lo_at, hi_at, n):
    # 2n ggml bytes at src[q:] (element j low, element j + 2n high) -> MLX bytes: dst[lo_at:] the
    # low nibbles two by two, dst[hi_at:] the high ones
    for p in range(n):
        a = np.int32(src[q + 2 * p])
        b = np.int32(src[q + 2 * p + 1])
        dst[lo_at + p] = np.uint8((a & 15) | ((b & 15) << 4))
        dst[hi_at + p] = np.uint8((a >> 4) | ((b >> 4) << 4))
