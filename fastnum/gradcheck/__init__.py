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
import math
import sys
import types
from collections.abc import Mapping

import numpy as np

from fastnum._jit import JIT_ENABLED, one_blas_thread
from fastnum._validate import check_choice, check_int, check_positive, check_step
from fastnum.gradcheck import _generic, _stack
from fastnum.gradcheck._report import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    GradcheckResult,
    ParamCheck,
    at_kink,
    compare,
    failing_elements,
)
from fastnum.reference import LOG_GUARD, H

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "METHODS", "GradcheckResult", "ParamCheck", "gradcheck"]

#: How the numerical gradient is computed: auto picks engine for recognised stacks.
METHODS = ("auto", "engine", "generic")


def _check_net(net):
    params = getattr(net, "params", None)
    if not isinstance(params, Mapping) or not params:
        raise TypeError(
            f"{type(net).__name__} has no params dict; gradcheck needs the book's "
            "interface: net.params (name -> array), net.loss(x, t), "
            "net.gradient(x, t)."
        )
    for method in ("loss", "gradient"):
        if not callable(getattr(net, method, None)):
            raise TypeError(
                f"{type(net).__name__} has no {method}(x, t) method; gradcheck "
                "needs net.loss(x, t) and net.gradient(x, t)."
            )
    for name, value in params.items():
        if not isinstance(value, np.ndarray) or value.dtype != np.float64:
            raise TypeError(
                f"net.params[{name!r}] is {type(value).__name__} "
                f"{getattr(value, 'dtype', '')}; central differences with h ~ 1e-4 "
                "need float64 NumPy arrays that the loss reads in place."
            )


def _true_class_probabilities(net, x, t):
    """p(true class) per sample after a loss evaluation, or None when the net does not say."""
    name = _generic.last_layer_name(net)
    y = getattr(getattr(net, name), "y", None) if name else None
    if y is None and _stack.fastnum_stack(net) is not None and hasattr(net, "predict"):
        y = net.predict(x)
    y = np.asarray(y) if y is not None else None
    if y is None or y.ndim != 2 or y.shape[0] != len(x):
        return None
    return y[np.arange(len(x)), _generic.label_indices(t)]


def _engine_gradients(net, stack, x, t, steps, log_guard, own_loss, require_jit):
    """Numerical gradients at each step from the kernels, after checking the stack is the net.

    Returns the gradients and ``at(step, indices)``: the gradient at another step, at the
    flat ``indices[name]`` only (the elements a kink may explain), as 1-D arrays.
    """
    from fastnum import engine

    params, x, t, guard = _stack.engine_inputs(stack, net.params, x, t, log_guard)
    engine_loss = engine.loss(stack, params, x, t, log_guard=guard)
    if not abs(engine_loss - own_loss) <= 1e-9 * max(1.0, abs(own_loss)):
        raise _stack.EngineUnsupportedError(
            f"its loss {own_loss!r} differs from that of the recognised layers {engine_loss!r}, "
            "so its own loss is differentiated"
        )
    if require_jit and not JIT_ENABLED:
        raise _stack.EngineUnsupportedError("numba's JIT is off, so the kernels are slow")
    grads = [engine.numerical_gradient(stack, params, x, t, h=s, log_guard=guard) for s in steps]

    def at(step, indices):
        return engine.numerical_gradient_at(stack, params, x, t, indices, h=step, log_guard=guard)

    return grads, at


def _generic_gradients(snap, params, steps, workers, scheduler, n_blocks_for):
    blocks = _generic.plan_blocks(params, n_blocks_for)
    tasks = [("block", block, step) for step in steps for block in blocks]
    values = _generic.run_tasks(snap, tasks, workers, scheduler)
    grads = []
    for i in range(len(steps)):
        flat = {name: [] for name in params}
        step_values = values[i * len(blocks) : (i + 1) * len(blocks)]
        for (name, _start, _stop), value in zip(blocks, step_values, strict=True):
            flat[name].append(value)
        grads.append(
            {
                name: np.concatenate(parts).reshape(np.shape(params[name]))
                for name, parts in flat.items()
            }
        )
    return grads


def _find_kinks(elements, bp, rtol, h, own, own_loss, engine_at):
    """name -> flat indices of failing elements that sit on a kink of the loss (see at_kink).

    ``elements[name]`` is :func:`failing_elements` of each comparable parameter; only
    the elements it probes are asked.  On the engine path one more kernel call per small
    step gives all their central differences at that step, enough where no corner sits
    exactly at theta; the rest get the network's own one-sided slopes.
    """
    # name -> (the parameter's tolerance floor, its elements still to probe)
    pending = {name: (e[1], e[3]) for name, e in elements.items() if len(e[3])}
    kinks = {name: set() for name in pending}
    # h/100 first; h/1000 for corners closer still (tiny pixels times tiny weights).
    for step in (h / 100, h / 1000):
        if not pending:
            break
        # Rounding error of a slope at this step, with a factor 10 for the loss's sums.
        rounding = 10 * np.finfo(np.float64).eps * max(1.0, abs(own_loss)) / step
        at_step = None
        if engine_at is not None:
            at_step = engine_at(step, {name: probed for name, (_, probed) in pending.items()})
        for name, (floor, probed) in list(pending.items()):
            bp_q = np.asarray(bp[name], dtype=np.float64).flat[probed]
            tol = floor + rtol * np.abs(bp_q)
            found = np.zeros(len(probed), dtype=bool)
            if at_step is not None:
                found = np.abs(at_step[name] - bp_q) <= tol + rounding
            for i in np.flatnonzero(~found):
                slopes = own.one_sided(name, int(probed[i]), step, own_loss)
                found[i] = at_kink(bp_q[i], tol[i], slopes, rounding)
            kinks[name].update(probed[found].tolist())
            if found.all():
                del pending[name]
            else:
                pending[name] = (floor, probed[~found])
    return kinks


def _blas_limit(net, method):
    """One BLAS thread while the engine's kernels run between the network's own matrix products.

    Otherwise BLAS threads spinning after ``net.loss`` / ``net.gradient`` take the cores
    from the kernels: the chapter 5 network's check took ~4x longer on 2 cores.  The
    generic path keeps BLAS as it is (its worker processes take one thread each).
    """
    if method == "generic" or not JIT_ENABLED:
        return contextlib.nullcontext()
    try:
        _stack.recognise(net)
    except _stack.EngineUnsupportedError:
        return contextlib.nullcontext()
    return one_blas_thread()


def _directions(params, bp, k, seed):
    """k random unit directions over all parameters, and backprop's derivative along each."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        v = {name: rng.standard_normal(np.shape(p)) for name, p in params.items()}
        norm = math.sqrt(sum(float(np.sum(part**2)) for part in v.values()))
        v = {name: part / norm for name, part in v.items()}
        out.append((v, sum(float(np.sum(v[name] * bp[name])) for name in params)))
    return out


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
        Elements on a kink of the loss (a ReLU input exactly at 0) are
        recognised by their one-sided slopes and reported, not failed.
    log_guard : bool, default True
        False evaluates the loss without the 1e-7 guard on the numerical side
        (by replacing the last layer's forward on a copy), so a correct
        backprop agrees to ~1e-9; where that is impossible the report says so.
    fast : bool, default False
        Check ``directions`` random unit directions (2 loss evaluations each)
        instead of every element; on a mismatch, fall back to the full check
        to name the parameter and element.
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

    Returns
    -------
    GradcheckResult
        ``.passed``, ``.failed`` (parameter names), ``.params[name]`` (a
        :class:`ParamCheck`) and ``.report()``.

    Notes
    -----
    NumPy's global random state is restored before every loss evaluation and
    before backprop, so dropout draws the same mask each time; it is left as
    it was found.

    Examples
    --------
    >>> from fastnum.network import TwoLayerNet
    >>> net = TwoLayerNet(7, 3, 4, weight_init_std=1, seed=0, backend="numpy")
    >>> x = np.random.default_rng(1).random((5, 7))
    >>> gradcheck(net, x, np.array([0, 1, 2, 3, 0]), workers=1).passed
    True
    """
    _check_net(net)
    h = check_step(h)
    defaults = f"defaults: rtol {DEFAULT_RTOL:g}, atol {DEFAULT_ATOL:g}"
    atol = check_positive("atol", atol, defaults, allow_zero=True)
    rtol = check_positive("rtol", rtol, defaults, allow_zero=True)
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol are both 0: no floating-point gradient can pass.")
    directions = check_int("directions", directions)
    worst = check_int("worst", worst)
    check_choice("method", method, METHODS)
    workers = _generic.default_workers() if workers is None else check_int("workers", workers)
    x, t = np.asarray(x), np.asarray(t)
    if len(x) != len(t):
        raise ValueError(f"x has {len(x)} samples but t has {len(t)}; pass one label per sample.")
    rng_state = np.random.get_state()  # noqa: NPY002 - the book's dropout draws from it
    try:
        with _blas_limit(net, method):
            return _check(
                net,
                x,
                t,
                h,
                rtol,
                atol,
                log_guard,
                fast,
                directions,
                seed,
                method,
                workers,
                scheduler,
                richardson,
                worst,
                rng_state,
            )
    finally:
        np.random.set_state(rng_state)  # noqa: NPY002


def _check(
    net,
    x,
    t,
    h,
    rtol,
    atol,
    log_guard,
    fast,
    n_directions,
    seed,
    method,
    workers,
    scheduler,
    richardson,
    worst,
    rng_state,
):
    notes = []
    unguarded = False
    if not log_guard:
        unguarded, reason = _generic.unguarded_mode(
            net, x, t, rng_state, _stack.fastnum_stack(net) is not None
        )
        if reason:
            notes.append(
                f"log_guard=False is not possible: {reason}; the numbers include the guard."
            )
    snap = _generic.snapshot(net, x, t, rng_state, unguarded)  # before backprop touches the net
    own = _generic.evaluator_from(snap)
    own_loss = own.loss()
    p_true = _true_class_probabilities(own.net, x, t)
    guard_effect = None if p_true is None else LOG_GUARD / float(np.min(p_true))
    # The guard's slack, in units of the parameter's max |bp|: 5x its expected effect.
    guard_slack = 0.0 if unguarded or guard_effect is None else 5 * guard_effect
    np.random.set_state(rng_state)  # noqa: NPY002 - backprop sees the same dropout mask
    bp = net.gradient(x, t)
    if not isinstance(bp, Mapping):
        raise TypeError(
            f"net.gradient(x, t) returned {type(bp).__name__}; expected a dict "
            "name -> array like net.params."
        )
    params = net.params
    common = dict(
        h=h,
        rtol=rtol,
        atol=atol,
        log_guard=not unguarded,
        guard_effect=guard_effect,
        guard_slack=guard_slack,
    )

    shapes_match = all(np.shape(bp.get(name)) == np.shape(p) for name, p in params.items())
    if fast and not shapes_match:
        notes.append("fast mode skipped: a backprop gradient is missing or misshaped")
    elif fast:
        results = []
        for v, along_bp in _directions(params, bp, n_directions, seed):
            along_num = own.directional(v, h)
            slack = guard_slack * sum(float(np.sum(np.abs(v[n] * bp[n]))) for n in params)
            ok = abs(along_num - along_bp) <= atol + rtol * abs(along_bp) + slack
            results.append((along_num, along_bp, bool(ok)))
        if all(ok for *_, ok in results):
            return GradcheckResult(
                {},
                method="fast mode: the network's own loss, serially",
                notes=tuple(notes),
                directions=tuple(results),
                **common,
            )
        notes.append("fast mode found a mismatch, so every element is checked below")

    steps = (h, h / 2) if richardson else (h,)
    grads, how, engine_at = None, None, None
    if method != "generic":
        try:
            stack = _stack.recognise(net)
            grads, engine_at = _engine_gradients(
                net, stack, x, t, steps, not unguarded, own_loss, require_jit=method == "auto"
            )
            how = "engine fast path: fastnum's kernels on a copy of the parameters"
        except _stack.EngineUnsupportedError as exc:
            if method == "engine":
                raise ValueError(f"method='engine' is not possible: {exc}.") from None
            notes.append(f"generic path: {exc}.")
    if grads is None:
        # On a cluster the worker count is unknown here: plan blocks for a generous one.
        n_blocks_for = _generic.CLUSTER_WORKERS if scheduler is not None else workers
        grads = _generic_gradients(snap, params, steps, workers, scheduler, n_blocks_for)
        where = (
            "on a Dask cluster"
            if scheduler is not None
            else "serially"
            if workers == 1
            else f"on {workers} processes"
        )
        how = f"generic path: the network's own loss, {where}"

    num, truncation = grads[0], {name: None for name in params}
    for name, p in params.items():
        if np.shape(bp.get(name)) == np.shape(p) and not np.any(num[name]) and np.any(bp[name]):
            notes.append(
                f"the loss did not change when any element of {name} moved by +-h, while "
                f"backprop says it should: does loss(x, t) read net.params[{name!r}] in place? "
                "(a layer holding a copy of it, or a params entry replaced after the layers "
                "were built)"
            )
    if richardson:
        extrapolated = {n: (4 * grads[1][n] - grads[0][n]) / 3 for n in params}
        truncation = {
            n: float(np.max(np.abs(grads[0][n] - extrapolated[n]), initial=0)) for n in params
        }
        num = extrapolated
        rounding = np.finfo(np.float64).eps * abs(own_loss) / h
        notes.append(
            f"Richardson: the verdict uses (4 D(h/2) - D(h)) / 3; trunc. est = "
            f"max |D(h) - extrapolated|; rounding error ~ eps |L| / h = {rounding:.1e}. "
            "An error far above both is a bug, not the step size."
        )

    elements = {
        name: failing_elements(num[name], bp[name], rtol, atol, guard_slack)
        for name, p in params.items()
        if np.shape(bp.get(name)) == np.shape(p)
    }
    kinks = _find_kinks(elements, bp, rtol, h, own, own_loss, engine_at)
    checks = {
        name: compare(
            name,
            np.shape(p),
            num[name],
            bp.get(name),
            elements.get(name),
            atol,
            worst,
            truncation[name],
            kinks.get(name, ()),
        )
        for name, p in params.items()
    }
    return GradcheckResult(checks, method=how, notes=tuple(notes), **common)


class _CallableModule(types.ModuleType):
    """Lets ``fastnum.gradcheck(net, x, t)`` call the function while the module stays a module."""

    def __call__(self, *args, **kwargs):
        return gradcheck(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
__signature__ = inspect.signature(gradcheck)
