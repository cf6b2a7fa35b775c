"""GGUF files: metadata and memory-mapped tensors (read with the `gguf` package, never copied).

The header is checked against the file size before the `gguf` reader sees it, so a corrupt or
hostile header gives a one-line EdgeQwenError instead of a giant allocation or a stray exception.
Tensors come out in Hugging Face orientation, (rows, cols) = (out, in), as raw block bytes for
quantized types.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ..errors import EdgeQwenError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
# ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34),
              12: ("Q4_K", 256, 144), 14: ("Q6_K", 256, 210), 30: ("BF16", 1, 2)}
MIN_KV_BYTES = 8 + 4 + 1  # key length, type, smallest value
MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset


class GGUFFile:
    """``metadata`` (key -> Python value) and ``tensors`` (name -> (type name, shape, data view))."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise EdgeQwenError(f"{self.path}: file not found") from None
        with open(self.path, "rb") as f:
            head = f.read(24)
        if len(head) < 24 or head[:4] != GGUF_MAGIC:
            raise EdgeQwenError(f"{self.path}: not a GGUF file (bad magic)")
        version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
        if version not in SUPPORTED_VERSIONS:
            raise EdgeQwenError(f"{self.path}: GGUF version {version} is not supported (only {SUPPORTED_VERSIONS})")
        if n_kv * MIN_KV_BYTES + n_tensors * MIN_TENSOR_INFO_BYTES > size:
            raise EdgeQwenError(f"{self.path}: header claims {n_tensors} tensors and {n_kv} metadata entries, "
                                f"more than the {size}-byte file can hold (truncated or corrupt)")
        try:
            import gguf
        except ImportError:
            raise EdgeQwenError("reading GGUF files needs the 'gguf' package (pip install gguf)") from None
        try:
            reader = gguf.GGUFReader(str(self.path))
        except (ValueError, KeyError, IndexError, struct.error, OverflowError, MemoryError, UnicodeDecodeError,
                TypeError) as e:
            raise EdgeQwenError(f"{self.path}: corrupt GGUF ({type(e).__name__}: {str(e)[:120]})") from None
        self.metadata = {}
        for key, field in reader.fields.items():
            self.metadata[key] = _field_value(field)
        self.tensors: dict[str, tuple[str, tuple[int, ...], np.ndarray]] = {}
        for t in reader.tensors:
            tid = int(t.tensor_type)
            if tid not in GGML_TYPES:
                raise EdgeQwenError(f"{self.path}: tensor {t.name!r} has type {t.tensor_type.name}, "
                                    f"not supported (supported: {', '.join(n for n, _, _ in GGML_TYPES.values())})")
            name, block, nbytes = GGML_TYPES[tid]
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # (rows, cols)
            if shape[-1] % block:
                raise EdgeQwenError(f"{self.path}: tensor {t.name!r} has {shape[-1]} columns, not a multiple of "
                                    f"the {name} block of {block}")
            data = t.data
            if name == "BF16":
                data = data.view(np.uint16)
            elif name == "F16":
                data = data.view(np.int16)
            elif block > 1:
                data = data.reshape(-1, shape[-1] // block * nbytes)
            self.tensors[t.name] = (name, shape, data.reshape(shape) if block == 1 else data)

    def get(self, key, default=None):
        return self.metadata.get(key, default)


def _field_value(field):
    import gguf

    types = field.types
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.ARRAY:
        if len(types) > 1 and types[1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].tolist()[0] if len(field.parts[i]) == 1 else field.parts[i].tolist()
                for i in field.data]
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    value = field.parts[field.data[0]].tolist()
    return value[0] if len(value) == 1 else value
