"""The book's minibatch SGD training of ``TwoLayerNet`` (chapter 4.5), made resumable.

One function, :func:`train`, runs the loop of the book's ``train_neuralnet.py``::

    for i in range(iters):
        batch = random sample (with replacement) of batch_size training images
        grad = numerical gradient (or forward differences, SPSA, backprop) on the batch
        params -= lr * grad       (or another optimizer of chapter 6, fastnum.optimizers)
        record the loss of the batch at the updated params
        if i % iter_per_epoch == 0: record train and test accuracy on the full sets

and adds what a run of hours needs: input checks with clear errors, a progress
bar, divergence detection, atomic outputs and bit-exact resume from per-epoch
checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fastnum import reference
from fastnum._jit import one_blas_thread
from fastnum._validate import (
    Message,
    ParameterError,
    Setting,
    as_float_batch,
    as_image_batch,
    as_labels,
    check_choice,
    check_int,
    check_positive,
    check_step,
)
from fastnum.backend import (
    BACKENDS,
    DEFAULT_STRATEGY,
    check_strategy,
    describe_backend,
    resolve_backend,
)
from fastnum.estimators import (
    DISTRIBUTIONS,
    ESTIMATORS,
    check_estimator_options,
    estimate_gradient_trusted,
    loss_evaluations,
)
from fastnum.multilayer import ACTIVATIONS as _ACTIVATION_TABLE
from fastnum.multilayer import WEIGHT_INITS, check_weight_init_std, layer_init_std
from fastnum.optimizers import OPTIMIZERS, make_optimizer
from fastnum.progress import NoProgress, Progress
from fastnum.rundir import (
    FORMAT,
    HISTORY,
    RunFolder,
    check_out_dir,
    check_resumable,
    checkpoint_refused,
)

__all__ = [
    "GRADS",
    "OPTIMIZER_NAMES",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "build_net",
    "run_backend",
    "sgd_step",
    "step_seed",
    "train",
]

#: The gradient estimators of fastnum.estimators: numerical, forward, spsa, backprop.
GRADS = tuple(ESTIMATORS)
SPSA_DISTRIBUTIONS = DISTRIBUTIONS
ACTIVATIONS = tuple(_ACTIVATION_TABLE)  # those of fastnum.multilayer.MultiLayerNet
# dense: TwoLayerNet, or MultiLayerNet with hidden_sizes; simpleconv: the book's chapter 7 CNN
NETS = ("dense", "simpleconv")
PARAM_NAMES = reference.TwoLayerNet.PARAM_NAMES
MNIST_CLASSES = 10
MAX_CLASSES = 65536  # a label beyond this is a data bug, not a class index
OPTIMIZER_NAMES = tuple(OPTIMIZERS)
WEIGHT_INIT_NAMES = tuple(WEIGHT_INITS)
#: The learning rate of plain SGD in training: the book's train_neuralnet.py (its SGD
#: class alone defaults to 0.01); the other optimizers default to their class's lr.
SGD_LR = 0.1
#: The optimizers' hyperparameters besides lr; None in a config means the book's default.
HYPERPARAMETERS = ("momentum", "decay_rate", "beta1", "beta2")
#: What a checkpoint written before optimizers existed was trained with.
_PLAIN_SGD = {"optimizer": "sgd", **dict.fromkeys(HYPERPARAMETERS)}
#: ... and with which estimator options (before SPSA existed: the defaults).
_OLD_ESTIMATOR = {"directions": 1, "spsa_distribution": "rademacher"}
#: Prefix of the optimizer's state arrays in checkpoint.npz: optimizer.<slot>.<param>.
_STATE_PREFIX = "optimizer."


class TrainingDivergedError(RuntimeError):
    """The loss or the parameters became NaN or infinite.

    Attributes
    ----------
    iteration : int
        1-based iteration whose update produced the non-finite value.
    loss : float
        The loss at that iteration (NaN or inf, or finite if only params blew up).
    lr : float
        The learning rate of the run.
    """

    def __init__(self, message, iteration, loss, lr):
        super().__init__(message)
        self.iteration, self.loss, self.lr = iteration, loss, lr


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
        check_choice("net", self.net, NETS)
        if self.net == "simpleconv" and self.hidden_sizes is not None:
            raise ParameterError(
                "hidden_sizes",
                "{name} is for {dense}; SimpleConvNet has one hidden layer of {hidden_size} "
                "units (the book uses 100).",
                dense=Setting("net", "dense"),
            )
        if self.net == "simpleconv" and isinstance(self.weight_init_std, str):
            raise ParameterError(
                "weight_init_std",
                "{name}={value!r} is for the dense networks; SimpleConvNet takes a number "
                "(the book uses 0.01).",
                value=self.weight_init_std,
            )
        self._to_builtin_types()

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


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    config : TrainConfig
    backend : str
        The backend that ran ("numba" or "numpy").
    net : fastnum.network.TwoLayerNet or fastnum.multilayer.MultiLayerNet
        The trained network (a MultiLayerNet when ``config.hidden_sizes`` is
        given); ``params`` is ``net.params``.
    history : dict
        ``loss`` (one float per iteration), ``epoch_iter`` (1-based iteration
        of each evaluation), ``train_acc`` and ``test_acc`` (per evaluation).
        Deterministic: equal for equal configs, resumed or not.
    timings : dict
        ``epoch_seconds`` (wall time per evaluation period), ``total_seconds`` and
        ``loss_evaluations_per_step`` (of the gradient estimate, see
        :func:`fastnum.estimators.loss_evaluations`; also in history.json).
    final_train_acc, final_test_acc : float
        Accuracy of the final parameters on the full training and test sets.
    out_dir : pathlib.Path or None
    optimizer : fastnum.optimizers.Optimizer or None
        The optimizer at the end of the run (its state included).
    """

    config: TrainConfig
    backend: str
    net: object
    history: dict
    timings: dict
    final_train_acc: float
    final_test_acc: float
    out_dir: Path | None = None
    optimizer: object = None

    @property
    def params(self):
        """The final parameters W1, b1, W2, b2."""
        return self.net.params


class _Data(NamedTuple):
    x_train: np.ndarray
    t_train: np.ndarray
    x_test: np.ndarray
    t_test: np.ndarray
    n_classes: int
    info: dict  # sizes and a content hash, checked on resume


def _n_classes(t_train):
    t = np.asarray(t_train)
    if t.ndim == 2 and t.shape[1] > 1:  # one-hot
        return t.shape[1]
    finite = t[np.isfinite(t)] if t.dtype.kind == "f" else t
    if t.dtype.kind not in "iuf" or finite.size == 0:
        return 2  # as_labels reports the real problem
    top = int(finite.max()) + 1
    if top > MAX_CLASSES:
        raise ValueError(
            f"t_train contains label {finite.max()}; labels must be class indices "
            f"0..n_classes-1 (at most {MAX_CLASSES} classes)."
        )
    return max(top, 2)


def _first(a, size, name, option):
    a = np.asarray(a)
    n = a.shape[0] if a.ndim else 0
    if size is not None and size > n:
        raise ParameterError(
            option,
            "{name}={value} is larger than the {n} samples of {of}; use {name} {n} or less.",
            value=size,
            n=n,
            of=name,
        )
    return a if size is None else a[:size]


def _fingerprint(*arrays):
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return digest.hexdigest()


def _prepare_data(config, data, data_dir):
    """Load (if needed), subset and validate the data; return a :class:`_Data`."""
    if data is None:
        from fastnum.data import load_mnist  # lazy: keeps this module importable without it

        data = load_mnist(
            normalize=True,
            flatten=config.net != "simpleconv",
            one_hot_label=False,
            data_dir=data_dir,
        )
        n_classes = MNIST_CLASSES
    else:
        n_classes = None
    try:
        (x_train, t_train), (x_test, t_test) = data
    except (TypeError, ValueError):
        raise ValueError(
            "data must be ((x_train, t_train), (x_test, t_test)), "
            "as fastnum.data.load_mnist returns."
        ) from None
    n_classes = n_classes or _n_classes(t_train)
    if config.net == "simpleconv":  # (N, C, H, W) images, validated by the network's checks
        x_train = np.asarray(_first(x_train, config.train_size, "x_train", "train_size"))
        if x_train.ndim != 4:
            raise ValueError(
                f"x_train has shape {x_train.shape}; net='simpleconv' needs images "
                "(N, C, H, W), e.g. load_mnist(flatten=False)."
            )
        x_train = as_image_batch(x_train, x_train.shape[1:], name="x_train")
        x_test = as_image_batch(
            _first(x_test, config.test_size, "x_test", "test_size"),
            x_train.shape[1:],
            name="x_test",
        )
    else:
        x_train = as_float_batch(
            _first(x_train, config.train_size, "x_train", "train_size"), name="x_train"
        )
        x_test = as_float_batch(
            _first(x_test, config.test_size, "x_test", "test_size"), x_train.shape[1], name="x_test"
        )
    t_train = as_labels(
        _first(t_train, config.train_size, "t_train", "train_size"),
        len(x_train),
        n_classes,
        name="t_train",
    )
    t_test = as_labels(
        _first(t_test, config.test_size, "t_test", "test_size"),
        len(x_test),
        n_classes,
        name="t_test",
    )
    if config.batch_size > len(x_train):
        raise ParameterError(
            "batch_size",
            "{name}={value} is larger than the training set ({n} samples); use {name} {n} "
            "or less, or a larger {train_size}.",
            value=config.batch_size,
            n=len(x_train),
        )
    info = {
        "train_size": len(x_train),
        "test_size": len(x_test),
        "n_features": x_train[0].size,
        "n_classes": n_classes,
        "sha256": _fingerprint(x_train, t_train, x_test, t_test),
    }
    return _Data(x_train, t_train, x_test, t_test, n_classes, info)


def run_backend(config):
    """The backend a run of ``config`` uses: ``config.backend`` resolved (None reads the env).

    ``grad="backprop"`` runs where asked, like the numerical gradient: the
    batch loss and the accuracy passes in numba kernels, the backprop matrix
    products in BLAS.  :func:`sgd_step` gives BLAS one thread while numba
    kernels run, so that the two thread pools do not spin against each other
    for the cores (without that limit, the book's backprop run on 2 cores took
    about 10 times longer on the numba backend than on NumPy).
    """
    return resolve_backend(config.backend)


def _blas_threads(backend):
    """A context giving BLAS one thread where numba kernels run between BLAS calls."""
    if backend != "numba":
        return contextlib.nullcontext()  # NumPy alone: BLAS keeps all its threads
    return one_blas_thread()


def build_net(config, n_features, n_classes, input_dim=None):
    """The network a run of ``config`` trains, freshly initialised from ``config.seed``.

    Returns
    -------
    fastnum.network.TwoLayerNet, fastnum.multilayer.MultiLayerNet or fastnum.SimpleConvNet
        A MultiLayerNet when ``config.hidden_sizes`` is given; a SimpleConvNet of
        ``input_dim`` (C, H, W) images when ``config.net == "simpleconv"``.
    """
    from fastnum.multilayer import MultiLayerNet
    from fastnum.network import TwoLayerNet

    backend = run_backend(config)
    if config.net == "simpleconv":
        from fastnum.convnet import SimpleConvNet

        return SimpleConvNet(
            input_dim,
            hidden_size=config.hidden_size,
            output_size=n_classes,
            weight_init_std=config.weight_init_std,
            seed=config.seed,
            backend=backend,
            strategy=config.strategy,
        )
    if config.hidden_sizes is None:
        named = isinstance(config.weight_init_std, str)
        net = TwoLayerNet(
            n_features,
            config.hidden_size,
            n_classes,
            1.0 if named else config.weight_init_std,
            seed=config.seed,
            backend=backend,
            strategy=config.strategy,
        )
        if named:  # std * draw == (1.0 * draw) * std bit for bit: MultiLayerNet's weights
            for key, n_in in (("W1", n_features), ("W2", config.hidden_size)):
                net.params[key] *= layer_init_std(config.weight_init_std, n_in)
        return net
    return MultiLayerNet(
        n_features,
        config.hidden_sizes,
        n_classes,
        activation=config.activation,
        weight_init_std=config.weight_init_std,
        seed=config.seed,
        backend=backend,
        strategy=config.strategy,
    )


def step_seed(config, iteration):
    """The seed of SPSA's directions at 0-based ``iteration``: from (seed, iteration) alone,
    so that a resumed run needs no generator state to draw the same directions."""
    return [config.seed, iteration]


def sgd_step(net, x, t, config, optimizer=None, iteration=0):
    """One update of ``net`` on a batch; returns the batch loss at the updated parameters.

    ``iteration`` (0-based) seeds SPSA's directions (:func:`step_seed`).

    ``optimizer`` (a :mod:`fastnum.optimizers` optimizer, which keeps its state
    between steps) makes the update; None makes plain SGD with ``config.lr``.
    ``x`` and ``t`` must already be validated (float64 C-contiguous, int64 labels
    in range): the step calls the network's trusted methods.
    """
    if optimizer is None:
        if config.optimizer != "sgd":
            raise ValueError(
                f"optimizer={config.optimizer!r} keeps state between steps; pass the run's "
                "optimizer (config.make_optimizer(), made once)."
            )
        optimizer = config.make_optimizer()
    with _blas_threads(net.backend):
        grads = estimate_gradient_trusted(
            net,
            x,
            t,
            config.grad,
            config.h,
            config.directions,
            config.spsa_distribution,
            step_seed(config, iteration),
            config.strategy,
        )
        optimizer.update(net.params, grads)  # in place: W1, b1, W2, b2 (and more)
        return float(net.loss_trusted(x, t))


class _Run:
    """The state of one training run and the steps that advance it."""

    def __init__(self, config, data, folder, log):
        self.cfg, self.data, self.folder, self.log = config, data, folder, log
        self.net = build_net(
            config, data.x_train.shape[1], data.n_classes, input_dim=data.x_train.shape[1:]
        )
        self.backend = self.net.backend
        self.optimizer = config.make_optimizer()
        # A child stream, so batch sampling does not replay the bits of the weight init.
        self.rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(1)[0])
        self.per_epoch = max(len(data.x_train) // config.batch_size, 1)
        n_params = sum(p.size for p in self.net.params.values())
        # Of the gradient estimate; the batch loss recorded after the update adds one more.
        self.evaluations_per_step = loss_evaluations(config.grad, n_params, config.directions)
        self.iteration = 0
        self.history = {"loss": [], "epoch_iter": [], "train_acc": [], "test_acc": []}
        self.epoch_seconds, self.seconds_before = [], 0.0
        self.t_start = self.t_epoch = time.perf_counter()
        self.progress = NoProgress()

    def say(self, message):
        if self.log is not None:
            self.progress.write(self.log, message)

    def seconds(self):
        return self.seconds_before + time.perf_counter() - self.t_start

    def timings(self):
        total = self.seconds()
        return {
            "epoch_seconds": list(self.epoch_seconds),
            "total_seconds": total,
            "loss_evaluations_per_step": self.evaluations_per_step,
        }

    def step(self):
        """One update; returns the batch loss at the updated parameters."""
        idx = self.rng.choice(len(self.data.x_train), self.cfg.batch_size)
        # Rows of data validated once in _prepare_data: the trusted methods apply.
        x, t = self.data.x_train[idx], self.data.t_train[idx]
        return sgd_step(self.net, x, t, self.cfg, self.optimizer, self.iteration)

    def accuracies(self):
        d = self.data
        return (
            self.net.accuracy_trusted(d.x_train, d.t_train),
            self.net.accuracy_trusted(d.x_test, d.t_test),
        )

    def evaluate(self):
        """Record train/test accuracy at the current iteration and print the book's line."""
        train_acc, test_acc = self.accuracies()
        h = self.history
        h["epoch_iter"].append(self.iteration)
        h["train_acc"].append(train_acc)
        h["test_acc"].append(test_acc)
        now = time.perf_counter()
        self.epoch_seconds.append(now - self.t_epoch)
        self.t_epoch = now
        width = len(str(self.cfg.iters))
        epoch = len(h["train_acc"]) - 1
        self.say(
            f"iter {self.iteration:>{width}}/{self.cfg.iters}  epoch {epoch:>2}  "
            f"loss {h['loss'][-1]:.4f}  train acc, test acc | {train_acc:.4f}, {test_acc:.4f}"
        )

    def document(self, status, **extra):
        """The content of history.json."""
        backend_info = {
            "backend": self.backend,
            "backend_description": describe_backend(self.backend),
        }
        if self.backend == "numba":
            from fastnum._jit import get_num_threads

            backend_info["threads"] = get_num_threads()
        return {
            "format": FORMAT,
            "status": status,
            "config": self.cfg.to_dict(),
            **backend_info,
            "data": self.data.info,
            "iter_per_epoch": self.per_epoch,
            "iterations_done": self.iteration,
            "history": self.history,
            "timings": self.timings(),
            **extra,
        }

    def write_history(self, status, **extra):
        if self.folder is not None:
            self.folder.write_history(self.document(status, **extra))

    def write_checkpoint(self):
        state = self.optimizer.state_dict()
        arrays = {
            f"{_STATE_PREFIX}{slot}.{key}": a
            for slot, slot_arrays in state.pop("state").items()
            for key, a in slot_arrays.items()
        }
        meta = {
            "config": self.cfg.to_dict(),
            "backend": self.backend,
            "data": self.data.info,
            "iteration": self.iteration,
            "rng": self.rng.bit_generator.state,
            "history": {k: v for k, v in self.history.items() if k != "loss"},
            "epoch_seconds": self.epoch_seconds,
            "seconds": self.seconds(),
            "optimizer": state,  # name, hyperparameters, iterations; its arrays beside params
        }
        self.folder.write_checkpoint(meta, self.history["loss"], {**self.net.params, **arrays})

    def _saved_optimizer(self, meta, arrays):
        """The optimizer state of a checkpoint, as ``Optimizer.load_state_dict`` takes it."""
        saved = meta.get("optimizer")
        if saved is None:  # written before optimizers existed: plain SGD, no state
            saved = {"name": "sgd", "hyperparameters": {"lr": self.cfg.lr}}
            saved["iterations"] = meta["iteration"]
        slots = {slot: {} for slot in self.optimizer.SLOTS}
        for name, a in arrays.items():
            if name.startswith(_STATE_PREFIX):
                slot, key = name[len(_STATE_PREFIX) :].split(".", 1)
                slots.setdefault(slot, {})[key] = a
        return {**saved, "state": slots}

    def restore(self):
        """Continue from the folder's checkpoint: params, sampler state, iteration and history."""
        meta, arrays = self.folder.read_checkpoint(tuple(self.net.params))
        meta["config"] = {**_PLAIN_SGD, **_OLD_ESTIMATOR, **meta["config"]}
        check_resumable(
            meta,
            self.cfg.to_dict(),
            self.backend,
            self.data.info,
            self.per_epoch,
            self.folder.checkpoint,
        )
        try:
            state = self._saved_optimizer(meta, arrays)
            if state["iterations"] != meta["iteration"]:
                raise ValueError(f"{state['iterations']} optimizer steps")
            self.optimizer.load_state_dict(state)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise checkpoint_refused(
                f"{self.folder.checkpoint} is inconsistent (its optimizer state: {exc})"
            ) from exc
        for key in self.net.params:
            self.net.params[key][...] = arrays[key]
        self.rng.bit_generator.state = meta["rng"]
        self.iteration = meta["iteration"]
        self.history = {"loss": arrays["loss"].tolist(), **meta["history"]}
        self.epoch_seconds, self.seconds_before = meta["epoch_seconds"], meta["seconds"]
        self.say(
            f"resuming from {self.folder.checkpoint} at iteration {self.iteration}/{self.cfg.iters}"
        )

    def diverged(self, loss):
        """Save what is finite, then raise :class:`TrainingDivergedError`."""
        lr, it = self.cfg.lr, self.iteration + 1
        where = ""
        if self.folder is not None:
            self.write_history("diverged", diverged_at={"iteration": it, "loss": repr(loss)})
            self.folder.write_plots(self.history)
            where = (
                f" The history of the {self.iteration} finite iterations is in "
                f"{self.folder.path / HISTORY} (plots show only those; no params.npz "
                "written)."
            )
        message = Message(
            "training diverged at iteration {it}: the loss became {loss} (or the parameters "
            "non-finite) with {name}={value:g}. Lower the learning rate (e.g. {name}={lower:g}) "
            "and start a new run.{where}",
            "lr",
            it=it,
            loss=loss,
            value=lr,
            lower=lr / 10,
            where=where,
        )
        raise TrainingDivergedError(
            message,
            it,
            loss,
            lr,
        )

    def params_finite(self):
        return all(np.isfinite(p).all() for p in self.net.params.values())

    def loop(self, callback):
        """Run the remaining iterations; evaluate and checkpoint at each epoch."""
        while self.iteration < self.cfg.iters:
            loss = self.step()
            if not (math.isfinite(loss) and self.params_finite()):
                self.diverged(loss)
            self.history["loss"].append(loss)
            self.iteration += 1
            if (self.iteration - 1) % self.per_epoch == 0:  # the book's `i % iter_per_epoch == 0`
                self.end_epoch(callback)
            self.progress.update(self.iteration)

    def end_epoch(self, callback):
        self.evaluate()
        if self.folder is not None:
            self.write_checkpoint()
            self.write_history("running")
        if callback is not None:
            h = self.history
            callback(
                {
                    "iteration": self.iteration,
                    "epoch": len(h["train_acc"]) - 1,
                    "loss": h["loss"][-1],
                    "train_acc": h["train_acc"][-1],
                    "test_acc": h["test_acc"][-1],
                }
            )

    def finish(self):
        """Evaluate the final parameters, write all outputs, return the result."""
        h = self.history
        if h["epoch_iter"] and h["epoch_iter"][-1] == self.iteration:
            final = h["train_acc"][-1], h["test_acc"][-1]
        else:
            final = self.accuracies()
        if self.folder is not None:
            self.folder.write_params(self.net.params)
            self.write_checkpoint()  # lets a later resume extend the run with more iters
            self.write_history(
                "completed",
                final={"iteration": self.iteration, "train_acc": final[0], "test_acc": final[1]},
            )
            self.folder.write_plots(h)
        return TrainResult(
            self.cfg,
            self.backend,
            self.net,
            h,
            self.timings(),
            final[0],
            final[1],
            None if self.folder is None else self.folder.path,
            optimizer=self.optimizer,
        )


def train(
    config=None,
    data=None,
    out_dir=None,
    *,
    resume=False,
    overwrite=False,
    data_dir=None,
    progress=True,
    log=print,
    callback=None,
):
    """Train the book's ``TwoLayerNet`` with minibatch SGD (or another chapter 6 optimizer).

    Parameters
    ----------
    config : TrainConfig, optional
        The run's settings; ``TrainConfig()`` (the book's) by default.
    data : ((x_train, t_train), (x_test, t_test)), optional
        Training and test sets; ``None`` loads MNIST with
        ``fastnum.data.load_mnist`` (10 classes).  Otherwise the number of
        classes is the one-hot width or ``max(t_train) + 1``.
    out_dir : str or Path, optional
        Where to write ``history.json``, ``params.npz``, ``loss.png``,
        ``accuracy.png`` and ``checkpoint.npz`` (all atomically).  ``None``
        writes nothing.  The folder is locked (``run.lock``) while the run
        lasts: a second run in it is refused.
    resume : bool, default False
        Continue from ``out_dir/checkpoint.npz``.  The result is bit-identical
        to an uninterrupted run (the optimizer's state is in the checkpoint);
        only ``iters``, ``threads`` and an equivalent ``backend`` spelling may
        differ from the checkpoint's config.
        A checkpoint that is damaged, edited (it carries a checksum) or
        inconsistent with its own history is refused.
    overwrite : bool, default False
        Allow a fresh run in an ``out_dir`` that already holds one (its outputs
        are deleted first).
    data_dir : str or Path, optional
        MNIST folder passed to ``load_mnist`` when ``data`` is None.
    progress : bool, default True
        Show a progress bar with iterations/s and ETA on stderr (tqdm on a
        terminal and in Jupyter, one line per 10 % in a log file).
    log : callable or None, default print
        Receives the per-epoch lines (``... train acc, test acc | 0.90, 0.91``).
    callback : callable, optional
        Called after each epoch's checkpoint with a dict (iteration, epoch,
        loss, train_acc, test_acc).  An exception raised there stops training;
        the checkpoint of that epoch is already on disk.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError, TypeError
        Bad settings or data; the message names the value and the fix.  All
        of them are checked before anything is created on disk.
    FileExistsError, FileNotFoundError
        ``out_dir`` holds a run but neither resume nor overwrite was asked;
        or resume was asked but there is no checkpoint.
    fastnum.rundir.CheckpointError
        (a ValueError) The checkpoint cannot be resumed from; the message says why.
    fastnum.rundir.RunFolderError
        (an OSError) ``out_dir`` is locked by another run (or a stale lock),
        is a file, or cannot be written (disk full); the message says what to do.
    TrainingDivergedError
        The loss or the parameters became NaN/inf (history so far is saved).

    Notes
    -----
    With the numba backend BLAS runs on one thread during the SGD steps
    (see :func:`run_backend`).

    The recorded loss of an iteration is, as in the book, the loss of that
    iteration's batch at the parameters *after* its update.  Accuracy is
    evaluated, as in the book, after iterations 1, 1 + iter_per_epoch, ...
    with ``iter_per_epoch = max(train_size // batch_size, 1)`` (the book's
    ``train_size / batch_size``, as an integer so that the test fires when
    batch_size does not divide train_size).  The accuracy of the final
    parameters is always computed as well (``final_*_acc``).
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}.")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: pick one.")
    out = check_out_dir(out_dir)
    if resume and out is None:
        raise ValueError("resume=True needs out_dir: the run directory holding checkpoint.npz.")
    data = _prepare_data(config, data, data_dir)
    run_backend(config)  # raises on a backend that cannot run, before files are touched
    if config.threads is not None:  # raises on a count numba cannot give, before files too
        from fastnum._jit import set_num_threads

        set_num_threads(config.threads)
    folder = None if out is None else RunFolder(out).open(resume, overwrite)
    try:
        run = _Run(config, data, folder, log)
        if resume:
            run.restore()
        if progress and run.iteration < config.iters:
            run.progress = Progress(config.iters, run.iteration)
        # exp() overflowing in a saturated sigmoid is harmless (it gives 0); real trouble
        # shows up as a non-finite loss or parameter, which the loop checks explicitly.
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            try:
                run.loop(callback)
            finally:
                run.progress.close()
            return run.finish()
    finally:
        if folder is not None:
            folder.close()
