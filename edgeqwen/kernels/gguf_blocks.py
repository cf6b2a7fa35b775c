"""llama.cpp block formats (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K), run directly on the mapped blocks.

A row of a quantized matrix is a run of blocks; ``deq_row`` expands one row to float32 (per
block: an f16 scale, maybe an f16 min, packed codes). Decode dots each row's expansion with B
activation vectors; prefill expands rows into a tile for the shared 4x4 register-block matmul.
Layouts follow ggml: Q4_0/Q4_1 byte j holds element j (low nibble) and j+16 (high nibble).
"""

import numpy as np
from numba import njit, prange

from .linear import TILE_ROWS, _dot, tile_matmul
from .numeric import JIT, to_f32
from .quant import q8_rows_dot
from .simd import Q8_MAX_B, byte_dot, nibble_dot

ROWS_PER_TASK = 16
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


@njit(**JIT)
def deq_row(raw, qtype, out):
    # raw: (row_bytes,) u8 blocks of one row; out: (K,) f32
    k = out.shape[0]
    if qtype == Q8_0:
        for b in range(k // 32):
            o = b * 34
            d = _f16(raw, o)
            for j in range(32):
                out[b * 32 + j] = d * np.float32(np.int8(raw[o + 2 + j]))
    elif qtype == Q4_0 or qtype == Q4_1:
        size = 18 if qtype == Q4_0 else 20
        for b in range(k // 32):
            o = b * size
            d = _f16(raw, o)
            m = _f16(raw, o + 2) if qtype == Q4_1 else np.float32(-8.0) * d
            q = o + size - 16
            for j in range(16):
                v = np.int32(raw[q + j])
                out[b * 32 + j] = d * np.float32(v & 15) + m
                out[b * 32 + j + 16] = d * np.float32(v >> 4) + m
    elif qtype == Q4_K:
        for b in range(k // 256):
            o = b * 144
            d = _f16(raw, o)
            dmin = _f16(raw, o + 2)
            q = o + 16
            y = b * 256
            for c in range(4):
                sc1, m1 = _scale_min_k4(2 * c, raw, o + 4)
                sc2, m2 = _scale_min_k4(2 * c + 1, raw, o + 4)
                d1, mm1 = d * np.float32(sc1), dmin * np.float32(m1)
                d2, mm2 = d * np.float32(sc2), dmin * np.float32(m2)
                for l in range(32):
                    v = np.int32(raw[q + l])
                    out[y + l] = d1 * np.float32(v & 15) - mm1
                    out[y + l + 32] = d2 * np.float32(v >> 4) - mm2
                q += 32
                y += 64
    elif qtype == Q6_K:
        for b in range(k // 256):
            o = b * 210
            ql = o
            qh = o + 128
            sc = o + 192
            d = _f16(raw, o + 208)
            y = b * 256
            for n in range(2):
                for l in range(32):
                    i = l // 16
                    h = np.int32(raw[qh + l])
                    lo = np.int32(raw[ql + l])
                    lo2 = np.int32(raw[ql + l + 32])
                    q1 = ((lo & 0xF) | ((h & 3) << 4)) - 32
                    q2 = ((lo2 & 0xF) | (((h >> 2) & 3) << 4)) - 32
                    q3 = ((lo >> 4) | (((h >> 4) & 3) << 4)) - 32
                    q4 = ((lo2 >> 4) | (((h >> 6) & 3) << 4)) - 32
                    out[y + l] = d * np.float32(np.int8(raw[sc + i])) * np.float32(q1)
                    out[y + l + 32] = d * np.float32(np.int8(raw[sc + i + 2])) * np.float32(q2)
                    out[y + l + 64] = d * np.float32(np.int8(raw[sc + i + 4])) * np.float32(q3)
                    out[y + l + 96] = d * np.float32(np.int8(raw[sc + i + 6])) * np.float32(q4)
                y += 128
                ql += 64
                qh += 32
                sc += 8


@njit(inline="always", **JIT)
def _block_scales(raw, size, d, m, is_q4_1):
    # per-block f16 scale (and Q4_1 min; Q4_0's implicit min is -8 d) of one row -> float32
    for b in range(d.shape[0]):
        o = b * size
        d[b] = _f16(raw, o)
        m[b] = _f16(raw, o + 2) if is_q4_1 else np.float32(-8.0) * d[b]


@njit(inline="always", **JIT)
def _min_term(m, xsum):
    acc = np.float32(0.0)
    for b in range(m.shape[0]):
        acc += m[b] * xsum[b]
    return acc


@njit(parallel=True, **JIT)
def blocks_matvec(raw, qtype, x, xsum, out):
    # raw: (N, row_bytes) u8; x: (B, K) f32; xsum: (B, K/32) f32 block sums of x; out: (B, N) f32
    n = raw.shape[0]
    k = x.shape[1]
    n_blocks = k // 32
    n_tasks = (n + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for t in prange(n_tasks):
        row = np.empty(k if qtype == Q4_K or qtype == Q6_K else 0, np.float32)
        d = np.empty(n_blocks, np.float32)
        m = np.empty(n_blocks, np.float32)
        for r in range(t * ROWS_PER_TASK, min(n, (t + 1) * ROWS_PER_TASK)):
            if qtype == Q4_0 or qtype == Q4_1:
                size = 18 if qtype == Q4_0 else 20
                _block_scales(raw[r], size, d, m, qtype == Q4_1)
                for b in range(x.shape[0]):
                    # codes after the header; byte j holds element j (low) and j + 16 (high)
                    out[b, r] = (nibble_dot(raw[r], size, size - 16, x[b], 0, x[b], 16, 32, d, n_blocks, 16)
                                 + _min_term(m, xsum[b]))
            elif qtype == Q8_0:
                for bl in range(n_blocks):
                    d[bl] = _f16(raw[r], bl * 34)
                for b in range(x.shape[0]):
                    out[b, r] = byte_dot(raw[r], 34, 2, x[b], 32, d, n_blocks, 32, "i8")
            else:
                deq_row(raw[r], qtype, row)
                for b in range(x.shape[0]):
                    out[b, r] = _dot(row, x[b])


@njit(parallel=True, **JIT)
def blocks_matvec_q8(raw, qtype, xq, dx, xs, out):
    # llama.cpp's own decode: Q4_0 / Q4_1 / Q8_0 rows times int8 activations (quant.quantize_act,
    # ggml nibble order for Q4, f16-rounded block scales); xq (B, K) i8, dx, xs (B, NB8) f32
    n = raw.shape[0]
    nb = xq.shape[1] // 32
    n_tasks = (n + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for t in prange(n_tasks):
        d = np.zeros(dx.shape[1], np.float32)  # per block, zero-padded to whole octets
        m = np.zeros(dx.shape[1], np.float32)
        res = np.empty(Q8_MAX_B, np.float32)
        for r in range(t * ROWS_PER_TASK, min(n, (t + 1) * ROWS_PER_TASK)):
            if qtype == Q8_0:
                for bl in range(nb):
                    d[bl] = _f16(raw[r], bl * 34)
                q8_rows_dot(raw[r], 34, 2, xq, 32, d, m, dx, xs, nb, res, out, r, "i8")
            else:
                size = 18 if qtype == Q4_0 else 20
                _block_scales(raw[r], size, d[:nb], m[:nb], qtype == Q4_1)
                q8_rows_dot(raw[r], size, size - 16, xq, 32, d, m, dx, xs, nb, res, out, r, "nib_blocks")


@njit(parallel=True, **JIT)
def blocks_matmul(raw, qtype, x, out):
    # x: (T4, K) f32, T4 % 4 == 0; out: (T4, N) f32
    n = raw.shape[0]
    k = x.shape[1]
    n_tasks = (n + TILE_ROWS - 1) // TILE_ROWS
    for task in prange(n_tasks):
        r0 = task * TILE_ROWS
        rows = min(n, r0 + TILE_ROWS) - r0
        tile = np.empty((TILE_ROWS, k), np.float32)
        for i in range(rows):
            deq_row(raw[r0 + i], qtype, tile[i])
        tile_matmul(tile, rows, x, out, r0)


@njit(**JIT)
def blocks_embed(raw, qtype, ids, out):
    # rows ``ids`` dequantized: out (T, K) f32
    for t in range(ids.shape[0]):
        deq_row(raw[ids[t]], qtype, out[t])
