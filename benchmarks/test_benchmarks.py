"""Benchmarks of every operation in ``fastnum.registry.COMPARISONS``.

One test parametrised by operation, implementation, size and thread count (see
``bench_plan``), one pytest-benchmark group per operation, so that an operation
added to the registry is benchmarked without a line here.  Every case

* compiles its kernels first, on a tiny problem of the same types, so that
  compile time never enters the figures (``benchmarks/compile_time.py`` measures it);
* prepares its arguments outside the timed call (``Operation.args``);
* checks its result against the NumPy reference with the registry's tolerance
  (against the backprop yardstick where the reference is too slow to run); the
  reference's own result is checked against the backprop yardstick.

With ``--benchmark-disable`` (the default test suite) every case runs once on a
tiny problem instead, with the same checks: a smoke test that keeps broken (or
wrong) benchmarks out of CI.
"""

from __future__ import annotations

import math
import time

import pytest

from benchmarks import bench_plan
from benchmarks.bench_plan import ALL_THREADS
from fastnum.registry import COMPARISONS, hidden_label, max_errors

PROFILE = bench_plan.active_profile()
CASES = {op: {c.id: c for c in bench_plan.cases(op, PROFILE, ALL_THREADS)} for op in COMPARISONS}
# A fast call shorter than this is repeated inside one round, so that the timer's
# own overhead stays negligible.
MIN_ROUND_SECONDS = 50e-6
MAX_ROUNDS = 10_000


def _thread_count(case, numba_threads):
    """Apply the case's numba thread setting; return the count used (None for NumPy)."""
    if case.threads is None:
        return None
    n = 1 if case.threads == "1" else ALL_THREADS
    numba_threads(n)
    return n


def _warm_up(fn, op, case, problems):
    # One call on a tiny problem of the same dtypes compiles (or loads from the
    # on-disk cache) every kernel the timed call uses.
    fn(*op.args(case.impl, problems(case.batch, case.hidden, smoke=True)))


def _rounds(fn, args, case):
    """(rounds, iterations) for pedantic: fixed for slow cases, else calibrated."""
    if case.slow:
        return PROFILE.slow_rounds, 1
    start = time.perf_counter()
    fn(*args)  # also warms caches at the real size
    once = max(time.perf_counter() - start, 1e-9)
    iterations = max(1, math.ceil(MIN_ROUND_SECONDS / once))
    rounds = math.ceil(PROFILE.target_seconds / (once * iterations))
    return min(max(rounds, PROFILE.min_rounds), MAX_ROUNDS), iterations


def _expected(op_name, case, problem_key, problems, reference_results):
    """(name, result) to check ``case`` against: the reference, else backprop, else None."""
    op = COMPARISONS[op_name]
    if problem_key in reference_results:
        return op.reference, reference_results[problem_key]
    _, batch, hidden, smoke = problem_key
    out_of_reach = (
        op_name in bench_plan.GRADIENT_OPS and (batch, hidden) not in PROFILE.slow_sizes[op_name]
    )
    problem = problems(batch, hidden, smoke)
    if smoke or not out_of_reach:
        ref = op.implementations[op.reference](*op.args(op.reference, problem))
        reference_results[problem_key] = ref
        return op.reference, ref
    if case.impl in op.yardsticks:
        return None, None  # the yardstick itself, where the reference is out of reach
    return _yardstick(op, problem)


def _yardstick(op, problem):
    """(name, result) of the operation's first yardstick on ``problem``, or (None, None).

    What the reference's own result is checked against: an independent way to
    compute the same quantity (the analytic gradient), cheap at every size.
    """
    if not op.yardsticks:
        return None, None
    name = next(iter(op.yardsticks))
    return name, op.implementations[name](*op.args(name, problem))


def _check(op_name, case, result, expected_name, expected):
    op = COMPARISONS[op_name]
    abs_err, rel_err = max_errors(expected, result)
    if case.impl in op.yardsticks or expected_name in op.yardsticks:
        # A numerical gradient and backprop differ by the finite-difference error.
        tol = op.yardsticks.get(case.impl, op.yardsticks.get(expected_name))
        ok = rel_err <= tol
    else:
        # The registry sets one of atol / rtol to zero: the other is the tolerance.
        ok = abs_err <= op.atol or rel_err <= op.rtol
    assert ok, (
        f"{op_name}[{case.id}] differs from {expected_name}: max abs error "
        f"{abs_err:.3g}, max rel error {rel_err:.3g} (atol {op.atol}, rtol {op.rtol})"
    )


def run_case(benchmark, op_name, case_id, problems, reference_results, numba_threads):
    """Time (or, benchmarks disabled, smoke-test) one case and check its result."""
    case = CASES[op_name][case_id]
    smoke = benchmark.disabled
    reason = None if smoke else bench_plan.skip_reason(case, PROFILE)
    if reason:
        pytest.skip(f"{op_name}[{case_id}] not timed: {reason}")
    op = COMPARISONS[op_name]
    fn = op.implementations[case.impl]
    problem = problems(case.batch, case.hidden, smoke)
    args = op.args(case.impl, problem)
    threads = _thread_count(case, numba_threads)
    rounds, iterations = (1, 1)
    if not smoke:
        _warm_up(fn, op, case, problems)
        rounds, iterations = _rounds(fn, args, case)
    benchmark.extra_info.update(
        op=op_name,
        impl=case.impl,
        batch=int(problem.x.shape[0]),
        hidden=int(problem.params["W1"].shape[1]),
        arch=hidden_label(problem.hidden_sizes),
        pixels=int(problem.x.shape[1]),
        threads=threads,
        threads_setting=case.threads,
        slow=case.slow,
        smoke=smoke,
        book_case=case.is_book_case and not smoke,
    )
    if case.impl in op.extrapolate:  # timed on a sample: the report scales it up
        benchmark.extra_info["extrapolate_factor"] = op.extrapolate[case.impl](problem)
    result = benchmark.pedantic(
        fn, args=args, rounds=rounds, iterations=iterations, warmup_rounds=0
    )
    key = (op_name, case.batch, case.hidden, smoke)
    if case.impl == op.reference:
        reference_results[key] = result
        name, expected = _yardstick(op, problem)
    else:
        name, expected = _expected(op_name, case, key, problems, reference_results)
    benchmark.extra_info["checked_against"] = name
    if name is not None:
        _check(op_name, case, result, name, expected)
    else:
        # Only a yardstick where the reference is out of reach, and the reference of an
        # operation without a yardstick (the other implementations are checked against it).
        assert case.impl in op.yardsticks or (case.impl == op.reference and not op.yardsticks)


ALL_CASES = [(op, case_id) for op in COMPARISONS for case_id in CASES[op]]


@pytest.mark.parametrize(
    ("op_name", "case_id"), ALL_CASES, ids=[f"{op}-{case_id}" for op, case_id in ALL_CASES]
)
def test_operation(benchmark, op_name, case_id, problems, reference_results, numba_threads):
    """Every case of every registry operation, one pytest-benchmark group per operation."""
    benchmark.group = op_name
    run_case(benchmark, op_name, case_id, problems, reference_results, numba_threads)
