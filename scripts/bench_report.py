"""Run fastnum's benchmarks and write a report: markdown table, PNG plot and legend.

Usage::

    python scripts/bench_report.py --out bench-results           # full report, ~8 min
    python scripts/bench_report.py --out bench-results --quick   # fewer sizes, ~3 min
    python scripts/bench_report.py --from-json bench-results/results.json --out elsewhere

A run does three things, each in its own process or phase so that none disturbs
the others' figures:

1. the pytest-benchmark suite in ``benchmarks/`` (``--benchmark-enable``), whose
   JSON holds the steady-state medians (kernels compiled before timing);
2. :mod:`benchmarks.compile_time`: the first call in a fresh process with a cold
   and a warm numba cache;
3. the book's training loop (``fastnum.train.train``, numerical gradient, numba)
   for ``--train-iters`` iterations, extrapolated to 10,000 (or all 10,000 with
   ``--full-run``).

This script parses the options and runs those measurements; the report itself
(data model, markdown, plot) is :mod:`benchmarks.report`.  Everything lands in
``--out``: ``report.md``, ``speedups.png``, ``results.json`` (what ``--from-json``
reads), the raw ``benchmarks-raw.json`` and ``pytest.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The benchmarks package lives in the checkout, not in the installed fastnum: a script
# run by path has only scripts/ on its import path.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import compile_time, report  # noqa: E402
from benchmarks.bench_plan import BLAS_THREADS_ENV, PROFILE_ENV, SLOW_ROUNDS_ENV  # noqa: E402

DEFAULT_TRAIN_ITERS = 600  # one of the book's epochs (60000 / 100), incl. one accuracy pass


def run_benchmarks(out, extra_args=()):
    """Run the benchmark suite with timing enabled; return (exit code, raw JSON dict or None)."""
    raw_json = out / "benchmarks-raw.json"
    with tempfile.TemporaryDirectory(prefix="fastnum-bench-storage-") as storage:
        # The storage dir and no cache provider: nothing is written into the checkout.
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "-p",
            "no:cacheprovider",
            "--benchmark-enable",
            f"--benchmark-json={raw_json}",
            f"--benchmark-storage=file://{storage}",
            "--benchmark-columns=median,iqr,rounds,iterations",
            "--benchmark-sort=name",
            "-v",
            "-rs",
            *extra_args,
        ]
        print("$", shlex.join(cmd), flush=True)
        code = _tee(cmd, out / "pytest.log")
    if not raw_json.is_file():
        return code, None
    return code, json.loads(raw_json.read_text(encoding="utf-8"))


def _tee(cmd, log_path):
    # Stream the suite's output to the console as it comes (it runs for minutes and
    # pytest -v writes a test's name before running it) and into a log file.
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            log.write(chunk)
        return proc.wait()


def measure_compile():
    """The compile-time measurement, or None if it failed."""
    try:
        return compile_time.measure()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"compile-time measurement failed: {e}", file=sys.stderr)
        return None


def measure_training(iters, blas_threads=None):
    """Time ``iters`` iterations of the book's numerical-gradient training with numba.

    Returns
    -------
    dict
        ``iters``, ``seconds`` (wall time, kernels already compiled),
        ``loop_seconds`` (the training loop, after preparing the data),
        ``eval_seconds`` (one accuracy pass on the full sets), ``threads``,
        ``backend``, ``strategy``, the final accuracies; or ``error``.
    """
    from threadpoolctl import threadpool_limits

    from fastnum._jit import get_num_threads
    from fastnum.data import load_mnist
    from fastnum.train import TrainConfig, train

    limit = (
        threadpool_limits(blas_threads, user_api="blas")
        if blas_threads
        else contextlib.nullcontext()
    )
    try:
        with limit:
            # A 2-iteration run on a small subset compiles every kernel the loop uses.
            train(TrainConfig(iters=2, train_size=200, test_size=100), progress=False, log=None)
            start = time.perf_counter()
            result = train(TrainConfig(iters=iters), progress=False, log=None)
            seconds = time.perf_counter() - start
            (x, t), (xt, tt) = load_mnist()
            passes = []
            for _ in range(3):  # median of three accuracy passes over both sets
                t0 = time.perf_counter()
                result.net.accuracy(x, t)
                result.net.accuracy(xt, tt)
                passes.append(time.perf_counter() - t0)
    # Broad on purpose: a failed side measurement must not lose the benchmark run.
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {
        "iters": iters,
        "seconds": seconds,
        "loop_seconds": result.timings["total_seconds"],
        "eval_seconds": sorted(passes)[1],
        "threads": get_num_threads(),
        "backend": result.backend,
        "strategy": result.config.strategy,
        "final_train_acc": result.final_train_acc,
        "final_test_acc": result.final_test_acc,
    }


def _prepare_environment(args, cache_dir):
    """Environment of the measurements, inherited by the benchmark and compile subprocesses.

    Follows the tests' convention: a checkout next to ``shared/mnist`` reads MNIST
    from there and keeps the parsed-array cache in a temp dir.
    """
    shared = REPO.parent / "shared" / "mnist"
    if "FASTNUM_MNIST_DIR" not in os.environ and shared.is_dir():
        os.environ["FASTNUM_MNIST_DIR"] = str(shared)
        os.environ.setdefault("FASTNUM_CACHE_DIR", str(cache_dir))
    os.environ[PROFILE_ENV] = "quick" if args.quick else "default"
    if args.slow_rounds:
        os.environ[SLOW_ROUNDS_ENV] = str(args.slow_rounds)
    if args.blas_threads:  # applied with threadpoolctl by benchmarks/conftest.py
        os.environ[BLAS_THREADS_ENV] = str(args.blas_threads)


def parse_args(argv=None):
    """The command line of the report script."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", default="bench-results", type=Path, help="output folder (default: %(default)s)"
    )
    p.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="only render the report from an earlier results.json (or a raw "
        "pytest-benchmark JSON); measures nothing",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer sizes, one round of the slow cases, a shorter training run",
    )
    p.add_argument(
        "--slow-rounds",
        type=int,
        metavar="N",
        help="rounds of the slow cases (default: 3, or 1 with --quick)",
    )
    p.add_argument(
        "--full-run",
        action="store_true",
        help=f"time the book's whole {report.BOOK_ITERS:,}-iteration run with numba "
        "instead of extrapolating",
    )
    p.add_argument(
        "--train-iters",
        type=int,
        metavar="N",
        help=f"iterations of the timed training run (default: "
        f"{DEFAULT_TRAIN_ITERS}, 200 with --quick)",
    )
    p.add_argument(
        "--blas-threads",
        type=int,
        metavar="N",
        help="limit NumPy's BLAS to N threads (threadpoolctl) in the benchmarks and "
        "the training run; default: the library's own. 1 is steadier on a "
        "busy machine",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the compile-time measurement")
    p.add_argument("--no-train", action="store_true", help="skip the training measurement")
    p.add_argument(
        "--pytest-args",
        default="",
        metavar="ARGS",
        help='extra pytest arguments, e.g. "-k numerical_gradient"',
    )
    args = p.parse_args(argv)
    for name in ("slow_rounds", "train_iters", "blas_threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def measure(args):
    """Run every measurement of a report; return (exit code, results dict or None)."""
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    code, raw = run_benchmarks(args.out, shlex.split(args.pytest_args))
    if raw is None:
        print(f"the benchmark run wrote no JSON (pytest exit code {code})", file=sys.stderr)
        return code or 1, None
    compile_info = None if args.no_compile else measure_compile()
    train = None
    if not args.no_train:
        iters = (
            report.BOOK_ITERS
            if args.full_run
            else (args.train_iters or (200 if args.quick else DEFAULT_TRAIN_ITERS))
        )
        print(f"timing {iters} iterations of the book's training loop with numba ...", flush=True)
        train = measure_training(iters, args.blas_threads)
    results = report.trim(raw, compile_info, train)
    results["report_seconds"] = time.perf_counter() - started
    results["generated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"
    )
    return code, results


def main(argv=None):
    """Entry point: measure (unless ``--from-json``) and render.

    Returns
    -------
    int
        0 on success; the benchmark suite's exit code when some benchmark failed
        (the report is still written from what was measured).
    """
    args = parse_args(argv)
    if args.from_json:
        results, code = report.load(args.from_json), 0
    else:
        with tempfile.TemporaryDirectory(prefix="fastnum-bench-mnist-") as cache_dir:
            _prepare_environment(args, cache_dir)
            code, results = measure(args)
        if results is None:
            return code
    md = report.render(results, args.out)
    print(f"\nwrote {md}, {args.out / report.PNG_NAME} and {args.out / report.RESULTS_NAME}")
    if code:
        print(
            f"warning: some benchmarks failed (pytest exit code {code}); see "
            f"{args.out / 'pytest.log'}",
            file=sys.stderr,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
