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
import copy
import ctypes
import importlib.util
import inspect
import multiprocessing
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from typing import NamedTuple

import numpy as np

from fastnum import reference
from fastnum.constants import LOG_GUARD, LOSS_MATCH_RTOL
from fastnum.gradcheck._errors import UserCodeError, as_loss_value, describe_exception

# Blocks per worker: a few each evens out blocks that take longer than others.
BLOCKS_PER_WORKER = 4
# Workers assumed when planning blocks for a Dask cluster, whose size is not known yet.
CLUSTER_WORKERS = 16
# A worker checks this often whether its parent is still alive (where prctl is missing).
WATCHDOG_SECONDS = 0.5
# How long a worker has to exit after its pipe is closed, before it is killed.
STOP_SECONDS = 2.0
# The automatic progress bar appears for runs still going after this many seconds.
PROGRESS_DELAY = 3.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

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


# -------------------------------------------------------------- worker processes
#
# Each worker holds one evaluator, built once from the snapshot, and takes one task
# at a time through its own pair of pipes; a thread of the parent feeds it.  Pipes of
# its own (not a queue shared by all workers) mean a worker whose parent died gets
# EPIPE instead of blocking in a write, and a dead worker is seen at once.


def start_method():
    """``"fork"`` while it is safe, else ``"exec"`` (a fresh interpreter).

    Forked workers inherit the snapshot, so nothing is pickled and a class defined
    in a notebook, a function or a ``--model`` file needs neither an importable
    module nor cloudpickle.  Fork is unsafe once numba's threading layer (OpenMP,
    TBB or workqueue) has started its threads in this process: GNU OpenMP aborts
    the forked child ("fork() called from a process already using GNU OpenMP").
    A lock that another thread of the reader's holds at the fork (NumPy's global
    generator's, say) would stay locked in the child forever, so fork is used only
    from the main thread while every other thread is a daemon (Jupyter's, tqdm's,
    Dask's: they do not run the reader's code).  macOS system libraries are not
    fork-safe either.
    """
    if sys.platform == "darwin" or "fork" not in multiprocessing.get_all_start_methods():
        return "exec"
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if parallel is not None and getattr(parallel, "_is_initialized", True):
        return "exec"
    main = threading.main_thread()
    if threading.current_thread() is not main:
        return "exec"
    others = [t for t in threading.enumerate() if t is not main and not t.daemon]
    return "exec" if others else "fork"


def _write(stream, obj):
    """Send one pickled message: its length, then its bytes."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def _read(stream):
    """Receive one message from :func:`_write`; EOFError when the other side is gone."""
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError
    (size,) = struct.unpack("<Q", header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def _portable(exc):
    """``exc`` if it survives pickling, else a UserCodeError with its one-line description."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return UserCodeError(describe_exception(exc))
    return exc


def _die_with_parent(parent_pid):
    """In a worker: exit when the parent dies, however it dies (SIGKILL included)."""
    if sys.platform.startswith("linux"):
        try:  # the kernel sends SIGKILL when the parent exits
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
            pass
    if os.getppid() != parent_pid:  # died before the line above
        os._exit(1)

    def watch():  # elsewhere (and as a fallback): an orphan is re-parented
        while os.getppid() == parent_pid:
            time.sleep(WATCHDOG_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="fastnum-parent-watch").start()
    # Ctrl-C reaches the whole process group; the parent stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _serve(evaluator, tasks, results):
    """A worker's loop: run each task it is sent, send back ("ok", value) or ("error", exc)."""
    while True:
        try:
            kind, arg, step = _read(tasks)
        except (EOFError, OSError):  # the parent closed the pipe, or is gone: done
            return
        try:
            reply = ("ok", TASK_KINDS[kind](evaluator, arg, step))
        except Exception as exc:
            reply = ("error", _portable(exc))
        try:
            _write(results, reply)
        except OSError:  # the parent stopped listening (it died, or was interrupted)
            return


def _forked_worker(snap, parent_pid, task_fd, result_fd):
    """Body of a forked worker: the snapshot is this process's own copy already."""
    global _GLOBAL_RNG_LOCK
    # Locks another thread of the parent held at the fork would stay locked here.
    _GLOBAL_RNG_LOCK = threading.RLock()
    from fastnum import _jit

    _jit.PARALLEL_LAUNCH_LOCK = threading.Lock()
    _die_with_parent(parent_pid)
    _one_thread_each()
    with os.fdopen(task_fd, "rb") as tasks, os.fdopen(result_fd, "wb") as results:
        _start_serving(lambda: snap, tasks, results)


def exec_worker_main(parent_pid):
    """Body of a worker started as a fresh interpreter: the snapshot comes pickled on stdin."""
    code = 1
    try:
        _exec_worker(parent_pid)
        code = 0
    finally:
        _flush_std_streams()
        os._exit(code)  # quietly: no flush of a pipe whose reader is gone


def _exec_worker(parent_pid):
    _die_with_parent(parent_pid)
    # stdin and stdout carry the messages; the reader's prints go to stderr instead.
    tasks, results = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    _one_thread_each()
    try:
        path, data = _read(tasks)
    except EOFError:
        return
    sys.path[:] = path  # the parent's: the modules the reader's classes live in
    _start_serving(lambda: pickle.loads(data), tasks, results)


def _start_serving(load_snapshot, tasks, results):
    """Build the worker's evaluator, say "ready" (or why not, in one line), then serve tasks."""
    try:
        evaluator = Evaluator(*load_snapshot()[:-1])
    except Exception as exc:
        _write(results, ("error", describe_exception(exc)))
        return
    _write(results, ("ready", None))
    _serve(evaluator, tasks, results)


def _flush_std_streams():
    """Flush what the reader's code printed (before a fork, so the child does not print it too)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _one_thread_each():
    """One BLAS thread per worker: the processes are the parallelism."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass


# Environment of exec'd workers: one thread each for numba and BLAS from the start.
_ONE_THREAD_ENV = {
    name: "1"
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
}


class _WorkerProcess:
    """One worker: its process and the two pipe ends the parent talks to it through."""

    def __init__(self, pid, popen, tasks, results):
        self.pid, self.popen, self.tasks, self.results = pid, popen, tasks, results

    @classmethod
    def fork(cls, snap, close_in_child):
        """A forked worker; ``close_in_child`` are the parent's ends of earlier workers' pipes."""
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        parent_pid = os.getpid()
        _flush_std_streams()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child; coverage does not follow
            code = 0
            try:
                for fd in (task_w, result_r, *close_in_child):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                _forked_worker(snap, parent_pid, task_r, result_w)
            except BaseException:
                code = 1
            finally:
                _flush_std_streams()
                os._exit(code)  # never return into the parent's code (pytest, a notebook)
        os.close(task_r)
        os.close(result_w)
        return cls(pid, None, os.fdopen(task_w, "wb"), os.fdopen(result_r, "rb"))

    @classmethod
    def exec(cls, data):
        """A worker in a fresh interpreter, sent the pickled snapshot ``data``."""
        # The folder fastnum is imported from, whatever the worker's sys.path starts as.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = (
            "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            f"import sys; sys.path.insert(0, {root!r}); "
            "from fastnum.gradcheck._generic import exec_worker_main; "
            f"exec_worker_main({os.getpid()})"
        )
        popen = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, **_ONE_THREAD_ENV},
        )
        worker = cls(popen.pid, popen, popen.stdin, popen.stdout)
        try:
            _write(worker.tasks, (sys.path, data))
        except OSError:  # died at start-up; wait_ready says how
            pass
        return worker

    def wait_ready(self):
        """None once the worker holds its evaluator, else why it could not build one."""
        try:
            status, why = _read(self.results)
        except (EOFError, OSError):
            return f"the worker process {self.how_it_ended()}"
        return None if status == "ready" else why

    def run(self, task):
        """Run one task in the worker and return its result (its error is raised here)."""
        try:
            _write(self.tasks, task)
            status, value = _read(self.results)
        except (EOFError, OSError):
            raise UserCodeError(
                f"worker process {self.pid} died ({self.how_it_ended()}) while running "
                f"the network's loss on its copy; run with workers=1 to see the error in "
                "this process"
            ) from None
        if status == "error":
            raise value
        return value

    def how_it_ended(self, timeout=2.0):
        """``killed by signal SIGKILL``, ``exited with code 1``, ..., once it has ended."""
        code = self._wait(timeout)
        if code is None:
            return "stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            oom = " (out of memory?)" if -code == getattr(signal, "SIGKILL", None) else ""
            return f"killed by {name}{oom}"
        return f"exited with code {code}"

    def _wait(self, timeout):
        """The exit code (negative: the signal) once ended within ``timeout``, else None."""
        if self.popen is not None:
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        if getattr(self, "code", None) is not None:
            return self.code
        end = time.monotonic() + timeout
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return getattr(self, "code", None)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
                return self.code
            if time.monotonic() >= end:
                return None
            time.sleep(0.01)

    def stop(self, kill=False):
        """Close the pipes (the worker exits at EOF); SIGKILL it if asked or if it lingers."""
        for stream in (self.tasks, self.results):
            with contextlib.suppress(OSError):
                stream.close()
        if kill or self._wait(STOP_SECONDS) is None:
            with contextlib.suppress(OSError):
                if self.popen is not None:
                    self.popen.kill()  # SIGKILL, or TerminateProcess on Windows
                else:
                    os.kill(self.pid, signal.SIGKILL)
            self._wait(STOP_SECONDS)


class _ProcessRunner:
    """Worker processes, each with its own evaluator, fed one task at a time."""

    def __init__(self, workers):
        self.workers = workers

    @classmethod
    def start(cls, snap, n, notes):
        """``n`` workers holding copies of ``snap``, or None (and a note) when impossible."""
        method = start_method()
        data = None
        if method == "exec":
            if not sys.executable:
                _note(notes, "this Python has no sys.executable to start worker processes with")
                return None
            try:
                data = dumps(snap)
            except Exception as exc:
                _note(notes, f"the network cannot be pickled ({describe_exception(exc)})")
                return None
        workers = []
        try:
            for _ in range(n):
                if method == "fork":
                    fds = [fd for w in workers for fd in (w.tasks.fileno(), w.results.fileno())]
                    workers.append(_WorkerProcess.fork(snap, fds))
                else:
                    workers.append(_WorkerProcess.exec(data))
            why = next(filter(None, (w.wait_ready() for w in workers)), None)
        except BaseException:
            for w in workers:
                w.stop(kill=True)
            raise
        if why is not None:
            for w in workers:
                w.stop(kill=True)
            _note(notes, f"a worker process could not take a copy of the network ({why})")
            return None
        return cls(workers)

    def run(self, tasks, progress, deadline):
        results = [None] * len(tasks)
        lock = threading.Lock()
        order = iter(range(len(tasks)))
        failures = []
        stopping = threading.Event()

        def feed(worker):
            try:
                while not stopping.is_set():
                    with lock:
                        i = next(order, None)
                    if i is None:
                        return
                    if deadline is not None and time.monotonic() >= deadline:
                        continue  # not started in time: stays None
                    value = worker.run(tasks[i])
                    with lock:
                        results[i] = value
                        progress(task_size(tasks[i]))
            except BaseException as exc:  # handed to the caller's thread
                with lock:
                    if not stopping.is_set():
                        failures.append(exc)
                        stopping.set()

        threads = [
            threading.Thread(target=feed, args=(w,), daemon=True, name=f"fastnum-feed-{w.pid}")
            for w in self.workers
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():  # short waits: Ctrl-C is seen at once
                    thread.join(0.1)
                    if stopping.is_set():
                        break
        except BaseException:
            stopping.set()
            self.close(kill=True)  # the feeding threads see EOF and end
            raise
        if failures:
            self.close(kill=True)
            raise failures[0]
        return results

    def close(self, kill=False):
        for worker in self.workers:
            worker.stop(kill)
        self.workers = []


def _note(notes, why):
    """Say why the tasks ran serially, and how to get processes back."""
    if notes is None:
        return
    hint = ""
    if importlib.util.find_spec("cloudpickle") is None:
        hint = (
            "; pip install cloudpickle to pickle classes defined in a notebook, a function "
            "or a script"
        )
    notes.append(
        f"the generic path ran serially in this process: {why}. Once numba's threads run "
        f"here, worker processes are fresh interpreters that need the network pickled{hint}."
    )


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
