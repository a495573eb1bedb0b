"""Experiments: seeded runs, local and Dask grids, CSV/PNG output and the three quick modes."""

from __future__ import annotations

import csv
import json
import math
import sys

import numpy as np
import pytest

from fastnum._format import format_duration
from fastnum.experiments import batch_size, depth_width, grid, learning_rate, output
from fastnum.train import TrainConfig, TrainingDivergedError
from tests._training import blob_data, quiet_train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_spec(mnist_source_dir, **config):
    """A run of a few iterations on a 784-2-10 network: seconds even without numba."""
    base = {
        "iters": 3,
        "batch_size": 10,
        "hidden_size": 2,
        "train_size": 30,
        "test_size": 50,
        "threads": 1,
    }
    return {"name": "tiny", "config": {**base, **config}, "data_dir": str(mnist_source_dir)}


def same(results_a, results_b):
    # Through JSON, so that a NaN compares equal to a NaN.
    def dump(results):
        return json.dumps([grid.deterministic(r) for r in results], sort_keys=True)

    return dump(results_a) == dump(results_b)


def _square(spec):
    return spec["x"] ** 2


def test_train_config_hidden_sizes_and_activation():
    config = TrainConfig(hidden_sizes=[np.int64(4), 3], activation="relu")
    assert config.hidden_sizes == (4, 3) and config.to_dict()["hidden_sizes"] == [4, 3]
    assert TrainConfig(**json.loads(json.dumps(config.to_dict()))) == config
    for bad, error, words in (
        ({"hidden_sizes": [4, 0]}, ValueError, r"hidden_sizes\[1\]=0"),
        ({"hidden_sizes": "4"}, TypeError, "sequence of layer widths"),
        ({"activation": "tanh", "hidden_sizes": [4]}, ValueError, "tanh"),
        ({"activation": "relu"}, ValueError, "needs hidden_sizes"),
    ):
        with pytest.raises(error, match=words):
            TrainConfig(**bad)


@pytest.mark.parametrize("grad", ["backprop", "numerical"])
def test_train_a_multilayer_net_and_resume_it(tmp_path, grad):
    data = blob_data(0)
    config = TrainConfig(
        grad=grad,
        iters=12,
        batch_size=10,
        lr=0.5,
        hidden_sizes=(4, 3),
        activation="relu",
        weight_init_std=0.3,
        backend="numpy",
    )
    whole = quiet_train(config, data)
    assert list(whole.params) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    quiet_train(TrainConfig(**{**config.to_dict(), "iters": 5}), data, tmp_path)
    resumed = quiet_train(config, data, tmp_path, resume=True)
    assert resumed.history == whole.history
    assert json.loads((tmp_path / "history.json").read_text())["config"]["hidden_sizes"] == [4, 3]
    with pytest.raises(ValueError, match="hidden_sizes"):
        quiet_train(
            TrainConfig(**{**config.to_dict(), "hidden_sizes": [4, 4]}), data, tmp_path, resume=True
        )


def test_count_params_matches_the_networks():
    assert depth_width.count_params([50]) == 784 * 50 + 50 + 50 * 10 + 10
    assert depth_width.count_params([100, 50], 784, 10) == 784 * 100 + 100 + 100 * 50 + 50 + 510
    assert depth_width.count_params([], 4, 3) == 15


def test_equal_param_widths_stay_near_the_budget():
    widths = depth_width.equal_param_widths([1, 2, 3, 4, 5], 20)
    assert widths[0] == (20,) and [len(w) for w in widths] == [1, 2, 3, 4, 5]
    target = depth_width.count_params([20])
    assert all(abs(depth_width.count_params(w) - target) < 0.05 * target for w in widths)


def _result(status, iterations, evaluated_at):
    return {
        "status": status,
        "iterations": iterations,
        "final_test_acc": 0.9,
        "epochs": {
            "iteration": evaluated_at,
            "test_acc": [0.1 * k for k in range(len(evaluated_at))],
        },
    }


def test_accuracy_curve_ends_with_the_final_parameters_of_a_completed_run():
    assert grid.accuracy_curve(_result("completed", 20, [1, 11])) == ([1, 11, 20], [0.0, 0.1, 0.9])
    # A run whose last evaluation is its last iteration gets no duplicate point.
    assert grid.accuracy_curve(_result("completed", 11, [1, 11])) == ([1, 11], [0.0, 0.1])
    # A stopped run's final accuracy is that of its last evaluation: nothing is added.
    assert grid.accuracy_curve(_result("stopped", 1, [1])) == ([1], [0.0])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (42.04, "42.0 s"),
        (119.9, "119.9 s"),
        (210, "3.5 min"),
        (131_040, "36.4 h"),
        (None, "—"),
        (math.nan, "—"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_run_grid_runs_here_in_order():
    lines = []
    results = grid.run_grid([{"x": 3}, {"x": 1}, {"x": 2}], func=_square, log=lines.append)
    assert results == [9, 1, 4]
    assert len(lines) == 3 and "3/3" in lines[-1]


def test_scheduler_without_dask_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # makes `import distributed` fail
    with pytest.raises(ImportError, match="fastnum\\[distributed\\]"):
        grid.run_grid([{"x": 1}], scheduler="tcp://127.0.0.1:1", func=_square)


def test_run_one_is_seeded_and_reports_metrics(mnist_source_dir):
    spec = {**tiny_spec(mnist_source_dir, lr=1.0), "timing_seconds": 0.01, "tags": {"k": 1}}
    a, b = grid.run_one(spec), grid.run_one(spec)
    assert same([a], [b])
    assert a["status"] == "completed" and a["iterations"] == 3 and a["tags"] == {"k": 1}
    assert 0 <= a["final_test_acc"] <= 1 and math.isfinite(a["final_loss"])
    assert a["epochs"]["iteration"] == [1] and a["sec_per_iter"] > 0 and a["train_seconds"] > 0
    other = grid.run_one(tiny_spec(mnist_source_dir, lr=1.0, seed=1))
    assert not same([a], [other])


def test_a_blowing_up_run_is_stopped_at_its_first_evaluation(mnist_source_dir):
    result = grid.run_one({**tiny_spec(mnist_source_dir, lr=100.0), "stop_loss": 2 * math.log(10)})
    assert result["status"] == "stopped" and result["stopped_at"] == 1
    assert result["iterations"] == 1 and result["final_loss"] > 2 * math.log(10)


def test_a_non_finite_loss_is_recorded_as_diverged(mnist_source_dir, monkeypatch):
    def diverging_train(config, data, callback, **kwargs):
        callback({"iteration": 1, "epoch": 0, "loss": 2.3, "train_acc": 0.1, "test_acc": 0.1})
        raise TrainingDivergedError("boom", 7, math.nan, config.lr)

    monkeypatch.setattr("fastnum.train.train", diverging_train)
    result = grid.run_one(tiny_spec(mnist_source_dir))
    assert result["status"] == "diverged" and result["stopped_at"] == 7
    assert result["iterations"] == 6 and result["final_test_acc"] == 0.1


def test_dask_cluster_gives_the_same_results_as_a_local_run(mnist_source_dir):
    distributed = pytest.importorskip(
        "distributed", reason="Dask not installed: pip install 'fastnum[distributed]'"
    )
    specs = [tiny_spec(mnist_source_dir, lr=lr, seed=seed) for lr, seed in ((0.1, 0), (1.0, 1))]
    local = grid.run_grid(specs, log=None)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        remote = grid.run_grid(specs, scheduler=cluster, log=None)
    assert same(local, remote)
    assert [r["config"]["lr"] for r in remote] == [0.1, 1.0]


def test_write_csv_formats_cells(tmp_path):
    rows = [{"a": 1 / 3, "b": [100, 50], "c": None}, {"a": math.nan, "b": "x", "extra": 1}]
    path = output.write_csv(tmp_path / "sub" / "r.csv", rows, ["a", "b", "c"])
    assert path.read_text().splitlines() == ["a,b,c", "0.333333,100-50,", ",x,"]
    assert [p.name for p in path.parent.iterdir()] == ["r.csv"]  # no temporary file left


def test_budget_runs_follow_the_measured_time():
    bs = batch_size
    settings = {**bs.QUICK, "budget_seconds": 1.0}
    specs = bs.budget_specs(settings, {1: 0.001, 10: 0.004, 100: 3.0})
    assert [s["config"]["iters"] for s in specs] == [1000, 250, 1]
    epochs = bs.epoch_specs({**settings, "train_size": 100, "epochs": 2})
    assert [s["config"]["iters"] for s in epochs] == [200, 20, 2]


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _run_quick(experiment, tmp_path, mnist_source_dir, capsys):
    out = tmp_path / experiment.__name__.rsplit(".", 1)[1]
    assert experiment.main(["--quick", "--out", str(out), "--data-dir", str(mnist_source_dir)]) == 0
    assert f"\nwrote {out}/" in capsys.readouterr().out
    summary = (out / "summary.md").read_text()
    assert summary.startswith(f"# {experiment.EXPERIMENT.title}\n")
    assert f"`python -m {experiment.__name__} --quick`" in summary
    assert "What the numbers show" in summary
    for png in out.glob("*.png"):
        assert png.read_bytes().startswith(PNG_MAGIC)
    return out


def test_quick_batch_size(tmp_path, mnist_source_dir, capsys):
    out = _run_quick(batch_size, tmp_path, mnist_source_dir, capsys)
    rows = _read_csv(out / "results.csv")
    assert [int(r["batch_size"]) for r in rows] == [1, 10, 100]
    assert [int(r["epoch_iters"]) for r in rows] == [100, 10, 1]
    assert all(float(r["sec_per_iter"]) > 0 and int(r["budget_iters"]) >= 1 for r in rows)
    assert (out / "batch_size.png").is_file()


def test_quick_depth_width(tmp_path, mnist_source_dir, capsys):
    out = _run_quick(depth_width, tmp_path, mnist_source_dir, capsys)
    runs = _read_csv(out / "runs.csv")
    assert [r["hidden_sizes"] for r in runs] == ["2", "2-2", "2-2-2"] * 2
    assert {r["activation"] for r in runs} == {"sigmoid", "relu"}
    assert len(_read_csv(out / "curves.csv")) >= len(runs)
    assert (out / "depth_width.png").is_file()


def test_quick_learning_rate(tmp_path, mnist_source_dir, capsys):
    out = _run_quick(learning_rate, tmp_path, mnist_source_dir, capsys)
    last = {}
    for row in _read_csv(out / "gd_paths.csv"):
        last[float(row["lr"])] = float(row["distance"])
    assert last[0.1] < 1e-8 and last[1e-10] == pytest.approx(5, rel=1e-6) and last[10.0] > 1e12
    status = {float(r["lr"]): r["status"] for r in _read_csv(out / "mnist_runs.csv")}
    assert status == {0.1: "completed", 10.0: "completed", 100.0: "stopped"}
    assert {p.name for p in out.glob("*.png")} == {"gd_paths.png", "mnist_lr.png"}


def test_missing_mnist_is_one_line_and_exit_2(tmp_path, capsys):
    code = depth_width.main(
        ["--quick", "--out", str(tmp_path), "--data-dir", str(tmp_path / "nowhere")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fastnum.experiments.depth_width: error: ")
    assert "Traceback" not in err and str(tmp_path / "nowhere") in err


def test_experiments_run_as_modules():
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "fastnum.experiments.batch_size", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m fastnum.experiments.batch_size")
    assert "--scheduler" in proc.stdout and "RuntimeWarning" not in proc.stderr
