"""Causal GQA attention over the KV cache: prefill (many tokens of one sequence) and decode (one
token of each of B sequences).

Query token t sits at absolute position ``start + t`` and attends to cache positions 0..start+t.
The ``kv_mul`` query heads that share a K/V head read each cached key and value together. Keys
are visited in blocks with an online softmax (prefill) or in spans merged by log-sum-exp
(decode), so scratch stays bounded whatever the context length.
"""

import math

import numpy as np
from numba import njit, prange

from .linear import tile_matmul
from .numeric import JIT, exp_f32, segment_of, to_f32
from .simd import dot_rows, prefetch, weighted_rows

NEG_BIG = np.float32(-1e30)  # not -inf: fastmath lets LLVM assume no infinities
Q_ROWS = 32  # query rows (token, head) per prefill task
KEYS = 64  # cached positions per step of a prefill task


@njit(inline="always", **JIT)
def _softmax_step(s, r, hi, m, l, o):
    # online softmax of row r of a key block: scores s[r, :hi] (the keys row r may see; none if
    # hi <= 0) become exp(score - running max), the rest of the row 0; the running max m[r], sum
    # l[r] and output o[r] are rescaled to the new max
    if hi <= 0:
        s[r, :] = 0.0
        return
    bmax = NEG_BIG
    for i in range(hi):
        bmax = max(bmax, s[r, i])
    m_new = max(m[r], bmax)
    corr = exp_f32(m[r] - m_new)
    total = np.float32(0.0)
    for i in range(hi):
        e = exp_f32(s[r, i] - m_new)
        s[r, i] = e
        total += e
    for i in range(hi, s.shape[1]):
        s[r, i] = 0.0
    l[r] = l[r] * corr + total
    m[r] = m_new
    for j in range(o.shape[1]):
        o[r, j] *= corr


@njit(parallel=True, **JIT)
def attention(q, k_cache, v_cache, start, out):
    # prefill: q (T, n_heads, hd) f32 at positions start..start+T-1 attends causally to k_cache,
    # v_cache (ctx, n_kv, hd) f32 or f16 bits; out (T, n_heads, hd) f32. One task is one kv head
    # and a block of tokens: its Q_ROWS (token, head) query rows meet KEYS cached positions at a
    # time as two small matrix products on linear.tile_matmul's register blocks (scores = Q K^T,
    # then P V), with an online softmax in between, so each key and value is read once per block.
    t_len, n_heads, hd = q.shape
    n_kv = k_cache.shape[1]
    kv_mul = n_heads // n_kv
    per = max(1, Q_ROWS // kv_mul)  # tokens per task
    n_blocks = (t_len + per - 1) // per
    scale = np.float32(1.0 / math.sqrt(hd))
    for task in prange(n_kv * n_blocks):
        g = task // n_blocks
        t0 = (task % n_blocks) * per
        t1 = min(t_len, t0 + per)
        nq = (t1 - t0) * kv_mul
        nq4 = (nq + 3) // 4 * 4
        qt = np.zeros((nq4, hd), np.float32)  # row r: token t0 + r // kv_mul, head g * kv_mul + r % kv_mul
        for r in range(nq):
            for j in range(hd):
                qt[r, j] = q[t0 + r // kv_mul, g * kv_mul + r % kv_mul, j] * scale
        kt = np.empty((KEYS, hd), np.float32)
        vt = np.zeros((hd, KEYS), np.float32)  # the values transposed: P V is then P @ vt.T
        s = np.empty((nq4, KEYS), np.float32)
        ob = np.empty((nq4, hd), np.float32)
        o = np.zeros((nq4, hd), np.float32)
        m = np.full(nq4, NEG_BIG, np.float32)
        l = np.zeros(nq4, np.float32)
        n_keys = start + t1  # what the block's last token sees
        for p0 in range(0, n_keys, KEYS):
            kb = min(KEYS, n_keys - p0)
            for i in range(kb):
                for j in range(hd):
                    kt[i, j] = to_f32(k_cache[p0 + i, g, j])
                    vt[j, i] = to_f32(v_cache[p0 + i, g, j])
            if kb < KEYS:
                vt[:, kb:] = 0.0
            tile_matmul(kt, kb, qt, s, 0)  # s[:, :kb] = scaled scores
            for r in range(nq):
                _softmax_step(s, r, min(kb, start + t0 + r // kv_mul + 1 - p0), m, l, o)
            tile_matmul(vt, hd, s, ob, 0)  # ob = P @ V
            for r in range(nq):
                for j in range(hd):
                    o[r, j] += ob[r, j]
        for r in range(nq):
            inv = np.float32(1.0) / l[r]
            for j in range(hd):
                out[t0 + r // kv_mul, g * kv_mul + r % kv_mul, j] = o[r, j] * inv


SPLIT = 64  # most cached positions per task of decode attention
MIN_TASKS = 4  # short caches are still cut into this many tasks (threads busy to the end; per
# sequence, never by batch size: a sequence's sums are the same alone or batched) ...
MIN_SPAN = 16  # ... of at least this many positions


@njit(**JIT)
def _span_softmax(s, n_p, o, ml):
    # per head: the span's scores s[h, :n_p] -> exp(score - span max) in place, (max, sum) into
    # ml (n_heads, 2); the head's output row o[h] zeroed
    for h in range(s.shape[0]):
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
        for j in range(o.shape[1]):
            o[h, j] = 0.0


@njit(**JIT)
def _decode_span(q, k_cache, v_cache, p0, n_p, scale, s, o, ml, hd):
    # positions p0..p0+n_p-1 for every head, plain loops (any head size): scores into s
    # (n_heads, SPLIT), their softmax partial (max, sum) into ml (n_heads, 2), the exp-weighted sum
    # of values into o (n_heads, hd)
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
    _span_softmax(s, n_p, o, ml)
    for i in range(n_p):
        for g in range(n_kv):
            vp = v_cache[p0 + i, g]
            for hh in range(kv_mul):
                h = g * kv_mul + hh
                e = s[h, i]
                for j in range(hd):
                    o[h, j] += e * to_f32(vp[j])


@njit(**JIT)
def _span_rows(q, k_cache, v_cache, p0, n_p, scale, s, o, ml, heads, hd):
    # _decode_span on the SIMD row intrinsics, ``heads`` (literal 1 or 2, dividing kv_mul) query
    # heads per cached row; hd a literal in simd.ROW_WIDTHS. Scores go position by position (the
    # keys stream in memory order) and ask the cache for each position's values meanwhile; the
    # value sums then go kv head by kv head with the outputs held in registers.
    n_heads = q.shape[0]
    n_kv = k_cache.shape[1]
    kv_mul = n_heads // n_kv
    stride = n_kv * hd
    for i in range(n_p):
        row = (p0 + i) * stride
        prefetch(v_cache, row, stride)
        for g in range(n_kv):
            for h0 in range(g * kv_mul, (g + 1) * kv_mul, heads):
                dot_rows(k_cache, row + g * hd, stride, q, h0 * hd, hd, 1, s, h0 * SPLIT + i, SPLIT, scale, heads, hd)
    _span_softmax(s, n_p, o, ml)
    for g in range(n_kv):
        for h0 in range(g * kv_mul, (g + 1) * kv_mul, heads):
            weighted_rows(v_cache, p0 * stride + g * hd, stride, s, h0 * SPLIT, SPLIT, n_p, o, h0 * hd, hd,
                          heads, hd)


@njit(**JIT)
def _span_task(q, k_cache, v_cache, n_keys, task, span, s, o, ml):
    # task-th ``span`` (<= SPLIT) positions of one sequence's decode attention: the row intrinsics
    # for the usual head sizes (literal), plain loops otherwise
    hd = q.shape[1]
    scale = np.float32(1.0 / math.sqrt(hd))
    p0 = task * span
    n_p = min(n_keys, p0 + span) - p0
    pairs = (q.shape[0] // k_cache.shape[1]) % 2 == 0
    if hd == 128:
        if pairs:
            _span_rows(q, k_cache, v_cache, p0, n_p, scale, s, o, ml, 2, 128)
        else:
            _span_rows(q, k_cache, v_cache, p0, n_p, scale, s, o, ml, 1, 128)
    elif hd == 64:
        if pairs:
            _span_rows(q, k_cache, v_cache, p0, n_p, scale, s, o, ml, 2, 64)
        else:
            _span_rows(q, k_cache, v_cache, p0, n_p, scale, s, o, ml, 1, 64)
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


@njit(inline="always", **JIT)
def _decode_task(q, k_cache, v_cache, layer, slots, positions, part_o, part_ml, first, spans, bt):
    b = segment_of(first, bt)
    task = bt - first[b]
    s = np.empty((q.shape[1], SPLIT), np.float32)
    sl = slots[b]
    _span_task(q[b], k_cache[sl, layer], v_cache[sl, layer], positions[b] + 1, task, spans[b], s,
               part_o[b, task], part_ml[b, task])


@njit(parallel=True, **JIT)
def attention_decode(q, k_cache, v_cache, layer, slots, positions, part_o, part_ml, out):
    # decode attention of B sequences (one token each; a single sequence is B = 1 over its cache
    # with a leading axis of 1, so batched and single decode are the same compiled code), split by
    # position: each task streams up to SPLIT whole positions (every kv head: contiguous memory) and
    # keeps a partial softmax per head, merged at the end by log-sum-exp in task order.
    # Token b sits at positions[b] of cache slot slots[b]; q: (B, n_heads, hd) f32; k_cache,
    # v_cache: (n_slots, layers, ctx, n_kv, hd) f32 or f16 bits, read at ``layer``; part_o:
    # (B, n_tasks, n_heads, hd), part_ml: (B, n_tasks, n_heads, 2) f32 scratch, n_tasks >=
    # ceil(ctx / SPLIT); out: (B, n_heads, hd) f32
    b_len, n_heads, hd = q.shape
    first = np.zeros(b_len + 1, np.int64)  # first task of each sequence: only spans that hold keys
    spans = np.empty(b_len, np.int64)  # positions per task of each sequence
    for b in range(b_len):
        n_keys = positions[b] + 1
        n_tasks = max(-(-n_keys // SPLIT), min(MIN_TASKS, -(-n_keys // MIN_SPAN), part_o.shape[1]))
        spans[b] = -(-n_keys // n_tasks)
        first[b + 1] = first[b] + -(-n_keys // spans[b])
    for bt in prange(first[b_len]):
        _decode_task(q, k_cache, v_cache, layer, slots, positions, part_o, part_ml, first, spans, bt)
    if b_len == 1:  # one merge: a parallel region of one iteration costs more than it (measured)
        _merge(part_o[0], part_ml[0], first[1], out[0])
        return
    for b in prange(b_len):
        _merge(part_o[b], part_ml[b], first[b + 1] - first[b], out[b])
