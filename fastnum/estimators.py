"""Gradient estimators for training: central and forward differences, SPSA and backprop.

One table, :data:`ESTIMATORS`, maps a name to an :class:`Estimator`: a short
NumPy reference (the oracle, using the network's NumPy loss), the numba path
that must equal it, and the number of loss evaluations one estimate costs.

``numerical``
    Central differences (L(theta + h e_i) - L(theta - h e_i)) / 2h for every
    coordinate: the networks' ``numerical_gradient`` (2 n evaluations).
``forward``
    One-sided differences (L(theta + h e_i) - L(theta)) / h: one evaluation per
    coordinate plus one (DeepZero's coordinate-wise estimator).  The numba path
    is :func:`fastnum.engine.forward_gradient`, the delta kernels with one-sided
    steps: on the two-layer networks (sigmoid or relu hidden layer) the book's
    kernel, where a step in ``W1[i, j]`` changes only hidden unit ``j`` of the
    samples whose pixel ``i`` is non-zero and the other samples' terms cancel
    exactly; on deeper dense nets and a first convolution block the engine's.
    Weight decay adds its own term's one-sided difference.  Every perturbed loss
    is a real evaluation (no Taylor expansion).  Networks with batch norm, dropout
    or several convolutions run the same loop as the reference, on the network's
    compiled loss.
``spsa``
    ``mean_k (L(theta + h u_k) - L(theta - h u_k)) / 2h * u_k`` over K random
    directions ``u_k`` (Rademacher +-1 or standard Gaussian entries), drawn one
    at a time from ``seed`` and never stored together, as MeZO does: memory is a
    few copies of the parameters whatever K.  The directions come from NumPy's
    generator on every backend, so the same seed gives the same directions;
    only the loss evaluations differ (the engine's kernels or NumPy), by
    rounding.  2 K evaluations.
``backprop``
    The analytic gradient (one forward and one backward pass, counted as 1).

Every numba path is deterministic whatever the thread count: the kernels sum
in a fixed order.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from fastnum._validate import check_choice, check_int, check_step
from fastnum.backend import DEFAULT_STRATEGY, check_strategy
from fastnum.constants import H

__all__ = [
    "DISTRIBUTIONS",
    "ESTIMATORS",
    "Estimator",
    "check_estimator_options",
    "estimate_gradient",
    "estimate_gradient_trusted",
    "loss_evaluations",
]

#: Distributions of the SPSA directions' entries.
DISTRIBUTIONS = ("rademacher", "gaussian")


# ---------------------------------------------------------------------------- helpers


def _numpy_twin(net):
    """A shallow copy of ``net`` on the NumPy backend: its methods are the oracle's."""
    twin = copy.copy(net)
    twin.backend = "numpy"
    return twin


def _loss_of(net, x, t):
    """``params -> batch loss`` on the network's backend (trusted inputs)."""
    return lambda params: net.loss_trusted(x, t, params)


def _float_params(net):
    """Private float64 copies of the parameters, which the reference loops perturb."""
    return {k: np.array(v, dtype=np.float64, order="C") for k, v in net.params.items()}


def _float_view(net):
    """The parameters as C-contiguous float64, copied only where they are not: for the
    kernels, which only read them (a copy per training step cost ~20 us)."""
    return {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in net.params.items()}


def _direction_rng(seed):
    return np.random.default_rng(np.random.SeedSequence(seed))


def _draw(rng, distribution, shape):
    """One direction's entries for one parameter array (the rng advances)."""
    if distribution == "gaussian":
        return rng.standard_normal(shape)
    return 2.0 * rng.integers(0, 2, size=shape) - 1.0


# ---------------------------------------------------------------------------- references


def _forward_reference(loss, params, h):
    """(L(theta + h e_i) - L(theta)) / h, the book's perturb / evaluate / restore loop."""
    base = loss(params)
    grads = {}
    for name, p in params.items():
        flat = p.reshape(-1)
        g = np.empty(flat.size)
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + h
            g[i] = (loss(params) - base) / h
            flat[i] = saved
        grads[name] = g.reshape(p.shape)
    return grads


def _spsa_reference(loss, params, h, directions, distribution, seed):
    """mean over K directions u of (L(theta + h u) - L(theta - h u)) / 2h * u."""
    rng = _direction_rng(seed)
    grads = {k: np.zeros(p.shape) for k, p in params.items()}
    for _ in range(directions):
        u = {k: _draw(rng, distribution, p.shape) for k, p in params.items()}
        plus = {k: p + h * u[k] for k, p in params.items()}
        minus = {k: p - h * u[k] for k, p in params.items()}
        slope = (loss(plus) - loss(minus)) / (2 * h)
        for k in grads:
            grads[k] += slope * u[k]
    return {k: g / directions for k, g in grads.items()}


# ---------------------------------------------------------------------------- numba paths


def _forward_compiled(net, x, t, h):
    """One-sided steps on the engine's delta kernels (the book's two-layer kernel, the conv
    block + dense kernel; weight decay added term by term), else (batch norm, dropout,
    deeper conv stacks) the loop on the compiled loss."""
    from fastnum import engine

    stack = getattr(net, "stack", None)
    if stack is not None:
        decay = float(getattr(net, "weight_decay_lambda", 0.0) or 0.0)
        try:
            return engine.forward_gradient(
                stack, _float_view(net), x, t, float(h), weight_decay=decay
            )
        except engine.StrategyNotImplementedError:
            pass
    return _forward_reference(_loss_of(net, x, t), _float_params(net), h)


def _spsa_compiled(net, x, t, h, directions, distribution, seed):
    """SPSA on the network's compiled loss, in preallocated buffers (one direction at a time).

    The arithmetic is the reference's, operation for operation (h * u, then the
    sum), so with equal losses the estimates are bit-identical.
    """
    loss = _loss_of(net, x, t)
    theta = _float_params(net)
    rng = _direction_rng(seed)
    grads = {k: np.zeros(p.shape) for k, p in theta.items()}
    step = {k: np.empty(p.shape) for k, p in theta.items()}
    plus = {k: np.empty(p.shape) for k, p in theta.items()}
    minus = {k: np.empty(p.shape) for k, p in theta.items()}
    for _ in range(directions):
        u = {k: _draw(rng, distribution, p.shape) for k, p in theta.items()}
        for k, p in theta.items():
            np.multiply(h, u[k], out=step[k])
            np.add(p, step[k], out=plus[k])
            np.subtract(p, step[k], out=minus[k])
        slope = (loss(plus) - loss(minus)) / (2 * h)
        for k, g in grads.items():
            g += slope * u[k]
    for g in grads.values():
        g /= directions
    return grads


# ---------------------------------------------------------------------------- the table


class Estimator(NamedTuple):
    """One gradient estimator: the NumPy oracle, the numba path and its cost."""

    #: (net, x, t, h, directions, distribution, seed, strategy) -> grads, NumPy loss
    reference: Callable
    #: the same on the network's compiled kernels (numba backend)
    compiled: Callable
    #: (n_params, directions) -> loss evaluations per estimate
    evaluations: Callable
    description: str


def _ref_numerical(net, x, t, h, directions, distribution, seed, strategy):
    return _numpy_twin(net).numerical_gradient_trusted(x, t, h, strategy)


def _comp_numerical(net, x, t, h, directions, distribution, seed, strategy):
    return net.numerical_gradient_trusted(x, t, h, strategy)


def _ref_forward(net, x, t, h, directions, distribution, seed, strategy):
    return _forward_reference(_loss_of(_numpy_twin(net), x, t), _float_params(net), h)


def _comp_forward(net, x, t, h, directions, distribution, seed, strategy):
    return _forward_compiled(net, x, t, h)


def _ref_spsa(net, x, t, h, directions, distribution, seed, strategy):
    loss = _loss_of(_numpy_twin(net), x, t)
    return _spsa_reference(loss, _float_params(net), h, directions, distribution, seed)


def _comp_spsa(net, x, t, h, directions, distribution, seed, strategy):
    return _spsa_compiled(net, x, t, h, directions, distribution, seed)


def _ref_backprop(net, x, t, h, directions, distribution, seed, strategy):
    return _numpy_twin(net).gradient_trusted(x, t)


def _comp_backprop(net, x, t, h, directions, distribution, seed, strategy):
    return net.gradient_trusted(x, t)


#: name -> :class:`Estimator`; the names are ``fastnum train --grad``'s choices.
ESTIMATORS = {
    "numerical": Estimator(
        _ref_numerical,
        _comp_numerical,
        lambda n, k: 2 * n,
        "central differences, 2 evaluations per parameter",
    ),
    "forward": Estimator(
        _ref_forward,
        _comp_forward,
        lambda n, k: n + 1,
        "forward differences, 1 evaluation per parameter plus 1",
    ),
    "spsa": Estimator(
        _ref_spsa,
        _comp_spsa,
        lambda n, k: 2 * k,
        "central differences along K random directions, 2 evaluations per direction",
    ),
    "backprop": Estimator(
        _ref_backprop,
        _comp_backprop,
        lambda n, k: 1,
        "backpropagation, one forward and one backward pass (counted as 1)",
    ),
}


# ---------------------------------------------------------------------------- public API


def check_estimator_options(method, h=H, directions=1, distribution="rademacher"):
    """Validate an estimator's name and options; return them normalised.

    Parameters
    ----------
    method : str
        A key of :data:`ESTIMATORS`.
    h : float
        Finite-difference step, at least :data:`fastnum._validate.MIN_STEP`.
    directions : int
        SPSA's K, an integer >= 1.
    distribution : {"rademacher", "gaussian"}
        SPSA's direction entries.

    Returns
    -------
    (str, float, int, str)
    """
    check_choice("method", method, tuple(ESTIMATORS))
    h = check_step(h)
    directions = check_int(
        "directions", directions, 1, "SPSA averages K >= 1 random directions, e.g. 10."
    )
    check_choice("distribution", distribution, DISTRIBUTIONS)
    return method, h, directions, distribution


def loss_evaluations(method, n_params, directions=1):
    """Loss evaluations one estimate of ``method`` costs for ``n_params`` parameters.

    Coordinate-wise estimators count one evaluation per perturbed coordinate, as
    the book's loop makes them (the delta kernels compute each more cheaply,
    but it is still a real loss evaluation); SPSA two per direction; backprop 1.

    Returns
    -------
    int
    """
    check_choice("method", method, tuple(ESTIMATORS))
    return int(ESTIMATORS[method].evaluations(int(n_params), int(directions)))


def estimate_gradient_trusted(
    net,
    x,
    t,
    method,
    h=H,
    directions=1,
    distribution="rademacher",
    seed=0,
    strategy=DEFAULT_STRATEGY,
):
    """:func:`estimate_gradient` for validated ``x``, int64 ``t`` and checked options."""
    est = ESTIMATORS[method]
    path = est.compiled if net.backend == "numba" else est.reference
    return path(net, x, t, h, directions, distribution, seed, strategy)


def estimate_gradient(
    net,
    x,
    t,
    method="numerical",
    *,
    h=H,
    directions=1,
    distribution="rademacher",
    seed=0,
    strategy=None,
):
    """A gradient estimate of the network's batch loss at its current parameters.

    Parameters
    ----------
    net : TwoLayerNet, MultiLayerNet or SimpleConvNet
        Its backend picks the path: ``numba`` the compiled one, ``numpy`` the reference.
    x : array
        The batch, as the network's ``loss`` takes it.
    t : array
        Integer or one-hot labels.
    method : {"numerical", "forward", "spsa", "backprop"}, default "numerical"
    h : float, default 1e-4
        Finite-difference step (ignored by backprop).
    directions : int, default 1
        SPSA's number of random directions K.
    distribution : {"rademacher", "gaussian"}, default "rademacher"
        SPSA's direction entries: +-1 with equal odds, or standard normal.
    seed : int or sequence of int, default 0
        Seeds SPSA's directions (``np.random.SeedSequence(seed)``): the same seed
        gives the same directions on every backend and thread count.
    strategy : {"delta", "full"} or None
        The numerical gradient's strategy; None takes the network's.

    Returns
    -------
    dict of str to ndarray
        float64 estimates keyed and shaped like ``net.params``.  The network's
        parameters are left exactly as they were.
    """
    method, h, directions, distribution = check_estimator_options(
        method, h, directions, distribution
    )
    strategy = check_strategy(strategy or net.strategy)
    np.random.SeedSequence(seed)  # refuses a negative or non-integer seed with NumPy's message
    # The public methods validate (and convert) the batch, through the network's own checks.
    params, x, t = net._checked(x, t)
    view = copy.copy(net)
    view.params = params
    return estimate_gradient_trusted(
        view, x, t, method, h, directions, distribution, seed, strategy
    )
