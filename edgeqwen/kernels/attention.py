"""Causal GQA attention over the KV cache, one kernel for prefill and decode.

Query token t sits at absolute position ``start + t`` and attends to cache positions
0..start+t. One task is one (token, kv head) pair: the ``kv_mul`` query heads that share a
K/V head read each cached key and value once. Keys are visited in blocks of ``BLOCK``
with an online softmax, so memory stays O(BLOCK) per task, whatever the context length.
"""

import math

import numpy as np
from numba import njit, prange

from .numeric import JIT, exp_f32

BLOCK = 128
NEG_BIG = np.float32(-1e30)  # not -inf: fastmath lets LLVM assume no infinities


@njit(inline="always", **JIT)
def _attend(qt, k_cache, v_cache, n_keys, g, s, o):
    # qt: (n_heads, hd) one token's queries; k_cache, v_cache: (ctx, n_kv, hd)
    # g: the kv head; s: (kv_mul, BLOCK + 2) scratch; o: (kv_mul, hd) output of heads g*kv_mul...
    kv_mul, hd = o.shape
    scale = np.float32(1.0 / math.sqrt(hd))
    m = s[:, BLOCK]
    l = s[:, BLOCK + 1]
    m[:] = NEG_BIG
    l[:] = 0.0
    o[:] = 0.0
    for b0 in range(0, n_keys, BLOCK):
        b1 = min(n_keys, b0 + BLOCK)
        for h in range(kv_mul):
            qh = qt[g * kv_mul + h]
            bmax = NEG_BIG
            for p in range(b0, b1):
                kp = k_cache[p, g]
                acc = np.float32(0.0)
                for j in range(hd):
                    acc += qh[j] * kp[j]
                acc *= scale
                s[h, p - b0] = acc
                bmax = max(bmax, acc)
            m_new = max(m[h], bmax)
            corr = exp_f32(m[h] - m_new)
            total = np.float32(0.0)
            for p in range(b0, b1):
                e = exp_f32(s[h, p - b0] - m_new)
                s[h, p - b0] = e
                total += e
            l[h] = l[h] * corr + total
            m[h] = m_new
            oh = o[h]
            for j in range(hd):
                oh[j] *= corr
            for p in range(b0, b1):
                e = s[h, p - b0]
                vp = v_cache[p, g]
                for j in range(hd):
                    oh[j] += e * vp[j]
    for h in range(kv_mul):
        inv = np.float32(1.0) / l[h]
        for j in range(hd):
            o[h, j] *= inv


@njit(parallel=True, **JIT)
def attention(q, k_cache, v_cache, start, scores, out):
    # q: (T, n_heads, hd) f32 at positions start..start+T-1; k_cache, v_cache: (ctx, n_kv, hd) f32
    # scores: (T * n_kv, kv_mul, BLOCK + 2) f32 scratch (block scores, running max, running sum)
    # out: (T, n_heads, hd) f32
    t_len, n_heads, hd = q.shape
    n_kv = k_cache.shape[1]
    kv_mul = n_heads // n_kv
    for task in prange(t_len * n_kv):
        t = task // n_kv
        g = task % n_kv
        _attend(q[t], k_cache, v_cache, start + t + 1, g, scores[task], out[t, g * kv_mul:(g + 1) * kv_mul])


@njit(parallel=True, **JIT)
def attention_slots(q, k_cache, v_cache, layer, slots, positions, scores, out):
    # one decode token for each of B sequences: q: (B, n_heads, hd) f32, token b at positions[b] of
    # cache slot slots[b]; k_cache, v_cache: (n_slots, layers, ctx, n_kv, hd), read at ``layer``
    # scores: (B * n_kv, kv_mul, BLOCK + 2); out: (B, n_heads, hd)
    b_len, n_heads, hd = q.shape
    n_kv = k_cache.shape[3]
    kv_mul = n_heads // n_kv
    for task in prange(b_len * n_kv):
        b = task // n_kv
        g = task % n_kv
        sl = slots[b]
        _attend(q[b], k_cache[sl, layer], v_cache[sl, layer], positions[b] + 1, g, scores[task],
                out[b, g * kv_mul:(g + 1) * kv_mul])
