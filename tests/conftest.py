"""Shared test setup: point the MNIST loader at ../shared/mnist when it exists."""

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
