"""The chat template renders exactly what transformers' apply_chat_template renders."""

import json

import pytest

from edgeqwen.chat import render

from conftest import GOLDEN

CASES = json.loads((GOLDEN / "chat_template.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CASES, ids=[f"{c['name']}-think{int(c['enable_thinking'])}-gen"
                                              f"{int(c['add_generation_prompt'])}" for c in CASES])
def test_render_equals_transformers(qwen3_tokenizer, case):
    got = render(qwen3_tokenizer.chat_template, case["messages"], add_generation_prompt=case["add_generation_prompt"],
                 enable_thinking=case["enable_thinking"])
    assert got == case["text"]


def test_thinking_off_adds_empty_think_block(qwen3_tokenizer):
    text = render(qwen3_tokenizer.chat_template, [{"role": "user", "content": "hi"}], enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
