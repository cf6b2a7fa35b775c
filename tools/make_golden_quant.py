#!/usr/bin/env python
"""Golden fixtures for the quantized formats, made by the reference implementations.

    python tools/make_golden_quant.py      # needs mlx[cpu], mlx-lm, torch, transformers

- ``src-bf16``: a tiny random Qwen3 built by transformers (bf16), the input of every conversion.
- ``int4-g64``, ``int4-g32``, ``int8-g128``, ``int4-g128-f32`` and ``mixed-4-8``: that model quantized by
  mlx-lm's own converter (``mlx_lm.convert``; ``mixed-4-8`` keeps down_proj and the embedding at 8
  bits through a per-layer quant_predicate). ``reference.npz`` holds mlx-lm's logits for fixed
  prompts and a 32-token greedy continuation, computed in float32 (every non-quantized parameter
  upcast exactly) so the comparison measures the quantized matmuls, not bf16 activation rounding.
- ``fp8-bf16``, ``fp8-f16``, ``fp8-f32``: the official Qwen3 FP8 layout (F8_E4M3 weights, one
  ``weight_scale_inv`` per 128x128 tile, partial last tiles, lm_head left in bf16) written with
  torch's float8_e4m3fn, with transformers' float32 logits on the dequantized weights.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "golden_quant"
TOKENIZER = ROOT / "edgeqwen" / "data" / "qwen3-tokenizer"
PROMPTS = (9, 70)
N_GREEDY = 32

CONFIG = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=32, rope_theta=1e6, tie_word_embeddings=True,
              max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
# FP8 shapes that are not multiples of the 128x128 tile, so the last tiles are partial
FP8_CONFIG = dict(CONFIG, hidden_size=192, intermediate_size=320, num_attention_heads=6, num_key_value_heads=2,
                  tie_word_embeddings=False)


def random_model(cfg: dict, seed: int) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return model


def prompts(vocab: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {f"ids_{n}": rng.integers(0, vocab, size=n).astype(np.int64) for n in PROMPTS}


def with_tokenizer(directory: Path) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / f, directory / f)


def without_tokenizer(directory: Path) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "README.md"):
        (directory / f).unlink(missing_ok=True)


# -- mlx-lm ------------------------------------------------------------------------------------

def mlx_reference(directory: Path, ids: dict) -> dict:
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm import load

    model, _ = load(str(directory))
    # upcast every float parameter that is not a packed weight (exact), so mlx computes in float32
    model.update(tree_map(lambda v: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v,
                          model.parameters()))
    out = dict(ids)
    for key, value in ids.items():
        logits = model(mx.array(value)[None])
        out["logits_" + key.split("_")[1]] = np.array(logits[0].astype(mx.float32))
    seq = [int(t) for t in ids[f"ids_{PROMPTS[0]}"]]
    margins = []
    for _ in range(N_GREEDY):
        last = np.array(model(mx.array(seq)[None])[0, -1].astype(mx.float32))
        top2 = np.sort(last)[-2:]
        margins.append(float(top2[1] - top2[0]))
        seq.append(int(last.argmax()))
    out["greedy"] = np.array(seq[PROMPTS[0]:], np.int64)
    return out, min(margins)


def mlx_convert(src: Path, dst: Path, bits: int, group: int, dtype: str | None = None, predicate=None):
    from mlx_lm import convert

    convert(str(src), str(dst), quantize=True, q_bits=bits, q_group_size=group, dtype=dtype,
            quant_predicate=predicate)


def mixed_predicate(path, module, config=None):
    if "down_proj" in path or "embed_tokens" in path:
        return {"bits": 8, "group_size": 64}
    return True


# -- FP8 -----------------------------------------------------------------------------------------

def fp8_quantize(w: torch.Tensor, block: int = 128):
    """(e4m3 weight, scale_inv) with one scale per block x block tile, as Qwen's FP8 releases store."""
    n, k = w.shape
    sn, sk = -(-n // block), -(-k // block)
    scale = torch.empty(sn, sk, dtype=torch.float32)
    q = torch.empty(n, k, dtype=torch.float8_e4m3fn)
    for i in range(sn):
        for j in range(sk):
            tile = w[i * block:(i + 1) * block, j * block:(j + 1) * block].float()
            s = tile.abs().max().clamp(min=1e-12) / 448.0
            scale[i, j] = s
            q[i * block:(i + 1) * block, j * block:(j + 1) * block] = (tile / s).to(torch.float8_e4m3fn)
    return q, scale


def make_fp8(name: str, scale_dtype, seed: int) -> tuple[float, int]:
    from safetensors.torch import save_file

    model = random_model(FP8_CONFIG, seed).to(torch.bfloat16)
    d = OUT / name
    d.mkdir(parents=True)
    tensors, dequant = {}, {}
    for key, value in model.state_dict().items():
        if key.endswith("proj.weight"):
            q, s = fp8_quantize(value)
            s = s.to(scale_dtype)
            tensors[key] = q
            tensors[key + "_scale_inv"] = s
            full = s.float().repeat_interleave(128, 0)[: value.shape[0]].repeat_interleave(128, 1)[:, : value.shape[1]]
            dequant[key] = q.float() * full
        else:
            tensors[key] = value.contiguous()
            dequant[key] = value.float()
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads(Qwen3Config(**FP8_CONFIG).to_json_string())
    cfg.update(dtype="bfloat16", quantization_config={"activation_scheme": "dynamic", "fmt": "e4m3",
                                                       "quant_method": "fp8", "weight_block_size": [128, 128],
                                                       "modules_to_not_convert": ["lm_head"]})
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    ref32 = Qwen3ForCausalLM(Qwen3Config(**FP8_CONFIG)).eval().float()
    ref32.load_state_dict(dequant)
    ids = prompts(FP8_CONFIG["vocab_size"], seed)
    out = dict(ids)
    with torch.no_grad():
        for key, value in ids.items():
            out["logits_" + key.split("_")[1]] = ref32(torch.tensor(value[None])).logits[0].numpy()
        seq = list(ids[f"ids_{PROMPTS[0]}"])
        margins = []
        for _ in range(N_GREEDY):
            last = ref32(torch.tensor([seq])).logits[0, -1].numpy()
            top2 = np.sort(last)[-2:]
            margins.append(float(top2[1] - top2[0]))
            seq.append(int(last.argmax()))
    out["greedy"] = np.array(seq[PROMPTS[0]:], np.int64)
    np.savez_compressed(d / "reference.npz", **out)
    return min(margins), len(tensors)


def main():
    import mlx_lm

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    summary = {}
    src = OUT / "src-bf16"
    random_model(CONFIG, 2000).to(torch.bfloat16).save_pretrained(src)
    ids = prompts(CONFIG["vocab_size"], 2000)
    np.savez_compressed(src / "prompts.npz", **ids)
    variants = {
        "int4-g64": dict(bits=4, group=64),
        "int4-g32": dict(bits=4, group=32),
        "int8-g128": dict(bits=8, group=128),
        "int4-g128-f32": dict(bits=4, group=128, dtype="float32"),
        "mixed-4-8": dict(bits=4, group=64, predicate=mixed_predicate),
    }
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"
        shutil.copytree(src, hf)
        with_tokenizer(hf)
        for name, v in variants.items():
            dst = OUT / name
            mlx_convert(hf, dst, v["bits"], v["group"], v.get("dtype"), v.get("predicate"))
            without_tokenizer(dst)
            ref, margin = mlx_reference(dst, ids)
            np.savez_compressed(dst / "reference.npz", **ref)
            summary[name] = {"min_greedy_margin": margin}
            print(f"{name}: margin {margin:.4f}", file=sys.stderr)
    for i, (name, dt) in enumerate({"fp8-bf16": torch.bfloat16, "fp8-f16": torch.float16,
                                    "fp8-f32": torch.float32}.items()):
        margin, n = make_fp8(name, dt, 3000 + i)
        summary[name] = {"min_greedy_margin": margin}
        print(f"{name}: margin {margin:.4f}", file=sys.stderr)
    # every e4m3 byte as torch decodes it, for the exhaustive decode test
    table = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    np.save(OUT / "e4m3_table.npy", table)
    summary["versions"] = {"mlx_lm": mlx_lm.__version__, "torch": torch.__version__,
                           "transformers": __import__("transformers").__version__}
    (OUT / "SUMMARY.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
