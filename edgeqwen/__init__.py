"""edgeqwen: Qwen3 inference on a CPU with NumPy and Numba.

    import edgeqwen
    model = edgeqwen.load("path/to/Qwen3-0.6B")
    for r in edgeqwen.stream_generate(model, "Hello", max_tokens=64, chat=True):
        print(r.text, end="", flush=True)
"""

from .errors import EdgeQwenError
from .generate import Response, generate, stream_generate
from .loader import load
from .sampling import make_sampler
from .synth import synth_checkpoint

__version__ = "0.1.0"

__all__ = ["EdgeQwenError", "Response", "generate", "load", "make_sampler", "stream_generate",
           "synth_checkpoint", "__version__"]
