"""A deeper version of the book's network: any number of hidden layers, sigmoid or relu.

:class:`ReferenceMultiLayerNet` is the oracle (and the ``numpy`` backend): short,
literal, built from :mod:`fastnum.reference`'s functions, validating nothing.
:class:`MultiLayerNet` validates its inputs and runs ``predict``, ``loss`` and
``numerical_gradient`` in :mod:`fastnum.kernels.multilayer` for the ``numba``
backend.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from fastnum import reference
from fastnum._frontend import NetworkFrontend
from fastnum._validate import ParameterTypeError, check_choice, check_int, check_positive
from fastnum.backend import DEFAULT_STRATEGY
from fastnum.constants import H
from fastnum.kernels import multilayer as kernels


def relu(x):
    """max(0, x), elementwise."""
    return np.maximum(0, x)


class Activation(NamedTuple):
    """One hidden-layer activation, as the reference and the kernels compute it."""

    forward: Callable  # NumPy: pre-activation z -> a = f(z)
    backward: Callable  # NumPy: (upstream gradient g, output a) -> g * f'(z)
    kernel_code: int  # the act_kind that fastnum.kernels.multilayer._act computes


#: The one table of activations: name -> NumPy forward and backward, and kernel code.
#: The sigmoid's backward keeps the product order of the book's TwoLayerNet.gradient.
ACTIVATIONS = {
    "sigmoid": Activation(
        reference.sigmoid, lambda g, a: g * a * (1 - a), kernels.ACTIVATION_CODES["sigmoid"]
    ),
    "relu": Activation(relu, lambda g, a: g * (a > 0), kernels.ACTIVATION_CODES["relu"]),
}


#: Initial weight scales by name, as the book's multi-layer net takes them: the std of a
#: layer's weights is sqrt(gain / n_in), n_in the width of the layer before it.  He's gain 2
#: suits relu (which zeroes half of its inputs), Xavier's 1 suits sigmoid.
WEIGHT_INITS = {"relu": 2.0, "he": 2.0, "sigmoid": 1.0, "xavier": 1.0}


def check_weight_init_std(value):
    """Return a positive std as a float or a name of :data:`WEIGHT_INITS` (lower case), or raise."""
    if isinstance(value, str) and value.lower() in WEIGHT_INITS:
        return value.lower()
    if isinstance(value, str):
        raise ParameterTypeError(
            "weight_init_std",
            "{name}={value!r} must be a number such as 0.01 or one of: {names}.",
            value=value,
            names=", ".join(WEIGHT_INITS),
        )
    return check_positive("weight_init_std", value, "the book uses 0.01, or 'he' / 'xavier'.")


def layer_init_std(weight_init_std, n_in):
    """The std of one layer's initial weights: a number as is, a name scaled by ``n_in``."""
    if isinstance(weight_init_std, str):
        return math.sqrt(WEIGHT_INITS[weight_init_std.lower()] / n_in)
    return weight_init_std


class ReferenceMultiLayerNet:
    """affine -> act -> ... -> affine -> softmax in plain NumPy (the slow oracle).

    Weights are drawn layer by layer (``W1``, ``b1``, ``W2``, ...), biases are
    zeros, so with one hidden layer the parameters equal the book's TwoLayerNet
    for the same seed.
    """

    def __init__(
        self,
        input_size,
        hidden_sizes,
        output_size,
        activation="sigmoid",
        weight_init_std=0.01,
        seed=None,
    ):
        rng = np.random.default_rng(seed)
        sizes = [input_size, *hidden_sizes, output_size]
        self.activation = activation
        self.params = {}
        for k in range(1, len(sizes)):
            std = layer_init_std(weight_init_std, sizes[k - 1])
            self.params[f"W{k}"] = std * rng.standard_normal((sizes[k - 1], sizes[k]))
            self.params[f"b{k}"] = np.zeros(sizes[k])

    @property
    def n_layers(self):
        """Number of affine layers (hidden layers + 1)."""
        return len(self.params) // 2

    @property
    def param_names(self):
        """("W1", "b1", ..., "WL", "bL")."""
        return tuple(f"{p}{k}" for k in range(1, self.n_layers + 1) for p in "Wb")

    def _forward(self, x):
        # Activations of every layer, input first, then the logits last.
        act, p = ACTIVATIONS[self.activation].forward, self.params
        outs = [x]
        for k in range(1, self.n_layers):
            outs.append(act(np.dot(outs[-1], p[f"W{k}"]) + p[f"b{k}"]))
        L = self.n_layers
        outs.append(np.dot(outs[-1], p[f"W{L}"]) + p[f"b{L}"])
        return outs

    # The methods below name ReferenceMultiLayerNet explicitly instead of going
    # through self: a subclass's overrides (validation, numba dispatch) must not
    # leak into the oracle.

    def predict(self, x):
        """Class probabilities for a batch ``x``."""
        return reference.softmax(ReferenceMultiLayerNet._forward(self, x)[-1])

    def loss(self, x, t):
        """Batch-mean cross-entropy (with the book's 1e-7 guard)."""
        return reference.cross_entropy_error(ReferenceMultiLayerNet.predict(self, x), t)

    def accuracy(self, x, t):
        """Fraction of samples whose arg-max class equals the label (integer or one-hot)."""
        t = t.argmax(axis=1) if t.ndim == 2 else t
        return float(np.mean(ReferenceMultiLayerNet.predict(self, x).argmax(axis=1) == t))

    def numerical_gradient(self, x, t, h=H):
        """Central-difference gradient of the loss for every parameter."""
        loss = lambda _: ReferenceMultiLayerNet.loss(self, x, t)  # noqa: E731 - the book's idiom
        return {k: reference.numerical_gradient(loss, self.params[k], h) for k in self.param_names}

    def gradient(self, x, t):
        """Analytic backprop gradient (ignores the log guard), the oracle for gradient checks."""
        outs = ReferenceMultiLayerNet._forward(self, x)
        y = reference.softmax(outs[-1])
        onehot = t if t.ndim == 2 else np.eye(y.shape[1])[t]
        delta = (y - onehot) / x.shape[0]  # d loss / d logits
        backward, grads = ACTIVATIONS[self.activation].backward, {}
        for k in range(self.n_layers, 0, -1):
            grads[f"W{k}"] = np.dot(outs[k - 1].T, delta)
            grads[f"b{k}"] = delta.sum(axis=0)
            if k > 1:
                delta = backward(np.dot(delta, self.params[f"W{k}"].T), outs[k - 1])
        return {k: grads[k] for k in self.param_names}


class MultiLayerNet(NetworkFrontend, ReferenceMultiLayerNet):
    """A softmax classifier with any number of hidden layers and numba kernels behind it.

    Parameters
    ----------
    input_size : int
        Features per sample (784 for flattened MNIST).
    hidden_sizes : int or sequence of int
        Widths of the hidden layers; an int means one hidden layer, an empty
        sequence a plain softmax regression (one affine layer).
    output_size : int
        Number of classes, at least 2.
    activation : {"sigmoid", "relu"}, default "sigmoid"
        Activation of every hidden layer.
    weight_init_std : float or str, default 0.01
        Standard deviation of the Gaussian initial weights, finite and > 0 (0
        would give identical hidden units that training cannot separate), or,
        as in the book, a name giving each layer its own: "relu"/"he"
        (sqrt(2 / n_in)) or "sigmoid"/"xavier" (sqrt(1 / n_in)), where n_in is
        the width of the layer before; biases start at zero.
    seed : int or None
        Seed of ``np.random.default_rng``; weights are drawn W1, W2, ... in order,
        so one hidden layer reproduces :class:`fastnum.network.TwoLayerNet`.
    backend : {"auto", "numba", "numpy"} or None
        Where ``predict``, ``loss`` and ``numerical_gradient`` run.  ``None``
        reads ``$FASTNUM_BACKEND``; ``auto`` uses numba when it compiles.
    strategy : {"delta", "full"}, default "delta"
        How the numba numerical gradient evaluates perturbed losses.

    Notes
    -----
    Every public method checks ``params`` first (keys, shapes chaining, float
    dtype, finite values).  float16 and float32 parameters and inputs are
    computed in float64 on both backends, and results are float64.
    """

    def __init__(
        self,
        input_size,
        hidden_sizes,
        output_size,
        activation="sigmoid",
        weight_init_std=0.01,
        seed=None,
        backend=None,
        strategy=DEFAULT_STRATEGY,
    ):
        input_size = check_int("input_size", input_size, 1, "flattened MNIST images have 784.")
        output_size = check_int(
            "output_size", output_size, 2, "a softmax needs at least 2 classes; MNIST has 10."
        )
        if isinstance(hidden_sizes, numbers.Integral) and not isinstance(hidden_sizes, bool):
            hidden_sizes = (hidden_sizes,)
        if isinstance(hidden_sizes, str) or not hasattr(hidden_sizes, "__iter__"):
            raise TypeError(
                f"hidden_sizes={hidden_sizes!r} must be a sequence of layer widths, e.g. [50, 50]."
            )
        hidden_sizes = tuple(
            check_int(f"hidden_sizes[{i}]", s, 1, "layer widths are positive.")
            for i, s in enumerate(hidden_sizes)
        )
        check_choice("activation", activation, tuple(ACTIVATIONS))
        weight_init_std = check_weight_init_std(weight_init_std)
        super().__init__(input_size, hidden_sizes, output_size, activation, weight_init_std, seed)
        self._init_backend(backend, strategy)

    @property
    def sizes(self):
        """Layer widths (input, hidden..., output)."""
        L = self.n_layers
        return tuple(self.params[f"W{k}"].shape[0] for k in range(1, L + 1)) + (
            self.params[f"W{L}"].shape[1],
        )

    @property
    def stack(self):
        """The layers as a stack of :mod:`fastnum.engine` (affine, activation, ..., affine)."""
        specs = []
        for k in range(1, self.n_layers + 1):
            specs += [("affine", f"W{k}", f"b{k}"), (self.activation,)]
        return tuple(specs[:-1])
