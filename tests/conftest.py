import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("NUMBA_NUM_THREADS", "2")

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
TOKENIZER_DIR = Path(__file__).parent.parent / "edgeqwen" / "data" / "qwen3-tokenizer"


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    from edgeqwen.tokenizer import Tokenizer

    return Tokenizer.from_dir(TOKENIZER_DIR)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A synthetic Qwen3 with tiny dims but the real vocabulary, tokenizer and chat template."""
    from edgeqwen.synth import synth_checkpoint

    out = tmp_path_factory.mktemp("synth") / "tiny"
    synth_checkpoint(out, "qwen3-0.6b", "bf16", seed=1, hidden_size=64, intermediate_size=96,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     max_position_embeddings=512)
    return out


def default_sigint():
    """preexec_fn for CLI subprocesses that tests interrupt: a shell that starts the test run in the
    background hands its children SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
