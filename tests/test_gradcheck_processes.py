"""The generic path's worker processes: safe beside numba's threads, same numbers as a serial
loop, clear errors, gone when their parent dies, progress and deadlines."""

# The book-style nets draw dropout masks from NumPy's global generator, as the book's do.
# ruff: noqa: NPY002

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from fastnum.gradcheck import _generic, _processes
from fastnum.gradcheck._errors import UserCodeError
from tests import book_style_nets as book
from tests._child import run_python

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(3)
X = RNG.random((4, 12))
T = np.array([0, 1, 2, 1])
H = 1e-4


def chapter6_net(seed=0):
    """Batch norm, dropout (from the global generator) and weight decay, as in chapter 6."""
    np.random.seed(seed)
    return book.MultiLayerNetExtend(
        12, [5, 4], 3, use_batchnorm=True, use_dropout=True, weight_decay_lambda=0.1
    )


def snap_of(net, seed=1):
    np.random.seed(seed)
    return _generic.snapshot(net, X, T, np.random.get_state(), False)


def block_tasks(params, n_workers=2, h=H):
    return [("block", block, h) for block in _generic.plan_blocks(params, n_workers)]


@pytest.fixture(params=["fork", "exec"])
def start(request, monkeypatch):
    """Both ways of starting workers, whatever this process has run before."""
    if request.param == "fork" and "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    monkeypatch.setattr(_processes, "start_method", lambda: request.param)
    return request.param


def same(ref, comp):
    """Results of run_tasks equal element for element (``==``, not close)."""
    assert len(ref) == len(comp)
    for r, c in zip(ref, comp, strict=True):
        if isinstance(r, tuple):
            assert all(np.array_equal(a, b) for a, b in zip(r, c, strict=True))
        else:
            assert np.array_equal(r, c)


# ------------------------------------------------------------- beside numba's threads


@pytest.mark.numba
def test_workers_start_safely_after_numba_parallel_kernels_ran_here():
    # A parallel kernel in this process starts numba's threading layer (GNU OpenMP
    # here); a worker forked after that aborts as soon as its own loss launches a
    # parallel kernel ("fork() called from a process already using GNU OpenMP").
    import numba
    import numba.np.ufunc.parallel as numba_parallel

    from fastnum.network import TwoLayerNet

    @numba.njit(parallel=True)
    def total(a):
        s = 0.0
        for i in numba.prange(len(a)):
            s += a[i]
        return s

    total(np.ones(100))
    assert numba_parallel._is_initialized
    assert _processes.start_method() == "exec"
    net = TwoLayerNet(12, 6, 3, seed=0, backend="numba")  # its loss runs the kernels
    snap = _generic.snapshot(net, X, T, np.random.get_state(), False)
    tasks = block_tasks(net.params)
    ref_values = _generic.run_tasks(snap, tasks, workers=1)
    notes = []
    with _generic.open_workers(snap, 2, notes=notes) as runner:
        assert runner.where == "processes", notes
        comp_values = runner.run(tasks)
    same(ref_values, comp_values)


# A reader's session: fastnum's kernels run first (on their task threads), then the reader
# checks a class defined in the script itself.  A fresh interpreter could not unpickle that
# class (no cloudpickle here), so only forked workers can run the check in processes.
AFTER_KERNELS_CHILD = textwrap.dedent("""
    import json, sys, threading
    sys.modules["cloudpickle"] = None  # as on an install without it
    import numpy as np
    import fastnum
    from fastnum._jit import HAVE_NUMBA, JIT_ENABLED
    from fastnum.gradcheck import _processes
    from fastnum.network import TwoLayerNet

    class Cubed:
        def __init__(self):
            self.params = {"W": np.linspace(-0.3, 0.3, 24).reshape(8, 3), "b": np.zeros(3)}
        def _forward(self, x):
            a = x @ self.params["W"] + self.params["b"]
            e = np.exp(a ** 3)
            return a, e / e.sum(axis=1, keepdims=True)
        def loss(self, x, t):
            return -np.mean(np.log(self._forward(x)[1][np.arange(len(t)), t] + 1e-7))
        def gradient(self, x, t):
            a, y = self._forward(x)
            y[np.arange(len(t)), t] -= 1.0
            g = 3.0 * a ** 2 * y / len(t)
            return {"W": x.T @ g, "b": g.sum(axis=0)}

    class CubedSlightlyOff(Cubed):  # a bias gradient 0.1% too large
        def gradient(self, x, t):
            grads = super().gradient(x, t)
            return {"W": grads["W"], "b": grads["b"] * 1.001}

    rng = np.random.default_rng(0)
    x, t = rng.random((6, 8)), np.arange(6) % 3
    TwoLayerNet(8, 5, 3, seed=0).numerical_gradient(x, t, strategy="full")
    threads = [th.name for th in threading.enumerate()]
    method = _processes.start_method()
    result = fastnum.gradcheck(Cubed(), x, t, workers=2, log_guard=False)
    wrong = fastnum.gradcheck(CubedSlightlyOff(), x, t, workers=2, log_guard=False)
    layer = None
    if HAVE_NUMBA:
        import numba.np.ufunc.parallel as numba_parallel
        layer = numba_parallel._is_initialized
    print(json.dumps({"jit": JIT_ENABLED, "threads": threads, "start": method,
                      "numba_layer": layer, "how": result.method, "verdict": result.verdict,
                      "wrong": [wrong.method, wrong.verdict, wrong.failed]}))
""")


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods() or sys.platform == "darwin",
    reason="workers fork only where the platform forks safely",
)
def test_a_network_of_the_readers_script_is_checked_in_processes_after_kernels_ran():
    # Before: fastnum's thread count started numba's threading layer, and run_tasks' pool
    # threads counted as threads that might hold a lock, so workers were fresh
    # interpreters: the class below could not reach them and the check ran serially.
    proc = run_python("-c", AFTER_KERNELS_CHILD, env={"NUMBA_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    if seen["jit"]:  # the kernels ran on run_tasks' pool, which is still there
        assert any(name.startswith("fastnum-task") for name in seen["threads"])
    assert seen["numba_layer"] in (False, None)  # never started by fastnum
    assert seen["start"] == "fork"
    assert seen["how"] == "generic path: the network's own loss, on 2 processes"
    assert seen["verdict"] == "PASS"
    # ... and a subtly wrong one fails there, naming its parameter.
    assert seen["wrong"] == ["generic path: the network's own loss, on 2 processes", "FAIL", ["b"]]


def test_fork_only_from_the_main_thread_while_no_other_thread_runs_code():
    baseline = _processes.start_method()  # "exec" once numba's threads run here
    gate = threading.Event()
    seen = []

    def note_method():
        seen.append(_processes.start_method())
        gate.wait()

    daemon = threading.Thread(target=note_method, daemon=True)
    daemon.start()
    assert _processes.start_method() == baseline  # daemons (Jupyter's, tqdm's) do not count
    worker = threading.Thread(target=gate.wait)
    worker.start()
    try:
        assert _processes.start_method() == "exec"
    finally:
        gate.set()
        worker.join()
        daemon.join()
    assert seen == ["exec"]  # never from another thread


# ------------------------------------------------------- the same numbers as serially


def all_kinds(params):
    rng = np.random.default_rng(0)
    direction = {name: rng.standard_normal(p.shape) for name, p in params.items()}
    picks = {name: np.arange(0, p.size, 3) for name, p in params.items()}
    return [
        *block_tasks(params),
        *[("central_at", part, H) for part in _generic.plan_indices(picks, 2)],
        *[("one_sided_at", part, H / 100) for part in _generic.plan_indices(picks, 2)],
        ("direction", direction, H),
    ]


def test_every_task_kind_gives_the_serial_numbers_on_processes(start):
    snap = snap_of(chapter6_net())
    tasks = all_kinds(snap.net.params)
    ref_values = _generic.run_tasks(snap, tasks, workers=1)
    notes = []
    with _generic.open_workers(snap, 2, notes=notes) as runner:
        assert runner.where == "processes", notes
        comp_values = runner.run(tasks)
        again = runner.run(tasks[:3])  # the same workers, a second batch of tasks
    same(ref_values, comp_values)
    same(ref_values[:3], again)


def test_every_task_kind_gives_the_serial_numbers_on_dask():
    pytest.importorskip("distributed", reason="Dask not installed")
    snap = snap_of(chapter6_net())
    tasks = all_kinds(snap.net.params)
    same(_generic.run_tasks(snap, tasks), _generic.run_tasks(snap, tasks, scheduler="local"))


def test_central_at_is_blocks_arithmetic_at_chosen_elements():
    ev = _generic.evaluator_from(snap_of(chapter6_net()))
    ref_block = ev.block("W1", 0, 60, H)
    picks = np.array([59, 3, 17, 3])
    assert np.array_equal(ev.central_at("W1", picks, H), ref_block[picks])


def test_one_sided_at_evaluates_the_loss_at_theta_once():
    ev = _generic.evaluator_from(snap_of(chapter6_net()))
    calls = []
    loss = ev.loss
    ev.loss = lambda: calls.append(1) or loss()
    step = 1e-6
    forward, backward = ev.one_sided_at("b2", [0, 3], step)
    assert len(calls) == 1 + 2 * 2
    ev.loss = loss
    f0 = ev.loss()
    b2 = ev.net.params["b2"]
    for k, q in enumerate([0, 3]):
        b2[q] += step
        up = ev.loss()
        b2[q] -= 2 * step
        down = ev.loss()
        b2[q] += step
        assert forward[k] == (up - f0) / step
        assert backward[k] == (f0 - down) / step
    assert forward.dtype == backward.dtype == np.float64


def test_unknown_task_kind_is_named():
    snap = snap_of(chapter6_net())
    with pytest.raises(ValueError, match="'blocks'.*one of"):
        _generic.run_tasks(snap, [("blocks", ("W1", 0, 3), H)])


# ------------------------------------------------------------ copies of the reader's class


def local_quadratic():
    class Quadratic:  # defined in a function, as in a notebook: no module to import it from
        def __init__(self):
            self.params = {"W": np.arange(24.0).reshape(12, 2) / 100}

        def loss(self, x, t):
            return float(np.sum((x @ self.params["W"]) ** 2))

        def gradient(self, x, t):
            return {"W": 2 * x.T @ (x @ self.params["W"])}

    return Quadratic()


def test_a_class_defined_in_a_function_reaches_fresh_interpreters(monkeypatch):
    pytest.importorskip("cloudpickle", reason="cloudpickle carries such classes by value")
    monkeypatch.setattr(_processes, "start_method", lambda: "exec")
    snap = snap_of(local_quadratic())
    tasks = block_tasks(snap.net.params)
    notes = []
    with _generic.open_workers(snap, 2, notes=notes) as runner:
        assert runner.where == "processes", notes
        same(_generic.run_tasks(snap, tasks), runner.run(tasks))


def test_without_cloudpickle_such_a_class_runs_serially_with_a_note(monkeypatch):
    import pickle

    monkeypatch.setattr(_processes, "start_method", lambda: "exec")
    monkeypatch.setattr(_processes, "dumps", pickle.dumps)
    snap = snap_of(local_quadratic())
    tasks = block_tasks(snap.net.params)
    notes = []
    with _generic.open_workers(snap, 2, notes=notes) as runner:
        assert runner.where == "serial"
        same(_generic.run_tasks(snap, tasks), runner.run(tasks))
    assert len(notes) == 1 and "cannot be pickled" in notes[0]
    # The way out is named where it is missing.
    assert ("pip install cloudpickle" in notes[0]) == (
        importlib.util.find_spec("cloudpickle") is None
    )


def test_a_class_workers_cannot_import_runs_serially_with_a_note(monkeypatch):
    import pickle

    # A module that exists only in this process, as a notebook's __main__ does.
    module = types.ModuleType("fastnum_test_only_here")
    exec(
        textwrap.dedent(
            """
            import numpy as np

            class Linear:
                def __init__(self):
                    self.params = {"W": np.ones((12, 3))}

                def loss(self, x, t):
                    return float(np.sum(x @ self.params["W"]))
            """
        ),
        module.__dict__,
    )
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(_processes, "start_method", lambda: "exec")
    monkeypatch.setattr(_processes, "dumps", pickle.dumps)  # by reference, as without cloudpickle
    snap = snap_of(module.Linear())
    notes = []
    values = _generic.run_tasks(snap, block_tasks(snap.net.params), workers=2, notes=notes)
    assert np.allclose(np.concatenate(values), X.sum(axis=0).repeat(3))
    assert len(notes) == 1 and "fastnum_test_only_here" in notes[0]


# ------------------------------------------------------------------------ clear errors


class Failing:
    """A loss that raises, returns an array, or kills its process, as asked."""

    def __init__(self, how):
        self.how, self.parent = how, os.getpid()
        self.params = {"W": np.zeros((4, 3))}

    def loss(self, x, t):
        if self.how == "raise":
            raise ValueError("shapes (4,12) and (4,3) not aligned")
        if self.how == "array":
            return x @ np.ones((x.shape[1], 3)) + self.params["W"].sum()
        if self.how == "die" and os.getpid() != self.parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return float(np.sum(self.params["W"] ** 2))


@pytest.mark.parametrize("workers", [1, 2], ids=["serial", "processes"])
def test_the_losss_own_error_is_one_line_naming_the_call(workers, start):
    snap = snap_of(Failing("raise"))
    with pytest.raises(UserCodeError) as info:
        _generic.run_tasks(snap, block_tasks(snap.net.params), workers=workers)
    assert str(info.value) == (
        "net.loss(x, t) raised ValueError: shapes (4,12) and (4,3) not aligned"
    )


@pytest.mark.parametrize("workers", [1, 2], ids=["serial", "processes"])
def test_a_loss_returning_an_array_is_a_type_error(workers, start):
    snap = snap_of(Failing("array"))
    with pytest.raises(TypeError, match=r"net.loss\(x, t\) returned an array of shape \(4, 3\)"):
        _generic.run_tasks(snap, block_tasks(snap.net.params), workers=workers)


def test_a_dead_worker_is_named_with_the_way_to_see_why(start):
    snap = snap_of(Failing("die"))
    with pytest.raises(UserCodeError, match=r"worker process \d+ died \(killed by SIGKILL") as info:
        _generic.run_tasks(snap, block_tasks(snap.net.params), workers=2)
    assert "workers=1" in str(info.value) and "\n" not in str(info.value)


# -------------------------------------------------------- NumPy's global random state


def test_a_loss_that_draws_nothing_leaves_the_global_state_alone():
    np.random.seed(5)
    net = book.MultiLayerNetExtend(12, [5], 3, use_batchnorm=True)
    ev = _generic.evaluator_from(snap_of(net))
    first = ev.loss()
    assert ev.draws is False
    np.random.seed(99)
    moved = np.random.get_state()
    assert ev.loss() == first
    assert _generic._same_state(np.random.get_state(), moved)  # not restored: not needed


def test_a_loss_that_draws_gets_the_same_mask_every_time():
    ev = _generic.evaluator_from(snap_of(chapter6_net()))
    first = ev.loss()
    assert ev.draws is True
    np.random.seed(99)  # moved by someone else between evaluations
    assert ev.loss() == first


def test_four_threads_checking_dropout_networks_get_the_sequential_numbers():
    snaps = [snap_of(chapter6_net(seed), seed=10 + seed) for seed in range(4)]
    tasks = [block_tasks(s.net.params, 4) for s in snaps]
    ref_values = [_generic.run_tasks(s, k) for s, k in zip(snaps, tasks, strict=True)]
    comp_values = [None] * 4
    barrier = threading.Barrier(4)

    def check(i):
        barrier.wait()
        comp_values[i] = _generic.run_tasks(snaps[i], tasks[i])

    threads = [threading.Thread(target=check, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ref, comp in zip(ref_values, comp_values, strict=True):
        same(ref, comp)


# --------------------------------------------------------------- progress and deadline


class Counter:
    def __init__(self):
        self.n = 0

    def update(self, n):
        self.n += n


@pytest.mark.parametrize("workers", [1, 2], ids=["serial", "processes"])
def test_progress_counts_parameter_elements(workers):
    snap = snap_of(chapter6_net())
    counter = Counter()
    _generic.run_tasks(snap, block_tasks(snap.net.params), workers=workers, progress=counter)
    assert counter.n == sum(p.size for p in snap.net.params.values())


def test_progress_true_draws_a_bar_on_stderr(capsys):
    snap = snap_of(chapter6_net())
    total = sum(p.size for p in snap.net.params.values())
    _generic.run_tasks(snap, block_tasks(snap.net.params), progress=True)
    err = capsys.readouterr().err
    assert "gradient check" in err and f"{total}/{total}" in err


def test_progress_stays_quiet_by_default_off_a_terminal(capsys):
    snap = snap_of(chapter6_net())
    _generic.run_tasks(snap, block_tasks(snap.net.params))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("workers", [1, 2], ids=["serial", "processes"])
def test_tasks_not_started_by_the_deadline_give_none(workers):
    snap = snap_of(chapter6_net())
    tasks = block_tasks(snap.net.params)
    assert _generic.run_tasks(snap, tasks, workers, deadline=time.monotonic()) == [None] * len(
        tasks
    )
    later = _generic.run_tasks(snap, tasks, workers, deadline=time.monotonic() + 600)
    assert all(value is not None for value in later)


# ---------------------------------------------------------- workers die with the parent

PARENT = """
import signal, sys, time
import numpy as np
from fastnum.gradcheck import _generic, _processes

# A shell without job control starts background jobs with SIGINT ignored, and Python then
# installs no KeyboardInterrupt handler: restore it, as an interactive terminal would have it.
signal.signal(signal.SIGINT, signal.default_int_handler)

_processes.start_method = lambda: sys.argv[1]

class Slow:
    def __init__(self):
        self.params = {"W": np.zeros(2000)}

    def loss(self, x, t):
        time.sleep(0.005)
        return float(self.params["W"].sum())

class Started:
    def update(self, n):  # the first finished task: the workers are busy
        print("running", flush=True)
        self.update = lambda n: None

snap = _generic.snapshot(Slow(), np.zeros((1, 1)), np.zeros(1), np.random.get_state(), False)
tasks = [("block", ("W", i, i + 5), 1e-4) for i in range(0, 2000, 5)]
_generic.run_tasks(snap, tasks, workers=2, progress=Started())
"""


def children_of(pid):
    """PIDs of live (not zombie) processes whose parent is ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize(
    ("sig", "how"),
    [
        (signal.SIGKILL, "exec"),
        (signal.SIGKILL, "fork"),
        (signal.SIGTERM, "exec"),
        (signal.SIGINT, "fork"),
    ],
    ids=["kill-exec", "kill-fork", "term-exec", "ctrl-c-fork"],
)
def test_workers_exit_within_seconds_when_the_parent_dies(sig, how):
    if how == "exec":
        pytest.importorskip("cloudpickle", reason="the script's class travels by value")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        ready, _, _ = select.select([parent.stdout], [], [], 120)  # start-up under load
        assert ready and parent.stdout.readline().strip() == "running", "no task finished"
        workers = children_of(parent.pid)
        assert len(workers) == 2
        parent.send_signal(sig)
        end = time.monotonic() + 5
        while time.monotonic() < end and (any(map(alive, workers)) or parent.poll() is None):
            time.sleep(0.05)
        assert parent.poll() is not None, "the parent did not stop"
        assert not any(map(alive, workers)), "a worker outlived its parent"
    finally:
        parent.kill()
        parent.wait()
