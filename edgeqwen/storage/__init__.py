"""Bytes to named, memory-mapped arrays. Knows nothing about Qwen."""

import mmap

import numpy as np

from .safetensors import SafetensorsFile, TensorStore, open_safetensors_dir

__all__ = ["SafetensorsFile", "TensorStore", "open_safetensors_dir", "release_pages"]


def _mapping(a):
    """The mmap.mmap an array's bytes live in, or None."""
    base = a
    while base is not None:
        if isinstance(base, mmap.mmap):
            return base
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return None


def release_pages(a: np.ndarray) -> bool:
    """Drop this process's mapped pages under a file-backed array (they fault back in from the page
    cache if read again): once a tensor has been copied into another layout, the bytes it was read
    from need not count in the process's memory. False (and nothing done) when ``a`` is not backed
    by a file mapping."""
    mm = _mapping(a)
    if mm is None:
        return False
    if not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return True
    start = a.ctypes.data - np.frombuffer(mm, np.uint8, 1).ctypes.data
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the array only
    end = (start + a.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > first:
        mm.madvise(mmap.MADV_DONTNEED, first, end - first)
    return True
