"""Synthetic checkpoints: random weights in the exact shapes of the real Qwen3 models.

Speed does not depend on weight values, so these stand in for the real models in every
benchmark. Each tensor comes from its own seeded generator, so a checkpoint is the same on every
machine, and the real Qwen3 tokenizer files make the directory look like the hub's.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np

from .errors import EdgeQwenError
from .storage.safetensors import write_safetensors

TOKENIZER_DIR = Path(__file__).parent / "data" / "qwen3-tokenizer"

_COMMON = dict(vocab_size=151936, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
               rope_theta=1000000.0, num_key_value_heads=8, hidden_act="silu", attention_bias=False,
               attention_dropout=0.0, bos_token_id=151643, eos_token_id=151645, model_type="qwen3",
               architectures=["Qwen3ForCausalLM"], initializer_range=0.02, use_cache=True,
               use_sliding_window=False, sliding_window=None, max_window_layers=28, rope_scaling=None)

PRESETS = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, tie_word_embeddings=True),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, tie_word_embeddings=True),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, tie_word_embeddings=False),
}

GENERATION_CONFIG = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                     "pad_token_id": 151643, "temperature": 0.6, "top_k": 20, "top_p": 0.95}

ST_DTYPE = {"bf16": "BF16", "f16": "F16", "f32": "F32", "fp8": "F8_E4M3"}
FP8_BLOCK = 128


def preset_config(preset: str, **overrides) -> dict:
    """The config.json dictionary of ``preset`` (see PRESETS), with ``overrides`` applied."""
    if preset not in PRESETS:
        raise EdgeQwenError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    cfg = dict(_COMMON, **PRESETS[preset])
    cfg.update(overrides)
    return cfg


def tensor_specs(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of a Qwen3 checkpoint with config ``cfg``, in file order."""
    h, i, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    specs = [("model.embed_tokens.weight", (cfg["vocab_size"], h))]
    for li in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{li}."
        specs += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "self_attn.q_norm.weight", (hd,)),
            (p + "self_attn.k_norm.weight", (hd,)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    specs.append(("model.norm.weight", (h,)))
    if not cfg.get("tie_word_embeddings"):
        specs.append(("lm_head.weight", (cfg["vocab_size"], h)))
    return specs


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bits (uint16), to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def f32_to_e4m3(x: np.ndarray) -> np.ndarray:
    """Round float32 values (already within +-448) to the nearest e4m3 byte."""
    from .quantize import _e4m3_table

    table = _e4m3_table()[:0x7F]  # the 127 non-negative finite codes, ascending
    mag = np.abs(x)
    idx = np.clip(np.searchsorted(table, mag), 1, 0x7E)
    lower = table[idx - 1]
    idx = np.where(mag - lower < table[idx] - mag, idx - 1, idx)
    return (idx | np.where(x < 0, 0x80, 0)).astype(np.uint8)


def _fp8_tensor(name: str, shape, seed: int):
    """(e4m3 bytes, bf16 scale_inv tiles) of a random matrix, as Qwen's FP8 releases store them."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    n, k = shape
    w = rng.standard_normal((n, k), dtype=np.float32) * np.float32(0.02)
    sn, sk = -(-n // FP8_BLOCK), -(-k // FP8_BLOCK)
    pad = np.zeros((sn * FP8_BLOCK, sk * FP8_BLOCK), np.float32)
    pad[:n, :k] = np.abs(w)
    amax = pad.reshape(sn, FP8_BLOCK, sk, FP8_BLOCK).max(axis=(1, 3))
    scale = f32_to_bf16(np.maximum(amax, 1e-12) / np.float32(448.0))
    s32 = (scale.astype(np.uint32) << 16).view(np.float32)
    full = np.repeat(np.repeat(s32, FP8_BLOCK, 0)[:n], FP8_BLOCK, 1)[:, :k]
    return f32_to_e4m3(np.clip(w / full, -448, 448)), scale


def _random_tensor(name: str, shape, dtype: str, seed: int, rows_per_chunk: int = 4096):
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    is_norm = len(shape) == 1
    rows = shape[0] if len(shape) == 2 else 1
    cols = shape[-1]
    for r0 in range(0, rows, rows_per_chunk):
        n = min(rows_per_chunk, rows - r0)
        x = rng.standard_normal((n, cols), dtype=np.float32)
        x = (1.0 + 0.1 * x) if is_norm else x * np.float32(0.02)
        if dtype == "bf16":
            yield f32_to_bf16(x)
        elif dtype == "f16":
            yield x.astype(np.float16)
        else:
            yield x.astype(np.float32)


def synth_checkpoint(out_dir: str | os.PathLike, preset: str = "qwen3-0.6b", dtype: str = "bf16",
                     seed: int = 0, progress=None, **overrides) -> Path:
    """Write a random-weight Qwen3 checkpoint in ``preset``'s shapes to ``out_dir``; return its path.

    ``progress(done_bytes, total_bytes)`` is called after each tensor. The directory is built
    under a temporary name and renamed when complete.
    """
    if dtype not in ST_DTYPE:
        raise EdgeQwenError(f"unknown dtype {dtype!r} (choose from {', '.join(ST_DTYPE)})")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise EdgeQwenError(f"{out}: exists and is not empty")
    cfg = preset_config(preset, torch_dtype={"bf16": "bfloat16", "f16": "float16", "f32": "float32",
                                             "fp8": "bfloat16"}[dtype], **overrides)
    specs = tensor_specs(cfg)
    itemsize = 4 if dtype == "f32" else 2
    total = sum(int(np.prod(s)) * itemsize for _, s in specs)
    plan = []  # (name, safetensors dtype, shape)
    for name, shape in specs:
        if dtype == "fp8" and name.endswith("proj.weight"):
            plan += [(name, "F8_E4M3", shape),
                     (name + "_scale_inv", "BF16", (-(-shape[0] // FP8_BLOCK), -(-shape[1] // FP8_BLOCK)))]
        else:
            plan.append((name, "BF16" if dtype == "fp8" else ST_DTYPE[dtype], shape))
    if dtype == "fp8":
        cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                      "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    done = [0]
    shapes = dict(specs)

    fp8_scales = {}

    def produce(name):
        if name in fp8_scales:
            yield fp8_scales.pop(name)
            return
        if dtype == "fp8" and name.endswith("proj.weight"):
            q, scale = _fp8_tensor(name, shapes[name], seed)
            fp8_scales[name + "_scale_inv"] = scale
            yield q
        else:
            yield from _random_tensor(name, shapes[name], "bf16" if dtype == "fp8" else dtype, seed)
        done[0] += int(np.prod(shapes[name])) * itemsize
        if progress:
            progress(done[0], total)

    write_safetensors(tmp / "model.safetensors", plan, produce,
                      metadata={"format": "pt", "edgeqwen_synth": f"{preset} seed={seed}"})
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZER_DIR / f, tmp / f)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out
