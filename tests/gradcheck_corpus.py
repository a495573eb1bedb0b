"""The gradient check's corpus: correct book-style networks and planted bugs (issue 17).

A :class:`Family` builds a correct network from a seed (its weights drawn from NumPy's
global generator, as the book draws them); a :class:`Bug` builds one with a single planted
mistake and says what the check must answer: FAIL naming given parameters, or a refusal
(the loss is not a function of the parameters).  :func:`batch` makes MNIST-like images,
or crops real MNIST, and :func:`run` runs one check.  Used by
``tests/test_gradcheck_corpus.py`` and ``scripts/gradcheck_rates.py``.
"""

# The book's networks draw their weights and dropout masks from NumPy's global generator.
# ruff: noqa: NPY002

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from fastnum.gradcheck import gradcheck
from fastnum.gradcheck._errors import GradcheckRefusedError
from tests import book_style_nets as book

#: The batch sizes readers use, from one image to the book's minibatch.
BATCH_SIZES = (1, 3, 10, 100)
#: What a bug that makes the loss non-deterministic must get: no verdict.
REFUSED = "REFUSED"
CLASSES = 10
SMALL_SIDE = 12  # conv nets: 12x12 images (the dense nets read an 8x8 crop of them)
DENSE_SIDE = 8


# ------------------------------------------------------------------------------ data


def mnist_like(rng, n, side):
    """``n`` images (n, 1, side, side) with MNIST's statistics.

    Ink only in a central window (MNIST's empty border), about 45% of the window inked,
    values k/255 with a third of the ink saturated at exactly 1.0, and every other pixel
    exactly 0: the zero patches and ties that put ReLU and max-pooling inputs on their
    corners.
    """
    margin = side // 5
    images = np.zeros((n, 1, side, side))
    window = images[:, :, margin : side - margin, margin : side - margin]
    ink = rng.random(window.shape) < 0.45
    levels = rng.integers(1, 256, window.shape) / 255
    levels[rng.random(window.shape) < 1 / 3] = 1.0
    window[ink] = levels[ink]
    return images


def crop(images, side):
    """The central ``side`` x ``side`` crop of (n, 1, 28, 28) images."""
    start = (images.shape[-1] - side) // 2
    return images[:, :, start : start + side, start : start + side]


def batch(kind, side, seed, n, mnist=None):
    """A batch (x, t) for a network of ``kind`` ("dense" or "conv") on ``side``-pixel images.

    Synthetic (:func:`mnist_like`, random labels) unless ``mnist`` = (images, labels) of
    real MNIST is given (flat 784-pixel rows, as ``load_mnist()`` returns them): then
    ``n`` images drawn by the seed (the same for every side), cropped to their centre.
    Dense networks get flat rows.
    """
    rng = np.random.default_rng([seed, n])
    if mnist is None:
        x = mnist_like(rng, n, side)
        t = rng.integers(0, CLASSES, n)
    else:
        images, labels = mnist
        pick = rng.choice(len(images), n, replace=False)
        x = crop(np.asarray(images[pick], dtype=np.float64).reshape(n, 1, 28, 28), side)
        t = np.asarray(labels[pick], dtype=np.int64)
    x = np.ascontiguousarray(x)
    return (x.reshape(n, -1) if kind == "dense" else x), t


# -------------------------------------------------------------------- correct networks


@dataclasses.dataclass(frozen=True)
class Family:
    """A correct book-style network at one size: ``build()`` after ``np.random.seed``."""

    name: str
    kind: str  # "dense" or "conv": what batch() gives it
    side: int
    build: Callable
    book_size: bool = False  # the book's MNIST sizes

    def net(self, seed):
        """The network, its weights drawn from the global generator seeded with ``seed``."""
        np.random.seed(seed)
        return self.build()


D = DENSE_SIDE**2  # inputs of the small dense networks


def _extend(hidden, **kw):
    return lambda: book.MultiLayerNetExtend(D, hidden, CLASSES, **kw)


def _conv(side, filters, size, hidden, cls=book.SimpleConvNet):
    spec = {"filter_num": filters, "filter_size": size, "pad": 0, "stride": 1}
    # The book's initialisation: std 0.01, zero biases.
    return lambda: cls((1, side, side), spec, hidden, CLASSES, 0.01)


ALL_THREE = {"use_batchnorm": True, "use_dropout": True, "dropout_ration": 0.2}
FAMILIES = {
    f.name: f
    for f in (
        Family("TwoLayerNet relu", "dense", DENSE_SIDE, lambda: book.TwoLayerNet(D, 20, CLASSES)),
        Family(
            "TwoLayerNet sigmoid",
            "dense",
            DENSE_SIDE,
            lambda: book.TwoLayerNet(D, 20, CLASSES, activation="sigmoid"),
        ),
        Family(
            "MultiLayerNet relu",
            "dense",
            DENSE_SIDE,
            lambda: book.MultiLayerNet(D, [16, 16, 16], CLASSES),
        ),
        Family(
            "Extend batchnorm",
            "dense",
            DENSE_SIDE,
            _extend([10, 10], use_batchnorm=True),
        ),
        Family(
            "Extend dropout",
            "dense",
            DENSE_SIDE,
            _extend([10, 10], use_dropout=True, dropout_ration=0.2),
        ),
        Family(
            "Extend weight decay",
            "dense",
            DENSE_SIDE,
            _extend([10, 10], weight_decay_lambda=0.1),
        ),
        Family(
            "Extend all three",
            "dense",
            DENSE_SIDE,
            _extend([10, 10], weight_decay_lambda=0.1, **ALL_THREE),
        ),
        Family("SimpleConvNet", "conv", SMALL_SIDE, _conv(SMALL_SIDE, 4, 3, 10)),
        # The book's MNIST sizes.
        Family(
            "TwoLayerNet relu 784-50-10",
            "dense",
            28,
            lambda: book.TwoLayerNet(784, 50, CLASSES),
            book_size=True,
        ),
        Family(
            "TwoLayerNet sigmoid 784-50-10",
            "dense",
            28,
            lambda: book.TwoLayerNet(784, 50, CLASSES, activation="sigmoid"),
            book_size=True,
        ),
        Family(
            "MultiLayerNet relu 784-100-100-10",
            "dense",
            28,
            lambda: book.MultiLayerNet(784, [100, 100], CLASSES),
            book_size=True,
        ),
        Family(
            "SimpleConvNet 28x28 30x5x5-100",
            "conv",
            28,
            _conv(28, 30, 5, 100),
            book_size=True,
        ),
    )
}


# ------------------------------------------------------------------------ planted bugs


class _PoisonedGradient:
    """Mixin: ``gradient`` returns one element of ``poison[0]`` replaced by ``poison[2]``."""

    poison = ("W1", 0, np.nan)

    def gradient(self, x, t):
        grads = super().gradient(x, t)
        name, q, value = self.poison
        grads[name] = grads[name].copy()
        grads[name].flat[q] = value
        return grads


class NaNGradientTwoLayerNet(_PoisonedGradient, book.TwoLayerNet):
    """Bug: one element of a gradient is NaN (a 0/0 in a hand-written backward)."""


class InfGradientConvNet(_PoisonedGradient, book.SimpleConvNet):
    """Bug: one element of a gradient is +inf (an overflow in a hand-written backward)."""


class NoisyLossTwoLayerNet(book.TwoLayerNet):
    """Bug for a gradient check: 1e-6 of noise from the network's own generator in its loss."""

    def __init__(self, *args, noise_seed=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.noise = np.random.default_rng(noise_seed)

    def loss(self, x, t):
        return super().loss(x, t) + 1e-6 * self.noise.standard_normal()


class MovingTwoLayerNet(book.TwoLayerNet):
    """Bug: ``loss`` moves W1 in place on each call (a stray update step left in it)."""

    def loss(self, x, t):
        value = super().loss(x, t)
        self.params["W1"] += 1e-6
        return value


@dataclasses.dataclass(frozen=True)
class Bug:
    """A network with one planted bug, and what the check must answer.

    ``build(seed)`` makes the correct network ``base`` (a :data:`FAMILIES` name, same
    weights for the same seed) with the bug planted.  ``expect`` is the tuple of
    parameters that must fail (and only those), or :data:`REFUSED`.  Below ``min_batch``
    the "bug" is correct (a missing division by the batch size at batch 1).
    """

    name: str
    base: str
    build: Callable
    expect: tuple | str
    min_batch: int = 1

    @property
    def kind(self):
        """The base network's kind of input ("dense" or "conv")."""
        return FAMILIES[self.base].kind

    @property
    def side(self):
        """The side of the base network's images."""
        return FAMILIES[self.base].side

    def net(self, seed):
        """The buggy network, its weights drawn from the global generator seeded with ``seed``."""
        np.random.seed(seed)
        return self.build(seed)


def _two_layer(cls=book.TwoLayerNet, **kw):
    return cls(D, 20, CLASSES, **kw)


def _bias_off(seed):
    net = _two_layer()
    net.layers["Affine2"] = book.AffineBiasGradOff(net.params["W2"], net.params["b2"])
    return net


def _no_batch_division(seed):
    net = _two_layer()
    net.lastLayer = book.SoftmaxWithLossNoBatchDivision()
    return net


def _transposed(seed):
    net = book.MultiLayerNet(D, [16, 16, 16], CLASSES)  # W2 is 16x16: the shape matches
    net.layers["Affine2"] = book.AffineTransposedGrad(net.params["W2"], net.params["b2"])
    return net


def _relu_passes_all(seed):
    net = _two_layer()
    net.layers["Relu1"] = book.ReluPassesAll()
    return net


def _poisoned(net, name, seed, value):
    net.poison = (name, 37 * seed % net.params[name].size, value)  # a different element per seed
    return net


def _own_dropout(seed):
    net = _extend([10, 10], use_dropout=True, dropout_ration=0.2)()
    for key, layer in net.layers.items():
        if isinstance(layer, book.Dropout):
            net.layers[key] = book.DropoutOwnGenerator(layer.dropout_ratio, seed)
    return net


RELU = "TwoLayerNet relu"
BUGS = {
    b.name: b
    for b in (
        Bug("bias gradient 2% off", RELU, _bias_off, ("b2",)),
        Bug(
            "no division by batch size",
            RELU,
            _no_batch_division,
            ("W1", "b1", "W2", "b2"),
            min_batch=2,
        ),
        Bug("transposed square dW", "MultiLayerNet relu", _transposed, ("W2",)),
        Bug("ReLU passes everything", RELU, _relu_passes_all, ("W1", "b1")),
        Bug(
            "NaN in a gradient",
            RELU,
            lambda seed: _poisoned(_two_layer(NaNGradientTwoLayerNet), "W1", seed, np.nan),
            ("W1",),
        ),
        Bug(
            "inf in a gradient",
            "SimpleConvNet",
            lambda seed: _poisoned(
                _conv(SMALL_SIDE, 4, 3, 10, InfGradientConvNet)(), "W1", seed, np.inf
            ),
            ("W1",),
        ),
        Bug(
            "noisy loss",
            RELU,
            lambda seed: _two_layer(NoisyLossTwoLayerNet, noise_seed=seed),
            REFUSED,
        ),
        Bug("loss moves its weights", RELU, lambda seed: _two_layer(MovingTwoLayerNet), REFUSED),
        Bug("dropout with its own generator", "Extend dropout", _own_dropout, REFUSED),
    )
}


# ----------------------------------------------------------------------------- checks


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One check: ``verdict`` is "PASS", "FAIL", "INCONCLUSIVE" or :data:`REFUSED`."""

    verdict: str
    failed: tuple
    seconds: float
    detail: str  # the worst elements of each parameter that did not pass, or why refused

    def caught(self, expect):
        """Whether a planted bug with ``expect`` was caught.

        A bug that makes the loss non-deterministic is caught when refused, or when it
        fails: at batch 1 a fresh dropout mask can give the same loss on the two
        evaluations at theta by chance (both masks keep the few active units), and then
        only the numbers can show it.
        """
        if expect == REFUSED:
            return self.verdict == REFUSED or self.verdict == "FAIL"
        return self.verdict == "FAIL" and self.failed == tuple(expect)


def _not_passed(result):
    """The worst elements of each parameter that did not pass, one line each."""
    lines = []
    for name, check in result.params.items():
        if check.passed:
            continue
        if check.problem:
            lines.append(f"{name}: {check.problem}")
            continue
        lines.append(
            f"{name}: {check.n_fail} failing, {check.n_unresolved} unresolved, "
            f"{check.n_kinks} kinks of {int(np.prod(check.shape))} elements"
        )
        for index, num, bp, tag in check.worst[:3]:
            tag = f" ({tag})" if tag else ""
            lines.append(f"  {name}{list(index)} numerical {num:.9e} backprop {bp:.9e}{tag}")
    return "\n".join(lines)


def run(net, x, t, method="auto", workers=1):
    """Check ``net`` on (x, t); the :class:`Outcome`."""
    start = time.perf_counter()
    try:
        result = gradcheck(net, x, t, method=method, workers=workers)
    except GradcheckRefusedError as exc:
        return Outcome(REFUSED, (), time.perf_counter() - start, str(exc))
    seconds = time.perf_counter() - start
    return Outcome(result.verdict, tuple(result.failed), seconds, _not_passed(result))


def check_family(family, seed, n, method="auto", workers=1, mnist=None):
    """The check of ``family``'s network for ``seed`` on a batch of ``n``."""
    x, t = batch(family.kind, family.side, seed, n, mnist)
    return run(family.net(seed), x, t, method, workers)


def check_bug(bug, seed, n, method="auto", workers=1, mnist=None):
    """The check of ``bug``'s network for ``seed`` on a batch of ``n``."""
    x, t = batch(bug.kind, bug.side, seed, n, mnist)
    return run(bug.net(seed), x, t, method, workers)
