"""Weights stay memory-mapped: loading costs address space, not resident memory."""

import subprocess
import sys

import numpy as np

import edgeqwen

SCRIPT = """
import sys, edgeqwen
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
before = rss()
m = edgeqwen.load(sys.argv[1], tokenizer=False)
print(rss() - before, m.file_bytes)
"""


def test_load_maps_instead_of_copying(tmp_path):
    out = edgeqwen.synth_checkpoint(tmp_path / "m", "qwen3-0.6b", "bf16", num_hidden_layers=3)
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], capture_output=True, text=True, check=True)
    grew, size = map(int, p.stdout.split())
    assert size > 300e6
    assert grew < 0.05 * size, f"RSS grew by {grew / 1e6:.0f} MB for a {size / 1e6:.0f} MB checkpoint"


def test_bf16_weights_are_not_converted_at_load(tmp_path):
    out = edgeqwen.synth_checkpoint(tmp_path / "m", "qwen3-0.6b", "bf16", hidden_size=64, intermediate_size=64,
                                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                    head_dim=32)
    m = edgeqwen.load(out)
    w = m.layers[0].q_proj.data
    assert w.dtype == np.uint16 and not w.flags.owndata and not w.flags.writeable


def test_wrong_weight_dtype_names_the_tensor(tmp_path):
    import json
    import pytest
    from edgeqwen.errors import EdgeQwenError
    from edgeqwen.storage import open_safetensors_dir
    from edgeqwen.storage.safetensors import write_safetensors

    src = edgeqwen.synth_checkpoint(tmp_path / "m", "qwen3-0.6b", "bf16", hidden_size=64, intermediate_size=64,
                                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                    head_dim=32, vocab_size=300)
    store = open_safetensors_dir(src)
    name = "model.layers.0.mlp.up_proj.weight"
    specs = [(n, "I16" if n == name else store.dtype(n), store.shape(n)) for n in store.names()]
    data = {n: store.get(n).copy() for n in store.names()}
    (src / "model.safetensors").unlink()
    write_safetensors(src / "model.safetensors", specs, data.__getitem__)
    json.loads((src / "config.json").read_text())
    with pytest.raises(EdgeQwenError, match=f"{name}.*dtype I16 is not a supported"):
        edgeqwen.load(src)
