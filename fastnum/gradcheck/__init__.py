"""Gradient check of any network with the book's interface: numerical gradient vs backprop.

``fastnum.gradcheck(net, x, t)`` needs only ``net.params`` (a dict of NumPy
arrays that ``loss`` reads in place), ``net.loss(x, t)`` and
``net.gradient(x, t)``; the network's own ``numerical_gradient`` is never
called.  A stack of the book's layers (Affine, Relu, Sigmoid, Convolution,
Pooling, softmax-with-loss) gets its numerical gradient from fastnum's kernels
on a copy of the parameters; any other network is differentiated through its
own ``loss``, in blocks, on all cores or on a Dask cluster.

This module is callable: ``fastnum.gradcheck(net, x, t)`` calls
:func:`gradcheck`, and ``fastnum.gradcheck.GradcheckResult`` and the other
names below stay reachable, so exporting the function at the top level does
not hide the module.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import types
import warnings
from typing import NamedTuple

import numpy as np

from fastnum._validate import (
    ParameterError,
    Setting,
    check_choice,
    check_int,
    check_positive,
    check_step,
)
from fastnum.constants import LOG_GUARD, H
from fastnum.gradcheck import _generic, _gradients, _guards, _kinks, _stack
from fastnum.gradcheck._errors import GradcheckRefusedError, UserCodeError
from fastnum.gradcheck._report import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    GradcheckResult,
    ParamCheck,
    compare,
    failing_elements,
)

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "METHODS",
    "GradcheckRefusedError",
    "GradcheckResult",
    "ParamCheck",
    "UserCodeError",
    "gradcheck",
]

#: How the numerical gradient is computed: auto picks engine for recognised stacks.
METHODS = ("auto", "engine", "generic")


class _Options(NamedTuple):
    """The check's settings, validated once."""

    h: float
    rtol: float
    atol: float
    log_guard: bool
    fast: bool
    directions: int
    seed: int
    method: str
    workers: int
    scheduler: object
    richardson: bool
    worst: int
    probe_seconds: float
    fallback_seconds: float


def gradcheck(
    net,
    x,
    t,
    *,
    h=H,
    rtol=DEFAULT_RTOL,
    atol=DEFAULT_ATOL,
    log_guard=True,
    fast=False,
    directions=4,
    seed=0,
    method="auto",
    workers=None,
    scheduler=None,
    richardson=False,
    worst=5,
    probe_seconds=120.0,
    fallback_seconds=60.0,
):
    """Compare the numerical gradient of ``net.loss`` with ``net.gradient`` (backprop).

    Parameters
    ----------
    net : object
        The book's interface: ``params`` (dict of float64 arrays that ``loss``
        reads in place), ``loss(x, t)`` (or ``loss(x, t, train_flg)``, called
        with ``train_flg=True``) and ``gradient(x, t)``.
    x : ndarray
        A batch of inputs, as ``net.loss`` takes them.
    t : ndarray
        Integer or one-hot labels.
    h : float, default 1e-4
        Central-difference step (the book's).
    rtol : float, default 1e-5
        An element passes when ``|num - bp| <= atol + rtol * |bp| + slack``.
        1e-5 covers the book's log guard (~1e-6 relative).  With the guard on,
        ``slack = 5 g max|bp|`` per parameter, g = 1e-7 / min p(true class)
        being the guard's relative effect on each sample's share of the
        gradient: shares of opposite sign cancel in ``bp`` but not in the
        guard's error.  ``log_guard=False`` removes both.
    atol : float, default 1e-6
        Covers the absolute truncation (~h^2, up to ~1e-7 with batch norm)
        and rounding (~eps * L / h) errors of elements whose gradient is ~0.
    log_guard : bool, default True
        False evaluates the loss without the 1e-7 guard on the numerical side
        (by replacing the last layer's forward on a copy), so a correct
        backprop agrees to ~1e-9; where that is impossible the report says so.
    fast : bool, default False
        Check ``directions`` random unit directions (2 loss evaluations each)
        instead of every element.  On a mismatch that no smaller step
        explains, fall back to the full check to name the parameter and element,
        with a warning, unless that would take over ``fallback_seconds``.
    directions : int, default 4
    seed : int, default 0
        Seed of the random directions.
    method : {"auto", "engine", "generic"}
        ``engine`` uses fastnum's kernels on a recognised stack of the book's
        layers (``auto`` does when numba compiles and the stack is supported);
        ``generic`` differentiates the network's own loss.
    workers : int, optional
        Processes for the generic path (default: all cores); 1 runs serially.
    scheduler : str, distributed.Client or cluster, optional
        Run the generic path on a Dask cluster instead (e.g. ``tcp://host:8786``).
    richardson : bool, default False
        Also take the step h/2 and judge the extrapolation
        ``(4 D(h/2) - D(h)) / 3``; the report adds its estimate of the
        truncation error of ``D(h)``, telling a bug from step-size error.
    worst : int, default 5
        Worst elements kept per parameter.
    probe_seconds : float, default 120
        Time for resolving the elements that fail at h (smaller steps and
        one-sided slopes of the loss, see Notes).  Elements it leaves unprobed
        are reported as unresolved: the verdict is then INCONCLUSIVE, never PASS.
    fallback_seconds : float, default 60
        Fast mode's bound on the full check it falls back to.

    Returns
    -------
    GradcheckResult
        ``.verdict`` (PASS, FAIL or INCONCLUSIVE), ``.passed``, ``.failed``
        (parameter names), ``.params[name]`` (a :class:`ParamCheck`) and ``.report()``.

    Raises
    ------
    GradcheckRefusedError
        The loss is not a function of the parameters: two evaluations at the
        same point differ (noise, a dropout mask from the network's own
        generator), the loss or backprop moved the parameters, or the loss is
        not finite.  No verdict is given either way.
    UserCodeError
        The network's own ``loss`` or ``gradient`` raised (named in one line).

    Notes
    -----
    Every element outside tolerance at h is resolved, not only the worst: a
    central difference at h/10, h/100 or h/1000 that agrees with backprop, or
    backprop between the one-sided slopes at h/100 or h/1000, is a kink of the
    loss (reported, not failed); one-sided slopes that agree with each other
    but not with backprop confirm a failure (see :mod:`fastnum.gradcheck._kinks`).

    NumPy's global random state is restored before every loss evaluation of a
    network that draws from it, and before backprop, so dropout draws the same
    mask each time; it is left as it was found.

    Examples
    --------
    >>> from fastnum.network import TwoLayerNet
    >>> net = TwoLayerNet(7, 3, 4, weight_init_std=1, seed=0, backend="numpy")
    >>> x = np.random.default_rng(1).random((5, 7))
    >>> gradcheck(net, x, np.array([0, 1, 2, 3, 0]), workers=1).passed
    True
    """
    _guards.check_net(net)
    defaults = f"defaults: rtol {DEFAULT_RTOL:g}, atol {DEFAULT_ATOL:g}"
    options = _Options(
        h=check_step(h),
        rtol=check_positive("rtol", rtol, defaults, allow_zero=True),
        atol=check_positive("atol", atol, defaults, allow_zero=True),
        log_guard=bool(log_guard),
        fast=bool(fast),
        directions=check_int("directions", directions),
        seed=seed,
        method=check_choice("method", method, METHODS),
        workers=_generic.default_workers() if workers is None else check_int("workers", workers),
        scheduler=scheduler,
        richardson=bool(richardson),
        worst=check_int("worst", worst),
        probe_seconds=check_positive("probe_seconds", probe_seconds, "default 120"),
        fallback_seconds=check_positive("fallback_seconds", fallback_seconds, "default 60"),
    )
    if options.rtol == 0 and options.atol == 0:
        raise ParameterError(
            "rtol", "{name} and {atol} are both 0: no floating-point gradient can pass."
        )
    x, t = np.asarray(x), np.asarray(t)
    _guards.check_batch(x, t)
    rng_state = np.random.get_state()  # noqa: NPY002 - the book's dropout draws from it
    try:
        stack, why_not = _gradients.recognition(net)
        with _gradients.blas_limit(stack, method):
            return _check(net, x, t, options, rng_state, (stack, why_not))
    finally:
        np.random.set_state(rng_state)  # noqa: NPY002


class _Point(NamedTuple):
    """What the check knows at theta before any numerical gradient."""

    snap: _generic.Snapshot
    own: _generic.Evaluator  # the reader's loss on a private copy, in this process
    loss: float
    loss_seconds: float
    bp: dict
    comparable: list  # parameters with a backprop gradient of their shape
    common: dict  # GradcheckResult's settings


def _check(net, x, t, o, rng_state, recognition):
    notes = []
    point = _at_theta(net, x, t, o, rng_state, notes)
    if o.fast:
        result = _fast_check(net, point, o, notes, _gradients.on_engine(recognition[0], o.method))
        if result is not None:
            return result
    with contextlib.ExitStack() as exit_stack:
        runners = _gradients.Runners(point.snap, o.workers, o.scheduler, notes, exit_stack)
        grads, engine_at, how = _numerical(net, x, t, point, o, runners, notes, recognition)
        return _verdict(net, len(x), point, grads, engine_at, how, o, runners, notes)


def _at_theta(net, x, t, o, rng_state, notes):
    """The snapshot, the loss at theta (refused unless it is a function), and backprop."""
    unguarded = False
    if not o.log_guard:
        unguarded, reason = _generic.unguarded_mode(
            net, x, t, rng_state, _stack.fastnum_stack(net) is not None
        )
        if reason:
            notes.append(
                f"log_guard=False is not possible: {reason}; the numbers include the guard."
            )
    snap = _generic.snapshot(net, x, t, rng_state, unguarded)  # before backprop touches the net
    own = _generic.evaluator_from(snap)
    loss, loss_seconds = _guards.loss_at_theta(own, snap)
    p_true = _guards.true_class_probabilities(own.net, x, t)
    guard_effect = None if p_true is None else LOG_GUARD / float(np.min(p_true))
    # The guard's slack, in units of the parameter's max |bp|: 5x its expected effect.
    guard_slack = 0.0 if unguarded or guard_effect is None else 5 * guard_effect
    bp = _guards.backprop(net, x, t, rng_state, snap)
    params = net.params
    comparable = [name for name, p in params.items() if np.shape(bp.get(name)) == np.shape(p)]
    common = dict(
        h=o.h,
        rtol=o.rtol,
        atol=o.atol,
        log_guard=not unguarded,
        guard_effect=guard_effect,
        guard_slack=guard_slack,
    )
    return _Point(snap, own, loss, loss_seconds, bp, comparable, common)


def _fast_check(net, point, o, notes, recognised):
    """Fast mode's result, or None when the full check is to run (it says so, in a warning)."""
    params, own = net.params, point.own
    if len(point.comparable) < len(params):
        notes.append("fast mode skipped: a backprop gradient is missing or misshaped")
        return None
    slack = point.common["guard_slack"]
    results = _gradients.fast_mode(
        own, params, point.bp, o.directions, o.seed, o.h, o.rtol, o.atol, slack, point.loss
    )
    _guards.refuse_unless_same(point.loss, own.loss(), "after the directions")
    method = "fast mode: the network's own loss, serially"
    done = dict(method=method, directions=tuple(results), **point.common)
    if all(ok for *_, ok in results):
        return GradcheckResult({}, notes=tuple(notes), **done)
    n_params = sum(int(np.size(p)) for p in params.values())
    estimate = 0.0 if recognised else 2 * n_params * point.loss_seconds / max(1, o.workers)
    if estimate > o.fallback_seconds:
        notes.append(
            f"fast mode found a mismatch that no smaller step explains; a per-element "
            f"check of the {n_params:,} parameters would take about {estimate:.0f} s "
            f"(over fallback_seconds={o.fallback_seconds:g}), so it was not run: run "
            "with fast=False (no --fast) to name the parameter and the element"
        )
        return GradcheckResult({}, notes=tuple(notes), **done)
    warnings.warn(
        "gradcheck fast mode found a mismatch; checking every element"
        + (f" (about {estimate:.0f} s)" if estimate else ""),
        stacklevel=4,
    )
    notes.append("fast mode found a mismatch, so every element is checked below")
    return None


def _numerical(net, x, t, point, o, runners, notes, recognition):
    """Numerical gradients at h (and h/2), ``at(step, indices)`` on the engine, and how."""
    steps = (o.h, o.h / 2) if o.richardson else (o.h,)
    if o.method != "generic":
        try:
            stack, why_not = recognition
            if stack is None:
                raise why_not
            guard = point.common["log_guard"]
            grads, engine_at = _gradients.engine_gradients(
                net, stack, x, t, steps, guard, point, require_jit=o.method == "auto"
            )
            return (
                grads,
                engine_at,
                "engine fast path: fastnum's kernels on a copy of the parameters",
            )
        except _stack.EngineUnsupportedError as exc:
            if o.method == "engine":
                raise ParameterError(
                    "method",
                    "{engine} is not possible: {why}.",
                    engine=Setting("method", "engine"),
                    why=exc,
                ) from None
            notes.append(f"generic path: {exc}.")
    # On a cluster the worker count is unknown here: plan blocks for a generous one.
    n_blocks_for = _generic.CLUSTER_WORKERS if o.scheduler is not None else o.workers
    runner = runners.get(parallel=True)
    grads = _gradients.generic_gradients(runner, net.params, steps, n_blocks_for)
    where = {"dask": "on a Dask cluster", "serial": "serially"}.get(
        runner.where, f"on {o.workers} processes"
    )
    return grads, None, f"generic path: the network's own loss, {where}"


def _verdict(net, batch, point, grads, engine_at, how, o, runners, notes):
    """Resolve every failing element and compare, parameter by parameter."""
    params, bp, comparable = net.params, point.bp, point.comparable
    num, truncation = grads[0], {name: None for name in params}
    for name in comparable:
        if not np.any(num[name]) and float(np.max(np.abs(bp[name]), initial=0)) > o.atol:
            notes.append(
                f"the loss did not change when any element of {name} moved by +-h, while "
                f"backprop says it should: does loss(x, t) read net.params[{name!r}] in place? "
                "(a layer holding a copy of it, or a params entry replaced after the layers "
                "were built)"
            )
    unchecked, unchecked_notes = _gradients.unchecked_notes(net, num, bp, comparable, o.atol, batch)
    notes += unchecked_notes
    if o.richardson:
        extrapolated = {n: (4 * grads[1][n] - grads[0][n]) / 3 for n in params}
        truncation = {
            n: float(np.max(np.abs(grads[0][n] - extrapolated[n]), initial=0)) for n in params
        }
        num = extrapolated
        rounding = np.finfo(np.float64).eps * abs(point.loss) / o.h
        notes.append(
            f"Richardson: the verdict uses (4 D(h/2) - D(h)) / 3; trunc. est = "
            f"max |D(h) - extrapolated|; rounding error ~ eps |L| / h = {rounding:.1e}. "
            "An error far above both is a bug, not the step size."
        )

    excess, found = {}, {}
    for name in comparable:
        excess[name], tol, failing, finite = failing_elements(
            num[name], bp[name], o.rtol, o.atol, point.common["guard_slack"]
        )
        flat_num, flat_bp = num[name].reshape(-1), bp[name].reshape(-1)
        found[name] = _kinks.start(
            failing, flat_num[failing], flat_bp[failing], tol[failing], finite[failing]
        )
    probe = _gradients.prober(runners, point.loss_seconds)
    _gradients.resolve_elements(found, engine_at, probe, o.h, point.loss, o.probe_seconds)
    _guards.refuse_unless_same(point.loss, point.own.loss(), "at the end of the check")
    _guards.refuse_if_moved(point.own.net.params, point.snap.net.params, "net.loss(x, t)")
    checks = {
        name: compare(
            name,
            np.shape(p),
            num[name],
            bp.get(name),
            (excess[name], found[name].indices, found[name].state) if name in found else None,
            o.atol,
            o.worst,
            truncation[name],
        )
        for name, p in params.items()
    }
    return GradcheckResult(
        checks, method=how, notes=tuple(notes), unchecked=unchecked, **point.common
    )


class _CallableModule(types.ModuleType):
    """Lets ``fastnum.gradcheck(net, x, t)`` call the function while the module stays a module."""

    def __call__(self, *args, **kwargs):
        return gradcheck(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
__signature__ = inspect.signature(gradcheck)
