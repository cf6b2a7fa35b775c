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
    width = LANES
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


def _fma(builder, a, b, c):
    """a * b + c as one fused multiply-add (an explicit llvm.fma, so every kernel rounds the same way)."""
    module = builder.module
    name = f"llvm.fma.v{LANES}f32"
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(_VF, [_VF, _VF, _VF]), name=name)
    return builder.call(fn, [a, b, c])


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
