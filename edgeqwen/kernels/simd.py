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
        acc_ptr = cgutils.alloca_once_value(builder, ir.Constant(_VF, None))
        part_ptr = cgutils.alloca_once_value(builder, ir.Constant(_VF, None))
        fifteen = ir.Constant(_VI32, [15] * LANES)
        four = ir.Constant(_VI32, [4] * LANES)
        n_chunks = builder.udiv(gb, ir.Constant(_I64, LANES))
        with cgutils.for_range(builder, ng) as g_loop:
            g = g_loop.index
            builder.store(ir.Constant(_VF, None), part_ptr)
            cbase = builder.add(builder.mul(g, cs), co)
            xbase = builder.mul(g, xs)
            with cgutils.for_range(builder, n_chunks) as c_loop:
                step = builder.mul(c_loop.index, ir.Constant(_I64, LANES))
                raw = _load_vec(builder, cp, builder.add(cbase, step), _VI8, 1)
                wide = builder.zext(raw, _VI32)
                lo = builder.uitofp(builder.and_(wide, fifteen), _VF)
                hi = builder.uitofp(builder.lshr(wide, four), _VF)
                xoff = builder.add(xbase, step)
                vl = _load_vec(builder, xlp, builder.add(xlo, xoff), _VF, 4)
                vh = _load_vec(builder, xhp, builder.add(xho, xoff), _VF, 4)
                part = builder.load(part_ptr)
                part = builder.fadd(part, builder.fmul(lo, vl, flags=_FAST), flags=_FAST)
                part = builder.fadd(part, builder.fmul(hi, vh, flags=_FAST), flags=_FAST)
                builder.store(part, part_ptr)
            s = _splat(builder, builder.load(builder.gep(sp, [g])), _VF)
            acc = builder.fadd(builder.load(acc_ptr), builder.fmul(s, builder.load(part_ptr), flags=_FAST),
                               flags=_FAST)
            builder.store(acc, acc_ptr)
        return _hsum(builder, builder.load(acc_ptr))

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
        acc_ptr = cgutils.alloca_once_value(builder, ir.Constant(_VF, None))
        part_ptr = cgutils.alloca_once_value(builder, ir.Constant(_VF, None))
        n_chunks = builder.udiv(gb, ir.Constant(_I64, LANES))
        with cgutils.for_range(builder, ng) as g_loop:
            g = g_loop.index
            builder.store(ir.Constant(_VF, None), part_ptr)
            cbase = builder.add(builder.mul(g, cs), co)
            xbase = builder.mul(g, xs)
            with cgutils.for_range(builder, n_chunks) as c_loop:
                step = builder.mul(c_loop.index, ir.Constant(_I64, LANES))
                raw = _load_vec(builder, cp, builder.add(cbase, step), _VI8, 1)
                q = builder.sitofp(raw, _VF) if is_signed else builder.uitofp(raw, _VF)
                xv = _load_vec(builder, xp, builder.add(xbase, step), _VF, 4)
                part = builder.fadd(builder.load(part_ptr), builder.fmul(q, xv, flags=_FAST), flags=_FAST)
                builder.store(part, part_ptr)
            s = _splat(builder, builder.load(builder.gep(sp, [g])), _VF)
            acc = builder.fadd(builder.load(acc_ptr), builder.fmul(s, builder.load(part_ptr), flags=_FAST),
                               flags=_FAST)
            builder.store(acc, acc_ptr)
        return _hsum(builder, builder.load(acc_ptr))

    return sig, codegen
