"""A streaming read kernel: the memory bandwidth ceiling that decode speed is measured against."""

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def stream_sum(a, partial):
    # a: (n_rows, row) f32, read once; partial: (n_rows,) f32 row sums (keep the reads alive)
    n_rows, row = a.shape
    for r in prange(n_rows):
        acc = np.float32(0.0)
        for j in range(row):
            acc += a[r, j]
        partial[r] = acc
