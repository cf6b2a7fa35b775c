"""Offline conversion of a Hugging Face Qwen3 directory to the MLX affine int4/int8 layout.

Streams tensor by tensor (and large tensors in row chunks), so peak memory stays near one chunk
of one tensor. The output is written under ``DST.partial`` and renamed only when complete.
The arithmetic is mlx's: per group, the extreme of larger magnitude is represented exactly.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .config import load_config, read_json
from .errors import EdgeQwenError
from .storage import open_safetensors_dir
from .storage.safetensors import to_float32, write_safetensors
from .synth import f32_to_bf16
from .weights import AFFINE_BITS, AFFINE_GROUPS, fp8_block

ROWS_PER_CHUNK = 4096
COPY_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja",
              "special_tokens_map.json", "vocab.json", "merges.txt", "LICENSE", "README.md")


def affine_quantize(w: np.ndarray, bits: int, group_size: int):
    """(q (N, K) uint32 codes, scales (N, G) f32, biases (N, G) f32) for a float32 matrix, as mlx does it."""
    n_bins = (1 << bits) - 1
    g = w.reshape(w.shape[0], -1, group_size).astype(np.float32)
    w_max, w_min = g.max(-1), g.min(-1)
    mask = np.abs(w_min) > np.abs(w_max)
    scales = np.maximum((w_max - w_min) / np.float32(n_bins), np.float32(1e-7)).astype(np.float32)
    scales = np.where(mask, scales, -scales)
    edge = np.where(mask, w_min, w_max)
    q0 = np.round(edge / scales)
    scales = np.where(q0 != 0, edge / np.where(q0 != 0, q0, 1), scales).astype(np.float32)
    biases = np.where(q0 == 0, 0, edge).astype(np.float32)
    q = np.clip(np.round((g - biases[..., None]) / scales[..., None]), 0, n_bins).astype(np.uint32)
    return q.reshape(w.shape), scales, biases


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """uint32 words (N, K * bits / 32) holding codes low bits first."""
    per = 32 // bits
    words = np.zeros((q.shape[0], q.shape[1] // per), np.uint32)
    for i in range(per):
        words |= q[:, i::per] << np.uint32(bits * i)
    return words


def _from_f32(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return f32_to_bf16(a)
    if dtype == "F16":
        return a.astype(np.float16).view(np.int16)
    return a.astype(np.float32)


def _is_quantizable(name: str, shape, group_size: int) -> bool:
    return (len(shape) == 2 and shape[-1] % group_size == 0
            and (name.endswith("proj.weight") or name in ("model.embed_tokens.weight", "lm_head.weight")))


def quantize_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, bits: int = 4, group_size: int = 64,
                        embed_bits: int | None = None, progress=None) -> Path:
    """Convert ``src`` to the MLX affine layout in ``dst``; returns ``dst``.

    ``embed_bits`` (e.g. 8) keeps the embedding and lm_head at a higher precision.
    ``progress(done_bytes, total_bytes)`` is called as source tensors are consumed.
    """
    src, dst = Path(src), Path(dst)
    if bits not in AFFINE_BITS or group_size not in AFFINE_GROUPS:
        raise EdgeQwenError(f"unsupported --bits {bits} / --group-size {group_size} "
                            f"(bits {AFFINE_BITS}, group sizes {AFFINE_GROUPS})")
    if embed_bits is not None and embed_bits not in AFFINE_BITS:
        raise EdgeQwenError(f"unsupported --embed-bits {embed_bits} (choose from {AFFINE_BITS})")
    if dst.exists():
        raise EdgeQwenError(f"{dst}: already exists; choose a new destination")
    cfg = load_config(src)
    raw_cfg = read_json(src / "config.json")
    if cfg.quantization and fp8_block(cfg.quantization) is None:
        raise EdgeQwenError(f"{src}: already quantized ({cfg.quantization.get('bits', '?')} bits); "
                            "quantize from a bf16/fp16/fp32 or FP8 checkpoint")
    block = fp8_block(cfg.quantization)
    store = open_safetensors_dir(src)

    # the dtype scales, biases and unquantized tensors are written in
    float_dtypes = {store.dtype(n) for n in store.names() if store.dtype(n) in ("BF16", "F16", "F32")}
    out_dtype = "BF16" if "BF16" in float_dtypes or not float_dtypes else sorted(float_dtypes)[0]

    plan = []  # (name, dtype, shape) of the output, in order
    modules = {}  # weight name -> (bits, module name)
    for name in store.names():
        if name.endswith(".weight_scale_inv"):
            continue
        shape = store.shape(name)
        if _is_quantizable(name, shape, group_size):
            module = name[: -len(".weight")]
            b = embed_bits if embed_bits and module in ("model.embed_tokens", "lm_head") else bits
            modules[name] = (b, module)
            n, k = shape
            plan += [(name, "U32", (n, k * b // 32)), (module + ".scales", out_dtype, (n, k // group_size)),
                     (module + ".biases", out_dtype, (n, k // group_size))]
        else:
            dtype = store.dtype(name)
            plan.append((name, dtype if dtype != "F8_E4M3" else out_dtype, shape))
    total = sum(store.nbytes_of(n) for n in store.names())
    done = [0]
    pending: dict[str, np.ndarray] = {}

    def source_rows(name, r0, r1):
        a = store.get(name)[r0:r1]
        dtype = store.dtype(name)
        if dtype == "F8_E4M3":
            s = to_float32(store.get(name + "_scale_inv"), store.dtype(name + "_scale_inv"))
            bn, bk = block
            table = _e4m3_table()
            full = np.repeat(np.repeat(s, bn, 0)[r0:r1], bk, 1)[:, : a.shape[1]]
            return table[a] * full
        return to_float32(a, dtype)

    def produce(name):
        if name in pending:
            yield pending.pop(name)
            return
        if name in modules:
            b, module = modules[name]
            n, k = store.shape(name)
            scales = np.empty((n, k // group_size), np.float32)
            biases = np.empty_like(scales)
            for r0 in range(0, n, ROWS_PER_CHUNK):
                r1 = min(n, r0 + ROWS_PER_CHUNK)
                q, scales[r0:r1], biases[r0:r1] = affine_quantize(source_rows(name, r0, r1), b, group_size)
                yield pack(q, b)
            pending[module + ".scales"] = _from_f32(scales, out_dtype)
            pending[module + ".biases"] = _from_f32(biases, out_dtype)
        elif store.dtype(name) == "F8_E4M3":
            yield _from_f32(source_rows(name, 0, store.shape(name)[0]), out_dtype)
        else:
            yield store.get(name)
        done[0] += store.nbytes_of(name)
        if progress:
            progress(done[0], total)

    tmp = dst.with_name(dst.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_safetensors(tmp / "model.safetensors", plan, produce, metadata={"format": "mlx"})
    qcfg = {"group_size": group_size, "bits": bits, "mode": "affine"}
    if embed_bits:
        for name, (b, module) in modules.items():
            if module in ("model.embed_tokens", "lm_head"):
                qcfg[module] = {"group_size": group_size, "bits": b}
    raw_cfg.pop("quantization_config", None)
    raw_cfg["quantization"] = qcfg
    raw_cfg["quantization_config"] = dict(qcfg)
    (tmp / "config.json").write_text(json.dumps(raw_cfg, indent=2) + "\n")
    for f in COPY_FILES:
        if (src / f).exists():
            shutil.copyfile(src / f, tmp / f)
    os.replace(tmp, dst)
    return dst


_E4M3 = None


def _e4m3_table() -> np.ndarray:
    """float32 value of every e4m3 byte (NaN codes included)."""
    global _E4M3
    if _E4M3 is None:
        b = np.arange(256, dtype=np.uint32)
        sign = np.where(b & 0x80, -1.0, 1.0)
        e, m = (b >> 3) & 0xF, b & 0x7
        val = np.where(e == 0, m / 8.0 * 2.0 ** -6, (1 + m / 8.0) * 2.0 ** (e.astype(np.float64) - 7))
        val[(b & 0x7F) == 0x7F] = np.nan
        _E4M3 = (sign * val).astype(np.float32)
    return _E4M3
