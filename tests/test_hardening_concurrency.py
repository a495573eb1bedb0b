"""Threads and processes: concurrent calls neither abort nor change a number.

Each scenario runs in child processes, so that an abort fails the test instead
of killing the suite.  numba only: without the JIT there is no thread pool and
no disk cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastnum._jit import JIT_ENABLED
from tests._child import run_python

pytestmark = pytest.mark.skipif(
    not JIT_ENABLED, reason="numba JIT disabled or not installed: no thread pool, no disk cache"
)
REPO = Path(__file__).resolve().parents[1]

# Sequential results first, then the same calls from two threads at once, many times.
THREADS_CHILD = textwrap.dedent("""
    import threading
    import numpy as np
    import numba.np.ufunc.parallel as numba_parallel
    from fastnum.multilayer import MultiLayerNet
    from fastnum.network import TwoLayerNet

    rng = np.random.default_rng(0)
    x = rng.random((20, 30))
    x[x < 0.5] = 0
    t = rng.integers(0, 10, 20)
    nets = [TwoLayerNet(30, 8, 10, seed=1, backend="numba", strategy="delta"),
            TwoLayerNet(30, 8, 10, seed=2, backend="numba", strategy="full"),
            MultiLayerNet(30, (6, 5), 10, seed=3, backend="numba"),
            TwoLayerNet(30, 4, 10, seed=4, backend="numpy")]  # perturbs params in place
    calls = [lambda net=net: (net.numerical_gradient(x, t), net.loss(x, t), net.predict(x))
             for net in nets]
    expected = [call() for call in calls]

    def same(a, b):
        if isinstance(a, (tuple, list)):
            return all(same(p, q) for p, q in zip(a, b))
        if isinstance(a, dict):
            return all(same(a[k], b[k]) for k in a)
        return np.array_equal(a, b)

    errors = []

    def worker(i):
        for _ in range(25):
            for call, want in zip(calls, expected):
                if not same(call(), want):
                    errors.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print(numba_parallel._is_initialized, "mismatches:", len(errors))
""")


@pytest.mark.parametrize("layer", ["workqueue", "default"])
def test_threads_calling_kernels_at_once_get_the_sequential_numbers(layer):
    # Before: under workqueue the process aborted ("Concurrent access has been detected"),
    # when the kernels were parallel=True.  They are nogil tasks on fastnum's own pool now,
    # and numba's threading layer (whichever is asked for) never even starts.
    env = {"NUMBA_NUM_THREADS": "2"}
    if layer != "default":
        env["NUMBA_THREADING_LAYER"] = layer
    proc = run_python("-c", THREADS_CHILD, env=env)
    assert proc.returncode == 0, f"child exited {proc.returncode}: {proc.stderr[-2000:]}"
    numba_layer_started, _, mismatches = proc.stdout.split()[-3:]
    assert numba_layer_started == "False"
    assert mismatches == "0"


# Compiles (or loads) the two-layer kernels and prints a checksum of their results
# and how many kernel signatures came from the disk cache and how many were compiled.
CACHE_CHILD = textwrap.dedent("""
    import json
    import numpy as np
    from fastnum.kernels import two_layer
    from fastnum.network import TwoLayerNet

    rng = np.random.default_rng(0)
    x = rng.random((6, 12))
    x[x < 0.5] = 0
    t = rng.integers(0, 3, 6)
    net = TwoLayerNet(12, 4, 3, seed=0, backend="numba")
    out = [net.loss(x, t)]
    for strategy in ("delta", "full"):
        out += [float(g.sum()) for g in net.numerical_gradient(x, t, strategy=strategy).values()]
    kernels = [k for k in vars(two_layer).values() if hasattr(k, "stats")]  # dispatchers
    hits = sum(sum(k.stats.cache_hits.values()) for k in kernels)
    misses = sum(sum(k.stats.cache_misses.values()) for k in kernels)
    print(json.dumps({"result": [float(v).hex() for v in out], "hits": hits, "misses": misses}))
""")


@pytest.mark.slow
def test_four_processes_cold_starting_on_one_disk_cache_then_a_fifth_loads_it(tmp_path):
    # numba issue 4807: kernels compiled into one cache by several processes at once
    # (the two-layer kernels were parallel=True then; they are serial nogil tasks now).
    # Four start together on an empty NUMBA_CACHE_DIR (as Dask workers or pytest-xdist
    # would); none may crash, all must agree, and a fifth must then load every kernel
    # from the cache (no recompile) with the same numbers.
    changes = {
        "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
        "NUMBA_NUM_THREADS": "2",
        "FASTNUM_JIT_CACHE": None,  # the cache on, whatever the caller's shell says
    }
    env = {k: v for k, v in {**os.environ, **changes}.items() if v is not None}
    cold = [
        subprocess.Popen(
            [sys.executable, "-c", CACHE_CHILD],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=1200) for proc in cold]
    for proc, (_, err) in zip(cold, outputs, strict=True):
        assert proc.returncode == 0, f"cold child exited {proc.returncode}: {err[-2000:]}"
    results = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
    assert all(r["result"] == results[0]["result"] for r in results)
    warm = run_python("-c", CACHE_CHILD, env=changes)
    assert warm.returncode == 0, warm.stderr[-2000:]
    loaded = json.loads(warm.stdout.splitlines()[-1])
    assert loaded["result"] == results[0]["result"]
    assert loaded["misses"] == 0 and loaded["hits"] > 0, loaded
