"""The one place where numba is imported and its options are set.

Everything else does ``from fastnum._jit import njit, prange``.  Without numba
installed, ``njit`` returns the plain Python function and ``prange`` is
``range``, so every kernel stays valid Python and the NumPy fallback is real.
"""

from __future__ import annotations

import os

try:  # numba is a hard dependency, but the library must still work without it
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised by the no-numba CI leg
    numba = None
    HAVE_NUMBA = False

#: True when kernels are really compiled (numba present and JIT not disabled).
JIT_ENABLED = HAVE_NUMBA and os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0")

# fastmath stays off: it reorders sums and changes results, which would break the
# 1e-9 equivalence with the reference.  error_model="numpy" lets divisions
# vectorize (no ZeroDivisionError checks); cache=True keeps compiled kernels on
# disk so a second process skips the compile.
# FASTNUM_JIT_CACHE=0 turns the disk cache off (numba cannot inspect cached code).
JIT_OPTIONS = {
    "nogil": True,
    "cache": os.environ.get("FASTNUM_JIT_CACHE", "1") != "0",
    "fastmath": False,
    "error_model": "numpy",
}

if HAVE_NUMBA:
    prange = numba.prange
else:  # pragma: no cover
    prange = range


def njit(func=None, *, parallel: bool = False, cache: bool = True):
    """Compile ``func`` with the project's numba options (identity without numba).

    ``cache=False`` is for kernels that take other jitted functions as arguments,
    which numba cannot cache on disk.
    """

    def wrap(f):
        if not HAVE_NUMBA:
            return f
        options = {**JIT_OPTIONS, "cache": cache and JIT_OPTIONS["cache"]}
        return numba.njit(parallel=parallel, **options)(f)

    return wrap(func) if func is not None else wrap


def get_num_threads() -> int:
    """Number of threads the parallel kernels use (1 without numba)."""
    return numba.get_num_threads() if HAVE_NUMBA else 1


def set_num_threads(n: int) -> None:
    """Set the kernels' thread count; ``n`` must be in 1..numba.config.NUMBA_NUM_THREADS."""
    if not HAVE_NUMBA:
        return
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= int(n) <= limit:
        raise ValueError(f"threads={n} is out of range: use a value from 1 to {limit}.")
    numba.set_num_threads(int(n))
