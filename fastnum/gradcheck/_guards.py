"""The checker's guards at theta: the inputs, a network that moves or draws, same losses."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Mapping

import numpy as np

from fastnum.gradcheck import _generic, _stack
from fastnum.gradcheck._errors import GradcheckRefusedError, UserCodeError, describe_exception

#: Two losses at the same point may differ by this, relative: far below anything a central
#: difference at h >= 1e-12 could turn into a visible gradient error, far above nothing.
SAME_LOSS_RTOL = 1e-13


def check_net(net):
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


def check_batch(x, t):
    if len(x) == 0:
        raise ValueError("x is an empty batch; pass at least one sample (the book uses 10 or 100).")
    if len(x) != len(t):
        raise ValueError(f"x has {len(x)} samples but t has {len(t)}; pass one label per sample.")
    if x.dtype.kind in "fc" and not np.all(np.isfinite(x)):
        raise ValueError("x holds NaN or inf; clean the data before the gradient check.")


def _moved(params, reference):
    """Names of the parameters whose values differ from ``reference``'s, bit for bit."""
    return [name for name, value in reference.items() if not np.array_equal(params[name], value)]


def refuse_if_moved(params, reference, call):
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


def refuse_unless_same(first, second, when):
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


def loss_at_theta(own, snap):
    """L(theta), evaluated twice: a loss that is not a function of the parameters is refused."""
    start = time.perf_counter()
    first = own.loss()
    seconds = time.perf_counter() - start
    # Three values, not two: a fresh dropout mask over a few live units can repeat once.
    # A generator of the network's own that moves on every call is refused even when the
    # masks it drew happened to give the same loss (a batch of one, few live units).
    for _ in range(2):
        before = {path: _generator_state(g) for path, g in _generators(own.net)}
        refuse_if_moved(own.net.params, snap.net.params, "net.loss(x, t)")
        refuse_unless_same(first, own.loss(), "then")
        _refuse_if_drawing(own, before)
    if not math.isfinite(first):
        raise GradcheckRefusedError(
            f"net.loss(x, t) is {first!r} at the given parameters: central differences of a "
            "non-finite loss are meaningless. Check the inputs, labels and weights."
        )
    return first, seconds


def backprop(net, x, t, rng_state, snap):
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
    refuse_if_moved(net.params, snap.net.params, "net.gradient(x, t)")
    return {
        name: (np.asarray(v, dtype=np.float64) if v is not None else None) for name, v in bp.items()
    }


def true_class_probabilities(net, x, t):
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


def engine_mismatch(stack, params, own_loss, engine_loss):
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
