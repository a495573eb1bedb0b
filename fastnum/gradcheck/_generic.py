"""The generic path: central differences of the network's own ``loss``, block by block.

Every block of parameter elements is evaluated on its own copy of the network,
taken from one snapshot, so a serial loop, worker processes and a Dask cluster run
the same code on the same numbers and give identical results.

In this process the copies are deep copies, never unpickled: unpickling a class
that cloudpickle carried by value (one defined in a notebook, a script or a
function) in the process that defined it rebinds the class's methods to copies
with frozen globals, so the reader's own class would stop seeing later changes
of their globals.  Only worker processes unpickle, and forked ones (see
:func:`start_method`) need not even that.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import threading
import time

# The generic path's pieces, re-exported: this module is the one the checker and the
# tests reach them through.
from fastnum.gradcheck._evaluator import (  # noqa: F401
    _GLOBAL_RNG_LOCK,
    TASK_KINDS,
    Evaluator,
    Snapshot,
    _same_state,
    dumps,
    evaluator_from,
    label_indices,
    last_layer_name,
    plan_blocks,
    plan_indices,
    snapshot,
    takes_train_flg,
    task_size,
    unguarded_mode,
)
from fastnum.gradcheck._processes import _note, _ProcessRunner, start_method  # noqa: F401

# Workers assumed when planning blocks for a Dask cluster, whose size is not known yet.
CLUSTER_WORKERS = 16
# The automatic progress bar appears for runs still going after this many seconds.
PROGRESS_DELAY = 3.0


class _SerialRunner:
    """This process: one evaluator on a deep copy of the snapshot."""

    def __init__(self, snap):
        self.evaluator = evaluator_from(snap)

    def run(self, tasks, progress, deadline):
        results = []
        for task in tasks:
            if deadline is not None and time.monotonic() >= deadline:
                results.append(None)
                continue
            results.append(TASK_KINDS[task[0]](self.evaluator, task[1], task[2]))
            progress(task_size(task))
        return results

    def close(self, kill=False):
        pass


# ------------------------------------------------------------------ Dask workers

_DASK_LOCAL = threading.local()  # one evaluator per worker thread and payload

# Snapshots of the checks running in this process, by token: an in-process Dask worker
# (LocalCluster(processes=False), scheduler="local") takes its copy from here instead of
# unpickling the payload in the process that defined the reader's class.
_LOCAL_SNAPSHOTS = {}


def _dask_task(data, token, task, wall_deadline=None):
    # Clocks of other machines: time.time(), not monotonic, which is per machine.
    if wall_deadline is not None and time.time() >= wall_deadline:
        return None
    cache = _DASK_LOCAL.__dict__.setdefault("evaluators", {})
    if token not in cache:
        cache.clear()
        snap = _LOCAL_SNAPSHOTS.get(token)
        cache[token] = (
            evaluator_from(snap) if snap is not None else Evaluator(*pickle.loads(data)[:-1])
        )
    kind, arg, step = task
    return TASK_KINDS[kind](cache[token], arg, step)


class _DaskRunner:
    """A Dask cluster, sent the pickled snapshot once."""

    def __init__(self, snap, scheduler):
        from fastnum._dask import dask_client

        self.token = snap.token
        self.stack = contextlib.ExitStack()
        _LOCAL_SNAPSHOTS[self.token] = snap
        self.stack.callback(_LOCAL_SNAPSHOTS.pop, self.token, None)
        try:
            self.client = self.stack.enter_context(dask_client(scheduler))
            # Bytes: Dask moves them without unpickling what is inside.
            self.shared = self.client.scatter(dumps(snap), broadcast=True)
        except BaseException:
            self.stack.close()
            raise

    def run(self, tasks, progress, deadline):
        from distributed import as_completed

        wall = None if deadline is None else time.time() + (deadline - time.monotonic())
        futures = [
            self.client.submit(_dask_task, self.shared, self.token, task, wall, pure=False)
            for task in tasks
        ]
        try:
            sizes = {f.key: task_size(task) for f, task in zip(futures, tasks, strict=True)}
            for future in as_completed(futures):
                if future.status == "finished":
                    progress(sizes[future.key])
            return self.client.gather(futures)
        except BaseException:
            self.client.cancel(futures)
            raise

    def close(self, kill=False):
        self.stack.close()


# ----------------------------------------------------------------------- the runner


class _Bar:
    """``progress(n)``: n more parameter elements done, on a tqdm bar or the caller's object."""

    def __init__(self, progress, total):
        self.bar, self.own = None, False
        if progress is None or progress is True:
            from fastnum.progress import _redraws

            redraws = _redraws(sys.stderr)
            if progress or redraws:
                from tqdm.auto import tqdm

                self.own = True
                self.bar = tqdm(
                    total=total,
                    unit="param",
                    desc="gradient check",
                    file=sys.stderr,
                    # Automatic: only for checks still running after a few seconds.
                    delay=0 if progress else PROGRESS_DELAY,
                    mininterval=0.2,
                    leave=not redraws,  # a log keeps the last line; a terminal, the report
                    dynamic_ncols=True,
                )
        elif progress is not False:
            self.bar = progress

    def __call__(self, n):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.own:
            self.bar.close()


@contextlib.contextmanager
def open_workers(snap, workers=1, scheduler=None, notes=None):
    """Where tasks run, started once for several ``run`` calls: each worker's copy is sent once.

    Yields an object with ``run(tasks, progress=None, deadline=None)``, which returns
    what :func:`run_tasks` returns.  ``workers=1`` runs in this process; when worker
    processes cannot take a copy of the network, it runs there too, with a line
    appended to ``notes`` (a list) saying why.
    """
    if scheduler is not None:
        runner = _DaskRunner(snap, scheduler)
    else:
        runner = _ProcessRunner.start(snap, workers, notes) if workers > 1 else None
        runner = runner or _SerialRunner(snap)
    try:
        yield _Runner(runner)
    except BaseException:
        runner.close(kill=True)
        raise
    runner.close()


class _Runner:
    """What :func:`open_workers` yields."""

    def __init__(self, runner):
        self.runner = runner

    @property
    def where(self):
        """ "serial", "processes" or "dask": where the tasks actually run."""
        return {_SerialRunner: "serial", _ProcessRunner: "processes"}.get(type(self.runner), "dask")

    def run(self, tasks, progress=None, deadline=None):
        """Run ``tasks``; see :func:`run_tasks`."""
        tasks = list(tasks)
        for task in tasks:
            if not (isinstance(task, tuple) and len(task) == 3 and task[0] in TASK_KINDS):
                raise ValueError(
                    f"task {task!r} is not (kind, arg, step) with kind one of {sorted(TASK_KINDS)}"
                )
        bar = _Bar(progress, sum(task_size(task) for task in tasks))
        try:
            return self.runner.run(tasks, bar, deadline)
        finally:
            bar.close()


def run_tasks(snap, tasks, workers=1, scheduler=None, *, progress=None, deadline=None, notes=None):
    """Run tasks on copies of the snapshot's network; the results, in the order of ``tasks``.

    Parameters
    ----------
    snap : Snapshot
        From :func:`snapshot`.
    tasks : list of tuple
        ``("block", (name, start, stop), h)``: central differences of a flat range;
        ``("central_at", (name, flat_indices), h)``: the same at chosen elements;
        ``("one_sided_at", (name, flat_indices), step)``: (forward, backward) slopes;
        ``("direction", {name: v}, h)``: the central difference along ``v``.
    workers : int
        1 runs in this process; more starts that many worker processes (forked
        while safe, else fresh interpreters sent the snapshot once).
    scheduler : None, str, distributed.Client or cluster
        Run on a Dask cluster instead (an address such as ``tcp://host:8786``).
    progress : None, bool or object with ``update(n)``
        A tqdm bar of parameter elements done, on stderr: None shows it on a
        terminal for runs still going after a few seconds, True always, False
        never; an object's ``update`` is called instead (e.g. the caller's bar).
    deadline : float, optional
        A ``time.monotonic()`` value: tasks not started by then give None.
    notes : list, optional
        Gets one line when worker processes were asked for but could not take a
        copy of the network, so the tasks ran in this process.

    Returns
    -------
    list
        One result per task, in the order of ``tasks``.

    Raises
    ------
    UserCodeError
        The network's loss raised (one line, as in this process), or a worker
        process died (which one, and how).
    TypeError
        The loss returned something other than one number.
    """
    tasks = list(tasks)
    if len(tasks) < 2 and scheduler is None:
        workers = 1  # one task gains nothing from another process
    with open_workers(snap, min(workers, max(1, len(tasks))), scheduler, notes) as runner:
        return runner.run(tasks, progress, deadline)


def default_workers():
    """All cores of this machine."""
    return os.cpu_count() or 1
