"""The book's minibatch SGD training of ``TwoLayerNet`` (chapter 4.5), made resumable.

One function, :func:`train`, runs the loop of the book's ``train_neuralnet.py``::

    for i in range(iters):
        batch = random sample (with replacement) of batch_size training images
        grad = numerical gradient (or forward differences, SPSA, backprop) on the batch
        params -= lr * grad       (or another optimizer of chapter 6, fastnum.optimizers)
        record the loss of the batch at the updated params
        if i % iter_per_epoch == 0: record train and test accuracy on the full sets

and adds what a run of hours needs: input checks with clear errors, a progress
bar, divergence detection, atomic outputs and bit-exact resume from per-epoch
checkpoints.

The pieces live beside it, one job each: the settings in :mod:`fastnum.train_config`,
the networks it can train in :mod:`fastnum.train_nets`, the data in
:mod:`fastnum.train_data`, one step (gradient and update) in :mod:`fastnum.train_step`,
the checkpoint's format in :mod:`fastnum.checkpoint` and the output folder in
:mod:`fastnum.rundir`.  This module runs the loop.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from fastnum import checkpoint
from fastnum._validate import Message
from fastnum.backend import describe_backend
from fastnum.distributed import scheduled
from fastnum.estimators import loss_evaluations
from fastnum.progress import NoProgress, Progress
from fastnum.rundir import HISTORY, RunFolder, check_out_dir

# The config, the networks and the data have modules of their own; their public names
# stay importable from here, where they were first.
from fastnum.train_config import (
    ACTIVATIONS,
    GRADS,
    HYPERPARAMETERS,
    NETS,
    OPTIMIZER_NAMES,
    SGD_LR,
    SPSA_DISTRIBUTIONS,
    WEIGHT_INIT_NAMES,
    TrainConfig,
)
from fastnum.train_data import TrainData, prepare_data
from fastnum.train_nets import build_net
from fastnum.train_step import run_backend, sgd_step, step_gradient, step_seed

__all__ = [
    "ACTIVATIONS",
    "GRADS",
    "HYPERPARAMETERS",
    "NETS",
    "OPTIMIZER_NAMES",
    "SGD_LR",
    "SPSA_DISTRIBUTIONS",
    "WEIGHT_INIT_NAMES",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "TrainingDivergedError",
    "build_net",
    "prepare_data",
    "run_backend",
    "sgd_step",
    "step_gradient",
    "step_seed",
    "train",
]


class TrainingDivergedError(RuntimeError):
    """The loss or the parameters became NaN or infinite.

    Attributes
    ----------
    iteration : int
        1-based iteration whose update produced the non-finite value.
    loss : float
        The loss at that iteration (NaN or inf, or finite if only params blew up).
    lr : float
        The learning rate of the run.
    """

    def __init__(self, message, iteration, loss, lr):
        super().__init__(message)
        self.iteration, self.loss, self.lr = iteration, loss, lr


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    config : TrainConfig
    backend : str
        The backend that ran ("numba" or "numpy").
    net : fastnum.network.TwoLayerNet or fastnum.multilayer.MultiLayerNet
        The trained network (a MultiLayerNet when ``config.hidden_sizes`` is
        given); ``params`` is ``net.params``.
    history : dict
        ``loss`` (one float per iteration), ``epoch_iter`` (1-based iteration
        of each evaluation), ``train_acc`` and ``test_acc`` (per evaluation).
        Deterministic: equal for equal configs, resumed or not.
    timings : dict
        ``epoch_seconds`` (wall time per evaluation period), ``total_seconds`` and
        ``loss_evaluations_per_step`` (of the gradient estimate, see
        :func:`fastnum.estimators.loss_evaluations`; also in history.json).
    final_train_acc, final_test_acc : float
        Accuracy of the final parameters on the full training and test sets.
    out_dir : pathlib.Path or None
    optimizer : fastnum.optimizers.Optimizer or None
        The optimizer at the end of the run (its state included).
    """

    config: TrainConfig
    backend: str
    net: object
    history: dict
    timings: dict
    final_train_acc: float
    final_test_acc: float
    out_dir: Path | None = None
    optimizer: object = None

    @property
    def params(self):
        """The final parameters W1, b1, W2, b2."""
        return self.net.params


class _Run:
    """The state of one training run and the steps that advance it."""

    def __init__(self, config, data, folder, log):
        self.cfg, self.data, self.folder, self.log = config, data, folder, log
        self.net = build_net(
            config, data.x_train.shape[1], data.n_classes, input_dim=data.x_train.shape[1:]
        )
        self.backend = self.net.backend
        self.optimizer = config.make_optimizer()
        # A child stream, so batch sampling does not replay the bits of the weight init.
        self.rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(1)[0])
        self.per_epoch = max(len(data.x_train) // config.batch_size, 1)
        n_params = sum(p.size for p in self.net.params.values())
        # Of the gradient estimate; the batch loss recorded after the update adds one more.
        self.evaluations_per_step = loss_evaluations(config.grad, n_params, config.directions)
        self.iteration = 0
        self.history = {"loss": [], "epoch_iter": [], "train_acc": [], "test_acc": []}
        self.epoch_seconds, self.seconds_before = [], 0.0
        self.t_start = self.t_epoch = time.perf_counter()
        self.progress = NoProgress()

    def say(self, message):
        if self.log is not None:
            self.progress.write(self.log, message)

    def seconds(self):
        return self.seconds_before + time.perf_counter() - self.t_start

    def timings(self):
        total = self.seconds()
        return {
            "epoch_seconds": list(self.epoch_seconds),
            "total_seconds": total,
            "loss_evaluations_per_step": self.evaluations_per_step,
        }

    def step(self):
        """One update; returns the batch loss at the updated parameters."""
        idx = self.rng.choice(len(self.data.x_train), self.cfg.batch_size)
        # Rows of data validated once in prepare_data: the trusted methods apply.
        x, t = self.data.x_train[idx], self.data.t_train[idx]
        return sgd_step(self.net, x, t, self.cfg, self.optimizer, self.iteration)

    def accuracies(self):
        d = self.data
        return (
            self.net.accuracy_trusted(d.x_train, d.t_train),
            self.net.accuracy_trusted(d.x_test, d.t_test),
        )

    def evaluate(self):
        """Record train/test accuracy at the current iteration and print the book's line."""
        train_acc, test_acc = self.accuracies()
        h = self.history
        h["epoch_iter"].append(self.iteration)
        h["train_acc"].append(train_acc)
        h["test_acc"].append(test_acc)
        now = time.perf_counter()
        self.epoch_seconds.append(now - self.t_epoch)
        self.t_epoch = now
        width = len(str(self.cfg.iters))
        epoch = len(h["train_acc"]) - 1
        self.say(
            f"iter {self.iteration:>{width}}/{self.cfg.iters}  epoch {epoch:>2}  "
            f"loss {h['loss'][-1]:.4f}  train acc, test acc | {train_acc:.4f}, {test_acc:.4f}"
        )

    def document(self, status, **extra):
        """The content of history.json."""
        backend_info = {
            "backend": self.backend,
            "backend_description": describe_backend(self.backend),
        }
        if self.backend == "numba":
            from fastnum._jit import get_num_threads

            backend_info["threads"] = get_num_threads()
        return {
            "format": checkpoint.FORMAT,
            "status": status,
            "config": self.cfg.to_dict(),
            **backend_info,
            "data": self.data.info,
            "iter_per_epoch": self.per_epoch,
            "iterations_done": self.iteration,
            "history": self.history,
            "timings": self.timings(),
            **extra,
        }

    def write_history(self, status, **extra):
        if self.folder is not None:
            self.folder.write_history(self.document(status, **extra))

    def write_checkpoint(self):
        self.folder.write_checkpoint(*checkpoint.pack(self))

    def restore(self):
        """Continue from the folder's checkpoint: params, optimizer, sampler, network state,
        iteration and history (:func:`fastnum.checkpoint.unpack`)."""
        meta, arrays = self.folder.read_checkpoint(tuple(self.net.params))
        checkpoint.unpack(self, meta, arrays)
        self.say(
            f"resuming from {self.folder.checkpoint} at iteration {self.iteration}/{self.cfg.iters}"
        )

    def diverged(self, loss):
        """Save what is finite, then raise :class:`TrainingDivergedError`."""
        lr, it = self.cfg.lr, self.iteration + 1
        where = ""
        if self.folder is not None:
            self.write_history("diverged", diverged_at={"iteration": it, "loss": repr(loss)})
            self.folder.write_plots(self.history)
            where = (
                f" The history of the {self.iteration} finite iterations is in "
                f"{self.folder.path / HISTORY} (plots show only those; no params.npz "
                "written)."
            )
        message = Message(
            "training diverged at iteration {it}: the loss became {loss} (or the parameters "
            "non-finite) with {name}={value:g}. Lower the learning rate (e.g. {name}={lower:g}) "
            "and start a new run.{where}",
            "lr",
            it=it,
            loss=loss,
            value=lr,
            lower=lr / 10,
            where=where,
        )
        raise TrainingDivergedError(
            message,
            it,
            loss,
            lr,
        )

    def params_finite(self):
        return all(np.isfinite(p).all() for p in self.net.params.values())

    def loop(self, callback):
        """Run the remaining iterations; evaluate and checkpoint at each epoch."""
        while self.iteration < self.cfg.iters:
            loss = self.step()
            if not (math.isfinite(loss) and self.params_finite()):
                self.diverged(loss)
            self.history["loss"].append(loss)
            self.iteration += 1
            if (self.iteration - 1) % self.per_epoch == 0:  # the book's `i % iter_per_epoch == 0`
                self.end_epoch(callback)
            self.progress.update(self.iteration)

    def end_epoch(self, callback):
        self.evaluate()
        if self.folder is not None:
            self.write_checkpoint()
            self.write_history("running")
        if callback is not None:
            h = self.history
            callback(
                {
                    "iteration": self.iteration,
                    "epoch": len(h["train_acc"]) - 1,
                    "loss": h["loss"][-1],
                    "train_acc": h["train_acc"][-1],
                    "test_acc": h["test_acc"][-1],
                }
            )

    def finish(self):
        """Evaluate the final parameters, write all outputs, return the result."""
        h = self.history
        if h["epoch_iter"] and h["epoch_iter"][-1] == self.iteration:
            final = h["train_acc"][-1], h["test_acc"][-1]
        else:
            final = self.accuracies()
        if self.folder is not None:
            self.folder.write_params(self.net.params)
            self.write_checkpoint()  # lets a later resume extend the run with more iters
            self.write_history(
                "completed",
                final={"iteration": self.iteration, "train_acc": final[0], "test_acc": final[1]},
            )
            self.folder.write_plots(h)
        return TrainResult(
            self.cfg,
            self.backend,
            self.net,
            h,
            self.timings(),
            final[0],
            final[1],
            None if self.folder is None else self.folder.path,
            optimizer=self.optimizer,
        )


def train(
    config=None,
    data=None,
    out_dir=None,
    *,
    resume=False,
    overwrite=False,
    data_dir=None,
    progress=True,
    log=print,
    callback=None,
    scheduler=None,
):
    """Train the book's ``TwoLayerNet`` with minibatch SGD (or another chapter 6 optimizer).

    Parameters
    ----------
    config : TrainConfig, optional
        The run's settings; ``TrainConfig()`` (the book's) by default.
    data : ((x_train, t_train), (x_test, t_test)), optional
        Training and test sets; ``None`` loads MNIST with
        ``fastnum.data.load_mnist`` (10 classes).  Otherwise the number of
        classes is the one-hot width or ``max(t_train) + 1``.
    out_dir : str or Path, optional
        Where to write ``history.json``, ``params.npz``, ``loss.png``,
        ``accuracy.png`` and ``checkpoint.npz`` (all atomically).  ``None``
        writes nothing.  The folder is locked (``run.lock``) while the run
        lasts: a second run in it is refused.
    resume : bool, default False
        Continue from ``out_dir/checkpoint.npz``.  The result is bit-identical
        to an uninterrupted run (the optimizer's state is in the checkpoint);
        only ``iters``, ``threads`` and an equivalent ``backend`` spelling may
        differ from the checkpoint's config.
        A checkpoint that is damaged, edited (it carries a checksum) or
        inconsistent with its own history is refused.
    overwrite : bool, default False
        Allow a fresh run in an ``out_dir`` that already holds one (its outputs
        are deleted first).
    data_dir : str or Path, optional
        MNIST folder passed to ``load_mnist`` when ``data`` is None.
    progress : bool, default True
        Show a progress bar with iterations/s and ETA on stderr (tqdm on a
        terminal and in Jupyter, one line per 10 % in a log file).
    log : callable or None, default print
        Receives the per-epoch lines (``... train acc, test acc | 0.90, 0.91``).
    callback : callable, optional
        Called after each epoch's checkpoint with a dict (iteration, epoch,
        loss, train_acc, test_acc).  An exception raised there stops training;
        the checkpoint of that epoch is already on disk.
    scheduler : str, distributed.Client or cluster, optional
        Run every step's numerical gradient in parameter blocks on this Dask
        scheduler (:mod:`fastnum.distributed`; ``"local"`` for an in-process
        cluster).  The results are those of one process, so a run may be resumed
        with or without it.  Needs ``grad="numerical"`` and the numba backend.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError, TypeError
        Bad settings or data; the message names the value and the fix.  All
        of them are checked before anything is created on disk.
    FileExistsError, FileNotFoundError
        ``out_dir`` holds a run but neither resume nor overwrite was asked;
        or resume was asked but there is no checkpoint.
    fastnum.rundir.CheckpointError
        (a ValueError) The checkpoint cannot be resumed from; the message says why.
    fastnum.rundir.RunFolderError
        (an OSError) ``out_dir`` is locked by another run (or a stale lock),
        is a file, or cannot be written (disk full); the message says what to do.
    TrainingDivergedError
        The loss or the parameters became NaN/inf (history so far is saved).

    Notes
    -----
    With the numba backend BLAS runs on one thread during the SGD steps
    (see :func:`run_backend`).

    The recorded loss of an iteration is, as in the book, the loss of that
    iteration's batch at the parameters *after* its update.  Accuracy is
    evaluated, as in the book, after iterations 1, 1 + iter_per_epoch, ...
    with ``iter_per_epoch = max(train_size // batch_size, 1)`` (the book's
    ``train_size / batch_size``, as an integer so that the test fires when
    batch_size does not divide train_size).  The accuracy of the final
    parameters is always computed as well (``final_*_acc``).
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}.")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: pick one.")
    out = check_out_dir(out_dir)
    if resume and out is None:
        raise ValueError("resume=True needs out_dir: the run directory holding checkpoint.npz.")
    if scheduler is not None and config.grad != "numerical":
        raise ValueError(
            f"scheduler={scheduler!r} spreads the numerical gradient over a Dask cluster, "
            f"but grad={config.grad!r}; use grad='numerical' (--grad numerical) or drop it."
        )
    data = prepare_data(config, data, data_dir)
    backend = run_backend(config)  # raises on a backend that cannot run, before files are touched
    if scheduler is not None and backend != "numba":
        raise ValueError(
            f"scheduler={scheduler!r} runs the numba kernels on the Dask workers, but the run's "
            f"backend is {backend!r}; use the numba backend (--backend numba) or drop it."
        )
    from fastnum._jit import num_threads

    # The count is checked on entry (before any file is touched) and given back after
    # the run, so that train(threads=1) does not slow the caller's later calls.
    with num_threads(config.threads):
        folder = None if out is None else RunFolder(out).open(resume, overwrite)
        try:
            run = _Run(config, data, folder, log)
            if resume:
                run.restore()
            if progress and run.iteration < config.iters:
                run.progress = Progress(config.iters, run.iteration)
            # exp() overflowing in a saturated sigmoid is harmless (it gives 0); real trouble
            # shows up as a non-finite loss or parameter, which the loop checks explicitly.
            with np.errstate(over="ignore", under="ignore", invalid="ignore"):
                try:
                    with scheduled(run.net, scheduler):
                        run.loop(callback)
                finally:
                    run.progress.close()
                return run.finish()
        finally:
            if folder is not None:
                folder.close()
