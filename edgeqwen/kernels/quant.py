"""Quantized linear layers, run directly on the stored bytes.

Affine (MLX layout): per row, groups of ``gs`` weights share a scale and a bias,
``w = scale * q + bias``, q packed low bits first in uint32 words, viewed here as bytes: for
4 bits, byte j of a row holds element 2j in its low nibble and 2j+1 in its high nibble.

FP8 block (official Qwen3 FP8): e4m3 bytes, ``W = fp8 * scale_inv[row // 128, col // 128]``.
An e4m3 byte becomes float32 exactly by moving its 7 magnitude bits to the top of a float32
exponent/mantissa field and multiplying by 2**120 (which also gets the subnormals right). The
decode and prefill kernels never multiply: per block of rows, the activations are scaled by each
column block's scale * 2**60 once, the rows are then dense rows of e4m3 / 2**120 (sign extend,
shift, mask: simd.dense_dot), and the outputs are multiplied by 2**60.
"""

from functools import lru_cache

import numpy as np
from numba import njit, prange

from .linear import TILE_ROWS, aligned_rows, aligned_x, dense_block, rows_x_tokens, tile_matmul
from .numeric import JIT, e4m3_unscaled, nib_hi, nib_lo, segment_of, to_f32, u8_to_f32
from .simd import (AFFINE_MAX_B, LANE_PANEL, MAX_B, Q8_CARRY, affine_q8_dot, byte_dot, lane_dot, lane_pair, nibble_dot,
                   prefetch, quant_block)

ROWS_PER_TASK = 16
STEP_CODES = 32 * 1024  # activation codes (all tokens) of a step of a several-token product of long rows, so
# that they stay in L1 across a task's rows (_lane_rows, _affine_rows; measured on 2560x9728: eight tokens'
# 78 KB made 4-bit lane rows 2.3x slower and 8-bit rows 3x slower)
PREFETCH_BYTES = 8192  # rows ask for the codes this far ahead: 16 rows of 1024 4-bit codes (4 rows, as
# before, were 16-22% slower from memory on a Zen 5 host reading 89 GB/s, 3-4% at 50 GB/s; 32 KB was worse). 8-bit rows
# only where simd.prefetch_streams(): they lost 15% by it on an AMD EPYC host whose prefetcher
# already streamed them, and gain 1.3x on an Intel Xeon host (int8-g64 lm_head 10.5 -> 8.1 ms)
E4M3_RESCALE = np.float32(2.0 ** 120)
E4M3_HALF = np.float32(2.0 ** 60)  # fp8_matvec: half the rescale on the activations, half on the outputs


# -- activation preparation (once per matvec, shared by every row) ----------------------------

@njit(**JIT)
def group_sums(x, xsum, gs):
    # x: (B, K) f32; xsum: (B, K/gs) f32 group sums
    for b in range(x.shape[0]):
        for g in range(xsum.shape[1]):
            s = np.float32(0.0)
            for j in range(g * gs, (g + 1) * gs):
                s += x[b, j]
            xsum[b, g] = s


@njit(**JIT)
def split_even_odd(x, xe, xo):
    # x: (B, K) f32 -> xe, xo: (B, K/2) elements 2j and 2j+1 (MLX int4 byte j holds weights 2j, 2j+1)
    for b in range(x.shape[0]):
        for j in range(xe.shape[1]):
            xe[b, j] = x[b, 2 * j]
            xo[b, j] = x[b, 2 * j + 1]


ORDER_PLAIN, ORDER_MLX4, ORDER_LANES = 0, 1, 2


@njit(**JIT)
def quantize_act(x, xq, dx, xs, order):
    # x: (B, K) f32 -> int8 codes per block of 32 (llama.cpp's Q8_0 rule, the scale kept in f32):
    # d = max|x| / 127, q = round(x * 127 / max|x|); xq: (B, K) i8. dx, xs: (B, NB8) f32 block scale d
    # and d * sum(q), zero past the K/32 blocks (simd.affine_q8_dot reads whole octets of blocks).
    # order: ORDER_PLAIN in order; ORDER_MLX4 per quad of blocks the partners of the low nibbles of
    # the four blocks, then of the high nibbles, a last pair the same way (MLX int4 byte j holds
    # elements 2j, 2j+1); ORDER_LANES the lane layout of simd.lane_dot, xq (B, P*512) with P whole
    # panels of 16 blocks, the padding blocks' codes zero
    nb = x.shape[1] // 32
    quads = nb // 4 * 4 if order == ORDER_MLX4 else 0
    for b in range(x.shape[0]):
        xr = x[b]
        qr = xq[b]
        for g in range(nb):
            if order == ORDER_LANES:
                amax, total = quant_block(xr, 32 * g, qr, 512 * (g // LANE_PANEL) + 4 * (g % LANE_PANEL), 0, 2)
            elif g < quads:  # four blocks' low-nibble partners, then their high ones
                base = 128 * (g // 4) + 16 * (g % 4)
                amax, total = quant_block(xr, 32 * g, qr, base, base + 64, 1)
            elif order == ORDER_MLX4:  # a last pair
                base = 64 * (g // 2) + 16 * (g % 2)
                amax, total = quant_block(xr, 32 * g, qr, base, base + 32, 1)
            else:
                amax, total = quant_block(xr, 32 * g, qr, 32 * g, 0, 0)
            dx[b, g] = amax / np.float32(127.0)
            xs[b, g] = dx[b, g] * total
        for g in range(nb, dx.shape[1]):
            dx[b, g] = 0.0
            xs[b, g] = 0.0
        if order == ORDER_LANES:
            for g in range(nb, xq.shape[1] // 32):
                base = 512 * (g // LANE_PANEL) + 4 * (g % LANE_PANEL)
                for s in range(4):
                    for i in range(4):
                        qr[base + 128 * s + i] = 0
                        qr[base + 128 * s + 64 + i] = 0


@njit(parallel=True, **JIT)
def to_lanes(wq, out):
    # wq (N, K/2) u8 MLX 4-bit rows -> out (N, P*256) u8 in simd.lane_dot's lane layout (P = whole
    # panels of 16 blocks of 32; the padding blocks' bytes zero)
    nb = wq.shape[1] // 16
    for r in prange(wq.shape[0]):
        row = wq[r]
        o = out[r]
        for j in range(nb, o.shape[0] // 16):
            for s in range(4):
                for i in range(4):
                    o[256 * (j // LANE_PANEL) + 64 * s + 4 * (j % LANE_PANEL) + i] = 0
        for j in range(nb):
            base = 256 * (j // LANE_PANEL) + 4 * (j % LANE_PANEL)
            for s in range(4):
                for i in range(4):
                    e = 32 * j + 8 * s + i  # low nibble: element e, high nibble: element e + 4
                    lo = (row[e >> 1] >> (4 * (e & 1))) & 15
                    hi = (row[(e + 4) >> 1] >> (4 * (e & 1))) & 15
                    o[base + 64 * s + i] = lo | (hi << 4)


@njit(**JIT)
def sums16(xq, dx, xs):
    # xs[b, s] = dx[b, s // 2] * the sum of the int8 codes of activations 16s..16s+15, xq in the
    # ORDER_MLX4 layout (per 128: 64 partners of low nibbles, then 64 of high ones): 16-weight groups
    # (6-bit codes, simd.affine_q8_dot) take their codes' offset from it
    for b in range(xq.shape[0]):
        for u in range(xq.shape[1] // 128):
            for s in range(8):
                t = np.int32(0)
                for j in range(8):
                    t += np.int32(xq[b, 128 * u + 8 * s + j]) + np.int32(xq[b, 128 * u + 64 + 8 * s + j])
                xs[b, 8 * u + s] = dx[b, (8 * u + s) // 2] * np.float32(t)
        for s in range(xq.shape[1] // 16, xs.shape[1]):
            xs[b, s] = 0.0


@njit(inline="always", **JIT)
def _task_table(wqs):
    # first[i]: the first task (ROWS_PER_TASK rows) of matrix i of a tuple that shares one parallel
    # loop; first[-1] the task count (segment_of finds a task's matrix)
    first = np.zeros(len(wqs) + 1, np.int64)
    for i in range(len(wqs)):
        first[i + 1] = first[i] + (wqs[i].shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    return first


@njit(inline="always", **JIT)
def _ahead(wq):
    # rows PREFETCH_BYTES of codes ahead of row r (at least one)
    return max(1, PREFETCH_BYTES // wq.shape[1])


@njit(inline="always", **JIT)
def _affine_step(wq, sc, bi, su, xq, dx, xs, nb, acc, res, out, r0, r1, b0, take, bits, per, offset, m0, m1, n_m,
                 carry, pf):
    # rows r0..r1-1 over octets m0..m1-1 (of n_m) against tokens b0..b0+take-1; pf: ask for the rows
    # PREFETCH_BYTES ahead
    e = b0 + take
    ahead = _ahead(wq)
    for r in range(r0, r1):
        if pf and r + ahead < wq.shape[0]:
            prefetch(wq, (r + ahead) * wq.shape[1], wq.shape[1])
        affine_q8_dot(wq[r], sc[r], bi[r], su[r], xq[b0:e], dx[b0:e], xs[b0:e], nb, m0, m1, acc[r - r0], res, take,
                      bits, per, offset, carry)
        if m1 == n_m:
            for b in range(b0, e):
                out[b, r] = res[b - b0]


@njit(inline="always", **JIT)
def _affine_rows(wq, sc, bi, su, xq, dx, xs, nb, acc, res, out, r0, r1, b0, take, bits, per, offset, pf8, pairs):
    # rows r0..r1-1 against tokens b0..b0+take-1 (take, bits, per, offset literals): out[b, r];
    # pf8: 8-bit rows prefetch too (pairs unread: the lane layout's row pairs). Long rows go in steps
    # of octets as _lane_rows' go in panels, each token's sums carried in acc (rows, AFFINE_MAX_B * Q8_CARRY)
    pf = (bits != 8 or pf8) and b0 == 0  # the first token chunk streams
    n_m = -(-nb // 8)
    steps = -(-n_m * 256 * take // STEP_CODES)
    if take <= 2 or steps == 1:  # (take <= 2: one step up to K = 16384, and no carrying code compiled)
        _affine_step(wq, sc, bi, su, xq, dx, xs, nb, acc, res, out, r0, r1, b0, take, bits, per, offset, 0, n_m, n_m, 0,
                     pf)
        return
    step = -(-n_m // steps)
    for m0 in range(0, n_m, step):
        _affine_step(wq, sc, bi, su, xq, dx, xs, nb, acc, res, out, r0, r1, b0, take, bits, per, offset, m0,
                     min(n_m, m0 + step), n_m, 1, pf and m0 == 0)


@njit(**JIT)
def from_lanes(lanes, rows, out):
    # the inverse of to_lanes for some rows: lanes (N, P*256) u8, rows (R,) i64 -> out (R, K/2) u8 MLX bytes
    nb = out.shape[1] // 16
    for i in range(rows.shape[0]):
        src = lanes[rows[i]]
        o = out[i]
        for j in range(nb):
            base = 256 * (j // LANE_PANEL) + 4 * (j % LANE_PANEL)
            for s in range(4):
                for k in range(0, 4, 2):  # elements e, e+1 (low nibbles) and e+4, e+5 (high ones)
                    a = src[base + 64 * s + k]
                    b = src[base + 64 * s + k + 1]
                    o[16 * j + 4 * s + k // 2] = (a & 15) | ((b & 15) << 4)
                    o[16 * j + 4 * s + 2 + k // 2] = (a >> 4) | (b & 240)


@njit(inline="always", **JIT)
def _lane_step(wq, sc, bi, su, xq, dx, xs, acc, res, out, r0, r1, b0, take, per, offset, p0, p1, n_p, carry, pf,
               pairs):
    # rows r0..r1-1 over panels p0..p1 (of n_p) against tokens b0..b0+take-1; with pairs (literal),
    # eight tokens go two rows at a time (simd.lane_pair, four tokens a call), a last odd row alone;
    # pf: ask for the rows PREFETCH_BYTES ahead
    r = r0
    ahead = _ahead(wq)
    if pairs and take == 8:
        while r + 1 < r1:
            if pf and r + 1 + ahead < wq.shape[0]:
                prefetch(wq, (r + ahead) * wq.shape[1], 2 * wq.shape[1])
            for h in range(0, take, 4):
                lane_pair(wq, sc, bi, su, r, xq, dx, xs, b0 + h, p0, p1, acc, r - r0, 16 * h, res, 4, per, offset,
                          carry)
                if p1 == n_p:
                    for b in range(4):
                        out[b0 + h + b, r] = res[b]
                        out[b0 + h + b, r + 1] = res[AFFINE_MAX_B + b]
            r += 2
    while r < r1:
        if pf and r + ahead < wq.shape[0]:
            prefetch(wq, (r + ahead) * wq.shape[1], wq.shape[1])
        lane_dot(wq[r], sc[r], bi[r], su[r], xq, dx, xs, b0, p0, p1, acc[r - r0], res, take, per, offset, carry)
        if p1 == n_p:
            for b in range(take):
                out[b0 + b, r] = res[b]
        r += 1


@njit(inline="always", **JIT)
def _lane_rows(wq, sc, bi, su, xq, dx, xs, n_p, acc, res, out, r0, r1, b0, take, bits, per, offset, pf8, pairs):
    # _affine_rows for 4-bit rows in the lane layout (simd.lane_dot; bits, pf8 unread: same
    # arguments, so one kernel body serves both). When the tokens' codes of a row pass
    # STEP_CODES, the rows go in even steps of panels, each token's float sums carried in acc
    # (rows, >= AFFINE_MAX_B * 16), so that a step's codes stay in L1 across the task's rows (8 tokens
    # x 9728 codes = 78 KB did not); shorter rows go whole (steps cost 5-25% where they fit)
    steps = -(-n_p * 512 * take // STEP_CODES)  # steps of at most STEP_CODES / take codes, even
    if take <= 2 or steps == 1:  # (take <= 2: one step up to K = 16384, and no carrying code compiled)
        _lane_step(wq, sc, bi, su, xq, dx, xs, acc, res, out, r0, r1, b0, take, per, offset, 0, n_p, n_p, 0, b0 == 0,
                   pairs)
        return
    step = -(-n_p // steps)
    for p0 in range(0, n_p, step):
        p1 = min(n_p, p0 + step)
        _lane_step(wq, sc, bi, su, xq, dx, xs, acc, res, out, r0, r1, b0, take, per, offset, p0, p1, n_p, 1,
                   b0 == 0 and p0 == 0, pairs)


@njit(inline="always", **JIT)
def _rows(lanes, wq, sc, bi, su, xq, dx, xs, nb, acc, res, out, r0, r1, b0, take, bits, per, offset, pf8, pairs):
    # the row helper of the kernel's layout (lanes: a constant of the kernel, so one branch compiles).
    # Chosen here, not by putting the helper in the kernel's closure: a Dispatcher in a closure cell
    # pickles differently in every process, so the disk cache never matched and every run compiled
    # the int8-activation kernels again (13-25 s for a 4-bit model)
    if lanes:
        _lane_rows(wq, sc, bi, su, xq, dx, xs, nb, acc, res, out, r0, r1, b0, take, bits, per, offset, pf8, pairs)
    else:
        _affine_rows(wq, sc, bi, su, xq, dx, xs, nb, acc, res, out, r0, r1, b0, take, bits, per, offset, pf8, pairs)


@lru_cache(maxsize=None)
def affine_matvec_q8(bits, per, offset=0, batched=False, lanes=False, pf8=True, pairs=False):
    """The int8-activation decode kernel for MLX affine rows of ``bits`` (4, 8) with ``per`` (1, 2, 4)
    blocks of 32 per group (0: Q6_K's 16-weight groups) and codes ``offset`` (simd.affine_q8_dot):
    kernel(wqs, scales, biases, supers, x, xq, dx, xs, outs), each of wqs, scales, biases, supers,
    outs a tuple of one to three matrices that share the input x (q/k/v, gate/up), run as one
    parallel loop after x is rounded to int8 into the buffers xq, dx, xs. Compiled per (bits, per, offset):
    the group-scale loads and code unpacking are constants of the generated code. ``batched=False``
    is the one-token kernel (B = 1 only); the batched one (any B, 8/4/2/1 tokens per code decode) is
    a separate compile, made only when several sequences decode together. ``lanes``: 4-bit rows
    repacked by to_lanes (scales, biases and supers padded to whole panels), run by simd.lane_dot; xq then
    holds (B, P*512) codes and dx, xs at least P*16 blocks. ``pf8``: 8-bit rows prefetched too
    (simd.prefetch_streams). ``pairs`` (lanes, batched): eight tokens take two rows at a time
    (simd.lane_pair), for eight tokens or more: the same numbers; a separate compile, as the pair code slowed the
    four-token rows of the kernel it shared (3072x1024 0.038 -> 0.043 ms)."""

    order = ORDER_PLAIN if bits == 8 else ORDER_LANES if lanes else ORDER_MLX4  # 6-bit codes: the 4-bit layout

    @njit(parallel=True, **JIT)
    def kernel(wqs, scales, biases, supers, x, xq, dx, xs, outs):
        # wqs[i] (N_i, K*bits/8) u8; scales[i], biases[i] (N_i, G) stored dtype; supers[i] (N_i, K/128) f32
        # or (N_i, 0) (simd.affine_q8_dot); outs[i] (B, N_i) f32;
        # x (B, K) f32, rounded here (on the calling thread) into the buffers xq (B, K) i8 and dx, xs
        # (B, NB8) f32 (quantize_act)
        quantize_act(x, xq, dx, xs, order)
        if bits == 6:
            sums16(xq, dx, xs)
        nb = xq.shape[1] // (512 if lanes else 32)  # panels or blocks
        n_b = xq.shape[0] if batched else 1
        first = _task_table(wqs)
        for t in prange(first[-1]):
            i = segment_of(first, t)
            wq, sc, bi, su, out = wqs[i], scales[i], biases[i], supers[i], outs[i]
            res = np.empty(2 * AFFINE_MAX_B, np.float32)  # (two rows' for simd.lane_pair)
            acc = np.empty((ROWS_PER_TASK, AFFINE_MAX_B * Q8_CARRY), np.float32)
            r0 = (t - first[i]) * ROWS_PER_TASK
            r1 = min(wq.shape[0], r0 + ROWS_PER_TASK)
            if not batched:  # a compile-time constant: one copy of the row code per kernel
                _rows(lanes, wq, sc, bi, su, xq, dx, xs, nb, acc, res, out, r0, r1, 0, 1, bits, per, offset, pf8, pairs)
                continue
            b0 = 0  # 8, 4, 2 and 1 tokens per code decode; the task's rows stay in L1 between chunks
            while b0 < n_b:
                left = n_b - b0
                if left >= 8:
                    _rows(lanes, wq, sc, bi, su, xq, dx, xs, nb, acc, res, out, r0, r1, b0, 8, bits, per, offset, pf8, pairs)
                    b0 += 8
                elif left >= 4:
                    _rows(lanes, wq, sc, bi, su, xq, dx, xs, nb, acc, res, out, r0, r1, b0, 4, bits, per, offset, pf8, pairs)
                    b0 += 4
                elif left >= 2:
                    _rows(lanes, wq, sc, bi, su, xq, dx, xs, nb, acc, res, out, r0, r1, b0, 2, bits, per, offset, pf8, pairs)
                    b0 += 2
                else:
                    _rows(lanes, wq, sc, bi, su, xq, dx, xs, nb, acc, res, out, r0, r1, b0, 1, bits, per, offset, pf8, pairs)
                    b0 += 1

    return kernel


# -- affine int4 --------------------------------------------------------------------------------

@njit(inline="always", **JIT)
def _scales_f32(srow, out):
    # one row's group scales in their stored dtype -> float32 (the SIMD dot wants f32)
    for g in range(srow.shape[0]):
        out[g] = to_f32(srow[g])


@njit(inline="always", **JIT)
def _bias_term(brow, xsum):
    # sum_g bias_g * sum(x in group g)
    acc = np.float32(0.0)
    for g in range(brow.shape[0]):
        acc += to_f32(brow[g]) * xsum[g]
    return acc


@njit(inline="always", **JIT)
def _nibble_rows(row, hb, xe, xo, srow, brow, n_groups, res, b0, take):
    # tokens b0..b0+take-1 (take <= MAX_B) against one row; hb (bytes per group) literal or not
    if take == 4:
        nibble_dot(row, hb, 0, xe, xo, b0, hb, srow, brow, n_groups, hb, res, 4)
    elif take == 3:
        nibble_dot(row, hb, 0, xe, xo, b0, hb, srow, brow, n_groups, hb, res, 3)
    elif take == 2:
        nibble_dot(row, hb, 0, xe, xo, b0, hb, srow, brow, n_groups, hb, res, 2)
    else:
        nibble_dot(row, hb, 0, xe, xo, b0, hb, srow, brow, n_groups, hb, res, 1)


@njit(parallel=True, **JIT)
def affine4_matvec(wqs, scales, biases, xe, xo, outs):
    # wqs[i]: (N_i, K/2) u8; scales[i], biases[i]: (N_i, G) stored dtype; outs[i]: (B, N_i) f32 — one
    # to three matrices that share the input (q/k/v, gate/up) in one parallel loop
    # xe, xo: (B, K/2) f32 (split_even_odd)
    n_groups = scales[0].shape[1]
    hb = wqs[0].shape[1] // n_groups  # bytes per group
    n_b = xe.shape[0]
    first = _task_table(wqs)
    for t in prange(first[-1]):
        i = segment_of(first, t)
        wq, sc, bi, out = wqs[i], scales[i], biases[i], outs[i]
        srow = np.empty(n_groups, np.float32)
        brow = np.empty(n_groups, np.float32)
        res = np.empty(MAX_B, np.float32)
        r0 = (t - first[i]) * ROWS_PER_TASK
        for r in range(r0, min(wq.shape[0], r0 + ROWS_PER_TASK)):
            _scales_f32(sc[r], srow)
            _scales_f32(bi[r], brow)
            b0 = 0
            while b0 < n_b:  # each code byte is decoded (and dequantized) once for up to MAX_B tokens
                take = min(MAX_B, n_b - b0)
                row = wq[r]
                if hb == 16:  # groups of 32 (ggml Q4_0 / Q4_1 blocks): the group's one chunk straight-line
                    _nibble_rows(row, 16, xe, xo, srow, brow, n_groups, res, b0, take)
                else:
                    _nibble_rows(row, hb, xe, xo, srow, brow, n_groups, res, b0, take)
                for b in range(b0, b0 + take):
                    out[b, r] = res[b - b0]
                b0 += take


@njit(**JIT)
def affine4_rows(wq, scales, biases, r0, rows, tile):
    # dequantize rows r0..r0+rows of an int4 matrix into tile: (TILE_ROWS, K) f32
    # (per group through 1-D slices, as in fp8_rows: 5x faster than indexing the 2-D arrays)
    n_groups = scales.shape[1]
    hb = wq.shape[1] // n_groups
    for i in range(rows):
        r = r0 + i
        for g in range(n_groups):
            s = to_f32(scales[r, g])
            b = to_f32(biases[r, g])
            src = wq[r, g * hb:(g + 1) * hb]
            dst = tile[i, 2 * g * hb:2 * (g + 1) * hb]
            for j in range(hb):
                v = src[j]
                dst[2 * j] = s * nib_lo(v) + b
                dst[2 * j + 1] = s * nib_hi(v) + b


@njit(parallel=True, **JIT)
def affine4_matmul(wq, scales, biases, x, out):
    # x: (T4, K) f32, T4 % 4 == 0; out: (T4, N) f32
    n = wq.shape[0]
    k = x.shape[1]
    n_tasks = (n + TILE_ROWS - 1) // TILE_ROWS
    for task in prange(n_tasks):
        r0 = task * TILE_ROWS
        rows = min(n, r0 + TILE_ROWS) - r0
        tile = np.empty((TILE_ROWS, k), np.float32)
        affine4_rows(wq, scales, biases, r0, rows, tile)
        tile_matmul(tile, rows, x, out, r0)


@njit(inline="always", **JIT)
def _byte_tokens(row, gb, x, srow, n_groups, res, b0, take):
    # simd.byte_dot of one row of unsigned bytes (groups of gb, contiguous) with tokens
    # b0..b0+take-1 (take <= MAX_B) into res; each code chunk is decoded once for all of them
    if take == 4:
        byte_dot(row, gb, 0, x, b0, gb, srow, n_groups, gb, "u8", res, 4)
    elif take == 3:
        byte_dot(row, gb, 0, x, b0, gb, srow, n_groups, gb, "u8", res, 3)
    elif take == 2:
        byte_dot(row, gb, 0, x, b0, gb, srow, n_groups, gb, "u8", res, 2)
    else:
        byte_dot(row, gb, 0, x, b0, gb, srow, n_groups, gb, "u8", res, 1)


# -- affine int8 --------------------------------------------------------------------------------

@njit(parallel=True, **JIT)
def affine8_matvec(wq, scales, biases, x, xsum, out):
    # wq: (N, K) u8; scales, biases: (N, G); x: (B, K) f32; xsum: (B, G) f32; out: (B, N) f32
    n, k = wq.shape
    x = aligned_x(x, False)  # every FMA of byte_dot loads 16 activations: across two lines, two loads
    n_groups = scales.shape[1]
    gs = k // n_groups
    n_tasks = (n + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for t in prange(n_tasks):
        srow = np.empty(n_groups, np.float32)
        res = np.empty(MAX_B, np.float32)
        b0 = 0
        while b0 < out.shape[0]:  # up to MAX_B tokens a pass: their activations stay in L1
            take = min(MAX_B, out.shape[0] - b0)
            for r in range(t * ROWS_PER_TASK, min(n, (t + 1) * ROWS_PER_TASK)):
                _scales_f32(scales[r], srow)
                _byte_tokens(wq[r], gs, x, srow, n_groups, res, b0, take)
                for b in range(b0, b0 + take):
                    out[b, r] = res[b - b0] + _bias_term(biases[r], xsum[b])
            b0 += take


@njit(**JIT)
def affine8_rows(wq, scales, biases, r0, rows, tile):
    n_groups = scales.shape[1]
    gs = wq.shape[1] // n_groups
    for i in range(rows):
        r = r0 + i
        for g in range(n_groups):
            s = to_f32(scales[r, g])
            b = to_f32(biases[r, g])
            src = wq[r, g * gs:(g + 1) * gs]
            dst = tile[i, g * gs:(g + 1) * gs]
            for j in range(gs):
                dst[j] = s * u8_to_f32(src[j]) + b


@njit(parallel=True, **JIT)
def affine8_matmul(wq, scales, biases, x, out):
    n = wq.shape[0]
    k = x.shape[1]
    n_tasks = (n + TILE_ROWS - 1) // TILE_ROWS
    for task in prange(n_tasks):
        r0 = task * TILE_ROWS
        rows = min(n, r0 + TILE_ROWS) - r0
        tile = np.empty((TILE_ROWS, k), np.float32)
        affine8_rows(wq, scales, biases, r0, rows, tile)
        tile_matmul(tile, rows, x, out, r0)


@njit(**JIT)
def affine_embed(wq, scales, biases, bits, ids, out):
    # rows ``ids`` of an int4/int8 table, dequantized: out (T, K) f32
    tile = np.empty((1, out.shape[1]), np.float32)
    for t in range(ids.shape[0]):
        if bits == 4:
            affine4_rows(wq, scales, biases, ids[t], 1, tile)
        else:
            affine8_rows(wq, scales, biases, ids[t], 1, tile)
        out[t] = tile[0]


# -- FP8 e4m3, 2-D block scales -----------------------------------------------------------------

@njit(**JIT)
def _fp8_scaled_x(x, scale_inv, rb, block_k):
    # x: (B, K) f32 -> (B, K) f32 on 64-byte lines: x * scale_inv[rb, column block] * 2**60
    n_b, k = x.shape
    xs = aligned_rows(n_b, k)
    for c in range(scale_inv.shape[1]):
        s = to_f32(scale_inv[rb, c]) * E4M3_HALF
        j0 = c * block_k
        j1 = min(k, j0 + block_k)
        for b in range(n_b):
            src = x[b, j0:j1]
            dst = xs[b, j0:j1]
            for j in range(j1 - j0):
                dst[j] = src[j] * s
    return xs


@njit(**JIT)
def _rescale(out, r0, r1):
    for b in range(out.shape[0]):
        o = out[b, r0:r1]
        for i in range(r1 - r0):
            o[i] *= E4M3_HALF


@njit(parallel=True, **JIT)
def fp8_matvec(wq, scale_inv, block_n, block_k, x, out, four_rows):
    # wq: (N, K) u8 e4m3; scale_inv: (ceil(N/bn), ceil(K/bk)) stored dtype; x: (B, K) f32; out: (B, N)
    # One task per block of block_n rows (they share their scales): the activations are scaled once,
    # column block by column block, by scale * 2**60, so the rows become dense rows of e4m3 / 2**120
    # (simd.dense_dot's uint8) in linear.matvec's register blocks, and each output is multiplied by
    # 2**60 (both powers of two: exact). Each (row, token) is one FMA chain over the whole row, no
    # per-block partial sums, so 4 rows x 4 tokens fit the registers. Rows go four at a time
    # whatever the host (one row alone is one chain: latency-bound); four_rows
    # (simd.prefetch_streams) adds the prefetch. A sequence's numbers do not depend on its batch.
    n, k = wq.shape
    for rb in prange(scale_inv.shape[0]):
        xs = _fp8_scaled_x(x, scale_inv, rb, block_k)
        r0 = rb * block_n
        r1 = min(n, r0 + block_n)
        r = r0
        while r + 4 <= r1:
            dense_block(wq, xs, out, r, 4, PREFETCH_BYTES if four_rows and r + 4 + PREFETCH_BYTES // k < n else 0)
            r += 4
        while r < r1:
            dense_block(wq, xs, out, r, 1, 0)
            r += 1
        _rescale(out, r0, r1)


FP8_TOKENS = 32  # prefill tokens per scaled copy of the activations: a whole 256-token chunk's copy
# (10 MB at K = 9728) left the caches, 2560x9728 ran 1.55x slower than in chunks of 32 (64 alike)


@njit(parallel=True, **JIT)
def fp8_matmul(wq, scale_inv, block_n, block_k, x, out):
    # wq: (N, K) u8 e4m3; x: (T4, K) f32, T4 % 4 == 0; out: (T4, N) f32. As fp8_matvec, one task per
    # block of block_n rows, its rows TILE_ROWS at a time against FP8_TOKENS tokens at a time
    # (linear.matmul's blocks)
    n, k = wq.shape
    for rb in prange(scale_inv.shape[0]):
        r0 = rb * block_n
        r1 = min(n, r0 + block_n)
        for t0 in range(0, x.shape[0], FP8_TOKENS):
            t1 = min(x.shape[0], t0 + FP8_TOKENS)
            xs = _fp8_scaled_x(x[t0:t1], scale_inv, rb, block_k)
            o = out[t0:t1]
            for r in range(r0, r1, TILE_ROWS):
                rows = min(r1, r + TILE_ROWS) - r
                rows_x_tokens(wq, r, rows, xs, o, r, min(n, r + rows + TILE_ROWS) - r - rows)
        _rescale(out, r0, r1)


@njit(**JIT)
def fp8_rows(wq, scale_inv, block_n, block_k, r0, rows, tile):
    # dequantize rows r0..r0+rows of an FP8 matrix into tile: (TILE_ROWS, K) f32. Each column block
    # goes through 1-D slices: indexing the 2-D arrays in the inner loop kept it scalar (11x slower)
    k = wq.shape[1]
    for i in range(rows):
        r = r0 + i
        for c in range(scale_inv.shape[1]):
            s = to_f32(scale_inv[r // block_n, c]) * E4M3_RESCALE
            j0 = c * block_k
            n = min(k, j0 + block_k) - j0
            src = wq[r, j0:j0 + n]
            dst = tile[i, j0:j0 + n]
            for j in range(n):
                dst[j] = s * e4m3_unscaled(src[j])
