"""``exp``, ``log`` and ``log1p`` of one float64, written in arithmetic and bit operations only, so that a compiled
loop over a batch's rows runs them in vector registers (numba's ``math.exp`` is a call into the C library per
element: with the logistic loss that call was most of a many-rate epoch).

The algorithms are fdlibm's (the C library of Sun, the basis of Java's ``StrictMath`` and of most C libraries):
``exp`` reduces ``x = k ln2 + r`` with ``|r| <= ln2 / 2`` (``ln2`` in two parts, so ``r`` is exact) and takes
``exp(r)`` from a rational function of ``r``; ``log`` splits ``x = 2^k f`` with ``f`` in ``[sqrt(2)/2, sqrt(2))`` and
takes ``log(f)`` from ``s = (f - 1) / (f + 1)``; ``log1p(x)`` is ``log(u) + (x - (u - 1)) / u`` with ``u = 1 + x``
(the rounding of ``u`` corrected to first order). Against the C library: ``exp`` within 1 ulp (90% of arguments
the same bits), ``log`` within 1 ulp, ``log1p`` within 2 ulp (the tests hold them to that over the whole range,
the limits and the special values included).

Only IEEE additions, multiplications and divisions, compiled without reassociation or fused multiply-adds, so a
value's bits are the same in every vector lane, in the scalar tail of a loop and from one machine to the next; the
``if`` branches choose between computed values (the compiler makes them selects). Called from Python (the tests)
they run the same arithmetic, a little slowly.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import intrinsic, overload, register_jitable


def float_bits(x: float) -> int:
    """The IEEE 754 bits of ``x`` as a signed 64-bit integer."""
    return int(np.float64(x).view(np.int64))


def bits_float(bits: int) -> float:
    """The float64 whose IEEE 754 bits are ``bits`` (taken modulo 2^64, as the compiled shifts wrap)."""
    return float(np.uint64(bits & 0xFFFFFFFFFFFFFFFF).view(np.float64))


@intrinsic
def _bitcast_to_int(typingctx: object, x: types.Type) -> tuple[object, object]:  # pragma: no cover - compiled
    def codegen(context: object, builder: object, signature: object, args: list[object]) -> object:
        return builder.bitcast(args[0], context.get_value_type(types.int64))  # type: ignore[attr-defined]

    return types.int64(types.float64), codegen


@intrinsic
def _bitcast_to_float(typingctx: object, bits: types.Type) -> tuple[object, object]:  # pragma: no cover - compiled
    def codegen(context: object, builder: object, signature: object, args: list[object]) -> object:
        return builder.bitcast(args[0], context.get_value_type(types.float64))  # type: ignore[attr-defined]

    return types.float64(types.int64), codegen


@overload(float_bits)
def _compiled_float_bits(x):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled (numba compares the
    # implementation's signature with this one's, annotations included)
    return lambda x: _bitcast_to_int(x)


@overload(bits_float)
def _compiled_bits_float(bits):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    return lambda bits: _bitcast_to_float(bits)


_ROUNDING = 6755399441055744.0  # 1.5 * 2^52: x + this rounds x to an integer held in the low bits
_ROUNDING_BITS = 0x4338000000000000
_MANTISSA = 0x000FFFFFFFFFFFFF
_SMALLEST_NORMAL = 2.2250738585072014e-308
_TWO_TO_54 = 18014398509481984.0
_INV_LN2 = 1.44269504088896338700e+00
_LN2_HI = 6.93147180369123816490e-01  # ln 2's leading 32 bits: k * _LN2_HI is exact for |k| < 2^11
_LN2_LO = 1.90821492927058770002e-10
_EXP_MAX = 709.782712893383973096  # exp overflows above
_EXP_MIN = -745.13321910194110842  # exp is 0 below
_P1, _P2, _P3 = 1.66666666666666019037e-01, -2.77777777770155933842e-03, 6.61375632143793436117e-05
_P4, _P5 = -1.65339022054652515390e-06, 4.13813679705723846039e-08
_LG1, _LG2, _LG3 = 6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01
_LG4, _LG5, _LG6 = 2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01


@register_jitable
def exp(x: float) -> float:
    """``e^x``: ``inf`` above 709.78, 0 below -745.13, NaN for NaN; subnormal results rounded once."""
    shifted = x * _INV_LN2 + _ROUNDING
    k_float = shifted - _ROUNDING
    k = float_bits(shifted) - _ROUNDING_BITS
    hi = x - k_float * _LN2_HI
    lo = k_float * _LN2_LO
    r = hi - lo
    rr = r * r
    c = r - rr * (_P1 + rr * (_P2 + rr * (_P3 + rr * (_P4 + rr * _P5))))
    y = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi)
    half = k >> 1  # 2^k in two factors, each a normal number for every k in [-1075, 1024]
    y = y * bits_float((half + 1023) << 52) * bits_float((k - half + 1023) << 52)
    if x > _EXP_MAX:
        y = np.inf
    if x < _EXP_MIN:
        y = 0.0
    if x != x:
        y = x
    return y


@register_jitable
def _log_of_bits(bits: int, bias: int) -> float:
    """``log`` of the positive normal float64 whose bits are ``bits``, its exponent taken less ``bias`` (1023, or
    1023 + 54 for a subnormal scaled by ``2^54``): the reduction to ``f`` in ``[sqrt(2)/2, sqrt(2))`` and fdlibm's
    polynomial in ``s = (f - 1) / (f + 1)``."""
    mantissa = bits & _MANTISSA
    upper = (mantissa + 0x95F6400000000) & 0x10000000000000  # set where the mantissa is above sqrt(2)
    f = bits_float(mantissa | (upper ^ 0x3FF0000000000000)) - 1.0
    k_float = float(((bits >> 52) & 0x7FF) - bias + (upper >> 52))
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    r = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7))) + w * (_LG2 + w * (_LG4 + w * _LG6))
    half_square = 0.5 * f * f
    return k_float * _LN2_HI - ((half_square - (s * (half_square + r) + k_float * _LN2_LO)) - f)


@register_jitable
def log(x: float) -> float:
    """The natural logarithm: ``-inf`` at 0, NaN below 0 and for NaN, ``inf`` at ``inf``."""
    subnormal = x < _SMALLEST_NORMAL
    y = _log_of_bits(float_bits(x * _TWO_TO_54 if subnormal else x), 1023 + 54 if subnormal else 1023)
    if x == 0.0:
        y = -np.inf
    if x < 0.0:
        y = np.nan
    if x == np.inf:
        y = x
    if x != x:
        y = x
    return y


@register_jitable
def log1p(x: float) -> float:
    """``log(1 + x)``, accurate where ``x`` is small: ``x`` itself where ``1 + x`` rounds to 1."""
    u = 1.0 + x
    y = log(u) + (x - (u - 1.0)) / (u if u != 0.0 else 1.0)
    if u == 1.0:
        y = x
    if u == 0.0 or u == np.inf:
        y = log(u)
    return y


@register_jitable
def log1p_unit(x: float) -> float:
    """:func:`log1p` of ``0 <= x <= 1`` (the logistic loss's ``log(1 + e^-|m|)``), NaN for NaN: ``1 + x`` is in
    ``[1, 2]``, a normal number, so none of :func:`log`'s special cases apply (a third fewer operations). The same
    bits as :func:`log1p` there."""
    u = 1.0 + x
    y = _log_of_bits(float_bits(u), 1023)
    y = y + (x - (u - 1.0)) / u
    if u == 1.0:
        y = x
    if x != x:
        y = x
    return y


#: The functions compiled into the kernels through the losses' rules (their code is part of each kernel's cache key).
FUNCTIONS = (exp, _log_of_bits, log, log1p, log1p_unit)
