"""Parallel central-difference gradient of any numba-jitted scalar function."""

from __future__ import annotations

import numpy as np

from fastnum._jit import HAVE_NUMBA, JIT_ENABLED, njit, prange

# Elements are split into this many chunks, each with a private copy of x; a
# constant so that each element's evaluation is the same whatever the threads.
_CHUNKS = 256


@njit(parallel=True, cache=False)  # a function-typed argument cannot be cached on disk
def _numerical_gradient_jitted(f, x, h, grad):
    """grad.flat[p] = (f(x + h e_p) - f(x - h e_p)) / 2h, evaluated on thread-private copies."""
    size = x.size
    n_chunks = min(size, _CHUNKS)
    for c in prange(n_chunks):
        private = x.copy()
        flat = private.reshape(size)
        for p in range(c * size // n_chunks, (c + 1) * size // n_chunks):
            saved = flat[p]
            flat[p] = saved + h
            f_plus = f(private)
            flat[p] = saved - h
            f_minus = f(private)
            flat[p] = saved
            grad[p] = (f_plus - f_minus) / (2 * h)


def is_jitted(f):
    """True when ``f`` is a numba-compiled function (and compiling is enabled)."""
    if not (HAVE_NUMBA and JIT_ENABLED):
        return False
    from numba.core.registry import CPUDispatcher

    return isinstance(f, CPUDispatcher)


def numerical_gradient_jitted(f, x, h):
    """Central-difference gradient of jitted ``f`` at float array ``x`` (x is not modified).

    ``f`` must compute its value from the array it is given: each thread
    evaluates it on its own perturbed copy of ``x``.
    """
    private = np.ascontiguousarray(x)
    grad = np.empty(private.size, dtype=private.dtype)
    _numerical_gradient_jitted(f, private, private.dtype.type(h), grad)
    return grad.reshape(x.shape)
