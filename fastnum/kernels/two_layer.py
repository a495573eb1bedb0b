"""Numba kernels for the book's two-layer network (affine, sigmoid, affine, softmax + CE).

The numerical gradient also takes ReLU as the hidden activation (``activation=RELU``,
the chapter 5 network), so the engine hands both two-layer stacks to these kernels;
``predict`` and ``loss`` are the sigmoid network's.

Every function here trusts its inputs (float64 C-contiguous arrays, int64
labels in range, finite values): the public ``*_trusted`` entry points allocate,
the ``_private`` kernels fill preallocated arrays.  Validation happens once, in
:class:`fastnum.network.TwoLayerNet` (see :mod:`fastnum.kernels`).

The numerical gradient comes in the strategies of :data:`STRATEGIES`, each an
honest central difference that evaluates the loss at theta +- h * e_i for
every parameter:

``full``
    The book's algorithm compiled: per parameter, perturb a task-private copy
    of the weights and run the whole forward pass and loss over the batch.
``delta``
    Caches the unperturbed activations and recomputes only what a perturbation
    changes, one evaluation per sample, hidden unit and distinct pixel value: its
    kernels are in :mod:`.two_layer_delta`.

The kernels are serial tasks of :func:`fastnum._jit.run_tasks`, with the task settings
``TASKS`` of :mod:`.two_layer_delta` (why: the comment there).
"""

from __future__ import annotations

import numpy as np

from fastnum._jit import njit, run_tasks
from fastnum.constants import LOG_GUARD
from fastnum.kernels._blocks import RELU, SIGMOID, _act
from fastnum.kernels.losses import _row_cross_entropy, _softmax_cross_entropy_rows
from fastnum.kernels.two_layer_delta import TASKS, delta_gradients

PARAM_NAMES = ("W1", "b1", "W2", "b2")


# --------------------------------------------------------------------- forward


@njit
def _hidden_row(x, n, W1, b1, z, activation):
    """z[:] = act(x[n] @ W1 + b1), skipping zero pixels (0 * w adds nothing)."""
    z[:] = 0.0
    for i in range(x.shape[1]):
        xi = x[n, i]
        if xi != 0.0:
            for j in range(W1.shape[1]):
                z[j] += xi * W1[i, j]
    for j in range(W1.shape[1]):
        if activation == RELU:
            z[j] = _act(z[j] + b1[j], RELU)
        else:
            z[j] = 1.0 / (1.0 + np.exp(-(z[j] + b1[j])))


@njit
def _logits_row(z, W2, b2, a2, n):
    """a2[n, :] = z @ W2 + b2."""
    for k in range(W2.shape[1]):
        acc = 0.0
        for j in range(W2.shape[0]):
            acc += z[j] * W2[j, k]
        a2[n, k] = acc + b2[k]


@njit(noalias=True)
def _forward_logits(task, n_tasks, x, W1, b1, W2, b2, activation, a2):
    """Fill this task's rows of the logits a2 (N, K) for the batch x."""
    z = np.empty(W1.shape[1])
    for n in range(task * x.shape[0] // n_tasks, (task + 1) * x.shape[0] // n_tasks):
        _hidden_row(x, n, W1, b1, z, activation)
        _logits_row(z, W2, b2, a2, n)


@njit(noalias=True)
def _softmax_rows(task, n_tasks, a, y):
    """y = softmax(a) for this task's rows, shifted by the row max."""
    for n in range(task * a.shape[0] // n_tasks, (task + 1) * a.shape[0] // n_tasks):
        # The row max as np.max gives it (the first NaN, else the first largest), in a
        # loop: np.max's implementation added ~1 s to the cold compile.
        m = a[n, 0]
        for k in range(1, a.shape[1]):
            if m != m:
                break
            if a[n, k] > m or a[n, k] != a[n, k]:
                m = a[n, k]
        s = 0.0
        for k in range(a.shape[1]):
            y[n, k] = np.exp(a[n, k] - m)
            s += y[n, k]
        for k in range(a.shape[1]):
            y[n, k] /= s


def predict_trusted(params, x):
    """Class probabilities for validated float64 inputs; ``params`` from :func:`as_params`."""
    W1, b1, W2, b2 = params
    a2 = np.empty((x.shape[0], W2.shape[1]))
    run_tasks(_forward_logits, x.shape[0], x, W1, b1, W2, b2, SIGMOID, a2, **TASKS)
    y = np.empty_like(a2)
    run_tasks(_softmax_rows, a2.shape[0], a2, y, **TASKS)
    return y


def loss_trusted(params, x, t):
    """Batch-mean cross-entropy for validated inputs (integer labels)."""
    W1, b1, W2, b2 = params
    a2 = np.empty((x.shape[0], W2.shape[1]))
    run_tasks(_forward_logits, x.shape[0], x, W1, b1, W2, b2, SIGMOID, a2, **TASKS)
    losses = np.empty(x.shape[0])
    _softmax_cross_entropy_rows(a2, t, LOG_GUARD, losses)
    return float(losses.sum() / x.shape[0])


# ------------------------------------------------------- full numerical gradient


@njit
def _batch_loss(x, t, W1, b1, W2, b2, z, a2, activation):
    """Batch-mean loss, evaluated sample by sample in a fixed order (no parallelism).

    ``a2`` has a row per sample, so that the row helpers are called with the sample
    index as the forward pass calls them (a literal row 0 compiled second copies).
    """
    total = 0.0
    for n in range(x.shape[0]):
        _hidden_row(x, n, W1, b1, z, activation)
        _logits_row(z, W2, b2, a2, n)
        total += _row_cross_entropy(a2, n, t[n], LOG_GUARD)
    return total / x.shape[0]


@njit
def _perturbed_loss_difference(flat, q, h, x, t, w1, c1, w2, c2, z, a2, activation):
    """L(theta + h e_q) - L(theta - h e_q) for element q of ``flat`` (a view of one array)."""
    saved = flat[q]
    flat[q] = saved + h
    f_plus = _batch_loss(x, t, w1, c1, w2, c2, z, a2, activation)
    flat[q] = saved - h
    f_minus = _batch_loss(x, t, w1, c1, w2, c2, z, a2, activation)
    flat[q] = saved
    return f_plus - f_minus


@njit(noalias=True)
def _numerical_gradient_full(task, n_tasks, x, t, W1, b1, W2, b2, h, activation, grad):
    """This task's share of grad (flat: W1, b1, W2, b2 raveled) by the book's perturb /
    re-run / restore loop.

    Each parameter's two losses see the original weights but for that one entry (put
    back exactly after each parameter), so no split into tasks changes a result.
    """
    n_params = grad.shape[0]
    end_w1 = W1.size
    end_b1 = end_w1 + b1.size
    end_w2 = end_b1 + W2.size
    # Task-private copies: perturbing them cannot disturb another task.
    w1, c1, w2, c2 = W1.copy(), b1.copy(), W2.copy(), b2.copy()
    w1_flat, w2_flat = w1.reshape(w1.size), w2.reshape(w2.size)
    z = np.empty(W1.shape[1])
    a2 = np.empty((x.shape[0], W2.shape[1]))
    for p in range(task * n_params // n_tasks, (task + 1) * n_params // n_tasks):
        if p < end_w1:
            flat, q = w1_flat, p
        elif p < end_b1:
            flat, q = c1, p - end_w1
        elif p < end_w2:
            flat, q = w2_flat, p - end_b1
        else:
            flat, q = c2, p - end_w2
        diff = _perturbed_loss_difference(flat, q, h, x, t, w1, c1, w2, c2, z, a2, activation)
        grad[p] = diff / (2.0 * h)


def _delta_strategy(params, x, t, h, activation=SIGMOID, one_sided=False):
    """The delta strategy (:mod:`.two_layer_delta`): cached activations, one evaluation
    per distinct pixel value; ``one_sided`` gives forward differences."""
    return dict(
        zip(PARAM_NAMES, delta_gradients(params, x, t, h, activation, one_sided), strict=True)
    )


def _full_strategy(params, x, t, h, activation=SIGMOID):
    """The full strategy: the book's perturb / re-run / restore loop, parallel over parameters."""
    flat = np.empty(sum(p.size for p in params))
    run_tasks(_numerical_gradient_full, flat.shape[0], x, t, *params, h, activation, flat)
    grads, start = {}, 0
    for name, p in zip(PARAM_NAMES, params, strict=True):
        grads[name] = flat[start : start + p.size].reshape(p.shape)
        start += p.size
    return grads


#: The numerical-gradient strategies, simplest first (the order of the registry's
#: implementations, the benchmarks and the CLI choices): name -> function
#: ``(params, x, t, h, activation=SIGMOID) -> {name: gradient}`` with ``params`` from
#: :func:`as_params` and ``activation`` a code of ``multilayer.ACTIVATION_CODES``.
STRATEGIES = {"full": _full_strategy, "delta": _delta_strategy}


# ------------------------------------------------------------------ public API


def as_params(params):
    """(W1, b1, W2, b2) as C-contiguous float64 arrays (copies only where needed)."""
    return tuple(np.ascontiguousarray(params[k], dtype=np.float64) for k in PARAM_NAMES)


def numerical_gradient_trusted(params, x, t, h, strategy, activation=SIGMOID):
    """Central-difference gradient for validated inputs; returns a dict keyed like ``params``.

    Parameters
    ----------
    params : tuple of ndarray
        From :func:`as_params`.
    x : ndarray, shape (N, D)
        C-contiguous float64, finite.
    t : ndarray, shape (N,)
        int64 labels in range.
    h : float
        Positive step.
    strategy : str
        A key of :data:`STRATEGIES`.
    activation : int, default SIGMOID
        The hidden activation's code (``SIGMOID`` or ``RELU``).

    Returns
    -------
    dict of str to ndarray
        One gradient per parameter, with its shape.
    """
    return STRATEGIES[strategy](params, x, t, h, activation)


def forward_gradient_trusted(params, x, t, h, activation=SIGMOID):
    """Forward-difference gradient (L(theta + h e_i) - L(theta)) / h for validated inputs.

    The delta strategy with one-sided steps: per sample, hidden unit and distinct
    pixel value one perturbed loss, against the sample's unperturbed loss.  Same
    arguments and result as :func:`numerical_gradient_trusted` (no ``strategy``).
    """
    return _delta_strategy(params, x, t, h, activation, one_sided=True)
