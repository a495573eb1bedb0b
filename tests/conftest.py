"""Shared test setup: the MNIST folder, and the ``numba`` marker (skip unless compiled)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "mnist"

if "FASTNUM_MNIST_DIR" not in os.environ and SHARED_MNIST.is_dir():
    os.environ["FASTNUM_MNIST_DIR"] = str(SHARED_MNIST)
# Tests never write into the user's ~/.cache: parsed-array caches go to a temp dir.
os.environ.setdefault("FASTNUM_CACHE_DIR", tempfile.mkdtemp(prefix="fastnum-test-cache-"))


@pytest.fixture(scope="session")
def mnist_source_dir():
    """Directory holding the four MNIST .gz files, or skip (with the reason) if absent."""
    d = os.environ.get("FASTNUM_MNIST_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("MNIST not available: set FASTNUM_MNIST_DIR to the four .gz files' folder")
    return Path(d)


def pytest_runtest_setup(item):
    """Skip tests marked ``numba`` (with the reason) unless the kernels are really compiled."""
    from fastnum._jit import HAVE_NUMBA, JIT_ENABLED  # after the environment set above

    if item.get_closest_marker("numba") is not None and not JIT_ENABLED:
        why = "NUMBA_DISABLE_JIT=1" if HAVE_NUMBA else "numba is not installed"
        pytest.skip(f"needs numba-compiled kernels ({why})")
