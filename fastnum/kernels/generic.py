"""Parallel central-difference gradient of any numba-jitted scalar function."""

from __future__ import annotations

import numpy as np

from fastnum._jit import HAVE_NUMBA, JIT_ENABLED, njit, run_tasks


# Serial, one task of run_tasks: it is compiled anew for every function f (a
# function-typed argument cannot be cached on disk), so its compile time counts.
@njit(cache=False)
def _numerical_gradient_jitted(task, n_tasks, f, x, h, grad):
    """grad.flat[p] = (f(x + h e_p) - f(x - h e_p)) / 2h for this task's elements.

    Evaluated on a task-private copy of x, each element put back exactly after its
    two evaluations: every evaluation sees x but for one element, whatever the split.
    """
    size = x.size
    private = x.copy()
    flat = private.reshape(size)
    for p in range(task * size // n_tasks, (task + 1) * size // n_tasks):
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
    run_tasks(_numerical_gradient_jitted, private.size, f, private, private.dtype.type(h), grad)
    return grad.reshape(x.shape)
