"""Measure the first call: per network, cold (empty numba cache) and warm (cache filled).

Usage (from the repository's root)::

    python -m benchmarks.compile_time                   # every network, one run each
    python -m benchmarks.compile_time --repeat 3        # medians of three runs
    python -m benchmarks.compile_time --nets two_layer,conv --out compile.json

For each network of :data:`fastnum.warmup.NETWORKS`, a fresh Python process with a new,
empty ``NUMBA_CACHE_DIR`` imports ``fastnum`` and runs the network's numba paths once on
a tiny problem (``predict``, ``loss`` and the numerical gradient with the default
strategy: what a user's first calls compile, since numba compiles a kernel when it is
first called).  The ``all`` row runs every network with *every* strategy
(:func:`fastnum.warmup.warm`, what ``fastnum warmup`` does), so it compiles every
kernel.  Each run writes what it compiles to the cache: *cold*.  A second fresh
process on that cache does the same, loading instead of compiling: *warm*.  Each
process times ``import fastnum`` and the first calls, and records numba's compile
events (:mod:`numba.core.event`), so that the cold run says which functions take the
time (self time: a function's compile minus the compiles it triggered) and the warm run
which take long to load (numba issue #8085: cached parallel functions).  None of this
touches the steady-state benchmark figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKER_FLAG = "--worker"
TIMEOUT_SECONDS = 1800  # a cold compile of everything on a loaded 2-core machine takes minutes
ALL = "all"  # every network in one process
TOP = 12  # functions listed per run, the slowest first


def _record_compiles():
    """Start recording numba's compile events; return a function giving the self times."""
    from numba.core import event

    listener = event.RecordingListener()
    event.register("numba:compile", listener)

    def self_times():
        """{function: seconds} of compile (or cache load) not spent in nested compiles."""
        times, open_ = {}, []
        for stamp, ev in listener.buffer:
            func = ev.data["dispatcher"].py_func
            name = f"{func.__module__}.{func.__qualname__}"
            if ev.is_start:
                open_.append([name, stamp, 0.0])
                continue
            name, started, nested = open_.pop()
            spent = stamp - started
            times[name] = times.get(name, 0.0) + spent - nested
            if open_:
                open_[-1][2] += spent
        return dict(sorted(times.items(), key=lambda kv: -kv[1]))

    return self_times


def _record_loads():
    """Time numba's loads from the on-disk cache; return a function giving them by function."""
    from numba.core import caching

    times = {}
    load = caching.Cache.load_overload

    def timed_load(cache, sig, target_context):
        start = time.perf_counter()
        loaded = load(cache, sig, target_context)
        if loaded is not None:  # None: not in the cache, numba compiles instead
            # The cache's name is the function's repr: "<function NAME at 0x...>".
            name = cache._name.split()[1] if cache._name.startswith("<function") else cache._name
            times[name] = times.get(name, 0.0) + time.perf_counter() - start
        return loaded

    caching.Cache.load_overload = timed_load
    return lambda: dict(sorted(times.items(), key=lambda kv: -kv[1]))


def _worker(names, strategies):
    """Run inside the fresh process: time the import and the first calls, print JSON."""
    start, cpu_start = time.perf_counter(), time.process_time()
    import fastnum  # noqa: F401 - what a user's first line imports
    from fastnum._jit import JIT_ENABLED, get_num_threads

    import_seconds = time.perf_counter() - start
    self_times = _record_compiles() if JIT_ENABLED else dict
    load_times = _record_loads() if JIT_ENABLED else dict
    from fastnum.warmup import warm

    t0 = time.perf_counter()
    per_network = warm(names, strategies)
    first_call = time.perf_counter() - t0
    # CPU time of the whole process (every thread): on a shared machine it moves far
    # less with the load than the wall time does.
    cpu = time.process_time() - cpu_start
    compiles, loads = self_times(), load_times()
    print(
        json.dumps(
            {
                "jit_enabled": JIT_ENABLED,
                "threads": get_num_threads(),
                "strategies": strategies,
                "import_seconds": import_seconds,
                "first_call_seconds": first_call,
                "total_seconds": import_seconds + first_call,
                "cpu_seconds": cpu,
                "per_network": per_network,
                "functions": len(compiles),
                "slowest": [[k, v] for k, v in list(compiles.items())[:TOP]],
                "loads": len(loads),
                "load_seconds": sum(loads.values()),
                "slowest_loads": [[k, v] for k, v in list(loads.items())[:TOP]],
            }
        )
    )


def _run_worker(names, strategies, cache_dir):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "FASTNUM_JIT_CACHE": "1"}
    # Python's own bytecode cache on, as in a user's shell: with PYTHONDONTWRITEBYTECODE
    # set (some CI images and sandboxes set it), every process recompiles fastnum's
    # sources, about 0.2 s that no user's second process pays.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # Run from the checkout's root, so that ``-m benchmarks.compile_time`` imports this file.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.compile_time",
            WORKER_FLAG,
            ",".join(names),
            ",".join(strategies),
        ],
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


def _cold_and_warm(names, strategies):
    """One cold and one warm process on a fresh cache: (cold, warm, cache files)."""
    with tempfile.TemporaryDirectory(prefix="fastnum-numba-cache-") as cache_dir:
        cold = _run_worker(names, strategies, cache_dir)
        cache_files = sum(len(files) for _, _, files in os.walk(cache_dir))
        warm = _run_worker(names, strategies, cache_dir)
    return cold, warm, cache_files


def _median_run(runs):
    """The run whose total is the median (the lower one for an even count)."""
    ordered = sorted(runs, key=lambda r: r["total_seconds"])
    return ordered[(len(ordered) - 1) // 2]


def measure(nets=None, repeat=1, command=None):
    """Time the first calls per network with a cold, then a warm on-disk numba cache.

    Parameters
    ----------
    nets : sequence of str, optional
        Keys of :data:`fastnum.warmup.NETWORKS` and/or ``"all"``; default every
        network, then ``all``.
    repeat : int, default 1
        Cold and warm runs per network; the medians are reported.
    command : str, optional
        The command line that reproduces the measurement (stored in the result).

    Returns
    -------
    dict
        ``networks``: name -> ``description``, ``strategies`` (the numerical-gradient
        strategies run: the default one per network, every one for ``all``), ``cold``
        and ``warm`` (the median run:
        ``import_seconds``, ``first_call_seconds``, ``total_seconds`` (wall),
        ``cpu_seconds`` (CPU time of the process), ``slowest``
        functions with their self time; ``loads``, ``load_seconds`` and
        ``slowest_loads``: loads from the cache), ``cold_runs`` and ``warm_runs`` (every
        run's total), ``cache_files``; plus ``command``, ``repeat``, ``jit_enabled``,
        ``threads``, ``loadavg_start`` / ``loadavg_end`` and ``seconds``.
    """
    from fastnum.backend import DEFAULT_STRATEGY, STRATEGIES
    from fastnum.warmup import NETWORKS

    nets = [*NETWORKS, ALL] if nets is None else list(nets)
    unknown = [n for n in nets if n not in NETWORKS and n != ALL]
    if unknown:
        raise ValueError(f"nets={unknown} unknown; use any of {[*NETWORKS, ALL]}.")
    started = time.perf_counter()
    load_start = list(os.getloadavg())
    if command is None:
        command = "python -m benchmarks.compile_time" + (
            f" --repeat {repeat}" if repeat > 1 else ""
        )
    result = {"command": command, "repeat": repeat, "networks": {}}
    for name in nets:
        names = list(NETWORKS) if name == ALL else [name]
        strategies = list(STRATEGIES) if name == ALL else [DEFAULT_STRATEGY]
        runs = [_cold_and_warm(names, strategies) for _ in range(repeat)]
        colds, warms = [r[0] for r in runs], [r[1] for r in runs]
        result["jit_enabled"] = colds[0]["jit_enabled"]
        result["threads"] = colds[0]["threads"]
        result["networks"][name] = {
            "description": "every network of fastnum.warmup, every strategy, in one process"
            if name == ALL
            else NETWORKS[name].description,
            "strategies": strategies,
            "cold": _median_run(colds),
            "warm": _median_run(warms),
            "cold_runs": [r["total_seconds"] for r in colds],
            "warm_runs": [r["total_seconds"] for r in warms],
            "cache_files": runs[0][2],
        }
    result["loadavg_start"], result["loadavg_end"] = load_start, list(os.getloadavg())
    result["seconds"] = time.perf_counter() - started
    return result


def summary(result):
    """Plain-text table of a :func:`measure` result: one line per network."""
    lines = [
        f"{'network':<12} {'cold':>9} {'warm':>9} {'cold CPU':>9}  (import + first call, median)"
    ]
    for name, r in result["networks"].items():
        cold, warm = r["cold"], r["warm"]
        runs = ", ".join(f"{s:.1f}" for s in r["cold_runs"])
        lines.append(
            f"{name:<12} {cold['total_seconds']:8.2f}s {warm['total_seconds']:8.2f}s "
            f"{cold['cpu_seconds']:8.2f}s  cold runs {runs}"
        )
    lines.append(
        f"load average {result['loadavg_start'][0]:.1f} at start, "
        f"{result['loadavg_end'][0]:.1f} at end; {result['threads']} numba threads"
    )
    return "\n".join(lines)


def main(argv=None):
    """Command line: with ``--worker NETS`` be the measured process, else measure."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WORKER_FLAG]:
        _worker(argv[1].split(","), argv[2].split(","))
        return 0
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compile_time",
        description="Cold and warm first-call times per network, each in fresh processes.",
    )
    p.add_argument(
        "--nets",
        metavar="LIST",
        help="comma-separated networks (of fastnum.warmup.NETWORKS, or 'all'); default: "
        "each network, then all",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per network (default: 1)")
    p.add_argument("--out", type=Path, help="also write the JSON result to this file")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    command = shlex.join(["python", "-m", "benchmarks.compile_time", *argv])
    nets = args.nets.split(",") if args.nets else None
    result = measure(nets, args.repeat, command)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    print(summary(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
