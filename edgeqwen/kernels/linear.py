"""Dense linear layers for bf16 / f16 / f32 weights: y = x @ W.T with W of shape (N, K).

``matvec`` is the decode path (one token, memory bound): rows are split into blocks over
threads and each row is one vectorised dot product. ``matmul`` is the prefill path (T tokens,
compute bound): a block of weight rows is converted to float32 once into a per-thread tile
and reused for every token, with a 4-row x 4-token register block in the inner loop.
"""

import numpy as np
from numba import njit, prange

from .numeric import to_f32

JIT = dict(cache=True, fastmath=True, nogil=True)
ROWS_PER_TASK = 64


@njit(parallel=True, **JIT)
def matvec(w, x, out):
    # w: (N, K) stored dtype; x: (K,) f32; out: (N,) f32
    n, k = w.shape
    n_tasks = (n + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for t in prange(n_tasks):
        r0 = t * ROWS_PER_TASK
        r1 = min(n, r0 + ROWS_PER_TASK)
        for r in range(r0, r1):
            acc = np.float32(0.0)
            for j in range(k):
                acc += to_f32(w[r, j]) * x[j]
            out[r] = acc


TILE_ROWS = 32


@njit(**JIT)
def tile_matmul(tile, rows, x, out, r0):
    # tile: (TILE_ROWS, K) f32, first ``rows`` valid; x: (T, K) f32; out[:, r0:r0+rows] = x @ tile.T
    # Register block of 4 rows x 4 tokens: 8 loads feed 16 FMAs per k.
    k = tile.shape[1]
    t_len = x.shape[0]
    t = 0
    while t + 4 <= t_len:
        x0 = x[t]
        x1 = x[t + 1]
        x2 = x[t + 2]
        x3 = x[t + 3]
        i = 0
        while i + 4 <= rows:
            w0 = tile[i]
            w1 = tile[i + 1]
            w2 = tile[i + 2]
            w3 = tile[i + 3]
            a00 = a01 = a02 = a03 = np.float32(0.0)
            a10 = a11 = a12 = a13 = np.float32(0.0)
            a20 = a21 = a22 = a23 = np.float32(0.0)
            a30 = a31 = a32 = a33 = np.float32(0.0)
            for j in range(k):
                v0 = x0[j]
                v1 = x1[j]
                v2 = x2[j]
                v3 = x3[j]
                u = w0[j]
                a00 += u * v0
                a10 += u * v1
                a20 += u * v2
                a30 += u * v3
                u = w1[j]
                a01 += u * v0
                a11 += u * v1
                a21 += u * v2
                a31 += u * v3
                u = w2[j]
                a02 += u * v0
                a12 += u * v1
                a22 += u * v2
                a32 += u * v3
                u = w3[j]
                a03 += u * v0
                a13 += u * v1
                a23 += u * v2
                a33 += u * v3
            c = r0 + i
            out[t, c] = a00
            out[t, c + 1] = a01
            out[t, c + 2] = a02
            out[t, c + 3] = a03
            out[t + 1, c] = a10
            out[t + 1, c + 1] = a11
            out[t + 1, c + 2] = a12
            out[t + 1, c + 3] = a13
            out[t + 2, c] = a20
            out[t + 2, c + 1] = a21
            out[t + 2, c + 2] = a22
            out[t + 2, c + 3] = a23
            out[t + 3, c] = a30
            out[t + 3, c + 1] = a31
            out[t + 3, c + 2] = a32
            out[t + 3, c + 3] = a33
            i += 4
        for ii in range(i, rows):
            for tt in range(t, t + 4):
                acc = np.float32(0.0)
                for j in range(k):
                    acc += tile[ii, j] * x[tt, j]
                out[tt, r0 + ii] = acc
        t += 4
    for tt in range(t, t_len):
        for ii in range(rows):
            acc = np.float32(0.0)
            for j in range(k):
                acc += tile[ii, j] * x[tt, j]
            out[tt, r0 + ii] = acc


@njit(parallel=True, **JIT)
def matmul(w, x, out):
    # w: (N, K) stored dtype; x: (T, K) f32; out: (T, N) f32
    n, k = w.shape
    n_tasks = (n + TILE_ROWS - 1) // TILE_ROWS
    for task in prange(n_tasks):
        r0 = task * TILE_ROWS
        rows = min(n, r0 + TILE_ROWS) - r0
        tile = np.empty((TILE_ROWS, k), np.float32)
        for i in range(rows):
            for j in range(k):
                tile[i, j] = to_f32(w[r0 + i, j])
        tile_matmul(tile, rows, x, out, r0)
