#!/usr/bin/env python
"""Batch decoding throughput: generated tokens/s at several batch sizes, same requests each time.

    python tools/bench_batch.py -m MODEL -B 1,2,4,8 --requests 16 --prompt 32 --gen 64 -t 2
"""

import argparse
import time

import numba
import numpy as np

import edgeqwen
from edgeqwen.batch import BatchRunner, Request


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-B", "--batch-sizes", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=2)
    a = ap.parse_args()
    numba.set_num_threads(a.threads)
    model = edgeqwen.load(a.model)
    model.tokenizer.eos_ids = []  # run every request to its full length (random weights, or not)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, model.config.vocab_size, size=a.prompt).tolist() for _ in range(a.requests)]

    def requests():
        return [Request(i, p, a.gen, {"temperature": 0.0}, None, []) for i, p in enumerate(prompts)]

    list(BatchRunner(model, 2, 256).run(requests()[:2]))  # compile / warm up
    base = base_decode = None
    print(f"{a.model} ({model.format_name}): {a.requests} requests x {a.gen} tokens, prompt {a.prompt}, "
          f"{a.threads} threads")
    print("gen tok/s: generated tokens / wall time (prompts prefilled inside it); "
          "decode tok/s: the batched decode steps alone")
    print(f"{'batch':>5s} {'gen tok/s':>10s} {'vs B=1':>7s} {'decode tok/s':>13s} {'vs B=1':>7s} {'wall s':>7s}")
    for b in map(int, a.batch_sizes.split(",")):
        runner = BatchRunner(model, b, a.prompt + a.gen + 8)
        t0 = time.perf_counter()
        n = sum(r["completion_tokens"] for r in runner.run(requests()))
        dt = time.perf_counter() - t0
        dec = runner.decode_tokens / runner.decode_s
        base = base or n / dt
        base_decode = base_decode or dec
        print(f"{b:5d} {n / dt:10.1f} {n / dt / base:7.2f} {dec:13.1f} {dec / base_decode:7.2f} {dt:7.1f}")


if __name__ == "__main__":
    main()
