"""Measurements: memory read bandwidth, prefill and decode speed of a loaded model."""

from __future__ import annotations

import statistics
import time

import numpy as np

from .kernels import membw


def read_bandwidth(n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Best-of-``repeats`` streaming read bandwidth in bytes/s with the current thread count."""
    a = np.ones((n_bytes // 4096, 1024), np.float32)
    partial = np.empty(a.shape[0], np.float32)
    membw.stream_sum(a, partial)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        membw.stream_sum(a, partial)
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best


def bench_model(model, prompt_tokens: int = 128, gen_tokens: int = 64, repeats: int = 3, seed: int = 0) -> dict:
    """Prefill ``prompt_tokens`` then decode ``gen_tokens`` one by one, ``repeats`` times (after a warm-up)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, min(model.config.vocab_size, 150000), size=prompt_tokens)
    cache = model.new_cache(prompt_tokens + gen_tokens + 1)
    model.forward(ids[:8], cache)  # warm-up: compile / load the kernels for both paths
    model.forward(ids[:1], cache)
    prefill, decode = [], []
    for _ in range(repeats):
        cache.reset()
        t0 = time.perf_counter()
        logits = model.forward(ids, cache)
        prefill.append(prompt_tokens / (time.perf_counter() - t0))
        token = np.array([int(np.argmax(logits[0]))], np.int64)
        t0 = time.perf_counter()
        for _ in range(gen_tokens):
            token[0] = int(np.argmax(model.forward(token, cache)[0]))
        decode.append(gen_tokens / (time.perf_counter() - t0))
    per_token = model.weight_bytes()
    d = statistics.mean(decode)
    return {
        "prefill_tps": statistics.mean(prefill), "prefill_sd": statistics.pstdev(prefill),
        "decode_tps": d, "decode_sd": statistics.pstdev(decode),
        "bytes_per_token": per_token, "decode_gbps": d * per_token / 1e9,
    }
