"""Public numerical differentiation: parallel for jitted functions, the reference loop otherwise."""

from __future__ import annotations

import numpy as np

from fastnum import reference
from fastnum._validate import check_step
from fastnum.constants import H
from fastnum.kernels.generic import is_jitted, numerical_gradient_jitted


def numerical_gradient(f, x, h=H):
    """Central-difference gradient of the scalar function ``f`` at the float array ``x``.

    Parameters
    ----------
    f : callable
        ``f(x) -> float``.  When ``f`` is a numba ``@njit`` function, all
        elements are evaluated in parallel on thread-private copies of ``x``, so
        ``f`` must compute from its argument.  Any other callable runs through the
        book's loop, which perturbs ``x`` in place and restores every element
        (so closures that ignore their argument, like the book's
        ``lambda W: net.loss(x, t)``, work).
    x : ndarray of float, any shape, contiguous or not
    h : float, default 1e-4

    Returns
    -------
    ndarray
        Same shape and dtype as ``x``.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"x must be a NumPy float array, got {type(x).__name__}; "
            "wrap it with np.asarray(x, dtype=np.float64)."
        )
    h = check_step(h)
    if is_jitted(f) and np.issubdtype(x.dtype, np.floating):
        return numerical_gradient_jitted(f, x, h)
    return reference.numerical_gradient(f, x, h)
