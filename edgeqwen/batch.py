"""Batch inference: many requests, several decoded together, results streamed as they finish.

Continuous batching: up to ``batch_size`` sequences each own a slot of one BatchKVCache; every
decode step runs one ``forward_batch`` (each weight read from memory serves every sequence), and a
finished sequence's slot is refilled from the queue at once. A new request whose prompt shares a
prefix with what any slot holds (a common system prompt) copies those cached positions instead of
recomputing them. Each request's numbers are exactly those it would get alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

from .chat import render
from .errors import EdgeQwenError
from .kvcache import BatchKVCache
from .sampling import make_sampler
from .session import common_prefix

FIELDS = {"id", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
          "enable_thinking", "stop", "presence_penalty"}


@dataclass
class Request:
    """One parsed input line."""

    id: object
    ids: list[int]
    max_tokens: int
    sampling: dict
    seed: int | None
    stop: list[str]
    index: int = 0  # position in the input, for ordering and messages


@dataclass
class _Running:
    req: Request
    sampler: object
    history: list[int]
    detok: object
    t_start: float
    cached: int
    generated: list[int] = field(default_factory=list)
    text: str = ""
    t_first: float | None = None
    next_token: int = 0


def parse_request(line: str, lineno: int, tokenizer, defaults: dict, max_ctx: int) -> Request:
    """A Request from one JSONL line, or EdgeQwenError naming the line and the problem."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise EdgeQwenError(f"line {lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(d, dict):
        raise EdgeQwenError(f"line {lineno}: expected a JSON object")
    if "id" not in d:
        raise EdgeQwenError(f"line {lineno}: missing 'id'")
    unknown = sorted(set(d) - FIELDS)
    if unknown:
        raise EdgeQwenError(f"line {lineno}: unknown field(s) {', '.join(map(repr, unknown))}")
    if ("prompt" in d) == ("messages" in d):
        raise EdgeQwenError(f"line {lineno}: give exactly one of 'prompt' or 'messages'")
    if tokenizer is None:
        raise EdgeQwenError("the model has no tokenizer; batch needs one")
    if "prompt" in d:
        if not isinstance(d["prompt"], str):
            raise EdgeQwenError(f"line {lineno}: 'prompt' must be a string")
        ids = tokenizer.encode(d["prompt"])
    else:
        msgs = d["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                 and m.get("role") in ("system", "user", "assistant")
                                                 for m in msgs):
            raise EdgeQwenError(f"line {lineno}: 'messages' must be a list of {{role, content}} objects")
        thinking = d.get("enable_thinking", True)
        ids = tokenizer.encode(render(tokenizer.chat_template, msgs, add_generation_prompt=True,
                                      enable_thinking=bool(thinking)))
    if not ids:
        raise EdgeQwenError(f"line {lineno}: empty prompt")
    if len(ids) >= max_ctx:
        raise EdgeQwenError(f"line {lineno}: prompt of {len(ids)} tokens does not fit the context of {max_ctx}")
    max_tokens = d.get("max_tokens", defaults["max_tokens"])
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise EdgeQwenError(f"line {lineno}: 'max_tokens' must be a positive integer")
    sampling = {k: d.get(k, defaults.get(k)) for k in ("temperature", "top_k", "top_p", "min_p", "presence_penalty")}
    for k, v in sampling.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise EdgeQwenError(f"line {lineno}: '{k}' must be a number")
    stop = d.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise EdgeQwenError(f"line {lineno}: 'stop' must be a string or a list of non-empty strings")
    seed = d.get("seed", defaults.get("seed"))
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise EdgeQwenError(f"line {lineno}: 'seed' must be an integer")
    try:
        make_sampler(**sampling)  # validate ranges now, with the line number
    except EdgeQwenError as e:
        raise EdgeQwenError(f"line {lineno}: {e}") from None
    return Request(d["id"], ids, min(max_tokens, max_ctx - len(ids)), sampling, seed, stop)


def split_thinking(text: str) -> tuple[str, str | None]:
    """(answer, thinking) from generated text that may hold a <think>...</think> block."""
    if "</think>" in text:
        head, _, answer = text.partition("</think>")
        return answer.lstrip("\n"), head.replace("<think>", "", 1).strip("\n")
    if text.lstrip().startswith("<think>"):
        return "", text.lstrip()[len("<think>"):].strip("\n")  # cut off while thinking
    return text, None


class BatchRunner:
    """Runs Requests with continuous batching; ``run`` yields result dicts as requests finish."""

    def __init__(self, model, batch_size: int = 4, ctx: int | None = None):
        if batch_size < 1:
            raise EdgeQwenError(f"--batch-size must be at least 1, got {batch_size}")
        self.model = model
        self.ctx = ctx or min(model.config.max_position_embeddings, 4096)
        self.cache = BatchKVCache(model.config, batch_size, self.ctx, model.kv_dtype)
        self.batch_size = batch_size
        tok = model.tokenizer
        self.stop_ids = set(tok.eos_ids if tok is not None else model.config.eos_ids())
        self.prefill_saved = 0
        self.generated = 0
        self.decode_s = 0.0  # wall time of the batched decode steps (prefill excluded) ...
        self.decode_tokens = 0  # ... and the tokens they produced

    def _start(self, req: Request, slot: int) -> _Running:
        """Prefill a request into ``slot``, borrowing the longest cached prefix from any slot."""
        t0 = time.perf_counter()
        best, best_slot = 0, slot
        limit = len(req.ids) - 1  # always prefill at least one token
        for s, seq in enumerate(self.cache.seqs):
            n = common_prefix(seq.tokens[:limit], req.ids[:limit])
            if n > best or (n == best and s == slot):
                best, best_slot = n, s
        if best_slot != slot and best > 0:
            self.cache.copy_prefix(best_slot, slot, best)
        seq = self.cache.seqs[slot]
        seq.trim(best)
        self.prefill_saved += best
        logits = self.model.forward(np.asarray(req.ids[best:], np.int64), seq)
        run = _Running(req, make_sampler(seed=req.seed, **req.sampling), list(req.ids),
                       self.model.tokenizer.detokenizer(), t0, best)
        run.next_token = run.sampler(logits[0], run.history)
        run.t_first = time.perf_counter()
        return run

    def _advance(self, run: _Running, slot: int) -> str | None:
        """Account for ``run.next_token``; return a finish reason when the request is done."""
        tok = run.next_token
        if tok in self.stop_ids:
            return "stop"
        run.generated.append(tok)
        run.history.append(tok)
        self.generated += 1
        run.text += run.detok.add(tok)
        for s in run.req.stop:
            cut = run.text.find(s)
            if cut >= 0:
                run.text = run.text[:cut]
                return "stop"
        if len(run.generated) >= run.req.max_tokens or self.cache.seqs[slot].pos >= self.ctx:
            return "length"
        return None

    def _result(self, run: _Running, finish: str) -> dict:
        now = time.perf_counter()
        if finish != "stop" or not run.req.stop:
            run.text += run.detok.flush()
        text, thinking = split_thinking(run.text)
        out = {"id": run.req.id, "text": text}
        if thinking is not None:
            out["thinking"] = thinking
        decode_s = now - run.t_first
        out.update(finish_reason=finish, prompt_tokens=len(run.req.ids), cached_prompt_tokens=run.cached,
                   completion_tokens=len(run.generated), ttft_s=round(run.t_first - run.t_start, 4),
                   decode_tps=round((len(run.generated) - 1) / decode_s, 2) if len(run.generated) > 1 and decode_s > 0
                   else 0.0, total_s=round(now - run.t_start, 4))
        return out

    def run(self, requests):
        """Yield a result dict for every Request (in completion order)."""
        queue = list(requests)
        queue.reverse()
        active: dict[int, _Running] = {}
        free = list(range(self.batch_size - 1, -1, -1))
        while queue or active:
            while queue and free:
                slot = free.pop()
                run = self._start(queue.pop(), slot)
                finish = self._advance(run, slot)
                if finish:
                    free.append(slot)
                    yield self._result(run, finish)
                else:
                    active[slot] = run
            if not active:
                continue
            slots = sorted(active)
            t0 = time.perf_counter()
            logits = self.model.forward_batch([active[s].next_token for s in slots], self.cache, slots)
            self.decode_s += time.perf_counter() - t0
            self.decode_tokens += len(slots)
            for i, slot in enumerate(slots):
                run = active[slot]
                run.next_token = run.sampler(logits[i], run.history)
                finish = self._advance(run, slot)
                if finish:
                    del active[slot]
                    free.append(slot)
                    yield self._result(run, finish)


def answered(path) -> tuple[set, set]:
    """(ids, error line numbers) already in a results file; a torn last line is cut off first."""
    ids, lines = set(), set()
    try:
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1  # a line cut by a kill: drop it, it will be redone
                f.truncate(keep)
                data = data[:keep]
    except FileNotFoundError:
        return ids, lines
    for raw in data.splitlines():
        try:
            d = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(d, dict):
            if d.get("id") is not None:
                ids.add(json.dumps(d["id"]))
            elif "line" in d:
                lines.add(d["line"])
    return ids, lines
