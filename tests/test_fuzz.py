"""Property-based fuzzing of everything that parses outside input.

Arbitrary bytes give either a valid result or EdgeQwenError, never another exception or a hang.
`make fuzz` runs the same properties with many more examples (HYPOTHESIS_PROFILE=fuzz).
"""

import json
import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeqwen.chat import render
from edgeqwen.errors import EdgeQwenError
from edgeqwen.storage import SafetensorsFile
from edgeqwen.storage.gguf import GGUFFile

settings.register_profile("default", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("fuzz", max_examples=20000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

DTYPES = ["F32", "F16", "BF16", "U8", "I64", "F8_E4M3", "X9", 3]


def header_entry():
    return st.fixed_dictionaries({
        "dtype": st.sampled_from(DTYPES),
        "shape": st.lists(st.integers(-2, 70), max_size=3),
        "data_offsets": st.lists(st.integers(-5, 300), min_size=0, max_size=3),
    })


@given(st.binary(max_size=400))
def test_safetensors_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    path.write_bytes(data)
    try:
        SafetensorsFile(path)
    except EdgeQwenError:
        pass


@given(st.dictionaries(st.text(max_size=8), header_entry(), max_size=4), st.binary(max_size=300),
       st.integers(-3, 3))
def test_safetensors_structured_headers(tmp_path_factory, header, payload, skew):
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", max(0, len(raw) + skew)) + raw + payload)
    try:
        f = SafetensorsFile(path)
        for name in f.names():
            a = f.get(name)
            assert a.nbytes == f.nbytes(name)  # a view never reaches past what the header promised
    except EdgeQwenError:
        pass


def gguf_prefix(n_tensors, n_kv, version=3):
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=400))
def test_gguf_random_bodies(tmp_path_factory, n_tensors, n_kv, body):
    path = tmp_path_factory.mktemp("gg") / "x.gguf"
    path.write_bytes(gguf_prefix(n_tensors % 50 if n_tensors % 3 else n_tensors,
                                 n_kv % 50 if n_kv % 3 else n_kv) + body)
    try:
        GGUFFile(path)
    except EdgeQwenError:
        pass


@given(st.lists(st.tuples(st.text(max_size=6), st.sampled_from([0, 4, 5, 6, 7, 8, 9, 10, 12, 13]),
                          st.binary(max_size=24)), max_size=6),
       st.lists(st.tuples(st.text(max_size=6), st.integers(0, 5), st.lists(st.integers(0, 2**40), max_size=5),
                          st.sampled_from([0, 1, 2, 3, 8, 12, 14, 30, 6, 99]), st.integers(0, 2**40)), max_size=4))
def test_gguf_structured(tmp_path_factory, kvs, tensors):
    body = b""
    for key, vtype, value in kvs:
        k = key.encode()
        body += struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + value
    for name, n_dims, dims, ttype, offset in tensors:
        n = name.encode()
        body += struct.pack("<Q", len(n)) + n + struct.pack("<I", n_dims)
        body += b"".join(struct.pack("<Q", d) for d in dims[:n_dims]) + struct.pack("<IQ", ttype, offset)
    path = tmp_path_factory.mktemp("gg") / "x.gguf"
    path.write_bytes(gguf_prefix(len(tensors), len(kvs)) + body + b"\0" * 64)
    try:
        GGUFFile(path)
    except EdgeQwenError:
        pass


@given(st.lists(st.integers(0, 151668), max_size=40))
def test_detokenizer_any_ids(qwen3_tokenizer, ids):
    det = qwen3_tokenizer.detokenizer()
    text = "".join(det.add(i) for i in ids) + det.flush()
    assert isinstance(text, str)


@given(st.text(max_size=80))
def test_detokenizer_round_trips_text(qwen3_tokenizer, text):
    ids = qwen3_tokenizer.encode(text)
    det = qwen3_tokenizer.detokenizer()
    pieces = [det.add(i) for i in ids] + [det.flush()]
    assert "".join(pieces) == qwen3_tokenizer.decode(ids)
    assert not any("\ufffd" in p for p in pieces) or "\ufffd" in text


MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "bogus"]),
                                 "content": st.one_of(st.text(max_size=40), st.none(), st.integers())})


@given(st.lists(MESSAGE, max_size=5), st.booleans())
def test_chat_template_any_messages(qwen3_tokenizer, messages, thinking):
    try:
        out = render(qwen3_tokenizer.chat_template, messages, enable_thinking=thinking)
        assert isinstance(out, str)
    except EdgeQwenError:
        pass
