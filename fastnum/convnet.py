"""The book's chapter 7 network: conv -> relu -> pool -> affine -> relu -> affine -> softmax.

:class:`ReferenceLayeredNet` runs any *stack* (the layer specs of
:mod:`fastnum.engine`, e.g. ``("conv", "W1", "b1", 1, 0)``) through the NumPy
layers of :mod:`fastnum.layers`: the oracle.  :class:`ReferenceSimpleConvNet`
is that oracle with the book's parameters and initialisation, and
:class:`SimpleConvNet` the public network that validates its inputs and runs
``predict``, ``loss`` and ``numerical_gradient`` in :mod:`fastnum.engine` for
the ``numba`` backend.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from fastnum import layers, reference
from fastnum._frontend import NetworkFrontend, SampledGradient
from fastnum._validate import (
    as_image_batch,
    as_labels,
    as_shaped_params,
    check_input_dim,
    check_int,
    check_positive,
)
from fastnum.backend import DEFAULT_STRATEGY

#: Stack spec kind -> (layer class name prefix, builder from (params, *spec args)).
LAYER_TYPES = {
    "conv": ("Conv", lambda p, w, b, stride, pad: layers.Convolution(p[w], p[b], stride, pad)),
    "pool": ("Pool", lambda p, ph, pw, stride, pad: layers.Pooling(ph, pw, stride, pad)),
    "relu": ("Relu", lambda p: layers.Relu()),
    "sigmoid": ("Sigmoid", lambda p: layers.Sigmoid()),
    "affine": ("Affine", lambda p, w, b: layers.Affine(p[w], p[b])),
    "batchnorm": ("BatchNorm", lambda p, g, b: layers.BatchNormalization(p[g], p[b])),
    "dropout": ("Dropout", lambda p, mask: layers.Dropout()),  # its mask: self.masks[mask]
}
#: Kinds whose spec names parameters (positions 1 and 2): weights and biases, gamma and beta.
PARAM_KINDS = ("conv", "affine", "batchnorm")

DEFAULT_CONV_PARAM = {"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1}
POOL_SIZE = 2  # the book's 2x2 max pooling with stride 2
ACCURACY_CHUNK = 500  # images per predict call when measuring accuracy


def param_names(stack):
    """Parameter names in the order the stack uses them, e.g. ("W1", "b1", "W2", ...)."""
    return tuple(name for spec in stack if spec[0] in PARAM_KINDS for name in spec[1:3])


class ReferenceLayeredNet:
    """A stack of :mod:`fastnum.layers` followed by softmax-with-loss, in plain NumPy.

    The methods name ``ReferenceLayeredNet`` rather than going through ``self``:
    a subclass's validation and numba dispatch must not leak into the oracle.
    """

    def __init__(self, stack, params, masks=None, weight_decay_lambda=0.0):
        self.stack, self.params = tuple(stack), params
        # Dropout masks by name (data, not parameters) and the book's weight decay.
        self.masks, self.weight_decay_lambda = dict(masks or {}), weight_decay_lambda
        self.last_layer = layers.SoftmaxWithLoss()

    @property
    def param_names(self):
        """Parameter names in stack order."""
        return param_names(self.stack)

    @property
    def layers(self):
        """Fresh layers (book names Conv1, Relu1, Pool1, Affine1, ...) over the current params."""
        built, counts = OrderedDict(), {}
        for kind, *args in self.stack:
            prefix, make = LAYER_TYPES[kind]
            counts[prefix] = counts.get(prefix, 0) + 1
            built[f"{prefix}{counts[prefix]}"] = make(self.params, *args)
        return built

    def _logits(self, x, net_layers):
        for spec, layer in zip(self.stack, net_layers.values(), strict=True):
            if spec[0] == "dropout":
                mask = self.masks[spec[1]]
                x = layer.forward(x, mask=mask.reshape(x.shape))
            else:
                x = layer.forward(x)
        return x

    def _weight_decay(self):
        """0.5 * lambda * sum(W**2) over the conv and affine weights, layer by layer."""
        decay = 0.0
        for spec in self.stack:
            if spec[0] in ("conv", "affine") and self.weight_decay_lambda:
                decay += 0.5 * self.weight_decay_lambda * np.sum(self.params[spec[1]] ** 2)
        return decay

    def predict(self, x):
        """Class probabilities for a batch ``x``."""
        net_layers = ReferenceLayeredNet.layers.fget(self)
        return reference.softmax(ReferenceLayeredNet._logits(self, x, net_layers))

    def loss(self, x, t):
        """Batch-mean cross-entropy (with the book's 1e-7 guard)."""
        net_layers = ReferenceLayeredNet.layers.fget(self)
        data = self.last_layer.forward(ReferenceLayeredNet._logits(self, x, net_layers), t)
        return data + ReferenceLayeredNet._weight_decay(self)

    def accuracy(self, x, t):
        """Fraction of samples whose arg-max class equals the label (integer or one-hot)."""
        t = t.argmax(axis=1) if t.ndim == 2 else t
        return float(np.mean(ReferenceLayeredNet.predict(self, x).argmax(axis=1) == t))

    def numerical_gradient(self, x, t, h=reference.H):
        """Central-difference gradient of the loss for every parameter (the slow oracle)."""
        loss = lambda _: ReferenceLayeredNet.loss(self, x, t)  # noqa: E731 - the book's idiom
        names = ReferenceLayeredNet.param_names.fget(self)
        return {k: reference.numerical_gradient(loss, self.params[k], h) for k in names}

    def numerical_gradient_at(self, x, t, indices, h=reference.H):
        """Central differences at the flat ``indices[name]`` of each named parameter."""
        loss = lambda _: ReferenceLayeredNet.loss(self, x, t)  # noqa: E731 - the book's idiom
        return {
            name: reference.numerical_gradient_at(loss, self.params[name], flat, h)
            for name, flat in indices.items()
        }

    def gradient(self, x, t):
        """Analytic backprop gradient (ignores the log guard), the oracle for gradient checks."""
        net_layers = ReferenceLayeredNet.layers.fget(self)
        self.last_layer.forward(ReferenceLayeredNet._logits(self, x, net_layers), t)
        dout = self.last_layer.backward(1)
        for layer in reversed(net_layers.values()):
            dout = layer.backward(dout)
        grads = {}
        lam = self.weight_decay_lambda
        for (kind, *args), layer in zip(self.stack, net_layers.values(), strict=True):
            if kind in ("conv", "affine"):
                grads[args[0]] = layer.dW + lam * self.params[args[0]] if lam else layer.dW
                grads[args[1]] = layer.db
            elif kind == "batchnorm":
                grads[args[0]], grads[args[1]] = layer.dgamma, layer.dbeta
        return {k: grads[k] for k in ReferenceLayeredNet.param_names.fget(self)}


def simple_conv_geometry(input_dim, conv_param):
    """(conv output (OH, OW), pooled output (PH, PW)), refusing sizes that do not tile."""
    _, h, w = input_dim
    fs, stride, pad = conv_param["filter_size"], conv_param["stride"], conv_param["pad"]
    try:
        conv_out = tuple(layers.conv_output_size(n, fs, stride, pad) for n in (h, w))
    except ValueError as err:
        raise ValueError(f"convolution of input_dim={tuple(input_dim)}: {err}") from None
    try:
        pooled = tuple(layers.conv_output_size(n, POOL_SIZE, POOL_SIZE) for n in conv_out)
    except ValueError as err:
        raise ValueError(
            f"the convolution output {conv_out[0]}x{conv_out[1]} of input_dim={tuple(input_dim)}"
            f" cannot be max-pooled {POOL_SIZE}x{POOL_SIZE} with stride {POOL_SIZE}: {err}"
        ) from None
    return conv_out, pooled


class ReferenceSimpleConvNet(ReferenceLayeredNet):
    """The book's SimpleConvNet in plain NumPy; weights drawn W1, W2, W3 in order, zero biases."""

    def __init__(
        self,
        input_dim=(1, 28, 28),
        conv_param=None,
        hidden_size=100,
        output_size=10,
        weight_init_std=0.01,
        seed=None,
    ):
        conv = {**DEFAULT_CONV_PARAM, **(conv_param or {})}
        _, (ph, pw) = simple_conv_geometry(input_dim, conv)
        fn, fs = conv["filter_num"], conv["filter_size"]
        rng = np.random.default_rng(seed)
        params = {
            "W1": weight_init_std * rng.standard_normal((fn, input_dim[0], fs, fs)),
            "b1": np.zeros(fn),
            "W2": weight_init_std * rng.standard_normal((fn * ph * pw, hidden_size)),
            "b2": np.zeros(hidden_size),
            "W3": weight_init_std * rng.standard_normal((hidden_size, output_size)),
            "b3": np.zeros(output_size),
        }
        stack = (
            ("conv", "W1", "b1", conv["stride"], conv["pad"]),
            ("relu",),
            ("pool", POOL_SIZE, POOL_SIZE, POOL_SIZE, 0),
            ("affine", "W2", "b2"),
            ("relu",),
            ("affine", "W3", "b3"),
        )
        super().__init__(stack, params)
        self.input_dim = tuple(input_dim)


class _ConvCheck(NamedTuple):
    weight_init_std: float
    bias_std: float
    h: float
    why: str


#: Settings of a gradient check of SimpleConvNet.  Central differences and backprop
#: disagree at the kinks of relu and max pooling: with the book's zero biases every blank
#: MNIST patch puts a relu unit exactly at 0 (b1's numerical gradient is then off by half
#: of those patches, 30 %), and with 100 images a few of the ~1.7 million relu units and
#: ~430,000 pooling windows lie within h=1e-4 of a kink (W1 off by ~1e-3 relative).
#: Random biases, weights of std 0.05 and h=1e-8 keep the check off the kinks: measured on
#: 100 MNIST images and three seeds the worst relative error is ~1.5e-6, the log guard's
#: size, while rounding at h=1e-8 stays ~1e-8 absolute.  (Weights of std 0.01 leave
#: ~1e-3 even at h=1e-8; std 0.1 makes the guard's effect ~8e-6, too close to 1e-5.)
CONV_CHECK = _ConvCheck(
    weight_init_std=0.05,
    bias_std=0.05,
    h=1e-8,
    why="SimpleConvNet is checked with biases drawn N(0, 0.05), weight std 0.05 and h=1e-8: at "
    "the book's zero biases,\nweight std 0.01 and h=1e-4, relu units and pooling windows "
    "sit on or within h of their kinks,\nwhere the central difference and backprop "
    "legitimately differ (by up to 30 % for b1).",
)


def off_the_kinks(net, seed=None, bias_std=CONV_CHECK.bias_std):
    """Draw ``net``'s biases from N(0, bias_std) (in place) and return ``net``."""
    rng = np.random.default_rng(seed)
    for name in net.param_names:
        if name.startswith("b"):
            net.params[name] = bias_std * rng.standard_normal(net.params[name].shape)
    return net


# ----------------------------------------------------------------------------- validation


def _check_conv_param(conv_param, name="conv_param", defaults=None):
    """``conv_param`` completed with ``defaults`` (SimpleConvNet's) and checked; errors say
    ``name`` (DeepConvNet has six of them)."""
    defaults = DEFAULT_CONV_PARAM if defaults is None else defaults
    if conv_param is None:
        conv_param = {}
    if not isinstance(conv_param, dict):
        raise TypeError(f"{name}={conv_param!r} must be a dict like {defaults}.")
    unknown = sorted(set(conv_param) - set(defaults))
    if unknown:
        raise ValueError(f"{name} has unknown key(s) {unknown}; use {', '.join(defaults)}.")
    conv = {**defaults, **conv_param}
    return {k: check_int(f"{name}[{k!r}]", v, 0 if k == "pad" else 1) for k, v in conv.items()}


class SimpleConvNet(SampledGradient, NetworkFrontend, ReferenceSimpleConvNet):
    """The book's chapter 7 convolutional network, with the numba engine behind it.

    conv -> relu -> 2x2 max pool (stride 2) -> affine -> relu -> affine -> softmax.

    Parameters
    ----------
    input_dim : tuple of int, default (1, 28, 28)
        (channels, height, width) of each input image.
    conv_param : dict, default {"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1}
        The convolution; missing keys take these defaults.  A geometry whose
        convolution or pooling output is not a whole number of steps is refused.
    hidden_size : int, default 100
        Width of the hidden affine layer.
    output_size : int, default 10
        Number of classes, at least 2.
    weight_init_std : float, default 0.01
        Standard deviation of the Gaussian initial weights; biases start at zero.
    seed : int or None
        Seed of ``np.random.default_rng``; weights are drawn W1, W2, W3 in order.
    backend : {"auto", "numba", "numpy"} or None, default "auto"
        Where ``predict``, ``loss`` and ``numerical_gradient`` run.  ``None``
        reads ``$FASTNUM_BACKEND``; ``auto`` uses numba when it compiles.
    strategy : {"delta", "full"}, default "delta"
        How the numba numerical gradient evaluates perturbed losses.
    """

    def __init__(
        self,
        input_dim=(1, 28, 28),
        conv_param=None,
        hidden_size=100,
        output_size=10,
        weight_init_std=0.01,
        seed=None,
        backend="auto",
        strategy=DEFAULT_STRATEGY,
    ):
        input_dim = check_input_dim(input_dim)
        conv = _check_conv_param(conv_param)
        hidden_size = check_int("hidden_size", hidden_size, 1, "the book uses 100.")
        output_size = check_int(
            "output_size", output_size, 2, "a softmax needs at least 2 classes; MNIST has 10."
        )
        weight_init_std = check_positive("weight_init_std", weight_init_std, "the book uses 0.01.")
        super().__init__(input_dim, conv, hidden_size, output_size, weight_init_std, seed)
        self._shapes = {k: v.shape for k, v in self.params.items()}
        self._init_backend(backend, strategy)

    @property
    def sizes(self):
        """(input features C*H*W, hidden size, output size)."""
        return (int(np.prod(self.input_dim)),) + self.params["W3"].shape

    def _checked(self, x, t=None):
        """(params, x) or (params, x, t), validated: the frontend's one check for this net."""
        # Parameters checked against the built shapes on every call: they may have been
        # replaced or edited in place, and the trusted engine must not misread them.
        params = as_shaped_params(self.params, self._shapes)
        x = as_image_batch(x, self.input_dim)
        if t is None:
            return params, x
        return params, x, as_labels(t, x.shape[0], self.sizes[-1])

    def accuracy_trusted(self, x, t, params=None):
        """:meth:`accuracy` for validated inputs, in chunks of images."""
        # In chunks: im2col of a whole 60,000-image set would need gigabytes.
        hits = sum(
            int(
                np.sum(
                    self.predict_trusted(x[i : i + ACCURACY_CHUNK], params).argmax(axis=1)
                    == t[i : i + ACCURACY_CHUNK]
                )
            )
            for i in range(0, len(x), ACCURACY_CHUNK)
        )
        return hits / len(x)
