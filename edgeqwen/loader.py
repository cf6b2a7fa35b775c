"""load(path): a model directory on disk -> a ready Qwen3Model with its tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import ModelConfig, load_config
from .errors import EdgeQwenError
from .model import Layer, Qwen3Model
from .storage import open_safetensors_dir
from .tokenizer import Tokenizer
from .weights import load_dense, load_linear, load_vector


def _bias(store, name, size):
    if name not in store:
        return None
    return load_dense(store, name, (size,)).row_f32().astype(np.float32)


def build_model(cfg: ModelConfig, store, tokenizer=None, path: str = "") -> Qwen3Model:
    """Map the tensors of ``store`` onto a Qwen3Model (every shape checked against ``cfg``)."""
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    qc = cfg.quantization

    def linear(module, shape):
        return load_linear(store, module, shape, qc)

    embed = linear("model.embed_tokens", (cfg.vocab_size, h))
    layers = []
    for li in range(cfg.num_hidden_layers):
        p = f"model.layers.{li}."
        layers.append(Layer(
            input_layernorm=load_vector(store, p + "input_layernorm.weight", h),
            q_proj=linear(p + "self_attn.q_proj", (cfg.q_dim, h)),
            k_proj=linear(p + "self_attn.k_proj", (cfg.kv_dim, h)),
            v_proj=linear(p + "self_attn.v_proj", (cfg.kv_dim, h)),
            o_proj=linear(p + "self_attn.o_proj", (h, cfg.q_dim)),
            q_norm=load_vector(store, p + "self_attn.q_norm.weight", hd),
            k_norm=load_vector(store, p + "self_attn.k_norm.weight", hd),
            post_attention_layernorm=load_vector(store, p + "post_attention_layernorm.weight", h),
            gate_proj=linear(p + "mlp.gate_proj", (i, h)),
            up_proj=linear(p + "mlp.up_proj", (i, h)),
            down_proj=linear(p + "mlp.down_proj", (h, i)),
            q_bias=_bias(store, p + "self_attn.q_proj.bias", cfg.q_dim),
            k_bias=_bias(store, p + "self_attn.k_proj.bias", cfg.kv_dim),
            v_bias=_bias(store, p + "self_attn.v_proj.bias", cfg.kv_dim),
        ))
    if cfg.tie_word_embeddings:
        lm_head = embed
    else:
        lm_head = linear("lm_head", (cfg.vocab_size, h))
    norm = load_vector(store, "model.norm.weight", h)
    kinds = sorted({embed.kind, lm_head.kind} | {getattr(layer, m).kind for layer in layers for m in
                   ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")})
    model = Qwen3Model(cfg, embed, layers, norm, lm_head, tokenizer=tokenizer, path=path,
                       format_name="/".join(kinds))
    model.tensor_count = len(store.names())
    model.file_bytes = store.total_bytes()
    return model


def load(path: str | Path, tokenizer: bool = True) -> Qwen3Model:
    """Load a Qwen3 Hugging Face directory (single-file or sharded safetensors), memory-mapped.

    The tokenizer comes from the directory's tokenizer.json; without one, ``model.tokenizer`` is
    None and the model takes token ids only.
    """
    path = Path(path)
    if not path.exists():
        raise EdgeQwenError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix == ".safetensors":
            path = path.parent
        else:
            raise EdgeQwenError(f"{path}: unsupported model file (give a Hugging Face model directory)")
    cfg = load_config(path)
    store = open_safetensors_dir(path)
    tok = Tokenizer.from_dir(path, cfg) if tokenizer and (path / "tokenizer.json").exists() else None
    return build_model(cfg, store, tokenizer=tok, path=str(path))
