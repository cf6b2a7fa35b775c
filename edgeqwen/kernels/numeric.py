"""Element conversions the kernels specialise on by array dtype.

Weights keep their stored bytes. NumPy has no bfloat16, and Numba cannot compute on float16,
so the storage layer hands 16-bit floats over as integer views: ``uint16`` means bfloat16 and
``int16`` means IEEE float16. ``to_f32`` turns one element of any weight array into float32
with a single LLVM instruction or two, which the vectoriser widens (vpslld for bf16, vcvtph2ps
for f16 on x86; shll / fcvtl on ARM).
"""

from llvmlite import ir
from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload


@intrinsic
def _bf16_to_f32(typingctx, u):
    if u != types.uint16:
        raise TypingError("bf16 bits must be uint16")

    def codegen(context, builder, signature, args):
        wide = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def _f16_to_f32(typingctx, u):
    if u != types.int16:
        raise TypingError("f16 bits must be int16")

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.int16), codegen


def _u8_intrinsic(body):
    """An intrinsic uint8 -> float32 whose integer work stays in 32-bit lanes.

    Numba widens integer arithmetic to 64 bits, which halves the vector width of every decode
    loop; these helpers emit the i32 operations directly so LLVM can use 16-lane (AVX-512) or
    8-lane (AVX2 / 2x NEON) vectors.
    """

    @intrinsic
    def impl(typingctx, b):
        if b != types.uint8:
            raise TypingError("expects uint8")

        def codegen(context, builder, signature, args):
            return body(builder, builder.zext(args[0], ir.IntType(32)))

        return types.float32(types.uint8), codegen

    return impl


def _i32(v):
    return ir.Constant(ir.IntType(32), v)


# low nibble, high nibble, whole byte, as float32
nib_lo = _u8_intrinsic(lambda bld, u: bld.uitofp(bld.and_(u, _i32(15)), ir.FloatType()))
nib_hi = _u8_intrinsic(lambda bld, u: bld.uitofp(bld.lshr(u, _i32(4)), ir.FloatType()))
u8_to_f32 = _u8_intrinsic(lambda bld, u: bld.uitofp(u, ir.FloatType()))
# an e4m3 byte's value / 2**120: sign to bit 31, exponent+mantissa to bits 20..26 (see kernels.quant)
e4m3_unscaled = _u8_intrinsic(lambda bld, u: bld.bitcast(
    bld.or_(bld.shl(bld.and_(u, _i32(0x80)), _i32(24)), bld.shl(bld.and_(u, _i32(0x7F)), _i32(20))),
    ir.FloatType()))


def to_f32(v):
    """float32 value of one stored weight element (see module docstring for the dtype map)."""
    raise NotImplementedError  # replaced inside jitted code by the overload below


@overload(to_f32, inline="always")
def _to_f32_overload(v):
    if v == types.uint16:
        return lambda v: _bf16_to_f32(v)
    if v == types.int16:
        return lambda v: _f16_to_f32(v)
    if v == types.float32:
        return lambda v: v
    if v == types.float64:
        return lambda v: types.float32(v)
    raise TypingError(f"no float32 conversion for {v}")


@intrinsic
def f16_round(typingctx, v):
    """float32 -> the nearest float16 -> float32 (what llama.cpp keeps of an activation block scale)."""
    if v != types.float32:
        raise TypingError("f16_round expects float32")

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.fptrunc(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.float32), codegen
