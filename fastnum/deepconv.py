"""The book's chapter 8 network: six 3x3 convolutions, three poolings, dropout.

conv relu conv relu pool, three times (16, 32 and 64 filters), then
affine (``hidden_size``) relu dropout, affine (``output_size``) dropout and
softmax-with-loss; He initialisation, zero biases; ``params`` W1..W8 and b1..b8
as the book numbers them (six convolutions, two affine layers).

:class:`ReferenceDeepConvNet` is the oracle (the ``numpy`` backend): the
layers of :mod:`fastnum.layers`, built fresh over the current parameters on
every call, in plain NumPy.  :class:`DeepConvNet` validates its inputs and runs
``predict``, ``loss`` and ``numerical_gradient`` on :mod:`fastnum.engine` for
the ``numba`` backend, the network's :attr:`~ReferenceDeepConvNet.stack` with
the dropout masks passed as data.

Dropout masks are drawn from the network's seeded generator, one set per
training step, as :class:`fastnum.MultiLayerNet` draws them: a numerical
gradient draws a new set and uses it for every one of its loss evaluations.
"""

from __future__ import annotations

import math

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
from fastnum.convnet import _check_conv_param

#: The book's six convolutions: 3x3, stride 1, pad 1 except the fourth (pad 2, so that
#: 14x14 grows to 16x16 and the three poolings end at 4x4 from 28x28 images).
DEFAULT_CONV_PARAMS = (
    {"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 32, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 32, "filter_size": 3, "pad": 2, "stride": 1},
    {"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1},
)
N_CONV = len(DEFAULT_CONV_PARAMS)
POOL = ("pool", 2, 2, 2, 0)  # 2x2 max pooling with stride 2 after every second convolution
#: Dropout mask names in the stack: after the hidden relu, and after the output affine layer.
MASK_NAMES = ("mask1", "mask2")
ACCURACY_BATCH = 100  # the book's accuracy(x, t, batch_size=100)


def deep_conv_geometry(input_dim, conv_params):
    """The (C, H, W) after each convolution and pooling, refusing sizes that do not tile.

    Returns
    -------
    list of tuple
        The output shape of each convolution and pooling layer, in stack order.
    """
    shape, shapes = tuple(input_dim), []
    for k, conv in enumerate(conv_params, start=1):
        fs, stride, pad = conv["filter_size"], conv["stride"], conv["pad"]
        try:
            hw = tuple(layers.conv_output_size(n, fs, stride, pad) for n in shape[1:])
        except ValueError as err:
            raise ValueError(f"convolution {k} of an input of shape {shape}: {err}") from None
        shape = (conv["filter_num"], *hw)
        shapes.append(shape)
        if k % 2 == 0:
            try:
                hw = tuple(layers.conv_output_size(n, POOL[1], POOL[3]) for n in shape[1:])
            except ValueError as err:
                raise ValueError(
                    f"the {shape[1]}x{shape[2]} output of convolution {k} cannot be max-pooled "
                    f"2x2 with stride 2 (input_dim={tuple(input_dim)}): {err}"
                ) from None
            shape = (shape[0], *hw)
            shapes.append(shape)
    return shapes


class ReferenceDeepConvNet:
    """The book's DeepConvNet in plain NumPy (the slow oracle).

    Weights are drawn W1, ..., W8 in order from ``np.random.default_rng(seed)``
    with He's std ``sqrt(2 / fan_in)`` (a filter's C*FH*FW inputs, an affine
    layer's rows), biases are zeros; the dropout masks are drawn from the same
    generator afterwards.
    """

    def __init__(
        self,
        input_dim=(1, 28, 28),
        conv_params=DEFAULT_CONV_PARAMS,
        hidden_size=50,
        output_size=10,
        dropout_ratio=0.5,
        seed=None,
    ):
        self.input_dim, self.conv_params = tuple(input_dim), tuple(conv_params)
        self.dropout_ratio = dropout_ratio
        flat = int(np.prod(deep_conv_geometry(input_dim, conv_params)[-1]))
        rng = np.random.default_rng(seed)
        self.params, channels = {}, input_dim[0]
        for k, conv in enumerate(conv_params, start=1):
            fn, fs = conv["filter_num"], conv["filter_size"]
            std = math.sqrt(2.0 / (channels * fs * fs))
            self.params[f"W{k}"] = std * rng.standard_normal((fn, channels, fs, fs))
            self.params[f"b{k}"] = np.zeros(fn)
            channels = fn
        for k, (n_in, n_out) in enumerate(
            ((flat, hidden_size), (hidden_size, output_size)), start=N_CONV + 1
        ):
            self.params[f"W{k}"] = math.sqrt(2.0 / n_in) * rng.standard_normal((n_in, n_out))
            self.params[f"b{k}"] = np.zeros(n_out)
        self.dropout_rng = rng
        self.last_layer = layers.SoftmaxWithLoss()
        # The current step's masks, in a dict that the shallow copies the public network
        # makes for converted parameters share (as MultiLayerNet keeps them).
        self._step_state = {"masks": None}

    @property
    def param_names(self):
        """("W1", "b1", ..., "W8", "b8")."""
        return tuple(f"{p}{k}" for k in range(1, N_CONV + 3) for p in "Wb")

    @property
    def stack(self):
        """The layers as a stack of :mod:`fastnum.engine` specs, in the book's order."""
        specs = []
        for k, conv in enumerate(self.conv_params, start=1):
            specs += [("conv", f"W{k}", f"b{k}", conv["stride"], conv["pad"]), ("relu",)]
            if k % 2 == 0:
                specs.append(POOL)
        k = N_CONV + 1
        specs += [("affine", f"W{k}", f"b{k}"), ("relu",), ("dropout", MASK_NAMES[0])]
        specs += [("affine", f"W{k + 1}", f"b{k + 1}"), ("dropout", MASK_NAMES[1])]
        return tuple(specs)

    @property
    def layers(self):
        """The book's layer list (Convolution, Relu, Pooling, Affine, Dropout), built fresh
        over the current parameters; each Dropout holds the current step's mask, if any."""
        return ReferenceDeepConvNet._build(self)

    def _build(self):
        built, masks = [], self.dropout_masks or {}
        for kind, *args in ReferenceDeepConvNet.stack.fget(self):
            if kind == "conv":
                w, b, stride, pad = args
                built.append(layers.Convolution(self.params[w], self.params[b], stride, pad))
            elif kind == "relu":
                built.append(layers.Relu())
            elif kind == "pool":
                built.append(layers.Pooling(*args))
            elif kind == "affine":
                built.append(layers.Affine(self.params[args[0]], self.params[args[1]]))
            else:
                dropout = layers.Dropout(self.dropout_ratio)
                dropout.mask = masks.get(args[0])
                built.append(dropout)
        return built

    # ------------------------------------------------------------------ dropout masks

    #: What the trainer (:func:`fastnum.train_step.step_gradient`, :mod:`fastnum.checkpoint`)
    #: reads of a network with chapter 6 layers: one dropout mask set per step from
    #: ``dropout_rng`` (whose state the checkpoint keeps); no batch-norm statistics.
    chapter6 = True
    use_dropout = True

    @property
    def running_stats(self):
        """Batch-norm running statistics: none (the book's chapter 8 net has no batch norm)."""
        return {}

    def update_running_stats(self, x, masks=None):
        """Nothing to move: the net has no batch norm (the trainer calls it every step)."""

    @property
    def dropout_masks(self):
        """The current training step's masks {"mask1": (N, hidden), "mask2": (N, output)} of
        0.0 / 1.0 (None before the first set is drawn)."""
        return self._step_state["masks"]

    @dropout_masks.setter
    def dropout_masks(self, masks):
        self._step_state["masks"] = masks

    def new_dropout_masks(self, batch_size):
        """Draw the next training step's masks (kept units 1.0) and keep them."""
        widths = (self.params[f"W{N_CONV + 1}"].shape[1], self.params[f"W{N_CONV + 2}"].shape[1])
        self.dropout_masks = layers.draw_dropout_masks(
            self.dropout_rng,
            self.dropout_ratio,
            batch_size,
            dict(zip(MASK_NAMES, widths, strict=True)),
        )
        return self.dropout_masks

    def current_dropout_masks(self, batch_size):
        """The current step's masks; drawn first when there are none for this batch size."""
        masks = self.dropout_masks
        if masks is None or any(m.shape[0] != batch_size for m in masks.values()):
            masks = ReferenceDeepConvNet.new_dropout_masks(self, batch_size)
        return masks

    # ------------------------------------------------------------------ the book's methods
    # They name ReferenceDeepConvNet explicitly instead of going through self: a subclass's
    # overrides (validation, numba dispatch) must not leak into the oracle.

    def _forward(self, x, train_flg):
        """Logits of the layers built over the current parameters, and the layers."""
        masks = ReferenceDeepConvNet.current_dropout_masks(self, len(x)) if train_flg else {}
        built = ReferenceDeepConvNet._build(self)
        for spec, layer in zip(ReferenceDeepConvNet.stack.fget(self), built, strict=True):
            if spec[0] == "dropout":
                x = layer.forward(x, train_flg, mask=masks.get(spec[1]))
            else:
                x = layer.forward(x)
        return x, built

    def predict(self, x, train_flg=False):
        """Class probabilities of a batch (dropout scales each unit by the keep rate unless
        ``train_flg``, which applies the current masks, as in the book)."""
        return reference.softmax(ReferenceDeepConvNet._forward(self, x, train_flg)[0])

    def loss(self, x, t):
        """Batch-mean cross-entropy (with the book's 1e-7 guard) in training mode."""
        return self.last_layer.forward(ReferenceDeepConvNet._forward(self, x, True)[0], t)

    def accuracy(self, x, t, batch_size=ACCURACY_BATCH):
        """Fraction of samples whose arg-max class equals the label, in test mode."""
        t = t.argmax(axis=1) if t.ndim == 2 else t
        hits = 0
        for i in range(0, len(x), batch_size):
            y = ReferenceDeepConvNet.predict(self, x[i : i + batch_size])
            hits += int(np.sum(y.argmax(axis=1) == t[i : i + batch_size]))
        return hits / len(x)

    def gradient(self, x, t):
        """Backprop through the book's layers with the current masks; then draws the next
        step's (the analytic gradient of the unguarded loss, the oracle for checks)."""
        logits, built = ReferenceDeepConvNet._forward(self, x, True)
        last = layers.SoftmaxWithLoss()
        last.forward(logits, t)
        dout = last.backward(1)
        for layer in reversed(built):
            dout = layer.backward(dout)
        grads, k = {}, 0
        for layer in built:
            if isinstance(layer, (layers.Convolution, layers.Affine)):
                k += 1
                grads[f"W{k}"], grads[f"b{k}"] = layer.dW, layer.db
        ReferenceDeepConvNet.new_dropout_masks(self, len(x))
        return {name: grads[name] for name in ReferenceDeepConvNet.param_names.fget(self)}

    def _fixed_mask_loss(self, x, t, masks):
        """The training loss under ``masks``, whatever the current ones are."""
        saved, self.dropout_masks = self.dropout_masks, masks
        try:
            return ReferenceDeepConvNet.loss(self, x, t)
        finally:
            self.dropout_masks = saved

    def numerical_gradient(self, x, t, h=reference.H):
        """Central differences of every parameter under one new set of masks (hours at the
        book's size: the oracle for small networks)."""
        masks = ReferenceDeepConvNet.new_dropout_masks(self, len(x))
        loss = lambda _: ReferenceDeepConvNet._fixed_mask_loss(self, x, t, masks)  # noqa: E731
        names = ReferenceDeepConvNet.param_names.fget(self)
        return {k: reference.numerical_gradient(loss, self.params[k], h) for k in names}

    def numerical_gradient_at(self, x, t, indices, h=reference.H):
        """Central differences at the flat ``indices[name]``, under one new set of masks."""
        masks = ReferenceDeepConvNet.new_dropout_masks(self, len(x))
        loss = lambda _: ReferenceDeepConvNet._fixed_mask_loss(self, x, t, masks)  # noqa: E731
        return {
            name: reference.numerical_gradient_at(loss, self.params[name], flat, h)
            for name, flat in indices.items()
        }


def _check_conv_params(conv_params):
    """The six convolutions' dicts, each completed with the book's values for its slot."""
    return tuple(
        _check_conv_param(c, f"conv_param_{k + 1}", DEFAULT_CONV_PARAMS[k])
        for k, c in enumerate(conv_params)
    )


class DeepConvNet(SampledGradient, NetworkFrontend, ReferenceDeepConvNet):
    """The book's chapter 8 deep convolutional network, with the numba engine behind it.

    (conv relu conv relu pool) x 3 with 16, 16, 32, 32, 64, 64 filters of 3x3, then
    affine relu dropout, affine dropout, softmax-with-loss: 123,552 parameters at
    the book's sizes.

    Parameters
    ----------
    input_dim : tuple of int, default (1, 28, 28)
        (channels, height, width) of each input image.  Each pooling halves the
        size, so height and width must tile: 28 -> 28 -> 14 -> 16 -> 8 -> 4 with the
        book's pads (other sizes too, e.g. 12 -> 12 -> 6 -> 8 -> 4 -> 2).
    conv_param_1, ..., conv_param_6 : dict, optional
        ``filter_num``, ``filter_size``, ``pad``, ``stride`` of each convolution;
        missing keys (or a missing dict) take the book's values: 16, 16, 32, 32, 64,
        64 filters of 3x3, stride 1, pad 1 (pad 2 for the fourth).
    hidden_size : int, default 50
        Width of the hidden affine layer.
    output_size : int, default 10
        Number of classes, at least 2.
    dropout_ratio : float, default 0.5
        Probability of dropping a unit, in [0, 1) (the book hard-codes 0.5).  The
        masks are drawn from the network's seeded generator, one set per training
        step: :meth:`numerical_gradient` draws a new set and uses it for every
        evaluation; :meth:`loss` and :meth:`gradient` use the current set (drawing
        one when there is none for the batch size), and :meth:`gradient` then draws
        the next step's.
    seed : int or None
        Seed of ``np.random.default_rng``: weights W1..W8 in order (He's
        ``sqrt(2 / fan_in)``, biases zero), then the dropout masks.
    backend : {"auto", "numba", "numpy"} or None, default "auto"
        Where ``predict``, ``loss`` and ``numerical_gradient`` run.  ``None``
        reads ``$FASTNUM_BACKEND``; ``auto`` uses numba when it compiles.
    strategy : {"delta", "full"}, default "delta"
        How the numba numerical gradient evaluates perturbed losses (``delta``
        falls back to ``full`` for stacks the delta kernels do not cover).

    Notes
    -----
    ``layers`` is the book's plain list (built fresh over the current parameters on
    each access) and ``last_layer`` its softmax-with-loss.  ``predict(x, train_flg)``
    returns probabilities, as fastnum's other networks do (the book's returns the
    logits; the arg-max is the same).
    """

    def __init__(
        self,
        input_dim=(1, 28, 28),
        conv_param_1=None,
        conv_param_2=None,
        conv_param_3=None,
        conv_param_4=None,
        conv_param_5=None,
        conv_param_6=None,
        hidden_size=50,
        output_size=10,
        dropout_ratio=0.5,
        seed=None,
        backend="auto",
        strategy=DEFAULT_STRATEGY,
    ):
        input_dim = check_input_dim(input_dim)
        conv_params = _check_conv_params(
            (conv_param_1, conv_param_2, conv_param_3, conv_param_4, conv_param_5, conv_param_6)
        )
        hidden_size = check_int("hidden_size", hidden_size, 1, "the book uses 50.")
        output_size = check_int(
            "output_size", output_size, 2, "a softmax needs at least 2 classes; MNIST has 10."
        )
        dropout_ratio = check_positive("dropout_ratio", dropout_ratio, "the book uses 0.5.", True)
        if dropout_ratio >= 1.0:
            raise ValueError(
                f"dropout_ratio={dropout_ratio!r} must be below 1 (1 drops every unit); "
                "the book uses 0.5."
            )
        super().__init__(input_dim, conv_params, hidden_size, output_size, dropout_ratio, seed)
        self._shapes = {k: v.shape for k, v in self.params.items()}
        self._init_backend(backend, strategy)

    def _checked(self, x, t=None):
        """(params, x) or (params, x, t), validated: the frontend's one check for this net."""
        params = as_shaped_params(self.params, self._shapes)
        params = {k: params[k] for k in self.param_names}
        x = as_image_batch(x, self.input_dim)
        if t is None:
            return params, x
        return params, x, as_labels(t, x.shape[0], self._shapes[f"b{N_CONV + 2}"][0])

    def _keep_masks(self, batch_size):
        """Test mode as masks: every unit times the keep rate, as the book's Dropout scales."""
        keep = 1.0 - self.dropout_ratio
        return {
            name: np.full((batch_size, self._shapes[f"b{k}"][0]), keep)
            for name, k in zip(MASK_NAMES, (N_CONV + 1, N_CONV + 2), strict=True)
        }

    def predict(self, x, train_flg=False):
        """Class probabilities of a batch (the softmax of the book's ``predict``).

        Parameters
        ----------
        x : array (batch, C, H, W)
        train_flg : bool, default False
            Dropout with the current masks (drawn when there are none for this batch
            size); False scales each unit by the keep rate ``1 - dropout_ratio``.

        Returns
        -------
        ndarray (batch, output_size)
        """
        params, x = self._checked(x)
        return self.predict_trusted(x, params, train_flg)

    def predict_trusted(self, x, params=None, train_flg=False):
        """:meth:`predict` for a validated ``x`` (and ``params``)."""
        if self.backend != "numba":
            return self._oracle(params).predict(x, train_flg)
        from fastnum import engine

        params = self.params if params is None else params
        masks = self.current_dropout_masks(len(x)) if train_flg else self._keep_masks(len(x))
        return engine.predict(self.stack, params, x, masks)

    def _numba_loss(self, x, t, params):
        from fastnum import engine

        masks = self.current_dropout_masks(len(x))
        return engine.loss(self.stack, params, x, t, masks=masks)

    def accuracy(self, x, t, batch_size=ACCURACY_BATCH):
        """Fraction of samples classified correctly, in test mode.

        Parameters
        ----------
        x : array (batch, C, H, W)
        t : array (batch,) of int labels, or (batch, output_size) one-hot
        batch_size : int, default 100
            Images per forward pass (the book's chunking; the result does not depend on it).

        Returns
        -------
        float
        """
        batch_size = check_int("batch_size", batch_size, 1, "the book uses 100.")
        params, x, t = self._checked(x, t)
        return self.accuracy_trusted(x, t, params, batch_size)

    def accuracy_trusted(self, x, t, params=None, batch_size=ACCURACY_BATCH):
        """:meth:`accuracy` for validated ``x``, integer labels ``t`` and ``params``."""
        hits = 0
        for i in range(0, len(x), batch_size):
            y = self.predict_trusted(x[i : i + batch_size], params)
            hits += int(np.sum(y.argmax(axis=1) == t[i : i + batch_size]))
        return hits / len(x)

    def _numba_numerical_gradient(self, x, t, h, strategy, params, scheduler=None):
        from fastnum.distributed import gradient_function

        masks = self.new_dropout_masks(len(x))  # one set for the whole gradient
        return gradient_function(scheduler)(self.stack, params, x, t, h, strategy, masks=masks)

    def _gradient_masks(self, batch_size):
        return self.new_dropout_masks(batch_size)
