"""The checker's numerical gradients: the engine's or the generic path's, cross-checked."""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np

from fastnum._jit import JIT_ENABLED, one_blas_thread
from fastnum.constants import LOSS_MATCH_RTOL
from fastnum.gradcheck import _generic, _guards, _kinks, _stack

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


def engine_gradients(net, stack, x, t, steps, log_guard, point, require_jit):
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
            _guards.engine_mismatch(stack, params, point.loss, engine_loss)
        )
    if require_jit and not JIT_ENABLED:
        raise _stack.EngineUnsupportedError("numba's JIT is off, so the kernels are slow")
    grads = [engine.numerical_gradient(stack, params, x, t, h=s, **extras) for s in steps]
    _same_away_from_theta(point, grads[0], steps[0])

    def at(step, indices):
        return engine.numerical_gradient_at(stack, params, x, t, indices, h=step, **extras)

    return grads, at


def generic_gradients(runner, params, steps, n_blocks_for):
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


class Runners:
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


def prober(runners, loss_seconds):
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


def resolve_elements(found, engine_at, probe, h, own_loss, probe_seconds):
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


def recognition(net):
    """``(stack, None)``, or ``(None, why)`` when the engine cannot take ``net``: asked once."""
    try:
        return _stack.recognise(net), None
    except _stack.EngineUnsupportedError as exc:
        return None, exc


def on_engine(stack, method):
    """Whether the engine's compiled kernels compute this network's numerical gradient."""
    return stack is not None and method != "generic" and JIT_ENABLED


def blas_limit(stack, method):
    """One BLAS thread while the engine's kernels run between the network's own matrix products.

    Otherwise BLAS threads spinning after ``net.loss`` / ``net.gradient`` take the cores
    from the kernels: the chapter 5 network's check took ~4x longer on 2 cores.  The
    generic path keeps BLAS as it is (its worker processes take one thread each).
    """
    return one_blas_thread() if on_engine(stack, method) else contextlib.nullcontext()


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


def fast_mode(own, params, bp, n_directions, seed, h, rtol, atol, guard_slack, own_loss):
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


def unchecked_notes(net, num, bp, names, atol, batch):
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
