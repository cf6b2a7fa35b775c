import json

import pytest

from edgeqwen.config import ModelConfig, load_config
from edgeqwen.errors import EdgeQwenError
from edgeqwen.synth import preset_config

BASE = preset_config("qwen3-0.6b")


def test_real_shapes():
    c = ModelConfig.from_dict(BASE)
    assert (c.head_dim, c.q_dim, c.kv_dim, c.kv_mul) == (128, 2048, 1024, 2)  # head_dim != 1024 / 16
    assert c.tie_word_embeddings and c.rope_theta == 1e6


def test_both_rope_forms():
    new = dict(BASE, rope_parameters={"rope_type": "default", "rope_theta": 5e6})
    new.pop("rope_theta")
    assert ModelConfig.from_dict(new).rope_theta == 5e6
    assert ModelConfig.from_dict(dict(BASE, rope_theta=5e6)).rope_theta == 5e6


@pytest.mark.parametrize("change,expect", [
    (dict(model_type="llama4"), "unknown model_type 'llama4'"),
    (dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
    (dict(num_key_value_heads=3), "not a multiple"),
    (dict(hidden_size="big"), "'hidden_size' must be an integer"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope scaling 'yarn'"),
    (dict(head_dim=127), "must be even"),
])
def test_impossible_configs(change, expect):
    with pytest.raises(EdgeQwenError, match=expect):
        ModelConfig.from_dict(dict(BASE, **change))


def test_missing_key():
    d = dict(BASE)
    del d["vocab_size"]
    with pytest.raises(EdgeQwenError, match="missing key 'vocab_size'"):
        ModelConfig.from_dict(d)


def test_generation_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(BASE))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643],
                                                                 "temperature": 0.6, "top_k": 20}))
    c = load_config(tmp_path)
    assert c.eos_ids() == [151645, 151643] and c.generation.temperature == 0.6


def test_missing_config(tmp_path):
    with pytest.raises(EdgeQwenError, match="no config.json"):
        load_config(tmp_path)
