#!/usr/bin/env python
"""Quality loss of quantized checkpoints against their source: KL divergence and top-1 agreement.

    python tools/quant_quality.py --ref models/qwen3-0.6b-synth models/q8 models/q4 [-n 256]

Logits for the same ``-n`` random token positions (teacher-forced) are compared position by position.
"""

import argparse

import numpy as np

import edgeqwen


def log_softmax(z):
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", required=True)
    ap.add_argument("models", nargs="+")
    ap.add_argument("-n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    ref = edgeqwen.load(a.ref, tokenizer=False)
    ids = np.random.default_rng(a.seed).integers(0, min(ref.config.vocab_size, 150000), size=a.n)
    lp = log_softmax(ref.logits(ids))
    print(f"reference {a.ref} ({ref.format_name}), {a.n} positions")
    print(f"{'model':40s} {'format':>18s} {'mean KL':>10s} {'max KL':>10s} {'top-1 agree':>12s}")
    for path in a.models:
        m = edgeqwen.load(path, tokenizer=False)
        lq = log_softmax(m.logits(ids))
        kl = (np.exp(lp) * (lp - lq)).sum(-1)
        agree = (lp.argmax(-1) == lq.argmax(-1)).mean()
        print(f"{path:40s} {m.format_name:>18s} {kl.mean():10.5f} {kl.max():10.5f} {100 * agree:11.1f}%")


if __name__ == "__main__":
    main()
