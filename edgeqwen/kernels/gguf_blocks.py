"""llama.cpp block formats (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) rewritten at load into the MLX affine
layout (``w = scale * q + bias`` per group, codes packed low bits first), value for value: every
block format is a code times a per-group scale plus a per-group offset, so the affine kernels
(kernels.quant: int8-activation integer dots, float tiles for the exact path) run them all.

ggml layouts: Q8_0 is an f16 scale and 32 signed bytes; Q4_0/Q4_1 an f16 scale (Q4_1 also an f16
min) and 16 bytes, byte j holding element j (low nibble) and j + 16 (high); Q4_K per 256 weights an
f16 scale and min, 12 bytes of 6-bit (scale, min) pairs for eight groups of 32, and 128 bytes in
which each run of 32 holds a group in its low nibbles and the next in its high ones; Q6_K per 256
weights 128 bytes of low nibbles, 64 of 2-bit high parts, sixteen int8 scales (one per 16 weights)
and an f16 scale, codes offset by 32.
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
    # the blocks rewritten exactly in the MLX affine layout, w = s * q + b per group of 32 weights
    # (16 for Q6_K): raw (N, row_bytes) u8 -> wq (N, K/2) u8 nibbles (element 2j low, 2j + 1 high)
    # for Q4_0 / Q4_1 / Q4_K, (N, K) u8 for Q8_0 (signed codes + 128) and Q6_K (codes 0..63);
    # scales, biases (N, K/32) f32, (N, K/16) for Q6_K
    for r in prange(raw.shape[0]):
        src = raw[r]
        dst = wq[r]
        if qtype == Q8_0:
            for g in range(scales.shape[1]):
                o = g * 34
                d = _f16(src, o)
                scales[r, g] = d
                biases[r, g] = np.float32(-128.0) * d
                for j in range(32):
                    dst[32 * g + j] = src[o + 2 + j] ^ np.uint8(0x80)
        elif qtype == Q4_0 or qtype == Q4_1:
            size = 18 if qtype == Q4_0 else 20
            for g in range(scales.shape[1]):
                o = g * size
                d = _f16(src, o)
                scales[r, g] = d
                biases[r, g] = _f16(src, o + 2) if qtype == Q4_1 else np.float32(-8.0) * d
                _pair_nibbles(src, o + size - 16, dst, 16 * g, 16 * g + 8, 8)
        elif qtype == Q6_K:
            for sb in range(scales.shape[1] // 16):
                o = sb * 210
                d = _f16(src, o + 208)
                for s16 in range(16):
                    f = d * np.float32(np.int8(src[o + 192 + s16]))
                    scales[r, 16 * sb + s16] = f
                    biases[r, 16 * sb + s16] = np.float32(-32.0) * f
                for n in range(2):  # per 128 weights: 64 low-nibble bytes, 32 high-part bytes
                    ql = o + 64 * n
                    qh = o + 128 + 32 * n
                    y = 256 * sb + 128 * n
                    for l in range(32):
                        h = np.int32(src[qh + l])
                        lo = np.int32(src[ql + l])
                        lo2 = np.int32(src[ql + l + 32])
                        dst[y + l] = np.uint8((lo & 15) | ((h & 3) << 4))
                        dst[y + l + 32] = np.uint8((lo2 & 15) | (((h >> 2) & 3) << 4))
                        dst[y + l + 64] = np.uint8((lo >> 4) | (((h >> 4) & 3) << 4))
                        dst[y + l + 96] = np.uint8((lo2 >> 4) | (((h >> 6) & 3) << 4))
        else:  # Q4_K: per 64 weights, 32 bytes hold the first 32 (low nibbles) and the next 32 (high)
            for sb in range(scales.shape[1] // 8):
                o = sb * 144
                d = _f16(src, o)
                dmin = _f16(src, o + 2)
                for c in range(4):
                    for h in range(2):
                        sc, m = _scale_min_k4(2 * c + h, src, o + 4)
                        g = 8 * sb + 2 * c + h
                        scales[r, g] = d * np.float32(sc)
                        biases[r, g] = -(dmin * np.float32(m))
                    g = 8 * sb + 2 * c
                    _pair_nibbles(src, o + 16 + 32 * c, dst, 16 * g, 16 * g + 16, 16)


@njit(inline="always", **JIT)
def _pair_nibbles(src, q, dst, lo_at, hi_at, n):
    # 2n ggml bytes at src[q:] (element j low, element j + 2n high) -> MLX bytes: dst[lo_at:] the
    # low nibbles two by two, dst[hi_at:] the high ones
    for p in range(n):
        a = np.int32(src[q + 2 * p])
        b = np.int32(src[q + 2 * p + 1])
        dst[lo_at + p] = np.uint8((a & 15) | ((b & 15) << 4))
        dst[hi_at + p] = np.uint8((a >> 4) | ((b >> 4) << 4))
