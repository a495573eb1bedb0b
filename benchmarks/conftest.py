"""Fixtures and pytest-benchmark hooks of the benchmark suite.

Real MNIST batches are loaded once per session.  The machine legend (CPU, cores,
threads, BLAS, versions), the implementations and the list of skipped cases are
written into the ``--benchmark-json`` file, so that :mod:`benchmarks.report` can
render a report from that file alone.  ``$FASTNUM_BENCH_BLAS_THREADS`` limits
NumPy's BLAS threads for the whole session (threadpoolctl), and the legend records
the thread count threadpoolctl reports, so the two cannot disagree.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from benchmarks import bench_plan
from benchmarks.bench_plan import ALL_THREADS
from benchmarks.machine import fastnum_machine_info
from fastnum._jit import set_num_threads
from fastnum.registry import COMPARISONS, make_problem

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "mnist"

# Same convention as tests/conftest.py (which does not apply to this folder when the
# benchmarks run alone): a checkout next to shared/mnist reads MNIST from there, and
# the parsed-array cache then goes to a temp dir instead of the user's ~/.cache.
if "FASTNUM_MNIST_DIR" not in os.environ and SHARED_MNIST.is_dir():
    os.environ["FASTNUM_MNIST_DIR"] = str(SHARED_MNIST)
    os.environ.setdefault("FASTNUM_CACHE_DIR", tempfile.mkdtemp(prefix="fastnum-bench-cache-"))

# For the whole process: this conftest is imported once, before any benchmark runs.
BLAS_LIMIT = bench_plan.blas_threads_limit()
if BLAS_LIMIT is not None:
    threadpool_limits(limits=BLAS_LIMIT, user_api="blas")

SMOKE_BATCH = 2
# Smoke problems use a 4x4 block from the centre of the 28x28 images: real pixel
# values (mostly non-zero, unlike the border) at a size that stays fast when
# NUMBA_DISABLE_JIT=1 makes the kernels run as plain Python.
SMOKE_PIXELS = np.array([r * 28 + c for r in range(12, 16) for c in range(12, 16)])


@pytest.fixture(scope="session")
def mnist_train():
    """The MNIST training images (float32, 784 columns) and labels, or skip."""
    from fastnum.data import MnistError, load_mnist

    try:
        (x, t), _ = load_mnist(normalize=True, flatten=True, one_hot_label=False)
    except MnistError as e:
        pytest.skip(f"MNIST not available for the benchmarks: {e}")
    return x, t


def smoke_size(batch, hidden):
    """The tiny (batch, hidden) that stands in for a real size in smoke mode.

    A tuple of hidden widths keeps its depth, each width shrunk to 2 or 3.
    """

    def tiny(width):
        return 2 if width == bench_plan.BOOK_HIDDEN else 3

    small = tuple(map(tiny, hidden)) if isinstance(hidden, tuple) else tiny(hidden)
    return (1 if batch == 1 else SMOKE_BATCH), small


@pytest.fixture(scope="session")
def problems(mnist_train):
    """Factory ``problems(batch, hidden, smoke)`` of cached registry problems.

    The batch is the first ``batch`` training images, so every run times the same
    data; the network is seeded with 0.  ``hidden`` is one width (the book's
    two-layer network) or a tuple of widths (a sigmoid MultiLayerNet).
    """
    x, t = mnist_train
    cache = {}

    def get(batch, hidden, smoke=False):
        key = (batch, hidden, smoke)
        if key not in cache:
            if smoke:
                b, h = smoke_size(batch, hidden)
                cache[key] = make_problem(x[:b, SMOKE_PIXELS], t[:b], h, seed=0)
            else:
                cache[key] = make_problem(x[:batch], t[:batch], hidden, seed=0)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def reference_results():
    """Session cache ``(op, batch, hidden, smoke) -> result of the NumPy reference``.

    The reference case of a size runs first and stores its (timed) result here, so
    the other implementations are checked without paying for it twice.
    """
    return {}


@pytest.fixture
def numba_threads():
    """Setter of numba's thread count that restores the start-up count afterwards."""
    yield set_num_threads
    set_num_threads(ALL_THREADS)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Add the fastnum legend under ``machine_info["fastnum"]``."""
    machine_info["fastnum"] = fastnum_machine_info()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Record the profile and the skipped cases, which the JSON would not show otherwise."""
    profile = bench_plan.active_profile()
    output_json["fastnum"] = {
        "profile": profile.name,
        "slow_rounds": profile.slow_rounds,
        "target_seconds": profile.target_seconds,
        "min_rounds": profile.min_rounds,
        "book_case": {"batch": bench_plan.BOOK_BATCH, "hidden": bench_plan.BOOK_HIDDEN},
        "operations": list(COMPARISONS),
        "implementations": {op: bench_plan.implementations(op) for op in COMPARISONS},
        "skipped": bench_plan.skipped_cases(profile, ALL_THREADS),
    }
