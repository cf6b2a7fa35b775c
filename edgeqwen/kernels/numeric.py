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


@intrinsic
def bits_to_f32(typingctx, u):
    """Reinterpret the low 32 bits of an integer as float32 (Numba widens uint32 arithmetic to 64 bits)."""
    if not isinstance(u, types.Integer):
        raise TypingError("float32 bits must be an integer")

    def codegen(context, builder, signature, args):
        v = args[0]
        if u.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif u.bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(u), codegen


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
