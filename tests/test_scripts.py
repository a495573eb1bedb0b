"""The before-and-after scripts of ``scripts/`` (the benchmark report has its own tests)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

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
