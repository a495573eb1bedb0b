"""One table of operations and their implementations, shared by tests and benchmarks.

The two-layer operations (``numerical_gradient``, ``softmax_cross_entropy``,
``forward``, ``sgd_step``) take the book's network; ``multilayer_gradient`` is
the numerical gradient of a :class:`~fastnum.multilayer.MultiLayerNet` of any depth.
Each :class:`Operation` has a ``setup`` that turns a :class:`Problem` into the
arguments of its implementations (done once, outside any timed call), the
name of the implementation every other must match, and the tolerance of that
match.  The numba implementations are derived from the engine's strategy table
(:data:`fastnum.engine.STRATEGIES`), one ``numba-<strategy>`` entry per strategy, in
table order, and reach the kernels the way users do: the two-layer operations
through :mod:`fastnum.engine` (the book's stack), ``multilayer_gradient`` through the
public ``MultiLayerNet.numerical_gradient``.
Yardsticks (the analytic backprop gradient) are timed beside the
others but compute a different function, so they are checked against their own,
looser tolerance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastnum import constants, engine, reference
from fastnum._validate import as_float_batch, as_labels
from fastnum.convnet import ReferenceLayeredNet, ReferenceSimpleConvNet
from fastnum.kernels import losses
from fastnum.multilayer import MultiLayerNet, ReferenceMultiLayerNet
from fastnum.network import TwoLayerNet

LEARNING_RATE = 0.1  # the book's, for the SGD-step operation
#: The book's two-layer network as an engine stack (the two-layer operations run it).
BOOK_STACK = TwoLayerNet.stack


@dataclass(frozen=True)
class Problem:
    """A network and a batch: the input of every operation.

    ``params`` holds ``W1, b1, ..., WL, bL``; the two-layer operations need L = 2,
    ``multilayer_gradient`` takes any L.
    """

    params: dict
    x: np.ndarray  # (N, D) float64, C-contiguous
    t: np.ndarray  # (N,) int64 labels
    h: float = constants.H
    activation: str = "sigmoid"  # of the hidden layers; the two-layer operations are sigmoid

    @property
    def param_names(self):
        """("W1", "b1", ..., "WL", "bL")."""
        return tuple(f"{p}{k}" for k in range(1, len(self.params) // 2 + 1) for p in "Wb")

    @property
    def hidden_sizes(self):
        """Widths of the hidden layers, e.g. ``(50,)`` for the book's network."""
        return tuple(self.params[f"W{k}"].shape[1] for k in range(1, len(self.params) // 2))

    @property
    def label(self):
        """Short id for test and benchmark names, e.g. ``b100-h50`` or ``b10-h50x50``."""
        return f"b{self.x.shape[0]}-h{hidden_label(self.hidden_sizes)}"


def hidden_label(hidden):
    """``"50"`` for one width, ``"50x50"`` for a sequence of hidden widths; text passes through."""
    return "x".join(map(str, hidden)) if isinstance(hidden, tuple | list) else str(hidden)


def make_problem(
    x, t, hidden_size=50, seed=0, weight_init_std=0.01, output_size=10, activation="sigmoid"
):
    """A :class:`Problem` for a batch, with a freshly seeded network.

    An int ``hidden_size`` gives the book's two-layer network; a tuple gives a
    network with those hidden layers (a tuple of one width draws the same weights).
    """
    x = as_float_batch(x)
    t = as_labels(t, x.shape[0], output_size)
    if isinstance(hidden_size, tuple):
        params = ReferenceMultiLayerNet(
            x.shape[1], hidden_size, output_size, activation, weight_init_std, seed
        ).params
    else:
        params = reference.TwoLayerNet(
            x.shape[1], hidden_size, output_size, weight_init_std, seed
        ).params
    return Problem(params=params, x=x, t=t, activation=activation)


def reference_net(params):
    """A reference ``TwoLayerNet`` carrying copies of ``params``."""
    W1, W2 = params["W1"], params["W2"]
    net = reference.TwoLayerNet(W1.shape[0], W1.shape[1], W2.shape[1])
    net.params = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    return net


def reference_multilayer_net(problem):
    """A ``ReferenceMultiLayerNet`` carrying copies of ``problem``'s parameters."""
    p = problem.params
    net = ReferenceMultiLayerNet(
        p["W1"].shape[0],
        problem.hidden_sizes,
        p[problem.param_names[-2]].shape[1],
        problem.activation,
    )
    net.params = {k: np.array(v, dtype=np.float64) for k, v in p.items()}
    return net


def _logits(problem):
    p = problem.params
    z1 = reference.sigmoid(problem.x @ p["W1"] + p["b1"])
    return z1 @ p["W2"] + p["b2"]


def _sgd(params, grads):
    return {k: params[k] - LEARNING_RATE * grads[k] for k in params}


def numba_impl(strategy):
    """The registry's name of the numba implementation using ``strategy``: ``numba-<strategy>``."""
    return f"numba-{strategy}"


def _per_strategy(strategies, make_implementation):
    """``{numba-<s>: make_implementation(s)}`` for each strategy of a kernel module's table."""
    return {numba_impl(s): make_implementation(s) for s in strategies}


def _numba_gradient(strategy):
    def run(params, x, t, h):
        return engine.numerical_gradient(BOOK_STACK, params, x, t, h, strategy)

    return run


def _numba_step(strategy):
    def run(params, x, t, h):
        return _sgd(params, engine.numerical_gradient(BOOK_STACK, params, x, t, h, strategy))

    return run


def _multilayer_gradient(strategy):
    def run(net, x, t, h):
        return net.numerical_gradient(x, t, h, strategy=strategy)

    return run


def _multilayer_net_args(pr):
    """The public :class:`~fastnum.multilayer.MultiLayerNet` carrying the problem's parameters."""
    from fastnum._jit import HAVE_NUMBA

    p = pr.params
    net = MultiLayerNet(
        p["W1"].shape[0],
        pr.hidden_sizes,
        p[pr.param_names[-2]].shape[1],
        pr.activation,
        # Without numba installed the public network falls back to the NumPy reference.
        backend="numba" if HAVE_NUMBA else "numpy",
    )
    net.params = {k: np.array(v, dtype=np.float64) for k, v in p.items()}
    return (net, pr.x, pr.t, pr.h)


def _multilayer_np_args(pr):
    return (reference_multilayer_net(pr), pr.x, pr.t, pr.h)


@dataclass(frozen=True)
class Operation:
    """One heavy operation and its interchangeable implementations."""

    name: str
    setup: dict[str, Callable[[Problem], tuple]]  # implementation -> (Problem -> args)
    implementations: dict[str, Callable[..., Any]]
    atol: float
    rtol: float
    reference: str = "numpy"
    yardsticks: dict[str, float] = field(default_factory=dict)  # name -> relative tolerance
    labels: dict[str, str] = field(default_factory=dict)  # display names the key does not give
    # impl -> (Problem -> factor): implementations timed on a sample of the parameters; their
    # time times the factor is the *extrapolated* time of the whole gradient.
    extrapolate: dict[str, Callable[[Problem], float]] = field(default_factory=dict)

    def args(self, impl, problem):
        """The arguments ``impl`` takes for ``problem`` (prepare these outside timing)."""
        return self.setup.get(impl, self.setup["default"])(problem)


def _np_gradient_args(pr):
    return (reference_net(pr.params), pr.x, pr.t, pr.h)


def _kernel_args(pr):
    return (pr.params, pr.x, pr.t, pr.h)


def _public_net_args(pr):
    from fastnum._jit import HAVE_NUMBA
    from fastnum.network import TwoLayerNet

    W1, W2 = pr.params["W1"], pr.params["W2"]
    # Without numba installed the public network falls back to the NumPy reference.
    net = TwoLayerNet(
        W1.shape[0], W1.shape[1], W2.shape[1], backend="numba" if HAVE_NUMBA else "numpy"
    )
    net.params = {k: np.array(v, dtype=np.float64) for k, v in pr.params.items()}
    return (net, pr.x, pr.t, pr.h)


def _gradient_operation(name, kernel_args, numpy_args, numba_gradient, strategies):
    """A numerical gradient: the NumPy reference, each numba strategy, backprop beside them."""
    return Operation(
        name=name,
        setup={"default": kernel_args, "numpy": numpy_args, "backprop": numpy_args},
        implementations={
            "numpy": lambda net, x, t, h: net.numerical_gradient(x, t, h),
            **_per_strategy(strategies, numba_gradient),
            "backprop": lambda net, x, t, h: net.gradient(x, t),
        },
        atol=1e-9,
        rtol=0.0,
        yardsticks={"backprop": 1e-5},
    )


def _book_as_published_args(pr):
    # The book's load_mnist gives float32 images and one-hot float64 labels; NumPy then
    # multiplies float32 images by float64 weights at every loss evaluation, which is
    # slower than the float64 x float64 product of fastnum's reference.
    onehot = np.eye(pr.params["W2"].shape[1])[pr.t]
    return (reference_net(pr.params), pr.x.astype(np.float32), onehot, pr.h)


#: The yardstick name of the book's code as published (float32 images).
BOOK_AS_PUBLISHED = "book-float32"


def _with_book_as_published(op):
    """``op`` plus the yardstick "book-float32": the book's loop on the book's input types.

    It computes the reference's function (up to float64 rounding in the products),
    so its yardstick tolerance is loose only against summation-order differences.
    """
    name = BOOK_AS_PUBLISHED
    return dataclasses.replace(
        op,
        setup={**op.setup, name: _book_as_published_args},
        implementations={
            **op.implementations,
            name: lambda net, x, t, h: net.numerical_gradient(x, t, h),
        },
        yardsticks={**op.yardsticks, name: 1e-6},
        labels={**op.labels, name: "the book's code as published, float32 images"},
    )


# ----------------------------------------------------------------------------- convolution
# The book's chapter 7 SimpleConvNet on a problem's images: the NumPy reference (hours for
# all 433,890 parameters) and numba full run on CONV_SAMPLE random parameters per tensor,
# numba delta and backprop compute every parameter; all report the sampled entries.
CONV_SAMPLE = 4
BOOK_CONV_HIDDEN = 100


def conv_net(pr):
    """The SimpleConvNet (seed 0) of a problem and its images.

    MNIST rows (784 features) with the book's hidden width 100 get the book's
    network on 28x28 images.  Anything else (smoke runs, odd-shaped tests) gets a
    tiny one on the centre 6x6 (at most) of the largest square of its features:
    2 filters that leave 2x2 maps, pooled to 1x1.
    """
    hidden, classes = pr.params["W1"].shape[1], pr.params[pr.param_names[-2]].shape[1]
    n, side = len(pr.x), int(np.sqrt(pr.x.shape[1]))
    images = pr.x[:, : side * side].reshape(n, 1, side, side)
    if (side, hidden) != (28, BOOK_CONV_HIDDEN):
        lo = (side - min(side, 6)) // 2
        images = images[:, :, lo : lo + min(side, 6), lo : lo + min(side, 6)]
    size = images.shape[2]
    conv = None if size == 28 else {"filter_num": 2, "filter_size": size - 1}
    net = ReferenceSimpleConvNet((1, size, size), conv, hidden, classes, seed=0)
    return net, np.ascontiguousarray(images)


def _conv_args(pr):
    net, x = conv_net(pr)
    rng = np.random.default_rng(0)
    sample = {
        k: rng.choice(v.size, min(CONV_SAMPLE, v.size), replace=False)
        for k, v in net.params.items()
    }
    return net, x, pr.t, pr.h, sample


def _conv_engine_args(pr):
    net, x, t, h, sample = _conv_args(pr)
    return net.stack, net.params, x, t, h, sample


def _sampled(grads, sample):
    return {k: grads[k].ravel()[i] for k, i in sample.items()}


def _conv_sample_factor(pr):
    """Parameters of the whole gradient / parameters sampled."""
    params = conv_net(pr)[0].params
    return sum(v.size for v in params.values()) / sum(
        min(CONV_SAMPLE, v.size) for v in params.values()
    )


CONVOLUTION = Operation(
    name="convolution",
    setup={"default": _conv_engine_args, "numpy": _conv_args, "backprop": _conv_args},
    implementations={
        "numpy": lambda net, x, t, h, sample: ReferenceLayeredNet.numerical_gradient_at(
            net, x, t, sample, h
        ),
        "numba-full": lambda stack, params, x, t, h, sample: engine.numerical_gradient_at(
            stack, params, x, t, sample, h, "full"
        ),
        "numba-delta": lambda stack, params, x, t, h, sample: _sampled(
            engine.numerical_gradient(stack, params, x, t, h, "delta"), sample
        ),
        "backprop": lambda net, x, t, h, sample: _sampled(net.gradient(x, t), sample),
    },
    atol=1e-9,
    rtol=0.0,
    # At the book's zero biases many relu units sit exactly on their kink (blank patches),
    # where central differences and backprop legitimately differ by up to ~30 % (b1):
    # see fastnum.convnet.CONV_CHECK.  The yardstick check only catches gross errors here.
    yardsticks={"backprop": 0.5},
    extrapolate={"numpy": _conv_sample_factor, "numba-full": _conv_sample_factor},
)


COMPARISONS = {
    op.name: op
    for op in (
        _with_book_as_published(
            _gradient_operation(
                "numerical_gradient",
                _kernel_args,
                _np_gradient_args,
                _numba_gradient,
                engine.STRATEGIES,
            )
        ),
        Operation(
            name="softmax_cross_entropy",
            setup={"default": lambda pr: (_logits(pr), pr.t)},
            implementations={
                "numpy": lambda a, t: reference.cross_entropy_error(reference.softmax(a), t),
                "numba": losses.softmax_cross_entropy,
            },
            atol=0.0,
            rtol=1e-12,
        ),
        Operation(
            name="forward",
            setup={
                "default": lambda pr: (pr.params, pr.x),
                "numpy": lambda pr: (reference_net(pr.params), pr.x),
            },
            implementations={
                "numpy": lambda net, x: net.predict(x),
                "numba": lambda params, x: engine.predict(BOOK_STACK, params, x),
            },
            atol=0.0,
            rtol=1e-12,
        ),
        Operation(
            name="sgd_step",
            setup={
                "default": _kernel_args,
                "numpy": _np_gradient_args,
                "backprop": _np_gradient_args,
            },
            implementations={
                "numpy": lambda net, x, t, h: _sgd(net.params, net.numerical_gradient(x, t, h)),
                **_per_strategy(engine.STRATEGIES, _numba_step),
                "backprop": lambda net, x, t, h: _sgd(net.params, net.gradient(x, t)),
            },
            atol=1e-9 * LEARNING_RATE,
            rtol=0.0,
            yardsticks={"backprop": 1e-5},
        ),
        # Through the public MultiLayerNet.numerical_gradient: the path users run.
        _gradient_operation(
            "multilayer_gradient",
            _multilayer_net_args,
            _multilayer_np_args,
            _multilayer_gradient,
            engine.STRATEGIES,
        ),
        # The price of the public API's checks (parameters' shapes, dtypes and
        # finiteness, inputs, labels, step) on the book's gradient: "numba" is the
        # validated TwoLayerNet.numerical_gradient, "numba-delta" the trusted engine call
        # it ends in, timed side by side in one run.
        Operation(
            name="validated_gradient",
            setup={"default": _kernel_args, "numba": _public_net_args},
            implementations={
                "numba": lambda net, x, t, h: net.numerical_gradient(x, t, h, strategy="delta"),
                "numba-delta": _numba_gradient("delta"),
            },
            atol=1e-9,  # identical with numba; the NumPy fallback without numba is within 1e-9
            rtol=0.0,
            reference="numba-delta",
            labels={
                "numba-delta": "numba delta, trusted engine call",
                "numba": "TwoLayerNet.numerical_gradient (validated)",
            },
        ),
        CONVOLUTION,
    )
}


def max_errors(ref, comp):
    """(max absolute, max relative) difference between two results (arrays, dicts or floats)."""
    if isinstance(ref, dict):
        pairs = [(np.asarray(ref[k]), np.asarray(comp[k])) for k in ref]
    else:
        pairs = [(np.asarray(ref), np.asarray(comp))]
    abs_err = max(float(np.max(np.abs(r - c))) for r, c in pairs)
    scale = max(float(np.max(np.abs(r))) for r, _ in pairs)
    return abs_err, abs_err / scale if scale else abs_err
