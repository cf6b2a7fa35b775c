"""The llama.cpp side of side-by-side benchmarks: export a checkpoint to GGUF, time llama.cpp on it.

Needs the optional packages ``gguf`` (writing) and ``llama-cpp-python`` (running). Tensors keep
their Hugging Face meaning under llama.cpp's names; the Qwen3 architecture uses NeoX RoPE, so
no Q/K permutation is applied.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .config import load_config
from .errors import EdgeQwenError
from .storage import open_safetensors_dir
from .storage.safetensors import to_float32

GGUF_TYPES = ("BF16", "F16", "F32", "Q8_0", "Q4_0")

_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    """llama.cpp's tensor name for a Hugging Face Qwen3 tensor name."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")
    return f"blk.{parts[2]}.{_NAMES['.'.join(parts[3:])]}"


def _vocab(directory: Path, n_vocab: int):
    tj = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [5] * n_vocab  # unused
    for tok, i in tj["model"]["vocab"].items():
        if i < n_vocab:
            tokens[i], types[i] = tok, 1  # normal
    for added in tj.get("added_tokens", []):
        if added["id"] < n_vocab:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = 3 if added.get("special") else 4  # control / user-defined
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    return tokens, types, merges


def write_gguf(model_dir: str | Path, out_path: str | Path, matrix_type: str = "Q4_0",
               embedding_type: str | None = None) -> Path:
    """Export a dense Qwen3 checkpoint to GGUF with every matrix in ``matrix_type``, the embedding
    (the tied lm_head) in ``embedding_type`` (default: the same)."""
    import gguf

    embedding_type = embedding_type or matrix_type
    for t in (matrix_type, embedding_type):
        if t not in GGUF_TYPES:
            raise EdgeQwenError(f"GGUF export type must be one of {GGUF_TYPES}, got {t!r}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    cfg = load_config(model_dir)
    store = open_safetensors_dir(model_dir)
    w = gguf.GGUFWriter(str(out_path) + ".tmp", "qwen3")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_file_type({"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "BF16": 32}[matrix_type])
    if not (model_dir / "tokenizer.json").exists():
        # tiny test checkpoints have no tokenizer: a placeholder vocabulary, fed token ids only
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(["a", "b", "ab"] + [f"<t{i}>" for i in range(3, cfg.vocab_size)])
        w.add_token_types([1] * cfg.vocab_size)
        w.add_token_merges(["a b"])  # llama.cpp insists on merges
    else:
        tokens, types, merges = _vocab(model_dir, cfg.vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        eos = cfg.eos_ids()
        if eos:
            w.add_eos_token_id(eos[0])
    for name in store.names():
        a = store.get(name)
        dtype = store.dtype(name)
        ttype = embedding_type if name in ("model.embed_tokens.weight", "lm_head.weight") else matrix_type
        qtype = getattr(gguf.GGMLQuantizationType, ttype)
        if a.ndim == 1:
            w.add_tensor(gguf_name(name), to_float32(a, dtype))
        elif ttype == "BF16" and dtype == "BF16":
            w.add_tensor(gguf_name(name), np.ascontiguousarray(a), raw_dtype=qtype)
        else:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(to_float32(a, dtype), qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    Path(str(out_path) + ".tmp").replace(out_path)
    return out_path


class LlamaCpp:
    """llama.cpp (through llama-cpp-python) loaded on a GGUF file, timed like edgeqwen's bench."""

    def __init__(self, gguf_path: str | Path, threads: int, n_ctx: int = 512):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise EdgeQwenError("llama-cpp-python is not installed (pip install llama-cpp-python)") from None
        self.llm = Llama(model_path=str(gguf_path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                         n_batch=n_ctx, n_ubatch=n_ctx, verbose=False, logits_all=False)

    def run(self, prompt_ids, gen_tokens: int) -> tuple[float, float]:
        """(prefill tok/s for one eval of the prompt, decode tok/s over ``gen_tokens`` single-token evals)."""
        llm = self.llm
        llm.reset()
        llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
        t0 = time.perf_counter()
        llm.eval(list(map(int, prompt_ids)))
        prefill = len(prompt_ids) / (time.perf_counter() - t0)
        token = int(prompt_ids[-1])
        t0 = time.perf_counter()
        for _ in range(gen_tokens):
            llm.eval([token])
        decode = gen_tokens / (time.perf_counter() - t0)
        return prefill, decode
