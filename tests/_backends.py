"""Backend parameters shared by test modules."""

import pytest

from fastnum._jit import HAVE_NUMBA

#: Use in parametrize lists: the numba backend, skipped (with the reason) where numba is absent.
NUMBA_BACKEND = pytest.param(
    "numba",
    marks=pytest.mark.skipif(
        not HAVE_NUMBA, reason="numba not installed: backend='numba' refuses by design"
    ),
)
