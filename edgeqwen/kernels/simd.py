"""Explicit SIMD for quantized dot products, written as LLVM IR through Numba intrinsics.

Numba's auto-vectorised loops finish every quantization group with a horizontal reduction, and
with groups of 32-64 weights that reduction costs as much as the arithmetic. These intrinsics keep
one 16-lane float accumulator per row instead: each group's partial products stay in lanes,
are scaled by the group scale as a vector, and the lanes are summed once per row (llama.cpp's
scheme, minus the integer dot products). The IR is target-independent: LLVM lowers the 16-lane
vectors to one zmm (AVX-512), two ymm (AVX2) or four NEON registers.

Arrays must be C-contiguous 1-D (rows of C-contiguous matrices are); offsets are in elements.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

LANES = 16
_FAST = ("fast",)
_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VF = ir.VectorType(_F32, LANES)
_VI32 = ir.VectorType(_I32, LANES)
_VI8 = ir.VectorType(ir.IntType(8), LANES)


def _check_array(ty, dtype, what, ndim=1):
    if not (isinstance(ty, types.Array) and ty.ndim == ndim and ty.layout == "C" and ty.dtype == dtype):
        raise TypingError(f"{what} must be a C-contiguous {ndim}-D {dtype} array, got {ty}")


def _check_rows(ty, dtypes, what):
    if not (isinstance(ty, types.Array) and ty.layout == "C" and ty.dtype in dtypes):
        raise TypingError(f"{what} must be a C-contiguous array of {dtypes}, got {ty}")


def _literals(pairs):
    """Each (type, allowed values, name): the type must be an integer literal with an allowed value."""
    for lit, allowed, what in pairs:
        if not isinstance(lit, types.IntegerLiteral) or lit.literal_value not in allowed:
            raise TypingError(f"{what} must be an integer literal in {tuple(allowed)}")


def _ptr(context, builder, ty, value):
    return context.make_array(ty)(context, builder, value=value).data


def _i64(context, builder, value, ty):
    return context.cast(builder, value, ty, types.int64)


def _splat(builder, scalar, vec_ty):
    undef = ir.Constant(vec_ty, ir.Undefined)
    first = builder.insert_element(undef, scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(first, undef, ir.Constant(ir.VectorType(_I32, vec_ty.count), None))


def _load_vec(builder, base, offset, vec_ty, align):
    ptr = builder.gep(base, [offset])
    return builder.load(builder.bitcast(ptr, vec_ty.as_pointer()), align=align)


def _store_vec(builder, vec, base, offset, align):
    builder.store(vec, builder.bitcast(builder.gep(base, [offset]), vec.type.as_pointer()), align=align)


def _tree(builder, vec, combine):
    """Reduce a vector to its element 0 by halving: combine(lo_half, hi_half) at each step."""
    width = vec.type.count
    while width > 1:
        width //= 2
        lo = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
        hi = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, width), list(range(width, 2 * width))))
        vec = combine(lo, hi)
    return builder.extract_element(vec, ir.Constant(_I32, 0))


def _hsum(builder, vec):
    # a fixed pairwise tree (no fast-math: the same order in every kernel)
    return _tree(builder, vec, builder.fadd)


def _hsum_many(builder, vecs):
    """[_hsum(v) for v in vecs], bitwise, for several vectors at once: each step adds the halves of
    every group of lanes as _tree does, but packs two vectors' half-groups into one add (two
    two-source shuffles and one add per pair instead of a tree each)."""
    width = vecs[0].type.count
    packed = [(v, [i]) for i, v in enumerate(vecs)]  # (vector, the source of each group in lane order)
    while width > 1:
        half, nxt = width // 2, []
        for p in range(0, len(packed), 2):
            (a, ga), (b, gb) = packed[p], packed[min(p + 1, len(packed) - 1)]
            lo = [g * width + i for g in range(len(ga)) for i in range(half)]
            lo += [a.type.count + g * width + i for g in range(len(gb)) for i in range(half)]
            hi = [i + half for i in lo]
            mask = lambda idx: ir.Constant(ir.VectorType(_I32, len(idx)), idx)  # noqa: E731
            nxt.append((builder.fadd(builder.shuffle_vector(a, b, mask(lo)), builder.shuffle_vector(a, b, mask(hi))),
                        ga + gb))
        packed, width = nxt, half
    out = [None] * len(vecs)
    for v, groups in packed:
        for lane, g in enumerate(groups):
            if out[g] is None:
                out[g] = builder.extract_element(v, ir.Constant(_I32, lane))
    return out


def _chunk_count(builder, group_bytes, gb):
    """16-byte chunks per group: a Python int when the group size is a literal, else an IR value."""
    if isinstance(group_bytes, types.IntegerLiteral):
        return group_bytes.literal_value // LANES
    return builder.udiv(gb, ir.Constant(_I64, LANES))


def _multi_group_loop(builder, ng, nb, sp, rp, emit_group):
    """The group loop of ``nb`` activation rows at once: for g < ng, emit_group(g, parts) adds each row's
    chunks into its two partials parts[b] (zeroed per group: independent chains, so FMA latency
    overlaps), then acc[b][i] += scale[g] * parts[b][i]; rp[b] = the fixed tree of acc[b][0] +
    acc[b][1]. Per row the same operations as one row alone."""
    zero = ir.Constant(_VF, None)
    parts = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(nb)]
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(nb)]
    with cgutils.for_range(builder, ng) as g_loop:
        g = g_loop.index
        for pb in parts:
            for part in pb:
                builder.store(zero, part)
        emit_group(g, parts)
        s = _splat(builder, builder.load(builder.gep(sp, [g])), _VF)
        for b in range(nb):
            for i in (0, 1):
                builder.store(_fma(builder, s, builder.load(parts[b][i]), builder.load(accs[b][i])), accs[b][i])
    for b in range(nb):
        total = builder.fadd(builder.load(accs[b][0]), builder.load(accs[b][1]))
        builder.store(_hsum(builder, total), builder.gep(rp, [ir.Constant(_I64, b)]))


def _call(builder, name, ret, args):
    """Call the LLVM intrinsic ``name`` (declared in the module on first use) returning ``ret``."""
    fn = builder.module.globals.get(name)
    if fn is None:
        fn = ir.Function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name=name)
    return builder.call(fn, args)


def _fma(builder, a, b, c):
    """a * b + c as one fused multiply-add (an explicit llvm.fma, so every kernel rounds the same way)."""
    return _call(builder, f"llvm.fma.v{a.type.count}f32", a.type, [a, b, c])


def _fma_into(builder, part, a, b):
    builder.store(_fma(builder, a, b, builder.load(part)), part)


MAX_B = 4  # activation rows per call of nibble_dot and byte_dot (accumulators stay in registers)
BYTE_KINDS = {"u8": 0, "i8": 1}


def _decode_bytes(builder, raw, kind):
    """Code bytes (a vector or one) -> float32: unsigned, signed, or e4m3 / 2**120 (see kernels.quant)."""
    vec = isinstance(raw.type, ir.VectorType)
    f32 = ir.VectorType(_F32, raw.type.count) if vec else _F32
    if kind == "i8":
        return builder.sitofp(raw, f32)
    if kind == "u8":
        return builder.uitofp(raw, f32)
    # sign-extended and shifted left by 20, the byte's magnitude bits land on 20..26 and copies of its
    # sign on 27..31: one mask keeps bit 31 and 20..26 (three instructions, not six)
    i32 = ir.VectorType(_I32, raw.type.count) if vec else _I32
    const = lambda v: ir.Constant(i32, [v] * raw.type.count if vec else v)  # noqa: E731
    wide = builder.shl(builder.sext(raw, i32), const(20))
    return builder.bitcast(builder.and_(wide, const(0x87F00000 - (1 << 32))), f32)


@intrinsic
def byte_dot(typingctx, codes, c_stride, c_off, x, b0, x_stride, scales, n_groups, group_bytes, kind, res, n_rows):
    """res[b] = sum_g scales[g] * sum_j q(codes[g*c_stride + c_off + j]) * x[b0 + b, g*x_stride + j] for
    ``n_rows`` (a literal 1..MAX_B) activation rows of x (2-D) from b0: each 16-byte chunk is decoded
    once for all of them, and per row the operations and their order do not depend on n_rows (a
    sequence's numbers do not depend on its batch).

    ``kind`` (a literal) says what a byte is: "u8" or "i8". group_bytes is a multiple of 16 (32 per
    step into two accumulators, a last 16 alone into the first).
    """
    _check_array(codes, types.uint8, "codes")
    _check_array(x, types.float32, "activations", 2)
    _check_array(scales, types.float32, "scales")
    _check_array(res, types.float32, "res")
    if not isinstance(kind, types.StringLiteral) or kind.literal_value not in BYTE_KINDS:
        raise TypingError(f"kind must be a literal in {sorted(BYTE_KINDS)}")
    _literals(((n_rows, range(1, MAX_B + 1), "n_rows"),))
    byte_kind, nb = kind.literal_value, n_rows.literal_value
    sig = types.none(codes, c_stride, c_off, x, b0, x_stride, scales, n_groups, group_bytes, kind, res, n_rows)

    def codegen(context, builder, signature, args):
        at = signature.args
        cp = _ptr(context, builder, at[0], args[0])
        xa = context.make_array(at[3])(context, builder, value=args[3])
        sp = _ptr(context, builder, at[6], args[6])
        rp = _ptr(context, builder, at[10], args[10])
        first, xs, cs, co, ng, gb = (_i64(context, builder, args[i], at[i]) for i in (4, 5, 1, 2, 7, 8))
        row = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
        c = lambda v: ir.Constant(_I64, v)  # noqa: E731

        def chunk(g, step, parts, k):
            raw = _load_vec(builder, cp, builder.add(builder.add(builder.mul(g, cs), co), step), _VI8, 1)
            w = _decode_bytes(builder, raw, byte_kind)
            xoff = builder.add(builder.mul(g, xs), step)
            for b in range(nb):
                xv = _load_vec(builder, xa.data, builder.add(builder.mul(builder.add(first, c(b)), row), xoff), _VF, 4)
                _fma_into(builder, parts[b][k], w, xv)

        def group(g, parts):
            with cgutils.for_range(builder, builder.udiv(gb, c(2 * LANES))) as step:
                for k in range(2):
                    chunk(g, builder.add(builder.mul(step.index, c(2 * LANES)), c(k * LANES)), parts, k)
            with builder.if_then(builder.icmp_unsigned("!=", builder.urem(gb, c(2 * LANES)), c(0))):
                chunk(g, builder.sub(gb, c(LANES)), parts, 0)

        _multi_group_loop(builder, ng, nb, sp, rp, group)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def nibble_dot(typingctx, codes, c_stride, c_off, xl, xh, b0, x_stride, scales, biases, n_groups, group_bytes, res,
               n_rows):
    """Dots of one 4-bit affine row with ``n_rows`` (a literal 1..MAX_B) activation rows from b0:
    res[b] = sum_g sum_j (w(lo(b_gj)) * xl[b0 + b, g*x_stride + j] + w(hi(b_gj)) * xh[b0 + b, ...]),
    w(q) = fma(q, scales[g], biases[g]) -- the dequantized weight in float32, made once per chunk for
    every row. b_gj = codes[g * c_stride + c_off + j] for j < group_bytes (a multiple of 16); lo / hi
    are the byte's low and high nibbles; MLX int4 rows: xl, xh (2-D) = the even / odd activations.
    Per row four FMA chains (low and high nibbles of even and odd chunks of a group, so a chain
    grows by one FMA per group at 64 weights) and a fixed tree, whatever n_rows: a sequence's
    numbers do not depend on its batch. A literal group_bytes emits each group's chunks
    straight-line."""
    _check_array(codes, types.uint8, "codes")
    _check_array(scales, types.float32, "scales")
    _check_array(biases, types.float32, "biases")
    _check_array(res, types.float32, "res")
    for a in (xl, xh):
        _check_array(a, types.float32, "xl, xh", 2)
    _literals(((n_rows, range(1, MAX_B + 1), "n_rows"),))
    nb = n_rows.literal_value
    sig = types.none(codes, c_stride, c_off, xl, xh, b0, x_stride, scales, biases, n_groups, group_bytes, res,
                     n_rows)

    def codegen(context, builder, signature, args):
        at = signature.args
        cp = _ptr(context, builder, at[0], args[0])
        xla = context.make_array(at[3])(context, builder, value=args[3])
        xha = context.make_array(at[4])(context, builder, value=args[4])
        sp, bp, rp = (_ptr(context, builder, at[i], args[i]) for i in (7, 8, 11))
        cs, co, first, xs, ng, gb = (_i64(context, builder, args[i], at[i]) for i in (1, 2, 5, 6, 9, 10))
        row_l = cgutils.unpack_tuple(builder, xla.shape, 2)[1]
        row_h = cgutils.unpack_tuple(builder, xha.shape, 2)[1]
        c = lambda v: ir.Constant(_I64, v)  # noqa: E731
        fifteen = ir.Constant(_VI32, [15] * LANES)
        four = ir.Constant(_VI32, [4] * LANES)
        chunks = _chunk_count(builder, group_bytes, gb)
        zero = ir.Constant(_VF, None)
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(4)] for _ in range(nb)]
        xl_rows = [builder.mul(builder.add(first, c(b)), row_l) for b in range(nb)]
        xh_rows = [builder.mul(builder.add(first, c(b)), row_h) for b in range(nb)]
        with cgutils.for_range(builder, ng) as g_loop:
            g = g_loop.index
            sv = _splat(builder, builder.load(builder.gep(sp, [g])), _VF)
            bv = _splat(builder, builder.load(builder.gep(bp, [g])), _VF)

            def chunk(ci, half):
                # chunk ci of group g into accumulators 2*half (low nibbles) and 2*half + 1 (high)
                step = builder.mul(ci, c(LANES))
                raw = _load_vec(builder, cp, builder.add(builder.add(builder.mul(g, cs), co), step), _VI8, 1)
                wide = builder.zext(raw, _VI32)
                lo = _fma(builder, builder.uitofp(builder.and_(wide, fifteen), _VF), sv, bv)
                hi = _fma(builder, builder.uitofp(builder.lshr(wide, four), _VF), sv, bv)
                xoff = builder.add(builder.mul(g, xs), step)
                for b in range(nb):
                    xl_b = _load_vec(builder, xla.data, builder.add(xl_rows[b], xoff), _VF, 4)
                    xh_b = _load_vec(builder, xha.data, builder.add(xh_rows[b], xoff), _VF, 4)
                    _fma_into(builder, accs[b][2 * half], lo, xl_b)
                    _fma_into(builder, accs[b][2 * half + 1], hi, xh_b)

            if isinstance(chunks, int):  # a literal group size: straight-line, chunks alternating
                for i in range(chunks):
                    chunk(c(i), i % 2)
            else:  # chunks in pairs, the second of each pair into its own accumulators; a last one alone
                with cgutils.for_range(builder, builder.udiv(chunks, c(2))) as pair:
                    c0 = builder.mul(pair.index, c(2))
                    chunk(c0, 0)
                    chunk(builder.add(c0, c(1)), 1)
                with builder.if_then(builder.icmp_unsigned("!=", builder.urem(chunks, c(2)), c(0))):
                    chunk(builder.sub(chunks, c(1)), 0)
        for b in range(nb):
            a = [builder.load(x) for x in accs[b]]
            total = builder.fadd(builder.fadd(a[0], a[1]), builder.fadd(a[2], a[3]))
            builder.store(_hsum(builder, total), builder.gep(rp, [c(b)]))
        return context.get_dummy_value()

    return sig, codegen


DENSE_MAX = 4  # rows and tokens per call of dense_dot (its 4 x 4 accumulators stay in registers)


@intrinsic
def dense_dot(typingctx, w, w_off, w_stride, n_rows, k, x, x_off, x_stride, n_tok, out, o_off, o_stride, ahead):
    """Dots of ``n_rows`` dense rows with ``n_tok`` activation rows (both literals 1..DENSE_MAX):
    out[o_off + b*o_stride + r] = sum_j w[w_off + r*w_stride + j] * x[x_off + b*x_stride + j], j < k.
    w: float32, bfloat16 bits as uint16, float16 bits as int16 or e4m3 bytes as uint8 (each its value /
    2**120: the caller scales, see kernels.quant); x, out: float32; C-contiguous,
    offsets and strides in elements of the flat data. Chunks are the host's native vector width
    (PAIR_CHUNK / 2: 16 lanes on AVX-512, 8 on AVX2, 4 on NEON, so the 4 x 4 block's sixteen
    accumulators fit its register file). Each chunk of weights is converted once and
    each activation chunk loaded once for the whole block. Every (row, token) is one FMA chain over
    the chunks, a fixed tree, then the k % chunk tail in order, whatever the block's size: a sequence's
    numbers do not depend on its batch, nor a prompt's on its length. bf16 rows go in chunks of
    PAIR_CHUNK as pairs in 32-bit words, the even weights by one shift and the odd by one mask (half
    the conversion work of widening each half), so x must be in pair order (linear.aligned_x): each
    full PAIR_CHUNK-block of a row as its even then its odd elements. ``ahead`` > 0: each chunk step
    also asks the cache for the lines ``ahead`` elements past the first row's chunk (w_stride == k:
    the rows ``ahead / k`` further on), spread over the loop instead of a burst."""
    _check_rows(w, (types.float32, types.uint16, types.int16, types.uint8), "w")
    _check_rows(x, (types.float32,), "x")
    _check_rows(out, (types.float32,), "out")
    _literals(((n_rows, range(1, DENSE_MAX + 1), "n_rows"), (n_tok, range(1, DENSE_MAX + 1), "n_tok")))
    nr, nb, wdt = n_rows.literal_value, n_tok.literal_value, w.dtype
    sig = types.none(w, w_off, w_stride, n_rows, k, x, x_off, x_stride, n_tok, out, o_off, o_stride, ahead)

    def codegen(context, builder, signature, args):
        at = signature.args
        wp, xp, op = (_ptr(context, builder, at[i], args[i]) for i in (0, 5, 9))
        w_off, w_str, kk, x_off, x_str, o_off, o_str, ahead = (_i64(context, builder, args[i], at[i])
                                                              for i in (1, 2, 4, 6, 7, 10, 11, 12))
        c = lambda v: ir.Constant(_I64, v)  # noqa: E731
        lanes = PAIR_CHUNK // 2
        vf, vi = ir.VectorType(_F32, lanes), ir.VectorType(_I32, lanes)
        wvec = ir.VectorType(wp.type.pointee, lanes)
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(vf, None)) for _ in range(nb)] for _ in range(nr)]
        wrow = [builder.add(w_off, builder.mul(c(r), w_str)) for r in range(nr)]
        xrow = [builder.add(x_off, builder.mul(c(b), x_str)) for b in range(nb)]
        paired = wdt == types.uint16
        step = PAIR_CHUNK if paired else lanes
        chunks = builder.udiv(kk, c(step))
        esize = context.get_abi_sizeof(context.get_data_type(wdt))
        pf_lines = max(1, nr * step * esize // 64)  # lines of rows consumed per chunk step
        pf_base = builder.bitcast(builder.gep(wp, [builder.add(w_off, ahead)]), ir.IntType(8).as_pointer())
        do_pf = builder.icmp_signed(">", ahead, c(0))
        with cgutils.for_range(builder, chunks) as loop:
            j = builder.mul(loop.index, c(step))
            with builder.if_then(do_pf):
                for i in range(pf_lines):
                    _prefetch_line(builder, builder.gep(pf_base, [builder.add(builder.mul(loop.index, c(64 * pf_lines)),
                                                                              c(64 * i))]))
            if paired:
                xe = [_load_vec(builder, xp, builder.add(xrow[b], j), vf, 4) for b in range(nb)]
                xo = [_load_vec(builder, xp, builder.add(xrow[b], builder.add(j, c(lanes))), vf, 4) for b in range(nb)]
                for r in range(nr):
                    words = builder.load(builder.bitcast(builder.gep(wp, [builder.add(wrow[r], j)]), vi.as_pointer()),
                                         align=2)
                    even = builder.bitcast(builder.shl(words, ir.Constant(vi, [16] * lanes)), vf)
                    odd = builder.bitcast(builder.and_(words, ir.Constant(vi, [-65536] * lanes)), vf)
                    for b in range(nb):
                        _fma_into(builder, accs[r][b], even, xe[b])
                        _fma_into(builder, accs[r][b], odd, xo[b])
            else:
                xs = [_load_vec(builder, xp, builder.add(xrow[b], j), vf, 4) for b in range(nb)]
                for r in range(nr):
                    wv = _weight_to_f32(builder, _load_vec(builder, wp, builder.add(wrow[r], j), wvec, esize), wdt)
                    for b in range(nb):
                        _fma_into(builder, accs[r][b], wv, xs[b])
        flat = _hsum_many(builder, [builder.load(a) for ar in accs for a in ar])
        sums = [[cgutils.alloca_once_value(builder, flat[r * nb + b]) for b in range(nb)] for r in range(nr)]
        start = builder.mul(chunks, c(step))
        with cgutils.for_range(builder, builder.sub(kk, start)) as loop:
            j = builder.add(start, loop.index)
            xs = [builder.load(builder.gep(xp, [builder.add(xrow[b], j)])) for b in range(nb)]
            for r in range(nr):
                wj = _weight_to_f32(builder, builder.load(builder.gep(wp, [builder.add(wrow[r], j)])), wdt)
                for b in range(nb):
                    builder.store(_call(builder, "llvm.fma.f32", _F32, [wj, xs[b], builder.load(sums[r][b])]),
                                  sums[r][b])
        for b in range(nb):
            for r in range(nr):
                builder.store(builder.load(sums[r][b]), builder.gep(op, [builder.add(o_off, builder.add(
                    builder.mul(c(b), o_str), c(r)))]))
        return context.get_dummy_value()

    return sig, codegen


# -- integer dot products on int8-quantized activations (llama.cpp's decode scheme) -------------

_VI8x32 = ir.VectorType(ir.IntType(8), 32)
_VI32x8 = ir.VectorType(_I32, 8)
_VF8 = ir.VectorType(_F32, 8)


def _cpu_features() -> set[str]:
    """The target features Numba compiles for (NUMBA_CPU_FEATURES, else the host's)."""
    from numba.core import config
    from llvmlite import binding
    text = config.CPU_FEATURES if config.CPU_FEATURES is not None else binding.get_host_cpu_features().flatten()
    return {f[1:] for f in text.split(",") if f.startswith("+")}


def prefetch_streams() -> bool:
    """Whether decode's weight streams want software prefetch and several rows in flight per thread
    (EDGEQWEN_PREFETCH=1/0 overrides). Measured both ways: on older AMD EPYC hosts the hardware
    prefetcher follows one row stream per thread at the bandwidth and the hints cost 15-60%; on an
    Intel Xeon host the same streams reach 60-75% of it without them and 1.3-1.6x that with them; on
    a Zen 5 EPYC (family 26) 0.6B-shaped decode matvecs from memory gain 10-18% (bf16, int8) when
    the host reads ~90 GB/s and lose 0-5% when it reads ~50."""
    import os
    env = os.environ.get("EDGEQWEN_PREFETCH")
    if env in ("0", "1"):
        return env == "1"
    amd, family = False, 0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    amd = "AuthenticAMD" in line
                elif line.startswith("cpu family"):
                    family = int(line.split(":")[1])
                    break
    except (OSError, ValueError):
        pass
    return not amd or family >= 26


def _has_vnni() -> bool:
    feats = _cpu_features()
    return "avxvnni" in feats or {"avx512vnni", "avx512vl"} <= feats


def _has_avx2() -> bool:
    return "avx2" in _cpu_features()


_VI16x16 = ir.VectorType(ir.IntType(16), 16)


def _maddubs(builder, a, b, weight):
    """8 x i32 sums of four consecutive products of a (32 x u8, each < 128) and b (32 x s8), times
    ``weight``, by AVX2's vpmaddubsw (pairs to i16; exact: 2 x 127 x 127 fits) and vpmaddwd."""
    pairs = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _VI16x16, [a, b])
    return _call(builder, "llvm.x86.avx2.pmadd.wd", _VI32x8, [pairs, ir.Constant(_VI16x16, [weight] * 16)])


def _dot4(builder, acc, a, b, small=False):
    """acc (8 x i32) + sums of four consecutive products of a (32 x u8) and b (32 x s8, never -128):
    vpdpbusd.

    With VNNI it is the instruction. With AVX2 alone, vpmaddubsw and vpmaddwd: directly when ``small``
    (every a < 128: 4- and 6-bit codes), else a as 16 x high nibble + low nibble, so that no i16 pair
    sum saturates. Elsewhere the same exact integer sums in plain IR.
    """
    if _has_vnni():
        return _call(builder, "llvm.x86.avx512.vpdpbusd.256", _VI32x8, [acc, a, b])
    if _has_avx2():
        if small:
            return builder.add(acc, _maddubs(builder, a, b, 1))
        fifteen = ir.Constant(a.type, [15] * 32)
        high = builder.lshr(a, ir.Constant(a.type, [4] * 32))
        acc = builder.add(acc, _maddubs(builder, high, b, 16))
        return builder.add(acc, _maddubs(builder, builder.and_(a, fifteen), b, 1))
    vi32x32 = ir.VectorType(_I32, 32)
    prod = builder.mul(builder.zext(a, vi32x32), builder.sext(b, vi32x32))
    for k in range(4):
        lanes = builder.shuffle_vector(prod, prod, ir.Constant(ir.VectorType(_I32, 8), list(range(k, 32, 4))))
        acc = builder.add(acc, lanes)
    return acc


# -- the MLX affine decode kernel: 64-byte units, group scales read in their stored dtype ---------

_VI8x64 = ir.VectorType(ir.IntType(8), 64)
_VI32x16 = ir.VectorType(_I32, 16)
AFFINE_MAX_B = 8  # tokens per call of affine_q8_dot
Q8_CARRY = 24  # floats per token of affine_q8_dot's carried sums (16 lanes, 8 bias sums)


def _has_avx512_vnni() -> bool:
    return {"avx512vnni", "avx512f", "avx512bw"} <= _cpu_features()


def _dot4_64(builder, acc, a, b, small=False):
    """acc (16 x i32) + sums of four consecutive products of a (64 x u8) and b (64 x s8, never -128);
    ``small``: every a < 128 (see _dot4)."""
    if _has_avx512_vnni():
        return _call(builder, "llvm.x86.avx512.vpdpbusd.512", _VI32x16, [acc, a, b])
    if _has_vnni() or _has_avx2():  # two 256-bit halves
        halves = []
        for h in range(2):
            i32 = ir.Constant(ir.VectorType(_I32, 8), list(range(8 * h, 8 * h + 8)))
            i8 = ir.Constant(ir.VectorType(_I32, 32), list(range(32 * h, 32 * h + 32)))
            halves.append(_dot4(builder, builder.shuffle_vector(acc, acc, i32), builder.shuffle_vector(a, a, i8),
                                builder.shuffle_vector(b, b, i8), small))
        return builder.shuffle_vector(halves[0], halves[1], ir.Constant(_VI32x16, list(range(16))))
    vi32x64 = ir.VectorType(_I32, 64)
    prod = builder.mul(builder.zext(a, vi32x64), builder.sext(b, vi32x64))
    for k in range(4):
        acc = builder.add(acc, builder.shuffle_vector(prod, prod, ir.Constant(_VI32x16, list(range(k, 64, 4)))))
    return acc


def _widen(builder, vec, width):
    """vec zero-extended with zero lanes to ``width`` lanes."""
    n = vec.type.count
    zero = ir.Constant(vec.type, None)
    return builder.shuffle_vector(vec, zero, ir.Constant(ir.VectorType(_I32, width), list(range(n)) +
                                                         [n] * (width - n)))


def _weight_to_f32(builder, v, dtype):
    """Dense weights (a vector or one) -> float32: as stored (_stored_to_f32), uint8 as e4m3 / 2**120."""
    return _decode_bytes(builder, v, "e4m3") if dtype == types.uint8 else _stored_to_f32(builder, v, dtype)


def _stored_to_f32(builder, v, dtype):
    """Vector (or scalar) of stored scale elements -> float32 (numeric.to_f32's dtype map; uint8 and
    int8 are small integers, as gguf_blocks keeps the K-quants' sub-block scales)."""
    if dtype == types.float32:
        return v
    vec = isinstance(v.type, ir.VectorType)
    i32 = ir.VectorType(_I32, v.type.count) if vec else _I32
    f32 = ir.VectorType(_F32, v.type.count) if vec else _F32
    if dtype in (types.uint8, types.int8):
        return builder.uitofp(v, f32) if dtype == types.uint8 else builder.sitofp(v, f32)
    if dtype == types.uint16:  # bfloat16
        sixteen = ir.Constant(i32, [16] * v.type.count) if vec else ir.Constant(_I32, 16)
        return builder.bitcast(builder.shl(builder.zext(v, i32), sixteen), f32)
    half = ir.VectorType(ir.HalfType(), v.type.count) if vec else ir.HalfType()
    return builder.fpext(builder.bitcast(v, half), f32)


@intrinsic
def affine_q8_dot(typingctx, codes, scales, biases, supers, x, dx, xs, n_blocks, m0, m1, acc, res, n_rows, bits, per,
                  offset, carry):
    """Dots of one MLX affine row (``bits`` 4 or 8, literal) with ``n_rows`` (literal 1..8) int8-quantized
    activation rows: res[b] = sum_g (scale_g * dx[b, g] * idot_g + bias_g * xs[b, g]) over blocks g of
    32 weights, scale_g / bias_g the row's group values (stored dtype: uint16 bf16, int16 f16 or f32)
    for the group of block g, ``per`` (literal 1, 2, 4) blocks per group.

    The llama.cpp block formats (rewritten by gguf_blocks) take three variations. ``offset``
    (literal): when not 0 the bias of every group is -offset x its scale and the biases are not read
    (Q4_0: 8, Q8_0: 128). Scales (and biases) of dtype uint8 / int8 are small integers multiplying the
    row's ``supers`` (f32, per 256 weights — one octet of blocks — a scale then a bias factor):
    scale = supers[2m] * scales[g], bias = -supers[2m + 1] * biases[g] (Q4_K); ``supers`` is not
    read otherwise. ``bits`` 6 (with ``per`` 0, offset 32: Q6_K): 6-bit codes as the low nibbles in the
    4-bit layout, the row's first K/2 bytes, then per 128 weights 32 bytes of their high 2 bits
    (byte j: bits 4-5 / 6-7 for the nibbles of byte j, bits 0-1 / 2-3 for those of byte j + 32);
    groups of 16 weights: each lane is scaled by its own group's scale x activation scale, and the
    offset enters as -32 x scale x xs[b, s], xs then holding the scaled sums of each 16 activations
    (quant.sums16). K must be a multiple of 256.

    Codes are taken 64 bytes at a time: four blocks for 4 bits, two for 8. For 4 bits the activations
    of each quad of blocks are laid out as the partners of the low nibbles of the four blocks, then of
    the high nibbles (16 each); a last pair of blocks (n_blocks % 4 == 2) the same way for the pair
    (quant.quantize_act, ORDER_MLX4). n_blocks must be even for 4 bits. dx, xs are zero-padded to
    whole octets. The integer sums are not reduced to block totals: each unit's 16 lanes are
    converted as they are and multiplied by their block's scale x activation scale (one shuffle of
    the octet's eight), into a 16-lane accumulator summed once per row; each token's arithmetic is
    the same whatever n_rows is.

    With ``carry`` (literal 1) a row can be taken in several calls of consecutive ranges m0..m1-1 of its
    octets (of ceil(n_blocks / 8)), as lane_dot takes panels: each token's sums carry over in ``acc``
    (f32, n_rows x Q8_CARRY: the 16 lanes, then the 8 bias sums; read when m0 > 0, written when the row
    goes on), res written by the call that ends the row. The sums are the same, bitwise, however the
    row is cut. Without it the call takes the whole row (m0, m1, acc unread).
    """
    _check_array(codes, types.uint8, "codes")
    _check_array(res, types.float32, "res")
    _check_array(acc, types.float32, "acc")
    _check_array(supers, types.float32, "supers")
    plain, small = (types.uint16, types.int16, types.float32), (types.uint8, types.int8)
    for a in (scales, biases):
        if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype in plain + small):
            raise TypingError(f"scales, biases must be C-contiguous 1-D arrays of {plain + small}, got {a}")
    for a, dt in ((x, types.int8), (dx, types.float32), (xs, types.float32)):
        _check_array(a, dt, "activations", 2)
    _literals(((n_rows, range(1, AFFINE_MAX_B + 1), "n_rows"), (bits, (4, 6, 8), "bits"), (per, (0, 1, 2, 4), "per"),
               (offset, (0, 8, 32, 128), "offset"), (carry, (0, 1), "carry")))
    nb, nbits, gper, sdt = n_rows.literal_value, bits.literal_value, per.literal_value, scales.dtype
    carried = carry.literal_value
    code_offset, bdt, by_super = offset.literal_value, biases.dtype, scales.dtype in small
    if code_offset == 0 and not ((bdt in small) if by_super else bdt == sdt):
        raise TypingError("biases must share the scales' dtype (small integers both, or the same float kind)")
    if (gper == 0) != (nbits == 6) or nbits == 6 and code_offset != 32:
        raise TypingError("6-bit codes (Q6_K) come with 16-weight groups (per=0) and offset 32, and only they")
    sig = types.none(codes, scales, biases, supers, x, dx, xs, n_blocks, m0, m1, acc, res, n_rows, bits, per, offset,
                     carry)

    def codegen(context, builder, signature, args):
        at = signature.args
        cp = _ptr(context, builder, at[0], args[0])
        sp = _ptr(context, builder, at[1], args[1])
        bp = _ptr(context, builder, at[2], args[2])
        up = _ptr(context, builder, at[3], args[3])
        xa = context.make_array(at[4])(context, builder, value=args[4])
        dxa = context.make_array(at[5])(context, builder, value=args[5])
        xsa = context.make_array(at[6])(context, builder, value=args[6])
        ng, start, stop = (_i64(context, builder, args[i], at[i]) for i in (7, 8, 9))
        ap = _ptr(context, builder, at[10], args[10])
        rp = _ptr(context, builder, at[11], args[11])
        row_x = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
        row_d = cgutils.unpack_tuple(builder, dxa.shape, 2)[1]
        row_s = cgutils.unpack_tuple(builder, xsa.shape, 2)[1]
        zero16 = ir.Constant(_VI32x16, None)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(_VF8, None)) for _ in range(nb)]
        fifteen = ir.Constant(_VI8x64, [15] * 64)
        four = ir.Constant(_VI8x64, [4] * 64)
        two = ir.Constant(_VI8x64, [2] * 64)
        high_bits = ir.Constant(_VI8x64, [0x30] * 64)
        c = lambda v: ir.Constant(_I64, v)  # noqa: E731
        plane = builder.mul(ng, c(16))  # 6 bits: where the high parts start (after K/2 nibble bytes)

        def xvec(b, off, ty):
            return _load_vec(builder, xa.data, builder.add(builder.mul(c(b), row_x), off), ty, 1)

        def full_unit(u):
            # 64 code bytes at 64u: four blocks (4 and 6 bits) or two (8 bits) -> per token 16 x i32
            raw = _load_vec(builder, cp, builder.mul(u, c(64)), _VI8x64, 1)
            if nbits == 8:
                return [_dot4_64(builder, zero16, raw, xvec(b, builder.mul(u, c(64)), _VI8x64)) for b in range(nb)]
            lo = builder.and_(raw, fifteen)
            hi = builder.and_(builder.lshr(raw, four), fifteen)
            if nbits == 6:  # the high 2 bits of the unit's 128 codes, placed over the nibbles
                h = _load_vec(builder, cp, builder.add(plane, builder.mul(u, c(32))), _VI8x32, 1)
                h32 = ir.VectorType(ir.IntType(8), 32)
                h64 = builder.shuffle_vector(h, builder.shl(h, ir.Constant(h32, [4] * 32)),
                                             ir.Constant(ir.VectorType(_I32, 64), list(range(64))))
                lo = builder.or_(lo, builder.and_(h64, high_bits))
                hi = builder.or_(hi, builder.and_(builder.lshr(h64, two), high_bits))
            out = []
            for b in range(nb):
                xl = xvec(b, builder.mul(u, c(128)), _VI8x64)
                xh = xvec(b, builder.add(builder.mul(u, c(128)), c(64)), _VI8x64)
                out.append(_dot4_64(builder, _dot4_64(builder, zero16, lo, xl, True), hi, xh, True))
            return out

        def half_unit(u):
            # the last 32 code bytes at 64u, widened to a unit's shape (upper lanes zero): one block of
            # 8 bits, or a last pair of 4-bit blocks
            raw = _widen(builder, _load_vec(builder, cp, builder.mul(u, c(64)), _VI8x32, 1), 64)
            if nbits == 8:
                return [_dot4_64(builder, zero16, raw, _widen(builder, xvec(b, builder.mul(u, c(64)), _VI8x32), 64))
                        for b in range(nb)]
            lo = builder.and_(raw, fifteen)
            hi = builder.and_(builder.lshr(raw, four), fifteen)
            out = []
            for b in range(nb):
                xv = xvec(b, builder.mul(u, c(128)), _VI8x64)  # pair layout: 32 low partners, 32 high
                xl = builder.shuffle_vector(xv, ir.Constant(_VI8x64, None),
                                            ir.Constant(ir.VectorType(_I32, 64), list(range(32)) + [64] * 32))
                xh = builder.shuffle_vector(xv, ir.Constant(_VI8x64, None),
                                            ir.Constant(ir.VectorType(_I32, 64), list(range(32, 64)) + [64] * 32))
                # lanes 0-3 block 2u', 4-7 the next: spread to the quad shape (4 lanes a block)
                out.append(_dot4_64(builder, _dot4_64(builder, zero16, lo, xl, True), hi, xh, True))
            return out

        blocks_per_unit = 2 if nbits == 8 else 4
        units_per_octet = 8 // blocks_per_unit
        # lane l of unit i of an octet holds products of the octet's block i * blocks_per_unit + l // (16 / bpu)
        lane_block = [[i * blocks_per_unit + lane * blocks_per_unit // 16 for lane in range(16)]
                      for i in range(units_per_octet)]
        lane_accs = [cgutils.alloca_once_value(builder, ir.Constant(_VF, None)) for _ in range(nb)]

        def super_factor(g0, k):
            # the octet's super-block factor k (0: scale, 1: bias) when scales are small integers
            return builder.load(builder.gep(up, [builder.add(builder.udiv(g0, c(4)), c(k))]))

        def half_group_vec(g0):
            # per=0: the 16 groups of the octet's eight blocks as 16 x f32 (6-bit rows are whole octets)
            v = _stored_to_f32(builder, _load_vec(builder, sp, builder.mul(g0, c(2)),
                                                  ir.VectorType(sp.type.pointee, 16), 1), sdt)
            return builder.fmul(v, _splat(builder, super_factor(g0, 0), _VF)) if by_super else v

        def stored_vec(ptr, g0, checked, dtype):
            # the eight blocks' stored group values as 8 x f32 (zero past n_blocks when checked)
            if not checked:
                n_g = 8 // gper
                v = _stored_to_f32(builder, _load_vec(builder, ptr, builder.udiv(g0, c(gper)),
                                                      ir.VectorType(ptr.type.pointee, n_g), 1), dtype)
                if gper == 1:
                    return v
                return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 8), [i // gper for i in range(8)]))
            v = ir.Constant(_VF8, None)
            for i in range(8):
                g = builder.add(g0, c(i))
                inside = builder.icmp_unsigned("<", g, ng)
                idx = builder.select(inside, builder.udiv(g, c(gper)), c(0))
                val = _stored_to_f32(builder, builder.load(builder.gep(ptr, [idx])), dtype)
                v = builder.insert_element(v, builder.select(inside, val, ir.Constant(_F32, 0.0)), ir.Constant(_I32, i))
            return v

        def group_vecs(g0, checked):
            # (scales, biases) of the octet's eight blocks as 8 x f32
            c8 = stored_vec(sp, g0, checked, sdt)
            if by_super:
                c8 = builder.fmul(c8, _splat(builder, super_factor(g0, 0), _VF8))
            if code_offset:
                return c8, builder.fmul(c8, _splat(builder, ir.Constant(_F32, -float(code_offset)), _VF8))
            m8 = stored_vec(bp, g0, checked, bdt)
            if by_super:
                m8 = builder.fmul(m8, _splat(builder, builder.fneg(super_factor(g0, 1)), _VF8))
            return c8, m8

        def octet(m, checked):
            g0 = builder.mul(m, c(8))
            per_unit = []
            for i in range(units_per_octet):
                u = builder.add(builder.mul(m, c(units_per_octet)), c(i))
                if not checked:
                    per_unit.append(full_unit(u))
                    continue
                first = builder.add(g0, c(i * blocks_per_unit))
                left = builder.sub(ng, first)  # blocks from this unit's first on (may be <= 0)
                slots = [cgutils.alloca_once_value(builder, zero16) for _ in range(nb)]
                is_full = builder.icmp_signed(">=", left, c(blocks_per_unit))
                is_half = builder.icmp_signed("==", left, c(blocks_per_unit // 2))
                with builder.if_else(is_full) as (then, otherwise):
                    with then:
                        for slot, v in zip(slots, full_unit(u)):
                            builder.store(v, slot)
                    with otherwise:
                        with builder.if_then(is_half):
                            for slot, v in zip(slots, half_unit(u)):
                                builder.store(v, slot)
                per_unit.append([builder.load(slot) for slot in slots])
            if gper == 0:  # 6 bits: lane l of unit i holds 16-weight group 8i + l // 2 of the octet
                c16 = half_group_vec(g0)
                for b in range(nb):
                    d8 = _load_vec(builder, dxa.data, builder.add(builder.mul(c(b), row_d), g0), _VF8, 4)
                    cd = builder.fmul(c16, builder.shuffle_vector(d8, d8, ir.Constant(_VI32x16, [i // 2 for i in range(16)])))
                    # the codes' offset: -32 x scale x the group's activation sum
                    s16 = _load_vec(builder, xsa.data, builder.add(builder.mul(c(b), row_s), builder.mul(g0, c(2))), _VF, 4)
                    m16 = builder.fmul(c16, _splat(builder, ir.Constant(_F32, -float(code_offset)), _VF))
                    acc = _fma(builder, m16, s16, builder.load(lane_accs[b]))
                    for i, u in enumerate(per_unit):
                        lanes = builder.shuffle_vector(cd, cd, ir.Constant(_VI32x16, [8 * i + l // 2 for l in range(16)]))
                        acc = _fma(builder, builder.sitofp(u[b], _VF), lanes, acc)
                    builder.store(acc, lane_accs[b])
                return
            c8, m8 = group_vecs(g0, checked)
            for b in range(nb):
                off = builder.add(builder.mul(c(b), row_d), g0)
                cd8 = builder.fmul(c8, _load_vec(builder, dxa.data, off, _VF8, 4))  # scale x activation scale
                s8 = _load_vec(builder, xsa.data, builder.add(builder.mul(c(b), row_s), g0), _VF8, 4)
                builder.store(_fma(builder, m8, s8, builder.load(accs[b])), accs[b])
                # each unit's lanes stay lanes: converted, times their block's factor, summed once per row
                acc = builder.load(lane_accs[b])
                for i, u in enumerate(per_unit):
                    cd16 = builder.shuffle_vector(cd8, cd8, ir.Constant(_VI32x16, lane_block[i]))
                    acc = _fma(builder, builder.sitofp(u[b], _VF), cd16, acc)
                builder.store(acc, lane_accs[b])

        full = builder.udiv(ng, c(8))
        partial = builder.icmp_unsigned("!=", builder.urem(ng, c(8)), c(0))
        # each token's carried sums in acc: its 16 lanes, then its 8 bias sums
        carried_slots = [(slot, c(Q8_CARRY * b + off), ty) for b in range(nb)
                         for slot, off, ty in ((lane_accs[b], 0, _VF), (accs[b], LANES, _VF8))]
        if carried:  # the sums so far, then the whole octets m0..min(m1, full) and the partial one if m1 passes full
            fresh = builder.icmp_signed("==", start, c(0))
            for slot, off, ty in carried_slots:
                builder.store(builder.select(fresh, ir.Constant(ty, None), _load_vec(builder, ap, off, ty, 4)), slot)
            last = builder.select(builder.icmp_signed("<", stop, full), stop, full)
            partial = builder.and_(partial, builder.icmp_signed(">", stop, full))
            with cgutils.for_range_slice(builder, start, last, c(1)) as (m, _):
                octet(m, False)
        else:
            with cgutils.for_range(builder, full) as loop:
                octet(loop.index, False)
        if nbits != 6:  # 6-bit rows (K a multiple of 256) have no partial octet
            with builder.if_then(partial):
                octet(full, True)

        def finish():
            for b in range(nb):
                total = builder.fadd(builder.load(lane_accs[b]), _widen(builder, builder.load(accs[b]), 16))
                builder.store(_hsum(builder, total), builder.gep(rp, [c(b)]))

        if not carried:
            finish()
            return context.get_dummy_value()
        with builder.if_else(builder.icmp_signed(">=", builder.mul(stop, c(8)), ng)) as (then, otherwise):
            with then:
                finish()
            with otherwise:
                for slot, off, ty in carried_slots:
                    _store_vec(builder, builder.load(slot), ap, off, 4)
        return context.get_dummy_value()

    return sig, codegen


LANE_PANEL = 16  # blocks of 32 weights per panel of the lane layout (one 32-bit lane each)


def _lane_checks(scales, biases, supers, x, dx, xs, ndim):
    allowed = (types.uint16, types.int16, types.float32, types.uint8)
    for a in (scales, biases):
        if not (isinstance(a, types.Array) and a.ndim == ndim and a.layout == "C" and a.dtype in allowed):
            raise TypingError(f"scales, biases must be C-contiguous {ndim}-D arrays of {allowed}, got {a}")
    if (scales.dtype == types.uint8) != (biases.dtype == types.uint8):
        raise TypingError("scales and biases are both small integers (uint8, with supers) or neither")
    _check_array(supers, types.float32, "supers", ndim)
    for a, dt in ((x, types.int8), (dx, types.float32), (xs, types.float32)):
        _check_array(a, dt, "activations", 2)


def _lane_codegen(builder, rows, xa, dxa, xsa, first, start, stop, nb, gper, code_offset, carried, sdt, bdt):
    """The body of lane_dot and lane_pair: rows is a list of one or two (codes, scales, biases, supers,
    acc, res) pointers (acc at the row's first carried token)."""
    nw = len(rows)
    c = lambda v: ir.Constant(_I64, v)  # noqa: E731
    cps, sps, bps, ups, aps, rps = (list(t) for t in zip(*rows))
    by_super = sdt == types.uint8
    row_x = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
    row_d = cgutils.unpack_tuple(builder, dxa.shape, 2)[1]
    row_s = cgutils.unpack_tuple(builder, xsa.shape, 2)[1]
    zero16 = ir.Constant(_VI32x16, None)
    fifteen = ir.Constant(_VI8x64, [15] * 64)
    four = ir.Constant(_VI8x64, [4] * 64)
    facc = [[cgutils.alloca_once_value(builder, ir.Constant(_VF, None)) for _ in range(nb)] for _ in range(nw)]
    n_g = LANE_PANEL // gper
    x_data, dx_data, xs_data = xa.data, dxa.data, xsa.data
    count = stop
    if carried:  # the sums so far, and every pointer moved to panel `start` (the loop body is the same)
        fresh = builder.icmp_signed("==", start, c(0))
        for j in range(nw):
            for b in range(nb):
                builder.store(builder.select(fresh, ir.Constant(_VF, None),
                                             _load_vec(builder, aps[j], c(LANES * b), _VF, 4)), facc[j][b])
        cps = [builder.gep(p_, [builder.mul(start, c(256))]) for p_ in cps]
        sps = [builder.gep(p_, [builder.mul(start, c(n_g))]) for p_ in sps]
        bps = [builder.gep(p_, [builder.mul(start, c(n_g))]) for p_ in bps]
        ups = [builder.gep(p_, [builder.mul(start, c(4))]) for p_ in ups]
        x_data = builder.gep(x_data, [builder.mul(start, c(512))])
        dx_data = builder.gep(dx_data, [builder.mul(start, c(LANE_PANEL))])
        xs_data = builder.gep(xs_data, [builder.mul(start, c(LANE_PANEL))])
        count = builder.sub(stop, start)
    spread = ir.Constant(_VI32x16, [lane // gper for lane in range(LANE_PANEL)])

    def group_vec(ptr, p, dtype):
        v = _stored_to_f32(builder, _load_vec(builder, ptr, builder.mul(p, c(n_g)),
                                              ir.VectorType(ptr.type.pointee, n_g), 1), dtype)
        return v if gper == 1 else builder.shuffle_vector(v, v, spread)

    def super_vec(j, p, k):
        # small-integer scales (k=0) or mins (k=1) of row j's panel p: times their super-block's factor
        # (supers: per 256 weights the scale factor then the bias factor), lanes 0-7 the first
        # super-block's, 8-15 the second's; biases are minus the product
        halves = [_splat(builder, builder.load(builder.gep(ups[j], [builder.add(builder.mul(p, c(4)), c(2 * h + k))])),
                      _VF) for h in range(2)]
        f = builder.shuffle_vector(halves[0], halves[1], ir.Constant(_VI32x16, list(range(8)) + list(range(24, 32))))
        v = builder.fmul(group_vec(sps[j] if k == 0 else bps[j], p, types.uint8), f)
        return v if k == 0 else builder.fneg(v)

    def unit(j, p, s):  # the low and high nibbles of 64-byte unit s of row j's panel p
        raw = _load_vec(builder, cps[j], builder.add(builder.mul(p, c(256)), c(64 * s)), _VI8x64, 1)
        return builder.and_(raw, fifteen), builder.and_(builder.lshr(raw, four), fifteen)

    def xunit(b, p, half):  # token b's 64 activation codes for unit half // 2: low (0) or high (1) nibbles
        off = builder.add(builder.mul(builder.add(first, c(b)), row_x), builder.mul(p, c(512)))
        return _load_vec(builder, x_data, builder.add(off, c(64 * half)), _VI8x64, 1)

    def scale(b, p, idots, scb):  # token b's float sums += its blocks' integer dots, scaled, and the bias terms
        tok = builder.add(first, c(b))
        d16 = _load_vec(builder, dx_data, builder.add(builder.mul(tok, row_d), builder.mul(p, c(16))), _VF, 4)
        s16 = _load_vec(builder, xs_data, builder.add(builder.mul(tok, row_s), builder.mul(p, c(16))), _VF, 4)
        for j, (sc, bi) in enumerate(scb):
            f = _fma(builder, builder.sitofp(idots[j], _VF), builder.fmul(sc, d16), builder.load(facc[j][b]))
            builder.store(_fma(builder, bi, s16, f), facc[j][b])

    with cgutils.for_range(builder, count) as loop:
        p = loop.index
        scb = []
        for j in range(nw):
            if by_super:
                scb.append((super_vec(j, p, 0), super_vec(j, p, 1)))
                continue
            sc = group_vec(sps[j], p, sdt)
            if code_offset:
                bi = builder.fmul(sc, _splat(builder, ir.Constant(_F32, -float(code_offset)), _VF))
            else:
                bi = group_vec(bps[j], p, bdt)
            scb.append((sc, bi))
        if nw == 1:  # every unit decoded once, then each token's chain(s) past them
            units = [unit(0, p, s) for s in range(4)]
            for b in range(nb):
                chains = [zero16, zero16] if nb <= 2 else [zero16]  # integer sums: exact in any order
                for s, (lo, hi) in enumerate(units):
                    chains[0] = _dot4_64(builder, chains[0], lo, xunit(b, p, 2 * s), True)
                    chains[-1] = _dot4_64(builder, chains[-1], hi, xunit(b, p, 2 * s + 1), True)
                scale(b, p, [chains[0] if len(chains) == 1 else builder.add(chains[0], chains[1])], scb)
        else:  # unit by unit: each activation load serves both rows
            sums = [[zero16] * nw for _ in range(nb)]
            for s in range(4):
                us = [unit(j, p, s) for j in range(nw)]
                for b in range(nb):
                    xl, xh = xunit(b, p, 2 * s), xunit(b, p, 2 * s + 1)
                    for j, (lo, hi) in enumerate(us):
                        sums[b][j] = _dot4_64(builder, _dot4_64(builder, sums[b][j], lo, xl, True), hi, xh, True)
            for b in range(nb):
                scale(b, p, sums[b], scb)

    def finish():
        totals = _hsum_many(builder, [builder.load(f) for fj in facc for f in fj])
        for j in range(nw):
            for b in range(nb):
                builder.store(totals[j * nb + b], builder.gep(rps[j], [c(b)]))

    if not carried:
        finish()
        return
    done = builder.icmp_signed(">=", builder.mul(stop, c(512)), row_x)
    with builder.if_else(done) as (then, otherwise):
        with then:
            finish()
        with otherwise:
            for j in range(nw):
                for b in range(nb):
                    _store_vec(builder, builder.load(facc[j][b]), aps[j], c(LANES * b), 4)


@intrinsic
def lane_dot(typingctx, codes, scales, biases, supers, x, dx, xs, b0, p0, p1, acc, res, n_rows, per, offset, carry):
    """Dots of one 4-bit row in the lane layout with the ``n_rows`` (literal 1..8) int8-quantized
    activation rows from b0 on: res[b] = sum over blocks j of 32 weights (scale_j * dx[b0 + b, j] *
    idot_j + bias_j * xs[b0 + b, j]), over panels p0..p1-1 of a row of P = x.shape[1] / 512.

    With ``carry`` (literal 1) a row can be taken in several calls of consecutive panel ranges (so that
    a few tokens' codes of a long row stay in L1 across the rows of a task): the per-token 16-lane
    float sums carry over in ``acc`` (f32, n_rows x 16; read when p0 > 0, written when p1 < P), and
    res is written when p1 == P. The sums are the same, bitwise, however the row is cut. Without
    it the call takes the whole row (p0, p1, acc unread: the loop then keeps its constants in registers).

    Lane layout (quant.to_lanes): the row is cut into panels of 16 blocks; panel p is 256 bytes, four
    64-byte units, and byte 4l + i of unit s holds the codes of block 16p + l at 8s + i (low nibble)
    and 8s + 4 + i (high nibble). So one 32-bit lane of every unit belongs to one block, and a
    panel's eight vpdpbusd leave each block's integer dot in its own lane: no shuffles, one
    conversion and two FMAs per panel and token. The activations come in the same order
    (quant_block layout 2: per panel 512 bytes, per unit the 64 partners of the low nibbles, then
    the 64 of the high ones); dx, xs per block (zero for padding blocks). Scales and biases (stored
    dtype: uint16 bf16, int16 f16 or f32) hold one value per group of ``per`` (literal 1, 2, 4)
    blocks, padded to whole panels; ``offset`` (literal 0 or 8): when 8 every bias is -8 x its scale
    and biases are not read (Q4_0). Scales and biases of dtype uint8 (Q4_K, ``per`` 1) are small
    integers times the row's ``supers`` (f32, per 256 weights a scale then a bias factor, padded to
    whole panels): scale = supers[2m] * scales[j], bias = -supers[2m + 1] * biases[j]; supers is
    not read otherwise. Each token's arithmetic is the same whatever n_rows is, and the same in
    lane_pair."""
    _check_array(codes, types.uint8, "codes")
    _check_array(res, types.float32, "res")
    _check_array(acc, types.float32, "acc")
    _lane_checks(scales, biases, supers, x, dx, xs, 1)
    _literals(((n_rows, range(1, AFFINE_MAX_B + 1), "n_rows"), (per, (1, 2, 4), "per"), (offset, (0, 8), "offset"),
               (carry, (0, 1), "carry")))
    sig = types.none(codes, scales, biases, supers, x, dx, xs, b0, p0, p1, acc, res, n_rows, per, offset, carry)

    def codegen(context, builder, signature, args):
        at = signature.args
        ptrs = [_ptr(context, builder, at[i], args[i]) for i in (0, 1, 2, 3, 10, 11)]
        arrays = [context.make_array(at[i])(context, builder, value=args[i]) for i in (4, 5, 6)]
        first, start, stop = (_i64(context, builder, args[i], at[i]) for i in (7, 8, 9))
        _lane_codegen(builder, [ptrs], *arrays, first, start, stop, n_rows.literal_value, per.literal_value,
                      offset.literal_value, carry.literal_value, scales.dtype, biases.dtype)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def lane_pair(typingctx, codes, scales, biases, supers, r, x, dx, xs, b0, p0, p1, acc, a_row, a_col, res, n_rows,
              per, offset, carry):
    """lane_dot for the two rows r, r + 1 at once, against ``n_rows`` (literal 1..4) tokens from b0:
    res[j * H + b] for row r + j, H = len(res) // 2. codes (N, P*256) u8, scales and biases (N, G),
    supers (N, S) and acc (R, >= 16 n_rows) are whole C-contiguous 2-D arrays (carried sums of row r + j at
    acc[a_row + j, a_col + 16 b]). Every activation load serves both rows (a panel's eight 64-byte loads per
    token feed 16 vpdpbusd instead of 8: several tokens are otherwise bound by the loads); each
    token's arithmetic is lane_dot's."""
    _check_array(codes, types.uint8, "codes", 2)
    _check_array(res, types.float32, "res")
    _check_array(acc, types.float32, "acc", 2)
    _lane_checks(scales, biases, supers, x, dx, xs, 2)
    _literals(((n_rows, range(1, 5), "n_rows"), (per, (1, 2, 4), "per"), (offset, (0, 8), "offset"),
               (carry, (0, 1), "carry")))
    sig = types.none(codes, scales, biases, supers, r, x, dx, xs, b0, p0, p1, acc, a_row, a_col, res, n_rows, per,
                     offset, carry)

    def codegen(context, builder, signature, args):
        at = signature.args
        arrs = [context.make_array(at[i])(context, builder, value=args[i]) for i in (0, 1, 2, 3, 11, 14)]
        strides = [cgutils.unpack_tuple(builder, a.shape, 2)[1] for a in arrs[:5]]
        strides.append(builder.udiv(cgutils.unpack_tuple(builder, arrs[5].shape, 1)[0], ir.Constant(_I64, 2)))
        row, first, start, stop, a_r, a_c = (_i64(context, builder, args[i], at[i]) for i in (4, 8, 9, 10, 12, 13))

        def at_row(i, line, extra=None):
            off = builder.mul(line, strides[i])
            return builder.gep(arrs[i].data, [off if extra is None else builder.add(off, extra)])

        rows = []
        for j in range(2):
            rj = builder.add(row, ir.Constant(_I64, j))
            rows.append((at_row(0, rj), at_row(1, rj), at_row(2, rj), at_row(3, rj),
                         at_row(4, builder.add(a_r, ir.Constant(_I64, j)), a_c), at_row(5, ir.Constant(_I64, j))))
        arrays = [context.make_array(at[i])(context, builder, value=args[i]) for i in (5, 6, 7)]
        _lane_codegen(builder, rows, *arrays, first, start, stop, n_rows.literal_value, per.literal_value,
                      offset.literal_value, carry.literal_value, scales.dtype, biases.dtype)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def quant_block(typingctx, x, x_off, q, lo_off, hi_off, layout):
    """Round the 32 activations x[x_off:x_off+32] to int8 codes round(x * 127 / max|x|) (0 when all
    are 0; ties to even, like np.rint) and store them in q by ``layout`` (literal): 0 all 32 in order
    at lo_off; 1 the even-indexed 16 at lo_off, the odd at hi_off (MLX nibble partners); 2 the
    partners of a block in the lane layout (lane_dot): codes 8s..8s+3 at lo_off + 128s, 8s+4..8s+7
    at lo_off + 128s + 64 for s = 0..3 (hi_off unused). Returns (max|x|, sum of the codes)."""
    _check_array(x, types.float32, "x")
    _check_array(q, types.int8, "q")
    _literals(((layout, (0, 1, 2), "layout"),))
    mode = layout.literal_value
    sig = types.UniTuple(types.float32, 2)(x, x_off, q, lo_off, hi_off, layout)

    def codegen(context, builder, signature, args):
        at = signature.args
        xp = _ptr(context, builder, at[0], args[0])
        qp = _ptr(context, builder, at[2], args[2])
        lo = _i64(context, builder, args[3], at[3])
        hi = _i64(context, builder, args[4], at[4])
        vf = ir.VectorType(_F32, 32)
        v = _load_vec(builder, xp, _i64(context, builder, args[1], at[1]), vf, 4)
        mags = _call(builder, "llvm.fabs.v32f32", vf, [v])
        amax = _tree(builder, mags, lambda a, b: _call(builder, f"llvm.maxnum.v{a.type.count}f32", a.type, [a, b]))
        positive = builder.fcmp_ordered(">", amax, ir.Constant(_F32, 0.0))
        inv = builder.select(positive, builder.fdiv(ir.Constant(_F32, 127.0), amax), ir.Constant(_F32, 0.0))
        scaled = builder.fmul(v, _splat(builder, inv, vf))
        codes = builder.fptosi(_call(builder, "llvm.rint.v32f32", vf, [scaled]), ir.VectorType(_I32, 32))
        total = _tree(builder, codes, builder.add)
        q8 = builder.trunc(codes, ir.VectorType(ir.IntType(8), 32))
        if mode == 0:
            builder.store(q8, builder.bitcast(builder.gep(qp, [lo]), q8.type.as_pointer()), align=1)
        elif mode == 2:
            for i in range(8):  # four codes a piece: lane layout
                four = builder.shuffle_vector(q8, q8, ir.Constant(ir.VectorType(_I32, 4), list(range(4 * i, 4 * i + 4))))
                off = builder.add(lo, ir.Constant(_I64, 128 * (i // 2) + 64 * (i % 2)))
                builder.store(four, builder.bitcast(builder.gep(qp, [off]), four.type.as_pointer()), align=1)
        else:
            for off, idx in zip((lo, hi), (range(0, 32, 2), range(1, 32, 2))):
                half = builder.shuffle_vector(q8, q8, ir.Constant(ir.VectorType(_I32, 16), list(idx)))
                builder.store(half, builder.bitcast(builder.gep(qp, [off]), half.type.as_pointer()), align=1)
        return context.make_tuple(builder, signature.return_type, [amax, builder.sitofp(total, _F32)])

    return sig, codegen


ROW_WIDTHS = (64, 128, 256)  # head_dim values the attention intrinsics are compiled for
MAX_HEADS = 4


@intrinsic
def dot_rows(typingctx, k, k_off, k_stride, q, q_off, q_stride, n, s, s_off, s_stride, scale, heads, width):
    """Scaled dots of ``heads`` (literal) query rows with ``n`` cached rows (decode attention scores):
    s[s_off + h*s_stride + i] = scale * sum_j q[q_off + h*q_stride + j] * k[k_off + i*k_stride + j],
    j < width (literal, in ROW_WIDTHS). k: float32, or float16 bits as int16; q, s: float32; every
    array C-contiguous, offsets and strides in elements of its flat data. The query rows stay in
    registers; each cached row is read once for all heads."""
    _check_rows(k, (types.float32, types.int16), "k")
    _check_rows(q, (types.float32,), "q")
    _check_rows(s, (types.float32,), "s")
    _literals(((heads, range(1, MAX_HEADS + 1), "heads"), (width, ROW_WIDTHS, "width")))
    nh, nc, kdt = heads.literal_value, width.literal_value // LANES, k.dtype
    sig = types.none(k, k_off, k_stride, q, q_off, q_stride, n, s, s_off, s_stride, scale, heads, width)

    def codegen(context, builder, signature, args):
        at = signature.args
        kp, qp, sp = (_ptr(context, builder, at[i], args[i]) for i in (0, 3, 7))
        k_off, k_str, q_off, q_str, cnt, s_off, s_str = (_i64(context, builder, args[i], at[i]) for i in (1, 2, 4, 5, 6, 8, 9))
        scale_v = context.cast(builder, args[10], at[10], types.float32)
        c = lambda v: ir.Constant(_I64, v)  # noqa: E731
        kvec = ir.VectorType(kp.type.pointee, LANES)
        qs = [[_load_vec(builder, qp, builder.add(q_off, builder.add(builder.mul(c(h), q_str), c(LANES * j))), _VF, 4)
               for j in range(nc)] for h in range(nh)]
        with cgutils.for_range(builder, cnt) as loop:
            row = builder.add(k_off, builder.mul(loop.index, k_str))
            ks = [_stored_to_f32(builder, _load_vec(builder, kp, builder.add(row, c(LANES * j)), kvec, 4), kdt)
                  for j in range(nc)]
            for h in range(nh):
                acc = builder.fmul(qs[h][0], ks[0])
                for j in range(1, nc):
                    acc = _fma(builder, qs[h][j], ks[j], acc)
                dot = builder.fmul(_hsum(builder, acc), scale_v)
                at_s = builder.add(s_off, builder.add(builder.mul(c(h), s_str), loop.index))
                builder.store(dot, builder.gep(sp, [at_s]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def weighted_rows(typingctx, v, v_off, v_stride, w, w_off, w_stride, n, out, out_off, out_stride, heads, width):
    """Weighted sums of ``n`` cached rows for ``heads`` (literal) weight rows (decode attention's
    P V): out[out_off + h*out_stride + j] = sum_i w[w_off + h*w_stride + i] * v[v_off + i*v_stride + j],
    j < width (literal, in ROW_WIDTHS), written (not accumulated). v: float32, or float16 bits as
    int16; w, out: float32; C-contiguous, offsets and strides in elements of the flat data. The
    outputs stay in registers for all n rows; each cached row is read once for all heads."""
    _check_rows(v, (types.float32, types.int16), "v")
    _check_rows(w, (types.float32,), "w")
    _check_rows(out, (types.float32,), "out")
    _literals(((heads, range(1, MAX_HEADS + 1), "heads"), (width, ROW_WIDTHS, "width")))
    nh, nc, vdt = heads.literal_value, width.literal_value // LANES, v.dtype
    sig = types.none(v, v_off, v_stride, w, w_off, w_stride, n, out, out_off, out_stride, heads, width)

    def codegen(context, builder, signature, args):
        at = signature.args
        vp, wp, op = (_ptr(context, builder, at[i], args[i]) for i in (0, 3, 7))
        v_off, v_str, w_off, w_str, cnt, o_off, o_str = (_i64(context, builder, args[i], at[i]) for i in (1, 2, 4, 5, 6, 8, 9))
        c = lambda x: ir.Constant(_I64, x)  # noqa: E731
        vvec = ir.VectorType(vp.type.pointee, LANES)
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(_VF, None)) for _ in range(nc)] for _ in range(nh)]
        with cgutils.for_range(builder, cnt) as loop:
            row = builder.add(v_off, builder.mul(loop.index, v_str))
            vs = [_stored_to_f32(builder, _load_vec(builder, vp, builder.add(row, c(LANES * j)), vvec, 4), vdt)
                  for j in range(nc)]
            for h in range(nh):
                e = builder.load(builder.gep(wp, [builder.add(w_off, builder.add(builder.mul(c(h), w_str), loop.index))]))
                ev = _splat(builder, e, _VF)
                for j in range(nc):
                    _fma_into(builder, accs[h][j], ev, vs[j])
        for h in range(nh):
            base = builder.add(o_off, builder.mul(c(h), o_str))
            for j in range(nc):
                ptr = builder.bitcast(builder.gep(op, [builder.add(base, c(LANES * j))]), _VF.as_pointer())
                builder.store(builder.load(accs[h][j]), ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


def _prefetch_line(builder, ptr):
    """llvm.prefetch of the line holding the i8* ``ptr`` (read, high locality, data)."""
    i8p = ir.IntType(8).as_pointer()
    fn = builder.module.globals.get("llvm.prefetch.p0i8")
    if fn is None:
        fn = ir.Function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]),
                         name="llvm.prefetch.p0i8")
    builder.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])


@intrinsic
def prefetch(typingctx, a, off, n):
    """Ask the cache for elements a[off:off+n] of a C-contiguous array's flat data, one request per
    64-byte line (llvm.prefetch: a hint, never a fault)."""
    if not (isinstance(a, types.Array) and a.layout == "C"):
        raise TypingError(f"a must be a C-contiguous array, got {a}")
    sig = types.none(a, off, n)

    def codegen(context, builder, signature, args):
        at = signature.args
        base = _ptr(context, builder, at[0], args[0])
        first = builder.bitcast(builder.gep(base, [_i64(context, builder, args[1], at[1])]), ir.IntType(8).as_pointer())
        size = context.get_abi_sizeof(context.get_data_type(at[0].dtype))
        n_bytes = builder.mul(_i64(context, builder, args[2], at[2]), ir.Constant(_I64, size))
        n_lines = builder.udiv(builder.add(n_bytes, ir.Constant(_I64, 63)), ir.Constant(_I64, 64))
        with cgutils.for_range(builder, n_lines) as loop:
            _prefetch_line(builder, builder.gep(first, [builder.mul(loop.index, ir.Constant(_I64, 64))]))
        return context.get_dummy_value()

    return sig, codegen


def fma_shape() -> tuple[int, int]:
    """(lanes, chains) of the FMA-peak loop: the host's widest float vector and as many independent
    accumulators as its register file holds with room for the two operands."""
    feats = _cpu_features()
    if "avx512f" in feats:
        return 16, 24  # 32 zmm
    if "avx" in feats:
        return 8, 12  # 16 ymm
    return 4, 24  # NEON: 32 q registers


@intrinsic
def fma_chains(typingctx, n_iter, a, out):
    """The FMA ceiling: ``n_iter`` rounds of acc = fma(acc, a[0], a[1]) on fma_shape()'s chains of
    native-width vectors (explicit llvm.fma, which LLVM neither folds nor spills); out[0] = their sum."""
    _check_array(a, types.float32, "a")
    _check_array(out, types.float32, "out")
    sig = types.none(n_iter, a, out)
    lanes, chains = fma_shape()

    def codegen(context, builder, signature, args):
        at = signature.args
        ap, op = _ptr(context, builder, at[1], args[1]), _ptr(context, builder, at[2], args[2])
        vt = ir.VectorType(_F32, lanes)
        mul, add = (_splat(builder, builder.load(builder.gep(ap, [ir.Constant(_I64, i)])), vt) for i in (0, 1))
        accs = [cgutils.alloca_once_value(builder, builder.fadd(mul, ir.Constant(vt, [float(j)] * lanes)))
                for j in range(chains)]
        with cgutils.for_range(builder, _i64(context, builder, args[0], at[0])):
            for acc in accs:
                builder.store(_fma(builder, builder.load(acc), mul, add), acc)
        total = builder.load(accs[0])
        for acc in accs[1:]:
            total = builder.fadd(total, builder.load(acc))
        builder.store(_hsum(builder, total), op)
        return context.get_dummy_value()

    return sig, codegen


PAIR_CHUNK = 2 * fma_shape()[0]  # bf16 weights per dense_dot chunk step: two native vectors
