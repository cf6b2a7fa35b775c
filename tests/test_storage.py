"""The safetensors reader: zero-copy views, and a clear error for every kind of broken file."""

import json
import struct

import numpy as np
import pytest

from edgeqwen.errors import EdgeQwenError
from edgeqwen.storage import SafetensorsFile, open_safetensors_dir, release_pages
from edgeqwen.storage.safetensors import write_safetensors


def raw_file(path, header: dict, data: bytes, header_len=None):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) if header_len is None else header_len) + h + data)
    return path


def good(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1, 2, 3, 4], np.uint16)
    specs = [("a", "F32", (2, 3)), ("b", "BF16", (4,))]
    write_safetensors(tmp_path / "m.safetensors", specs, {"a": a, "b": b}.__getitem__)
    return tmp_path / "m.safetensors", a, b


def test_round_trip_is_a_view_not_a_copy(tmp_path):
    path, a, b = good(tmp_path)
    st = SafetensorsFile(path)
    got = st.get("a")
    np.testing.assert_array_equal(got, a)
    np.testing.assert_array_equal(st.get("b"), b)
    assert st.get("b").dtype == np.uint16 and st.dtype("b") == "BF16"
    assert not got.flags.owndata and not got.flags.writeable


def test_release_pages_only_of_mapped_arrays(tmp_path):
    big = np.arange(5 * 4096, dtype=np.float32).reshape(5, 4096)  # pages a madvise can drop
    write_safetensors(tmp_path / "m.safetensors", [("w", "F32", big.shape)], {"w": big}.__getitem__)
    got = SafetensorsFile(tmp_path / "m.safetensors").get("w")
    assert got.sum() == big.sum()
    assert release_pages(got)  # file-backed: its pages leave the process and fault back in
    np.testing.assert_array_equal(got, big)
    assert not release_pages(big)  # a copy in memory: nothing to release


def test_reads_files_written_by_the_safetensors_package(tmp_path):
    from safetensors.numpy import save_file

    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    save_file({"x": x, "y": np.arange(3, dtype=np.int64)}, tmp_path / "m.safetensors")
    st = SafetensorsFile(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(st.get("x"), x)
    np.testing.assert_array_equal(st.get("y"), np.arange(3))


CASES = {
    "empty file": (lambda p: p.write_bytes(b""), "too short"),
    "header beyond the file": (lambda p: raw_file(p, {}, b"", header_len=10_000), "runs past the end"),
    "header length 2^60": (lambda p: raw_file(p, {}, b"", header_len=2**60), "runs past the end"),
    "header not JSON": (lambda p: p.write_bytes(struct.pack("<Q", 5) + b"{nope"), "not valid JSON"),
    "header not an object": (lambda p: raw_file(p, [1, 2], b""), "not a JSON object"),
    "offsets past the end": (lambda p: raw_file(p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                                                b"\0" * 8), "'w'"),
    "overlapping tensors": (lambda p: raw_file(p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                                               b"\0" * 12), "overlap"),
    "unknown dtype": (lambda p: raw_file(p, {"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, b"\0"),
                      "unknown dtype"),
    "shape/bytes mismatch": (lambda p: raw_file(p, {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                                                b"\0" * 8), "needs 12 bytes"),
    "negative shape": (lambda p: raw_file(p, {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b""),
                       "bad shape"),
}


@pytest.mark.parametrize("case", CASES)
def test_broken_files_give_one_line_errors(tmp_path, case):
    make, expect = CASES[case]
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(EdgeQwenError) as e:
        SafetensorsFile(path)
    msg = str(e.value)
    assert expect in msg and str(path) in msg and "\n" not in msg


def test_missing_shard(tmp_path):
    path, _, _ = good(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "m.safetensors", "b": "gone.safetensors"}}))
    with pytest.raises(EdgeQwenError, match="shard 'gone.safetensors'.*missing"):
        open_safetensors_dir(tmp_path)


def test_directory_without_weights(tmp_path):
    with pytest.raises(EdgeQwenError, match="no model.safetensors"):
        open_safetensors_dir(tmp_path)
