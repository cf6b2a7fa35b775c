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


# -- the `edgeqwen bench` command's measurements ---------------------------------------------------

PRESET_FORMATS = ("bf16", "int8", "int4", "fp8")
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
              "asimd", "asimddp", "asimdhp", "sve", "sve2", "i8mm", "bf16")


def machine_facts() -> dict:
    """CPU model, architecture, SIMD flags, cores, library versions and Numba's threading layer."""
    import os
    import platform

    import numba

    model, flags = platform.processor() or "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model", "hardware") and not model:
                    model = value.strip()
                elif key in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not started"
    return {"cpu": model or platform.machine(), "arch": platform.machine(),
            "simd": [f for f in SIMD_FLAGS if f in flags], "cores": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "threading_layer": layer}


def synthetic_model(preset: str, fmt: str, cache_dir=None, progress=None):
    """Path of a synthetic ``preset`` checkpoint in ``fmt``, generated once under the user cache."""
    import os
    from pathlib import Path

    from .errors import EdgeQwenError
    from .quantize import quantize_checkpoint
    from .synth import synth_checkpoint

    if fmt not in PRESET_FORMATS:
        raise EdgeQwenError(f"unknown format {fmt!r} (choose from {', '.join(PRESET_FORMATS)})")
    root = Path(cache_dir or os.environ.get("EDGEQWEN_CACHE")
                or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeqwen") / "synth"
    root.mkdir(parents=True, exist_ok=True)
    base = root / f"{preset}-bf16"
    if not (base / "config.json").exists():
        synth_checkpoint(base, preset, "bf16", seed=0, progress=progress)
    if fmt == "bf16":
        return base
    out = root / f"{preset}-{fmt}"
    if not (out / "config.json").exists():
        if fmt == "fp8":
            synth_checkpoint(out, preset, "fp8", seed=0, progress=progress)
        else:
            quantize_checkpoint(base, out, bits=4 if fmt == "int4" else 8, group_size=64, progress=progress)
    return out


def llama_cpp_type(fmt: str) -> tuple[str, str]:
    """The GGUF types (matrices, embedding) with the same bytes per weight as an edgeqwen format:
    official FP8 checkpoints keep the embedding (the tied lm_head) in BF16, so its GGUF does too."""
    matrices = {"bf16": "BF16", "int8": "Q8_0", "fp8": "Q8_0", "int4": "Q4_0"}.get(fmt, "Q8_0")
    return matrices, "BF16" if fmt == "fp8" else matrices


COLD_START = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import edgeqwen
t1 = time.perf_counter()
m = edgeqwen.load(sys.argv[1], tokenizer=False)
t2 = time.perf_counter()
c = m.new_cache(64)
m.forward(np.arange(4) + 100, c)
t3 = time.perf_counter()
m.forward(np.array([5]), c)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_prefill_s": t3 - t2, "first_decode_s": t4 - t3,
                  "to_first_token_s": t4 - t0}))
"""


def cold_start(model_path, fresh_compile: bool = False) -> dict:
    """Timings of a new process from import to its first decoded token.

    ``fresh_compile`` points Numba at an empty cache directory, measuring first-run JIT compilation.
    """
    import json
    import os
    import subprocess
    import sys
    import tempfile

    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if fresh_compile:
            env["NUMBA_CACHE_DIR"] = tmp
        p = subprocess.run([sys.executable, "-c", COLD_START, str(model_path)], capture_output=True, text=True,
                           env=env, timeout=1800)
    if p.returncode:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"}
    return json.loads(p.stdout)


def bench_config(model, threads: int, prompt_tokens: int, gen_tokens: int, repeats: int, ctx_depth: int = 0,
                 bandwidth: float | None = None, seed: int = 0) -> dict:
    """One row of `edgeqwen bench`: prefill, TTFT and decode at ``ctx_depth`` with ``threads`` threads."""
    import numba

    numba.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    vocab = min(model.config.vocab_size, 150000)
    depth_ids = rng.integers(0, vocab, size=ctx_depth)
    ids = rng.integers(0, vocab, size=prompt_tokens)
    cache = model.new_cache(ctx_depth + prompt_tokens + gen_tokens + 1)
    model.forward(ids[:9], cache)  # warm-up (eight tokens or more have their own kernels)
    model.forward(ids[:1], cache)
    prefill, decode, ttft = [], [], []
    for _ in range(repeats):
        cache.reset()
        if ctx_depth:
            model.forward(depth_ids, cache)
        t0 = time.perf_counter()
        logits = model.forward(ids, cache)
        token = np.array([int(np.argmax(logits[0]))], np.int64)
        t1 = time.perf_counter()
        prefill.append(prompt_tokens / (t1 - t0))
        ttft.append(t1 - t0)
        for _ in range(gen_tokens):
            token[0] = int(np.argmax(model.forward(token, cache)[0]))
        decode.append(gen_tokens / (time.perf_counter() - t1))
    per_token = model.weight_bytes()
    d = statistics.mean(decode)
    row = {"threads": threads, "prompt": prompt_tokens, "gen": gen_tokens, "ctx_depth": ctx_depth,
           "prefill_tps": statistics.mean(prefill), "prefill_sd": statistics.pstdev(prefill),
           "decode_tps": d, "decode_sd": statistics.pstdev(decode), "ttft_s": statistics.mean(ttft),
           "bytes_per_token": per_token, "decode_gbps": d * per_token / 1e9}
    if bandwidth:
        row["read_bandwidth_gbps"] = bandwidth / 1e9
        row["pct_of_bandwidth"] = 100 * d * per_token / bandwidth
    return row


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plot(results: list[dict], path) -> None:
    """A bar chart of decode and prefill tok/s for each result row of each run (needs matplotlib)."""
    from .errors import EdgeQwenError

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgeQwenError("--plot needs matplotlib (pip install matplotlib)") from None
    labels, dec, pre = [], [], []
    for run in results:
        for row in run["rows"]:
            labels.append(f"{run['machine']['cpu'][:24]}\n{run['model_name']} t={row['threads']}"
                          + (f" d={row['ctx_depth']}" if row["ctx_depth"] else ""))
            dec.append(row["decode_tps"])
            pre.append(row["prefill_tps"])
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(labels)), 4.5))
    for ax, values, title in ((axes[0], dec, "decode tok/s"), (axes[1], pre, "prefill tok/s")):
        bars = ax.bar(range(len(values)), values, color="#4c72b0")
        ax.set_xticks(range(len(values)), labels, fontsize=7)
        ax.set_title(title)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
