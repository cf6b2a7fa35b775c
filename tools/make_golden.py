#!/usr/bin/env python
"""Build the tiny reference checkpoints and transformers' outputs the exactness tests compare with.

Needs the `reference` extra (torch + transformers). Run from the repository root:

    python tools/make_golden.py            # writes tests/fixtures/golden/*

Each model is a random Qwen3 built by transformers itself, saved with save_pretrained, plus
``reference.npz`` with, per prompt, transformers' logits for every position and a 32-token
greedy continuation. Weights are drawn O(1) (not the tiny init scale) so that logits spread
widely and a wrong kernel cannot hide under rounding.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "golden"
N_GREEDY = 32

# name -> (config overrides, storage dtype, extra: sharded / old-style config)
MODELS = {
    # tied embeddings, GQA 2, head_dim 32 != hidden/heads = 16, theta 1e6, a prompt longer than one
    # attention block (128) so the online softmax crosses block boundaries
    "tied-gqa2-f32": (dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=1e6,
                           tie_word_embeddings=True, max_position_embeddings=512), "float32",
                      dict(old_config=True)),
    # untied, GQA 4, theta 5e6 (the 2507 models), 4 layers, vocab not a power of two
    "untied-gqa4-f32": (dict(vocab_size=600, hidden_size=96, intermediate_size=200, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=2, head_dim=16, rope_theta=5e6,
                             tie_word_embeddings=False, max_position_embeddings=256), "float32", {}),
    # plain multi-head attention (GQA 1), bf16 weights, saved as a sharded checkpoint
    "mha-bf16-sharded": (dict(vocab_size=520, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=4, head_dim=16, rope_theta=1e6,
                              tie_word_embeddings=False, max_position_embeddings=256), "bfloat16",
                         dict(sharded=True)),
    # fp16 weights, tied, GQA 2
    "tied-gqa2-f16": (dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=1e6,
                           tie_word_embeddings=True, max_position_embeddings=256), "float16", {}),
}

PROMPT_LENGTHS = (7, 150)


def build(name, overrides, dtype, extra, seed):
    torch.manual_seed(seed)
    cfg = Qwen3Config(rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, **overrides)
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "embed_tokens" in pname:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    model = model.to(getattr(torch, dtype))
    return cfg, model


def reference_outputs(directory, vocab, seed):
    """Logits for each prompt and greedy continuations, computed in float32 on the stored weights.

    The checkpoint is loaded back from disk (weights widened on load), so buffers such as RoPE's
    inverse frequencies are computed in float32 as they are for any user of the saved model.
    """
    model32 = Qwen3ForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    rng = np.random.default_rng(seed)
    out, margins = {}, []
    with torch.no_grad():
        for n in PROMPT_LENGTHS:
            ids = rng.integers(0, vocab, size=n)
            logits = model32(torch.tensor(ids[None])).logits[0].numpy().astype(np.float32)
            out[f"ids_{n}"] = ids.astype(np.int64)
            out[f"logits_{n}"] = logits
        seq = list(out[f"ids_{PROMPT_LENGTHS[0]}"])
        for _ in range(N_GREEDY):
            last = model32(torch.tensor([seq])).logits[0, -1].numpy()
            top2 = np.sort(last)[-2:]
            margins.append(float(top2[1] - top2[0]))
            seq.append(int(np.argmax(last)))
        out["greedy"] = np.array(seq[PROMPT_LENGTHS[0]:], np.int64)
    return out, min(margins)


TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "edgeqwen" / "data" / "qwen3-tokenizer"
TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Emoji: 🤖🚀👩‍👩‍👧‍👦 🇯🇵 and café naïve résumé",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>",
    "   leading spaces, tabs\tand\r\nnewlines\n\n\n",
    "Mixed: Здравствуй мир, مرحبا بالعالم, नमस्ते दुनिया, 1234567890",
]

SAMPLING = [  # (temperature, top_k, top_p, min_p)
    (1.0, 0, 1.0, 0.0), (0.7, 20, 1.0, 0.0), (0.6, 20, 0.95, 0.0), (1.0, 0, 0.8, 0.0),
    (1.3, 0, 1.0, 0.1), (0.7, 50, 0.8, 0.05), (1.0, 1, 1.0, 0.0), (0.5, 0, 0.3, 0.0),
]


def tokenizer_golden():
    """transformers' token ids for TEXTS with the real Qwen3 tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    return [{"text": t, "ids": tok.encode(t, add_special_tokens=False)} for t in TEXTS]


CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hi there!"}],
    "system": [{"role": "system", "content": "You are a terse assistant."},
               {"role": "user", "content": "Name three colours."}],
    "multi-turn": [{"role": "user", "content": "What is 2+2?"},
                   {"role": "assistant", "content": "4"},
                   {"role": "user", "content": "And times 3?"}],
    "history-with-thinking": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Is 17 prime?"},
        {"role": "assistant", "content": "<think>\nCheck divisors up to 4.\n</think>\n\nYes, 17 is prime."},
        {"role": "user", "content": "And 21? /no_think"},
        {"role": "assistant", "content": "<think>\n\n</think>\n\nNo: 3 x 7."},
        {"role": "user", "content": "Thanks! 你好 🤖"}],
    "soft-switch": [{"role": "user", "content": "Explain RoPE /think"}],
}


def chat_golden():
    """transformers' apply_chat_template strings for CONVERSATIONS, thinking on and off."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    out = []
    for name, messages in CONVERSATIONS.items():
        for thinking in (True, False):
            for gen_prompt in (True, False):
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen_prompt,
                                               enable_thinking=thinking)
                out.append({"name": name, "messages": messages, "enable_thinking": thinking,
                            "add_generation_prompt": gen_prompt, "text": text})
    return out


def sampling_golden():
    """Probabilities after transformers' temperature / top-k / top-p / min-p logits processors."""
    from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper,
                                                        TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    rng = np.random.default_rng(7)
    logits = (rng.standard_normal((len(SAMPLING), 1000)) * 3).astype(np.float32)
    probs = []
    for row, (temp, k, p, mp) in zip(logits, SAMPLING):
        procs = LogitsProcessorList([TemperatureLogitsWarper(temp)])
        if k:
            procs.append(TopKLogitsWarper(k))
        if p < 1.0:
            procs.append(TopPLogitsWarper(p))
        if mp > 0:
            procs.append(MinPLogitsWarper(mp))
        scores = procs(None, torch.tensor(row[None], dtype=torch.float64))
        probs.append(torch.softmax(scores, -1)[0].numpy())
    return {"logits": logits, "params": np.array(SAMPLING, np.float64), "probs": np.array(probs)}


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    (OUT / "tokenizer.json").write_text(json.dumps(tokenizer_golden(), ensure_ascii=False, indent=1) + "\n")
    np.savez_compressed(OUT / "sampling.npz", **sampling_golden())
    (OUT / "chat_template.json").write_text(json.dumps(chat_golden(), ensure_ascii=False, indent=1) + "\n")
    summary = {}
    for i, (name, (overrides, dtype, extra)) in enumerate(MODELS.items()):
        seed = 1000 + i
        cfg, model = build(name, overrides, dtype, extra, seed)
        d = OUT / name
        model.save_pretrained(d, max_shard_size="200KB" if extra.get("sharded") else "2GB")
        if extra.get("sharded"):
            assert (d / "model.safetensors.index.json").exists(), "expected a sharded save"
        if extra.get("old_config"):
            # the pre-2025 config.json form: rope_theta at the top level, torch_dtype
            c = json.loads((d / "config.json").read_text())
            c["rope_theta"] = c.pop("rope_parameters")["rope_theta"]
            c["torch_dtype"] = c.pop("dtype", "float32")
            (d / "config.json").write_text(json.dumps(c, indent=2))
        ref, margin = reference_outputs(d, overrides["vocab_size"], seed)
        if dtype != "float32":
            # the same weights run natively in their own dtype, for the documented bound
            native = Qwen3ForCausalLM.from_pretrained(d, dtype=getattr(torch, dtype)).eval()
            with torch.no_grad():
                ids = ref[f"ids_{PROMPT_LENGTHS[-1]}"]
                ref["native_logits"] = native(torch.tensor(ids[None])).logits[0].float().numpy()
        np.savez_compressed(d / "reference.npz", **ref)
        summary[name] = {"dtype": dtype, "min_greedy_margin": margin, "torch": torch.__version__,
                         "transformers": __import__("transformers").__version__}
        print(f"{name}: min greedy top1-top2 margin {margin:.4f}", file=sys.stderr)
    (OUT / "SUMMARY.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
