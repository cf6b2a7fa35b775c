"""The KV cache: preallocated once, passed into every forward call."""

from __future__ import annotations

import os

import numpy as np

from .config import ModelConfig
from .errors import EdgeQwenError


def kv_cache_bytes(config: ModelConfig, ctx: int) -> int:
    """Bytes a float32 cache of ``ctx`` positions needs (keys and values, all layers)."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * ctx * config.head_dim * 4


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


class KVCache:
    """Keys and values of every layer for up to ``ctx`` positions; ``pos`` tokens are filled."""

    def __init__(self, config: ModelConfig, ctx: int):
        if ctx <= 0:
            raise EdgeQwenError(f"context length must be positive, got {ctx}")
        if ctx > config.max_position_embeddings:
            raise EdgeQwenError(
                f"context length {ctx} exceeds the model's max_position_embeddings {config.max_position_embeddings}"
            )
        need = kv_cache_bytes(config, ctx)
        avail = available_memory()
        if avail is not None and need > avail:
            raise EdgeQwenError(
                f"a KV cache of {ctx} positions needs {need / 2**30:.2f} GiB but only "
                f"{avail / 2**30:.2f} GiB is available; use a smaller context"
            )
        # position-major, so the first tokens of a long context touch few pages
        shape = (config.num_hidden_layers, ctx, config.num_key_value_heads, config.head_dim)
        self.k = np.zeros(shape, np.float32)  # (layers, ctx, kv_heads, head_dim)
        self.v = np.zeros(shape, np.float32)  # (layers, ctx, kv_heads, head_dim)
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
