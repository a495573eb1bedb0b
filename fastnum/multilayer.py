"""A deeper version of the book's network: any number of hidden layers, sigmoid or relu.

:class:`ReferenceMultiLayerNet` is the oracle (and the ``numpy`` backend): short,
literal, built from :mod:`fastnum.reference`'s functions, validating nothing.
:class:`MultiLayerNet` validates its inputs and runs ``predict``, ``loss`` and
``numerical_gradient`` through :mod:`fastnum.engine` for the ``numba`` backend.
"""

from __future__ import annotations

import numbers

import numpy as np

from fastnum import layers, reference
from fastnum._frontend import NetworkFrontend
from fastnum._validate import (
    as_float_batch,
    as_labels,
    as_network_params,
    as_shaped_params,
    check_choice,
    check_int,
    check_positive,
)
from fastnum.activations import ACTIVATIONS, check_weight_init_std, layer_init_std
from fastnum.backend import DEFAULT_STRATEGY
from fastnum.constants import H


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
        weight_decay_lambda=0.0,
        use_dropout=False,
        dropout_ratio=0.5,
        use_batchnorm=False,
    ):
        rng = np.random.default_rng(seed)
        sizes = [input_size, *hidden_sizes, output_size]
        self.activation = activation
        self.params = {}
        for k in range(1, len(sizes)):
            std = layer_init_std(weight_init_std, sizes[k - 1])
            self.params[f"W{k}"] = std * rng.standard_normal((sizes[k - 1], sizes[k]))
            self.params[f"b{k}"] = np.zeros(sizes[k])
        # Chapter 6: batch norm's gamma 1 and beta 0 after every hidden affine layer, its
        # running statistics (test mode), dropout masks (one set per training step, drawn
        # from the same seeded generator) and the weight decay's lambda.
        self.use_batchnorm, self.use_dropout = bool(use_batchnorm), bool(use_dropout)
        self.dropout_ratio, self.weight_decay_lambda = dropout_ratio, weight_decay_lambda
        self.running_stats = {}  # k -> (running_mean, running_var) of BatchNorm k
        if self.use_batchnorm:
            for k in range(1, len(sizes) - 1):
                self.params[f"gamma{k}"] = np.ones(sizes[k])
                self.params[f"beta{k}"] = np.zeros(sizes[k])
                self.running_stats[k] = (np.zeros(sizes[k]), np.zeros(sizes[k]))
        self.dropout_rng = rng
        # The current step's masks {"mask1": (N, d1) of 0.0/1.0, ...} in a dict that the
        # shallow copies the public network makes for converted parameters share.
        self._step_state = {"masks": None}

    @property
    def dropout_masks(self):
        """The current training step's dropout masks (None before the first one is drawn)."""
        return self._step_state["masks"]

    @dropout_masks.setter
    def dropout_masks(self, masks):
        self._step_state["masks"] = masks

    @property
    def n_layers(self):
        """Number of affine layers (hidden layers + 1)."""
        return sum(1 for k in self.params if k[0] == "W" and k[1:].isdigit())

    @property
    def param_names(self):
        """("W1", "b1", ..., "WL", "bL") in layer order, with ("gamma1", "beta1") after
        ("W1", "b1") and so on when the network normalises."""
        names = []
        for k in range(1, self.n_layers + 1):
            names += [f"W{k}", f"b{k}"]
            if getattr(self, "use_batchnorm", False) and k < self.n_layers:
                names += [f"gamma{k}", f"beta{k}"]
        return tuple(names)

    @property
    def chapter6(self):
        """True when batch norm, dropout or weight decay is on (then the book's layers run)."""
        return bool(
            getattr(self, "use_batchnorm", False)
            or getattr(self, "use_dropout", False)
            or getattr(self, "weight_decay_lambda", 0)
        )

    @property
    def stack(self):
        """The layers as a stack of :mod:`fastnum.engine`: affine, [batchnorm], activation,
        [dropout], ..., affine (the book's order)."""
        specs = []
        for k in range(1, self.n_layers + 1):
            specs.append(("affine", f"W{k}", f"b{k}"))
            if k == self.n_layers:
                break
            if getattr(self, "use_batchnorm", False):
                specs.append(("batchnorm", f"gamma{k}", f"beta{k}"))
            specs.append((self.activation,))
            if getattr(self, "use_dropout", False):
                specs.append(("dropout", f"mask{k}"))
        return tuple(specs)

    # ------------------------------------------------------------------ chapter 6 (book layers)

    def new_dropout_masks(self, batch_size):
        """Draw the next training step's dropout masks (kept units 1.0) and keep them."""
        if not self.use_dropout:
            self.dropout_masks = {}
            return self.dropout_masks
        widths = {f"mask{k}": self.params[f"W{k}"].shape[1] for k in range(1, self.n_layers)}
        self.dropout_masks = layers.draw_dropout_masks(
            self.dropout_rng, self.dropout_ratio, batch_size, widths
        )
        return self.dropout_masks

    def current_dropout_masks(self, batch_size):
        """The current step's masks; drawn first when there are none for this batch size."""
        masks = self.dropout_masks
        if masks is None or any(m.shape[0] != batch_size for m in masks.values()):
            masks = ReferenceMultiLayerNet.new_dropout_masks(self, batch_size)
        return masks

    def _book_forward(self, x, train_flg, masks=None):
        """Logits through the book's layers (fresh over the current params), and the layers."""
        p, L, built = self.params, self.n_layers, []
        for k in range(1, L + 1):
            built.append(("affine", k, layers.Affine(p[f"W{k}"], p[f"b{k}"])))
            if k == L:
                break
            if self.use_batchnorm:
                mean, var = self.running_stats.get(k, (None, None))
                bn = layers.BatchNormalization(p[f"gamma{k}"], p[f"beta{k}"], 0.9, mean, var)
                built.append(("batchnorm", k, bn))
            act = layers.Relu() if self.activation == "relu" else layers.Sigmoid()
            built.append(("act", k, act))
            if self.use_dropout:
                built.append(("dropout", k, layers.Dropout(self.dropout_ratio)))
        for kind, k, layer in built:
            if kind == "dropout":
                x = layer.forward(x, train_flg, mask=masks[f"mask{k}"] if train_flg else None)
            elif kind == "batchnorm":
                x = layer.forward(x, train_flg)
            else:
                x = layer.forward(x)
        return x, built

    def _weight_decay(self):
        """0.5 * lambda * sum(W**2) over W1..WL, layer by layer, as the book adds it."""
        decay = 0.0
        for k in range(1, self.n_layers + 1):
            if self.weight_decay_lambda:
                decay += 0.5 * self.weight_decay_lambda * np.sum(self.params[f"W{k}"] ** 2)
        return decay

    def _book_loss(self, x, t, train_flg, masks):
        logits, _ = ReferenceMultiLayerNet._book_forward(self, x, train_flg, masks)
        data = layers.SoftmaxWithLoss().forward(logits, t)
        return data + ReferenceMultiLayerNet._weight_decay(self)

    def _keep_running_stats(self, built):
        """Store the running statistics a training forward pass moved."""
        for kind, k, layer in built:
            if kind == "batchnorm":
                self.running_stats[k] = (layer.running_mean, layer.running_var)

    def update_running_stats(self, x, masks=None):
        """One training forward pass of the batch, for batch norm's running statistics."""
        if self.use_batchnorm:
            masks = masks if masks is not None else self.current_dropout_masks(len(x))
            _, built = ReferenceMultiLayerNet._book_forward(self, x, True, masks)
            ReferenceMultiLayerNet._keep_running_stats(self, built)

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

    def predict(self, x, train_flg=False):
        """Class probabilities for a batch ``x`` (batch norm and dropout in test mode unless
        ``train_flg``, as in the book)."""
        if ReferenceMultiLayerNet.chapter6.fget(self):
            masks = (
                ReferenceMultiLayerNet.current_dropout_masks(self, len(x)) if train_flg else None
            )
            return reference.softmax(
                ReferenceMultiLayerNet._book_forward(self, x, train_flg, masks)[0]
            )
        return reference.softmax(ReferenceMultiLayerNet._forward(self, x)[-1])

    def loss(self, x, t, train_flg=True):
        """Batch-mean cross-entropy (with the book's 1e-7 guard), plus the weight decay.

        In training mode (the default: the loss that is differentiated) batch norm uses
        the batch's statistics and dropout the current masks.
        """
        if ReferenceMultiLayerNet.chapter6.fget(self):
            masks = (
                ReferenceMultiLayerNet.current_dropout_masks(self, len(x)) if train_flg else None
            )
            return ReferenceMultiLayerNet._book_loss(self, x, t, train_flg, masks)
        return reference.cross_entropy_error(ReferenceMultiLayerNet.predict(self, x), t)

    def accuracy(self, x, t):
        """Fraction of samples whose arg-max class equals the label (integer or one-hot)."""
        t = t.argmax(axis=1) if t.ndim == 2 else t
        return float(np.mean(ReferenceMultiLayerNet.predict(self, x).argmax(axis=1) == t))

    def numerical_gradient(self, x, t, h=H):
        """Central-difference gradient of the loss for every parameter.

        With dropout, one new set of masks serves every evaluation of this gradient (and
        a following :meth:`gradient`); batch norm's running statistics move once.
        """
        if ReferenceMultiLayerNet.chapter6.fget(self):
            masks = ReferenceMultiLayerNet.new_dropout_masks(self, len(x))
            loss = lambda _: ReferenceMultiLayerNet._book_loss(self, x, t, True, masks)  # noqa: E731
            grads = {
                k: reference.numerical_gradient(loss, self.params[k], h) for k in self.param_names
            }
            ReferenceMultiLayerNet.update_running_stats(self, x, masks)
            return grads
        loss = lambda _: ReferenceMultiLayerNet.loss(self, x, t)  # noqa: E731 - the book's idiom
        return {k: reference.numerical_gradient(loss, self.params[k], h) for k in self.param_names}

    def _book_gradient(self, x, t):
        masks = ReferenceMultiLayerNet.current_dropout_masks(self, len(x))
        logits, built = ReferenceMultiLayerNet._book_forward(self, x, True, masks)
        last = layers.SoftmaxWithLoss()
        last.forward(logits, t)
        dout, grads, lam = last.backward(1), {}, self.weight_decay_lambda
        for _, _, layer in reversed(built):
            dout = layer.backward(dout)
        for kind, k, layer in built:
            if kind == "affine":
                grads[f"W{k}"] = layer.dW + lam * self.params[f"W{k}"] if lam else layer.dW
                grads[f"b{k}"] = layer.db
            elif kind == "batchnorm":
                grads[f"gamma{k}"], grads[f"beta{k}"] = layer.dgamma, layer.dbeta
        ReferenceMultiLayerNet._keep_running_stats(self, built)
        if self.use_dropout:  # the next training step drops other units
            ReferenceMultiLayerNet.new_dropout_masks(self, len(x))
        return {k: grads[k] for k in self.param_names}

    def gradient(self, x, t):
        """Analytic backprop gradient (ignores the log guard), the oracle for gradient checks.

        With dropout it uses the current masks (those of the last :meth:`loss` or
        :meth:`numerical_gradient`), then draws the next step's.
        """
        if ReferenceMultiLayerNet.chapter6.fget(self):
            return ReferenceMultiLayerNet._book_gradient(self, x, t)
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
        Dropout masks are drawn from the same generator afterwards.
    backend : {"auto", "numba", "numpy"} or None
        Where ``predict``, ``loss`` and ``numerical_gradient`` run.  ``None``
        reads ``$FASTNUM_BACKEND``; ``auto`` uses numba when it compiles.
    strategy : {"delta", "full"}, default "delta"
        How the numba numerical gradient evaluates perturbed losses.
    weight_decay_lambda : float, default 0.0
        The book's weight decay: ``0.5 * lambda * sum(W**2)`` over W1..WL is added
        to the loss (not to biases, gamma or beta).
    use_dropout : bool, default False
        Dropout after every hidden activation.
    dropout_ratio : float, default 0.5
        Probability of dropping a unit, in [0, 1).  The masks are drawn from the
        network's seeded generator, one set per training step:
        :meth:`numerical_gradient` draws a new set and uses it for every evaluation;
        :meth:`loss` and :meth:`gradient` use the current set (drawing one when there is
        none for the batch size), and :meth:`gradient` then draws the next step's.
        So ``numerical_gradient`` then ``gradient`` see the same masks, and so do
        ``loss`` then ``gradient`` (as :func:`fastnum.gradcheck` calls them).
    use_batchnorm : bool, default False
        Batch normalisation (``gamma1``, ``beta1``, ...: ones and zeros) between every
        hidden affine layer and its activation, in training mode for :meth:`loss` and
        the gradients, with running statistics (momentum 0.9, moved once per gradient)
        for test mode (:meth:`predict`, :meth:`accuracy`).

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
        weight_decay_lambda=0.0,
        use_dropout=False,
        dropout_ratio=0.5,
        use_batchnorm=False,
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
        weight_decay_lambda = check_positive(
            "weight_decay_lambda", weight_decay_lambda, "the book's chapter 6 uses 0.1.", True
        )
        dropout_ratio = check_positive("dropout_ratio", dropout_ratio, "the book uses 0.5.", True)
        if dropout_ratio >= 1.0:
            raise ValueError(
                f"dropout_ratio={dropout_ratio!r} must be below 1 (1 drops every unit); "
                "the book uses 0.5."
            )
        for name, flag in (("use_dropout", use_dropout), ("use_batchnorm", use_batchnorm)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name}={flag!r} must be True or False.")
        super().__init__(
            input_size,
            hidden_sizes,
            output_size,
            activation,
            weight_init_std,
            seed,
            weight_decay_lambda,
            use_dropout,
            dropout_ratio,
            use_batchnorm,
        )
        self._init_backend(backend, strategy)

    @property
    def sizes(self):
        """Layer widths (input, hidden..., output)."""
        L = self.n_layers
        return tuple(self.params[f"W{k}"].shape[0] for k in range(1, L + 1)) + (
            self.params[f"W{L}"].shape[1],
        )

    def _checked(self, x, t=None):
        """(params, x) or (params, x, t), validated; gamma and beta as wide as their layer."""
        if not self.use_batchnorm:
            return super()._checked(x, t)
        L = self.n_layers
        dense = as_network_params(self.params, [f"{p}{k}" for k in range(1, L + 1) for p in "Wb"])
        shapes = {
            f"{p}{k}": (dense[f"W{k}"].shape[1],) for k in range(1, L) for p in ("gamma", "beta")
        }
        params = {**dense, **as_shaped_params(self.params, shapes)}
        params = {k: params[k] for k in self.param_names}
        x = as_float_batch(x, params["W1"].shape[0])
        if t is None:
            return params, x
        return params, x, as_labels(t, x.shape[0], params[f"b{L}"].shape[0])

    # Chapter 6: training-mode loss and gradients on the engine with the current masks and
    # lambda; test mode (running statistics, dropout's keep rate) in NumPy.

    def predict(self, x, train_flg=False):
        """Class probabilities for a batch (test mode unless ``train_flg``, as in the book).

        Parameters
        ----------
        x : array (batch, input_size)
        train_flg : bool, default False
            Batch norm with the batch's statistics and dropout with the current masks.

        Returns
        -------
        ndarray (batch, output_size)
        """
        params, x = self._checked(x)
        return self.predict_trusted(x, params, train_flg)

    def predict_trusted(self, x, params=None, train_flg=False):
        """:meth:`predict` for a validated ``x`` (and ``params``)."""
        if not self.chapter6:
            return super().predict_trusted(x, params)
        if train_flg and self.backend == "numba":
            from fastnum import engine

            masks = self.current_dropout_masks(len(x))
            return engine.predict(self.stack, self.params if params is None else params, x, masks)
        return self._oracle(params).predict(x, train_flg)

    def loss(self, x, t, train_flg=True):
        """Batch-mean cross-entropy with the book's 1e-7 guard, plus the weight decay.

        Parameters
        ----------
        x : array (batch, input_size)
        t : array (batch,) of int labels, or (batch, output_size) one-hot
        train_flg : bool, default True
            The training loss (batch statistics, the current dropout masks), the one
            the gradients differentiate; False: test mode.

        Returns
        -------
        float
        """
        params, x, t = self._checked(x, t)
        return self.loss_trusted(x, t, params, train_flg)

    def loss_trusted(self, x, t, params=None, train_flg=True):
        """:meth:`loss` for validated ``x``, integer labels ``t`` and ``params``."""
        if not self.chapter6:
            return super().loss_trusted(x, t, params)
        if train_flg and self.backend == "numba":
            from fastnum import engine

            return engine.loss(
                self.stack,
                self.params if params is None else params,
                x,
                t,
                masks=self.current_dropout_masks(len(x)),
                weight_decay=self.weight_decay_lambda,
            )
        return self._oracle(params).loss(x, t, train_flg)

    def _numba_numerical_gradient(self, x, t, h, strategy, params, scheduler=None):
        if not self.chapter6:
            return super()._numba_numerical_gradient(x, t, h, strategy, params, scheduler)
        from fastnum.distributed import gradient_function

        masks = self.new_dropout_masks(len(x))  # one set for the whole gradient
        grads = gradient_function(scheduler)(
            self.stack,
            params,
            x,
            t,
            h,
            strategy,
            masks=masks,
            weight_decay=self.weight_decay_lambda,
        )
        self._oracle(params).update_running_stats(x, masks)
        return grads
