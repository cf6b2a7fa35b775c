"""Dense linear layers for bf16 / f16 / f32 weights: y = x @ W.T with W of shape (N, K).

``matvec`` is the decode path (a few tokens, memory bound): rows are split into blocks over
threads and each chunk of a row is converted to float32 once for every token (simd.dense_dot).
``matmul`` is the prefill path (T tokens, compute bound): a block of weight rows is converted to
float32 once into a per-thread tile and reused for every token, with a 4-row x 4-token register
block in the inner loop.

Both keep each output's arithmetic independent of how many tokens ride along, so batching and
chunking never change a sequence's numbers.
"""

import numpy as np
from numba import njit, prange

from .numeric import JIT, to_f32
from .simd import dense_dot

ROWS_PER_TASK = 64


PREFETCH_ROWS = 4  # blocks of four rows ask for the next four as they go (measured: 4-16 alike;
# one burst per block instead of spread over the loop lost, and single rows need no help)


@njit(inline="always", **JIT)
def _block(w, x, out, r, n_rows, ahead):
    # rows r..r+n_rows-1 (n_rows a literal) against every token, up to 4 tokens a call: out[b, r];
    # the first call prefetches ``ahead`` elements on (0: none)
    k = w.shape[1]
    n = out.shape[1]
    n_b = x.shape[0]
    b0 = 0
    while b0 < n_b:
        left = n_b - b0
        pf = ahead if b0 == 0 else 0
        if left >= 4:
            dense_dot(w, r * k, k, n_rows, k, x, b0 * k, k, 4, out, b0 * n + r, n, pf)
            b0 += 4
        elif left == 3:
            dense_dot(w, r * k, k, n_rows, k, x, b0 * k, k, 3, out, b0 * n + r, n, pf)
            b0 += 3
        elif left == 2:
            dense_dot(w, r * k, k, n_rows, k, x, b0 * k, k, 2, out, b0 * n + r, n, pf)
            b0 += 2
        else:
            dense_dot(w, r * k, k, n_rows, k, x, b0 * k, k, 1, out, b0 * n + r, n, pf)
            b0 += 1


@njit(parallel=True, **JIT)
def matvec(w, x, out):
    # w: (N, K) stored dtype; x: (B, K) f32; out: (B, N) f32 -- B tokens of decode (B small)
    # Each row of w is read from memory once and serves every token from L1. One or two tokens
    # take the rows one at a time (one stream, which the hardware prefetcher follows alone); more
    # take them four at a time (4 x 4 register blocks, the next rows prefetched). Each output is
    # the same simd.dense_dot chain whatever the block, so a sequence's numbers do not depend on
    # its batch.
    n, k = w.shape
    n_tasks = (n + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for t in prange(n_tasks):
        r = t * ROWS_PER_TASK
        r1 = min(n, r + ROWS_PER_TASK)
        while x.shape[0] > 2 and r + 4 <= r1:
            _block(w, x, out, r, 4, PREFETCH_ROWS * k if r + 4 + PREFETCH_ROWS <= n else 0)
            r += 4
        while r < r1:
            _block(w, x, out, r, 1, 0)
            r += 1


TILE_ROWS = 32


@njit(**JIT)
def tile_matmul(tile, rows, x, out, r0):
    # tile: (TILE_ROWS, K) f32, first ``rows`` valid; x: (T4, K) f32 with T4 % 4 == 0 (zero-padded
    # by the caller); out[:T4, r0:r0+rows] = x @ tile.T. Every output comes from the same 4x4
    # register block (8 loads feed 16 FMAs per k), so a token's numbers do not depend on T or on
    # its place in the batch. Rows past ``rows`` are zeroed and computed but never stored.
    k = tile.shape[1]
    t_len = x.shape[0]
    for i in range(rows, (rows + 3) // 4 * 4):
        tile[i, :] = 0.0
    for t in range(0, t_len, 4):
        x0 = x[t]
        x1 = x[t + 1]
        x2 = x[t + 2]
        x3 = x[t + 3]
        for i in range(0, rows, 4):
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
            out[t + 1, c] = a10
            out[t + 2, c] = a20
            out[t + 3, c] = a30
            if i + 1 < rows:
                out[t, c + 1] = a01
                out[t + 1, c + 1] = a11
                out[t + 2, c + 1] = a21
                out[t + 3, c + 1] = a31
            if i + 2 < rows:
                out[t, c + 2] = a02
                out[t + 1, c + 2] = a12
                out[t + 2, c + 2] = a22
                out[t + 3, c + 2] = a32
            if i + 3 < rows:
                out[t, c + 3] = a03
                out[t + 1, c + 3] = a13
                out[t + 2, c + 3] = a23
                out[t + 3, c + 3] = a33


@njit(parallel=True, **JIT)
def matmul(w, x, out):
    # w: (N, K) stored dtype; x: (T4, K) f32, T4 % 4 == 0; out: (T4, N) f32
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
