import os
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
