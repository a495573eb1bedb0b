"""The settings of a training run: :class:`TrainConfig`, its choices and the book's defaults.

A config is checked whole when it is made (each bad value named with its fix), so
:func:`fastnum.train.train` fails before it loads data or touches its output folder.
The networks it can name, and which settings each takes, are the table
:data:`fastnum.train_nets.NETS`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fastnum._validate import (
    ParameterError,
    ParameterTypeError,
    Setting,
    check_choice,
    check_int,
    check_positive,
    check_step,
)
from fastnum.activations import ACTIVATIONS as _ACTIVATION_TABLE
from fastnum.activations import WEIGHT_INITS, check_weight_init_std
from fastnum.backend import BACKENDS, DEFAULT_STRATEGY, check_strategy
from fastnum.estimators import DISTRIBUTIONS, ESTIMATORS, check_estimator_options
from fastnum.optimizers import OPTIMIZERS, make_optimizer
from fastnum.train_nets import NETS as NET_KINDS

__all__ = [
    "ACTIVATIONS",
    "GRADS",
    "HYPERPARAMETERS",
    "NETS",
    "OPTIMIZER_NAMES",
    "SGD_LR",
    "SPSA_DISTRIBUTIONS",
    "WEIGHT_INIT_NAMES",
    "TrainConfig",
]

#: The gradient estimators of fastnum.estimators: numerical, forward, spsa, backprop.
GRADS = tuple(ESTIMATORS)
SPSA_DISTRIBUTIONS = DISTRIBUTIONS
ACTIVATIONS = tuple(_ACTIVATION_TABLE)  # fastnum.activations' names
#: The networks of fastnum.train_nets.NETS: dense (TwoLayerNet, or MultiLayerNet with
#: hidden_sizes) and simpleconv (the book's chapter 7 CNN).
NETS = tuple(NET_KINDS)
OPTIMIZER_NAMES = tuple(OPTIMIZERS)
WEIGHT_INIT_NAMES = tuple(WEIGHT_INITS)
#: The learning rate of plain SGD in training: the book's train_neuralnet.py (its SGD
#: class alone defaults to 0.01); the other optimizers default to their class's lr.
SGD_LR = 0.1
#: The optimizers' hyperparameters besides lr; None in a config means the book's default.
HYPERPARAMETERS = ("momentum", "decay_rate", "beta1", "beta2")


def _as_hidden_sizes(value):
    # A tuple, whatever sequence came in (a list from JSON), so that configs compare equal.
    if value is None:
        return None
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise TypeError(
            f"hidden_sizes={value!r} must be a sequence of layer widths such as "
            "(100, 50), or None for one hidden layer of hidden_size."
        )
    sizes = tuple(value)
    for i, size in enumerate(sizes):
        check_int(f"hidden_sizes[{i}]", size, 1, "layer widths are positive integers.")
    return tuple(int(size) for size in sizes)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; the defaults are the book's.

    Parameters
    ----------
    grad : {"numerical", "forward", "spsa", "backprop"}, default "numerical"
        How gradients are computed (:mod:`fastnum.estimators`): the book's
        central differences (chapter 4), forward differences (one evaluation
        per parameter plus one), SPSA (central differences along
        ``directions`` random directions) or backpropagation (chapter 5).
    iters : int, default 10000
        Number of SGD updates.
    batch_size : int, default 100
        Samples per update, drawn with replacement as ``np.random.choice`` does.
    lr : float or None, default None
        Learning rate; None takes the optimizer's default: 0.1 for plain SGD (the
        book's ``train_neuralnet.py``), otherwise the book's default of the
        optimizer class (0.01, Adam 0.001).  Stored resolved, so
        ``dataclasses.replace(config, optimizer=...)`` keeps the old rate: make
        a new config to get the other optimizer's default.
    hidden_size : int, default 50
        Width of the hidden layer.
    weight_init_std : float or str, default 0.01
        Standard deviation of the Gaussian initial weights, or, as the book's
        multi-layer net takes it, a name giving each layer sqrt(gain / n_in)
        (n_in the width of the layer before): "relu"/"he" (gain 2) or
        "sigmoid"/"xavier" (gain 1).  Names are for the dense networks.
    h : float, default 1e-4
        Central-difference step of the numerical gradient.
    seed : int, default 0
        Seeds the initial weights (exactly as ``TwoLayerNet(..., seed=seed)``)
        and, through a child of ``np.random.SeedSequence(seed)``, the batch
        sampling, so that equal configs give bit-identical runs.
    backend : {"auto", "numba", "numpy"} or None, default None
        Where the network's heavy parts run.  None reads ``$FASTNUM_BACKEND``
        (``auto`` when unset); ``auto`` picks numba when it compiles.
    strategy : {"delta", "full"}, default "delta"
        How the numba numerical gradient evaluates perturbed losses.
    threads : int or None
        Threads for the numba kernels; None keeps numba's default.
    train_size, test_size : int or None
        Use only the first ``train_size`` training / ``test_size`` test
        samples (for quick runs); None uses all.
    hidden_sizes : tuple of int or None
        Widths of several hidden layers, e.g. ``(100, 50)``; when given it
        overrides ``hidden_size`` and trains a
        :class:`fastnum.multilayer.MultiLayerNet` instead of ``TwoLayerNet``.
    activation : {"sigmoid", "relu"}, default "sigmoid"
        Activation of the hidden layers; "relu" needs ``hidden_sizes``.
    net : {"dense", "simpleconv"}, default "dense"
        "simpleconv" trains the book's chapter 7 :class:`fastnum.SimpleConvNet`
        (30 5x5 filters, relu, 2x2 max pooling, ``hidden_size`` relu units; the
        book uses 100) on (N, 1, 28, 28) images instead of a dense network.
    directions : int, default 1
        SPSA's number of random directions K per step (``grad="spsa"`` only).
        Step ``i``'s directions are drawn from ``SeedSequence([seed, i])``, so a
        resumed run draws the same ones.
    spsa_distribution : {"rademacher", "gaussian"}, default "rademacher"
        SPSA's direction entries (``grad="spsa"`` only).
    optimizer : {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"}, default "sgd"
        The update rule, from :mod:`fastnum.optimizers` (the book's chapter 6).
    momentum, decay_rate, beta1, beta2 : float or None
        The optimizer's hyperparameters: ``momentum`` for momentum and nesterov,
        ``decay_rate`` for rmsprop, ``beta1`` and ``beta2`` for adam.  None takes
        the book's default (0.9, 0.99, 0.9, 0.999), stored resolved; a value for
        an optimizer that does not use it is refused.
    use_batchnorm : bool, default False
        The book's chapter 6 batch normalisation between every hidden affine layer
        and its activation (needs ``hidden_sizes``: a MultiLayerNet).  Its running
        statistics are in the checkpoint.
    dropout_ratio : float or None, default None
        Dropout after every hidden activation with this probability of dropping a
        unit, in [0, 1) (the book uses 0.5; needs ``hidden_sizes``); None: no
        dropout.  Each step draws one set of masks from the network's seeded
        generator, whatever ``grad``; the generator's state is in the checkpoint.
    weight_decay_lambda : float, default 0.0
        The book's weight decay: ``0.5 * lambda * sum(W**2)`` over the weight
        matrices is added to the loss every gradient differentiates (needs
        ``hidden_sizes``).
    """

    grad: str = "numerical"
    iters: int = 10000
    batch_size: int = 100
    lr: float | None = None
    hidden_size: int = 50
    weight_init_std: float | str = 0.01
    h: float = 1e-4
    seed: int = 0
    backend: str | None = None
    strategy: str = DEFAULT_STRATEGY
    threads: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    hidden_sizes: tuple[int, ...] | None = None
    activation: str = "sigmoid"
    net: str = "dense"
    optimizer: str = "sgd"
    momentum: float | None = None
    decay_rate: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    directions: int = 1
    spsa_distribution: str = "rademacher"
    use_batchnorm: bool = False
    dropout_ratio: float | None = None
    weight_decay_lambda: float = 0.0

    def __post_init__(self):
        check_choice("grad", self.grad, GRADS)
        check_choice("spsa_distribution", self.spsa_distribution, SPSA_DISTRIBUTIONS)
        check_estimator_options(self.grad, 1e-4, self.directions, self.spsa_distribution)
        if self.grad != "spsa" and (self.directions, self.spsa_distribution) != (
            1,
            "rademacher",
        ):
            raise ValueError(
                f"directions={self.directions!r} and spsa_distribution="
                f"{self.spsa_distribution!r} are options of grad='spsa', not of "
                f"grad={self.grad!r}; drop them, or train with grad='spsa'."
            )
        check_int("iters", self.iters, 1, "the book uses 10000.")
        check_int("batch_size", self.batch_size, 1, "the book uses 100.")
        self._resolve_optimizer()
        check_int("hidden_size", self.hidden_size, 1, "the book uses 50.")
        object.__setattr__(self, "weight_init_std", check_weight_init_std(self.weight_init_std))
        check_step(self.h)  # also refuses a step too small to move the loss
        check_int("seed", self.seed, 0, "pass a non-negative integer such as 0.")
        if self.backend is not None:  # None: $FASTNUM_BACKEND, checked when a run starts
            check_choice("backend", self.backend, BACKENDS)
        check_strategy(self.strategy)
        check_int("threads", self.threads, 1, "pass a positive count or None.", optional=True)
        for name in ("train_size", "test_size"):
            check_int(
                name, getattr(self, name), 1, "pass a sample count or None for all.", optional=True
            )
        object.__setattr__(self, "hidden_sizes", _as_hidden_sizes(self.hidden_sizes))
        check_choice("activation", self.activation, ACTIVATIONS)
        if self.activation != "sigmoid" and self.hidden_sizes is None:
            raise ParameterError(
                "activation",
                "{name}={value!r} needs {hidden_sizes} (the book's TwoLayerNet is sigmoid "
                "only); pass e.g. {example}.",
                value=self.activation,
                example=Setting("hidden_sizes", (50,)),
            )
        self._check_chapter6()
        check_choice("net", self.net, NETS)
        NET_KINDS[self.net].check(self)  # what this network cannot take
        self._to_builtin_types()

    def _check_chapter6(self):
        # The values alone; whether the network has such layers is its NetKind's check.
        if not isinstance(self.use_batchnorm, bool | np.bool_):
            raise ParameterTypeError(
                "use_batchnorm", "{name}={value!r} must be True or False.", value=self.use_batchnorm
            )
        object.__setattr__(self, "use_batchnorm", bool(self.use_batchnorm))
        if self.dropout_ratio is not None:
            ratio = check_positive(
                "dropout_ratio", self.dropout_ratio, "the book uses 0.5.", allow_zero=True
            )
            if ratio >= 1:
                raise ParameterError(
                    "dropout_ratio",
                    "{name}={value!r} must be below 1 (it is the probability of dropping a "
                    "unit: 1 drops them all); the book uses 0.5.",
                    value=self.dropout_ratio,
                )
            object.__setattr__(self, "dropout_ratio", ratio)
        lam = check_positive(
            "weight_decay_lambda",
            self.weight_decay_lambda,
            "the book's chapter 6 uses 0.1 (0: no weight decay).",
            allow_zero=True,
        )
        object.__setattr__(self, "weight_decay_lambda", lam)

    def _resolve_optimizer(self):
        # None -> the book's default, so that the stored config says what ran; a
        # hyperparameter the optimizer ignores is refused rather than silently unused.
        check_choice("optimizer", self.optimizer, OPTIMIZER_NAMES)
        takes = OPTIMIZERS[self.optimizer].defaults()
        for name in HYPERPARAMETERS:
            value = getattr(self, name)
            if name in takes and value is None:
                object.__setattr__(self, name, takes[name])
            elif name not in takes and value is not None:
                # Class names: "momentum" alone would read as the parameter.
                users = [cls.__name__ for cls in OPTIMIZERS.values() if name in cls.defaults()]
                taken = ", ".join("{" + k + "}" for k in takes)  # fields: parameter names
                raise ParameterError(
                    name,
                    "{name}={value!r} is not used by {optimizer}={chosen!r}, which takes "
                    + taken
                    + "; drop it, or train with {users}.",
                    value=value,
                    chosen=self.optimizer,
                    users=" or ".join(users),
                )
        book_lr = SGD_LR if self.optimizer == "sgd" else takes["lr"]
        if self.lr is None:
            object.__setattr__(self, "lr", book_lr)
        with_what = (
            "" if self.optimizer == "sgd" else f" with {OPTIMIZERS[self.optimizer].__name__}"
        )
        check_positive("lr", self.lr, f"the book uses {book_lr}{with_what}.")
        self.make_optimizer()  # checks the other hyperparameters, naming the bad one

    def make_optimizer(self):
        """A fresh optimizer of this config (its name and hyperparameters).

        Returns
        -------
        fastnum.optimizers.Optimizer
        """
        takes = OPTIMIZERS[self.optimizer].defaults()
        return make_optimizer(self.optimizer, **{k: getattr(self, k) for k in takes})

    def _to_builtin_types(self):
        # NumPy scalars would break json.dumps and make "lr=0.1" compare unequal on resume.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("lr", "h", *HYPERPARAMETERS) and value is not None:
                object.__setattr__(self, field.name, float(value))
            elif isinstance(value, np.integer):
                object.__setattr__(self, field.name, int(value))

    def to_dict(self):
        """Return the config as a plain dict.

        Returns
        -------
        dict
            Field name to value; JSON-serialisable (stored in history.json).
        """
        d = dataclasses.asdict(self)
        if d["hidden_sizes"] is not None:  # a list, as it comes back from JSON on resume
            d["hidden_sizes"] = list(d["hidden_sizes"])
        return d
