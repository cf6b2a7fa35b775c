"""Weight formats: what a stored tensor is, and which kernel multiplies by it.

Every format exposes the same small surface to the model: ``shape`` (N, K), ``nbytes`` (bytes
read per full pass, for GB/s accounting), ``matvec``/``matmul`` into a preallocated output and,
for embedding tables, ``embed``.
"""

from __future__ import annotations

import numpy as np

from .errors import EdgeQwenError
from .kernels import linear, ops
from .storage import TensorStore

DENSE_DTYPES = {"BF16": "bf16", "F16": "f16", "F32": "f32"}


class Dense:
    """A bf16 / f16 / f32 matrix used exactly as stored (see kernels.numeric for the views)."""

    def __init__(self, data: np.ndarray, kind: str):
        self.data = data  # (N, K) uint16 (bf16) | int16 (f16) | float32
        self.kind = kind
        self.shape = data.shape
        self.nbytes = data.nbytes

    def matvec(self, x: np.ndarray, out: np.ndarray) -> None:
        """out (N,) = W @ x (K,)."""
        linear.matvec(self.data, x, out)

    def matmul(self, x: np.ndarray, out: np.ndarray) -> None:
        """out (T, N) = x (T, K) @ W.T; one token goes through the decode kernel."""
        if x.shape[0] == 1:
            linear.matvec(self.data, x[0], out[0])
        else:
            linear.matmul(self.data, x, out)

    def embed(self, ids: np.ndarray, out: np.ndarray) -> None:
        """out (T, K) = rows ``ids`` of the table, as float32."""
        ops.embed(self.data, ids, out)

    def row_f32(self) -> np.ndarray:
        """The whole matrix as float32 (tests and tools only: it copies)."""
        if self.kind == "bf16":
            return (self.data.astype(np.uint32) << 16).view(np.float32)
        if self.kind == "f16":
            return self.data.view(np.float16).astype(np.float32)
        return np.asarray(self.data, dtype=np.float32)


def _check_shape(store: TensorStore, name: str, shape: tuple[int, ...]) -> None:
    got = store.shape(name)
    if tuple(got) != tuple(shape):
        raise EdgeQwenError(f"{store.where(name)}: shape {list(got)} does not match the config's {list(shape)}")


def load_dense(store: TensorStore, name: str, shape: tuple[int, ...]) -> Dense:
    """The tensor ``name``, checked against ``shape``, as a Dense weight (no copy)."""
    if name not in store:
        raise EdgeQwenError(f"tensor {name!r} is missing from the checkpoint")
    dtype = store.dtype(name)
    if dtype not in DENSE_DTYPES:
        raise EdgeQwenError(f"{store.where(name)}: dtype {dtype} is not a supported weight dtype (BF16, F16, F32)")
    _check_shape(store, name, shape)
    return Dense(store.get(name), DENSE_DTYPES[dtype])


def load_vector(store: TensorStore, name: str, size: int) -> np.ndarray:
    """A norm weight or bias of length ``size``, in its stored dtype view (no copy)."""
    w = load_dense(store, name, (size,))
    return w.data
