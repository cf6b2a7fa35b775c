"""ChatSession: KV cache reuse across turns, thinking split, context limits, save/load."""

import json

import numpy as np
import pytest

import edgeqwen
from edgeqwen.chat import render
from edgeqwen.errors import EdgeQwenError
from edgeqwen.session import ChatSession


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return edgeqwen.load(tiny_model_dir)


def prompt_ids(model, messages, thinking=True):
    return model.tokenizer.encode(render(model.tokenizer.chat_template, messages, enable_thinking=thinking))


def test_each_turn_prefills_only_what_changed(tiny):
    s = ChatSession(tiny, ctx=512, seed=0, max_tokens=6, sampling={"temperature": 0})
    prefilled = []
    for i, text in enumerate(["Hello!", "Tell me more.", "And then?", "Why?", "OK, thanks."]):
        before = list(s.cache.tokens)
        stats = [e for e in s.turn(text) if e.kind == "done"][0].stats
        ids = prompt_ids(tiny, s.messages()[:-1])  # the prompt this turn was rendered from
        common = 0
        while common < min(len(before), len(ids) - 1) and before[common] == ids[common]:
            common += 1
        assert stats.prompt_tokens == len(ids)
        assert (stats.reused, stats.prefilled) == (common, len(ids) - common)
        if i:
            # everything up to the previous assistant turn comes from the cache
            assert stats.reused >= len(prompt_ids(tiny, s.messages()[:-3])) - 1
        prefilled.append(stats.prefilled)
    assert max(prefilled[1:]) < 40 and prefilled[-1] < stats.prompt_tokens / 3


def test_cache_holds_exactly_the_conversation(tiny):
    s = ChatSession(tiny, ctx=512, seed=0, max_tokens=5, sampling={"temperature": 0})
    list(s.turn("Hi"))
    list(s.turn("Again"))
    # the cache's tokens are what a fresh forward over them would cache: compare logits
    cached = list(s.cache.tokens)
    fresh = tiny.logits(cached)[-1]
    s.cache.trim(len(cached) - 1)
    incremental = tiny.forward(cached[-1:], s.cache)[0]
    assert np.abs(incremental - fresh).max() < 1e-4


class Scripted:
    """A stand-in model that emits a fixed token script (tests the session logic, not the kernels)."""

    def __init__(self, real, script):
        self.config, self.tokenizer, self.script, self.i = real.config, real.tokenizer, script, 0

    def new_cache(self, ctx):
        return edgeqwen.kvcache.KVCache(self.config, ctx)

    def forward(self, ids, cache, all_logits=False):
        cache.pos += len(ids)
        cache.tokens.extend(int(i) for i in np.atleast_1d(ids))
        logits = np.zeros((1, self.config.vocab_size), np.float32)
        logits[0, self.script[min(self.i, len(self.script) - 1)]] = 100
        self.i += 1
        return logits


def test_thinking_is_split_and_kept_out_of_history(tiny):
    tok = tiny.tokenizer
    script = ([tok.token_to_id("<think>")] + tok.encode("\nLet me see: 你好\n") + [tok.token_to_id("</think>")]
              + tok.encode("\n\nThe answer is 4.") + [tok.token_to_id("<|im_end|>")])
    s = ChatSession(Scripted(tiny, script), ctx=256, sampling={"temperature": 0})
    events = list(s.turn("2+2?"))
    think = "".join(e.text for e in events if e.kind == "think")
    answer = "".join(e.text for e in events if e.kind == "answer")
    assert think == "\nLet me see: 你好\n"
    assert answer == "\n\nThe answer is 4."
    assert s.turns[-1] == {"role": "assistant", "content": "The answer is 4."}
    assert events[-1].stats.finish_reason == "stop"


def test_soft_switch_and_sampling_defaults(tiny):
    s = ChatSession(tiny, ctx=256)
    assert s.sampling_for(True) == dict(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0, presence_penalty=0.0)
    assert s.sampling_for(False)["temperature"] == 0.7 and s.sampling_for(False)["top_p"] == 0.8
    s2 = ChatSession(tiny, ctx=256, sampling={"temperature": 0.1})
    assert s2.sampling_for(False)["temperature"] == 0.1


def test_context_overflow_drops_oldest_turns_and_keeps_system(tiny):
    s = ChatSession(tiny, ctx=64, system="Be brief.", seed=0, max_tokens=8, sampling={"temperature": 0})
    notices = []
    for text in ["first message here", "second message here", "third message here", "fourth message",
                 "fifth message", "sixth message"]:
        notices += [e.text for e in s.turn(text) if e.kind == "notice" and "dropped" in e.text]
    assert notices
    assert s.messages()[0] == {"role": "system", "content": "Be brief."}
    assert s.turns[0]["content"] != "first message here"
    assert s.cache.pos <= s.ctx


def test_message_larger_than_context(tiny):
    s = ChatSession(tiny, ctx=32)
    with pytest.raises(EdgeQwenError, match="more than the context of 32"):
        list(s.turn("word " * 100))
    assert s.turns == []


def test_interrupted_reply_is_kept(tiny):
    s = ChatSession(tiny, ctx=256, seed=0, max_tokens=50, sampling={"temperature": 0})
    gen = s.turn("Hello")
    pieces = [next(gen) for _ in range(3)]
    gen.close()
    assert s.turns[-1]["role"] == "assistant"
    assert s.turns[-1]["content"] == "".join(p.text for p in pieces if p.kind == "answer").lstrip("\n")
    assert s.history_stats[-1].finish_reason == "interrupted"


def test_save_and_load(tiny, tmp_path):
    s = ChatSession(tiny, ctx=256, system="sys", seed=0, max_tokens=4, sampling={"temperature": 0})
    list(s.turn("Hi"))
    s.save(tmp_path / "c.json")
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["system"] == "sys" and [m["role"] for m in data["messages"]] == ["user", "assistant"]
    t = ChatSession(tiny, ctx=256)
    t.load(tmp_path / "c.json")
    assert t.messages() == s.messages()
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(EdgeQwenError, match="role, content"):
        t.load(tmp_path / "bad.json")
