"""ChatSession: a multi-turn conversation over one KV cache that is reused across turns.

Each turn renders the whole conversation with the model's chat template, keeps the longest
common prefix (on token ids) of that prompt and what the cache already holds, and prefills only
the rest. Nothing here prints: ``turn`` yields events that the CLI (or any caller) displays.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .chat import render
from .errors import EdgeQwenError
from .generate import generate_step
from .sampling import make_sampler

# Qwen3's recommended sampling (model card), used where generation_config.json is silent
THINKING_DEFAULTS = dict(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0)
NON_THINKING_DEFAULTS = dict(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0)


@dataclass
class TurnStats:
    """What one reply cost."""

    prompt_tokens: int = 0  # tokens of the rendered prompt
    prefilled: int = 0  # tokens actually run through the model (the rest came from the cache)
    reused: int = 0
    ttft: float = 0.0  # seconds from the user's message to the first token
    generated: int = 0
    decode_tps: float = 0.0
    finish_reason: str = ""  # stop | length | context | interrupted
    dropped_turns: int = 0


@dataclass
class Event:
    """One thing to show: ``kind`` is "think", "answer", "notice" or "done" (with ``stats``)."""

    kind: str
    text: str = ""
    stats: TurnStats | None = None


@dataclass
class ChatSession:
    """A conversation with ``model``; ``turn(text)`` yields Events and updates the history."""

    model: object
    ctx: int | None = None
    system: str | None = None
    enable_thinking: bool = True
    sampling: dict = field(default_factory=dict)  # explicit overrides: temperature, top_k, top_p, min_p, ...
    seed: int | None = None
    max_tokens: int | None = None  # per reply; None = until the context is full

    def __post_init__(self):
        tok = self.model.tokenizer
        if tok is None or not tok.chat_template:
            raise EdgeQwenError("this model has no tokenizer with a chat template; chat needs one")
        self.tokenizer = tok
        cfg = self.model.config
        self.ctx = min(self.ctx or min(cfg.max_position_embeddings, 4096), cfg.max_position_embeddings)
        self.cache = self.model.new_cache(self.ctx)
        self.turns: list[dict] = []  # user / assistant messages, final answers only
        self.think_open = tok.token_to_id("<think>")
        self.think_close = tok.token_to_id("</think>")
        self.history_stats: list[TurnStats] = []
        self._rng_seed = self.seed

    # -- conversation state ---------------------------------------------------------------------

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays) and the cache."""
        self.turns.clear()
        self.cache.reset()

    def save(self, path: str | Path) -> None:
        """Write the conversation as JSON (temp file, then rename)."""
        path = Path(path)
        data = {"system": self.system, "enable_thinking": self.enable_thinking, "messages": self.turns}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    def load(self, path: str | Path) -> None:
        """Replace the conversation with one saved by ``save`` (or a plain list of messages)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EdgeQwenError(f"{path}: file not found") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise EdgeQwenError(f"{path}: not a saved conversation ({e})") from None
        messages = data.get("messages") if isinstance(data, dict) else data
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in messages):
            raise EdgeQwenError(f"{path}: expected a list of {{role, content}} messages")
        system = [m for m in messages if m["role"] == "system"]
        if isinstance(data, dict) and "system" in data:
            self.system = data["system"]
        elif system:
            self.system = system[0]["content"]
        if isinstance(data, dict) and "enable_thinking" in data:
            self.enable_thinking = bool(data["enable_thinking"])
        self.turns = [dict(role=m["role"], content=m["content"]) for m in messages if m["role"] != "system"]

    # -- sampling -------------------------------------------------------------------------------

    def sampling_for(self, thinking: bool) -> dict:
        """Sampling for a reply in the given mode: explicit flags, then generation_config, then Qwen3's."""
        g = self.model.config.generation
        base = dict(THINKING_DEFAULTS if thinking else NON_THINKING_DEFAULTS)
        if thinking and g.do_sample is not False:
            for key in ("temperature", "top_k", "top_p", "min_p"):
                if getattr(g, key) is not None:
                    base[key] = getattr(g, key)
        base["presence_penalty"] = 0.0
        base.update({k: v for k, v in self.sampling.items() if v is not None})
        return base

    # -- one turn -------------------------------------------------------------------------------

    def _render(self, thinking: bool) -> list[int]:
        text = render(self.tokenizer.chat_template, self.messages(), add_generation_prompt=True,
                      enable_thinking=thinking)
        return self.tokenizer.encode(text)

    def _fit(self, thinking: bool) -> tuple[list[int], int]:
        """Prompt ids that fit the context, dropping the oldest turns (never the system prompt or the new message)."""
        dropped = 0
        ids = self._render(thinking)
        while len(ids) >= self.ctx and len(self.turns) > 1:
            # drop the oldest exchange: everything up to (not including) the next user message
            cut = 1
            while cut < len(self.turns) - 1 and self.turns[cut]["role"] != "user":
                cut += 1
            del self.turns[:cut]
            dropped += 1
            ids = self._render(thinking)
        if len(ids) >= self.ctx:
            self.turns.pop()
            raise EdgeQwenError(f"this message needs {len(ids)} tokens with the chat template, more than the "
                                f"context of {self.ctx}; shorten it or start with a larger --ctx")
        return ids, dropped

    def turn(self, text: str):
        """Send a user message; yield Events for the reply (closing the generator stops it cleanly)."""
        t0 = time.perf_counter()
        thinking = self.enable_thinking
        for word in text.split():  # soft switches: the last one in the message wins
            if word == "/think":
                thinking = True
            elif word == "/no_think":
                thinking = False
        self.turns.append({"role": "user", "content": text})
        ids, dropped = self._fit(thinking)
        stats = TurnStats(prompt_tokens=len(ids), dropped_turns=dropped)
        if dropped:
            yield Event("notice", f"context full: dropped the {dropped} oldest exchange(s)")
        limit = min(self.cache.pos, len(ids) - 1)  # always prefill at least one token
        common = common_prefix(self.cache.tokens[:limit], ids[:limit])
        self.cache.trim(common)
        stats.reused, stats.prefilled = common, len(ids) - common
        sampling = self.sampling_for(thinking)
        sampler = make_sampler(seed=self._next_seed(), **sampling)
        budget = self.ctx - len(ids)
        max_tokens = min(budget, self.max_tokens) if self.max_tokens else budget
        detok = self.tokenizer.detokenizer(skip_special_tokens=False)
        stop = set(self.tokenizer.eos_ids)
        in_think = False
        answer: list[str] = []
        t_first = None
        finish = "interrupted"
        try:
            for token, reason in generate_step(self.model, ids[common:], self.cache, sampler, max_tokens, stop,
                                               history=list(ids)):
                if t_first is None:
                    t_first = time.perf_counter()
                    stats.ttft = t_first - t0
                stats.generated += 1
                if reason == "stop":
                    finish = "stop"
                    break
                if token == self.think_open:
                    in_think = True
                    detok.add(token)
                    continue
                if token == self.think_close:
                    in_think = False
                    detok.add(token)
                    continue
                piece = detok.add(token)
                if reason == "length":
                    piece += detok.flush()
                if piece:
                    if in_think:
                        yield Event("think", piece)
                    else:
                        answer.append(piece)
                        yield Event("answer", piece)
                if reason == "length":
                    finish = "context" if self.cache.pos >= self.ctx or stats.generated >= budget else "length"
        finally:
            if t_first is not None and stats.generated > 1:
                stats.decode_tps = (stats.generated - 1) / max(time.perf_counter() - t_first, 1e-9)
            stats.finish_reason = finish
            content = "".join(answer).lstrip("\n")
            self.turns.append({"role": "assistant", "content": content})
            self.history_stats.append(stats)
        if finish == "context":
            yield Event("notice", f"reply stopped: the context of {self.ctx} tokens is full")
        yield Event("done", stats=stats)

    def _next_seed(self):
        if self._rng_seed is None:
            return None
        self._rng_seed += 1
        return self._rng_seed - 1

    def summary(self) -> dict:
        """Session-level numbers for /stats."""
        last = asdict(self.history_stats[-1]) if self.history_stats else {}
        return {"turns": len([m for m in self.turns if m["role"] == "user"]), "cache_used": self.cache.pos,
                "ctx": self.ctx, "thinking": self.enable_thinking, "last_turn": last}


def common_prefix(a, b) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n
