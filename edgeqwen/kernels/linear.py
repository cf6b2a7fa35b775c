"""Dense linear layers for bf16 / f16 / f32 weights: y = x @ W.T with W of shape (N, K).

``matvec`` is the decode path (a few tokens, memory bound): rows are split into blocks over
threads and each chunk of a row is converted to float32 once for every token (simd.dense_dot).
``matmul`` is the prefill path (T tokens, compute bound): the same 4-row x 4-token register blocks
over tasks of TILE_ROWS rows, so a task's rows stay in cache for every token.

Both keep each output's arithmetic independent of how many tokens ride along, so batching and
chunking never change a sequence's numbers.
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .numeric import JIT
from .simd import PAIR_CHUNK, dense_dot, prefetch

ROWS_PER_TASK = 64
PREFETCH_ROWS = 4  # blocks of four rows ask for the next four as they go (measured: 4-16 alike;
# one burst per block instead of spread over the loop lost, and single rows need no help)


@njit(**JIT)
def aligned_rows(n_b, k):
    # an uninitialised (n_b, k) f32 array starting on a 64-byte line (so do its rows when K % 16 == 0:
    # a vector load across two lines costs two)
    buf = np.empty(n_b * k + 16, np.float32)
    skip = ((64 - buf.ctypes.data % 64) % 64) // 4
    return buf[skip:skip + n_b * k].reshape((n_b, k))


@njit(**JIT)
def aligned_x(x, pairs):
    # x: (B, K) f32 -> a copy in aligned_rows; pairs: in simd.dense_dot's bf16 order, each full
    # PAIR_CHUNK-block of a row as its even then its odd elements, the K % PAIR_CHUNK tail as it is
    n_b, k = x.shape
    h = PAIR_CHUNK // 2
    full = k - k % PAIR_CHUNK if pairs else 0
    out = aligned_rows(n_b, k)
    for b in range(n_b):
        for j0 in range(0, full, PAIR_CHUNK):
            for i in range(h):
                out[b, j0 + i] = x[b, j0 + 2 * i]
                out[b, j0 + h + i] = x[b, j0 + 2 * i + 1]
        for j in range(full, k):
            out[b, j] = x[b, j]
    return out


def _pairs(w):
    """Whether dense_dot takes x against w in pair order (bf16 weights)."""


@overload(_pairs, inline="always", jit_options=JIT)
def _pairs_impl(w):
    flag = w.dtype == types.uint16
    return lambda w: flag


@njit(inline="always", **JIT)
def dense_block(w, x, out, r, n_rows, ahead):
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
def matvec(w, x, out, four_rows):
    # w: (N, K) stored dtype; x: (B, K) f32; out: (B, N) f32 -- B tokens of decode (B small)
    # Each row of w is read from memory once and serves every token from L1. Three or more tokens,
    # or any number when four_rows (simd.prefetch_streams), take the rows four at a time (4 x 4
    # register blocks) with the next four prefetched over the loop; otherwise, and for a task's last
    # rows, one at a time (one stream, which some hosts' hardware prefetcher follows best alone).
    # Each output is the same simd.dense_dot chain whatever the block, so a sequence's numbers do
    # not depend on its batch.
    n, k = w.shape
    if _pairs(w):
        x = aligned_x(x, True)
    n_tasks = (n + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for t in prange(n_tasks):
        r = t * ROWS_PER_TASK
        r1 = min(n, r + ROWS_PER_TASK)
        while (four_rows or x.shape[0] > 2) and r + 4 <= r1:
            dense_block(w, x, out, r, 4, PREFETCH_ROWS * k if r + 4 + PREFETCH_ROWS <= n else 0)
            r += 4
        while r < r1:
            dense_block(w, x, out, r, 1, 0)
            r += 1


TILE_ROWS = 32


@njit(inline="always", **JIT)
def rows_x_tokens(w, r0, rows, x, out, c0, pf_rows):
    # out[t, c0 + i] = w[r0 + i] . x[t] for i < rows, every t (x: (T4, K), T4 % 4 == 0): 4 x 4
    # register blocks (simd.dense_dot), a last 1 x 4 for each row past the blocks. pf_rows > 0: the
    # rows after these (the thread's next task under prange's contiguous split) are asked of the
    # cache a slice per block, spread over the whole task: fetched in one go as a task starts, they
    # cost more than the task's arithmetic on rows that come from DRAM
    k = w.shape[1]
    n = out.shape[1]
    n_blocks = max(1, (x.shape[0] // 4) * (rows // 4 + rows % 4))  # dense_dot calls in the task
    pf_step = (pf_rows * k + n_blocks - 1) // n_blocks
    pf = (r0 + rows) * k
    pf_end = pf + pf_rows * k
    for t in range(0, x.shape[0], 4):
        i = 0
        while i < rows:
            if pf < pf_end:
                prefetch(w, pf, min(pf_step, pf_end - pf))
                pf += pf_step
            if i + 4 <= rows:
                dense_dot(w, (r0 + i) * k, k, 4, k, x, t * k, k, 4, out, t * n + c0 + i, n, 0)
                i += 4
            else:
                dense_dot(w, (r0 + i) * k, k, 1, k, x, t * k, k, 4, out, t * n + c0 + i, n, 0)
                i += 1


@njit(**JIT)
def tile_matmul(tile, rows, x, out, r0):
    # tile: (TILE_ROWS, K) f32, first ``rows`` valid; x: (T4, K) f32 with T4 % 4 == 0 (zero-padded
    # by the caller); out[:T4, r0:r0+rows] = x @ tile[:rows].T. Every output is the same
    # simd.dense_dot chain, so a token's numbers do not depend on T or on its place in the batch.
    rows_x_tokens(tile, 0, rows, x, out, r0, 0)


@njit(parallel=True, **JIT)
def matmul(w, x, out):
    # w: (N, K) stored dtype; x: (T4, K) f32, T4 % 4 == 0; out: (T4, N) f32. Tasks of TILE_ROWS rows,
    # each converted chunk by chunk in registers (no float32 copy of the weights)
    n = w.shape[0]
    x = aligned_x(x, _pairs(w))  # one copy per call (T x K: small next to the product)
    n_tasks = (n + TILE_ROWS - 1) // TILE_ROWS
    for task in prange(n_tasks):
        r0 = task * TILE_ROWS
        r1 = min(n, r0 + TILE_ROWS)
        rows_x_tokens(w, r0, r1 - r0, x, out, r0, min(n, r1 + TILE_ROWS) - r1)
