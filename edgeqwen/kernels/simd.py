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


def _check_array(ty, dtype, what):
    if not (isinstance(ty, types.Array) and ty.ndim == 1 and ty.layout == "C" and ty.dtype == dtype):
        raise TypingError(f"{what} must be a C-contiguous 1-D {dtype} array, got {ty}")


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


def _hsum(builder, vec):
    # a fixed pairwise tree (no fast-math: the same order in every kernel)
    width = vec.type.count
    while width > 1:
        width //= 2
        lo = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
        hi = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, width), list(range(width, 2 * width))))
        vec = builder.fadd(lo, hi)
    return builder.extract_element(vec, ir.Constant(_I32, 0))


def _group_loop(builder, ng, chunk_count, body, sp, n_acc):
    """for g < ng: partials = 0; for each 16-lane chunk: body(...) adds into ``n_acc`` partials
    (independent chains, so FMA latency overlaps); acc[i] += scale[g] * partial[i]. Returns sum."""
    accs = [cgutils.alloca_once_value(builder, ir.Constant(_VF, None)) for _ in range(n_acc)]
    parts = [cgutils.alloca_once_value(builder, ir.Constant(_VF, None)) for _ in range(n_acc)]
    with cgutils.for_range(builder, ng) as g_loop:
        g = g_loop.index
        for part in parts:
            builder.store(ir.Constant(_VF, None), part)
        with cgutils.for_range(builder, chunk_count) as c_loop:
            body(builder, g, c_loop.index, parts)
        s = _splat(builder, builder.load(builder.gep(sp, [g])), _VF)
        for acc, part in zip(accs, parts):
            builder.store(_fma(builder, s, builder.load(part), builder.load(acc)), acc)
    total = builder.load(accs[0])
    for acc in accs[1:]:
        total = builder.fadd(total, builder.load(acc))
    return _hsum(builder, total)


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


@intrinsic
def nibble_dot(typingctx, codes, c_stride, c_off, xl, xl_off, xh, xh_off, x_stride, scales, n_groups, group_bytes):
    """sum_g scales[g] * sum_j (lo(b_gj) * xl[xl_off + g*x_stride + j] + hi(b_gj) * xh[xh_off + ...]).

    b_gj = codes[g * c_stride + c_off + j] for j < group_bytes (a multiple of 16); lo/hi are the
    byte's low and high nibbles. MLX int4 rows: xl, xh = the even / odd activations. ggml Q4 blocks:
    xl = xh = x with offsets 0 / 16 and the block header skipped by c_off.
    """
    _check_array(codes, types.uint8, "codes")
    for a in (xl, xh, scales):
        _check_array(a, types.float32, "activations and scales")
    sig = types.float32(codes, c_stride, c_off, xl, xl_off, xh, xh_off, x_stride, scales, n_groups, group_bytes)

    def codegen(context, builder, signature, args):
        at = signature.args
        cp = _ptr(context, builder, at[0], args[0])
        xlp = _ptr(context, builder, at[3], args[3])
        xhp = _ptr(context, builder, at[5], args[5])
        sp = _ptr(context, builder, at[8], args[8])
        cs, co, xlo, xho, xs, ng, gb = (_i64(context, builder, args[i], at[i]) for i in (1, 2, 4, 6, 7, 9, 10))
        fifteen = ir.Constant(_VI32, [15] * LANES)
        four = ir.Constant(_VI32, [4] * LANES)

        def body(b, g, c, parts):
            step = b.mul(c, ir.Constant(_I64, LANES))
            raw = _load_vec(b, cp, b.add(b.add(b.mul(g, cs), co), step), _VI8, 1)
            wide = b.zext(raw, _VI32)
            xoff = b.add(b.mul(g, xs), step)
            # low and high nibbles feed separate accumulators: two independent FMA chains
            _fma_into(b, parts[0], b.uitofp(b.and_(wide, fifteen), _VF), _load_vec(b, xlp, b.add(xlo, xoff), _VF, 4))
            _fma_into(b, parts[1], b.uitofp(b.lshr(wide, four), _VF), _load_vec(b, xhp, b.add(xho, xoff), _VF, 4))

        return _group_loop(builder, ng, builder.udiv(gb, ir.Constant(_I64, LANES)), body, sp, 2)

    return sig, codegen


BYTE_KINDS = {"u8": 0, "i8": 1, "e4m3": 2}


def _decode_bytes(builder, raw, kind):
    """16 code bytes -> 16 floats: unsigned, signed, or e4m3 / 2**120 (see kernels.quant)."""
    if kind == "i8":
        return builder.sitofp(raw, _VF)
    if kind == "u8":
        return builder.uitofp(raw, _VF)
    wide = builder.zext(raw, _VI32)
    sign = builder.shl(builder.and_(wide, ir.Constant(_VI32, [0x80] * LANES)), ir.Constant(_VI32, [24] * LANES))
    mag = builder.shl(builder.and_(wide, ir.Constant(_VI32, [0x7F] * LANES)), ir.Constant(_VI32, [20] * LANES))
    return builder.bitcast(builder.or_(sign, mag), _VF)


@intrinsic
def byte_dot(typingctx, codes, c_stride, c_off, x, x_stride, scales, n_groups, group_bytes, kind):
    """sum_g scales[g] * sum_j q(codes[g*c_stride + c_off + j]) * x[g*x_stride + j].

    ``kind`` (a literal) says what a byte is: "u8", "i8", or "e4m3" (its value / 2**120: the caller
    folds 2**120 into the scales). group_bytes is a multiple of 32.
    """
    _check_array(codes, types.uint8, "codes")
    _check_array(x, types.float32, "activations")
    _check_array(scales, types.float32, "scales")
    if not isinstance(kind, types.StringLiteral) or kind.literal_value not in BYTE_KINDS:
        raise TypingError(f"kind must be a literal in {sorted(BYTE_KINDS)}")
    byte_kind = kind.literal_value
    sig = types.float32(codes, c_stride, c_off, x, x_stride, scales, n_groups, group_bytes, kind)

    def codegen(context, builder, signature, args):
        at = signature.args
        cp = _ptr(context, builder, at[0], args[0])
        xp = _ptr(context, builder, at[3], args[3])
        sp = _ptr(context, builder, at[5], args[5])
        cs, co, xs, ng, gb = (_i64(context, builder, args[i], at[i]) for i in (1, 2, 4, 6, 7))

        def body(b, g, c, parts):
            # two 16-byte chunks per step into two accumulators
            for k in range(2):
                step = b.add(b.mul(c, ir.Constant(_I64, 2 * LANES)), ir.Constant(_I64, k * LANES))
                raw = _load_vec(b, cp, b.add(b.add(b.mul(g, cs), co), step), _VI8, 1)
                _fma_into(b, parts[k], _decode_bytes(b, raw, byte_kind),
                          _load_vec(b, xp, b.add(b.mul(g, xs), step), _VF, 4))

        return _group_loop(builder, ng, builder.udiv(gb, ir.Constant(_I64, 2 * LANES)), body, sp, 2)

    return sig, codegen


MAX_B = 4  # rows handled per call of nibble_dot_multi (accumulators stay in registers)


@intrinsic
def nibble_dot_multi(typingctx, codes, c_stride, c_off, xl, xl_off, xh, xh_off, x_stride, scales, n_groups,
                     group_bytes, res, n_rows):
    """nibble_dot for ``n_rows`` (a literal 2..4) activation rows at once: each 16-byte chunk of codes
    is decoded once and used for every row of xl/xh (n_rows, ...); res[:n_rows] receives the dots.
    Per row, the operations and their order are exactly nibble_dot's (explicit FMAs, the same final
    sum), so a sequence's numbers do not depend on its batch."""
    _check_array(codes, types.uint8, "codes")
    _check_array(scales, types.float32, "scales")
    _check_array(res, types.float32, "res")
    for a in (xl, xh):
        if not (isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" and a.dtype == types.float32):
            raise TypingError("xl, xh must be C-contiguous 2-D float32 arrays")
    if not isinstance(n_rows, types.IntegerLiteral) or not 1 <= n_rows.literal_value <= MAX_B:
        raise TypingError(f"n_rows must be an integer literal in 1..{MAX_B}")
    nb = n_rows.literal_value
    sig = types.none(codes, c_stride, c_off, xl, xl_off, xh, xh_off, x_stride, scales, n_groups, group_bytes, res,
                     n_rows)

    def codegen(context, builder, signature, args):
        at = signature.args
        cp = _ptr(context, builder, at[0], args[0])
        xla = context.make_array(at[3])(context, builder, value=args[3])
        xha = context.make_array(at[5])(context, builder, value=args[5])
        sp = _ptr(context, builder, at[8], args[8])
        rp = _ptr(context, builder, at[11], args[11])
        cs, co, xlo, xho, xs, ng, gb = (_i64(context, builder, args[i], at[i]) for i in (1, 2, 4, 6, 7, 9, 10))
        row_l = cgutils.unpack_tuple(builder, xla.shape, 2)[1]
        row_h = cgutils.unpack_tuple(builder, xha.shape, 2)[1]
        zero = ir.Constant(_VF, None)
        parts = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(nb)]
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(nb)]
        fifteen = ir.Constant(_VI32, [15] * LANES)
        four = ir.Constant(_VI32, [4] * LANES)
        with cgutils.for_range(builder, ng) as g_loop:
            g = g_loop.index
            for pb in parts:
                for part in pb:
                    builder.store(zero, part)
            with cgutils.for_range(builder, builder.udiv(gb, ir.Constant(_I64, LANES))) as c_loop:
                step = builder.mul(c_loop.index, ir.Constant(_I64, LANES))
                raw = _load_vec(builder, cp, builder.add(builder.add(builder.mul(g, cs), co), step), _VI8, 1)
                wide = builder.zext(raw, _VI32)
                lo = builder.uitofp(builder.and_(wide, fifteen), _VF)
                hi = builder.uitofp(builder.lshr(wide, four), _VF)
                xoff = builder.add(builder.mul(g, xs), step)
                for b in range(nb):
                    bb = ir.Constant(_I64, b)
                    vl = _load_vec(builder, xla.data, builder.add(builder.mul(bb, row_l), builder.add(xlo, xoff)),
                                   _VF, 4)
                    vh = _load_vec(builder, xha.data, builder.add(builder.mul(bb, row_h), builder.add(xho, xoff)),
                                   _VF, 4)
                    _fma_into(builder, parts[b][0], lo, vl)
                    _fma_into(builder, parts[b][1], hi, vh)
            s = _splat(builder, builder.load(builder.gep(sp, [g])), _VF)
            for b in range(nb):
                for i in (0, 1):
                    builder.store(_fma(builder, s, builder.load(parts[b][i]), builder.load(accs[b][i])), accs[b][i])
        for b in range(nb):
            total = builder.fadd(builder.load(accs[b][0]), builder.load(accs[b][1]))
            builder.store(_hsum(builder, total), builder.gep(rp, [ir.Constant(_I64, b)]))
        return context.get_dummy_value()

    return sig, codegen


# -- integer dot products on int8-quantized activations (llama.cpp's decode scheme) -------------

_VI8x32 = ir.VectorType(ir.IntType(8), 32)
_VI8x16 = ir.VectorType(ir.IntType(8), 16)
_VI32x8 = ir.VectorType(_I32, 8)
_VF8 = ir.VectorType(_F32, 8)
Q8_KINDS = ("nib", "nib_blocks", "u8", "i8")
Q8_MAX_B = 4  # tokens per call of q8_dot (their accumulators stay in registers)


def _cpu_features() -> set[str]:
    """The target features Numba compiles for (NUMBA_CPU_FEATURES, else the host's)."""
    from numba.core import config
    from llvmlite import binding
    text = config.CPU_FEATURES if config.CPU_FEATURES is not None else binding.get_host_cpu_features().flatten()
    return {f[1:] for f in text.split(",") if f.startswith("+")}


def _has_vnni() -> bool:
    feats = _cpu_features()
    return "avxvnni" in feats or {"avx512vnni", "avx512vl"} <= feats


def _dot4(builder, acc, a, b):
    """acc (8 x i32) + sums of four consecutive products of a (32 x u8) and b (32 x s8): vpdpbusd.

    With VNNI it is the instruction; elsewhere the same exact integer sums in plain IR.
    """
    if _has_vnni():
        return _call(builder, "llvm.x86.avx512.vpdpbusd.256", _VI32x8, [acc, a, b])
    vi32x32 = ir.VectorType(_I32, 32)
    prod = builder.mul(builder.zext(a, vi32x32), builder.sext(b, vi32x32))
    for k in range(4):
        lanes = builder.shuffle_vector(prod, prod, ir.Constant(ir.VectorType(_I32, 8), list(range(k, 32, 4))))
        acc = builder.add(acc, lanes)
    return acc


def _pair_sums(builder, a, b):
    """(8 x i32, 8 x i32) -> 8 x i32: sums of adjacent lanes of a, then of b (phaddd's result, in order)."""
    ev = ir.Constant(ir.VectorType(_I32, 8), list(range(0, 16, 2)))
    od = ir.Constant(ir.VectorType(_I32, 8), list(range(1, 16, 2)))
    return builder.add(builder.shuffle_vector(a, b, ev), builder.shuffle_vector(a, b, od))


def _block_totals(builder, vs):
    """8 x i32 vectors -> one 8 x i32 vector of block sums (exact): from eight vectors, lane i sums
    vs[i]; from four (two blocks each), lane 2i sums lanes 0-3 of vs[i] and lane 2i+1 lanes 4-7."""
    while len(vs) > 1:
        vs = [_pair_sums(builder, vs[i], vs[i + 1]) for i in range(0, len(vs), 2)]
    return vs[0]


@intrinsic
def q8_dot(typingctx, codes, c_stride, c_off, x, x_stride, wscale, wmin, dx, xs, n_blocks, res, n_rows, kind):
    """Dots of one quantized weight row with ``n_rows`` (a literal 1..4) int8-quantized activation rows.

    Blocks of 32 weights; ``kind`` (a literal) says what the codes are:
    - "u8" / "i8": block g is 32 bytes at codes[g * c_stride + c_off], times x[b, 32g : 32g + 32].
    - "nib" (MLX int4, blocks back to back) / "nib_blocks" (ggml Q4, 16 code bytes per block at
      g * c_stride + c_off): 4-bit codes, taken two blocks at a time. For the pair (g, g+1) the
      activations x[b, 32g : 32g + 64] are the low nibbles' partners of g then g+1 (16 each), then
      the high nibbles' partners of g then g+1 (kernels.quant.quantize_act lays them out so).
    res[b] = sum_g (wscale[g] * dx[b, g] * idot_g + wmin[g] * xs[b, g]), idot_g the exact integer dot.
    wscale, wmin and the columns of dx, xs are padded with zeros to a multiple of 8 blocks: eight
    blocks' integer sums are gathered into one vector and scaled with one FMA. The nibble kinds need
    an even block count. Each token's float arithmetic is the same whatever n_rows is.
    """
    _check_array(codes, types.uint8, "codes")
    for a in (wscale, wmin):
        _check_array(a, types.float32, "wscale, wmin")
    _check_array(res, types.float32, "res")
    for a, dt in ((x, types.int8), (dx, types.float32), (xs, types.float32)):
        if not (isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" and a.dtype == dt):
            raise TypingError(f"activations must be C-contiguous 2-D {dt} arrays, got {a}")
    if not isinstance(n_rows, types.IntegerLiteral) or not 1 <= n_rows.literal_value <= Q8_MAX_B:
        raise TypingError(f"n_rows must be an integer literal in 1..{Q8_MAX_B}")
    if not isinstance(kind, types.StringLiteral) or kind.literal_value not in Q8_KINDS:
        raise TypingError(f"kind must be a literal in {Q8_KINDS}")
    nb, code_kind = n_rows.literal_value, kind.literal_value
    sig = types.none(codes, c_stride, c_off, x, x_stride, wscale, wmin, dx, xs, n_blocks, res, n_rows, kind)

    def codegen(context, builder, signature, args):
        at = signature.args
        cp = _ptr(context, builder, at[0], args[0])
        xa = context.make_array(at[3])(context, builder, value=args[3])
        wp = _ptr(context, builder, at[5], args[5])
        mp = _ptr(context, builder, at[6], args[6])
        dxa = context.make_array(at[7])(context, builder, value=args[7])
        xsa = context.make_array(at[8])(context, builder, value=args[8])
        rp = _ptr(context, builder, at[10], args[10])
        cs, co, xstr, ng = (_i64(context, builder, args[i], at[i]) for i in (1, 2, 4, 9))
        row_x = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
        row_d = cgutils.unpack_tuple(builder, dxa.shape, 2)[1]
        zero_i = ir.Constant(_VI32x8, None)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(_VF8, None)) for _ in range(nb)]
        concat = ir.Constant(ir.VectorType(_I32, 32), list(range(32)))
        fifteen = ir.Constant(_VI8x32, [15] * 32)
        four = ir.Constant(_VI8x32, [4] * 32)
        eight = ir.Constant(_I64, 8)

        def code_vectors(g):
            # the u8 operand(s) of block g (u8/i8) or of the pair g, g+1 (nibbles), and i8's sign mask
            base = builder.add(builder.mul(g, cs), co)
            if code_kind == "nib":
                raw = _load_vec(builder, cp, builder.add(builder.mul(g, ir.Constant(_I64, 16)), co), _VI8x32, 1)
            elif code_kind == "nib_blocks":
                a = _load_vec(builder, cp, base, _VI8x16, 1)
                b = _load_vec(builder, cp, builder.add(base, cs), _VI8x16, 1)
                raw = builder.shuffle_vector(a, b, concat)
            else:
                w = _load_vec(builder, cp, base, _VI8x32, 1)
                if code_kind == "u8":
                    return [w], None
                neg = builder.icmp_signed("<", w, ir.Constant(_VI8x32, None))  # |w| as u8, sign onto x
                return [builder.select(neg, builder.neg(w), w)], neg
            return [builder.and_(raw, fifteen), builder.and_(builder.lshr(raw, four), fifteen)], None

        def unit_sums(g):
            # per token: one 8 x i32 vector (u8/i8: block g; nibbles: lanes 0-3 g, 4-7 g+1)
            ws_, neg = code_vectors(g)
            out = []
            for b in range(nb):
                off = builder.add(builder.mul(ir.Constant(_I64, b), row_x), builder.mul(g, ir.Constant(_I64, 32)))
                acc = zero_i
                for k, w in enumerate(ws_):
                    xv = _load_vec(builder, xa.data, builder.add(off, ir.Constant(_I64, 32 * k)), _VI8x32, 1)
                    if neg is not None:
                        xv = builder.select(neg, builder.neg(xv), xv)
                    acc = _dot4(builder, acc, w, xv)
                out.append(acc)
            return out

        step = 2 if code_kind.startswith("nib") else 1  # blocks per unit

        def octet(m, checked):
            g0 = builder.mul(m, eight)
            per_unit = []
            for i in range(0, 8, step):
                g = builder.add(g0, ir.Constant(_I64, i))
                if not checked:
                    per_unit.append(unit_sums(g))
                    continue
                slots = [cgutils.alloca_once_value(builder, zero_i) for _ in range(nb)]
                with builder.if_then(builder.icmp_unsigned("<", g, ng)):
                    for slot, v in zip(slots, unit_sums(g)):
                        builder.store(v, slot)
                per_unit.append([builder.load(slot) for slot in slots])
            c8 = _load_vec(builder, wp, g0, _VF8, 4)
            m8 = _load_vec(builder, mp, g0, _VF8, 4)
            for b in range(nb):
                totals = builder.sitofp(_block_totals(builder, [u[b] for u in per_unit]), _VF8)
                off = builder.add(builder.mul(ir.Constant(_I64, b), row_d), g0)
                d8 = _load_vec(builder, dxa.data, off, _VF8, 4)
                s8 = _load_vec(builder, xsa.data, off, _VF8, 4)
                acc = builder.load(accs[b])
                acc = _fma(builder, totals, builder.fmul(c8, d8), acc)
                builder.store(_fma(builder, m8, s8, acc), accs[b])

        full = builder.udiv(ng, eight)
        with cgutils.for_range(builder, full) as loop:
            octet(loop.index, False)
        with builder.if_then(builder.icmp_unsigned("!=", builder.urem(ng, eight), ir.Constant(_I64, 0))):
            octet(full, True)
        for b in range(nb):
            builder.store(_hsum(builder, builder.load(accs[b])), builder.gep(rp, [ir.Constant(_I64, b)]))
        return context.get_dummy_value()

    return sig, codegen
