"""Compile the numba kernels once, ahead of the first real call (``fastnum warmup``).

Each entry of :data:`NETWORKS` runs one public network's numba paths (``predict``,
``loss`` and the numerical gradient with every strategy) on a tiny problem.  numba
compiles for argument *types*, never sizes, so a tiny problem compiles exactly the
code a full-size one runs, and with the on-disk cache (:mod:`fastnum._jit`) every
later process loads it instead of compiling.  This is what images and cluster workers
run once at build or start-up time; ``benchmarks/compile_time.py`` times the same runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from fastnum._jit import JIT_ENABLED

# The problems are as small as the networks allow: the first call also *runs* the
# gradient, and the full strategy re-runs the forward pass twice per parameter.
N_CLASSES = 3


def _batch(n_features, n_classes=N_CLASSES, n=2, seed=0):
    """A tiny batch: ``n`` rows of ``n_features`` values in [0, 1), some zero, and labels."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, n_features))
    x[x < 0.5] = 0.0  # zero pixels, as in MNIST: the delta kernels skip them
    return x, np.arange(n, dtype=np.int64) % n_classes


def _run(net, x, t, strategies):
    net.predict(x)
    net.loss(x, t)
    for strategy in strategies:
        net.numerical_gradient(x, t, strategy=strategy)


def _two_layer(strategies):
    from fastnum.network import TwoLayerNet

    x, t = _batch(6)
    _run(TwoLayerNet(6, 3, N_CLASSES, seed=0, backend="numba"), x, t, strategies)


def _multilayer(strategies):
    from fastnum.multilayer import MultiLayerNet

    x, t = _batch(6)
    for activation in ("sigmoid", "relu"):
        net = MultiLayerNet(6, (3, 2), N_CLASSES, activation, seed=0, backend="numba")
        _run(net, x, t, strategies)
    # One relu hidden layer: its delta runs on the two-layer kernel.
    _run(MultiLayerNet(6, (3,), N_CLASSES, "relu", seed=0, backend="numba"), x, t, strategies)


def _chapter6(strategies):
    from fastnum.multilayer import MultiLayerNet

    x, t = _batch(6)
    net = MultiLayerNet(
        6,
        (3, 2),
        N_CLASSES,
        "relu",
        seed=0,
        backend="numba",
        weight_decay_lambda=0.1,
        use_dropout=True,
        use_batchnorm=True,
    )
    _run(net, x, t, strategies)


def _conv(strategies):
    from fastnum.convnet import SimpleConvNet

    conv = {"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1}
    net = SimpleConvNet((1, 6, 6), conv, 2, N_CLASSES, seed=0, backend="numba")
    x, t = _batch(36)
    _run(net, x.reshape(2, 1, 6, 6), t, strategies)


def _deepconv(strategies):
    from fastnum.deepconv import DeepConvNet

    # Six convolutions of one filter on 12 x 12 images (12 -> 12 -> 6 -> 8 -> 4 -> 2 with
    # the book's pads): the deep conv-stack kernels, its dropout masks included.
    convs = [{"filter_num": 1} for _ in range(6)]
    net = DeepConvNet(
        (1, 12, 12), *convs, hidden_size=4, output_size=N_CLASSES, seed=0, backend="numba"
    )
    x, t = _batch(144)
    _run(net, x.reshape(2, 1, 12, 12), t, strategies)


class Network(NamedTuple):
    """One entry of :data:`NETWORKS`: what it covers and how to run it."""

    description: str
    run: Callable[[tuple], None]  # (strategies) -> None


#: What ``fastnum warmup --net`` accepts, in the order it compiles them.
NETWORKS = {
    "two_layer": Network("TwoLayerNet, the book's chapter 4 network", _two_layer),
    "multilayer": Network("MultiLayerNet, sigmoid and relu", _multilayer),
    "chapter6": Network("MultiLayerNet with batch norm, dropout, weight decay", _chapter6),
    "conv": Network("SimpleConvNet, chapter 7", _conv),
    "deepconv": Network("DeepConvNet, chapter 8", _deepconv),
}


def check_names(names=None):
    """``names`` as a tuple of keys of :data:`NETWORKS` (default all); ValueError if unknown."""
    names = tuple(NETWORKS) if names is None else tuple(names)
    unknown = [n for n in names if n not in NETWORKS]
    if unknown or not names:
        raise ValueError(
            f"net={','.join(unknown)} is not a network to warm up; "
            f"use any of {', '.join(NETWORKS)}."
        )
    return names


def warm(names=None, strategies=None, report=None):
    """Run the numba paths of the named networks once, compiling (or loading) their kernels.

    Parameters
    ----------
    names : sequence of str, optional
        Keys of :data:`NETWORKS`; default all, in table order.
    strategies : sequence of str, optional
        Numerical-gradient strategies to compile; default every strategy of
        :data:`fastnum.backend.STRATEGIES`.
    report : callable, optional
        Called as ``report(name, seconds)`` after each network.

    Returns
    -------
    dict of str to float
        Seconds per network, in the order run; empty when numba's JIT is off
        (nothing to compile).

    Raises
    ------
    ValueError
        For a name that is not in :data:`NETWORKS` or an unknown strategy.
    """
    from fastnum.backend import STRATEGIES

    names = check_names(names)
    strategies = tuple(STRATEGIES) if strategies is None else tuple(strategies)
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise ValueError(
            f"strategy={','.join(bad)} is unknown: use any of {', '.join(STRATEGIES)}."
        )
    seconds = {}
    if not JIT_ENABLED:
        return seconds
    for name in names:
        start = time.perf_counter()
        NETWORKS[name].run(strategies)
        seconds[name] = time.perf_counter() - start
        if report is not None:
            report(name, seconds[name])
    return seconds
