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


def set_threads(n: int) -> None:
    """Use ``n`` worker threads in the kernels (1 .. the machine's cores, or NUMBA_NUM_THREADS)."""
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise EdgeQwenError(f"thread count must be between 1 and {limit} on this machine, got {n}")
    numba.set_num_threads(n)


__all__ = ["EdgeQwenError", "Response", "generate", "load", "make_sampler", "stream_generate",
           "set_threads", "synth_checkpoint", "__version__"]
