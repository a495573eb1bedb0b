"""One numba engine for sequential layer stacks: forward pass, loss and numerical gradient.

The engine is the one dispatcher between the networks and the kernels: every
network, the gradient check, the registry and the benchmarks reach the kernels
through :func:`predict`, :func:`loss`, :func:`numerical_gradient` and
:func:`numerical_gradient_at`.

A *stack* is a tuple of layer specs applied in order, followed implicitly by
softmax-with-loss::

    ("conv", W_name, b_name, stride, pad)   # W (FN, C, FH, FW), b (FN,)
    ("pool", pool_h, pool_w, stride, pad)   # max pooling, zero padding
    ("relu",)  ("sigmoid",)
    ("affine", W_name, b_name)              # W (D, M), b (M,); flattens (N, ...) -> (N, D)
    ("batchnorm", gamma_name, beta_name)    # gamma, beta (prod(shape),): training mode
    ("dropout", mask_name)                  # times masks[mask_name], (N, prod(shape)) of 0/1

Batch normalisation is the book's training mode (each feature normalised with the
batch's mean and variance, epsilon ``BN_EPSILON``), so it couples the samples: the
engine's loss is the training loss.  A dropout mask is data, not a parameter: it is
passed in the ``masks`` dict of every call and gets no gradient (the engine never
draws).  ``weight_decay`` adds the book's ``0.5 * lambda * sum(W**2)`` over the conv
and affine weights to the loss, and its exact change to every weight's difference
quotient (``(R(w + h) - R(w - h)) / 2h`` of the real term values, all strategies).

Inputs are trusted (the networks' public front ends validate): ``params`` maps
names to float64 C-contiguous arrays, ``x`` is float64 C-contiguous, (N, C, H, W)
for a stack starting with conv and (N, D) otherwise, ``t`` int64 labels.

Dispatch: three tables
----------------------
:data:`LAYER_KINDS`
    One row per layer type: output shape, batch forward, parameter slots
    (:mod:`fastnum._engine_layers`).  A row makes a layer usable by ``predict``,
    ``loss`` and the ``full`` gradient at once.
:data:`STRATEGIES`
    One row per numerical-gradient strategy (both evaluate the loss at
    theta +- h e_i for every parameter; no analytic derivatives anywhere).  The
    backend's strategy names (the networks' ``strategy=``, the CLI's
    ``--strategy``) are this table's keys.  ``full`` perturbs a private copy of
    the parameters and runs the whole forward pass and loss of the batch per
    evaluation; it covers every stack.  ``delta`` caches the unperturbed pass and
    recomputes only what a perturbation changes, by the first row of
    :data:`DELTA_KERNELS` whose plan covers the stack: an optional first
    convolution followed by any activations and poolings, then affine layers each
    followed by at most one activation (:mod:`fastnum._engine_delta`); dense
    stacks with batch norm or dropout, each affine layer followed by
    ``[batchnorm] [activation] [dropout]`` in the book's order; dense ReLU
    stacks of two or more hidden layers (:mod:`fastnum.kernels.dense_relu`: cached
    logits plus a Jacobian column wherever no corner can be crossed, the exact
    layers elsewhere); deeper
    convolution stacks (several convolutions, poolings, activations and dropout
    before a dense part, the book's chapter 8 net: :mod:`fastnum._conv_stack_plan`,
    :mod:`fastnum.kernels.conv_stack`).  Any other stack (two activations in a
    row, batch norm after a convolution, ...) runs ``full``: that fallback is the
    row's ``fallback`` column, and a strategy without one refuses a stack it does not cover
    (:class:`StrategyNotImplementedError`) instead of running another.
:data:`FAST_PATHS`
    Hand-written kernels that serve some stacks faster than the general path, at
    the book's log guard: the book's two-layer kernel
    (:mod:`fastnum.kernels.two_layer`: the sigmoid net for both strategies, the
    chapter 5 ReLU net for ``delta``; also ``predict``/``loss`` of the sigmoid
    net) and the dense ``full`` kernel, parallel over parameters
    (:mod:`fastnum.kernels.dense_full`, stacks of one hidden activation).  The
    first row that covers the stack runs; the measured times of each path are in
    the benchmark report (``docs/benchmarks/report.md``, ``scripts/bench_report.py``
    regenerates it).  All of them pass the same equivalence tests.

The functions that the rows of :data:`DELTA_KERNELS` and :data:`FAST_PATHS` name are in
:mod:`fastnum._engine_paths`: each checks that its kernel covers the stack and calls it.

Memory of the delta caches grows with the batch: :func:`delta_memory` counts
what the delta strategy allocates, and the gradient raises
:class:`DeltaMemoryError` (a ``MemoryError``) *before allocating* when that
exceeds :func:`available_memory`, naming the largest batch that fits
(:mod:`fastnum._engine_memory`).

Where a new piece goes: the map in :mod:`fastnum.kernels`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from fastnum._engine_layers import (  # noqa: F401
    _FORWARD_CHUNK,
    LAYER_KINDS,
    LayerKind,
    _add_decay,
    _full_at,
    _logits,
    _mean_loss,
    _weight_decay_term,
    param_names,
)
from fastnum._engine_paths import (
    cells,
    chapter6_delta,
    chapter6_plan,
    conv_stack_delta,
    conv_stack_plan,
    dense_full_gradient,
    dense_relu_delta,
    dense_relu_plan,
    layered_delta,
    layered_plan,
    two_layer_forward,
    two_layer_gradient,
    two_layer_names,
    two_layer_params,
)
from fastnum.constants import LOG_GUARD as BOOK_LOG_GUARD  # the fast-path kernels hard-code it
from fastnum.constants import H
from fastnum.kernels._blocks import RELU, SIGMOID

# The delta kernels' modules load on first use: the book's network runs on a fast path
# and never needs them, and importing them is most of ``import fastnum.engine`` (a warm
# process's first call is mostly imports).  Their names stay reachable from here.
_LAZY_MODULES = {
    "fastnum._engine_delta": (
        "_delta_at",
        "_delta_plan",
        "_DeltaPlan",
        "_is_chapter6",
        "_norm_delta_at",
        "_norm_plan",
        "_run_tasks",
    ),
    "fastnum._engine_memory": (
        "MEMORY_LIMIT_ENV",
        "DeltaMemory",
        "DeltaMemoryError",
        "_check_delta_memory",
        "available_memory",
        "delta_memory",
    ),
}
_LAZY = {name: module for module, names in _LAZY_MODULES.items() for name in names}


def __getattr__(name):
    """The delta modules' names, imported on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------- fast paths


class FastPath(NamedTuple):
    """A hand-written kernel that serves some stacks (at the book's guard, dense input)."""

    name: str
    strategies: tuple  # the strategies it computes
    sampled: bool  # also serves numerical_gradient_at (its whole gradient, then the cells)
    gradient: Callable  # (stack, params, x, t, h, strategy) -> {name: gradient} or None


#: The fast paths, tried in order; the first that returns a gradient wins.  The two-layer
#: kernel also serves the ReLU net's ``delta``: it evaluates each distinct input value
#: once per sample, which the engine's dense layer does not.  Sampled gradients take the
#: two-layer kernel's whole gradient, which costs less than the engine's caches.
FAST_PATHS = (
    FastPath("two-layer sigmoid", ("full", "delta"), True, two_layer_gradient("sigmoid", SIGMOID)),
    FastPath("two-layer relu", ("delta",), True, two_layer_gradient("relu", RELU)),
    FastPath("dense full", ("full",), False, dense_full_gradient),
)


def _fast_path(stack, params, x, t, h, strategy, log_guard, indices=None):
    """The gradient from the first fast path that covers the stack, else None."""
    if log_guard != BOOK_LOG_GUARD or x.ndim != 2:
        return None
    for fast in FAST_PATHS:
        if strategy not in fast.strategies or (indices is not None and not fast.sampled):
            continue
        whole = fast.gradient(stack, params, x, t, h, strategy)
        if whole is not None:
            return cells(whole, indices)
    return None


# ---------------------------------------------------------------------------- strategies


def _full(stack, params, x, t, h, log_guard, indices, masks):
    """The ``full`` strategy: every stack."""
    if indices is not None:
        return _full_at(stack, params, x, t, h, log_guard, indices, masks)
    names = param_names(stack)
    every = {k: np.arange(params[k].size) for k in names}
    flat = _full_at(stack, params, x, t, h, log_guard, every, masks)
    return {k: flat[k].reshape(params[k].shape) for k in names}


class DeltaKernel(NamedTuple):
    """A delta kernel: which stacks it covers and how it runs."""

    name: str
    plan: Callable  # (stack, x) -> plan, or None when the kernel does not cover the stack
    run: Callable  # (plan, params, x, t, h, log_guard, indices, masks) -> gradients


#: The delta kernels, tried in order: the first whose plan covers the stack and that
#: returns a gradient runs (a kernel may decline a batch by returning None).
DELTA_KERNELS = (
    DeltaKernel("deep dense relu, corner-aware", dense_relu_plan, dense_relu_delta),
    DeltaKernel("dense with batch norm / dropout", chapter6_plan, chapter6_delta),
    DeltaKernel("conv block + dense", layered_plan, layered_delta),
    DeltaKernel("deep conv stack + dense", conv_stack_plan, conv_stack_delta),
)


def _delta(stack, params, x, t, h, log_guard, indices, masks):
    """The ``delta`` strategy, or None when no delta kernel covers the stack."""
    for kernel in DELTA_KERNELS:
        plan = kernel.plan(stack, x)
        grads = (
            None if plan is None else kernel.run(plan, params, x, t, h, log_guard, indices, masks)
        )
        if grads is not None:
            return grads
    return None


class Strategy(NamedTuple):
    """A numerical-gradient strategy of the engine."""

    gradient: Callable  # (stack, params, x, t, h, log_guard, indices, masks) -> dict or None
    fallback: str | None  # the strategy that runs a stack this one does not cover (None: refuse)


#: The numerical-gradient strategies, simplest first (the CLI's choices, the registry's
#: ``numba-<name>`` implementations and the benchmarks follow this order).  ``delta``
#: falls back to ``full`` for the stacks no delta kernel covers: the networks and the
#: gradient check default to ``delta`` for every stack, and ``full`` gives the same
#: values (the equivalence tests compare them).
STRATEGIES = {
    "full": Strategy(_full, None),
    "delta": Strategy(_delta, "full"),
}
DEFAULT_STRATEGY = "delta"


class StrategyNotImplementedError(ValueError):
    """A known strategy that does not cover the stack and has no fallback."""


def check_strategy(strategy):
    """Validate a numerical-gradient strategy name (a key of :data:`STRATEGIES`)."""
    if strategy not in STRATEGIES:
        raise ValueError(
            f"strategy={strategy!r} is unknown; use one of {', '.join(map(repr, STRATEGIES))} "
            f"(default {DEFAULT_STRATEGY!r}; the fastnum.engine docstring describes each)."
        )
    return strategy


def _gradient(stack, params, x, t, h, strategy, log_guard, masks, indices):
    """The data term's gradient (whole, or at ``indices``) by ``strategy``'s path."""
    check_strategy(strategy)
    fast = _fast_path(stack, params, x, t, h, strategy, log_guard, indices)
    if fast is not None:
        return fast
    name = strategy
    while True:
        row = STRATEGIES[name]
        grads = row.gradient(stack, params, x, t, h, log_guard, indices, masks)
        if grads is not None:
            return grads
        if row.fallback is None:
            kinds = ", ".join(spec[0] for spec in stack)
            raise StrategyNotImplementedError(
                f"strategy={strategy!r} does not cover the stack ({kinds}); use "
                f"strategy='full', which covers every stack, or add a kernel for it "
                "(the map in fastnum.kernels says where)."
            )
        name = row.fallback


# ---------------------------------------------------------------------------- public API


def predict(stack, params, x, masks=None):
    """Softmax probabilities of the stack for a batch.

    Parameters
    ----------
    stack : tuple of layer specs
    params : dict of str to ndarray
    x : ndarray, (N, C, H, W) for a stack starting with conv, else (N, D)
    masks : dict of str to ndarray, optional
        The dropout masks the stack names, each (N, ...) of 0/1 (module docstring).

    Returns
    -------
    ndarray, shape (N, K)
    """
    names = two_layer_names(stack, x)
    if names is not None:  # the book's network keeps its own (already compiled) kernels
        from fastnum.kernels import two_layer

        return two_layer.predict_trusted(two_layer_params(params, names), x)
    z = _logits(stack, params, x, masks)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def loss(stack, params, x, t, log_guard=BOOK_LOG_GUARD, masks=None, weight_decay=0.0):
    """Batch-mean softmax cross-entropy, ``-log(y[t] + log_guard)`` (guard 0.0: none).

    Parameters
    ----------
    stack, params, x, masks
        As for :func:`predict`.
    t : ndarray of int64, shape (N,)
    log_guard : float, default 1e-7
    weight_decay : float, default 0.0
        The book's lambda: ``0.5 * lambda * sum(W**2)`` over the conv and affine
        weights is added to the loss.

    Returns
    -------
    float
    """
    if weight_decay:
        return loss(stack, params, x, t, log_guard, masks) + _weight_decay_term(
            stack, params, weight_decay
        )
    names = two_layer_names(stack, x)
    if names is not None and log_guard == BOOK_LOG_GUARD:
        from fastnum.kernels import two_layer

        return two_layer.loss_trusted(two_layer_params(params, names), x, t)
    return float(_mean_loss(stack, params, x, t, log_guard, masks))


def numerical_gradient(
    stack,
    params,
    x,
    t,
    h=H,
    strategy=DEFAULT_STRATEGY,
    log_guard=BOOK_LOG_GUARD,
    masks=None,
    weight_decay=0.0,
):
    """Central-difference gradient of the batch-mean loss over every parameter.

    Parameters
    ----------
    stack : tuple of layer specs
    params : dict of str to ndarray
    x : ndarray
    t : ndarray of int64
    h : float, default 1e-4
    strategy : {"delta", "full"}
        A key of :data:`STRATEGIES`; ``delta`` falls back to ``full`` for stacks it
        does not cover (module docstring).
    log_guard : float, default 1e-7
    masks : dict of str to ndarray, optional
        The dropout masks the stack names (:func:`predict`); every evaluation uses them.
    weight_decay : float, default 0.0
        The book's lambda (:func:`loss`).

    Returns
    -------
    dict of str to ndarray
        One gradient per parameter of the stack, shaped like it.

    Raises
    ------
    ValueError
        For a strategy that is not in :data:`STRATEGIES`, or
        :class:`StrategyNotImplementedError` for one that does not cover the stack.
    """
    grads = _gradient(stack, params, x, t, h, strategy, log_guard, masks, None)
    return _add_decay(grads, stack, params, h, weight_decay)


def forward_gradient(stack, params, x, t, h=H, log_guard=BOOK_LOG_GUARD, weight_decay=0.0):
    """Forward-difference gradient ``(L(theta + h e_i) - L(theta)) / h`` over every parameter.

    The delta kernels with one-sided steps: the book's two-layer kernel for the two-layer
    stacks it serves (at the book's log guard), else the conv block + dense kernel
    (:mod:`fastnum.kernels.conv_delta`, :mod:`fastnum.kernels.dense_delta`).  Each pair of
    evaluations is theta + h e_i and theta itself, both real loss values evaluated the
    same way.  ``weight_decay`` adds the decay term's own one-sided difference to each
    weight's, ``(R(w + h) - R(w)) / h`` of the real term values, as :func:`numerical_gradient`
    does for central differences.

    Parameters
    ----------
    stack : tuple of layer specs
    params : dict of str to ndarray
    x : ndarray
    t : ndarray of int64
    h : float, default 1e-4
    log_guard : float, default 1e-7
    weight_decay : float, default 0.0
        The book's lambda: ``0.5 * lambda * sum(W**2)`` over the conv and affine weights.

    Returns
    -------
    dict of str to ndarray
        One gradient per parameter, in its shape.

    Raises
    ------
    StrategyNotImplementedError
        For a stack that kernel does not cover (batch norm, dropout, several
        convolutions): use :func:`fastnum.estimators.estimate_gradient`, whose
        reference loop covers every network.
    DeltaMemoryError
        When the kernel's caches would not fit in memory.
    """
    from fastnum._engine_delta import _delta_at, _delta_plan
    from fastnum._engine_memory import _check_delta_memory

    grads = two_layer_forward(stack, params, x, t, h) if log_guard == BOOK_LOG_GUARD else None
    if grads is None:
        plan = _delta_plan(stack)
        if plan is None:
            raise StrategyNotImplementedError(
                "forward differences have a delta kernel for a first convolution block and "
                "affine layers only; this stack has other layers"
            )
        _check_delta_memory(plan, params, x)
        grads = _delta_at(plan, params, x, t, h, log_guard, None, one_sided=True)
    return _add_decay(grads, stack, params, h, weight_decay, one_sided=True)


def numerical_gradient_at(
    stack,
    params,
    x,
    t,
    indices,
    h=H,
    strategy=DEFAULT_STRATEGY,
    log_guard=BOOK_LOG_GUARD,
    masks=None,
    weight_decay=0.0,
):
    """Central-difference gradient at some parameters only.

    Parameters
    ----------
    stack, params, x, t, h, strategy, log_guard, masks, weight_decay
        As for :func:`numerical_gradient`.
    indices : dict of str to array of int
        Flat (row-major) indices into ``params[name]``.

    Returns
    -------
    dict of str to ndarray
        ``name -> gradient at indices[name]`` (1-D, in the given order).
    """
    check_strategy(strategy)
    indices = {k: np.asarray(v, dtype=np.int64).reshape(-1) for k, v in indices.items()}
    grads = _gradient(stack, params, x, t, h, strategy, log_guard, masks, indices)
    return _add_decay(grads, stack, params, h, weight_decay, indices)
