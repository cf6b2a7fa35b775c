"""Each kernel against a few lines of NumPy, on odd shapes."""

import numpy as np
import pytest

from edgeqwen.kernels import attention, linear, ops
from edgeqwen.synth import f32_to_bf16
from edgeqwen.weights import Dense

rng = np.random.default_rng(0)


def stored(w32, kind):
    """(stored array, its exact float32 value) for a weight kind."""
    if kind == "bf16":
        b = f32_to_bf16(w32)
        return b, (b.astype(np.uint32) << 16).view(np.float32)
    if kind == "f16":
        h = w32.astype(np.float16)
        return h.view(np.int16), h.astype(np.float32)
    return w32, w32


@pytest.mark.parametrize("kind", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("n,k", [(1, 1), (7, 13), (65, 33), (130, 257)])
@pytest.mark.parametrize("b", [1, 3, 8])
@pytest.mark.parametrize("four_rows", [False, True])
def test_matvec(kind, n, k, b, four_rows):
    w, w32 = stored(rng.standard_normal((n, k)).astype(np.float32), kind)
    x = rng.standard_normal((b, k)).astype(np.float32)
    out = np.full((b, n), np.nan, np.float32)
    linear.matvec(w, x, out, four_rows)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w32.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("t,n,k", [(2, 5, 3), (4, 4, 8), (9, 37, 19), (13, 70, 64)])
def test_matmul(kind, t, n, k):
    w, w32 = stored(rng.standard_normal((n, k)).astype(np.float32), kind)
    x = rng.standard_normal((t, k)).astype(np.float32)
    out = np.full((t, n), np.nan, np.float32)
    Dense(w, kind).matmul(x, out)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w32.T, rtol=1e-4, atol=1e-4)


def test_a_tokens_numbers_do_not_depend_on_its_batch():
    w, _ = stored(rng.standard_normal((67, 129)).astype(np.float32), "bf16")
    d = Dense(w, "bf16")
    x = rng.standard_normal((9, 129)).astype(np.float32)
    one, five, nine = np.empty((1, 67), np.float32), np.empty((5, 67), np.float32), np.empty((9, 67), np.float32)
    d.matvec(x[2:3], one)  # rows one at a time
    d.matvec(x[:5], five)  # four rows x four tokens, then four rows x one token
    d.matvec(x, nine)  # four, four, one
    assert np.array_equal(one[0], five[2])
    assert np.array_equal(five, nine[:5])
    a, b = np.empty((9, 67), np.float32), np.empty((3, 67), np.float32)
    d.matmul(x, a)
    d.matmul(x[6:], b)
    assert np.array_equal(a[6:], b)
    for four_rows in (False, True):  # a lone token's rows one at a time or four at a time
        linear.matvec(w, x[2:3], one, four_rows)
        assert np.array_equal(one[0], five[2])


def test_bf16_conversion_is_exact_for_every_pattern():
    bits = np.arange(0, 65536, dtype=np.uint32).astype(np.uint16)
    want = (bits.astype(np.uint32) << 16).view(np.float32)
    finite = np.isfinite(want)
    out = np.empty((65536, 1), np.float32)
    ops.embed(bits.reshape(-1, 1), np.arange(65536, dtype=np.int64), out)
    np.testing.assert_array_equal(out[finite, 0], want[finite])


def test_f16_conversion_is_exact_for_every_pattern():
    bits = np.arange(0, 65536, dtype=np.uint32).astype(np.uint16).view(np.int16)
    want = bits.view(np.float16).astype(np.float32)
    finite = np.isfinite(want)
    out = np.empty((65536, 1), np.float32)
    ops.embed(bits.reshape(-1, 1), np.arange(65536, dtype=np.int64), out)
    np.testing.assert_array_equal(out[finite, 0], want[finite])


def test_rmsnorm():
    x = rng.standard_normal((3, 40)).astype(np.float32)
    w = rng.standard_normal(40).astype(np.float32)
    out = np.empty_like(x)
    ops.rmsnorm(x, w, 1e-6, out)
    want = w * x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def rope_ref(v, pos, theta):
    hd = v.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = pos * inv
    c, s = np.cos(ang), np.sin(ang)
    a, b = v[: hd // 2], v[hd // 2:]
    return np.concatenate([a * c - b * s, b * c + a * s])


def test_qk_norm_rope_store():
    t, nh, nkv, hd, start, ctx = 3, 4, 2, 8, 5, 16
    q = rng.standard_normal((t, nh, hd)).astype(np.float32)
    k = rng.standard_normal((t, nkv, hd)).astype(np.float32)
    v = rng.standard_normal((t, nkv, hd)).astype(np.float32)
    qn = rng.standard_normal(hd).astype(np.float32)
    kn = rng.standard_normal(hd).astype(np.float32)
    cos = np.empty((ctx, hd // 2), np.float32)
    sin = np.empty_like(cos)
    ops.rope_tables(1e6, hd, ctx, cos, sin)
    kc = np.zeros((ctx, nkv, hd), np.float32)
    vc = np.zeros_like(kc)
    q0, k0 = q.copy(), k.copy()
    ops.qk_norm_rope_store(q, k, v, qn, kn, 1e-6, cos, sin, start, kc, vc, True, False)

    def norm(x, w):
        return w * x / np.sqrt((x.astype(np.float64) ** 2).mean() + 1e-6)

    for ti in range(t):
        for h in range(nh):
            np.testing.assert_allclose(q[ti, h], rope_ref(norm(q0[ti, h], qn), start + ti, 1e6), atol=1e-5)
        for h in range(nkv):
            want = rope_ref(norm(k0[ti, h], kn), start + ti, 1e6)
            np.testing.assert_allclose(kc[start + ti, h], want, atol=1e-5)
            np.testing.assert_array_equal(vc[start + ti, h], v[ti, h])
    assert not kc[:start].any() and not kc[start + t:].any()


def attention_ref(q, kc, vc, start):
    t, nh, hd = q.shape
    kv_mul = nh // kc.shape[1]
    out = np.empty_like(q, dtype=np.float64)
    for ti in range(t):
        n = start + ti + 1
        for h in range(nh):
            s = kc[:n, h // kv_mul] @ q[ti, h] / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[ti, h] = (p / p.sum()) @ vc[:n, h // kv_mul]
    return out


@pytest.mark.parametrize("t,start,nh,nkv", [(1, 0, 2, 2), (1, 300, 8, 2), (5, 0, 4, 4), (3, 129, 6, 3),
                                              (140, 0, 4, 2)])
def test_attention(t, start, nh, nkv):
    hd = 16
    ctx = start + t + 3
    q = rng.standard_normal((t, nh, hd)).astype(np.float32) * 3
    kc = rng.standard_normal((ctx, nkv, hd)).astype(np.float32)
    vc = rng.standard_normal((ctx, nkv, hd)).astype(np.float32)
    kc[start + t:] = 1e3  # beyond the causal window: must never be read
    out = np.empty((t, nh, hd), np.float32)
    attention.attention(q, kc, vc, start, out)
    np.testing.assert_allclose(out, attention_ref(q, kc, vc, start), atol=2e-5)


def test_silu_mul_and_add():
    g = rng.standard_normal((2, 9)).astype(np.float32)
    u = rng.standard_normal((2, 9)).astype(np.float32)
    out = g.copy()
    ops.silu_mul(out, u)
    np.testing.assert_allclose(out, g / (1 + np.exp(-g)) * u, rtol=1e-5, atol=1e-6)
    x = g.copy()
    ops.add_inplace(x, u)
    np.testing.assert_allclose(x, g + u)


def test_exp_f32_against_float64():
    from numba import njit

    from edgeqwen.kernels.numeric import exp_f32

    @njit
    def run(x, out):
        for i in range(x.shape[0]):  # the vectorised loop the kernels use
            out[i] = exp_f32(x[i])

    x = np.concatenate([np.linspace(-87.33, 88.0, 400_003, dtype=np.float32), rng.standard_normal(1000, np.float32),
                        np.float32([0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0])])
    out = np.empty_like(x)
    run(x, out)
    want = np.exp(x.astype(np.float64))
    assert (np.abs(out - want) / want).max() < 4e-7
    edges = np.float32([-87.4, -100.0, -1e30, 88.0, 1e30])  # underflow to 0; clamped at e**88
    out = np.empty_like(edges)
    run(edges, out)
    assert out[:3].tolist() == [0.0, 0.0, 0.0] and out[3] == out[4] and np.isfinite(out[4])


@pytest.mark.parametrize("n_keys,nh,nkv,hd", [(1, 2, 2, 16), (63, 8, 2, 16), (64, 16, 8, 128), (65, 4, 4, 32),
                                               (70, 9, 3, 64), (200, 32, 8, 128), (3, 14, 2, 64),
                                               (300, 16, 8, 128), (129, 6, 3, 16)])
@pytest.mark.parametrize("kv", ["f32", "f16"])
def test_decode_attention_split_by_position(n_keys, nh, nkv, hd, kv):
    # decode attention (tasks of SPLIT positions merged by log-sum-exp) against float64 softmax
    # attention on the same cached values; f16 caches hold float16 bits
    q = rng.standard_normal((nh, hd)).astype(np.float32) * 3
    kc = rng.standard_normal((n_keys + 5, nkv, hd)).astype(np.float32)
    vc = rng.standard_normal((n_keys + 5, nkv, hd)).astype(np.float32)
    kc[n_keys:] = 1e3  # beyond the window: never read
    if kv == "f16":
        kc, vc = kc.astype(np.float16), vc.astype(np.float16)
        kc_arg, vc_arg = kc.view(np.int16), vc.view(np.int16)
    else:
        kc_arg, vc_arg = kc, vc
    n_tasks = -(-n_keys // attention.SPLIT) + 1  # scratch may be larger than needed
    part_o = np.full((1, n_tasks, nh, hd), np.nan, np.float32)
    part_ml = np.full((1, n_tasks, nh, 2), np.nan, np.float32)
    out = np.full((1, nh, hd), np.nan, np.float32)
    # the cache as layer 1 of slot 0 of a (1, 2, ctx, nkv, hd) batch cache
    kb, vb = np.zeros((1, 2) + kc_arg.shape, kc_arg.dtype), np.zeros((1, 2) + vc_arg.shape, vc_arg.dtype)
    kb[0, 1], vb[0, 1] = kc_arg, vc_arg
    attention.attention_decode(q[None], kb, vb, 1, np.zeros(1, np.int64), np.array([n_keys - 1]), part_o, part_ml,
                               out)
    want = attention_ref(q[None], kc.astype(np.float32), vc.astype(np.float32), n_keys - 1)[0]
    np.testing.assert_allclose(out[0], want, atol=2e-5)


def test_f16_kv_store_rounds_to_nearest():
    t, nh, nkv, hd = 2, 4, 2, 16
    q = rng.standard_normal((t, nh, hd)).astype(np.float32)
    k = rng.standard_normal((t, nkv, hd)).astype(np.float32)
    v = rng.standard_normal((t, nkv, hd)).astype(np.float32)
    kc32, vc32 = np.zeros((8, nkv, hd), np.float32), np.zeros((8, nkv, hd), np.float32)
    kc16, vc16 = np.zeros((8, nkv, hd), np.int16), np.zeros((8, nkv, hd), np.int16)
    cos, sin = np.empty((8, hd // 2), np.float32), np.empty((8, hd // 2), np.float32)
    ops.rope_tables(1e6, hd, 8, cos, sin)
    ones = np.ones(hd, np.float32)
    for kc, vc in ((kc32, vc32), (kc16, vc16)):
        ops.qk_norm_rope_store(q.copy(), k.copy(), v.copy(), ones, ones, 1e-6, cos, sin, 3, kc, vc, True, False)
    np.testing.assert_array_equal(kc16.view(np.float16), kc32.astype(np.float16))
    np.testing.assert_array_equal(vc16.view(np.float16), vc32.astype(np.float16))
