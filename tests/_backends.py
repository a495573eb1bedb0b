"""Backend helpers shared by test modules."""

import pytest

from fastnum._jit import HAVE_NUMBA

#: Use in parametrize lists: the numba backend, skipped (with the reason) where numba is absent.
NUMBA_BACKEND = pytest.param(
    "numba",
    marks=pytest.mark.skipif(
        not HAVE_NUMBA, reason="numba not installed: backend='numba' refuses by design"
    ),
)


def on_kernels(net):
    """``net`` dispatching to its numba kernels, which run as plain Python where numba is absent.

    ``backend="numba"`` refuses without numba installed; setting the attribute
    after construction reaches the same kernels in every CI leg.
    """
    net.backend = "numba"
    return net
