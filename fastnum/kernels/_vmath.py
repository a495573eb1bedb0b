"""Branch-free ``exp`` and ``log`` that LLVM can vectorize (numba ships no SVML).

Libm's ``exp`` and ``log`` are scalar calls, about 5 ns each here, and they keep
a loop from vectorizing.  These are written as straight-line arithmetic plus an
integer/float bit cast, so a loop that calls them compiles to SIMD code.  Both
are full double-precision evaluations (tests hold them within 2 ulp of libm);
they are how the kernels evaluate exp and log, not an approximation of the loss.

Special values follow IEEE and libm: NaN in gives NaN out, exp overflows to inf
and underflows through the subnormals to 0, log(0) is -inf, log of a negative
number is NaN, log(inf) is inf and subnormal arguments are exact.  The edge cases
are selects at the end, not branches, so vectorized loops stay vectorized; a
kernel fed a NaN therefore returns NaN, as the reference does, never a finite
number.
"""

from __future__ import annotations

import numpy as np

from fastnum._jit import JIT_ENABLED, njit

if JIT_ENABLED:
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def _as_f64(typingctx, bits):
        """Reinterpret int64 bits as a float64 (a no-op in machine code)."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.float64))

        return types.float64(types.int64), codegen

    @intrinsic
    def _as_i64(typingctx, value):
        """Reinterpret float64 bits as an int64."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.int64))

        return types.int64(types.float64), codegen

else:  # plain Python: the same reinterpretation through NumPy scalars

    def _as_f64(bits):
        return np.int64(bits).view(np.float64)

    def _as_i64(value):
        return np.float64(value).view(np.int64)


_LOG2E = 1.4426950408889634
# ln 2 split so that k * _LN2_HI is exact for |k| < 2**11 (fdlibm's constants).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_SQRT2 = 1.4142135623730951
_MANTISSA = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000
# exp(x) is inf above ~709.78 and rounds to 0 below ~-745.13; clamping the argument
# just outside that range keeps the integer exponent k small without changing a
# result.
_EXP_LOW, _EXP_HIGH = -746.0, 710.0
SMALLEST_NORMAL = 2.2250738585072014e-308  # the smallest normal float64
_TWO_52 = 4503599627370496.0  # 2**52: lifts a subnormal into the normal range


@njit
def fexp(x):
    """exp(x) for float64 x, with libm's overflow, underflow, subnormals and NaN.

    Cody-Waite reduction x = k ln2 + r with |r| <= ln2/2, a degree-13 Taylor
    polynomial for exp(r) (truncation < 1e-17 relative) and 2**k applied as two
    halves 2**(k - k//2) * 2**(k//2), each a normal number for every k in
    [-1076, 1024], so the last product overflows or goes subnormal exactly as
    IEEE rounding says.
    """
    xc = min(max(x, _EXP_LOW), _EXP_HIGH) if x == x else 0.0  # NaN: see the last line
    k = np.floor(xc * _LOG2E + 0.5)
    r = (xc - k * _LN2_HI) - k * _LN2_LO
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    ki = np.int64(k)
    half = ki >> 1
    y = (p * _as_f64((ki - half + 1023) << 52)) * _as_f64((half + 1023) << 52)
    return y if x == x else x


@njit
def _log_positive_normal(x):
    # log(x) for a positive, normal, finite x: x = 2**e * m with m in [sqrt(1/2), sqrt(2));
    # log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, summed to s**21
    # (truncation < 1e-17).  Straight-line code with one select, so loops vectorize.
    bits = _as_i64(x)
    e = (bits >> 52) - 1023
    m = _as_f64((bits & _MANTISSA) | _ONE_BITS)
    if m > _SQRT2:  # a select, not a branch, once vectorized
        m *= 0.5
        e += 1
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    q = 1.0 / 21.0
    q = q * s2 + 1.0 / 19.0
    q = q * s2 + 1.0 / 17.0
    q = q * s2 + 1.0 / 15.0
    q = q * s2 + 1.0 / 13.0
    q = q * s2 + 1.0 / 11.0
    q = q * s2 + 1.0 / 9.0
    q = q * s2 + 1.0 / 7.0
    q = q * s2 + 1.0 / 5.0
    q = q * s2 + 1.0 / 3.0
    ef = np.float64(e)
    return ef * _LN2_HI + (2.0 * s + (2.0 * s * s2 * q + ef * _LN2_LO))


@njit
def flog(x):
    """log(x) for float64 x, with libm's special values (0, negative, inf, NaN, subnormal).

    A subnormal x is first multiplied by 2**52 (exact), and its exponent corrected.
    """
    subnormal = x < SMALLEST_NORMAL
    y = _log_positive_normal(x * _TWO_52 if subnormal else x)
    y = y - 52.0 * (_LN2_HI + _LN2_LO) if subnormal else y
    y = x if x == np.inf else y
    # x > 0 is false for 0, negatives and NaN: log(+-0) = -inf, the others NaN.
    return y if x > 0.0 else (-np.inf if x == 0.0 else np.nan)


@njit
def flog_guarded(x):
    """log(x) for x = p + LOG_GUARD, a probability p in [0, 1] plus the book's guard, or NaN.

    Such an x is never 0, negative, subnormal or infinite, so :func:`flog`'s selects
    for those are left out: in the book's delta gradient they cost ~10%.  NaN still
    propagates.  With the guard off (p alone may be 0), use :func:`flog`.
    """
    y = _log_positive_normal(x)
    return y if x == x else x


#: Largest |x| for which :func:`fexp_small` is exact to double precision.
SMALL_EXP_BOUND = 2.0**-6


@njit
def fexp_small(x):
    """exp(x) for |x| <= SMALL_EXP_BOUND, to double precision.

    The degree-6 polynomial's truncation error is below x**7 / 7! < 5e-17
    relative, under half an ulp, so for these arguments this *is* exp(x), at a
    third of the cost of :func:`fexp`.  Callers check the bound and use
    :func:`fexp` otherwise.
    """
    p = 1.0 / 720.0
    p = p * x + 1.0 / 120.0
    p = p * x + 1.0 / 24.0
    p = p * x + 1.0 / 6.0
    p = p * x + 0.5
    p = p * x + 1.0
    return p * x + 1.0
