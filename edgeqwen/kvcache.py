"""The KV cache: preallocated once, passed into every forward call."""

from __future__ import annotations

import os

import numpy as np

from .config import ModelConfig
from .errors import EdgeQwenError


KV_DTYPES = {"f32": np.float32, "f16": np.int16}  # f16 kept as its bits (see kernels.numeric)


def kv_cache_bytes(config: ModelConfig, ctx: int, dtype: str = "f32") -> int:
    """Bytes a cache of ``ctx`` positions needs (keys and values, all layers) in ``dtype`` (f32, f16)."""
    item = np.dtype(KV_DTYPES[dtype]).itemsize
    return 2 * config.num_hidden_layers * config.num_key_value_heads * ctx * config.head_dim * item


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes, or None where the OS does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_kv_dtype(dtype: str) -> str:
    """``dtype`` if it names a KV cache storage ("f32", "f16"), else an EdgeQwenError."""
    if dtype not in KV_DTYPES:
        raise EdgeQwenError(f"KV cache storage must be one of {sorted(KV_DTYPES)}, got {dtype!r}")
    return dtype


def _check(config: ModelConfig, ctx: int, dtype: str, slots: int = 1) -> None:
    check_kv_dtype(dtype)
    if ctx <= 0:
        raise EdgeQwenError(f"context length must be positive, got {ctx}")
    if ctx > config.max_position_embeddings:
        raise EdgeQwenError(
            f"context length {ctx} exceeds the model's max_position_embeddings {config.max_position_embeddings}"
        )
    need = slots * kv_cache_bytes(config, ctx, dtype)
    avail = available_memory()
    if avail is not None and need > avail:
        what = f"{slots} x {ctx}" if slots > 1 else f"{ctx}"
        raise EdgeQwenError(
            f"a KV cache of {what} positions needs {need / 2**30:.2f} GiB but only "
            f"{avail / 2**30:.2f} GiB is available; use a smaller context"
        )


class KVCache:
    """Keys and values of every layer for up to ``ctx`` positions; ``pos`` tokens are filled.

    ``dtype``: "f32", or "f16" (half the memory and the attention reads; llama.cpp's default).
    ``k``/``v`` may be given: views into a BatchKVCache slot.
    """

    def __init__(self, config: ModelConfig, ctx: int, k: np.ndarray | None = None, v: np.ndarray | None = None,
                 dtype: str = "f32"):
        if k is None:
            _check(config, ctx, dtype)
            # position-major, so the first tokens of a long context touch few pages
            shape = (config.num_hidden_layers, ctx, config.num_key_value_heads, config.head_dim)
            k = np.zeros(shape, KV_DTYPES[dtype])
            v = np.zeros(shape, KV_DTYPES[dtype])
        self.k = k  # (layers, ctx, kv_heads, head_dim) f32 or f16 bits
        self.v = v  # (layers, ctx, kv_heads, head_dim)
        self.ctx = ctx
        self.pos = 0
        self.tokens: list[int] = []  # the ids whose keys and values are cached, in order

    def trim(self, n: int) -> None:
        """Forget everything after the first ``n`` positions (stale entries are overwritten later)."""
        n = max(0, min(n, self.pos))
        self.pos = n
        del self.tokens[n:]

    def reset(self) -> None:
        self.trim(0)

    @property
    def free(self) -> int:
        return self.ctx - self.pos


class BatchKVCache:
    """``slots`` sequences' caches in one array, so one kernel call serves every sequence of a batch.

    ``seqs[s]`` is slot s as an ordinary KVCache (views, no copies) for prefill and bookkeeping.
    """

    def __init__(self, config: ModelConfig, slots: int, ctx: int, dtype: str = "f32"):
        _check(config, ctx, dtype, slots)
        # slot-major: each slot is a C-contiguous (layers, ctx, kv_heads, head_dim) cache, so the
        # single-sequence kernels see exactly the array layout they see with a plain KVCache
        shape = (slots, config.num_hidden_layers, ctx, config.num_key_value_heads, config.head_dim)
        self.k = np.zeros(shape, KV_DTYPES[dtype])  # (slots, layers, ctx, kv_heads, head_dim)
        self.v = np.zeros(shape, KV_DTYPES[dtype])  # (slots, layers, ctx, kv_heads, head_dim)
        self.ctx = ctx
        self.seqs = [KVCache(config, ctx, self.k[s], self.v[s]) for s in range(slots)]

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Give slot ``dst`` the first ``n`` cached positions of slot ``src`` (shared prompt prefixes)."""
        self.k[dst, :, :n] = self.k[src, :, :n]
        self.v[dst, :, :n] = self.v[src, :, :n]
        d = self.seqs[dst]
        d.pos = n
        d.tokens = list(self.seqs[src].tokens[:n])
