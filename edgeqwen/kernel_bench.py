"""`edgeqwen bench --kernels`: every weight format's matvec / batch / prefill kernel on the Qwen3
shapes, in GB/s of weight bytes and GFLOP/s, next to the machine's read bandwidth and FMA peak."""

from __future__ import annotations

import time

import numpy as np
from numba import njit, prange

from .kernels.simd import fma_chains, fma_shape
from .synth import f32_to_bf16 as _bf16
from .weights import Affine, Dense, Fp8Block, aligned_empty, gguf_matrix

# (N, K): q/o 1024x1024 (0.6B), k/v-sized and MLP of 0.6B, the 151936-row lm_head, the 4B MLP
SHAPES = ((1024, 1024), (3072, 1024), (1024, 3072), (151936, 1024), (2560, 9728), (9728, 2560))
FORMATS = ("bf16", "f16", "f32", "int4-g32", "int4-g64", "int4-g128", "int8-g32", "int8-g64", "int8-g128",
           "fp8", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")
OPS = {"matvec": 1, "batch4": 4, "batch8": 8, "prefill128": 128}  # tokens per call
# byte offsets of the f16 scales in one block of each llama.cpp type: (block bytes, weights, offsets)
_GGUF_LAYOUT = {"Q8_0": (34, 32, (0,)), "Q4_0": (18, 32, (0,)), "Q4_1": (20, 32, (0, 2)),
                "Q4_K": (144, 256, (0, 2)), "Q6_K": (210, 256, (208,))}


def _aligned(a: np.ndarray) -> np.ndarray:
    # a copy starting on a 64-byte line, as weights are in the files edgeqwen writes (NumPy's own
    # allocations start anywhere, and a kernel's speed then depends on the allocator's luck)
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def make_weight(fmt: str, n: int, k: int, seed: int = 0):
    """A random (n, k) weight in ``fmt`` with finite values (content does not matter for speed)."""
    if fmt.endswith(":exact"):  # the float32-activation decode path of a quantized format
        w = make_weight(fmt[:-6], n, k, seed)
        w.int8_activations = False
        return w
    rng = np.random.default_rng(seed)
    if fmt in ("bf16", "f16", "f32"):
        w = rng.standard_normal((n, k), np.float32) * 0.02
        data = {"bf16": lambda: _bf16(w), "f16": lambda: w.astype(np.float16).view(np.int16), "f32": lambda: w}[fmt]()
        return Dense(_aligned(data), fmt)
    if fmt.startswith(("int4", "int8")):
        bits, gs = int(fmt[3]), int(fmt.split("-g")[1])
        wq = rng.integers(0, 256, (n, k * bits // 8), dtype=np.uint8)
        scales = _bf16(rng.uniform(0.001, 0.01, (n, k // gs)))
        biases = _bf16(rng.uniform(-0.05, 0.0, (n, k // gs)))
        return Affine(_aligned(wq), _aligned(scales), _aligned(biases), bits, gs)
    if fmt == "fp8":
        wq = rng.integers(0, 256, (n, k), dtype=np.uint8) & 0xF7  # no NaN codes (0x7F / 0xFF)
        return Fp8Block(_aligned(wq), _bf16(rng.uniform(0.001, 0.01, (-(-n // 128), -(-k // 128)))), 128, 128)
    size, per, offsets = _GGUF_LAYOUT[fmt]
    raw = rng.integers(0, 256, (n, k // per, size), dtype=np.uint8)
    for o in offsets:
        raw[:, :, o:o + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    return gguf_matrix(raw.reshape(n, -1), fmt, (n, k))


@njit(parallel=True, cache=True, nogil=True)
def _fma_loop(n_iter, out):
    # out: (threads, 1) f32; each thread runs simd.fma_chains' register-resident FMA chains
    a = np.array([0.999, 0.001], np.float32)
    for t in prange(out.shape[0]):
        fma_chains(n_iter, a, out[t])


def fma_peak(threads: int) -> float:
    """Measured float32 FLOP/s of independent FMAs on ``threads`` threads (the compute ceiling)."""
    lanes, chains = fma_shape()
    out = np.zeros((threads, 1), np.float32)
    _fma_loop(10, out)
    n_iter = 20_000_000  # ~0.1 s: shorter runs end before the second thread is at full speed
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        _fma_loop(n_iter, out)
        best = min(best, time.perf_counter() - t0)
    return threads * n_iter * lanes * chains * 2 / best


def _time(fn, min_s: float) -> float:
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_s and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_kernels(formats, shapes, ops, threads: int, bandwidth: float, peak: float, min_s: float = 0.2,
                  progress=None) -> list[dict]:
    """One row per (format, shape, op): seconds per call, GB/s of weights, GFLOP/s, % of the ceilings."""
    import numba

    numba.set_num_threads(threads)
    rows = []
    for fmt in formats:
        for n, k in shapes:
            w = make_weight(fmt, n, k)
            matvec_s = None
            for op in ops:
                t = OPS[op]
                x = np.random.default_rng(1).standard_normal((t, k), np.float32)
                out = np.empty((t, n), np.float32)
                call = (lambda: w.matmul(x, out)) if op == "prefill128" else (lambda: w.matvec(x, out))
                if progress:
                    progress(f"{fmt} {n}x{k} {op} t={threads}")
                s = _time(call, min_s)
                gbps = w.nbytes / s / 1e9
                gflops = 2 * n * k * t / s / 1e9
                row = {"format": fmt, "n": n, "k": k, "op": op, "tokens": t, "threads": threads, "ms": s * 1e3,
                       "gbps": gbps, "gflops": gflops, "pct_bandwidth": 100 * gbps * 1e9 / bandwidth,
                       "pct_fma_peak": 100 * gflops * 1e9 / peak}
                if op == "matvec":
                    matvec_s = s
                elif matvec_s:
                    row["speedup_vs_matvec"] = t * matvec_s / s  # tokens/s relative to one-token matvec
                rows.append(row)
    return rows


def format_table(rows: list[dict], bandwidth: float, peak: float) -> str:
    """The rows as a fixed-width table: GB/s for matvec, GFLOP/s for the rest, with percentages."""
    threads = rows[0]["threads"] if rows else 0
    lines = [f"{threads} thread(s): read bandwidth {bandwidth / 1e9:.1f} GB/s, FMA peak {peak / 1e9:.0f} GFLOP/s "
             f"(both measured in this run); x matvec = tokens/s against one-token matvec",
             f"{'format':10s} {'shape':>12s} {'op':>10s} {'thr':>3s} {'ms':>9s} {'GB/s':>7s} {'%bw':>5s} "
             f"{'GFLOP/s':>8s} {'%peak':>6s} {'x matvec':>8s}"]
    for r in rows:
        lines.append(f"{r['format']:10s} {r['n']:>6d}x{r['k']:<5d} {r['op']:>10s} {r['threads']:3d} {r['ms']:9.3f} "
                     f"{r['gbps']:7.1f} {r['pct_bandwidth']:4.0f}% {r['gflops']:8.1f} {r['pct_fma_peak']:5.0f}% "
                     + (f"{r['speedup_vs_matvec']:8.2f}" if "speedup_vs_matvec" in r else f"{'':8s}"))
    return "\n".join(lines)
