"""One step of training: the batch's gradient (any estimator) and the optimizer's update.

:func:`sgd_step` is what :func:`fastnum.train.train` runs per iteration, and what the
experiments that time training run, so their numbers are those of ``fastnum train``.
"""

from __future__ import annotations

import contextlib

from fastnum._jit import one_blas_thread
from fastnum.backend import resolve_backend
from fastnum.estimators import estimate_gradient_trusted

__all__ = ["run_backend", "sgd_step", "step_gradient", "step_seed"]


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


def step_seed(config, iteration):
    """The seed of SPSA's directions at 0-based ``iteration``: from (seed, iteration) alone,
    so that a resumed run needs no generator state to draw the same directions."""
    return [config.seed, iteration]


def step_gradient(net, x, t, config, iteration=0):
    """The gradient of one training step on a batch, by ``config.grad``.

    The one place a step's gradient is made (a scheduler that splits the numerical
    gradient into parameter blocks belongs here).  For a network with batch norm,
    dropout or weight decay (``net.chapter6``) every estimator sees the same step:

    - dropout draws one set of masks per step from the network's seeded generator
      (``numerical_gradient`` draws it itself; the other estimators get it drawn here),
      used by every loss evaluation of the step and by the loss recorded after it, so
      equal seeds give equal masks whatever the estimator;
    - batch norm's running statistics move once per step, at the step's parameters
      (the numerical gradient and backprop do it themselves; forward differences and
      SPSA only evaluate losses, so the statistics are moved here);
    - weight decay is part of every loss evaluated and of backprop's gradient.

    Parameters
    ----------
    net : TwoLayerNet, MultiLayerNet or SimpleConvNet
        At the step's parameters; its backend picks the estimator's path.
    x, t : ndarray
        The batch, already validated (float64 C-contiguous, int64 labels in range):
        the step uses the network's trusted methods.
    config : fastnum.train_config.TrainConfig
        ``grad``, ``h``, ``directions``, ``spsa_distribution``, ``strategy``, ``seed``.
    iteration : int, default 0
        The 0-based step, which seeds SPSA's directions (:func:`step_seed`).

    Returns
    -------
    dict of str to ndarray
        The gradient estimate, keyed like ``net.params``.
    """
    chapter6 = getattr(net, "chapter6", False)
    rng = getattr(net, "dropout_rng", None)
    masks = drawn = None
    if chapter6 and config.grad != "numerical":
        masks = net.new_dropout_masks(len(x))  # {} without dropout (nothing drawn)
        drawn = None if rng is None else rng.bit_generator.state
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
    if chapter6 and config.grad == "backprop":
        # gradient() drew the next step's masks ahead: take them back, so that the loss
        # recorded uses this step's and every estimator draws the same masks in turn.
        if rng is not None:
            rng.bit_generator.state = drawn
        net.dropout_masks = masks
    elif chapter6 and config.grad != "numerical":
        net.update_running_stats(x, masks)
    return grads


def sgd_step(net, x, t, config, optimizer=None, iteration=0):
    """One update of ``net`` on a batch; returns the batch loss at the updated parameters.

    ``iteration`` (0-based) seeds SPSA's directions (:func:`step_seed`).  The gradient
    is :func:`step_gradient`'s; the loss is the training loss the gradient
    differentiates (batch norm on the batch's statistics, the step's dropout masks,
    weight decay included).

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
        grads = step_gradient(net, x, t, config, iteration)
        optimizer.update(net.params, grads)  # in place: W1, b1, W2, b2 (and more)
        return float(net.loss_trusted(x, t))
