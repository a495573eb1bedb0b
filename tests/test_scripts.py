"""The before-and-after scripts of ``scripts/`` (the benchmark report has its own tests)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from tests._child import run_python

REPO = Path(__file__).resolve().parents[1]


def _script(name):
    """Import ``scripts/NAME.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_side_by_side_refuses_a_folder_that_is_not_a_checkout(tmp_path, capsys):
    side_by_side = _script("side_by_side")
    with pytest.raises(SystemExit):
        side_by_side.main([f"old={tmp_path}"])
    assert f"'old={tmp_path}' is not NAME=PATH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        side_by_side.main([f"a={REPO}", "--rounds", "0"])
    assert "--rounds=0 must be at least 1" in capsys.readouterr().err


@pytest.mark.numba
def test_side_by_side_times_each_checkout_in_its_own_process(mnist_source_dir, capsys):
    # This checkout against itself: one line per tree, a positive time per network.
    side_by_side = _script("side_by_side")
    assert side_by_side.main([f"first={REPO}", f"second={REPO}", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["first", "second"]
    for line in lines:
        times = [float(ms) for ms in re.findall(r": ([0-9.]+) ms", line)]
        assert len(times) == 2 and all(ms > 0 for ms in times)


@pytest.mark.numba
def test_every_engine_result_is_the_same_bits_at_1_2_and_16_threads():
    # A 16-core machine runs 16 threads; numba runs them here too when asked, on 2 cores,
    # so the tasks split as they would there.
    proc = run_python(
        str(REPO / "scripts" / "bitwise_gradients.py"),
        "threads",
        "1,2,16",
        env={"NUMBA_NUM_THREADS": "16", "PYTHONPATH": str(REPO)},
        timeout=1200,
    )
    summary = proc.stdout.splitlines()[-1] if proc.stdout else ""
    assert proc.returncode == 0, f"{summary}\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    compared, differ = re.fullmatch(
        r"(\d+) results at \(2, 16\) threads against 1, (\d+) differ", summary
    ).groups()
    assert int(compared) > 1000 and int(differ) == 0


def test_thread_comparison_names_a_result_that_moved_and_fails(monkeypatch, capsys):
    bitwise = _script("bitwise_gradients")
    same, moved = np.arange(3.0), np.array([0.0, 1.0, np.nextafter(2.0, 3.0)])
    results = {"net/full/t1/grad/W1": same, "net/full/t4/grad/W1": moved}
    results |= {"net/delta/t1/grad/b1": same, "net/delta/t4/grad/b1": same.copy()}
    monkeypatch.setattr(bitwise, "compute", lambda counts: results)
    assert bitwise._compare_thread_counts((1, 4)) == 1
    out = capsys.readouterr().out
    assert "DIFFERS: net/full/t4/grad/W1" in out and "b1" not in out
    assert "2 results at (4,) threads against 1, 1 differ" in out


def test_thread_comparison_refuses_counts_it_cannot_compare(capsys):
    bitwise = _script("bitwise_gradients")
    for counts in ("1,x", "2", "0,2"):
        assert bitwise.main(["bitwise_gradients.py", "threads", counts]) == 2
        assert f"threads {counts}: give two or more positive counts" in capsys.readouterr().out
