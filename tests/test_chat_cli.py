"""`edgeqwen chat` driven in a pseudo-terminal, as a person would use it."""

import json
import os
import subprocess
import sys

import pexpect
import pytest

import edgeqwen

from conftest import default_sigint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("chat") / "m"
    edgeqwen.synth_checkpoint(out, "qwen3-0.6b", "bf16", seed=3, hidden_size=64, intermediate_size=96,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              max_position_embeddings=8192)
    return out


def spawn(model_dir, *args):
    env = dict(os.environ, NUMBA_NUM_THREADS="2", TERM="xterm", XDG_STATE_HOME=str(model_dir.parent / "state"))
    child = pexpect.spawn(sys.executable, ["-m", "edgeqwen.cli", "chat", "-m", str(model_dir), "--seed", "0",
                                           *args], env=env, encoding="utf-8", timeout=120, dimensions=(40, 200),
                          preexec_fn=default_sigint)
    child.expect_exact(">>> ")
    return child


def test_conversation_and_commands(model_dir, tmp_path):
    child = spawn(model_dir, "-n", "6", "--ctx", "512")
    child.sendline("Hello there")
    child.expect(r"\[prefill (\d+) tok \((\d+) cached\)")
    first_prefill = int(child.match.group(1))
    child.expect_exact(">>> ")
    child.sendline("And again")
    child.expect(r"\[prefill (\d+) tok \((\d+) cached\)")
    assert int(child.match.group(2)) >= first_prefill  # turn 1's prompt came from the cache
    child.expect_exact(">>> ")
    child.sendline("/stats")
    child.expect(r"turns 2 · cache (\d+)/512 tokens · thinking on")
    child.expect_exact(">>> ")
    child.sendline("/help")
    child.expect_exact("/reset")
    child.expect_exact(">>> ")
    child.sendline("/no_think")
    child.expect_exact("[thinking off]")
    child.expect_exact(">>> ")
    saved = tmp_path / "conv.json"
    child.sendline(f"/save {saved}")
    child.expect_exact("[saved to")
    child.expect_exact(">>> ")
    assert [m["role"] for m in json.loads(saved.read_text())["messages"]] == ["user", "assistant"] * 2
    child.sendline("/reset")
    child.expect_exact("[conversation cleared]")
    child.expect_exact(">>> ")
    child.sendline(f"/load {saved}")
    child.expect_exact("[loaded 4 messages")
    child.expect_exact(">>> ")
    child.sendline("/system You are terse.")
    child.expect_exact("[system prompt set")
    child.expect_exact(">>> ")
    child.sendline("/frobnicate")
    child.expect_exact("unknown command /frobnicate")
    child.expect_exact(">>> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_a_reply_and_keeps_it(model_dir):
    child = spawn(model_dir, "-n", "6000", "--ctx", "8192", "--no-stats")
    child.sendline("Write forever")
    child.expect(r"\S{20}")  # some of the reply is on screen
    child.sendintr()
    child.expect_exact("[interrupted]")
    child.expect_exact(">>> ")
    child.sendline("/stats")
    child.expect(r"last reply: .* tok/s, interrupted")
    child.expect_exact(">>> ")
    child.sendcontrol("d")  # Ctrl-D at an empty prompt leaves
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_at_prompt_exits(model_dir):
    child = spawn(model_dir)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_tiny_context_overflows_gracefully(model_dir):
    child = spawn(model_dir, "-n", "40", "--ctx", "64")
    for i in range(4):
        child.sendline(f"message number {i} with some words")
        index = child.expect([r"context full: dropped", r"reply stopped: the context", r">>> "])
        if index < 2:
            break
    else:
        pytest.fail("the context never filled")
    child.expect_exact(">>> ")
    child.sendline("still alive?")
    child.expect(r"\[prefill")
    child.expect_exact(">>> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)


def test_piped_question_answers_once_without_ansi(model_dir):
    p = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "chat", "-m", str(model_dir), "-n", "5", "--seed", "1"],
                       input=b"What is 2+2?\n", capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() and b"\x1b[" not in p.stdout
    assert b"prefill" in p.stderr and b"Traceback" not in p.stderr


def test_piped_invalid_utf8_and_empty(model_dir):
    p = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "chat", "-m", str(model_dir), "-n", "3"],
                       input=b"caf\xe9 \xff\xfe?\n", capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    q = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "chat", "-m", str(model_dir)], input=b"  \n",
                       capture_output=True, timeout=120)
    assert q.returncode == 1 and b"no question" in q.stderr and b"Traceback" not in q.stderr
