"""Small per-token operations: embedding, RMSNorm, q/k norm + RoPE + cache store, SiLU gate.

All are O(tokens x hidden) and run single-threaded: at decode they are microseconds, far
below the cost of a parallel launch.
"""

import math

import numpy as np
from numba import njit

from .numeric import JIT, exp_f32, from_f32, to_f32



@njit(**JIT)
def embed(table, ids, out):
    # table: (V, H) stored dtype; ids: (T,) int64; out: (T, H) f32
    for t in range(ids.shape[0]):
        row = ids[t]
        for j in range(table.shape[1]):
            out[t, j] = to_f32(table[row, j])


@njit(inline="always", **JIT)
def _rmsnorm_row(xr, weight, eps, outr):
    # xr, outr: (H,) f32 (may alias); weight: (H,) stored dtype
    h = xr.shape[0]
    ss = np.float32(0.0)
    for j in range(h):
        ss += xr[j] * xr[j]
    inv = np.float32(1.0) / np.float32(math.sqrt(ss / np.float32(h) + np.float32(eps)))
    for j in range(h):
        outr[j] = to_f32(weight[j]) * (xr[j] * inv)


@njit(**JIT)
def rmsnorm(x, weight, eps, out):
    # x: (T, H) f32; weight: (H,) stored dtype; out: (T, H) f32 (may alias x)
    for t in range(x.shape[0]):
        _rmsnorm_row(x[t], weight, eps, out[t])


@njit(**JIT)
def add_rmsnorm(x, y, weight, eps, out):
    # the residual add and the next RMSNorm in one call: x += y, then out = rmsnorm(x);
    # x, y, out: (T, H) f32; weight: (H,) stored dtype
    for t in range(x.shape[0]):
        for j in range(x.shape[1]):
            x[t, j] += y[t, j]
        _rmsnorm_row(x[t], weight, eps, out[t])


@njit(**JIT)
def rope_tables(theta, head_dim, n_pos, cos, sin):
    # cos, sin: (n_pos, head_dim // 2) f32, computed in float32 like the reference
    half = head_dim // 2
    for i in range(half):
        inv_freq = np.float32(1.0 / (theta ** (np.float32(2 * i) / np.float32(head_dim))))
        for p in range(n_pos):
            angle = np.float32(p) * inv_freq
            cos[p, i] = np.float32(math.cos(angle))
            sin[p, i] = np.float32(math.sin(angle))


@njit(cache=True, nogil=True)  # no fastmath: a strict-order sum, so every caller gets the same bits
def _sum_squares(v):
    ss = np.float32(0.0)
    for j in range(v.shape[0]):
        ss += v[j] * v[j]
    return ss


@njit(**JIT)
def _norm_rope_head(v, weight, eps, cos_p, sin_p, use_norm, interleaved):
    # v: (head_dim,) f32, in place: per-head RMSNorm (Qwen3), then RoPE -- split-half (NeoX, Hugging
    # Face layout) or on adjacent pairs (llama.cpp's permuted llama layout)
    hd = v.shape[0]
    half = hd // 2
    if use_norm:
        ss = _sum_squares(v)
        inv = np.float32(1.0) / np.float32(math.sqrt(ss / np.float32(hd) + np.float32(eps)))
        for j in range(hd):
            v[j] = to_f32(weight[j]) * (v[j] * inv)
    if interleaved:
        for i in range(half):
            a = v[2 * i]
            b = v[2 * i + 1]
            v[2 * i] = a * cos_p[i] - b * sin_p[i]
            v[2 * i + 1] = b * cos_p[i] + a * sin_p[i]
    else:
        for i in range(half):
            a = v[i]
            b = v[i + half]
            v[i] = a * cos_p[i] - b * sin_p[i]
            v[i + half] = b * cos_p[i] + a * sin_p[i]


@njit(inline="always", **JIT)
def _qk_token(qt, kt, vt, q_norm, k_norm, eps, cos_p, sin_p, kc_p, vc_p, use_norm, interleaved):
    # one token: q (n_heads, hd) and k (n_kv, hd) normed and rotated in place; k, v stored to kc_p, vc_p
    for h in range(qt.shape[0]):
        _norm_rope_head(qt[h], q_norm, eps, cos_p, sin_p, use_norm, interleaved)
    for h in range(kt.shape[0]):
        _norm_rope_head(kt[h], k_norm, eps, cos_p, sin_p, use_norm, interleaved)
        for j in range(kt.shape[1]):
            kc_p[h, j] = from_f32(kt[h, j], kc_p)
            vc_p[h, j] = from_f32(vt[h, j], vc_p)


@njit(**JIT)
def qk_norm_rope_store(q, k, v, q_norm, k_norm, eps, cos, sin, start, k_cache, v_cache, use_norm, interleaved):
    # q: (T, n_heads, hd) f32, normed and rotated in place
    # k, v: (T, n_kv, hd) f32; k normed and rotated in place, then both stored
    # k_cache, v_cache: (ctx, n_kv, hd) f32, this layer's slice; positions start..start+T-1
    for t in range(q.shape[0]):
        p = start + t
        _qk_token(q[t], k[t], v[t], q_norm, k_norm, eps, cos[p], sin[p], k_cache[p], v_cache[p], use_norm,
                  interleaved)


@njit(**JIT)
def qk_norm_rope_store_slots(q, k, v, q_norm, k_norm, eps, cos, sin, layer, slots, positions, k_cache, v_cache,
                             use_norm, interleaved):
    # token b of a batch sits at positions[b] of cache slot slots[b]
    # q: (B, n_heads, hd); k, v: (B, n_kv, hd); k_cache, v_cache: (n_slots, layers, ctx, n_kv, hd)
    for b in range(q.shape[0]):
        p = positions[b]
        sl = slots[b]
        _qk_token(q[b], k[b], v[b], q_norm, k_norm, eps, cos[p], sin[p], k_cache[sl, layer, p],
                  v_cache[sl, layer, p], use_norm, interleaved)


@njit(**JIT)
def silu_mul(gate, up):
    # gate, up: (T, I) f32; gate = silu(gate) * up, in place (an output that may alias an input
    # defeats LLVM's runtime overlap check, and the loop runs scalar: 8x slower)
    for t in range(gate.shape[0]):
        for j in range(gate.shape[1]):
            g = gate[t, j]
            gate[t, j] = g / (np.float32(1.0) + exp_f32(-g)) * up[t, j]


@njit(**JIT)
def add_inplace(x, y):
    # x += y; x, y: (T, H) f32
    for t in range(x.shape[0]):
        for j in range(x.shape[1]):
            x[t, j] += y[t, j]
