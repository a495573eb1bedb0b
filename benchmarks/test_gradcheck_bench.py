"""Benchmarks of ``fastnum.gradcheck`` on book-style networks, side by side in one run.

- ``gradcheck_book_two_layer``: the chapter 5 TwoLayerNet (784-50-10, ReLU) at batch 100,
  checked through the engine fast path, against the book's loop (the numerical gradient
  of every parameter through the network's own loss, then backprop), as the book's
  ``gradient_check.py`` does it.
- ``gradcheck_book_conv``: the chapter 7 SimpleConvNet at batch 10 through the engine
  fast path, against the book's loop timed on a random sample of parameters and
  **extrapolated** to all 433,890 (``extra_info["extrapolate_factor"]``): the whole
  loop would take over an hour.
- ``gradcheck_book_chapter6``: the chapter 6 multi-layer net (784-100-100-10, batch norm,
  dropout 0.5 from NumPy's global generator, weight decay 0.1) at batch 10 through the
  engine, against the book's loop on a sample of parameters, **extrapolated**.
- ``gradcheck_book_deepconv``: the chapter 8 DeepConvNet (six 3x3 convolutions, three
  poolings, dropout 0.5 from NumPy's global generator; 123,552 parameters) at batch 2
  through the engine (the deep conv-stack delta kernel), against the book's loop on a
  sample of parameters with BLAS on one thread, **extrapolated**.  Before that kernel the
  check ran on ``full`` (685 s of CPU, about 2x the book's loop); the figures since are in
  the README's chapter 8 section.
- ``gradcheck_processes``: the generic path (forced on a batch-norm network) serially and
  on 2 worker processes; results must be identical.

With benchmarks disabled (the default test run) every case runs once on a tiny problem,
a smoke test.  Entries carry ``extra_info["gradcheck"]`` rather than ``op``, so the
registry report (scripts/bench_report.py) leaves them out; read the ratio from the
pytest-benchmark table or JSON of one run.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnum
from benchmarks.conftest import SMOKE_PIXELS
from fastnum import engine, reference
from fastnum._jit import JIT_ENABLED
from fastnum.constants import H

RESULTS = {}


@pytest.fixture(scope="module")
def book():
    """The book-style test classes (a reader's chapter 5-7 code, written for the tests)."""
    from tests import book_style_nets

    return book_style_nets


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
            rounds=1 if smoke else 15,  # ~7 ms each: many rounds for a steady median
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


def _sampled_book_loop(net, x, t, sample):
    # The book's loop (perturb, evaluate the network's own loss, restore) over sampled elements.
    loss = lambda _: net.loss(x, t)  # noqa: E731 - the book's idiom
    return {
        name: reference.numerical_gradient_at(loss, net.params[name], idx, H)
        for name, idx in sample.items()
    }


@pytest.mark.parametrize("impl", ["engine", "book-loop-sampled"])
def test_gradcheck_book_conv(benchmark, book, mnist_train, impl):
    smoke = benchmark.disabled
    if impl == "engine" and not JIT_ENABLED and not smoke:
        pytest.skip("the engine fast path needs numba compiled")
    x, t = mnist_train
    batch = 2 if smoke else 10
    x = np.asarray(x[:batch], dtype=np.float64).reshape(batch, 1, 28, 28)
    t = np.asarray(t[:batch])
    if smoke:  # a tiny network on the centre 8x8 of the images
        x = np.ascontiguousarray(x[:, :, 10:18, 10:18])
        kwargs = {
            "input_dim": (1, 8, 8),
            "hidden_size": 4,
            "conv_param": {"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1},
        }
    else:
        kwargs = {"hidden_size": 100}
    np.random.seed(0)  # noqa: NPY002 - the book's classes draw from the global generator
    net = book.SimpleConvNet(**kwargs)
    n_params = sum(p.size for p in net.params.values())
    rng = np.random.default_rng(0)
    per_tensor = 2 if smoke else 16
    sample = {
        name: rng.choice(p.size, min(per_tensor, p.size), replace=False)
        for name, p in net.params.items()
    }
    n_sampled = sum(len(i) for i in sample.values())
    benchmark.group = "gradcheck_book_conv"
    benchmark.extra_info.update(gradcheck=impl, batch=batch, params=n_params, smoke=smoke)
    if impl == "engine":
        fastnum.gradcheck(net, x, t, method="engine", workers=1)  # compile outside the timing
        benchmark.pedantic(
            fastnum.gradcheck,
            args=(net, x, t),
            kwargs={"method": "engine", "workers": 1},
            rounds=1 if smoke else 5,
            warmup_rounds=0,
        )
    else:
        stack = fastnum.gradcheck._stack.recognise(net)
        benchmark.extra_info["extrapolate_factor"] = n_params / n_sampled
        comp_ = benchmark.pedantic(
            _sampled_book_loop, args=(net, x, t, sample), rounds=1 if smoke else 3, warmup_rounds=0
        )
        # The loop and the engine compute the same central difference.
        args = fastnum.gradcheck._stack.engine_inputs(stack, net.params, x, t, log_guard=True)
        ref_ = engine.numerical_gradient(stack, *args[:3], h=H, log_guard=args[3])
        for name, idx in sample.items():
            assert np.abs(ref_[name].reshape(-1)[idx] - comp_[name]).max() <= 1e-9, name


@pytest.mark.parametrize("impl", ["engine", "book-loop-sampled"])
def test_gradcheck_book_chapter6(benchmark, book, mnist_train, impl):
    smoke = benchmark.disabled
    if impl == "engine" and not JIT_ENABLED and not smoke:
        pytest.skip("the engine fast path needs numba compiled")
    batch, hidden = (3, [4, 4]) if smoke else (10, [100, 100])
    x, t = _batch(mnist_train, batch, smoke)
    np.random.seed(0)  # noqa: NPY002 - the book's classes draw from the global generator
    net = book.MultiLayerNetExtend(
        x.shape[1], hidden, 10, use_batchnorm=True, use_dropout=True, weight_decay_lambda=0.1
    )
    n_params = sum(p.size for p in net.params.values())
    benchmark.group = "gradcheck_book_chapter6"
    benchmark.extra_info.update(gradcheck=impl, batch=batch, params=n_params, smoke=smoke)
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
        return
    rng = np.random.default_rng(0)
    sample = {
        name: rng.choice(p.size, min(8, p.size), replace=False) for name, p in net.params.items()
    }
    benchmark.extra_info["extrapolate_factor"] = n_params / sum(len(i) for i in sample.values())
    state = np.random.get_state()  # noqa: NPY002 - the dropout mask of every evaluation

    def loss(_):
        np.random.set_state(state)  # noqa: NPY002 - as a reader keeps one mask per check
        return net.loss(x, t, train_flg=True)

    benchmark.pedantic(
        lambda: {
            n: reference.numerical_gradient_at(loss, net.params[n], i, H) for n, i in sample.items()
        },
        rounds=1 if smoke else 3,
        warmup_rounds=0,
    )


def _deepconv_sample(net, per_tensor, seed=0):
    rng = np.random.default_rng(seed)
    return {
        name: rng.choice(p.size, min(per_tensor, p.size), replace=False)
        for name, p in net.params.items()
    }


@pytest.mark.parametrize("impl", ["engine", "book-loop-sampled"])
def test_gradcheck_book_deepconv(benchmark, book, mnist_train, impl):
    from threadpoolctl import threadpool_limits

    smoke = benchmark.disabled
    if impl == "engine" and not JIT_ENABLED and not smoke:
        pytest.skip("the engine fast path needs numba compiled")
    x, t = mnist_train
    batch = 2
    x = np.asarray(x[:batch], dtype=np.float64).reshape(batch, 1, 28, 28)
    t = np.asarray(t[:batch])
    kwargs = {}
    if smoke:  # the book's pads on the centre 4x4 of the images, 2 filters per convolution
        x = np.ascontiguousarray(x[:, :, 12:16, 12:16])
        conv = {"filter_num": 2, "filter_size": 3, "pad": 1, "stride": 1}
        kwargs = {f"conv_param_{k}": conv for k in (1, 2, 3, 5, 6)}
        kwargs.update(input_dim=(1, 4, 4), conv_param_4={**conv, "pad": 2}, hidden_size=3)
    np.random.seed(0)  # noqa: NPY002 - the book's classes draw from the global generator
    net = book.DeepConvNet(**kwargs)
    rng = np.random.default_rng(0)
    for name, p in net.params.items():  # biases off the kinks, in place (the layers hold them)
        if name.startswith("b"):
            p[...] = rng.normal(0, 0.05, p.shape)
    n_params = sum(p.size for p in net.params.values())
    benchmark.group = "gradcheck_book_deepconv"
    benchmark.extra_info.update(gradcheck=impl, batch=batch, params=n_params, smoke=smoke)
    if impl == "engine":
        result = benchmark.pedantic(
            fastnum.gradcheck,
            args=(net, x, t),
            kwargs={"method": "engine", "workers": 1, "h": 1e-8},
            rounds=1,  # seconds at the book's size: one round is enough
            warmup_rounds=0,
        )
        assert result.passed and "engine" in result.method
        return
    sample = _deepconv_sample(net, 2 if smoke else 8)
    benchmark.extra_info["extrapolate_factor"] = n_params / sum(len(i) for i in sample.values())
    state = np.random.get_state()  # noqa: NPY002 - the dropout mask of every evaluation

    def loss(_):
        np.random.set_state(state)  # noqa: NPY002 - as a reader keeps one mask per check
        return net.loss(x, t)

    def book_loop():
        with threadpool_limits(1, user_api="blas"):  # the book's loop on one BLAS thread
            return {
                n: reference.numerical_gradient_at(loss, net.params[n], i, H)
                for n, i in sample.items()
            }

    comp_ = benchmark.pedantic(book_loop, rounds=1 if smoke else 3, warmup_rounds=0)
    # The kernels compute the same central differences with the mask the reader drew.
    stack = fastnum.gradcheck._stack.recognise(net)
    loss(None)
    masks, _ = fastnum.gradcheck._stack.engine_extras(stack, net, batch)
    args = fastnum.gradcheck._stack.engine_inputs(stack, net.params, x, t, log_guard=True)
    ref_ = engine.numerical_gradient_at(stack, *args[:3], sample, h=H, masks=masks)
    for name in sample:
        assert np.abs(ref_[name] - comp_[name]).max() <= 1e-9, name


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
