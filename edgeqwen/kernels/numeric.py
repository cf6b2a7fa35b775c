"""Element conversions the kernels specialise on by array dtype.

Weights keep their stored bytes. NumPy has no bfloat16, and Numba cannot compute on float16,
so the storage layer hands 16-bit floats over as integer views: ``uint16`` means bfloat16 and
``int16`` means IEEE float16. ``to_f32`` turns one element of any weight array into float32
with a single LLVM instruction or two, which the vectoriser widens (vpslld for bf16, vcvtph2ps
for f16 on x86; shll / fcvtl on ARM).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

# every kernel's compile options; error_model="numpy": no ZeroDivisionError branch, so loops with a
# division vectorise (inputs are validated before they reach a kernel)
JIT = dict(cache=True, fastmath=True, nogil=True, error_model="numpy")


def _unary(arg, ret, body):
    """An intrinsic taking one scalar of Numba type ``arg`` and returning ``ret``; ``body(builder,
    value)`` emits its LLVM IR."""

    @intrinsic
    def impl(typingctx, v):
        if v != arg:
            raise TypingError(f"expects {arg}, got {v}")

        def codegen(context, builder, signature, args):
            return body(builder, args[0])

        return ret(arg), codegen

    return impl


_F32, _HALF, _I16, _I32 = ir.FloatType(), ir.HalfType(), ir.IntType(16), ir.IntType(32)

_bf16_to_f32 = _unary(types.uint16, types.float32,
                      lambda bld, u: bld.bitcast(bld.shl(bld.zext(u, _I32), _i32(16)), _F32))
_f16_to_f32 = _unary(types.int16, types.float32, lambda bld, u: bld.fpext(bld.bitcast(u, _HALF), _F32))


def _u8_intrinsic(body):
    """An intrinsic uint8 -> float32 whose integer work stays in 32-bit lanes.

    Numba widens integer arithmetic to 64 bits, which halves the vector width of every decode
    loop; these helpers emit the i32 operations directly so LLVM can use 16-lane (AVX-512) or
    8-lane (AVX2 / 2x NEON) vectors.
    """
    return _unary(types.uint8, types.float32, lambda bld, b: body(bld, bld.zext(b, _I32)))


def _i32(v):
    return ir.Constant(_I32, v)


# low nibble, high nibble, whole byte, as float32
nib_lo = _u8_intrinsic(lambda bld, u: bld.uitofp(bld.and_(u, _i32(15)), _F32))
nib_hi = _u8_intrinsic(lambda bld, u: bld.uitofp(bld.lshr(u, _i32(4)), _F32))
u8_to_f32 = _u8_intrinsic(lambda bld, u: bld.uitofp(u, _F32))
# an e4m3 byte's value / 2**120: sign to bit 31, exponent+mantissa to bits 20..26 (see kernels.quant)
e4m3_unscaled = _u8_intrinsic(lambda bld, u: bld.bitcast(
    bld.or_(bld.shl(bld.and_(u, _i32(0x80)), _i32(24)), bld.shl(bld.and_(u, _i32(0x7F)), _i32(20))),
    _F32))


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


_f32_to_f16_bits = _unary(types.float32, types.int16, lambda bld, v: bld.bitcast(bld.fptrunc(v, _HALF), _I16))


def from_f32(v, like):
    """float32 ``v`` as an element of array ``like`` (float32 as is; int16 = float16 bits, rounded to nearest)."""
    raise NotImplementedError  # replaced inside jitted code by the overload below


@overload(from_f32, inline="always")
def _from_f32_overload(v, like):
    if like.dtype == types.int16:
        return lambda v, like: _f32_to_f16_bits(v)
    if like.dtype == types.float32:
        return lambda v, like: v
    raise TypingError(f"no float32 store into {like.dtype}")


_i32_bits_to_f32 = _unary(types.int32, types.float32, lambda bld, v: bld.bitcast(v, _F32))


_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 split so that n * _LN2_HI is exact for |n| < 2**9
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_LO = np.float32(-87.33654)  # below: exp underflows float32's normal range; return 0
_EXP_HI = np.float32(88.0)  # above: clamped (2**n must stay finite)


@njit(inline="always", **JIT)
def segment_of(first, t):
    # the segment i with first[i] <= t < first[i + 1] (first ascending, a handful of segments: the
    # matrices of a fused parallel loop, the sequences of a batch)
    i = 0
    while t >= first[i + 1]:
        i += 1
    return i


@njit(inline="always", **JIT)
def exp_f32(x):
    """e**x in float32 from + - * and a bit cast, so loops of it vectorise (math.exp is a scalar call
    here: Numba has no vector math library without Intel's SVML). x = n ln2 + r with |r| <= ln2 / 2,
    e**r by its Taylor series to r**7 (truncation < 6e-9 relative), times 2**n built in the exponent
    bits. Relative error below 4e-7 (a few float32 ulp) over the normal range (tests.test_kernels);
    0 below it, e**88 above it."""
    xc = min(max(x, _EXP_LO), _EXP_HI)
    n = np.float32(np.floor(xc * _LOG2E + np.float32(0.5)))
    r = xc - n * _LN2_HI - n * _LN2_LO
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    scale = _i32_bits_to_f32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
    return p * scale if x > _EXP_LO else np.float32(0.0)
