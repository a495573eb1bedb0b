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
import time
import types
import warnings
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from fastnum._jit import JIT_ENABLED, one_blas_thread
from fastnum._validate import (
    ParameterError,
    Setting,
    check_choice,
    check_int,
    check_positive,
    check_step,
)
from fastnum.constants import LOG_GUARD, LOSS_MATCH_RTOL, H
from fastnum.gradcheck import _generic, _kinks, _stack
from fastnum.gradcheck._errors import GradcheckRefusedError, UserCodeError, describe_exception
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

#: Two losses at the same point may differ by this, relative: far below anything a central
#: difference at h >= 1e-12 could turn into a visible gradient error, far above nothing.
SAME_LOSS_RTOL = 1e-13


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
        if value.ndim == 0:
            raise TypeError(
                f"net.params[{name!r}] is a 0-d array; a layer cannot read a 0-d array in "
                "place. Store it with shape (1,) (np.array([value])) and index it."
            )
        bad = int(np.count_nonzero(~np.isfinite(value)))
        if bad:
            raise ValueError(
                f"net.params[{name!r}] has {bad} non-finite element(s) (NaN or inf): no "
                "gradient at such a point means anything. Re-initialise or load finite weights."
            )


def _check_batch(x, t):
    if len(x) == 0:
        raise ValueError("x is an empty batch; pass at least one sample (the book uses 10 or 100).")
    if len(x) != len(t):
        raise ValueError(f"x has {len(x)} samples but t has {len(t)}; pass one label per sample.")
    if x.dtype.kind in "fc" and not np.all(np.isfinite(x)):
        raise ValueError("x holds NaN or inf; clean the data before the gradient check.")


def _moved(params, reference):
    """Names of the parameters whose values differ from ``reference``'s, bit for bit."""
    return [name for name, value in reference.items() if not np.array_equal(params[name], value)]


def _refuse_if_moved(params, reference, call):
    moved = _moved(params, reference)
    if moved:
        raise GradcheckRefusedError(
            f"{call} changed net.params[{moved[0]!r}]"
            + (f" (and {len(moved) - 1} more)" if len(moved) > 1 else "")
            + ": a loss or gradient that moves the parameters it is asked about has no "
            "numerical gradient to compare with. Update parameters only in your training "
            "step, never inside loss() or gradient()."
        )


def _same_loss(first, second):
    return abs(first - second) <= SAME_LOSS_RTOL * max(1.0, abs(first))


def _refuse_unless_same(first, second, when):
    if not _same_loss(first, second):
        raise GradcheckRefusedError(
            f"net.loss(x, t) gave {first!r} and {when} {second!r} at the same parameters: the "
            "loss is not a function of the parameters (noise, a dropout mask drawn from its "
            "own generator, state kept between calls), so no numerical gradient can be "
            "trusted, either way. Make it deterministic, e.g. draw dropout masks from NumPy's "
            "global generator (gradcheck restores it before every evaluation) or fix the mask."
        )


def _generators(obj, path="net", depth=4, seen=None):
    """(path, generator) of every NumPy random generator the network holds, a few levels down."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth < 0:
        return []
    seen.add(id(obj))
    if isinstance(obj, (np.random.Generator, np.random.RandomState)):
        return [(path, obj)]
    if isinstance(obj, Mapping):
        items = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, np.ndarray)):
        items = [(f"{path}.{k}", v) for k, v in vars(obj).items()]
    else:
        return []
    return [g for p, v in items for g in _generators(v, p, depth - 1, seen)]


def _generator_state(generator):
    """A comparable snapshot of a generator's state."""
    if isinstance(generator, np.random.RandomState):
        kind, key, *rest = generator.get_state()
        return (kind, key.tobytes(), *rest)
    return repr(generator.bit_generator.state)


def _refuse_if_drawing(own, before):
    """Refuse when an evaluation moved a generator of the network's own (a fresh mask per call)."""
    for path, generator in _generators(own.net):
        if path in before and _generator_state(generator) != before[path]:
            raise GradcheckRefusedError(
                f"net.loss(x, t) draws from its own random generator ({path}) on every call, so "
                "each evaluation sees another dropout mask (or noise): the loss is not a function "
                "of the parameters, and no numerical gradient can be trusted, either way. Draw "
                "dropout masks from NumPy's global generator (gradcheck restores it before every "
                "evaluation) or keep one mask per training step."
            )


def _loss_at_theta(own, snap):
    """L(theta), evaluated twice: a loss that is not a function of the parameters is refused."""
    start = time.perf_counter()
    first = own.loss()
    seconds = time.perf_counter() - start
    # Three values, not two: a fresh dropout mask over a few live units can repeat once.
    # A generator of the network's own that moves on every call is refused even when the
    # masks it drew happened to give the same loss (a batch of one, few live units).
    for _ in range(2):
        before = {path: _generator_state(g) for path, g in _generators(own.net)}
        _refuse_if_moved(own.net.params, snap.net.params, "net.loss(x, t)")
        _refuse_unless_same(first, own.loss(), "then")
        _refuse_if_drawing(own, before)
    if not math.isfinite(first):
        raise GradcheckRefusedError(
            f"net.loss(x, t) is {first!r} at the given parameters: central differences of a "
            "non-finite loss are meaningless. Check the inputs, labels and weights."
        )
    return first, seconds


def _backprop(net, x, t, rng_state, snap):
    with _generic._GLOBAL_RNG_LOCK:
        np.random.set_state(rng_state)  # noqa: NPY002 - backprop sees the same dropout mask
        try:
            bp = net.gradient(x, t)
        except Exception as exc:
            raise UserCodeError(f"net.gradient(x, t) raised {describe_exception(exc)}") from exc
    if not isinstance(bp, Mapping):
        raise TypeError(
            f"net.gradient(x, t) returned {type(bp).__name__}; expected a dict "
            "name -> array like net.params."
        )
    _refuse_if_moved(net.params, snap.net.params, "net.gradient(x, t)")
    return {
        name: (np.asarray(v, dtype=np.float64) if v is not None else None) for name, v in bp.items()
    }


def _true_class_probabilities(net, x, t):
    """p(true class) per sample after a loss evaluation, or None when the net does not say."""
    name = _generic.last_layer_name(net)
    y = getattr(getattr(net, name), "y", None) if name else None
    if y is None and _stack.fastnum_stack(net) is not None and hasattr(net, "predict"):
        # The training mode's probabilities (the dropout masks the loss used), where it has one.
        train_mode = "train_flg" in inspect.signature(net.predict).parameters
        y = net.predict(x, train_flg=True) if train_mode else net.predict(x)
    y = np.asarray(y) if y is not None else None
    if y is None or y.ndim != 2 or y.shape[0] != len(x):
        return None
    return y[np.arange(len(x)), _generic.label_indices(t)]


def _engine_mismatch(stack, params, own_loss, engine_loss):
    """Why the engine's loss is not the network's, naming weight decay when that is the gap."""
    why = f"its loss {own_loss!r} differs from that of the recognised layers {engine_loss!r}"
    weights = [spec[1] for spec in stack if spec[0] in ("affine", "conv")]
    half_sum = 0.5 * sum(float(np.sum(params[w] ** 2)) for w in weights)
    lam = (own_loss - engine_loss) / half_sum if half_sum else 0.0
    if lam > 0 and abs(float(f"{lam:.3g}") - lam) <= 1e-9 * lam:  # a round lambda: no accident
        why += (
            f"; the gap is exactly 0.5 * lambda * sum(W**2) with lambda = {lam:.3g}, weight "
            "decay: keep lambda in net.weight_decay_lambda, as the book does, and the engine "
            "includes it"
        )
    return why + ", so its own loss is differentiated"


#: Elements at which the kernels' central differences are compared with the reader's loss.
CROSS_CHECKS = 3


def _same_away_from_theta(point, grads, h):
    """The reader's own central differences at the largest elements equal the kernels'.

    The loss is compared at theta before the kernels run; this compares it at theta +- h e_i
    too, so a loss that only looks like the recognised layers at theta (or draws a dropout
    mask of its own) cannot hide behind them.
    """
    largest = sorted(
        (
            (float(abs(g.flat[q])), name, int(q))
            for name, g in grads.items()
            if g.size
            for q in [int(np.argmax(np.abs(g)))]
        ),
        reverse=True,
    )[:CROSS_CHECKS]
    for _, name, q in largest:
        own = float(point.own.central_at(name, [q], h)[0])
        kernel = float(grads[name].flat[q])
        # Both are differences of real losses: each carries the losses' rounding over 2h.
        if not abs(own - kernel) <= 1e-8 * max(1.0, abs(own)) + _kinks.rounding(h, point.loss):
            raise _stack.EngineUnsupportedError(
                f"at {name}[{q}] the central difference of its loss, {own!r}, differs from that "
                f"of the recognised layers, {kernel!r}"
            )


def _engine_gradients(net, stack, x, t, steps, log_guard, point, require_jit):
    """Numerical gradients at each step from the kernels, after checking the stack is the net.

    Returns the gradients and ``at(step, indices)``: the gradient at another step, at the
    flat ``indices[name]`` only, as 1-D arrays.
    """
    from fastnum import engine

    params, x, t, guard = _stack.engine_inputs(stack, net.params, x, t, log_guard)
    masks, decay = _stack.engine_extras(stack, point.own.net, len(x))
    extras = dict(log_guard=guard, masks=masks, weight_decay=decay)
    engine_loss = engine.loss(stack, params, x, t, **extras)
    if not abs(engine_loss - point.loss) <= LOSS_MATCH_RTOL * max(1.0, abs(point.loss)):
        raise _stack.EngineUnsupportedError(
            _engine_mismatch(stack, params, point.loss, engine_loss)
        )
    if require_jit and not JIT_ENABLED:
        raise _stack.EngineUnsupportedError("numba's JIT is off, so the kernels are slow")
    grads = [engine.numerical_gradient(stack, params, x, t, h=s, **extras) for s in steps]
    _same_away_from_theta(point, grads[0], steps[0])

    def at(step, indices):
        return engine.numerical_gradient_at(stack, params, x, t, indices, h=step, **extras)

    return grads, at


def _generic_gradients(runner, params, steps, n_blocks_for):
    blocks = _generic.plan_blocks(params, n_blocks_for)
    tasks = [("block", block, step) for step in steps for block in blocks]
    values = runner.run(tasks)
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


class _Runners:
    """Where the reader's loss runs: this process, or workers started once, when first needed."""

    def __init__(self, snap, workers, scheduler, notes, exit_stack):
        self.snap, self.workers, self.scheduler, self.notes = snap, workers, scheduler, notes
        self.exit_stack, self.opened = exit_stack, {}

    def get(self, parallel):
        """The serial runner, or the workers' (processes or Dask) when ``parallel``."""
        key = parallel and (self.scheduler is not None or self.workers > 1)
        if key not in self.opened:
            workers = self.workers if key else 1
            scheduler = self.scheduler if key else None
            self.opened[key] = self.exit_stack.enter_context(
                _generic.open_workers(self.snap, workers, scheduler, self.notes)
            )
        return self.opened[key]


def _prober(runners, loss_seconds):
    """``probe(requests, step, deadline)``: one-sided slopes of the reader's loss at flat indices.

    A second or two of work runs in this process; more is spread over the workers, whose
    start-up would otherwise cost more than it saves.  Tasks last about half a second each,
    so the deadline is kept closely.
    """
    per_task = max(1, int(0.5 / max(2 * loss_seconds, 1e-6)))

    def probe(requests, step, deadline):
        total = sum(len(v) for v in requests.values())
        runner = runners.get(parallel=2 * total * loss_seconds > 2.0)
        parts = [
            (name, idx[start : start + per_task])
            for name, idx in requests.items()
            for start in range(0, len(idx), per_task)
        ]
        values = runner.run([("one_sided_at", part, step) for part in parts], deadline=deadline)
        out = {name: ([], [], []) for name in requests}
        for (name, idx), value in zip(parts, values, strict=True):
            forward, backward = value if value is not None else (np.zeros(len(idx)),) * 2
            out[name][0].append(forward)
            out[name][1].append(backward)
            out[name][2].append(np.full(len(idx), value is not None))
        return {name: tuple(np.concatenate(part) for part in parts) for name, parts in out.items()}

    return probe


def _resolve_elements(found, engine_at, probe, h, own_loss, probe_seconds):
    """Take every failing element down the step ladder (see :mod:`fastnum.gradcheck._kinks`).

    On the engine path the central differences at every smaller step come from the kernels
    first, for all pending elements at once; what they leave goes to the one-sided slopes.
    """
    if engine_at is not None:
        for divisor in _kinks.CENTRAL_LADDER:
            pending = {n: e.pending() for n, e in found.items()}
            pending = {n: p for n, p in pending.items() if len(p)}
            if not pending:
                break
            step = h / divisor
            values = engine_at(step, {n: found[n].indices[p] for n, p in pending.items()})
            for name, positions in pending.items():
                _kinks.agree_at(found[name], positions, values[name], step, own_loss)
    deadline = time.monotonic() + probe_seconds
    # The kernels tried every central difference: one-sided slopes start where they bracket.
    ladder = _kinks.LADDER if engine_at is None else _kinks.LADDER[1:]
    ladder = tuple(d for d in ladder if d >= _kinks.BRACKET_FROM or engine_at is None)
    _kinks.resolve(found, probe, h, own_loss, deadline, 256, ladder)


def _recognition(net):
    """``(stack, None)``, or ``(None, why)`` when the engine cannot take ``net``: asked once."""
    try:
        return _stack.recognise(net), None
    except _stack.EngineUnsupportedError as exc:
        return None, exc


def _on_engine(stack, method):
    """Whether the engine's compiled kernels compute this network's numerical gradient."""
    return stack is not None and method != "generic" and JIT_ENABLED


def _blas_limit(stack, method):
    """One BLAS thread while the engine's kernels run between the network's own matrix products.

    Otherwise BLAS threads spinning after ``net.loss`` / ``net.gradient`` take the cores
    from the kernels: the chapter 5 network's check took ~4x longer on 2 cores.  The
    generic path keeps BLAS as it is (its worker processes take one thread each).
    """
    return one_blas_thread() if _on_engine(stack, method) else contextlib.nullcontext()


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


def _fast_mode(own, params, bp, n_directions, seed, h, rtol, atol, guard_slack, own_loss):
    """Fast mode's (numerical, backprop, ok) per direction; a smaller step may explain a kink."""
    results = []
    for v, along_bp in _directions(params, bp, n_directions, seed):
        slack = guard_slack * sum(float(np.sum(np.abs(v[n] * bp[n]))) for n in params)
        tol = atol + rtol * abs(along_bp) + slack
        along_num = own.directional(v, h)
        ok = abs(along_num - along_bp) <= tol
        for divisor in () if ok or not math.isfinite(along_bp) else _kinks.LADDER:
            step = h / divisor
            if abs(own.directional(v, step) - along_bp) <= tol + _kinks.rounding(step, own_loss):
                ok = True  # a corner of the loss within h along v, as for single elements
                break
        results.append((along_num, along_bp, bool(ok and math.isfinite(along_num))))
    return results


def _unchecked_notes(net, num, bp, names, atol, batch):
    """Parameters the check could not judge at this batch, and the note that says why."""
    unchecked = [
        n
        for n in names
        if float(np.max(np.abs(num[n]), initial=0)) <= atol
        and float(np.max(np.abs(bp[n]), initial=0)) <= atol
    ]
    if not unchecked:
        return (), []
    note = (
        f"the loss does not depend on {', '.join(unchecked)} at this batch to within atol: "
        f"every central difference and every backprop value is below {atol:g}, so the check "
        "cannot tell a right gradient from a wrong one there. A bias right before batch norm "
        "is like that by design (the mean subtraction cancels it)"
    )
    layers = _stack.layer_list(net)
    if batch == 1 and any(
        hasattr(layer, "gamma") and hasattr(layer, "beta") for _, layer in layers
    ):
        note += (
            "; here the batch has one sample, which batch norm normalises to 0 so that "
            "everything before it drops out: check with a batch of at least 2 (10 is better)"
        )
    return tuple(unchecked), [note + "."]


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
    _check_net(net)
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
    _check_batch(x, t)
    rng_state = np.random.get_state()  # noqa: NPY002 - the book's dropout draws from it
    try:
        stack, why_not = _recognition(net)
        with _blas_limit(stack, method):
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
        result = _fast_check(net, point, o, notes, _on_engine(recognition[0], o.method))
        if result is not None:
            return result
    with contextlib.ExitStack() as exit_stack:
        runners = _Runners(point.snap, o.workers, o.scheduler, notes, exit_stack)
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
    loss, loss_seconds = _loss_at_theta(own, snap)
    p_true = _true_class_probabilities(own.net, x, t)
    guard_effect = None if p_true is None else LOG_GUARD / float(np.min(p_true))
    # The guard's slack, in units of the parameter's max |bp|: 5x its expected effect.
    guard_slack = 0.0 if unguarded or guard_effect is None else 5 * guard_effect
    bp = _backprop(net, x, t, rng_state, snap)
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
    results = _fast_mode(
        own, params, point.bp, o.directions, o.seed, o.h, o.rtol, o.atol, slack, point.loss
    )
    _refuse_unless_same(point.loss, own.loss(), "after the directions")
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
            grads, engine_at = _engine_gradients(
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
    grads = _generic_gradients(runner, net.params, steps, n_blocks_for)
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
    unchecked, unchecked_notes = _unchecked_notes(net, num, bp, comparable, o.atol, batch)
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
    probe = _prober(runners, point.loss_seconds)
    _resolve_elements(found, engine_at, probe, o.h, point.loss, o.probe_seconds)
    _refuse_unless_same(point.loss, point.own.loss(), "at the end of the check")
    _refuse_if_moved(point.own.net.params, point.snap.net.params, "net.loss(x, t)")
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
