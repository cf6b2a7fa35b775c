#!/usr/bin/env python
"""Decode tok/s of a (tiny) model: a smoke figure for emulated or unusual machines.

    python tools/tiny_speed.py MODEL_DIR_OR_GGUF [-n 64]
"""

import argparse
import platform
import time

import numpy as np

import edgeqwen


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("-n", type=int, default=64)
    a = ap.parse_args()
    m = edgeqwen.load(a.model, tokenizer=False)
    cache = m.new_cache(a.n + 16)
    logits = m.forward(np.arange(8) + 1, cache)
    token = np.array([int(logits[0].argmax())])
    m.forward(token, cache)  # compile / warm
    t0 = time.perf_counter()
    for _ in range(a.n - 1):
        token[0] = int(m.forward(token, cache)[0].argmax())
    dt = time.perf_counter() - t0
    print(f"{platform.machine()}: {m.format_name} decode {(a.n - 1) / dt:.1f} tok/s ({a.model})")


if __name__ == "__main__":
    main()
