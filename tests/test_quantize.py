"""`edgeqwen quantize` against mlx-lm's own converter, and its all-or-nothing output."""

import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import edgeqwen
from edgeqwen.errors import EdgeQwenError
from edgeqwen.quantize import quantize_checkpoint
from edgeqwen.storage import open_safetensors_dir

from conftest import FIXTURES, default_sigint

GQ = FIXTURES / "golden_quant"
SRC = GQ / "src-bf16"


@pytest.mark.parametrize("name,bits,gs", [("int4-g64", 4, 64), ("int4-g32", 4, 32), ("int8-g128", 8, 128)])
def test_output_equals_mlx_lm(tmp_path, name, bits, gs):
    out = quantize_checkpoint(SRC, tmp_path / "q", bits, gs)
    ours, theirs = open_safetensors_dir(out), open_safetensors_dir(GQ / name)
    assert sorted(ours.names()) == sorted(theirs.names())
    for n in theirs.names():
        assert ours.dtype(n) == theirs.dtype(n), n
        np.testing.assert_array_equal(ours.get(n), theirs.get(n), err_msg=n)
    model = edgeqwen.load(out)
    assert model.format_name == f"int{bits}-g{gs}"


def test_embed_bits_override(tmp_path):
    out = quantize_checkpoint(SRC, tmp_path / "q", 4, 64, embed_bits=8)
    m = edgeqwen.load(out)
    assert m.embed_tokens.kind == "int8-g64" and m.layers[0].q_proj.kind == "int4-g64"
    ids = np.load(SRC / "prompts.npz")["ids_70"]
    full = edgeqwen.load(SRC).logits(ids)
    all4 = np.load(GQ / "int4-g64" / "reference.npz")["logits_70"]
    # 8-bit embedding and lm_head: closer to the bf16 model than mlx-lm's all-int4 conversion
    assert np.abs(m.logits(ids) - full).mean() < 0.8 * np.abs(all4 - full).mean()


def test_fp8_source(tmp_path):
    out = quantize_checkpoint(GQ / "fp8-bf16", tmp_path / "q", 8, 64)
    m = edgeqwen.load(out)
    r = np.load(GQ / "fp8-bf16" / "reference.npz")
    got = m.logits(r["ids_70"])
    assert m.layers[0].q_proj.kind == "int8-g64" and m.lm_head.kind == "int8-g64"
    assert (got.argmax(-1) == r["logits_70"].argmax(-1)).mean() > 0.95
    err = np.abs(got - r["logits_70"])
    assert err.max() < 0.25 and err.mean() < 0.02  # int8 rounding of logits of scale ~5


def test_destination_exists(tmp_path):
    (tmp_path / "q").mkdir()
    with pytest.raises(EdgeQwenError, match="already exists"):
        quantize_checkpoint(SRC, tmp_path / "q", 4, 64)


def test_bad_group(tmp_path):
    with pytest.raises(EdgeQwenError, match="group-size 48"):
        quantize_checkpoint(SRC, tmp_path / "q", 4, 48)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_leaves_no_model(tmp_path, sig):
    big = edgeqwen.synth_checkpoint(tmp_path / "src", "qwen3-0.6b", "bf16", num_hidden_layers=12)
    dst = tmp_path / "dst"
    partial = tmp_path / "dst.partial" / "model.safetensors.tmp"
    p = subprocess.Popen([sys.executable, "-m", "edgeqwen.cli", "quantize", str(big), str(dst)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.time() + 60
    while not (partial.exists() and partial.stat().st_size > 10_000_000) and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "quantize finished before it could be interrupted"
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0
    assert not dst.exists()  # only the .partial directory remains, never a DST that looks complete
    if sig == signal.SIGINT:  # Ctrl-C: a one-line message, no traceback
        assert "interrupted" in err and "Traceback" not in err


@pytest.mark.skipif(importlib.util.find_spec("mlx_lm") is None, reason="mlx-lm not installed")
def test_output_loads_in_mlx_lm(tmp_path):
    import shutil

    import mlx.core as mx
    from mlx_lm import load

    out = quantize_checkpoint(SRC, tmp_path / "q", 4, 64)
    tok = os.path.join(os.path.dirname(edgeqwen.__file__), "data", "qwen3-tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok, f), out / f)
    model, _ = load(str(out))
    r = np.load(GQ / "int4-g64" / "reference.npz")
    logits = np.array(model(mx.array(r["ids_9"].tolist())[None])[0].astype(mx.float32))
    assert (logits.argmax(-1) == r["logits_9"].argmax(-1)).all()
