"""ModelConfig: the numbers that define a Qwen3 decoder, read from a Hugging Face directory."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EdgeQwenError

SUPPORTED_MODEL_TYPES = ("qwen3",)


@dataclass
class GenerationDefaults:
    """What generation_config.json recommends; None where it is silent."""

    eos_token_ids: list[int] = field(default_factory=list)
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    do_sample: bool | None = None


@dataclass
class ModelConfig:
    """Shape and numerics of one Qwen3 dense decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    model_type: str = "qwen3"
    torch_dtype: str = "bfloat16"
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    quantization: dict | None = None
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    qk_norm: bool = True  # Qwen3: per-head RMSNorm on q and k; Qwen2 / Llama have none
    rope_interleaved: bool = False  # llama.cpp's llama layout rotates adjacent pairs (its Q/K rows are permuted)

    @property
    def kv_mul(self) -> int:
        """Query heads per key/value head (the GQA ratio)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def eos_ids(self) -> list[int]:
        """Token ids that end generation: generation_config's, else config's."""
        ids = self.generation.eos_token_ids or self.eos_token_id
        return list(dict.fromkeys(ids))

    @classmethod
    def from_dict(cls, d: dict, where: str = "config.json") -> "ModelConfig":
        """Validate a config.json dictionary; errors name ``where`` and the key."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise EdgeQwenError(
                f"{where}: unknown model_type {model_type!r} (edgeqwen runs: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )

        def need(key, kind=int):
            if key not in d or d[key] is None:
                raise EdgeQwenError(f"{where}: missing key {key!r}")
            value = d[key]
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise EdgeQwenError(f"{where}: {key!r} must be an integer, got {value!r}")
            if kind is float and not isinstance(value, (int, float)):
                raise EdgeQwenError(f"{where}: {key!r} must be a number, got {value!r}")
            return value

        hidden = need("hidden_size")
        heads = need("num_attention_heads")
        kv_heads = d.get("num_key_value_heads") or heads
        head_dim = d.get("head_dim") or (hidden // heads if heads else 0)
        rope = d.get("rope_parameters") or {}
        scaling = d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        if rope_type != "default":
            raise EdgeQwenError(f"{where}: rope scaling {rope_type!r} is not supported yet (only the default RoPE)")
        theta = rope.get("rope_theta", d.get("rope_theta", 1e6))
        eos = d.get("eos_token_id")
        cfg = cls(
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_hidden_layers=need("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            max_position_embeddings=int(d.get("max_position_embeddings", 40960)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", False)),
            model_type=model_type,
            torch_dtype=str(d.get("torch_dtype") or d.get("dtype") or "bfloat16"),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=[eos] if isinstance(eos, int) else list(eos or []),
            quantization=d.get("quantization") or d.get("quantization_config"),
        )
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "config") -> None:
        """Reject impossible shapes before any weight is touched."""
        positive = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")
        for key in positive:
            if not isinstance(getattr(self, key), int) or getattr(self, key) <= 0:
                raise EdgeQwenError(f"{where}: {key} must be a positive integer, got {getattr(self, key)!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise EdgeQwenError(
                f"{where}: num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise EdgeQwenError(f"{where}: head_dim {self.head_dim} must be even for RoPE")
        if not self.rope_theta > 0:
            raise EdgeQwenError(f"{where}: rope_theta must be positive, got {self.rope_theta}")
        if not self.rms_norm_eps > 0:
            raise EdgeQwenError(f"{where}: rms_norm_eps must be positive, got {self.rms_norm_eps}")


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or an EdgeQwenError naming it."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeQwenError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgeQwenError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise EdgeQwenError(f"{path}: expected a JSON object")
    return value


def load_config(directory: str | Path) -> ModelConfig:
    """ModelConfig from ``config.json`` plus ``generation_config.json`` when present."""
    directory = Path(directory)
    path = directory / "config.json"
    if not path.exists():
        raise EdgeQwenError(f"{directory}: no config.json (is this a Hugging Face model directory?)")
    cfg = ModelConfig.from_dict(read_json(path), where=str(path))
    gen_path = directory / "generation_config.json"
    if gen_path.exists():
        g = read_json(gen_path)
        eos = g.get("eos_token_id")
        cfg.generation = GenerationDefaults(
            eos_token_ids=[eos] if isinstance(eos, int) else list(eos or []),
            temperature=g.get("temperature"),
            top_k=g.get("top_k"),
            top_p=g.get("top_p"),
            min_p=g.get("min_p"),
            do_sample=g.get("do_sample"),
        )
    return cfg


GGUF_ARCHITECTURES = ("qwen3", "qwen2", "llama")


def config_from_gguf(gf) -> ModelConfig:
    """ModelConfig from GGUF metadata (architectures qwen3, qwen2, llama)."""
    where = str(gf.path)
    arch = gf.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise EdgeQwenError(f"{where}: architecture {arch!r} is not supported (edgeqwen runs: "
                            f"{', '.join(GGUF_ARCHITECTURES)})")

    def need(key):
        value = gf.get(f"{arch}.{key}")
        if value is None:
            raise EdgeQwenError(f"{where}: missing metadata {arch}.{key}")
        return value

    hidden = need("embedding_length")
    heads = need("attention.head_count")
    kv = gf.get(f"{arch}.attention.head_count_kv") or heads
    if isinstance(heads, list) or isinstance(kv, list):
        raise EdgeQwenError(f"{where}: per-layer head counts are not supported")
    scaling = gf.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise EdgeQwenError(f"{where}: rope scaling {scaling!r} is not supported yet")
    tokens = gf.get("tokenizer.ggml.tokens") or []
    embd = gf.tensors.get("token_embd.weight")
    vocab = embd[1][0] if embd else len(tokens)
    eos = gf.get("tokenizer.ggml.eos_token_id")
    cfg = ModelConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=need("feed_forward_length"),
        num_hidden_layers=need("block_count"), num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=gf.get(f"{arch}.attention.key_length") or (hidden // heads if heads else 0),
        rms_norm_eps=float(gf.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(gf.get(f"{arch}.rope.freq_base", 10000.0)),
        max_position_embeddings=int(gf.get(f"{arch}.context_length", 4096)),
        tie_word_embeddings="output.weight" not in gf.tensors, attention_bias="blk.0.attn_q.bias" in gf.tensors,
        model_type=arch, torch_dtype="gguf", bos_token_id=gf.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=[eos] if eos is not None else [],
        qk_norm=arch == "qwen3", rope_interleaved=arch == "llama",
    )
    cfg.validate(where)
    return cfg
