#!/usr/bin/env python
"""edgeqwen and llama.cpp side by side on the same weights, interleaved, same threads.

    python tools/bench_vs_llamacpp.py -m MODEL_DIR -g MODEL.gguf -t 2 -p 128 -n 64 -r 3

Prefill = one forward of the whole prompt; decode = ``-n`` single-token steps. Runs alternate
(edgeqwen, llama.cpp, edgeqwen, ...) so machine drift hits both.
"""

import argparse
import statistics

import numba
import numpy as np

import edgeqwen
from edgeqwen.bench import bench_config
from edgeqwen.llamacpp import LlamaCpp


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-g", "--gguf", required=True)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--prompt", type=int, default=128)
    ap.add_argument("-n", "--gen", type=int, default=64)
    ap.add_argument("-r", "--repeats", type=int, default=3)
    a = ap.parse_args()
    numba.set_num_threads(a.threads)
    model = edgeqwen.load(a.model, tokenizer=False)
    llama = LlamaCpp(a.gguf, a.threads, n_ctx=a.prompt + a.gen + 8)
    ids = np.random.default_rng(0).integers(0, min(150000, model.config.vocab_size), size=a.prompt)
    llama.run(ids[:8], 2)  # warm-up
    bench_config(model, a.threads, 8, 2, 1)
    ours, theirs = [], []
    for _ in range(a.repeats):
        r = bench_config(model, a.threads, a.prompt, a.gen, 1)
        ours.append((r["prefill_tps"], r["decode_tps"]))
        theirs.append(llama.run(ids, a.gen))
    op, od = (statistics.mean(x) for x in zip(*ours))
    tp, td = (statistics.mean(x) for x in zip(*theirs))
    gb = model.weight_bytes() / 1e9
    print(f"{a.model} vs {a.gguf}: threads {a.threads}, prompt {a.prompt}, gen {a.gen}, {a.repeats} interleaved runs")
    print(f"{'':10s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'decode GB/s':>12s}")
    print(f"{'edgeqwen':10s} {op:14.1f} {od:13.1f} {od * gb:12.1f}")
    print(f"{'llama.cpp':10s} {tp:14.1f} {td:13.1f}")
    print(f"{'ratio':10s} {op / tp:14.2f} {od / td:13.2f}")


if __name__ == "__main__":
    main()
