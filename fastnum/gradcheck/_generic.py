"""The generic path: central differences of the network's own ``loss``, block by block.

Every block of parameter elements is evaluated on its own copy of the network,
taken from one snapshot, so a serial loop, worker processes and a Dask cluster run
the same code on the same numbers and give identical results.

In this process the copies are deep copies, never unpickled: unpickling a class
that cloudpickle carried by value (one defined in a notebook, a script or a
function) in the process that defined it rebinds the class's methods to copies
with frozen globals, so the reader's own class would stop seeing later changes
of their globals.  Only worker processes unpickle.
"""

from __future__ import annotations

import copy
import inspect
import multiprocessing
import os
import pickle
import threading
import uuid
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

import numpy as np

from fastnum import reference
from fastnum.reference import LOG_GUARD

# Blocks per worker: a few each evens out blocks that take longer than others.
BLOCKS_PER_WORKER = 4
# Workers assumed when planning blocks for a Dask cluster, whose size is not known yet.
CLUSTER_WORKERS = 16


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


class Evaluator:
    """The network's loss at the batch, with the random state restored before every call.

    Parameters
    ----------
    net : object
        A private copy: its parameters are perturbed in place.
    x, t : ndarray
    rng_state : tuple
        ``np.random.get_state()`` taken once; restored before every loss, so
        dropout draws the same mask every time.
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

    def loss(self):
        """The loss at the current parameters, random state restored first."""
        np.random.set_state(self.rng_state)  # noqa: NPY002 - the book's dropout draws from it
        if self.unguarded == "probabilities":
            labels = label_indices(self.t)
            p = self.net.predict(self.x)[np.arange(len(self.x)), labels]
            return float(-np.log(p).sum() / len(self.x))
        return float(self.net.loss(self.x, self.t, **self.kwargs))

    def block(self, name, start, stop, h):
        """Central differences of elements ``start:stop`` (flat, C order) of ``params[name]``."""
        return reference.numerical_gradient_at(
            lambda _: self.loss(), self.net.params[name], range(start, stop), h
        )

    def one_sided(self, name, q, step, f0):
        """Forward and backward slopes (L(+step) - L) / step, (L - L(-step)) / step of element q."""
        arr = self.net.params[name]
        idx = np.unravel_index(q, arr.shape)
        saved = arr[idx]
        arr[idx] = saved + step
        f_plus = self.loss()
        arr[idx] = saved - step
        f_minus = self.loss()
        arr[idx] = saved
        return (f_plus - f0) / step, (f0 - f_minus) / step

    def directional(self, direction, h):
        """(L(theta + h v) - L(theta - h v)) / 2h for ``direction`` = {name: v part}."""
        params = self.net.params
        saved = {name: params[name].copy() for name in direction}
        values = []
        for sign in (1, -1):
            for name, v in direction.items():
                params[name][...] = saved[name] + sign * h * v
            values.append(self.loss())
        for name in direction:
            params[name][...] = saved[name]
        return (values[0] - values[1]) / (2 * h)


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


# -------------------------------------------------------------- worker processes

_WORKER = None


def _init_worker(snap):
    global _WORKER
    try:  # one BLAS thread per process: the processes are the parallelism
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(snap, bytes):  # spawned: in the worker process, safe to unpickle
        snap = pickle.loads(snap)
    _WORKER = Evaluator(*snap[:-1])


def _worker_task(task):
    kind, arg, h = task
    if kind == "block":
        return _WORKER.block(*arg, h)
    return _WORKER.directional(arg, h)


# ------------------------------------------------------------------ Dask workers

_DASK_LOCAL = threading.local()  # one evaluator per worker thread and payload
# NumPy's global random state is one per process: worker threads of one process take
# turns, or one thread's dropout mask would leak into another's loss.
_GLOBAL_RNG_LOCK = threading.Lock()


# Snapshots of the checks running in this process, by token: an in-process Dask worker
# (LocalCluster(processes=False), scheduler="local") takes its copy from here instead of
# unpickling the payload in the process that defined the reader's class.
_LOCAL_SNAPSHOTS = {}


def _dask_task(data, token, task):
    cache = _DASK_LOCAL.__dict__.setdefault("evaluators", {})
    if token not in cache:
        cache.clear()
        snap = _LOCAL_SNAPSHOTS.get(token)
        cache[token] = (
            evaluator_from(snap) if snap is not None else Evaluator(*pickle.loads(data)[:-1])
        )
    worker = cache[token]
    kind, arg, h = task
    with _GLOBAL_RNG_LOCK:
        return worker.block(*arg, h) if kind == "block" else worker.directional(arg, h)


def run_tasks(snap, tasks, workers=1, scheduler=None):
    """Run ``("block", (name, start, stop), h)`` / ``("direction", v, h)`` tasks, in order.

    Parameters
    ----------
    snap : Snapshot
        From :func:`snapshot`.
    tasks : list of tuple
    workers : int
        1 runs in this process; more starts that many worker processes.
    scheduler : None, str, distributed.Client or cluster
        Run on a Dask cluster instead (an address such as ``tcp://host:8786``).

    Returns
    -------
    list
        One result per task, in the order of ``tasks``.
    """
    if scheduler is not None:
        from fastnum._dask import dask_client

        _LOCAL_SNAPSHOTS[snap.token] = snap
        try:
            with dask_client(scheduler) as client:
                # Bytes: Dask moves them without unpickling what is inside.
                shared = client.scatter(dumps(snap), broadcast=True)
                futures = [
                    client.submit(_dask_task, shared, snap.token, task, pure=False)
                    for task in tasks
                ]
                return client.gather(futures)
        finally:
            del _LOCAL_SNAPSHOTS[snap.token]
    if workers <= 1:
        worker = evaluator_from(snap)
        return [
            worker.block(*arg, h) if kind == "block" else worker.directional(arg, h)
            for kind, arg, h in tasks
        ]
    # fork where the platform has it: the workers inherit the snapshot and the imported
    # modules, so nothing is pickled (a class defined in a notebook, a function or a
    # --model script needs neither an importable module nor cloudpickle).  Spawned
    # workers get the snapshot pickled, with cloudpickle when it is installed.
    fork = "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if fork else None)
    with ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(snap if fork else dumps(snap),),
    ) as pool:
        return list(pool.map(_worker_task, tasks))


def default_workers():
    """All cores of this machine."""
    return os.cpu_count() or 1


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
    if not abs(before - after - expected) <= 1e-9 * max(1.0, abs(before)):
        return False, (
            f"{name or 'predict'} does not give the book's softmax cross-entropy "
            f"(loss {before!r} vs {after!r} without the guard)"
        )
    return mode, ""
