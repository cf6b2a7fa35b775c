"""Quantized formats against their references: mlx-lm for the MLX layout, transformers for FP8."""

import json
import shutil

import numpy as np
import pytest

import edgeqwen
from edgeqwen.errors import EdgeQwenError
from edgeqwen.generate import generate_step
from edgeqwen.kernels import quant
from edgeqwen.sampling import make_sampler
from edgeqwen.synth import f32_to_bf16

from conftest import FIXTURES

GQ = FIXTURES / "golden_quant"
MODELS = ["int4-g64", "int4-g32", "int8-g128", "int4-g128-f32", "mixed-4-8", "fp8-bf16", "fp8-f16", "fp8-f32"]
# mlx-lm's tiny models have logits of scale ~100 (float32 rounding ~1e-5 relative); FP8 ones ~5
ATOL = {"int": 3e-4, "mix": 3e-4, "fp8": 1e-4}


@pytest.fixture(scope="module", params=MODELS)
def golden(request):
    d = GQ / request.param
    # float32 KV cache: the reference's numbers (the default for quantized weights is f16)
    return request.param, edgeqwen.load(d, kv_cache="f32"), np.load(d / "reference.npz")


def check_logits(name, got, ref, exact):
    # float32 activations (and FP8, which has no int8 path): the reference to float rounding; int8
    # activations: moved by their rounding, < 1.5% of the logit scale, every top-1 kept
    err = np.abs(got - ref).max()
    if exact or name.startswith("fp8"):
        assert err < ATOL[name[:3]], f"{name}: max |diff| {err:.2e}"
    else:
        assert err < 1.5e-2 * np.abs(ref).max(), f"{name}: max |diff| {err:.2e}"
        assert (got.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("exact", [True, False])
def test_logits_match_reference(golden, exact):
    # prefill: float32 activations match mlx-lm to float rounding; int8 activations (the default,
    # through the decode kernels eight tokens at a time) as in test_decode_path_matches_reference
    name, model, r = golden
    model.set_exact_dots(exact)
    try:
        for n in (9, 70):
            check_logits(name, model.logits(r[f"ids_{n}"]), r[f"logits_{n}"], exact)
    finally:
        model.set_exact_dots(False)


def test_greedy_matches_reference(golden):
    name, model, r = golden
    tokens = [t for t, _ in generate_step(model, r["ids_9"], model.new_cache(64), make_sampler(0.0), 32)]
    assert tokens == r["greedy"].tolist()


@pytest.mark.parametrize("exact", [True, False])
def test_decode_path_matches_reference(golden, exact):
    # token by token through the matvec kernels: float32 activations match mlx-lm to float rounding;
    # int8 activations (the default) move logits by their rounding, < 1.5% of the logit scale here,
    # and keep every top-1
    name, model, r = golden
    model.set_exact_dots(exact)
    try:
        ids, ref = r["ids_70"], r["logits_70"]
        cache = model.new_cache(80)
        got = np.stack([model.forward(ids[i:i + 1], cache)[0].copy() for i in range(len(ids))])
    finally:
        model.set_exact_dots(False)
    check_logits(name, got, ref, exact)


def test_formats_are_what_the_files_say():
    assert edgeqwen.load(GQ / "mixed-4-8").format_name == "int4-g64/int8-g64"
    m = edgeqwen.load(GQ / "fp8-bf16")
    assert m.layers[0].q_proj.kind == "fp8" and m.lm_head.kind == "bf16"
    assert m.layers[0].q_proj.scale_inv.dtype == np.uint16  # bf16 scales used as stored


def test_e4m3_decode_is_exact_for_every_byte():
    table = np.load(GQ / "e4m3_table.npy")  # torch's float8_e4m3fn values
    wq = np.arange(256, dtype=np.uint8).reshape(2, 128)
    scale = np.ones((1, 1), np.float32)
    tile = np.empty((32, 128), np.float32)
    quant.fp8_rows(wq, scale, 128, 128, 0, 2, tile)
    finite = np.isfinite(table)
    np.testing.assert_array_equal(tile[:2].reshape(-1)[finite], table[finite])


# -- kernels against NumPy dequantize-then-matmul, odd shapes ---------------------------------

rng = np.random.default_rng(1)


def pack_codes(q, bits):
    # (n, k) codes -> MLX's little-endian uint32 words, as bytes
    per = 32 // bits
    words = np.zeros((q.shape[0], q.shape[1] // per), np.uint32)
    for i in range(per):
        words |= q[:, i::per].astype(np.uint32) << np.uint32(bits * i)
    return words.view(np.uint8)


def affine_random(n, k, bits, gs, scale_kind):
    q = rng.integers(0, 2 ** bits, size=(n, k)).astype(np.uint32)
    s = (rng.random((n, k // gs)) * 0.1).astype(np.float32)
    b = (rng.standard_normal((n, k // gs)) * 0.1).astype(np.float32)
    if scale_kind == "bf16":
        s, b = f32_to_bf16(s), f32_to_bf16(b)
        s32, b32 = (s.astype(np.uint32) << 16).view(np.float32), (b.astype(np.uint32) << 16).view(np.float32)
    elif scale_kind == "f16":
        s, b = s.astype(np.float16), b.astype(np.float16)
        s32, b32 = s.astype(np.float32), b.astype(np.float32)
        s, b = s.view(np.int16), b.view(np.int16)
    else:
        s32, b32 = s, b
    w = q.astype(np.float64) * np.repeat(s32, gs, 1) + np.repeat(b32, gs, 1)
    return edgeqwen.weights.Affine(pack_codes(q, bits), s, b, bits, gs), w


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("n,k,scale_kind", [(1, 128, "bf16"), (37, 256, "f16"), (70, 384, "f32")])
@pytest.mark.parametrize("t", [1, 3, 9])
def test_affine_kernels(bits, gs, n, k, scale_kind, t):
    w, ref = affine_random(n, k, bits, gs, scale_kind)
    x = rng.standard_normal((t, k)).astype(np.float32)
    w.int8_activations = False  # the float32-activation kernels: dequantized tiles, nibble dots
    out = np.full((t, n), np.nan, np.float32)
    w.matmul(x, out)
    np.testing.assert_allclose(out, x @ ref.T, rtol=1e-4, atol=1e-3)
    out = np.full((t, n), np.nan, np.float32)
    w.matvec(x, out)
    np.testing.assert_allclose(out, x @ ref.T, rtol=1e-4, atol=1e-3)
    one = np.empty((1, n), np.float32)
    w.matvec(x[-1:], one)  # a token alone: the same numbers as in its batch
    assert np.array_equal(one[0], out[-1])
    emb = np.empty((2, k), np.float32)
    w.embed(np.array([n - 1, 0]), emb)
    np.testing.assert_allclose(emb, ref[[n - 1, 0]], rtol=1e-6, atol=1e-6)


def q8_reference(x, ref):
    # llama.cpp's Q8_0 activation rounding in NumPy, then float64 dot products
    t, k = x.shape
    xb = x.reshape(t, -1, 32)
    amax = np.abs(xb).max(-1, keepdims=True)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, 0).astype(np.float32)
    q = np.rint(xb * inv)
    return (q * d).reshape(t, k).astype(np.float64) @ ref.T


# Each (bits, group size, scale dtype) is a compile of its own (20-35 s): every group size with bf16
# scales on every shape, f16 and f32 scales (converted by the same code whatever the group) at 64
INT8_ACT_CASES = ([(n, k, "bf16", gs) for n, k in [(1, 128), (5, 2304), (3, 1024), (19, 9088)] for gs in (32, 64, 128)]
                  + [(37, 256, "f16", 64), (70, 384, "f32", 64), (3, 1024, "f32", 64)])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("n,k,scale_kind,gs", INT8_ACT_CASES)
def test_affine_int8_activation_kernels(bits, gs, n, k, scale_kind):
    # the integer-dot decode kernel against a NumPy emulation of the same activation rounding; odd
    # row counts, block counts that are not whole octets (k=384: 12 blocks) or whole lane panels
    # (k=1024 is: the lane copy then keeps the stored scales), batches of 1..9 tokens; k=9088
    # (17.75 panels, 35.5 octets) is long enough that 4 and 8 tokens take the rows in steps (of panels for
    # 4 bits, of octets for 8) carrying their sums, a partial octet or panel in the last step
    w, ref = affine_random(n, k, bits, gs, scale_kind)
    x = rng.standard_normal((9, k)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    want = q8_reference(x, ref)
    out = np.full((9, n), np.nan, np.float32)
    w.matvec(x, out)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    for t in (1, 2, 3, 4, 5):  # a token's numbers do not depend on its batch
        part = np.full((t, n), np.nan, np.float32)
        w.matvec(x[:t], part)
        np.testing.assert_array_equal(part, out[:t])
    long = rng.standard_normal((21, k)).astype(np.float32)  # prefill runs the same kernel: same numbers
    pre = np.full((21, n), np.nan, np.float32)
    w.matmul(long, pre)
    np.testing.assert_allclose(pre, q8_reference(long, ref), rtol=1e-5, atol=1e-5 * np.abs(want).max())
    one = np.full((1, n), np.nan, np.float32)
    w.matvec(long[20:], one)
    np.testing.assert_array_equal(pre[20:], one)
    if bits == 4:  # the lane copy replaced the codes made in memory: rows and the float path come from it
        assert w._wq is None
    emb = np.empty((2, k), np.float32)
    w.embed(np.array([n - 1, 0]), emb)
    np.testing.assert_allclose(emb, ref[[n - 1, 0]], rtol=1e-6, atol=1e-6)
    w.int8_activations = False
    w.matvec(x, out)
    np.testing.assert_allclose(out, x @ ref.T, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k", [256, 1024])
def test_int8_activation_kernels_at_the_extremes(bits, k):
    # every code at its maximum against activations that all round to +-127: the products that
    # would saturate a 16-bit pair sum (AVX2's vpmaddubsw on 8-bit codes) must stay exact
    n = 5
    top = np.uint32(2 ** bits - 1)
    q = np.full((n, k), top, np.uint32)
    q[1, ::3] = 0  # a row with zeros among the maxima
    s = np.full((n, k // 32), 0.01, np.float32)
    b = np.full((n, k // 32), -0.5, np.float32)
    w = edgeqwen.weights.Affine(pack_codes(q, bits), s, b, bits, 32)
    ref = q.astype(np.float64) * 0.01 - 0.5
    x = np.ones((3, k), np.float32)
    x[1] = -1.0
    x[2, 1::2] = -1.0
    want = q8_reference(x, ref)
    out = np.full((3, n), np.nan, np.float32)
    w.matvec(x, out)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("offset_kind", ["mlx", "q4_0"])
def test_lane_layout_any_block_count(offset_kind):
    # 4-bit rows whose block count is odd (k = 160: five blocks, one panel partly filled) decode
    # through the lane layout too (the MLX-layout kernel wanted pairs of blocks); and Q4_0's
    # implied biases (-8 x scale), as GGUF files give them
    n, k = 11, 160
    w, ref = affine_random(n, k, 4, 32, "f16")
    if offset_kind == "q4_0":
        q = np.empty((n, k), np.float64)
        q[:, 0::2], q[:, 1::2] = w.wq & 15, w.wq >> 4
        s32 = np.repeat(w.scales.view(np.float16).astype(np.float64), 32, 1)
        w, ref = edgeqwen.weights.Affine(w.wq, w.scales, None, 4, 32, kind="Q4_0", offset=8), s32 * (q - 8)
    assert w.lanes and w._q8_key() is not None
    x = rng.standard_normal((8, k)).astype(np.float32)
    out = np.full((8, n), np.nan, np.float32)
    w.matvec(x, out)
    want = q8_reference(x, ref)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    one = np.full((1, n), np.nan, np.float32)
    w.matvec(x[3:4], one)
    np.testing.assert_array_equal(one[0], out[3])


def test_float_path_group_is_each_weight_alone():
    # q/k/v-style groups of 4-bit weights on the float path run in one launch after one split of the
    # input: the same numbers as each weight's own matvec, whatever the batch
    ws = [affine_random(n, 256, 4, 64, "bf16")[0] for n in (40, 8, 24)]
    for w in ws:
        w.int8_activations = False
    group = edgeqwen.weights.MatvecGroup(ws)
    assert group.float4 and not group.fused
    for t in (1, 5):
        x = rng.standard_normal((t, 256)).astype(np.float32)
        outs = tuple(np.full((t, w.shape[0]), np.nan, np.float32) for w in ws)
        group(x, outs)
        for w, out in zip(ws, outs):
            alone = np.full_like(out, np.nan)
            w.matvec(x, alone)
            np.testing.assert_array_equal(out, alone)


def test_exact_dots_switch():
    w, ref = affine_random(8, 256, 4, 64, "bf16")
    x = rng.standard_normal((1, 256)).astype(np.float32)
    out = np.empty((1, 8), np.float32)
    w.int8_activations = False
    w.matvec(x, out)
    np.testing.assert_allclose(out, x @ ref.T, rtol=1e-5, atol=1e-4)
    w.int8_activations = True
    w.matvec(x, out)
    np.testing.assert_allclose(out, q8_reference(x, ref), rtol=1e-5, atol=1e-4)
    assert np.abs(out - x @ ref.T).max() > 1e-4  # the two paths really differ


@pytest.mark.parametrize("n,k,scale_dtype", [(1, 16, np.float32), (130, 200, np.float32), (257, 129, np.float32)])
@pytest.mark.parametrize("t", [1, 3, 9, 37])  # 37: prefill goes in chunks of quant.FP8_TOKENS (32)
def test_fp8_kernels(n, k, scale_dtype, t):
    table = np.load(GQ / "e4m3_table.npy")
    codes = rng.integers(0, 256, size=(n, k)).astype(np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0  # NaN codes never appear in checkpoints
    s = (rng.random((-(-n // 128), -(-k // 128))) + 0.5).astype(scale_dtype)
    ref = table[codes].astype(np.float64) * np.repeat(np.repeat(s, 128, 0)[:n], 128, 1)[:, :k]
    w = edgeqwen.weights.Fp8Block(codes, s, 128, 128)
    x = rng.standard_normal((t, k)).astype(np.float32)
    out = np.full((t, n), np.nan, np.float32)
    w.matmul(x, out)
    np.testing.assert_allclose(out, x @ ref.T, rtol=1e-4, atol=1e-2)
    out = np.full((t, n), np.nan, np.float32)
    w.matvec(x, out)  # the decode kernel (SIMD e4m3 decoding), every byte pattern but NaN
    np.testing.assert_allclose(out, x @ ref.T, rtol=1e-4, atol=1e-2)
    one = np.empty((1, n), np.float32)
    w.matvec(x[-1:], one)  # a token alone: the same numbers as in its batch
    assert np.array_equal(one[0], out[-1])


# -- bad input ------------------------------------------------------------------------------------

def broken_copy(tmp_path, name, edit_config=None, edit_tensors=None):
    from edgeqwen.storage import open_safetensors_dir
    from edgeqwen.storage.safetensors import write_safetensors

    dst = tmp_path / "bad"
    dst.mkdir()
    src = GQ / name
    shutil.copy(src / "config.json", dst / "config.json")
    if edit_config:
        cfg = json.loads((dst / "config.json").read_text())
        edit_config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    store = open_safetensors_dir(src)
    tensors = {n: store.get(n) for n in store.names()}
    if edit_tensors:
        edit_tensors(tensors)
    specs = [(n, store.dtype(n) if n in store else "F32", tensors[n].shape) for n in tensors]
    write_safetensors(dst / "model.safetensors", specs, tensors.__getitem__)
    return dst


def test_scales_shape_mismatch(tmp_path):
    def cut(t):
        t["model.layers.1.mlp.up_proj.scales"] = t["model.layers.1.mlp.up_proj.scales"][:, :1].copy()
    d = broken_copy(tmp_path, "int4-g64", edit_tensors=cut)
    with pytest.raises(EdgeQwenError, match="model.layers.1.mlp.up_proj.scales.*does not match"):
        edgeqwen.load(d)


@pytest.mark.parametrize("q,expect", [({"bits": 3, "group_size": 64}, "unsupported quantization bits=3"),
                                      ({"bits": 4, "group_size": 48}, "group_size=48"),
                                      ({"bits": 4, "group_size": 64, "mode": "mxfp4"}, "mode 'mxfp4'")])
def test_unsupported_quantization(tmp_path, q, expect):
    def edit(cfg):
        cfg["quantization"] = cfg["quantization_config"] = q
    d = broken_copy(tmp_path, "int4-g64", edit_config=edit)
    with pytest.raises(EdgeQwenError, match=expect):
        edgeqwen.load(d)


def test_fp8_without_scales(tmp_path):
    def drop(t):
        del t["model.layers.0.self_attn.k_proj.weight_scale_inv"]
    d = broken_copy(tmp_path, "fp8-bf16", edit_tensors=drop)
    with pytest.raises(EdgeQwenError, match="k_proj.weight.*without its scales"):
        edgeqwen.load(d)


def test_kv_cache_storage_follows_the_weights(monkeypatch):
    # auto (the default): float16 keys and values next to quantized weights, float32 next to float ones
    monkeypatch.delenv("EDGEQWEN_KV_CACHE", raising=False)
    assert edgeqwen.load(GQ / "int4-g64").kv_dtype == "f16"
    assert edgeqwen.load(GQ / "fp8-bf16").kv_dtype == "f16"
    assert edgeqwen.load(FIXTURES / "golden" / "tied-gqa2-f32").kv_dtype == "f32"
    assert edgeqwen.load(GQ / "int4-g64", kv_cache="f32").kv_dtype == "f32"
    monkeypatch.setenv("EDGEQWEN_KV_CACHE", "f32")
    assert edgeqwen.load(GQ / "int4-g64").kv_dtype == "f32"
    with pytest.raises(EdgeQwenError, match="KV cache storage"):
        edgeqwen.load(GQ / "int4-g64", kv_cache="f8")


def test_int8_activation_kernel_comes_from_the_disk_cache_in_a_new_process(tmp_path):
    # the kernels are closures made per layout; a Dispatcher in their closure once made the cache
    # key differ in every process, so every run compiled them again (13-25 s for a 4-bit model)
    import os
    import subprocess
    import sys
    code = (
        "import numpy as np\n"
        "from edgeqwen.weights import Affine\n"
        "w = Affine(np.zeros((16, 32), np.uint8), np.ones((16, 1), np.float32), np.zeros((16, 1), np.float32), 4, 64)\n"
        "w.matvec(np.ones((1, 64), np.float32), np.empty((1, 16), np.float32))\n"
        "s = w._group._kernels[0].stats\n"
        "print(sum(s.cache_hits.values()), sum(s.cache_misses.values()))\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    first, second = ([int(v) for v in r.stdout.split()] for r in runs)
    assert first == [0, 1]  # compiled and saved
    assert second == [1, 0]  # loaded
