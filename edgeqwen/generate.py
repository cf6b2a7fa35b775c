"""generate_step and stream_generate: the one token loop that chat, generate, batch and bench share.

Nothing here prints. ``generate_step`` yields token ids; ``stream_generate`` turns them into
text pieces and timing statistics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .chat import render
from .errors import EdgeQwenError
from .kvcache import KVCache
from .sampling import make_sampler


@dataclass
class Response:
    """One step of ``stream_generate``: a text piece, and on the last step the finish reason and stats."""

    text: str
    token: int | None = None
    finish_reason: str | None = None  # None while running, then "stop" or "length"
    prompt_tokens: int = 0  # tokens prefilled (after any cache reuse)
    prompt_tps: float = 0.0
    generation_tokens: int = 0
    generation_tps: float = 0.0
    ttft: float = 0.0  # seconds from the call to the first sampled token


def generate_step(model, prompt_ids, cache: KVCache, sampler, max_tokens: int, stop_ids=(), history=None):
    """Prefill ``prompt_ids`` into ``cache``, then yield ``(token, finish_reason)`` until a stop.

    ``finish_reason`` is None for all but the last yielded token; the last is "stop" when it is a
    stop id, "length" when ``max_tokens`` or the cache end is reached.
    """
    prompt_ids = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
    if prompt_ids.shape[0] == 0:
        raise EdgeQwenError("empty prompt")
    if cache.pos + prompt_ids.shape[0] > cache.ctx:
        raise EdgeQwenError(
            f"prompt of {prompt_ids.shape[0]} tokens does not fit the context of {cache.ctx} "
            f"({cache.pos} already cached); use a larger --ctx or a shorter prompt"
        )
    if max_tokens <= 0:
        return
    history = list(history if history is not None else prompt_ids.tolist())
    stop_ids = set(stop_ids)
    logits = model.forward(prompt_ids, cache)
    n = 0
    while True:
        token = sampler(logits[0], history)
        history.append(token)
        n += 1
        if token in stop_ids:
            yield token, "stop"
            return
        if n >= max_tokens or cache.pos >= cache.ctx:
            yield token, "length"
            return
        yield token, None
        logits = model.forward(np.array([token], np.int64), cache)


def prompt_to_ids(model, prompt, chat: bool = False, enable_thinking: bool | None = None,
                  system: str | None = None) -> list[int]:
    """Token ids for a prompt given as ids, as raw text, or (``chat``) as a user message / message list."""
    if isinstance(prompt, (list, tuple, np.ndarray)) and len(prompt) and not isinstance(prompt[0], dict):
        return [int(t) for t in prompt]
    tok = model.tokenizer
    if tok is None:
        raise EdgeQwenError("this model was loaded without a tokenizer; pass token ids")
    if isinstance(prompt, str) and not chat:  # a list of message dicts is always a chat
        return tok.encode(prompt)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    text = render(tok.chat_template, messages, add_generation_prompt=True, **extra)
    return tok.encode(text)


def stream_generate(model, prompt, max_tokens: int = 256, temperature: float = 0.0, top_k: int = 0,
                    top_p: float = 1.0, min_p: float = 0.0, presence_penalty: float = 0.0,
                    seed: int | None = None, chat: bool = False, enable_thinking: bool | None = None,
                    cache: KVCache | None = None, ctx: int | None = None, stop_ids=None):
    """Yield Response pieces of generated text; the last one carries finish_reason and stats.

    ``prompt`` is a string (raw text, or a user message when ``chat``), a list of chat messages,
    or a list of token ids. Greedy when ``temperature`` is 0; the same seed gives the same tokens.
    """
    t0 = time.perf_counter()
    sampler = make_sampler(temperature, top_k, top_p, min_p, presence_penalty, seed)
    ids = prompt_to_ids(model, prompt, chat=chat, enable_thinking=enable_thinking)
    if cache is None:
        cache = model.new_cache(ctx or min(model.config.max_position_embeddings, max(4096, len(ids) + max_tokens)))
    if stop_ids is None:
        stop_ids = model.tokenizer.eos_ids if model.tokenizer is not None else model.config.eos_ids()
    detok = model.tokenizer.detokenizer(skip_special_tokens=False) if model.tokenizer is not None else None
    t_first = t_last = None
    n_gen = 0
    for token, finish in generate_step(model, ids, cache, sampler, max_tokens, stop_ids):
        now = time.perf_counter()
        if t_first is None:
            t_first = now
        t_last = now
        n_gen += 1
        text = ""
        if detok is not None and finish != "stop":
            text = detok.add(token)
        if finish is None:
            yield Response(text=text, token=token)
            continue
        if detok is not None:
            text += detok.flush()
        prefill_s = t_first - t0
        decode_s = t_last - t_first
        yield Response(
            text=text, token=token, finish_reason=finish,
            prompt_tokens=len(ids), prompt_tps=len(ids) / prefill_s if prefill_s > 0 else 0.0,
            generation_tokens=n_gen,
            generation_tps=(n_gen - 1) / decode_s if decode_s > 0 and n_gen > 1 else 0.0,
            ttft=prefill_s,
        )


def generate(model, prompt, **kwargs) -> str:
    """The whole generated text for ``prompt`` (see stream_generate for the arguments)."""
    return "".join(r.text for r in stream_generate(model, prompt, **kwargs))
