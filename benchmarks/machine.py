"""The report's legend: what machine, libraries and thread counts a benchmark run used.

The BLAS library and its thread count are read with threadpoolctl, in the process
that ran the benchmarks, so the legend states the threads NumPy actually used.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys

import numpy as np
from threadpoolctl import threadpool_info

from benchmarks.bench_plan import ALL_THREADS, blas_threads_limit
from fastnum._jit import JIT_ENABLED


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _blas():
    """(name and version, thread count) of the BLAS libraries NumPy loaded, per threadpoolctl."""
    libs = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    if not libs:
        return "unknown", None
    name = ", ".join(
        f"{lib.get('internal_api', '?')} {lib.get('version') or ''}".strip() for lib in libs
    )
    return name, max(lib.get("num_threads", 1) for lib in libs)


def fastnum_machine_info():
    """The report's legend: CPU, cores, threads, library versions and the date.

    Returns
    -------
    dict
        JSON-serialisable facts about this machine and process.
    """
    from fastnum._jit import numba

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    blas, blas_threads = _blas()
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "numba_threads": ALL_THREADS,
        "jit_enabled": JIT_ENABLED,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__ if numba is not None else "not installed",
        "blas": blas,
        "blas_threads": blas_threads,  # what the library runs with, any limit applied
        "blas_threads_limit": blas_threads_limit(),  # --blas-threads, or None: the default
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        # Written at the end of the session: a load above the CPU count means other
        # processes competed with the timed code, which the report then says.
        "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
