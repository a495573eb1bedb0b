"""Shared machinery of the experiments in ``scripts/``: seeded runs, grids, CSV, PNG, CLI.

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

import argparse
import csv
import functools
import math
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

from fastnum._io import atomic_open, save_png  # save_png: for the experiment scripts
from fastnum._validate import as_float_batch, as_labels

__all__ = ["DETERMINISTIC_KEYS", "count_params", "default_out", "deterministic",
           "experiment_parser", "format_duration", "machine_info", "new_figure", "plain_ticks",
           "run_grid", "run_one", "run_script", "save_png", "time_per_iteration", "write_csv"]

#: Result keys that are equal for equal specs, wherever and whenever they run.
DETERMINISTIC_KEYS = ("name", "tags", "config", "status", "stopped_at", "iterations",
                      "final_loss", "final_train_acc", "final_test_acc", "epochs")

# Runs in one process take turns: each uses every core numba gives it, and numba's
# fallback "workqueue" threading layer aborts when two threads launch kernels at once
# (a Dask worker with several threads would do that).
_RUN_LOCK = threading.Lock()


class _LossAboveLimitError(Exception):
    """Raised from the epoch callback to end a run whose loss exceeded ``stop_loss``."""


@functools.lru_cache(maxsize=2)
def _mnist(data_dir):
    # Cached per process: a grid of runs reads and parses MNIST once.
    from fastnum.data import load_mnist

    return load_mnist(normalize=True, flatten=True, one_hot_label=False, data_dir=data_dir)


def count_params(hidden_sizes, input_size=784, output_size=10):
    """Number of weights and biases of a fully connected network.

    Parameters
    ----------
    hidden_sizes : sequence of int
        Widths of the hidden layers.
    input_size, output_size : int
        Widths of the input and the output layer.

    Returns
    -------
    int
    """
    sizes = [input_size, *hidden_sizes, output_size]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


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
    x = x[:config.train_size]
    t = as_labels(t[:config.train_size], len(x), n_classes)
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
    tail = losses[-max(1, len(losses) // 10):]
    return {"status": status, "stopped_at": stopped_at, "iterations": iterations,
            "final_loss": float(np.mean(tail)) if tail else math.nan,
            "final_train_acc": train_acc, "final_test_acc": test_acc, "epochs": epochs}


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
        return _outcome("diverged", err.iteration, err.iteration - 1, epochs["loss"][-1:],
                        last("train_acc"), last("test_acc"), epochs)
    except _LossAboveLimitError:
        return _outcome("stopped", last("iteration"), last("iteration"), epochs["loss"][-1:],
                        last("train_acc"), last("test_acc"), epochs)
    return _outcome("completed", None, config.iters, result.history["loss"],
                    result.final_train_acc, result.final_test_acc, epochs)


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
    with _RUN_LOCK:
        if config.threads is not None:  # numba's thread count is per thread: set it here too
            from fastnum._jit import set_num_threads

            set_num_threads(config.threads)
        sec_per_iter = None
        if spec.get("timing_seconds", 0) > 0:
            sec_per_iter = time_per_iteration(config, *data[0], spec["timing_seconds"])
        t0 = time.perf_counter()
        outcome = _train(config, data, spec.get("stop_loss"))
        seconds = time.perf_counter() - t0
    return {"name": spec.get("name"), "tags": dict(spec.get("tags", {})),
            "config": config.to_dict(), **outcome, "sec_per_iter": sec_per_iter,
            "train_seconds": seconds, "backend": resolve_backend(config.backend),
            "host": platform.node()}


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


def _dask_client(scheduler):
    """Return (client, owned): a Client for ``scheduler`` and whether we must close it."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError("--scheduler needs Dask: pip install 'fastnum[distributed]' "
                          "(or 'dask[distributed]').") from None
    if isinstance(scheduler, Client):
        return scheduler, False
    if scheduler == "local":
        # In this process, one thread: for trying the Dask path without a cluster.
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                               dashboard_address=None)
        client = Client(cluster)
        client.fastnum_cluster = cluster  # closed together with the client
        return client, True
    return Client(scheduler), True  # an address or a cluster object


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
    client, owned = _dask_client(scheduler)
    try:
        futures = client.map(func, specs, pure=False)
        for i, (spec, future) in enumerate(zip(specs, futures, strict=True), 1):
            future.result()  # raises the run's own exception, if any
            _log_done(log, i, len(specs), spec)
        return client.gather(futures)
    finally:
        if owned:
            client.close()
            cluster = getattr(client, "fastnum_cluster", None)
            if cluster is not None:
                cluster.close()


def _log_done(log, i, n, spec):
    if log is not None:
        log(f"  run {i}/{n} done: {spec.get('name') or spec.get('tags') or ''}")


def _cell(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else format(value, ".6g")
    if isinstance(value, list | tuple):
        return "-".join(str(v) for v in value)
    return "" if value is None else value


def write_csv(path, rows, columns):
    """Write ``rows`` (dicts) to ``path`` as CSV, atomically.

    Parameters
    ----------
    path : str or Path
    rows : iterable of dict
        Keys not in ``columns`` are ignored; missing ones are left empty.
    columns : sequence of str
        Header, in order.

    Returns
    -------
    Path
        ``path``.  Floats are written with 6 significant digits, NaN and None
        as empty cells, sequences joined with ``-`` (hidden sizes ``100-50``).
    """
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
    return path


def new_figure(ncols=1, nrows=1, panel_size=(5.0, 3.8)):
    """A matplotlib figure on an Agg canvas (no pyplot, no window) and its axes.

    Parameters
    ----------
    ncols, nrows : int
        Grid of panels.
    panel_size : (float, float)
        Width and height of one panel in inches.

    Returns
    -------
    (Figure, list of Axes)
        Axes in row-major order.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def plain_ticks(axis, ticks=None):
    """Label a log axis 0.1, 1, 10 instead of 10^-1, 10^0, 10^1.

    Parameters
    ----------
    axis : matplotlib.axis.Axis
        ``ax.xaxis`` or ``ax.yaxis``.
    ticks : sequence of float, optional
        Put the major ticks exactly here (e.g. the batch sizes of a sweep).
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())
    if ticks is not None:
        axis.set_major_locator(FixedLocator(list(ticks)))


def format_duration(seconds):
    """``"42 s"`` below two minutes, else ``"3.5 min"``.

    Parameters
    ----------
    seconds : float

    Returns
    -------
    str
    """
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def machine_info():
    """One line describing where the experiment ran: CPUs, backend, numba threads.

    Returns
    -------
    str
    """
    from fastnum.backend import describe_backend, resolve_backend

    return (f"{platform.machine()} with {os.cpu_count()} logical CPUs, "
            f"Python {platform.python_version()}, {describe_backend(resolve_backend(None))}")


def experiment_parser(description, name):
    """The command-line options every experiment script shares.

    Parameters
    ----------
    description : str
        First line of ``--help``.
    name : str
        The experiment's name, used in the default output folders.

    Returns
    -------
    argparse.ArgumentParser
        With ``--quick``, ``--out``, ``--scheduler``, ``--data-dir``.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="small settings that finish in seconds (what CI runs)")
    p.add_argument("--out", metavar="DIR", type=Path,
                   help=f"output folder (default: docs/experiments/{name} of the repository, "
                        f"or runs/experiments/{name}-quick with --quick)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the grid on this Dask scheduler (tcp://host:8786), or 'local' for "
                        "an in-process one; needs pip install 'fastnum[distributed]' "
                        "(default: run here, one run after the other)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder with the four MNIST .gz files on every machine that runs "
                        "(default: $FASTNUM_MNIST_DIR, else fastnum's cache)")
    return p


def run_script(body, args, prog):
    """Call ``body(args)``; report a user's error as one line on stderr instead of a traceback.

    Parameters
    ----------
    body : callable
        Runs the experiment for the parsed ``args`` and returns an exit code.
    args : argparse.Namespace
    prog : str
        Prefix of the error line.

    Returns
    -------
    int
        ``body``'s exit code, or 2 after a ValueError (bad settings, missing
        MNIST), ImportError (no Dask) or OSError (files, the Dask connection).
    """
    try:
        return body(args)
    except (ValueError, ImportError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


def default_out(args, name, repo):
    """The output folder for ``args`` of :func:`experiment_parser`.

    Parameters
    ----------
    args : argparse.Namespace
    name : str
    repo : Path
        Repository root: full runs go to ``repo/docs/experiments/name``.

    Returns
    -------
    Path
    """
    if args.out is not None:
        return args.out
    return Path("runs/experiments") / f"{name}-quick" if args.quick else \
        Path(repo) / "docs" / "experiments" / name
