"""A streaming read kernel: the memory bandwidth ceiling that decode speed is measured against."""

import numpy as np
from numba import njit, prange

CHUNK = 1 << 16  # float32 elements per task


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def stream_sum(a, partial):
    # a: (N,) f32, read once; partial: (n_tasks,) f32 per-task sums (keeps the reads alive)
    n = a.shape[0]
    n_tasks = partial.shape[0]
    for t in prange(n_tasks):
        acc = np.float32(0.0)
        for i in range(t * CHUNK, min(n, (t + 1) * CHUNK)):
            acc += a[i]
        partial[t] = acc
