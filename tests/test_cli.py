"""The real CLI in a subprocess: output, stats, and one-line errors for bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest


def run(*args, stdin=""):
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "edgeqwen.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=300)


def assert_one_line_error(p, *needles):
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    err = [line for line in lines if line.startswith("edgeqwen: error:")]
    assert len(err) == 1 and lines[-1] == err[0], p.stderr  # status lines may precede it
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in err[0], err[0]


def test_generate_streams_text_and_stats(tiny_model_dir):
    p = run("generate", "-m", str(tiny_model_dir), "Hello there", "-n", "8", "--temperature", "0", "--raw")
    assert p.returncode == 0, p.stderr
    assert "generated 8 tok" in p.stderr and "tok/s" in p.stderr
    q = run("generate", "-m", str(tiny_model_dir), "Hello there", "-n", "8", "--temperature", "0", "--raw")
    assert q.stdout == p.stdout  # greedy is deterministic


def test_generate_seed_reproducible_and_chat(tiny_model_dir):
    a = run("generate", "-m", str(tiny_model_dir), "Hi", "-n", "6", "--temperature", "0.8", "--seed", "5")
    b = run("generate", "-m", str(tiny_model_dir), "Hi", "-n", "6", "--temperature", "0.8", "--seed", "5")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout


def test_info(tiny_model_dir):
    p = run("info", "-m", str(tiny_model_dir))
    assert p.returncode == 0, p.stderr
    assert "qwen3" in p.stdout and "bf16" in p.stdout and "tensors" in p.stdout


def test_missing_model(tmp_path):
    assert_one_line_error(run("generate", "-m", str(tmp_path / "nope"), "hi"), "nope", "no such file")


def test_truncated_weights(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    assert_one_line_error(run("generate", "-m", str(bad), "hi"), "model.safetensors", "truncated")


def test_wrong_shape(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (bad / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run("info", "-m", str(bad)), "mlp.gate_proj.weight", "shape [96, 64]")


def test_unknown_model_type(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (bad / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run("info", "-m", str(bad)), "config.json", "unknown model_type 'mamba'")


def test_prompt_longer_than_context(tiny_model_dir):
    p = run("generate", "-m", str(tiny_model_dir), "word " * 100, "--raw", "--ctx", "50")
    assert_one_line_error(p, "does not fit the context of 50")


@pytest.mark.parametrize("threads", ["0", "999"])
def test_bad_thread_count(tiny_model_dir, threads):
    assert_one_line_error(run("generate", "-m", str(tiny_model_dir), "hi", "-t", threads), "--threads")


def test_debug_shows_traceback(tmp_path):
    p = run("--debug", "info", "-m", str(tmp_path / "nope"))
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_kv_cache_that_cannot_fit_is_refused_before_allocating(tiny_model_dir, tmp_path):
    big = tmp_path / "big"
    shutil.copytree(tiny_model_dir, big)
    cfg = json.loads((big / "config.json").read_text())
    cfg["max_position_embeddings"] = 2**31
    (big / "config.json").write_text(json.dumps(cfg))
    p = run("generate", "-m", str(big), "hi", "--raw", "--ctx", str(2**31 - 1))
    assert_one_line_error(p, "needs", "GiB but only", "available")


def test_context_beyond_the_model_maximum(tiny_model_dir):
    assert_one_line_error(run("generate", "-m", str(tiny_model_dir), "hi", "--raw", "--ctx", "100000"),
                          "exceeds the model's max_position_embeddings 512")


def test_max_tokens_beyond_the_context_stops_at_the_end(tiny_model_dir):
    p = run("generate", "-m", str(tiny_model_dir), "hi", "--raw", "--ctx", "20", "-n", "500", "--temperature", "0")
    assert p.returncode == 0, p.stderr
    assert "finish: length" in p.stderr


def test_f16_kv_cache_option(tiny_model_dir):
    p = run("generate", "-m", str(tiny_model_dir), "Hello there", "-n", "8", "--temperature", "0", "--raw",
            "--kv-cache", "f16")
    assert p.returncode == 0, p.stderr
    assert "generated 8 tok" in p.stderr
    bad = run("generate", "-m", str(tiny_model_dir), "hi", "--kv-cache", "f8")
    assert bad.returncode != 0 and "f8" in bad.stderr and "Traceback" not in bad.stderr
