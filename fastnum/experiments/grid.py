"""The grid runner of the experiments: seeded training runs, here or on a Dask cluster.

An experiment is a grid of independent training runs.  Each run is a plain
dict (a *spec*) handed to :func:`run_one`, which trains with
:func:`fastnum.train.train` and returns a small plain dict of metrics and
timings.  :func:`run_grid` maps :func:`run_one` over the specs, in this
process by default or on a Dask cluster (``pip install "fastnum[distributed]"``).
Runs are seeded and share nothing, so the deterministic part of every result
(see :data:`DETERMINISTIC_KEYS`) is the same wherever a run executes; only
the timings differ.

A spec has the keys:

``config`` (dict, required)
    Keyword arguments of :class:`fastnum.train.TrainConfig`.
``name`` (str), ``tags`` (dict)
    Copied into the result, to tell the runs of a grid apart.
``timing_seconds`` (float, default 0)
    Before training, time SGD iterations of the same network for at least this
    long and report their median as ``sec_per_iter`` (0 skips it).
``stop_loss`` (float, optional)
    Stop the run at the first epoch whose batch loss exceeds this value
    (status ``"stopped"``).  The book's loss is capped by its 1e-7 guard, so a
    too large learning rate leaves it high but finite and the trainer's own
    NaN/inf check does not fire; this is how such a run is ended early.
``data_dir`` (str, optional)
    MNIST folder for :func:`fastnum.data.load_mnist` on the machine that runs it.
"""

from __future__ import annotations

import functools
import math
import platform
import threading
import time

import numpy as np

from fastnum._dask import dask_client
from fastnum._validate import as_float_batch, as_labels

__all__ = [
    "DETERMINISTIC_KEYS",
    "accuracy_curve",
    "deterministic",
    "run_grid",
    "run_one",
    "time_per_iteration",
]

#: Result keys that are equal for equal specs, wherever and whenever they run.
DETERMINISTIC_KEYS = (
    "name",
    "tags",
    "config",
    "status",
    "stopped_at",
    "iterations",
    "final_loss",
    "final_train_acc",
    "final_test_acc",
    "epochs",
)

# Runs in one process take turns.  Kernel calls are thread-safe (fastnum._jit.run_tasks'
# one pool serves every calling thread), so this is not about crashes: each call
# already uses every thread, and a whole run taking its turn keeps its
# sec_per_iter honest instead of interleaving with another run of the same worker.
_RUN_LOCK = threading.Lock()


class _LossAboveLimitError(Exception):
    """Raised from the epoch callback to end a run whose loss exceeded ``stop_loss``."""


@functools.lru_cache(maxsize=2)
def _mnist(data_dir):
    # Cached per process: a grid of runs reads and parses MNIST once.
    from fastnum.data import load_mnist

    return load_mnist(normalize=True, flatten=True, one_hot_label=False, data_dir=data_dir)


def time_per_iteration(config, x, t, min_seconds=0.5, min_iters=3):
    """Median wall time of one SGD iteration of ``config``'s network, as train() runs it.

    One iteration is what :func:`fastnum.train.train` does per update: sample a
    batch with replacement, compute the gradient, update the parameters and
    evaluate the batch loss.  Accuracy evaluations are not included.  A first
    iteration, which may compile numba kernels, is run and not timed.

    Parameters
    ----------
    config : fastnum.train.TrainConfig
        Network, batch size, gradient and backend to time.
    x, t : ndarray
        Training images (n, features) and integer labels (n,).
    min_seconds : float, default 0.5
        Keep timing until this much time is spent ...
    min_iters : int, default 3
        ... and at least this many iterations are timed.

    Returns
    -------
    float
        Seconds per iteration (median over the timed iterations).
    """
    from fastnum.train import build_net, sgd_step

    n_classes = int(np.max(t)) + 1
    net = build_net(config, x.shape[1], n_classes)
    x = x[: config.train_size]
    t = as_labels(t[: config.train_size], len(x), n_classes)
    rng = np.random.default_rng(config.seed)

    def step():
        idx = rng.choice(len(x), config.batch_size)
        # train() converts the whole set to float64 once; a batch at a time saves memory.
        sgd_step(net, as_float_batch(x[idx], x.shape[1]), t[idx], config)

    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        step()  # warm-up: compiles or loads the kernels
        times, start = [], time.perf_counter()
        while len(times) < min_iters or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _outcome(status, stopped_at, iterations, losses, train_acc, test_acc, epochs):
    # The batch loss is noisy: report the mean over the last tenth of the losses.
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "status": status,
        "stopped_at": stopped_at,
        "iterations": iterations,
        "final_loss": float(np.mean(tail)) if tail else math.nan,
        "final_train_acc": train_acc,
        "final_test_acc": test_acc,
        "epochs": epochs,
    }


def _train(config, data, stop_loss):
    """Train ``config``; return the deterministic outcome (see :func:`run_one`)."""
    from fastnum.train import TrainingDivergedError, train

    epochs = {"iteration": [], "loss": [], "train_acc": [], "test_acc": []}

    def on_epoch(record):
        for key in epochs:
            epochs[key].append(record[key])
        if stop_loss is not None and not record["loss"] <= stop_loss:
            raise _LossAboveLimitError

    def last(key):
        return epochs[key][-1] if epochs[key] else math.nan

    try:
        result = train(config, data, progress=False, log=None, callback=on_epoch)
    except TrainingDivergedError as err:
        # Only the per-epoch losses survive; the last one before the blow-up is reported.
        return _outcome(
            "diverged",
            err.iteration,
            err.iteration - 1,
            epochs["loss"][-1:],
            last("train_acc"),
            last("test_acc"),
            epochs,
        )
    except _LossAboveLimitError:
        return _outcome(
            "stopped",
            last("iteration"),
            last("iteration"),
            epochs["loss"][-1:],
            last("train_acc"),
            last("test_acc"),
            epochs,
        )
    return _outcome(
        "completed",
        None,
        config.iters,
        result.history["loss"],
        result.final_train_acc,
        result.final_test_acc,
        epochs,
    )


def run_one(spec):
    """Run one seeded training run; the function a Dask worker calls.

    Parameters
    ----------
    spec : dict
        See the module docstring: ``config`` and optionally ``name``, ``tags``,
        ``timing_seconds``, ``stop_loss``, ``data_dir``.

    Returns
    -------
    dict
        ``status`` ("completed", "stopped" when the loss passed ``stop_loss``,
        "diverged" when it became non-finite), ``stopped_at`` (iteration or
        None), ``iterations`` done, ``final_loss`` (mean batch loss over the
        last tenth of the iterations; for a stopped or diverged run the batch
        loss of its last evaluation), ``final_train_acc``,
        ``final_test_acc`` (of the final parameters; of the last epoch for a
        stopped run), ``epochs`` (per evaluation: iteration, loss, train_acc,
        test_acc), ``sec_per_iter`` (None without ``timing_seconds``),
        ``train_seconds`` (wall time of the training, evaluations included),
        ``backend``, ``host`` and the spec's ``name``, ``tags``, ``config``.
    """
    from fastnum.backend import resolve_backend
    from fastnum.train import TrainConfig

    config = TrainConfig(**spec["config"])
    data = _mnist(spec.get("data_dir"))
    from fastnum._jit import num_threads

    # The thread count is per thread: set here too (the timing runs kernels), given back after.
    with _RUN_LOCK, num_threads(config.threads):
        sec_per_iter = None
        if spec.get("timing_seconds", 0) > 0:
            sec_per_iter = time_per_iteration(config, *data[0], spec["timing_seconds"])
        t0 = time.perf_counter()
        outcome = _train(config, data, spec.get("stop_loss"))
        seconds = time.perf_counter() - t0
    return {
        "name": spec.get("name"),
        "tags": dict(spec.get("tags", {})),
        "config": config.to_dict(),
        **outcome,
        "sec_per_iter": sec_per_iter,
        "train_seconds": seconds,
        "backend": resolve_backend(config.backend),
        "host": platform.node(),
    }


def deterministic(result):
    """The part of a :func:`run_one` result that does not depend on timing.

    Parameters
    ----------
    result : dict

    Returns
    -------
    dict
        ``result`` restricted to :data:`DETERMINISTIC_KEYS`.
    """
    return {key: result[key] for key in DETERMINISTIC_KEYS}


def accuracy_curve(result):
    """(iterations, test accuracies) of a :func:`run_one` result, final parameters included.

    The trainer evaluates at the first iteration of every epoch; a completed run
    also evaluates its final parameters after the loop, which is added as the
    last point when it falls after the last epoch's evaluation.
    """
    e = result["epochs"]
    its, acc = list(e["iteration"]), list(e["test_acc"])
    if result["status"] == "completed" and (not its or its[-1] != result["iterations"]):
        its.append(result["iterations"])
        acc.append(result["final_test_acc"])
    return its, acc


def run_grid(specs, scheduler=None, func=run_one, log=print):
    """Run ``func`` on every spec, here or on a Dask cluster; return results in order.

    Parameters
    ----------
    specs : sequence of dict
        One plain, picklable dict per run.
    scheduler : None, str, distributed.Client or cluster, optional
        None runs the specs one after the other in this process.  A Dask
        scheduler address (``tcp://host:8786``), a cluster object (e.g.
        ``distributed.LocalCluster``) or a ``Client`` sends each spec to the
        cluster as one task; ``"local"`` starts a temporary one-thread
        in-process cluster.  Workers need fastnum installed and MNIST readable.
    func : callable, default run_one
        A top-level (importable) function of one spec.
    log : callable or None, default print
        Receives one line per finished run.

    Returns
    -------
    list
        ``func(spec)`` for each spec, in the order of ``specs``.
    """
    specs = list(specs)
    if scheduler is None:
        results = []
        for i, spec in enumerate(specs, 1):
            results.append(func(spec))
            _log_done(log, i, len(specs), spec)
        return results
    with dask_client(scheduler) as client:
        futures = client.map(func, specs, pure=False)
        results = []
        for i, (spec, future) in enumerate(zip(specs, futures, strict=True), 1):
            results.append(future.result())  # raises the run's own exception, if any
            _log_done(log, i, len(specs), spec)
        return results


def _log_done(log, i, n, spec):
    if log is not None:
        log(f"  run {i}/{n} done: {spec.get('name') or spec.get('tags') or ''}")
