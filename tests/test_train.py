"""Training loop: learning, reproducibility, resume, divergence, validation and outputs."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from fastnum import backend as fb
from fastnum.progress import Progress
from fastnum.rundir import CheckpointError
from fastnum.train import TrainConfig, TrainingDivergedError, train
from tests._training import SimulatedInterruptError, blob_data, quiet_train, small, stop_at_epoch

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PARAMS = ("W1", "b1", "W2", "b2")


@pytest.fixture(scope="module")
def blobs():
    """Four well separated Gaussian blobs in 6-D, float32 images and uint8 labels as MNIST's."""
    return blob_data(42, np.float32, np.uint8)


def assert_same_run(a, b):
    for k in PARAMS:
        assert np.array_equal(a.params[k], b.params[k]), k
    assert a.history == b.history
    assert (a.final_train_acc, a.final_test_acc) == (b.final_train_acc, b.final_test_acc)


# --- learning ---------------------------------------------------------------------------------


def test_backprop_learns_blobs(blobs):
    result = quiet_train(small(iters=200), blobs)
    assert result.final_test_acc > 0.95
    assert np.mean(result.history["loss"][-20:]) < 0.5 * result.history["loss"][0]


def test_history_follows_the_book_schedule(blobs):
    lines = []
    result = train(small(iters=25), blobs, progress=False, log=lines.append)
    h = result.history
    assert len(h["loss"]) == 25
    # iter_per_epoch = 300 // 30 = 10; the book evaluates when i % 10 == 0 (i is 0-based)
    assert h["epoch_iter"] == [1, 11, 21]
    assert len(h["train_acc"]) == len(h["test_acc"]) == len(result.timings["epoch_seconds"]) == 3
    assert len(lines) == 3 and all("train acc, test acc |" in line for line in lines)
    assert lines[1].startswith("iter 11/25")
    assert f"{h['train_acc'][1]:.4f}, {h['test_acc'][1]:.4f}" in lines[1]
    # final accuracy is of the final params, even when the last iteration is not an epoch
    (x_train, t_train), (x_test, t_test) = blobs
    assert result.final_test_acc == result.net.accuracy(x_test, t_test)
    assert result.final_train_acc == result.net.accuracy(x_train, t_train)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.numba)])
def test_numerical_and_backprop_trajectories_agree(blobs, backend):
    runs = [
        quiet_train(small(grad=g, iters=12, backend=backend), blobs)
        for g in ("numerical", "backprop")
    ]
    for k in PARAMS:
        np.testing.assert_allclose(runs[0].params[k], runs[1].params[k], rtol=0, atol=1e-6)
    np.testing.assert_allclose(runs[0].history["loss"], runs[1].history["loss"], atol=1e-6)


def _blas_threads():
    return max(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.numba)])
def test_backprop_runs_where_asked_with_one_blas_thread_beside_numba(blobs, backend, monkeypatch):
    """numba kernels between BLAS calls would fight BLAS's threads for the cores."""
    from fastnum.network import TwoLayerNet

    seen, real = [], TwoLayerNet.gradient_trusted
    monkeypatch.setattr(
        TwoLayerNet,
        "gradient_trusted",
        lambda self, x, t: seen.append(_blas_threads()) or real(self, x, t),
    )
    before = _blas_threads()
    result = quiet_train(small(grad="backprop", iters=3, backend=backend), blobs)
    assert result.backend == backend and result.net.backend == backend
    assert seen == [1 if backend == "numba" else before] * 3
    assert _blas_threads() == before  # restored after each step


@pytest.mark.numba
def test_threads_apply_to_the_run_and_are_given_back(blobs, monkeypatch):
    # A notebook that trains once with threads=1 must not find its later calls on 1 thread.
    from fastnum import get_num_threads
    from fastnum.network import TwoLayerNet

    seen, real = [], TwoLayerNet.numerical_gradient_trusted
    monkeypatch.setattr(
        TwoLayerNet,
        "numerical_gradient_trusted",
        lambda self, *a, **k: seen.append(get_num_threads()) or real(self, *a, **k),
    )
    before = get_num_threads()
    quiet_train(small(grad="numerical", iters=2, backend="numba", threads=1), blobs)
    assert seen == [1, 1]
    assert get_num_threads() == before
    with pytest.raises(ValueError, match="threads=100000 is out of range"):
        quiet_train(small(iters=1, threads=100_000), blobs)
    assert get_num_threads() == before


def test_backend_comes_from_the_environment_unless_given(blobs, monkeypatch):
    monkeypatch.setenv(fb.BACKEND_ENV, "numpy")
    assert quiet_train(small(backend=None, iters=2), blobs).backend == "numpy"
    monkeypatch.setenv(fb.BACKEND_ENV, "cuda")
    assert quiet_train(small(backend="numpy", iters=2), blobs).backend == "numpy"  # explicit wins
    with pytest.raises(ValueError, match=r"backend='cuda' \(from \$FASTNUM_BACKEND\)"):
        quiet_train(small(backend=None), blobs)


def test_same_seed_same_run_and_other_seed_differs(blobs):
    a, b = (quiet_train(small(grad="numerical", iters=10), blobs) for _ in range(2))
    assert_same_run(a, b)
    c = quiet_train(small(grad="numerical", iters=10, seed=1), blobs)
    assert not np.array_equal(a.params["W1"], c.params["W1"])


def test_relu_without_hidden_sizes_suggests_them():
    with pytest.raises(ValueError, match=r"needs hidden_sizes.*hidden_sizes=\(50,\)"):
        TrainConfig(activation="relu")


def test_seed_gives_the_networks_own_initialisation(blobs):
    from fastnum.network import TwoLayerNet

    # One step so small that it cannot change a weight of size ~0.5 (biases start at 0).
    result = quiet_train(small(iters=1, lr=1e-300), blobs)
    net = TwoLayerNet(6, 5, 4, weight_init_std=0.5, seed=0, backend="numpy")
    for k in ("W1", "W2"):
        assert np.array_equal(result.params[k], net.params[k])


# --- resume -----------------------------------------------------------------------------------


@pytest.mark.parametrize("grad", ["backprop", "numerical"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(blobs, tmp_path, grad):
    config = small(grad=grad, iters=45, batch_size=20)  # 15 iterations per epoch
    full = quiet_train(config, blobs, tmp_path / "full")
    with pytest.raises(SimulatedInterruptError):
        quiet_train(config, blobs, tmp_path / "cut", callback=stop_at_epoch(2))
    saved = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert saved["status"] == "running" and saved["iterations_done"] == 31
    resumed = quiet_train(config, blobs, tmp_path / "cut", resume=True)
    assert_same_run(full, resumed)
    on_disk = [json.loads((tmp_path / d / "history.json").read_text()) for d in ("full", "cut")]
    assert on_disk[0]["history"] == on_disk[1]["history"]
    assert on_disk[0]["final"] == on_disk[1]["final"]
    for d in ("full", "cut"):
        with np.load(tmp_path / d / "params.npz") as z:
            assert np.array_equal(z["W1"], full.params["W1"])


def test_resume_can_extend_a_finished_run(blobs, tmp_path):
    full = quiet_train(small(iters=40), blobs)
    quiet_train(small(iters=25), blobs, tmp_path)
    extended = quiet_train(small(iters=40), blobs, tmp_path, resume=True)
    assert_same_run(full, extended)
    again = quiet_train(small(iters=40), blobs, tmp_path, resume=True)  # nothing left to do
    assert_same_run(full, again)


@pytest.mark.numba
def test_resume_is_bit_identical_with_numba(blobs, tmp_path):
    config = small(grad="numerical", iters=25, backend="numba", strategy="delta")
    full = quiet_train(config, blobs)
    with pytest.raises(SimulatedInterruptError):
        quiet_train(config, blobs, tmp_path, callback=stop_at_epoch(1))
    assert_same_run(full, quiet_train(config, blobs, tmp_path, resume=True))


@pytest.mark.numba
def test_a_run_on_a_dask_scheduler_equals_one_process(blobs, tmp_path):
    pytest.importorskip(
        "distributed", reason="Dask not installed: pip install 'fastnum[distributed]'"
    )
    config = small(grad="numerical", iters=20, backend="numba", strategy="delta")
    ref_run = quiet_train(config, blobs)
    with pytest.raises(SimulatedInterruptError):  # half on the cluster, half resumed without
        quiet_train(config, blobs, tmp_path, callback=stop_at_epoch(1), scheduler="local")
    assert_same_run(ref_run, quiet_train(config, blobs, tmp_path, resume=True))
    assert_same_run(ref_run, quiet_train(config, blobs, scheduler="local"))


@pytest.mark.parametrize(
    "config, word",
    [
        ({"grad": "backprop"}, "grad='numerical'"),
        ({"grad": "numerical", "backend": "numpy"}, "--backend numba"),
    ],
)
def test_a_scheduler_is_refused_where_it_cannot_run(blobs, tmp_path, config, word):
    with pytest.raises(ValueError, match=word):
        quiet_train(small(iters=2, **config), blobs, tmp_path, scheduler="tcp://127.0.0.1:1")
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize(
    "change, word",
    [
        ({"lr": 0.5}, "lr=1.0 there, 0.5 now"),
        ({"seed": 3}, "seed"),
        ({"grad": "numerical"}, "grad"),
        ({"train_size": 200}, "train_size"),
    ],
)
def test_resume_refuses_a_different_config(blobs, tmp_path, change, word):
    quiet_train(small(), blobs, tmp_path)
    with pytest.raises(ValueError, match="cannot resume") as info:
        quiet_train(small(**change), blobs, tmp_path, resume=True)
    assert word in str(info.value)


def test_resume_refuses_other_data_and_a_shorter_run(blobs, tmp_path):
    quiet_train(small(), blobs, tmp_path)
    (x, t), test = blobs
    with pytest.raises(ValueError, match="different training/test data"):
        quiet_train(small(), ((x + 0.001, t), test), tmp_path, resume=True)
    with pytest.raises(ValueError, match="past iters=20"):
        quiet_train(small(iters=20), blobs, tmp_path, resume=True)


def test_resume_refuses_a_damaged_checkpoint(blobs, tmp_path):
    quiet_train(small(), blobs, tmp_path)
    (tmp_path / "checkpoint.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable fastnum checkpoint"):
        quiet_train(small(), blobs, tmp_path, resume=True)


def test_config_accepts_numpy_scalars_and_stays_json_friendly():
    config = TrainConfig(iters=np.int64(5), lr=np.float32(0.5), h=1, seed=np.uint8(3))
    assert json.loads(json.dumps(config.to_dict()))["iters"] == 5
    assert type(config.lr) is float and type(config.h) is float and type(config.seed) is int


def test_resume_needs_a_checkpoint(blobs, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.npz does not exist"):
        quiet_train(small(), blobs, tmp_path, resume=True)
    with pytest.raises(ValueError, match="needs out_dir"):
        quiet_train(small(), blobs, None, resume=True)


def test_existing_run_needs_resume_or_overwrite(blobs, tmp_path):
    quiet_train(small(iters=10), blobs, tmp_path)
    with pytest.raises(FileExistsError, match="already holds a run"):
        quiet_train(small(), blobs, tmp_path)
    result = quiet_train(small(), blobs, tmp_path, overwrite=True)
    assert json.loads((tmp_path / "history.json").read_text())["iterations_done"] == 30
    assert result.history["epoch_iter"] == [1, 11, 21]
    with pytest.raises(ValueError, match="exclude each other"):
        quiet_train(small(), blobs, tmp_path, resume=True, overwrite=True)


# --- divergence -------------------------------------------------------------------------------


def test_divergence_stops_with_a_clear_error_and_keeps_the_finite_history(blobs, tmp_path):
    # The book's stable softmax and 1e-7 log guard keep the loss finite for any sane lr;
    # only an lr that overflows float64 makes it NaN.
    with pytest.raises(TrainingDivergedError) as info:
        quiet_train(small(lr=1e308), blobs, tmp_path)
    err = info.value
    message = str(err)
    assert f"iteration {err.iteration}" in message and "lr=1e+308" in message
    assert "Lower the learning rate" in message and "history.json" in message
    assert not math.isfinite(err.loss)
    doc = json.loads((tmp_path / "history.json").read_text())  # strict JSON: no NaN inside
    assert doc["status"] == "diverged"
    assert doc["diverged_at"]["iteration"] == err.iteration
    assert len(doc["history"]["loss"]) == err.iteration - 1
    assert all(math.isfinite(v) for v in doc["history"]["loss"])
    assert (tmp_path / "loss.png").read_bytes().startswith(PNG_MAGIC)
    assert not (tmp_path / "params.npz").exists()


def test_divergence_without_out_dir(blobs):
    with pytest.raises(TrainingDivergedError, match="start a new run"):
        quiet_train(small(lr=1e308), blobs)


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("lr", 0.0, ValueError),
        ("lr", -0.1, ValueError),
        ("lr", float("nan"), ValueError),
        ("lr", "0.1", TypeError),
        ("h", 0.0, ValueError),
        ("h", -1e-4, ValueError),
        ("h", float("inf"), ValueError),
        ("batch_size", 0, ValueError),
        ("batch_size", 2.5, TypeError),
        ("iters", 0, ValueError),
        ("iters", 1e4, TypeError),
        ("hidden_size", 0, ValueError),
        ("weight_init_std", 0.0, ValueError),
        ("seed", -1, ValueError),
        ("threads", 0, ValueError),
        ("train_size", 0, ValueError),
        ("test_size", -5, ValueError),
        ("grad", "adam", ValueError),
        ("backend", "cuda", ValueError),
        ("strategy", "fast", ValueError),
    ],
)
def test_config_errors_name_the_value(field, value, error):
    with pytest.raises(error) as info:
        TrainConfig(**{field: value})
    assert f"{field}={value!r}" in str(info.value) or f"{field}={value}" in str(info.value)


def test_a_step_too_small_to_move_the_loss_is_refused():
    with pytest.raises(ValueError, match=r"\bh=1e-300"):
        TrainConfig(h=1e-300)


def _replace(blobs, which, value):
    (x, t), (xt, tt) = blobs
    parts = {"x": x, "t": t, "xt": xt, "tt": tt, which: value}
    return (parts["x"], parts["t"]), (parts["xt"], parts["tt"])


@pytest.mark.parametrize(
    "which, make, match",
    [
        (
            "x",
            lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x),
            "x_train contains a non-finite value nan",
        ),
        ("xt", lambda x: np.full_like(x, np.inf), "x_test contains a non-finite value inf"),
        ("xt", lambda x: x[:, :5], "x_test has 5 features per sample but the network expects 6"),
        ("x", lambda x: x.reshape(len(x), 2, 3), r"x_train has shape \(300, 2, 3\)"),
        ("t", lambda t: t[:-1], r"t_train has shape \(299,\)"),
        (
            "t",
            lambda t: np.where(np.arange(t.size) == 3, -2, t.astype(np.int64)),
            "t_train contains label -2",
        ),
        ("tt", lambda t: np.full(t.shape, 9), "t_test contains label 9, outside 0..3"),
        ("t", lambda t: t + 0.5, "t_train holds non-integer values"),
    ],
)
def test_data_errors_name_the_problem(blobs, which, make, match):
    (x, t), (xt, tt) = blobs
    original = {"x": x, "t": t, "xt": xt, "tt": tt}[which]
    with pytest.raises(ValueError, match=match):
        quiet_train(small(), _replace(blobs, which, make(original)))


def test_size_errors(blobs):
    with pytest.raises(ValueError, match=r"batch_size=301 is larger than the training set \(300"):
        quiet_train(small(batch_size=301), blobs)
    with pytest.raises(ValueError, match="batch_size=31 .*or a larger train_size"):
        quiet_train(small(batch_size=31, train_size=30), blobs)
    with pytest.raises(ValueError, match="train_size=500 is larger than the 300 samples"):
        quiet_train(small(train_size=500), blobs)
    with pytest.raises(ValueError, match="must be \\(\\(x_train, t_train\\), \\(x_test"):
        quiet_train(small(), blobs[0])
    with pytest.raises(TypeError, match="TrainConfig"):
        quiet_train({"lr": 0.1}, blobs)


def test_subsets_and_one_hot_labels(blobs):
    (x, t), (xt, tt) = blobs
    onehot = ((x, np.eye(4)[t]), (xt, np.eye(4)[tt]))
    a = quiet_train(small(train_size=120, test_size=50, batch_size=20), onehot)
    b = quiet_train(small(train_size=120, test_size=50, batch_size=20), blobs)
    assert_same_run(a, b)
    assert a.history["epoch_iter"] == [1, 7, 13, 19, 25]  # 120 // 20 = 6 per epoch


# --- outputs ----------------------------------------------------------------------------------


def test_outputs_are_complete_valid_and_atomic(blobs, tmp_path):
    result = quiet_train(small(), blobs, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["accuracy.png", "checkpoint.npz", "history.json", "loss.png", "params.npz"]
    doc = json.loads((tmp_path / "history.json").read_text())
    assert doc["status"] == "completed" and doc["backend"] == "numpy"
    assert doc["config"] == small().to_dict()
    assert doc["history"] == result.history
    assert doc["final"] == {
        "iteration": 30,
        "train_acc": result.final_train_acc,
        "test_acc": result.final_test_acc,
    }
    assert doc["data"]["train_size"] == 300 and doc["data"]["n_classes"] == 4
    assert len(doc["timings"]["epoch_seconds"]) == 3 and doc["timings"]["total_seconds"] > 0
    with np.load(tmp_path / "params.npz") as z:
        assert sorted(z.files) == sorted(PARAMS)
        assert z["W1"].shape == (6, 5) and z["b2"].shape == (4,)
    with np.load(tmp_path / "checkpoint.npz", allow_pickle=False) as z:
        assert {"meta", "loss", *PARAMS} == set(z.files)
        assert json.loads(str(z["meta"]))["iteration"] == 30
    for png in ("loss.png", "accuracy.png"):
        assert (tmp_path / png).read_bytes().startswith(PNG_MAGIC)


def test_no_out_dir_writes_nothing(blobs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quiet_train(small(iters=5), blobs)
    assert list(tmp_path.iterdir()) == []


# --- progress ---------------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_redraws_one_line():
    stream = FakeTTY()
    bar = Progress(50, 0, stream)
    assert bar.bar is not None  # tqdm's
    for i in range(1, 51):
        bar.update(i)
    lines = []
    bar.write(lambda m: lines.append((m, stream.getvalue())), "epoch line")
    ((message, screen),) = lines
    assert message == "epoch line" and screen.endswith("\r")  # the bar was cleared first
    assert stream.getvalue()[len(screen) :].startswith("\r100%")  # and redrawn after
    before_close = stream.getvalue()
    bar.close()
    assert "\n" not in before_close and "\r" in before_close
    assert "50/50" in stream.getvalue() and "it/s" in stream.getvalue()


def test_progress_in_jupyter_uses_tqdm_even_without_a_terminal(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", sys)  # what tqdm.auto looks for
    stream = io.StringIO()
    bar = Progress(10, 0, stream)
    bar.update(10)
    bar.close()
    assert bar.bar is not None and "10/10" in stream.getvalue()


def test_progress_in_a_real_jupyter_kernel():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    repo = str(Path(__file__).resolve().parents[1])
    code = (
        f"import sys; sys.path.insert(0, {repo!r})\n"
        "import numpy as np\n"
        "from fastnum.train import TrainConfig, train\n"
        "x = np.random.default_rng(0).random((60, 4)); t = (x[:, 0] > 0.5).astype(int)\n"
        "config = TrainConfig(grad='backprop', iters=30, batch_size=6, backend='numpy')\n"
        "result = train(config, ((x, t), (x, t)))\n"
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(notebook, timeout=300).execute()  # raises if the cell fails
    outputs = notebook.cells[0].outputs
    err = "".join(o["text"] for o in outputs if o.get("name") == "stderr")
    out = "".join(o["text"] for o in outputs if o.get("name") == "stdout")
    widget = any(o["output_type"] == "display_data" for o in outputs)  # with ipywidgets
    assert widget or ("30/30" in err and "\r" in err)  # else a text bar redrawn in place
    assert "|#" not in err  # not the line-per-tenth form of log files
    assert out.count("train acc, test acc |") == 3


def test_progress_in_a_log_prints_a_line_per_tenth(blobs, capsys):
    train(small(iters=200), blobs, log=None)  # pytest's stderr is not a terminal
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and "\r" not in "".join(lines)
    assert lines[0].startswith(" 10%|#") and "20/200 [" in lines[0] and "it/s]" in lines[0]
    assert lines[-1].startswith("100%|##########| 200/200 [")


def test_progress_after_resume_counts_from_the_checkpoint():
    stream = io.StringIO()
    bar = Progress(100, 40, stream)
    bar.update(45)
    bar.update(50)
    assert stream.getvalue().startswith(" 50%|") and "50/100" in stream.getvalue()


# --- optimizers (chapter 6) -------------------------------------------------------------------

OPTIMIZER_NAMES = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")


@pytest.mark.parametrize("grad", ["backprop", "numerical"])
def test_the_default_is_the_plain_sgd_loop_bit_for_bit(blobs, grad):
    """Today's loop, written out: W -= lr * grad on the sampled batch, loss after the update."""
    from fastnum.network import TwoLayerNet

    assert TrainConfig().optimizer == "sgd" and TrainConfig().lr == 0.1
    config = small(grad=grad, iters=25)
    comp = quiet_train(config, blobs)
    (x, t), _ = blobs
    x, t = x.astype(np.float64), t.astype(np.int64)
    net = TwoLayerNet(6, 5, 4, weight_init_std=0.5, seed=0, backend="numpy")
    rng = np.random.default_rng(np.random.SeedSequence(0).spawn(1)[0])
    ref_loss = []
    for _ in range(config.iters):
        idx = rng.choice(len(x), config.batch_size)
        if grad == "backprop":
            grads = net.gradient(x[idx], t[idx])
        else:
            grads = net.numerical_gradient(x[idx], t[idx])
        for k, g in grads.items():
            net.params[k] -= config.lr * g
        ref_loss.append(float(net.loss(x[idx], t[idx])))
    assert comp.history["loss"] == ref_loss
    for k in PARAMS:
        assert np.array_equal(comp.params[k], net.params[k]), k


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_resume_is_bit_identical_for_every_optimizer(blobs, tmp_path, name):
    config = small(optimizer=name, lr=0.05, iters=45, batch_size=20)  # 15 iterations per epoch
    full = quiet_train(config, blobs, tmp_path / "full")
    with pytest.raises(SimulatedInterruptError):
        quiet_train(config, blobs, tmp_path / "cut", callback=stop_at_epoch(2))
    with np.load(tmp_path / "cut" / "checkpoint.npz") as z:
        saved = sorted(k for k in z.files if k.startswith("optimizer."))
    slots = {"sgd": [], "adam": ["m", "v"], "adagrad": ["h"], "rmsprop": ["h"]}.get(name, ["v"])
    assert saved == sorted(f"optimizer.{s}.{k}" for s in slots for k in PARAMS)
    resumed = quiet_train(config, blobs, tmp_path / "cut", resume=True)
    assert_same_run(full, resumed)
    assert resumed.optimizer.iterations == full.optimizer.iterations == 45
    for slot, arrays in full.optimizer.state.items():
        for k, a in arrays.items():
            assert np.array_equal(resumed.optimizer.state[slot][k], a), (slot, k)
    # The state matters: a resume that restarted it from zeros would differ.
    if name != "sgd":
        assert not np.array_equal(
            full.params["W1"], quiet_train(small(lr=0.05), blobs).params["W1"]
        )


@pytest.mark.numba
def test_adam_resume_is_bit_identical_with_numba(blobs, tmp_path):
    config = small(grad="numerical", iters=25, backend="numba", optimizer="adam", lr=0.05)
    full = quiet_train(config, blobs)
    with pytest.raises(SimulatedInterruptError):
        quiet_train(config, blobs, tmp_path, callback=stop_at_epoch(1))
    assert_same_run(full, quiet_train(config, blobs, tmp_path, resume=True))


def test_resume_with_another_optimizer_lists_the_differences(blobs, tmp_path):
    quiet_train(small(optimizer="adam", lr=None), blobs, tmp_path)
    with pytest.raises(CheckpointError, match="cannot resume") as info:
        quiet_train(small(), blobs, tmp_path, resume=True)
    message = str(info.value)
    for diff in ("optimizer='adam' there, 'sgd' now", "lr=0.001 there, 1.0 now", "beta1=0.9 there"):
        assert diff in message
    with pytest.raises(CheckpointError, match="beta2=0.999 there, 0.99 now"):
        quiet_train(small(optimizer="adam", lr=None, beta2=0.99), blobs, tmp_path, resume=True)


def test_a_checkpoint_from_before_optimizers_resumes(blobs, tmp_path):
    from fastnum.rundir import RunFolder

    config = small(iters=45, batch_size=20)
    full = quiet_train(config, blobs)
    with pytest.raises(SimulatedInterruptError):
        quiet_train(config, blobs, tmp_path, callback=stop_at_epoch(2))
    folder = RunFolder(tmp_path)  # rewrite it as the trainer wrote it before chapter 6
    meta, arrays = folder.read_checkpoint(PARAMS)
    del meta["optimizer"], meta["checksum"], meta["format"]
    for key in ("optimizer", "momentum", "decay_rate", "beta1", "beta2"):
        del meta["config"][key]
    folder.write_checkpoint(meta, arrays.pop("loss"), arrays)
    assert_same_run(full, quiet_train(config, blobs, tmp_path, resume=True))


def test_a_checkpoint_whose_optimizer_state_disagrees_is_refused(blobs, tmp_path):
    from fastnum.rundir import RunFolder

    config = small(optimizer="momentum", lr=0.05)
    quiet_train(config, blobs, tmp_path)
    folder = RunFolder(tmp_path)
    meta, arrays = folder.read_checkpoint(PARAMS)
    meta["optimizer"]["iterations"] = 7
    folder.write_checkpoint(meta, arrays.pop("loss"), arrays)  # a valid checksum, wrong state
    with pytest.raises(CheckpointError, match="its optimizer state: 7 optimizer steps"):
        quiet_train(config, blobs, tmp_path, resume=True)


def test_config_takes_the_books_defaults_of_the_chosen_optimizer():
    adam = TrainConfig(optimizer="adam")
    assert (adam.lr, adam.beta1, adam.beta2, adam.momentum, adam.decay_rate) == (
        0.001,
        0.9,
        0.999,
        None,
        None,
    )
    assert TrainConfig(optimizer="rmsprop").decay_rate == 0.99
    assert TrainConfig(optimizer="nesterov").momentum == 0.9
    config = TrainConfig(optimizer="momentum", lr=np.float32(0.5), momentum=np.float64(0.25))
    assert json.loads(json.dumps(config.to_dict()))["momentum"] == 0.25
    assert repr(config.make_optimizer()) == "Momentum(lr=0.5, momentum=0.25)"
    assert config.make_optimizer() is not config.make_optimizer()  # fresh state each time


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"optimizer": "adadelta"}, ValueError, "optimizer='adadelta' is unknown"),
        (
            {"optimizer": "adam", "momentum": 0.9},
            ValueError,
            "momentum=0.9 is not used by optimizer='adam', which takes lr, beta1, beta2; "
            "drop it, or train with Momentum or Nesterov.",
        ),
        ({"beta1": 0.9}, ValueError, "beta1=0.9 is not used by optimizer='sgd'"),
        (
            {"optimizer": "momentum", "momentum": 1.0},
            ValueError,
            "momentum=1.0 must be a number in",
        ),
        ({"optimizer": "rmsprop", "decay_rate": "0.9"}, TypeError, "decay_rate='0.9' must be"),
        ({"optimizer": "adam", "lr": 0.0}, ValueError, "lr=0.0 must be a finite number > 0; the "),
    ],
)
def test_optimizer_settings_are_checked_by_name(kwargs, error, words):
    with pytest.raises(error) as info:
        TrainConfig(**kwargs)
    assert words in str(info.value)


def test_adam_and_he_initialisation_train_a_relu_net(blobs):
    config = small(
        optimizer="adam",
        lr=0.01,
        iters=100,
        hidden_sizes=(8, 8),
        activation="relu",
        weight_init_std="he",
    )
    result = quiet_train(config, blobs)
    assert result.final_test_acc > 0.9
    assert json.loads(json.dumps(result.config.to_dict()))["weight_init_std"] == "he"


# --- initialisation by name -------------------------------------------------------------------


@pytest.mark.parametrize("name, gain", [("relu", 2), ("He", 2), ("sigmoid", 1), ("xavier", 1)])
def test_named_initialisation_scales_each_layer_by_its_fan_in(name, gain):
    from fastnum.multilayer import MultiLayerNet
    from fastnum.train import build_net

    sizes = (6, 9, 5, 4)
    unit = MultiLayerNet(6, sizes[1:-1], 4, weight_init_std=1.0, seed=2, backend="numpy")
    named = MultiLayerNet(6, sizes[1:-1], 4, weight_init_std=name, seed=2, backend="numpy")
    for k, n_in in enumerate(sizes[:-1], start=1):
        # The same draws, each layer's scaled by sqrt(gain / n_in) as the book's net does.
        assert np.array_equal(named.params[f"W{k}"], unit.params[f"W{k}"] * math.sqrt(gain / n_in))
        assert not named.params[f"b{k}"].any()
    config = TrainConfig(weight_init_std=name, hidden_sizes=sizes[1:-1], seed=2, backend="numpy")
    assert config.weight_init_std == name.lower()
    trained = build_net(config, 6, 4)
    for k in named.params:
        assert np.array_equal(trained.params[k], named.params[k]), k
    # The book's TwoLayerNet takes only a number; named, it gets the same per-layer weights.
    two = build_net(TrainConfig(weight_init_std=name, hidden_size=9, backend="numpy"), 6, 4)
    one_layer = MultiLayerNet(6, [9], 4, weight_init_std=name, seed=0, backend="numpy")
    assert type(two).__name__ == "TwoLayerNet"
    for k in PARAMS:
        assert np.array_equal(two.params[k], one_layer.params[k]), k


def test_unknown_initialisation_names_and_the_conv_net_are_refused():
    from fastnum.multilayer import MultiLayerNet

    for make in (
        lambda: TrainConfig(weight_init_std="gaussian"),
        lambda: MultiLayerNet(6, [5], 4, weight_init_std="gaussian"),
    ):
        with pytest.raises(TypeError, match="weight_init_std='gaussian' must be a number such as"):
            make()
    with pytest.raises(ValueError, match="weight_init_std='he' is for the dense networks"):
        TrainConfig(net="simpleconv", weight_init_std="he")


def test_cli_passes_the_optimizer_and_the_initialisation(capsys, tmp_path, monkeypatch):
    import fastnum.train
    from fastnum.cli import main

    seen = []

    def fake_train(config, **kw):
        seen.append(config)
        raise KeyboardInterrupt  # enough: the config is what is tested

    monkeypatch.setattr(fastnum.train, "train", fake_train)
    argv = ["train", "-q", "--out", str(tmp_path), "--backend", "numpy"]
    more = ["--optimizer", "adam", "--beta2", "0.99", "--hidden-sizes", "5", "--activation"]
    assert main([*argv, *more, "relu", "--weight-init-std", "He"]) == 130
    assert main([*argv, "--weight-init-std", "0.05"]) == 130
    assert main([*argv, "--optimizer", "rmsprop", "--lr", "0.002"]) == 130
    adam, sgd, rmsprop = seen
    assert (adam.optimizer, adam.lr, adam.beta1, adam.beta2) == ("adam", 0.001, 0.9, 0.99)
    assert adam.weight_init_std == "he" and adam.hidden_sizes == (5,)
    assert (sgd.optimizer, sgd.lr, sgd.weight_init_std) == ("sgd", 0.1, 0.05)
    assert (rmsprop.lr, rmsprop.decay_rate) == (0.002, 0.99)
    capsys.readouterr()
    assert main([*argv, "--optimizer", "adam", "--momentum", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "fastnum train: error: --momentum=0.5 is not used by --optimizer='adam', which takes "
        "--lr, --beta1, --beta2; drop it, or train with Momentum or Nesterov."
    )
    assert main([*argv, "--optimizer", "momentum", "--momentum", "1"]) == 2
    assert "--momentum=1.0 must be a number in [0, 1); the book uses --momentum=0.9." in (
        capsys.readouterr().err
    )


# --- batch norm, dropout, weight decay (chapter 6) ---------------------------------------------

GRAD_NAMES = ("numerical", "forward", "spsa", "backprop")


def chapter6(**kw):
    """small() with a two-hidden-layer relu MultiLayerNet, batch norm, dropout and weight decay."""
    base = dict(
        hidden_sizes=(5, 4),
        activation="relu",
        use_batchnorm=True,
        dropout_ratio=0.3,
        weight_decay_lambda=0.05,
        lr=0.3,
        iters=32,
    )
    return small(**{**base, **kw})


def assert_same_chapter6_run(a, b):
    assert a.params.keys() == b.params.keys()
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]), k
    assert np.array_equal(a.history["loss"], b.history["loss"])
    assert a.history == b.history
    assert a.net.running_stats.keys() == b.net.running_stats.keys()
    for k, stats in a.net.running_stats.items():
        for x, y in zip(stats, b.net.running_stats[k], strict=True):
            assert np.array_equal(x, y), k
    assert (a.final_train_acc, a.final_test_acc) == (b.final_train_acc, b.final_test_acc)


@pytest.mark.parametrize(
    "grad, backend",
    [
        *[(g, "numpy") for g in GRAD_NAMES],
        pytest.param("numerical", "numba", marks=pytest.mark.numba),
        pytest.param("spsa", "numba", marks=pytest.mark.numba),
    ],
)
def test_chapter6_resume_is_bit_identical(blobs, tmp_path, grad, backend):
    """N steps straight equal N/2 steps, then N/2 more resumed from the checkpoint."""
    extra = {"directions": 3} if grad == "spsa" else {}
    config = chapter6(grad=grad, backend=backend, **extra)
    full = quiet_train(config, blobs)
    half = dataclasses.replace(config, iters=config.iters // 2)
    quiet_train(half, blobs, tmp_path)
    with np.load(tmp_path / "checkpoint.npz") as z:
        saved = sorted(k for k in z.files if k.startswith("batchnorm."))
        meta = json.loads(str(z["meta"]))
    assert saved == sorted(
        f"batchnorm.{s}.{k}" for s in ("running_mean", "running_var") for k in (1, 2)
    )
    assert meta["network"]["dropout_rng"]["bit_generator"] == "PCG64"
    resumed = quiet_train(config, blobs, tmp_path, resume=True)
    assert_same_chapter6_run(full, resumed)
    # The layers were really there: masks dropped units, the statistics moved.
    assert any((m == 0).any() for m in full.net.dropout_masks.values())
    assert all(stats[1].any() for stats in full.net.running_stats.values())


@pytest.mark.parametrize("grad, atol", [("numerical", 1e-6), ("forward", 1e-3)])
def test_every_estimator_trains_the_same_chapter6_step(blobs, grad, atol):
    """Same seed: the same dropout masks, weight decay and batch norm for every --grad."""
    # Sigmoid: with relu, a unit that batch norm puts within h of its corner makes the
    # difference quotient differ from the derivative by far more than its rounding.
    exact = quiet_train(chapter6(grad="backprop", iters=12, activation="sigmoid"), blobs)
    other = quiet_train(chapter6(grad=grad, iters=12, activation="sigmoid"), blobs)
    for k in exact.params:
        np.testing.assert_allclose(other.params[k], exact.params[k], rtol=0, atol=atol)
    np.testing.assert_allclose(other.history["loss"], exact.history["loss"], rtol=0, atol=atol)
    for k, (mean, var) in exact.net.running_stats.items():
        np.testing.assert_allclose(other.net.running_stats[k][0], mean, rtol=0, atol=atol)
        np.testing.assert_allclose(other.net.running_stats[k][1], var, rtol=0, atol=atol)
    # Each option changes the run: weight decay, dropout and batch norm are not ignored.
    for off in ({"weight_decay_lambda": 0.0}, {"dropout_ratio": None}, {"use_batchnorm": False}):
        changed = quiet_train(chapter6(grad=grad, iters=12, activation="sigmoid", **off), blobs)
        assert not np.allclose(changed.params["W1"], other.params["W1"], rtol=0, atol=1e-3), off


def test_chapter6_options_build_the_books_multilayer_net():
    from fastnum.multilayer import MultiLayerNet
    from fastnum.train import build_net

    net = build_net(chapter6(), 6, 4)
    book = MultiLayerNet(
        6,
        (5, 4),
        4,
        activation="relu",
        weight_init_std=0.5,
        seed=0,
        backend="numpy",
        use_batchnorm=True,
        use_dropout=True,
        dropout_ratio=0.3,
        weight_decay_lambda=0.05,
    )
    assert (net.use_batchnorm, net.use_dropout, net.dropout_ratio) == (True, True, 0.3)
    assert net.weight_decay_lambda == 0.05 and net.stack == book.stack
    for k in book.params:
        assert np.array_equal(net.params[k], book.params[k]), k
    plain = build_net(chapter6(use_batchnorm=False, dropout_ratio=None), 6, 4)
    assert not plain.use_dropout and not plain.use_batchnorm


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"dropout_ratio": 1.5}, ValueError, r"dropout_ratio=1.5 must be below 1"),
        ({"dropout_ratio": -0.1}, ValueError, r"dropout_ratio=-0.1 must be a finite number >= 0"),
        ({"dropout_ratio": "half"}, TypeError, r"dropout_ratio='half' must be a number"),
        ({"weight_decay_lambda": -1.0}, ValueError, r"weight_decay_lambda=-1.0 must be a finite"),
        ({"use_batchnorm": 1}, TypeError, r"use_batchnorm=1 must be True or False"),
        (
            {"hidden_sizes": None, "use_batchnorm": True},
            ValueError,
            r"use_batchnorm needs hidden_sizes: the book's TwoLayerNet has no batch norm.*"
            r"hidden_sizes=\(50,\)",
        ),
        (
            {"hidden_sizes": None, "weight_decay_lambda": 0.1},
            ValueError,
            r"weight_decay_lambda needs hidden_sizes",
        ),
        (
            {"net": "simpleconv", "hidden_sizes": None, "dropout_ratio": 0.5},
            ValueError,
            r"dropout_ratio is for net='dense' with hidden_sizes .*SimpleConvNet has no",
        ),
    ],
)
def test_chapter6_settings_are_checked_by_name(kwargs, error, match):
    base = dict(grad="backprop", hidden_sizes=(5,), activation="sigmoid", backend="numpy")
    with pytest.raises(error, match=match):
        TrainConfig(**{**base, **kwargs})


def test_cli_passes_the_chapter6_options(capsys, tmp_path, monkeypatch):
    import fastnum.train
    from fastnum.cli import main

    seen = []

    def fake_train(config, **kw):
        seen.append(config)
        raise KeyboardInterrupt  # enough: the config is what is tested

    monkeypatch.setattr(fastnum.train, "train", fake_train)
    argv = ["train", "-q", "--out", str(tmp_path), "--backend", "numpy"]
    ch6 = ["--hidden-sizes", "5,4", "--batchnorm", "--dropout", "0.2", "--weight-decay", "0.1"]
    assert main([*argv, *ch6, "--weight-init", "he", "--grad", "spsa"]) == 130
    assert main(argv) == 130
    on, off = seen
    assert (on.use_batchnorm, on.dropout_ratio, on.weight_decay_lambda) == (True, 0.2, 0.1)
    assert on.weight_init_std == "he" and on.grad == "spsa"
    assert (off.use_batchnorm, off.dropout_ratio, off.weight_decay_lambda) == (False, None, 0.0)
    capsys.readouterr()
    assert main([*argv, "--hidden-sizes", "5", "--dropout", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "fastnum train: error: --dropout=1.5 must be below 1 (it is the probability of "
        "dropping a unit: 1 drops them all); the book uses 0.5."
    )
    assert main([*argv, "--batchnorm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastnum train: error: --batchnorm needs --hidden-sizes: the book's")
    assert err.endswith("pass e.g. --hidden-sizes 50 (the same network as a MultiLayerNet).")
    assert main([*argv, "--net", "simpleconv", "--weight-decay", "0.1"]) == 2
    assert "--weight-decay is for --net dense with --hidden-sizes" in capsys.readouterr().err


def _rewrite_as_format_2(path):
    """The checkpoint as the trainer wrote it before chapter 6: no such settings or state."""
    from fastnum import checkpoint

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    del meta["network"]
    for key in ("use_batchnorm", "dropout_ratio", "weight_decay_lambda"):
        del meta["config"][key]
    meta["format"] = 2
    meta["checksum"] = checkpoint.checksum(meta, arrays)
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    return meta, arrays


def test_a_checkpoint_from_before_chapter6_resumes(blobs, tmp_path):
    config = small(iters=30, optimizer="momentum", lr=0.2)
    full = quiet_train(config, blobs)
    quiet_train(dataclasses.replace(config, iters=15), blobs, tmp_path)
    _rewrite_as_format_2(tmp_path / "checkpoint.npz")
    assert_same_run(full, quiet_train(config, blobs, tmp_path, resume=True))
    # ... and resuming it with a chapter 6 option is another run, said so.
    _rewrite_as_format_2(tmp_path / "checkpoint.npz")
    with pytest.raises(CheckpointError, match="weight_decay_lambda=0.0 there, 0.1 now"):
        quiet_train(
            dataclasses.replace(config, hidden_sizes=(5,), weight_decay_lambda=0.1),
            blobs,
            tmp_path,
            resume=True,
        )


def test_a_checkpoint_without_its_dropout_state_or_of_format_1_is_refused(blobs, tmp_path):
    from fastnum import checkpoint

    config = chapter6(iters=12)
    quiet_train(config, blobs, tmp_path)
    path = tmp_path / "checkpoint.npz"
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    del meta["network"]["dropout_rng"]
    meta["checksum"] = checkpoint.checksum(meta, arrays)  # signed: only the content is wrong
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(CheckpointError, match="its batch norm or dropout state: KeyError"):
        quiet_train(config, blobs, tmp_path, resume=True)
    meta["format"] = 1
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(CheckpointError, match="has checkpoint format 1; this fastnum reads"):
        quiet_train(config, blobs, tmp_path, resume=True)


# --- real MNIST -------------------------------------------------------------------------------


def test_backprop_on_mnist_subset_beats_chance(mnist):
    config = TrainConfig(
        grad="backprop",
        iters=200,
        lr=1.0,
        hidden_size=20,
        train_size=1000,
        test_size=500,
        backend="numpy",
    )
    result = quiet_train(config, mnist)
    assert result.history["test_acc"][0] < 0.3  # starts near chance (0.1)
    assert result.final_test_acc > 0.6 and result.final_train_acc > 0.7


def test_numerical_training_on_mnist_matches_backprop(mnist):
    config = dict(
        iters=3, batch_size=10, hidden_size=3, train_size=100, test_size=100, backend="numpy"
    )
    num, bp = (quiet_train(TrainConfig(grad=g, **config), mnist) for g in ("numerical", "backprop"))
    for k in PARAMS:
        np.testing.assert_allclose(num.params[k], bp.params[k], rtol=0, atol=1e-6)


def test_train_loads_mnist_itself(mnist_source_dir, tmp_path):
    config = TrainConfig(
        grad="backprop", iters=5, train_size=200, test_size=100, hidden_size=5, backend="numpy"
    )
    result = train(config, out_dir=tmp_path, data_dir=mnist_source_dir, progress=False, log=None)
    doc = json.loads((tmp_path / "history.json").read_text())
    assert doc["data"]["n_features"] == 784 and doc["data"]["n_classes"] == 10
    assert result.params["W2"].shape == (5, 10)


# --- the chapter 8 DeepConvNet ---------------------------------------------------------------


def _tiny_images(n=12, seed=0):
    """Random 12x12 one-channel images with labels in 0..3 (the net's smallest input)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 12, 12)).astype(np.float32)
    t = rng.integers(0, 4, n).astype(np.uint8)
    return (x[:8], t[:8]), (x[8:], t[8:])


# The numerical gradient of ~60,000 parameters needs the compiled engine (the NumPy
# oracle takes minutes per step).
@pytest.mark.parametrize("grad", ["backprop", pytest.param("numerical", marks=pytest.mark.numba)])
def test_deepconv_trains_and_resumes_bit_identically(tmp_path, grad):
    config = TrainConfig(
        net="deepconv", grad=grad, iters=5, batch_size=4, lr=0.01, dropout_ratio=0.3, seed=1
    )
    data = _tiny_images()
    ref_run = quiet_train(config, data)
    assert type(ref_run.net).__name__ == "DeepConvNet" and ref_run.net.dropout_ratio == 0.3
    with pytest.raises(SimulatedInterruptError):
        quiet_train(config, data, tmp_path, callback=stop_at_epoch(1))
    assert_same_run(ref_run, quiet_train(config, data, tmp_path, resume=True))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"use_batchnorm": True}, "use_batchnorm is for net='dense'"),
        ({"weight_decay_lambda": 0.1}, "weight_decay_lambda is for net='dense'"),
        ({"weight_init_std": 0.1}, "He initialisation"),
        ({"hidden_sizes": (5,)}, "hidden_sizes is for net='dense'"),
    ],
)
def test_deepconv_settings_it_does_not_take_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(net="deepconv", **kwargs)
