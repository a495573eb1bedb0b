"""The chapter 6 experiments: the shared training loop, the five quick modes, Dask."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

from fastnum.experiments import (
    _chapter6,
    batch_norm,
    grid,
    hyperparameters,
    optimizers,
    overfitting,
    weight_init,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_spec(mnist_source_dir, **changes):
    """A few updates of a 784-4-3-10 relu network: well under a second on every backend."""
    spec = {
        "name": "tiny",
        "tags": {"k": 1},
        "net": {"hidden_sizes": [4, 3], "activation": "relu", "weight_init_std": "he"},
        "optimizer": "adam",
        "grad": "backprop",
        "iters": 6,
        "batch_size": 8,
        "train_size": 40,
        "test_size": 30,
        "eval_every": 2,
        "record_loss": True,
        "seed": 0,
        "data_dir": str(mnist_source_dir),
    }
    return {**spec, **changes}


def dump(results):
    # Through JSON, so that NaN compares equal to NaN.
    return json.dumps([_chapter6.deterministic(r) for r in results], sort_keys=True)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_a_run_is_seeded_and_records_what_the_spec_asks(mnist_source_dir):
    spec = tiny_spec(mnist_source_dir)
    a, b = _chapter6.run(spec), _chapter6.run(spec)
    assert dump([a]) == dump([b])
    assert a["status"] == "completed" and a["iterations"] == 6 and a["tags"] == {"k": 1}
    assert len(a["losses"]) == 6 and all(np.isfinite(a["losses"]))
    assert a["eval_iters"] == [0, 2, 4, 6]
    assert all(0 <= v <= 1 for v in a["train_acc"] + a["eval_acc"])
    assert dump([a]) != dump([_chapter6.run({**spec, "seed": 1})])
    assert dump([a]) != dump([_chapter6.run({**spec, "optimizer": "sgd"})])


def test_the_numerical_gradient_trains_as_backprop_does(mnist_source_dir):
    # Central differences on the NumPy reference (seconds without numba): after a few SGD
    # updates from the same seed, both runs have nearly the same batch losses.
    spec = tiny_spec(
        mnist_source_dir,
        net={"hidden_sizes": [3], "activation": "relu", "weight_init_std": 0.1},
        optimizer="sgd",
        hyper={"lr": 0.5},
        iters=3,
        batch_size=4,
        backend="numpy",
    )
    ref_run = _chapter6.run(spec)
    comp_run = _chapter6.run({**spec, "grad": "numerical"})
    np.testing.assert_allclose(comp_run["losses"], ref_run["losses"], rtol=1e-5, atol=1e-7)
    assert ref_run["losses"][-1] < ref_run["losses"][0]


def test_time_numerical_iteration_times_an_update(mnist_source_dir):
    spec = tiny_spec(mnist_source_dir, backend="numpy", batch_size=2)
    assert 0 < _chapter6.time_numerical_iteration(spec, repeats=1, warmup=False) < 60


def test_a_validation_split_is_held_out_of_training(mnist_source_dir):
    spec = tiny_spec(mnist_source_dir, train_size=50, val_size=10, split_seed=3)
    x, t, x_val, t_val = _chapter6.datasets(spec)
    assert len(x) == 40 and len(x_val) == 10
    whole = _chapter6.datasets({**spec, "val_size": 0})[0]
    # The split is a permutation of the first 50 images: no image is in both parts.
    rows = {row.tobytes() for row in whole}
    assert {row.tobytes() for row in x} | {row.tobytes() for row in x_val} == rows
    assert not {row.tobytes() for row in x} & {row.tobytes() for row in x_val}
    again = _chapter6.datasets(spec)
    assert np.array_equal(again[2], x_val)
    assert not np.array_equal(_chapter6.datasets({**spec, "split_seed": 4})[2], x_val)


def test_smooth_is_a_centred_moving_average():
    values = np.array([0.0, 3.0, 0.0, 3.0, 0.0])
    assert np.allclose(_chapter6.smooth(values, window=3), [1.5, 1.0, 2.0, 1.0, 1.5])
    assert np.allclose(_chapter6.smooth(np.full(7, 2.0)), 2.0)
    assert len(_chapter6.smooth([])) == 0


def test_hyperparameter_draws_are_log_uniform_in_the_ranges():
    settings = {**hyperparameters.FULL, "trials": 200}
    lr, wd = np.array(hyperparameters.draws(settings)).T
    assert np.all((1e-6 <= lr) & (lr <= 1e-2)) and np.all((1e-8 <= wd) & (wd <= 1e-4))
    # Log-uniform: about half of the exponents below the middle of the range.
    assert 70 < np.sum(np.log10(lr) < -4) < 130
    assert hyperparameters.draws(settings) == hyperparameters.draws(settings)
    with pytest.raises(ValueError, match="val_size"):
        hyperparameters.specs({**hyperparameters.QUICK, "val_size": 0})


def test_batch_norm_sweeps_the_book_weight_scales():
    scales = batch_norm.weight_scales(batch_norm.FULL)
    assert len(scales) == 16 and scales[0] == 1.0 and scales[-1] == pytest.approx(1e-4)
    specs = batch_norm.specs(batch_norm.FULL)
    assert [s["net"]["use_batchnorm"] for s in specs[:4]] == [True, False, True, False]
    assert {s["iters"] for s in specs} == {200}  # 20 epochs of 1000 images in batches of 100


QUICK_FILES = {
    optimizers: {"runs.csv", "curves.csv", "optimizers.png"},
    weight_init: {"runs.csv", "curves.csv", "weight_init.png"},
    batch_norm: {"runs.csv", "curves.csv", "batch_norm.png"},
    overfitting: {"runs.csv", "curves.csv", "overfitting.png"},
    hyperparameters: {
        "runs.csv",
        "curves.csv",
        "hyperparameters.png",
        "hyperparameters_plane.png",
    },
}


@pytest.mark.parametrize("module", list(QUICK_FILES), ids=lambda m: m.__name__.rsplit(".")[-1])
def test_quick_mode_writes_its_files(module, tmp_path, mnist_source_dir, capsys):
    out = tmp_path / "out"
    argv = ["--quick", "--out", str(out), "--data-dir", str(mnist_source_dir)]
    assert module.main(argv) == 0
    assert f"\nwrote {out}/" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == QUICK_FILES[module] | {"summary.md"}
    summary = (out / "summary.md").read_text()
    assert summary.startswith(f"# {module.EXPERIMENT.title}\n")
    assert f"`python -m {module.__name__} --quick`" in summary
    assert "What the numbers show" in summary and "`--grad backprop`" in summary
    for png in out.glob("*.png"):
        assert png.read_bytes().startswith(PNG_MAGIC)
    runs = read_csv(out / "runs.csv")
    assert runs and all(r["status"] == "completed" for r in runs)
    # Seeded: a second run writes the same curves.
    again = tmp_path / "again"
    assert module.main([*argv[:2], str(again), *argv[3:]]) == 0
    assert (again / "curves.csv").read_text() == (out / "curves.csv").read_text()


def test_quick_tables_have_one_row_per_run(tmp_path, mnist_source_dir):
    data = str(mnist_source_dir)
    optimizers.run(optimizers.QUICK, tmp_path / "o", None, data)
    names = [r["optimizer"] for r in read_csv(tmp_path / "o" / "runs.csv")]
    assert names == optimizers.QUICK["optimizers"]
    curves = read_csv(tmp_path / "o" / "curves.csv")
    assert len(curves) == len(names) * optimizers.QUICK["iters"]


def test_numerical_quick_mode_says_so(tmp_path, mnist_source_dir, monkeypatch):
    # Two tiny updates on the NumPy reference: the command line in summary.md names --grad.
    quick = {**weight_init.QUICK, "hidden_sizes": [2], "iters": 2, "batch_size": 2}
    tiny = dataclasses.replace(weight_init.EXPERIMENT, quick=quick)
    monkeypatch.setattr(weight_init, "EXPERIMENT", tiny)
    monkeypatch.setenv("FASTNUM_BACKEND", "numpy")
    argv = ["--quick", "--grad", "numerical", "--out", str(tmp_path), "--data-dir"]
    assert weight_init.main([*argv, str(mnist_source_dir)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "`python -m fastnum.experiments.weight_init --quick --grad numerical`" in summary
    assert "`--grad numerical`" in summary


def test_bad_grad_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        weight_init.main(["--quick", "--grad", "spsa"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_dask_cluster_gives_the_same_curves_as_a_local_run(mnist_source_dir):
    distributed = pytest.importorskip(
        "distributed", reason="Dask not installed: pip install 'fastnum[distributed]'"
    )
    settings = {**weight_init.QUICK, "iters": 5}
    specs = weight_init.specs(settings, str(mnist_source_dir))
    local = grid.run_grid(specs, func=_chapter6.run, log=None)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        remote = grid.run_grid(specs, scheduler=cluster, func=_chapter6.run, log=None)
    assert dump(local) == dump(remote)
    assert [r["tags"]["init"] for r in remote] == list(weight_init.INITS)
