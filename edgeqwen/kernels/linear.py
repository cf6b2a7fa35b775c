"""Dense linear layers for bf16 / f16 / f32 weights: y = x @ W.T with W of shape (N, K).

``matvec`` is the decode path (a few tokens, memory bound): rows are split into blocks over
threads and each chunk of a row is converted to float32 once for every token (simd.dense_dot).
``matmul`` is the prefill path (T tokens, compute bound): the same 4-row x 4-token register blocks
over tasks of TILE_ROWS rows, so a task's rows stay in cache for every token.

Both keep each output's arithmetic independent of how many tokens ride along, so batching and
chunking never change a sequence's numbers.
"""

from numba import njit, prange

from .numeric import JIT
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


@njit(inline="always", **JIT)
def _rows_x_tokens(w, r0, rows, x, out, c0):
    # out[t, c0 + i] = w[r0 + i] . x[t] for i < rows, every t (x: (T4, K), T4 % 4 == 0): 4 x 4
    # register blocks (simd.dense_dot), a last 1 x 4 for each row past the blocks
    k = w.shape[1]
    n = out.shape[1]
    for t in range(0, x.shape[0], 4):
        i = 0
        while i + 4 <= rows:
            dense_dot(w, (r0 + i) * k, k, 4, k, x, t * k, k, 4, out, t * n + c0 + i, n, 0)
            i += 4
        while i < rows:
            dense_dot(w, (r0 + i) * k, k, 1, k, x, t * k, k, 4, out, t * n + c0 + i, n, 0)
            i += 1


@njit(**JIT)
def tile_matmul(tile, rows, x, out, r0):
    # tile: (TILE_ROWS, K) f32, first ``rows`` valid; x: (T4, K) f32 with T4 % 4 == 0 (zero-padded
    # by the caller); out[:T4, r0:r0+rows] = x @ tile[:rows].T. Every output is the same
    # simd.dense_dot chain, so a token's numbers do not depend on T or on its place in the batch.
    _rows_x_tokens(tile, 0, rows, x, out, r0)


@njit(parallel=True, **JIT)
def matmul(w, x, out):
    # w: (N, K) stored dtype; x: (T4, K) f32, T4 % 4 == 0; out: (T4, N) f32. Tasks of TILE_ROWS rows,
    # each converted chunk by chunk in registers (no float32 copy of the weights)
    n = w.shape[0]
    n_tasks = (n + TILE_ROWS - 1) // TILE_ROWS
    for task in prange(n_tasks):
        r0 = task * TILE_ROWS
        _rows_x_tokens(w, r0, min(n, r0 + TILE_ROWS) - r0, x, out, r0)
