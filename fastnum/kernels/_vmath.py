"""Branch-free ``exp`` and ``log`` that LLVM can vectorize (numba ships no SVML).

Libm's ``exp`` and ``log`` are scalar calls, about 5 ns each here, and they keep
a loop from vectorizing.  These are written as straight-line arithmetic plus an
integer/float bit cast, so a loop that calls them compiles to SIMD code.  Both
are full double-precision evaluations (tests hold them within 2 ulp of libm);
they are how the kernels evaluate exp and log, not an approximation of the loss.
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


@njit
def fexp(x):
    """exp(x) for float64 x; arguments below -708 give exp(-708) (~3e-308) instead of underflow.

    Cody-Waite reduction x = k ln2 + r with |r| <= ln2/2, a degree-13 Taylor
    polynomial for exp(r) (truncation < 1e-17 relative) and 2**k from its bits.
    The clamp keeps 2**k a normal number; where the kernels use it, such a value
    is an addend to a sum >= 1 or sits beside the 1e-7 log guard, so it changes
    nothing.
    """
    x = min(max(x, -708.0), 709.0)
    k = np.floor(x * _LOG2E + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
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
    return p * _as_f64((np.int64(k) + 1023) << 52)


@njit
def flog(x):
    """log(x) for positive, normal float64 x (no zero, subnormal, inf or NaN handling).

    x = 2**e * m with m in [sqrt(1/2), sqrt(2)); log(m) = 2 atanh(s) with
    s = (m - 1) / (m + 1), |s| <= 0.172, summed to s**21 (truncation < 1e-17).
    """
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
