"""docs/notebooks/check_your_layers.ipynb runs from top to bottom (its cells assert)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "check_your_layers.ipynb"


def test_check_your_layers_notebook_runs(mnist_source_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="pip install 'fastnum[test]' (nbformat)")
    nbclient = pytest.importorskip("nbclient", reason="pip install 'fastnum[test]' (nbclient)")
    monkeypatch.setenv("FASTNUM_MNIST_DIR", str(mnist_source_dir))
    # The kernel imports this checkout's fastnum, not an installed copy.
    repo = str(NOTEBOOK.parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": repo}}
    ).execute()
    outputs = "".join(
        o.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
    )
    assert "FAIL: b1" in outputs and "worst elements of b1" in outputs
    assert outputs.count("PASS") == 2 and "BatchNorm1" in outputs
