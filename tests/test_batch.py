"""`edgeqwen batch`: same tokens as alone, continuous batching, prefix sharing, resume, bad lines."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import edgeqwen
from edgeqwen.batch import BatchRunner, Request, split_thinking
from edgeqwen.generate import generate_step
from edgeqwen.kvcache import BatchKVCache
from edgeqwen.sampling import make_sampler

from conftest import GOLDEN


@pytest.mark.parametrize("name", ["golden/untied-gqa4-f32", "golden/mha-bf16-sharded", "golden/tied-gqa2-f16",
                                  "golden_quant/int4-g64", "golden_quant/mixed-4-8", "golden_quant/fp8-bf16",
                                  "golden_gguf/qwen3-tiny-Q4_0.gguf", "golden_gguf/qwen3-tiny-Q8_0.gguf"])
def test_batched_decode_is_bitwise_the_single_decode(name):
    m = edgeqwen.load(GOLDEN.parent / name)
    bc = BatchKVCache(m.config, 5, 200, m.kv_dtype)  # f16 for the quantized ones (auto)
    prompts = [np.arange(5) + 1, np.arange(150) + 20, np.arange(3) + 50, np.arange(7) + 9, np.arange(2) + 3]
    singles = []
    for s, p in enumerate(prompts):
        m.forward(p, bc.seqs[s])
        c = m.new_cache(200)
        m.forward(p, c)
        singles.append(c)
    for step in range(3):
        toks = [7 + step, 8, 9 + step, 4, 11]
        batched = m.forward_batch(toks, bc, [0, 1, 2, 3, 4]).copy()
        for s in range(5):
            assert np.array_equal(m.forward([toks[s]], singles[s])[0], batched[s])


def alone(model, req):
    cache = model.new_cache(256)
    sampler = make_sampler(seed=req.seed, **req.sampling)
    return [t for t, f in generate_step(model, req.ids, cache, sampler, req.max_tokens, model.tokenizer.eos_ids)
            if f != "stop"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return edgeqwen.load(tiny_model_dir)


def make_requests(model, n=7):
    tok = model.tokenizer
    system = "You are a helpful assistant that answers briefly."
    reqs = []
    for i in range(n):
        ids = tok.encode(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nQuestion {i}?<|im_end|>\n"
                         "<|im_start|>assistant\n")
        sampling = {"temperature": 0.0} if i % 2 else {"temperature": 0.9, "top_k": 40, "top_p": 0.95}
        reqs.append(Request(f"r{i}", ids, 5 + 3 * i, sampling, seed=100 + i, stop=[]))
    return reqs


def test_each_request_gets_its_alone_tokens_and_shares_the_prefix(tiny):
    reqs = make_requests(tiny)
    runner = BatchRunner(tiny, batch_size=3, ctx=256)
    results = {r["id"]: r for r in runner.run(reqs)}
    assert set(results) == {r.id for r in reqs}
    for req in reqs:
        want = alone(tiny, req)
        got = results[req.id]
        assert got["completion_tokens"] == len(want)
        det = tiny.tokenizer.detokenizer()
        text = "".join(det.add(t) for t in want) + det.flush()
        assert got["text"] == split_thinking(text)[0]
    # every request after the first reused the cached system prompt
    shared = [results[r.id]["cached_prompt_tokens"] for r in reqs[1:]]
    assert min(shared) >= 15 and runner.prefill_saved >= sum(shared)
    # the decode steps fed every generated token but the last of a request cut off by length
    cut = sum(r["finish_reason"] == "length" for r in results.values())
    assert runner.decode_tokens == sum(r["completion_tokens"] for r in results.values()) - cut
    assert runner.decode_s > 0


def test_tokens_identical_across_batch_sizes(tiny):
    reqs = make_requests(tiny, 5)
    outs = []
    for b in (1, 2, 5):
        outs.append({r["id"]: r["text"] for r in BatchRunner(tiny, b, 256).run(make_requests(tiny, 5))})
    assert outs[0] == outs[1] == outs[2]
    assert len(reqs) == 5


def run_cli(model_dir, inp, out, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgeqwen.cli", "batch", "-m", str(model_dir), str(inp), str(out),
                           *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, NUMBA_NUM_THREADS="2"))


def test_cli_errors_are_lines_not_crashes(tiny_model_dir, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join([
        json.dumps({"id": "a", "prompt": "Hello", "max_tokens": 4}),
        "{not json",
        json.dumps({"prompt": "no id"}),
        json.dumps({"id": "b", "prompt": "x", "colour": "red"}),
        json.dumps({"id": "a", "prompt": "duplicate"}),
        json.dumps({"id": "c", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                    "enable_thinking": False}),
        json.dumps({"id": "d", "prompt": "word " * 600}),
        json.dumps({"id": "e", "prompt": "x", "temperature": -1}),
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    p = run_cli(tiny_model_dir, inp, out, "--ctx", "256")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_id = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    assert {r["line"] for r in rows if "error" in r} == {2, 3, 4, 7, 8}
    assert "not valid JSON" in by_id[None][0]["error"] and "unknown field(s) 'colour'" in by_id["b"][0]["error"]
    assert "does not fit the context of 256" in by_id["d"][0]["error"]
    assert len(by_id["a"]) == 1 and by_id["a"][0]["finish_reason"] in ("stop", "length")
    assert by_id["c"][0]["completion_tokens"] <= 3
    assert "duplicate id 'a'" in p.stderr and "Traceback" not in p.stderr


def test_killed_run_resumes_with_every_id_once(tiny_model_dir, tmp_path):
    inp = tmp_path / "in.jsonl"
    n = 40
    inp.write_text("".join(json.dumps({"id": i, "prompt": f"Count to {i}", "max_tokens": 60}) + "\n"
                           for i in range(n)))
    out = tmp_path / "out.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "edgeqwen.cli", "batch", "-m", str(tiny_model_dir), str(inp),
                          str(out), "-b", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, NUMBA_NUM_THREADS="2"))
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 5):
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    partial = out.read_text().count("\n")
    assert 5 <= partial < n
    q = run_cli(tiny_model_dir, inp, out, "-b", "4")
    assert q.returncode == 0, q.stderr
    assert "resuming" in q.stderr
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == list(range(n))  # every id exactly once, no torn line


def test_stdin_stdout(tiny_model_dir):
    p = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "batch", "-m", str(tiny_model_dir), "-", "-"],
                       input=json.dumps({"id": 1, "prompt": "Hi", "max_tokens": 3}) + "\n", capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["id"] == 1
