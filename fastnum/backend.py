"""Choosing between the numba kernels and the NumPy reference."""

from __future__ import annotations

import os

from fastnum import engine
from fastnum._jit import HAVE_NUMBA, JIT_ENABLED
from fastnum.engine import DEFAULT_STRATEGY, check_strategy  # noqa: F401  (re-exported)

BACKENDS = ("auto", "numba", "numpy")
#: Numerical-gradient strategies of the numba backend, simplest first (the CLI's
#: choices): the keys of the engine's strategy table, :data:`fastnum.engine.STRATEGIES`.
STRATEGIES = tuple(engine.STRATEGIES)
#: Environment variable read when no backend is given explicitly.
BACKEND_ENV = "FASTNUM_BACKEND"


def resolve_backend(backend: str | None = None) -> str:
    """Return ``"numba"`` or ``"numpy"`` for a requested backend.

    ``None`` reads ``$FASTNUM_BACKEND`` (default ``"auto"``).  ``"auto"`` picks
    numba when it is installed and compiling (not ``NUMBA_DISABLE_JIT=1``),
    otherwise NumPy.  An explicit ``"numba"`` without numba installed raises.
    """
    requested = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto")
    requested = str(requested).strip().lower()
    if requested not in BACKENDS:
        where = "argument or --backend" if backend is not None else f"from ${BACKEND_ENV}"
        raise ValueError(
            f"backend={requested!r} ({where}) is unknown; use one of {', '.join(BACKENDS)}"
            + ("." if backend is not None else f", or unset {BACKEND_ENV}.")
        )
    if requested == "auto":
        return "numba" if JIT_ENABLED else "numpy"
    if requested == "numba" and not HAVE_NUMBA:
        raise ImportError(
            "backend='numba' was requested but numba is not installed; "
            "run `pip install numba` or use backend='numpy'."
        )
    return requested


def describe_backend(backend: str) -> str:
    """One line for verbose output saying what runs and why."""
    if backend == "numba":
        mode = "compiled" if JIT_ENABLED else "NUMBA_DISABLE_JIT=1, running as Python"
        return f"backend: numba ({mode})"
    why = "" if HAVE_NUMBA else " (numba not installed)"
    if HAVE_NUMBA and not JIT_ENABLED:
        why = " (NUMBA_DISABLE_JIT=1)"
    return f"backend: numpy reference{why}"
