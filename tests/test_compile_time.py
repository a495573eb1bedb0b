"""``benchmarks/compile_time.py`` (cold and warm first calls per network) and its report rows."""

from __future__ import annotations

import pytest

from benchmarks import compile_time, report


def _run(total, cpu, slowest=()):
    return {
        "import_seconds": 0.5,
        "first_call_seconds": total - 0.5,
        "total_seconds": total,
        "cpu_seconds": cpu,
        "slowest": [list(s) for s in slowest],
    }


@pytest.fixture
def measured():
    return {
        "command": "python -m benchmarks.compile_time --repeat 3",
        "repeat": 3,
        "jit_enabled": True,
        "threads": 2,
        "loadavg_start": [4.0, 3.0, 2.0],
        "loadavg_end": [6.0, 4.0, 2.0],
        "networks": {
            "two_layer": {
                "description": "TwoLayerNet",
                "strategies": ["delta"],
                "cold": _run(6.0, 5.0, [("fastnum.kernels.two_layer._delta_sample_terms", 2.5)]),
                "warm": _run(0.8, 0.7),
                "cold_runs": [5.0, 6.0, 9.0],
                "warm_runs": [0.8, 0.8, 0.9],
                "cache_files": 30,
            },
        },
    }


def test_report_rows_give_cold_warm_and_the_command(measured):
    lines = report.compile_lines(measured)
    assert (
        "| two_layer: TwoLayerNet | delta | 6 s | 5 s | 800 ms | `_delta_sample_terms` 2.5 s |"
        in lines
    )
    text = "\n".join(lines)
    assert "`python -m benchmarks.compile_time --repeat 3`" in text
    assert "median of 3 run(s)" in text and "load average 4.0 at start, 6.0 at end" in text


def test_summary_has_a_line_per_network(measured):
    lines = compile_time.summary(measured).splitlines()
    assert lines[1].split()[:4] == ["two_layer", "6.00s", "0.80s", "5.00s"]
    assert "load average 4.0 at start, 6.0 at end" in lines[-1]


def test_median_run_is_the_middle_total():
    runs = [_run(9.0, 1.0), _run(5.0, 1.0), _run(6.0, 1.0)]
    assert compile_time._median_run(runs)["total_seconds"] == 6.0


def test_unknown_network_is_refused():
    with pytest.raises(ValueError, match="lenet"):
        compile_time.measure(["lenet"])


def test_measures_in_fresh_processes_without_the_jit(monkeypatch):
    # The whole pipeline (worker processes, JSON, report) in seconds: nothing compiles.
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")
    result = compile_time.measure(["two_layer"], command="cmd")
    assert result["command"] == "cmd" and result["jit_enabled"] is False
    run = result["networks"]["two_layer"]["cold"]
    assert run["per_network"] == {} and run["import_seconds"] > 0
    # A network's own row runs what a user's first call runs: the default strategy.
    assert result["networks"]["two_layer"]["strategies"] == run["strategies"] == ["delta"]
    assert report.compile_lines(result) == [
        "numba's JIT was disabled (NUMBA_DISABLE_JIT=1): nothing was compiled."
    ]
