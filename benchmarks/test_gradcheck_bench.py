"""Benchmarks of ``fastnum.gradcheck`` on book-style networks, side by side in one run.

- ``gradcheck_book_two_layer``: the chapter 5 TwoLayerNet (784-50-10, ReLU) at batch 100,
  checked through the engine fast path, against the book's loop (the numerical gradient
  of every parameter through the network's own loss, then backprop), as the book's
  ``gradient_check.py`` does it.
- ``gradcheck_processes``: the generic path (a batch-norm network that the kernels do
  not know) serially and on 2 worker processes; results must be identical.

With benchmarks disabled (the default test run) every case runs once on a tiny problem,
a smoke test.  Entries carry ``extra_info["gradcheck"]`` rather than ``op``, so the
registry report (scripts/bench_report.py) leaves them out; read the ratio from the
pytest-benchmark table or JSON of one run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import fastnum
from fastnum import reference
from fastnum._jit import JIT_ENABLED

REPO = Path(__file__).resolve().parents[1]
SMOKE_PIXELS = np.array([r * 28 + c for r in range(12, 16) for c in range(12, 16)])
RESULTS = {}


@pytest.fixture(scope="module")
def book():
    """tests/book_style_nets.py, loaded by path (the benchmarks do not import the tests)."""
    spec = importlib.util.spec_from_file_location(
        "book_style_nets", REPO / "tests" / "book_style_nets.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _batch(mnist_train, batch, smoke):
    x, t = mnist_train
    x = np.asarray(x[:batch], dtype=np.float64)
    return (x[:, SMOKE_PIXELS] if smoke else x), np.asarray(t[:batch])


def _book_loop(net, x, t):
    # The book's gradient_check: its numerical gradient over every parameter, then backprop.
    loss = lambda _: net.loss(x, t)  # noqa: E731 - the book's idiom
    num = {name: reference.numerical_gradient(loss, p) for name, p in net.params.items()}
    bp = net.gradient(x, t)
    return {name: float(np.mean(np.abs(bp[name] - num[name]))) for name in num}


@pytest.mark.parametrize("impl", ["engine", "book-loop"])
def test_gradcheck_book_two_layer(benchmark, book, mnist_train, impl):
    smoke = benchmark.disabled
    if impl == "engine" and not JIT_ENABLED and not smoke:
        pytest.skip("the engine fast path needs numba compiled")
    batch, hidden = (2, 3) if smoke else (100, 50)
    x, t = _batch(mnist_train, batch, smoke)
    np.random.seed(0)  # noqa: NPY002 - the book's classes draw from the global generator
    net = book.TwoLayerNet(x.shape[1], hidden, 10)
    benchmark.group = "gradcheck_book_two_layer"
    benchmark.extra_info.update(gradcheck=impl, batch=batch, hidden=hidden, smoke=smoke)
    if impl == "engine":
        fastnum.gradcheck(net, x, t, method="engine", workers=1)  # compile outside the timing
        result = benchmark.pedantic(
            fastnum.gradcheck,
            args=(net, x, t),
            kwargs={"method": "engine", "workers": 1},
            rounds=1 if smoke else 5,
            warmup_rounds=0,
        )
        assert result.passed and "engine" in result.method
        figures = {name: check.book_error for name, check in result.params.items()}
    else:
        figures = benchmark.pedantic(_book_loop, args=(net, x, t), rounds=1, warmup_rounds=0)
    RESULTS[("two_layer", impl, smoke)] = figures
    other = RESULTS.get(("two_layer", "book-loop" if impl == "engine" else "engine", smoke))
    if other is not None:  # the same book figures from both, to the guard's precision
        for name in figures:
            assert abs(figures[name] - other[name]) < 1e-9, name


@pytest.mark.parametrize("workers", [1, 2])
def test_gradcheck_processes(benchmark, book, mnist_train, workers):
    smoke = benchmark.disabled
    batch, hidden = (2, 3) if smoke else (10, 10)
    x, t = _batch(mnist_train, batch, smoke)
    np.random.seed(0)  # noqa: NPY002
    net = book.MultiLayerNetExtend(x.shape[1], [hidden], 10, use_batchnorm=True)
    benchmark.group = "gradcheck_processes"
    benchmark.extra_info.update(
        gradcheck=f"generic-{workers}-workers",
        batch=batch,
        hidden=hidden,
        workers=workers,
        smoke=smoke,
    )
    result = benchmark.pedantic(
        fastnum.gradcheck,
        args=(net, x, t),
        kwargs={"method": "generic", "workers": workers},
        rounds=1 if smoke else 3,
        warmup_rounds=0,
    )
    assert result.passed
    RESULTS[("processes", workers, smoke)] = result.params
    other = RESULTS.get(("processes", 3 - workers, smoke))
    if other is not None:
        assert other == result.params  # identical numbers, serial or parallel
