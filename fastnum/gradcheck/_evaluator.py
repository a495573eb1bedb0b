"""The network copies the gradient check evaluates: snapshots, evaluators and task plans.

A snapshot holds the reader's network, batch and random state once; every block of
parameter elements is evaluated by an :class:`Evaluator` built from it, in this process
(a deep copy), in a worker process or on a Dask worker alike.
"""

from __future__ import annotations

import copy
import inspect
import pickle
import threading
import uuid
from typing import NamedTuple

import numpy as np

from fastnum import reference
from fastnum.constants import LOG_GUARD, LOSS_MATCH_RTOL
from fastnum.gradcheck._errors import UserCodeError, as_loss_value, describe_exception

# Blocks per worker: a few each evens out blocks that take longer than others.
BLOCKS_PER_WORKER = 4

# NumPy's global random state is one per process: evaluations that draw from it take
# turns (threads checking dropout networks at once), or one thread's dropout mask would
# leak into another's loss.  Reentrant: a caller may hold it around its own calls.
_GLOBAL_RNG_LOCK = threading.RLock()


def takes_train_flg(net):
    """True when ``net.loss`` accepts ``train_flg`` (the book's nets with batch norm, dropout)."""
    try:
        return "train_flg" in inspect.signature(net.loss).parameters
    except (TypeError, ValueError):
        return False


def last_layer_name(net):
    """``"lastLayer"`` or ``"last_layer"`` when ``net`` has a book-style softmax-with-loss layer."""
    for name in ("lastLayer", "last_layer"):
        if callable(getattr(getattr(net, name, None), "forward", None)):
            return name
    return None


def label_indices(t):
    """Class indices from integer or one-hot labels."""
    t = np.asarray(t)
    return t.argmax(axis=1) if t.ndim == 2 else t


class _UnguardedSoftmaxWithLoss:
    """Stands in for the last layer's ``forward``: softmax cross-entropy without the 1e-7."""

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, x, t):
        z = x - x.max(axis=1, keepdims=True)
        log_y = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        labels = label_indices(t)
        # Keep the attributes the book's backward reads, so the layer stays usable.
        self.layer.t, self.layer.y = t, np.exp(log_y)
        self.layer.loss = -log_y[np.arange(len(x)), labels].sum() / len(x)
        return self.layer.loss


def _fast_restorable(state):
    """``state`` with its key as a list: ``set_state`` copies a list ~15x faster than an array."""
    return (state[0], np.asarray(state[1]).tolist(), *state[2:])


def _same_state(a, b):
    """True when two ``np.random.get_state()`` tuples are the same point of the generator."""
    return tuple(a[2:]) == tuple(b[2:]) and np.array_equal(a[1], b[1])


class Evaluator:
    """The network's loss at the batch, with NumPy's global random state restored when it draws.

    Parameters
    ----------
    net : object
        A private copy: its parameters are perturbed in place.
    x, t : ndarray
    rng_state : tuple
        ``np.random.get_state()`` taken once.  The first evaluation starts from it
        and tells whether the loss draws from the global generator (the book's
        dropout does); if so every evaluation starts from it, so dropout draws the
        same mask every time, holding :data:`_GLOBAL_RNG_LOCK` so that threads of
        one process take turns.  A loss that draws nothing skips both.
    unguarded : {False, "layer", "probabilities"}
        Evaluate the loss without the log guard: by replacing the last layer's
        forward, or (fastnum's own networks) from ``predict``'s probabilities.
    """

    def __init__(self, net, x, t, rng_state, unguarded=False):
        self.net, self.x, self.t, self.rng_state = net, x, t, rng_state
        self.kwargs = {"train_flg": True} if takes_train_flg(net) else {}
        self.unguarded = unguarded
        if unguarded == "layer":
            layer = getattr(net, last_layer_name(net))
            layer.forward = _UnguardedSoftmaxWithLoss(layer)
        self.call = "net.predict(x)" if unguarded == "probabilities" else "net.loss(x, t)"
        self._restore = _fast_restorable(rng_state)
        #: Whether the loss draws from NumPy's global generator; None until the first loss.
        self.draws = None

    def _evaluate(self):
        """One call of the reader's code; its exceptions become one-line UserCodeErrors."""
        try:
            if self.unguarded == "probabilities":
                value = self.net.predict(self.x)
            else:
                value = self.net.loss(self.x, self.t, **self.kwargs)
        except Exception as exc:
            raise UserCodeError(f"{self.call} raised {describe_exception(exc)}") from exc
        if self.unguarded == "probabilities":
            p = np.asarray(value)[np.arange(len(self.x)), label_indices(self.t)]
            return float(-np.log(p).sum() / len(self.x))
        return as_loss_value(value, self.call)

    def loss(self):
        """The loss at the current parameters, from the snapshot's random state."""
        if self.draws is False:
            return self._evaluate()
        with _GLOBAL_RNG_LOCK:
            np.random.set_state(self._restore)  # noqa: NPY002 - the book's dropout draws from it
            value = self._evaluate()
            if self.draws is None:
                self.draws = not _same_state(np.random.get_state(), self.rng_state)  # noqa: NPY002
        return value

    def central_at(self, name, flat_indices, h):
        """(L(theta + h e_q) - L(theta - h e_q)) / 2h at the flat (C order) ``flat_indices``."""
        return reference.numerical_gradient_at(
            lambda _: self.loss(), self.net.params[name], flat_indices, h
        )

    def block(self, name, start, stop, h):
        """Central differences of elements ``start:stop`` (flat, C order) of ``params[name]``."""
        return self.central_at(name, range(start, stop), h)

    def one_sided_at(self, name, flat_indices, step):
        """Forward and backward slopes (L(+step) - L) / step, (L - L(-step)) / step, L once."""
        f0 = self.loss()
        forward = np.empty(len(flat_indices), dtype=np.float64)
        backward = np.empty(len(flat_indices), dtype=np.float64)
        for k, q in enumerate(flat_indices):
            forward[k], backward[k] = self.one_sided(name, q, step, f0)
        return forward, backward

    def one_sided(self, name, q, step, f0):
        """Forward and backward slopes (L(+step) - L) / step, (L - L(-step)) / step of element q."""
        arr = self.net.params[name]
        idx = np.unravel_index(q, arr.shape)
        saved = arr[idx]
        try:
            arr[idx] = saved + step
            f_plus = self.loss()
            arr[idx] = saved - step
            f_minus = self.loss()
        finally:
            arr[idx] = saved
        return (f_plus - f0) / step, (f0 - f_minus) / step

    def directional(self, direction, h):
        """(L(theta + h v) - L(theta - h v)) / 2h for ``direction`` = {name: v part}."""
        params = self.net.params
        saved = {name: params[name].copy() for name in direction}
        values = []
        try:
            for sign in (1, -1):
                for name, v in direction.items():
                    params[name][...] = saved[name] + sign * h * v
                values.append(self.loss())
        finally:
            for name in direction:
                params[name][...] = saved[name]
        return (values[0] - values[1]) / (2 * h)


#: What each kind of task calls on an evaluator: ``(evaluator, arg, step) -> result``.
TASK_KINDS = {
    "block": lambda ev, arg, h: ev.block(*arg, h),
    "central_at": lambda ev, arg, h: ev.central_at(*arg, h),
    "one_sided_at": lambda ev, arg, step: ev.one_sided_at(*arg, step),
    "direction": lambda ev, arg, h: ev.directional(arg, h),
}


def task_size(task):
    """Parameter elements a task covers (a direction counts as one), for the progress bar."""
    kind, arg, _ = task
    if kind == "block":
        return arg[2] - arg[1]
    if kind in ("central_at", "one_sided_at"):
        return len(arg[1])
    return 1


def dumps(obj):
    """Pickle with cloudpickle when available (classes defined in a notebook or script)."""
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - cloudpickle comes with dask
        return pickle.dumps(obj)
    return cloudpickle.dumps(obj)


class Snapshot(NamedTuple):
    """A private copy of the network and the batch, taken before backprop touches the net."""

    net: object
    x: np.ndarray
    t: np.ndarray
    rng_state: tuple
    unguarded: object
    token: str  # tells one snapshot from another on a Dask worker


def snapshot(net, x, t, rng_state, unguarded):
    """The :class:`Snapshot` every evaluator of one check starts from (a deep copy)."""
    return Snapshot(*copy.deepcopy((net, x, t, rng_state, unguarded)), uuid.uuid4().hex)


def evaluator_from(snap):
    """A fresh :class:`Evaluator` on its own deep copy of ``snap``."""
    return Evaluator(*copy.deepcopy(tuple(snap[:-1])))


def plan_blocks(params, n_workers):
    """Split every parameter into flat blocks: (name, start, stop), in params order."""
    total = sum(int(np.size(p)) for p in params.values())
    size = max(1, -(-total // (BLOCKS_PER_WORKER * n_workers)))
    return [
        (name, start, min(start + size, int(np.size(p))))
        for name, p in params.items()
        for start in range(0, int(np.size(p)), size)
    ]


def plan_indices(requests, n_workers):
    """Split ``{name: flat indices}`` into ``(name, indices)`` parts, a few per worker."""
    total = sum(len(idx) for idx in requests.values())
    size = max(1, -(-total // (BLOCKS_PER_WORKER * max(1, n_workers))))
    return [
        (name, np.asarray(idx)[start : start + size])
        for name, idx in requests.items()
        for start in range(0, len(idx), size)
    ]


def unguarded_mode(net, x, t, rng_state, probabilities_from_predict):
    """How to evaluate the loss without the guard, and why not ("") when impossible.

    Returns ``(mode, reason)``: mode "layer" replaces the last layer's forward,
    "probabilities" uses ``predict`` (fastnum's own networks), False with a
    reason otherwise.  A replacement is accepted only when it changes the loss
    by what the guard explains, i.e. it really is a softmax cross-entropy.
    """
    name = last_layer_name(net)
    if name is None and not probabilities_from_predict:
        return False, (
            "the network has no lastLayer / last_layer whose forward could be "
            "replaced, so its loss keeps whatever guard it has"
        )
    mode = "layer" if name else "probabilities"
    guarded = Evaluator(*copy.deepcopy((net, x, t, rng_state, False)))
    before = guarded.loss()
    y = getattr(getattr(guarded.net, name), "y", None) if name else guarded.net.predict(x)
    after = Evaluator(*copy.deepcopy((net, x, t, rng_state, mode))).loss()
    if y is None or np.shape(y)[0] != len(x):
        return False, f"{name} keeps no probabilities y, so it is not the book's softmax-with-loss"
    labels = label_indices(t)
    p = np.asarray(y)[np.arange(len(x)), labels]
    expected = float(np.mean(np.log(p) - np.log(p + LOG_GUARD)))
    if not abs(before - after - expected) <= LOSS_MATCH_RTOL * max(1.0, abs(before)):
        return False, (
            f"{name or 'predict'} does not give the book's softmax cross-entropy "
            f"(loss {before!r} vs {after!r} without the guard)"
        )
    return mode, ""
