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
    total = builder.extract_element(vec, ir.Constant(_I32, 0))
    for i in range(1, LANES):
        total = builder.fadd(total, builder.extract_element(vec, ir.Constant(_I32, i)), flags=_FAST)
    return total


def _group_loop(builder, ng, chunk_count, cbase_of, body, sp, n_acc):
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
            builder.store(builder.fadd(builder.load(acc), builder.fmul(s, builder.load(part), flags=_FAST),
                                       flags=_FAST), acc)
    total = builder.load(accs[0])
    for acc in accs[1:]:
        total = builder.fadd(total, builder.load(acc), flags=_FAST)
    return _hsum(builder, total)


def _fma_into(builder, part, a, b):
    builder.store(builder.fadd(builder.load(part), builder.fmul(a, b, flags=_FAST), flags=_FAST), part)


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

        return _group_loop(builder, ng, builder.udiv(gb, ir.Constant(_I64, LANES)), None, body, sp, 2)

    return sig, codegen


@intrinsic
def byte_dot(typingctx, codes, c_stride, c_off, x, x_stride, scales, n_groups, group_bytes, signed):
    """sum_g scales[g] * sum_j q(codes[g*c_stride + c_off + j]) * x[g*x_stride + j], q a u8 or (signed) i8."""
    _check_array(codes, types.uint8, "codes")
    _check_array(x, types.float32, "activations")
    _check_array(scales, types.float32, "scales")
    if not isinstance(signed, types.BooleanLiteral):
        raise TypingError("signed must be a literal bool")
    is_signed = signed.literal_value
    sig = types.float32(codes, c_stride, c_off, x, x_stride, scales, n_groups, group_bytes, signed)

    def codegen(context, builder, signature, args):
        at = signature.args
        cp = _ptr(context, builder, at[0], args[0])
        xp = _ptr(context, builder, at[3], args[3])
        sp = _ptr(context, builder, at[5], args[5])
        cs, co, xs, ng, gb = (_i64(context, builder, args[i], at[i]) for i in (1, 2, 4, 6, 7))
        half = ir.Constant(_I64, LANES // 2)

        def body(b, g, c, parts):
            # two 16-byte chunks per step into two accumulators (group_bytes is a multiple of 32)
            for k in range(2):
                step = b.add(b.mul(c, ir.Constant(_I64, 2 * LANES)), ir.Constant(_I64, k * LANES))
                raw = _load_vec(b, cp, b.add(b.add(b.mul(g, cs), co), step), _VI8, 1)
                q = b.sitofp(raw, _VF) if is_signed else b.uitofp(raw, _VF)
                _fma_into(b, parts[k], q, _load_vec(b, xp, b.add(b.mul(g, xs), step), _VF, 4))

        del half
        return _group_loop(builder, ng, builder.udiv(gb, ir.Constant(_I64, 2 * LANES)), None, body, sp, 2)

    return sig, codegen
