"""Worker processes of the generic path: forked or fresh interpreters, one pipe pair each."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import multiprocessing
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time

from fastnum.gradcheck._errors import UserCodeError, describe_exception
from fastnum.gradcheck._evaluator import TASK_KINDS, Evaluator, dumps, task_size

# A worker checks this often whether its parent is still alive (where prctl is missing).
WATCHDOG_SECONDS = 0.5
# How long a worker has to exit after its pipe is closed, before it is killed.
STOP_SECONDS = 2.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

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
    Dask's: they do not run the reader's code) or a task thread of fastnum's kernels
    (they run nothing but kernel tasks, and only while a call of
    :func:`fastnum._jit.run_tasks` waits for them, which the main thread, here, is not
    in; a forked child starts a pool of its own).  fastnum never starts numba's
    threading layer itself.  macOS system libraries are not
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
    jit = sys.modules.get("fastnum._jit")  # not imported: no kernel has run, no task thread
    others = [
        t
        for t in threading.enumerate()
        if t is not main and not t.daemon and not (jit and jit.is_task_thread(t))
    ]
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
        f"the generic path ran serially in this process: {why}. Once numba's threads or "
        f"other threads of yours run here, worker processes are fresh interpreters that "
        f"need the network pickled{hint}."
    )


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
            "from fastnum.gradcheck._processes import exec_worker_main; "
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
