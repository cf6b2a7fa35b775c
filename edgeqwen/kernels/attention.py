"""Causal GQA attention over the KV cache, one kernel for prefill and decode.

Query token t sits at absolute position ``start + t`` and attends to cache positions
0..start+t. One task is one (token, kv head) pair: the ``kv_mul`` query heads that share a
K/V head read each cached key and value once. Keys are visited in blocks of ``BLOCK``
with an online softmax, so memory stays O(BLOCK) per task, whatever the context length.
"""

import math

import numpy as np
from numba import njit, prange

from .numeric import JIT, exp_f32, to_f32

BLOCK = 128
NEG_BIG = np.float32(-1e30)  # not -inf: fastmath lets LLVM assume no infinities


@njit(inline="always", **JIT)
def _attend(qt, k_cache, v_cache, n_keys, g, s, o):
    # qt: (n_heads, hd) one token's queries; k_cache, v_cache: (ctx, n_kv, hd) f32, or f16 bits as int16
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
                    acc += qh[j] * to_f32(kp[j])
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
                    oh[j] += e * to_f32(vp[j])
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


SPLIT = 64  # cached positions per task of decode attention


@njit(inline="always", **JIT)
def _decode_span(q, k_cache, v_cache, p0, n_p, scale, s, o, ml, hd):
    # positions p0..p0+n_p-1 for every head: scores into s (n_heads, SPLIT), their softmax partial
    # (max, sum) into ml (n_heads, 2), the exp-weighted sum of values into o (n_heads, hd). The
    # caller passes hd as a literal where it can, so the inner loops have constant trip counts.
    n_heads = q.shape[0]
    n_kv = k_cache.shape[1]
    kv_mul = n_heads // n_kv
    for i in range(n_p):
        for g in range(n_kv):
            kp = k_cache[p0 + i, g]
            for hh in range(kv_mul):
                qh = q[g * kv_mul + hh]
                acc = np.float32(0.0)
                for j in range(hd):
                    acc += qh[j] * to_f32(kp[j])
                s[g * kv_mul + hh, i] = acc * scale
    for h in range(n_heads):
        m = NEG_BIG
        for i in range(n_p):
            m = max(m, s[h, i])
        total = np.float32(0.0)
        for i in range(n_p):
            e = exp_f32(s[h, i] - m)
            s[h, i] = e
            total += e
        ml[h, 0] = m
        ml[h, 1] = total
        for j in range(hd):
            o[h, j] = 0.0
    for i in range(n_p):
        for g in range(n_kv):
            vp = v_cache[p0 + i, g]
            for hh in range(kv_mul):
                h = g * kv_mul + hh
                e = s[h, i]
                for j in range(hd):
                    o[h, j] += e * to_f32(vp[j])


@njit(inline="always", **JIT)
def _span_task(q, k_cache, v_cache, n_keys, task, s, o, ml):
    # task-th SPLIT positions of one sequence's decode attention (hd a literal for Qwen3's 128)
    hd = q.shape[1]
    scale = np.float32(1.0 / math.sqrt(hd))
    p0 = task * SPLIT
    n_p = min(n_keys, p0 + SPLIT) - p0
    if hd == 128:
        _decode_span(q, k_cache, v_cache, p0, n_p, scale, s, o, ml, 128)
    else:
        _decode_span(q, k_cache, v_cache, p0, n_p, scale, s, o, ml, hd)


@njit(inline="always", **JIT)
def _merge(part_o, part_ml, n_tasks, out):
    # partial softmaxes of n_tasks spans -> out (n_heads, hd), merged by log-sum-exp in task order
    n_heads, hd = out.shape
    for h in range(n_heads):
        m = NEG_BIG
        for task in range(n_tasks):
            m = max(m, part_ml[task, h, 0])
        total = np.float32(0.0)
        for j in range(hd):
            out[h, j] = 0.0
        for task in range(n_tasks):
            c = exp_f32(part_ml[task, h, 0] - m)
            total += c * part_ml[task, h, 1]
            for j in range(hd):
                out[h, j] += c * part_o[task, h, j]
        inv = np.float32(1.0) / total
        for j in range(hd):
            out[h, j] *= inv


@njit(parallel=True, **JIT)
def attention_decode(q, k_cache, v_cache, layer, slots, positions, part_o, part_ml, out):
    # decode attention of B sequences (one token each; a single sequence is B = 1 over its cache
    # with a leading axis of 1, so batched and single decode are the same compiled code), split by
    # position: each task streams SPLIT whole positions (every kv head: contiguous memory) and
    # keeps a partial softmax per head, merged at the end by log-sum-exp in task order.
    # Token b sits at positions[b] of cache slot slots[b]; q: (B, n_heads, hd) f32; k_cache,
    # v_cache: (n_slots, layers, ctx, n_kv, hd) f32 or f16 bits, read at ``layer``; part_o:
    # (B, n_tasks, n_heads, hd), part_ml: (B, n_tasks, n_heads, 2) f32 scratch, n_tasks >=
    # ceil(ctx / SPLIT); out: (B, n_heads, hd) f32
    b_len, n_heads, hd = q.shape
    per = part_o.shape[1]
    for bt in prange(b_len * per):
        b = bt // per
        task = bt % per
        n_keys = positions[b] + 1
        if task * SPLIT < n_keys:
            s = np.empty((n_heads, SPLIT), np.float32)
            sl = slots[b]
            _span_task(q[b], k_cache[sl, layer], v_cache[sl, layer], n_keys, task, s, part_o[b, task],
                       part_ml[b, task])
    for b in prange(b_len):
        _merge(part_o[b], part_ml[b], (positions[b] + SPLIT) // SPLIT, out[b])
