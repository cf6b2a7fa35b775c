#!/usr/bin/env python
"""Decode and prefill speed of one model next to the machine's read bandwidth.

    python tools/bench_core.py -m models/qwen3-0.6b-synth -t 2 -p 128 -n 64 -r 3
"""

import argparse
import time

import numba

import edgeqwen
from edgeqwen.bench import bench_config, read_bandwidth


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    ap.add_argument("-p", "--prompt", type=int, default=128)
    ap.add_argument("-n", "--gen", type=int, default=64)
    ap.add_argument("-r", "--repeats", type=int, default=3)
    a = ap.parse_args()
    numba.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model = edgeqwen.load(a.model, tokenizer=False)
    load_s = time.perf_counter() - t0
    bw = read_bandwidth()
    r = bench_config(model, a.threads, a.prompt, a.gen, a.repeats)
    print(f"model {a.model} ({model.format_name}), threads {a.threads}, load {load_s:.2f}s")
    print(f"read bandwidth        {bw / 1e9:6.1f} GB/s")
    print(f"prefill {a.prompt:4d} tokens   {r['prefill_tps']:6.1f} ± {r['prefill_sd']:.1f} tok/s")
    print(f"decode  {a.gen:4d} tokens   {r['decode_tps']:6.1f} ± {r['decode_sd']:.1f} tok/s  "
          f"{r['decode_gbps']:.1f} GB/s of weights ({100 * r['decode_gbps'] * 1e9 / bw:.0f}% of read bandwidth, "
          f"{r['bytes_per_token'] / 2**20:.0f} MiB per token)")


if __name__ == "__main__":
    main()
