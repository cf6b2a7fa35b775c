"""A strict, zero-copy safetensors reader.

The file is memory-mapped once; every tensor is a NumPy view into that map, so loading a
checkpoint costs page-table entries, not RAM. Every header field is validated before any
view is made, and every failure is an ``EdgeQwenError`` naming the file and the tensor.

Dtypes NumPy lacks are exposed as same-width integer views the kernels understand:
BF16 -> uint16, F16 -> int16 (so kernels can tell the two 16-bit floats apart by type),
F8_E4M3 -> uint8.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import EdgeQwenError

# safetensors dtype -> (numpy dtype of the view, bytes per element)
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<i2"),
    "BF16": np.dtype("<u2"),
    "F8_E4M3": np.dtype("u1"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("u1"),
}

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's own limit


def to_float32(a: np.ndarray, dtype: str) -> np.ndarray:
    """A float32 copy of a tensor view whose safetensors dtype is BF16, F16 or any numeric type."""
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F16":
        return a.view(np.float16).astype(np.float32)
    return a.astype(np.float32)


class SafetensorsFile:
    """One memory-mapped .safetensors file: ``names()``, ``dtype(name)``, ``get(name)``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise EdgeQwenError(f"{self.path}: file not found") from None
        if size < 8:
            raise EdgeQwenError(f"{self.path}: not a safetensors file ({size} bytes, too short for a header)")
        with open(self.path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise EdgeQwenError(
                    f"{self.path}: header length {header_len} runs past the end of the {size}-byte file "
                    "(truncated or not a safetensors file)"
                )
            raw = f.read(header_len)
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else None
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise EdgeQwenError(f"{self.path}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise EdgeQwenError(f"{self.path}: header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + header_len
        data_len = size - self._data_start
        self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        spans = []
        for name, info in header.items():
            self._entries[name] = self._check_entry(name, info, data_len)
            _, _, begin, end = self._entries[name]
            if end > begin:
                spans.append((begin, end, name))
        spans.sort()
        for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise EdgeQwenError(f"{self.path}: tensors {n0!r} and {n1!r} overlap (bytes {b1}..{e0})")

    def _check_entry(self, name, info, data_len):
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise EdgeQwenError(f"{where}: header entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPES:
            raise EdgeQwenError(f"{where}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise EdgeQwenError(f"{where}: bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
            raise EdgeQwenError(f"{where}: bad data_offsets {offsets!r}")
        begin, end = offsets
        if end > data_len:
            raise EdgeQwenError(f"{where}: data_offsets {offsets} run past the end of the data ({data_len} bytes); file truncated?")
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        if nbytes != end - begin:
            raise EdgeQwenError(f"{where}: shape {shape} of {dtype} needs {nbytes} bytes but the file holds {end - begin}")
        return dtype, tuple(shape), begin, end

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def dtype(self, name: str) -> str:
        """The safetensors dtype string (``"BF16"``, ``"F8_E4M3"``...)."""
        return self._entries[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def nbytes(self, name: str) -> int:
        _, _, begin, end = self._entries[name]
        return end - begin

    def get(self, name: str) -> np.ndarray:
        """A read-only view into the mapped file; no bytes are copied."""
        dtype, shape, begin, end = self._entries[name]
        np_dtype = DTYPES[dtype]
        if end == begin:
            return np.zeros(shape, dtype=np_dtype)
        offset = self._data_start + begin
        if offset % np_dtype.itemsize:
            # misaligned data (legal in the format, rare in practice): one copy of this tensor only
            return np.frombuffer(self._mmap, dtype=np.uint8, count=end - begin, offset=offset).view(np_dtype).copy().reshape(shape)
        return np.frombuffer(self._mmap, dtype=np_dtype, count=(end - begin) // np_dtype.itemsize, offset=offset).reshape(shape)


class TensorStore:
    """Tensors by name across one or more safetensors files (a sharded checkpoint)."""

    def __init__(self, files: dict[str, SafetensorsFile]):
        self.files = files  # tensor name -> file holding it

    def names(self) -> list[str]:
        return list(self.files)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def dtype(self, name: str) -> str:
        return self._file(name).dtype(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file(name).shape(name)

    def get(self, name: str) -> np.ndarray:
        return self._file(name).get(name)

    def nbytes_of(self, name: str) -> int:
        return self._file(name).nbytes(name)

    def where(self, name: str) -> str:
        """``file: tensor 'name'`` for error messages."""
        f = self.files.get(name)
        return f"{f.path}: tensor {name!r}" if f else f"tensor {name!r}"

    def total_bytes(self) -> int:
        return sum(f.nbytes(n) for n, f in self.files.items())

    def _file(self, name: str) -> SafetensorsFile:
        try:
            return self.files[name]
        except KeyError:
            raise EdgeQwenError(f"tensor {name!r} is missing from the checkpoint") from None


def open_safetensors_dir(directory: str | os.PathLike) -> TensorStore:
    """All tensors of a Hugging Face model directory: single file, sharded index, or loose shards."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    opened: dict[str, SafetensorsFile] = {}
    files: dict[str, SafetensorsFile] = {}
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise EdgeQwenError(f"{index}: not a valid safetensors index ({e})") from None
        for name, shard in weight_map.items():
            if shard not in opened:
                path = directory / shard
                if not path.exists():
                    raise EdgeQwenError(f"{index}: shard {shard!r} (holding {name!r}) is missing")
                opened[shard] = SafetensorsFile(path)
            if name not in opened[shard]:
                raise EdgeQwenError(f"{directory / shard}: tensor {name!r} named in the index is not in the shard")
            files[name] = opened[shard]
        return TensorStore(files)
    shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        raise EdgeQwenError(f"{directory}: no model.safetensors or safetensors shards found")
    for path in shards:
        st = SafetensorsFile(path)
        for name in st.names():
            if name in files:
                raise EdgeQwenError(f"{path}: tensor {name!r} also appears in {files[name].path}")
            files[name] = st
    return TensorStore(files)


NUMPY_TO_SAFETENSORS = {"float32": "F32", "float64": "F64", "int64": "I64", "int32": "I32", "uint32": "U32",
                        "int8": "I8", "uint8": "U8", "int16": "I16", "uint16": "U16"}


def write_safetensors(path: str | os.PathLike, specs, produce, metadata: dict | None = None) -> None:
    """Write a safetensors file tensor by tensor, never holding more than one tensor in memory.

    ``specs`` lists ``(name, dtype, shape)`` with safetensors dtype strings; ``produce(name)``
    returns the tensor's data (any array whose bytes are the stored bytes) or an iterable of
    such chunks in order. The file appears under its name only when complete (temp + rename).
    """
    path = Path(path)
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    # tensor data from a 64-byte boundary (a cache line: the kernels' vector loads of a mapped
    # tensor then never straddle two lines when its offset and row length are multiples of 64)
    raw += b" " * (-(8 + len(raw)) % 64)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, dtype, shape in specs:
                want = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
                data = produce(name)
                chunks = [data] if isinstance(data, np.ndarray) else data
                wrote = 0
                for chunk in chunks:
                    b = np.ascontiguousarray(chunk).view(np.uint8).reshape(-1)
                    f.write(memoryview(b))
                    wrote += b.nbytes
                if wrote != want:
                    raise EdgeQwenError(f"{path}: tensor {name!r} produced {wrote} bytes, header says {want}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
