"""``fastnum warmup``, :mod:`fastnum.warmup` and the task runner the two-layer kernels use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fastnum import _jit, warmup
from fastnum._validate import ParameterError, ParameterTypeError
from fastnum.cli import main
from fastnum.kernels import two_layer
from tests._child import run_python

REPO = Path(__file__).resolve().parents[1]


def test_help_names_every_network(capsys):
    assert main(["warmup", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--net LIST" in out
    for name in warmup.NETWORKS:
        assert name in out


def test_unknown_network_is_refused_before_any_work(capsys):
    assert main(["warmup", "--net", "two_layer,lenet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before it announces any compiling
    assert "lenet" in captured.err
    assert "two_layer, multilayer, chapter6, conv, deepconv" in captured.err


def test_without_the_jit_there_is_nothing_to_compile():
    # In a fresh process: whether numba compiles is decided when fastnum is imported.
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fastnum", "warmup"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "nothing to compile" in proc.stdout


def test_warm_returns_nothing_when_nothing_compiles(monkeypatch):
    monkeypatch.setattr(warmup, "JIT_ENABLED", False)
    assert warmup.warm(["two_layer", "conv"]) == {}
    with pytest.raises(ValueError, match="net=lenet"):
        warmup.warm(["lenet"])
    with pytest.raises(ValueError, match="strategy=fastest"):
        warmup.warm(strategies=["fastest"])


@pytest.mark.numba
def test_warm_reports_each_network_it_ran(capsys):
    assert main(["warmup", "--net", "two_layer"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "two_layer" in lines[0]
    # Seconds (0.00 when an earlier test already compiled the kernels in this process).
    name, seconds, unit, *description = lines[1].split()
    assert (name, unit) == ("two_layer", "s") and float(seconds) >= 0
    assert " ".join(description) == warmup.NETWORKS["two_layer"].description
    assert lines[-1].split()[0] == "total"


def test_run_tasks_runs_every_task_once():
    seen, lock = [], threading.Lock()

    def kernel(task, n_tasks, out):
        with lock:
            seen.append((task, n_tasks))
        out[task] += 1

    out = np.zeros(_jit.TASKS_PER_THREAD * _jit.get_num_threads())
    _jit.run_tasks(kernel, 1000, out)
    n_tasks = len(out)
    assert sorted(seen) == [(task, n_tasks) for task in range(n_tasks)]
    assert (out == 1).all()
    seen.clear()
    _jit.run_tasks(kernel, 100, out, min_items=64)  # too few items for two tasks
    assert seen == [(0, 1)]
    seen.clear()
    _jit.run_tasks(kernel, 0, out)  # an empty batch is still one (empty) task
    assert seen == [(0, 1)]


def test_run_tasks_reraises_a_task_error():
    def kernel(task, n_tasks):
        if task == n_tasks - 1:
            raise ArithmeticError(f"task {task}")

    with pytest.raises(ArithmeticError, match="task"):
        _jit.run_tasks(kernel, 100)


def test_the_thread_count_is_set_per_calling_thread_and_refuses_bad_counts():
    import fastnum

    # conftest's _keep_the_thread_count gives the next test the count this one found.
    seen = []
    fastnum.set_num_threads(1)
    helper = threading.Thread(target=lambda: seen.append(fastnum.get_num_threads()))
    helper.start()
    helper.join()
    assert fastnum.get_num_threads() == 1
    # Another thread keeps the default (numba's NUMBA_NUM_THREADS), as numba's own does.
    limit = _jit.numba.config.NUMBA_NUM_THREADS if _jit.HAVE_NUMBA else 1
    assert seen == [limit]
    with pytest.raises(ParameterTypeError, match=r"threads=True must be an integer"):
        fastnum.set_num_threads(True)
    with pytest.raises(ParameterError, match=r"threads=0 must be at least 1"):
        fastnum.set_num_threads(0)
    with pytest.raises(ParameterError, match=r"threads=100000 is out of range: use a value"):
        fastnum.set_num_threads(100_000)
    assert fastnum.get_num_threads() == 1  # a refused count changes nothing


@pytest.mark.numba
def test_asking_the_thread_count_does_not_start_numbas_threading_layer():
    # numba's threading layer (OpenMP's threads) makes forking unsafe; no kernel uses it.
    child = (
        "import numba.np.ufunc.parallel as p\n"
        "from fastnum import get_num_threads, set_num_threads\n"
        "set_num_threads(get_num_threads())\n"
        "print(p._is_initialized)"
    )
    proc = run_python("-c", child, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_run_tasks_works_in_a_child_forked_while_the_pool_lock_was_held():
    # A forked child has none of the parent's pool threads, and a lock that another
    # thread of the parent held at the fork stays held in the child for ever.
    _jit.run_tasks(lambda task, n_tasks: None, 1000)  # the parent's pool exists
    with _jit._pool_lock:  # as if another thread were starting the pool right now
        pid = os.fork()
        if pid == 0:  # the child: run tasks on a pool of its own, then report
            out = np.zeros(_jit.TASKS_PER_THREAD * _jit.get_num_threads())
            _jit.run_tasks(lambda task, n_tasks, out: out.__setitem__(task, 1.0), 1000, out)
            os._exit(0 if out.all() else 3)
    for _ in range(600):  # up to 60 s: a deadlocked child never exits
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        threading.Event().wait(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's run_tasks hung on the parent's pool lock")
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.threads
@pytest.mark.parametrize("strategy", ["full", "delta"])
@pytest.mark.parametrize("activation", [two_layer.SIGMOID, two_layer.RELU])
def test_two_layer_gradient_is_the_same_on_1_and_2_threads(strategy, activation):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (70, 20)) / 255.0  # 70 samples: tasks of 64+ rows split too
    x[rng.random(x.shape) < 0.6] = 0.0
    t = rng.integers(0, 10, 70)
    params = tuple(rng.normal(0.0, 0.5, shape) for shape in ((20, 6), (6,), (6, 10), (10,)))
    before = _jit.get_num_threads()
    try:
        _jit.set_num_threads(1)
        one = two_layer.numerical_gradient_trusted(params, x, t, 1e-4, strategy, activation)
        one_p = two_layer.predict_trusted(params, np.repeat(x, 4, axis=0))
        _jit.set_num_threads(2)
        two = two_layer.numerical_gradient_trusted(params, x, t, 1e-4, strategy, activation)
        two_p = two_layer.predict_trusted(params, np.repeat(x, 4, axis=0))
    finally:
        _jit.set_num_threads(before)
    for name in two_layer.PARAM_NAMES:
        assert np.array_equal(one[name], two[name]), name
    assert np.array_equal(one_p, two_p)


# Compiled only for the functions users pass in (one compile per function, never cached).
NOT_WARMED = {"fastnum.kernels.generic._numerical_gradient_jitted"}

# numba's implementations of NumPy functions that take 0.2 s to 2 s each to compile (and
# np.zeros three of them per dtype and rank): kernels use loops instead (README, "First
# call").  Matched against the qualified names of the functions numba compiles.
SLOW_OVERLOADS = ("ol_np_zeros", "np_arange", "mergesort", "quicksort", "array_max", "array_min")

_CHECK_EVERY_KERNEL = r"""
import importlib, json, pkgutil
import fastnum.kernels
from numba.core import event
from numba.core.registry import CPUDispatcher
from fastnum import warmup

compiles = event.RecordingListener()
event.register("numba:compile", compiles)
warmup.warm()
idle = []
for info in pkgutil.iter_modules(fastnum.kernels.__path__, "fastnum.kernels."):
    module = importlib.import_module(info.name)
    for name, dispatcher in vars(module).items():
        if isinstance(dispatcher, CPUDispatcher) and dispatcher.py_func.__module__ == info.name:
            inner = getattr(dispatcher, "inner_copy", None)
            if not (dispatcher.signatures or (inner is not None and inner.signatures)):
                idle.append(f"{info.name}.{name}")
compiled = sorted({
    f"{ev.data['dispatcher'].py_func.__module__}.{ev.data['dispatcher'].py_func.__qualname__}"
    for _, ev in compiles.buffer
})
print(json.dumps({"idle": idle, "compiled": compiled}))
"""


@pytest.mark.slow
@pytest.mark.numba
def test_warmup_compiles_every_kernel(tmp_path):
    # In a fresh process on an empty cache (so that every function really compiles, the
    # helpers that only other kernels call included; about 40 s on 2 cores): after
    # ``fastnum warmup``, every numba function of fastnum.kernels has been compiled, so
    # images and workers that run it start warm whatever network they use, and none of
    # numba's slow NumPy implementations has been.
    proc = run_python(
        "-c", _CHECK_EVERY_KERNEL, env={"NUMBA_CACHE_DIR": str(tmp_path)}, timeout=1200
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(found["idle"]) == NOT_WARMED
    # Nor does any kernel compile one of numba's slow NumPy implementations.
    assert any(name.startswith("fastnum.kernels.") for name in found["compiled"])
    slow = [name for name in found["compiled"] if any(s in name for s in SLOW_OVERLOADS)]
    assert slow == []
