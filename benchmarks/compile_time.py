"""Measure the numba kernels' compile time: the first call in a fresh process.

Usage (from the repository's root)::

    python -m benchmarks.compile_time         # cold and warm cache, prints JSON

Two fresh Python processes share a new, empty ``NUMBA_CACHE_DIR``.  In the first
(``cold``) every kernel is compiled and written to that cache; in the second
(``warm``) the same kernels are loaded from it.  Each process times the import of
``fastnum`` and, for every numba implementation in the registry, the first call on
a tiny problem (compile or cache load, plus a negligible run) and a second call
(the run alone).  None of this touches the steady-state benchmark figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKER_FLAG = "--worker"
TIMEOUT_SECONDS = 900  # a cold compile on a loaded 2-core machine can take minutes


def _worker():
    """Run inside the fresh process: time the import and every kernel's first call."""
    start = time.perf_counter()
    import numpy as np

    from fastnum._jit import JIT_ENABLED
    from fastnum.registry import COMPARISONS, make_problem

    import_seconds = time.perf_counter() - start
    rng = np.random.default_rng(0)
    # Tiny but with the real input width: the compiled code depends only on types.
    problem = make_problem(rng.random((2, 784)), np.array([3, 7]), hidden_size=3, seed=0)
    calls = []
    for op_name, op in COMPARISONS.items():
        for impl, fn in op.implementations.items():
            if not impl.startswith("numba"):
                continue
            args = op.args(impl, problem)
            t0 = time.perf_counter()
            fn(*args)
            t1 = time.perf_counter()
            fn(*args)
            t2 = time.perf_counter()
            calls.append(
                {"op": op_name, "impl": impl, "first_call": t1 - t0, "second_call": t2 - t1}
            )
    total = time.perf_counter() - start
    print(
        json.dumps(
            {
                "jit_enabled": JIT_ENABLED,
                "import_seconds": import_seconds,
                "calls": calls,
                "total_seconds": total,
            }
        )
    )


def _run_worker(cache_dir):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "FASTNUM_JIT_CACHE": "1"}
    # Run from the checkout's root, so that ``-m benchmarks.compile_time`` imports this file.
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.compile_time", WORKER_FLAG],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"compile-time worker failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure():
    """Time the first calls with a cold, then a warm on-disk numba cache.

    Returns
    -------
    dict
        ``cold`` and ``warm``: each with ``import_seconds``, ``total_seconds`` and
        ``calls`` (``op``, ``impl``, ``first_call``, ``second_call`` in seconds);
        ``cache_files``: how many files the cold run wrote to the cache.
    """
    with tempfile.TemporaryDirectory(prefix="fastnum-numba-cache-") as cache_dir:
        cold = _run_worker(cache_dir)
        cache_files = sum(len(files) for _, _, files in os.walk(cache_dir))
        warm = _run_worker(cache_dir)
    return {"cold": cold, "warm": warm, "cache_files": cache_files}


def main(argv=None):
    """Command line: with ``--worker`` be the measured process, else measure and print JSON."""
    argv = sys.argv[1:] if argv is None else argv
    if WORKER_FLAG in argv:
        _worker()
    else:
        print(json.dumps(measure(), indent=1))


if __name__ == "__main__":
    main()
