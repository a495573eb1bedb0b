"""Shared test setup: the MNIST folder, the thread count, the ``numba`` and ``threads`` markers."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]

# No per-example deadline for the property tests: an example that calls a kernel first
# compiles it (0.1-0.3 s on an empty numba cache, more on a loaded machine), which
# hypothesis would report as a flaky failure.
settings.register_profile("fastnum", deadline=None)
settings.load_profile("fastnum")
SHARED_MNIST = REPO.parent / "shared" / "mnist"

if "FASTNUM_MNIST_DIR" not in os.environ and SHARED_MNIST.is_dir():
    os.environ["FASTNUM_MNIST_DIR"] = str(SHARED_MNIST)
# Tests never write into the user's ~/.cache, nor leave folders in the temp dir: the parsed
# MNIST cache and Dask's scratch space (which a LocalCluster leaves behind) go to one temp
# folder, removed when the session's process exits however the session ends (but kill -9).
# Each test's tmp_path (numba caches of subprocess tests, run folders, downloads) goes once the
# test passes: pyproject.toml sets tmp_path_retention_policy = "failed".
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="fastnum-test-"))
atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)
os.environ.setdefault("FASTNUM_CACHE_DIR", str(_SESSION_TMP / "cache"))
os.environ.setdefault("DASK_TEMPORARY_DIRECTORY", str(_SESSION_TMP / "dask"))


@pytest.fixture(autouse=True)
def _keep_the_thread_count():
    """Give every test the thread count it found (tests set it with set_num_threads)."""
    from fastnum._jit import num_threads

    with num_threads(None):
        yield


@pytest.fixture(scope="session")
def mnist_source_dir():
    """Directory holding the four MNIST .gz files, or skip (with the reason) if absent."""
    d = os.environ.get("FASTNUM_MNIST_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("MNIST not available: set FASTNUM_MNIST_DIR to the four .gz files' folder")
    return Path(d)


@pytest.fixture(scope="session")
def mnist(mnist_source_dir):
    """MNIST as ``load_mnist()`` gives it by default, parsed once per session (read only)."""
    from fastnum.data import load_mnist

    return load_mnist(data_dir=mnist_source_dir)


@pytest.fixture
def mnist_parsed_once(mnist, mnist_source_dir, monkeypatch):
    """``fastnum.data.load_mnist`` answering from the session's parse, one-hot labels on request.

    For command-line tests, which would otherwise parse the 60,000 images per command.
    """
    import fastnum.data

    def cached(*args, data_dir=None, one_hot_label=False, **kwargs):
        assert data_dir == str(mnist_source_dir)
        if not one_hot_label:
            return mnist
        return tuple((x, fastnum.data.one_hot(t)) for x, t in mnist)

    monkeypatch.setattr(fastnum.data, "load_mnist", cached)
    return mnist_source_dir


def pytest_runtest_setup(item):
    """Skip tests marked ``numba`` unless the kernels are really compiled, and tests marked
    ``threads`` unless, besides, numba may run 2 threads (a 1-thread run compares nothing)."""
    from fastnum._jit import HAVE_NUMBA, JIT_ENABLED  # after the environment set above

    needs_jit = item.get_closest_marker("numba") or item.get_closest_marker("threads")
    if needs_jit and not JIT_ENABLED:
        why = "NUMBA_DISABLE_JIT=1" if HAVE_NUMBA else "numba is not installed"
        pytest.skip(f"needs numba-compiled kernels ({why})")
    if item.get_closest_marker("threads"):
        import numba

        if numba.config.NUMBA_NUM_THREADS < 2:
            pytest.skip("compares 1 and 2 threads; numba may use only 1 here")
