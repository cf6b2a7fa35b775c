"""The real Qwen3 tokenizer: ids equal transformers', round trips, and UTF-8-safe streaming."""

import json

import pytest

from conftest import GOLDEN

CASES = json.loads((GOLDEN / "tokenizer.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:12] for c in CASES])
def test_ids_equal_transformers_and_round_trip(qwen3_tokenizer, case):
    ids = qwen3_tokenizer.encode(case["text"])
    assert ids == case["ids"]
    assert qwen3_tokenizer.decode(ids) == case["text"]


def test_special_tokens(qwen3_tokenizer):
    tok = qwen3_tokenizer
    assert [tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")] == \
        [151643, 151644, 151645, 151667, 151668]
    assert tok.encode("<|im_end|>") == [151645]
    assert tok.decode([151645], skip_special_tokens=True) == ""


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:12] for c in CASES])
def test_streaming_never_splits_a_character(qwen3_tokenizer, case):
    det = qwen3_tokenizer.detokenizer()
    pieces = [det.add(t) for t in case["ids"]] + [det.flush()]
    assert "".join(pieces) == case["text"]
    assert not any("\ufffd" in p for p in pieces)


def test_streaming_holds_back_partial_bytes(qwen3_tokenizer):
    # an emoji spread over several byte-level tokens must come out whole, in one piece
    ids = qwen3_tokenizer.encode("🫠")
    assert len(ids) > 1
    det = qwen3_tokenizer.detokenizer()
    pieces = [det.add(t) for t in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "🫠"


@pytest.mark.parametrize("text", ["\ufffd", "a\ufffdb", "\ufffd🫠\ufffd"])
def test_streaming_keeps_a_real_replacement_character(qwen3_tokenizer, text):
    # found by `make fuzz`: a U+FFFD in the text itself was taken for a cut-off character and lost;
    # the detokenizer now judges cut-offs from the tokens' bytes
    ids = qwen3_tokenizer.encode(text)
    det = qwen3_tokenizer.detokenizer()
    assert "".join([det.add(t) for t in ids] + [det.flush()]) == text


def test_flush_drops_a_character_cut_off_by_the_end(qwen3_tokenizer):
    ids = qwen3_tokenizer.encode("ok🫠")
    det = qwen3_tokenizer.detokenizer()
    assert "".join([det.add(t) for t in ids[:-1]] + [det.flush()]) == "ok"
