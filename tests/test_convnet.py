"""SimpleConvNet: the NumPy oracle against backprop, the validation, and the engine against both.

The oracle's central differences are checked against backprop (they differ by
the book's 1e-7 log guard, ~1e-6) at tiny, odd geometries; the engine must then
match the oracle's numerical gradient to 1e-9 absolute.  Engine tests force
``backend = "numba"``, which runs the engine as plain Python where numba is
missing or disabled, so only the thread-count and book-size tests need numba compiled.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastnum import SimpleConvNet, reference
from fastnum._jit import HAVE_NUMBA, JIT_ENABLED, get_num_threads, set_num_threads
from fastnum.convnet import ReferenceLayeredNet, ReferenceSimpleConvNet, param_names
from tests._backends import on_kernels
from tests._stacks import BACKPROP_STACKS, max_abs_diff, problem
from tests._training import SimulatedInterruptError, quiet_train, stop_at_epoch

TOL = 1e-9  # engine vs the oracle's numerical gradient, absolute
GUARD_TOL = 2e-6  # numerical (guarded loss) vs backprop (unguarded), absolute, at O(0.1) weights
UNGUARDED_TOL = 1e-7  # the same with the guard removed: central differences' own error
STRATEGIES = ("delta", "full")

# (input_dim, conv_param): pad 1 and 2, stride 2, filters 3 and 4, 3 channels, non-square
GEOMETRIES = [
    ((1, 6, 6), {"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1}),
    ((3, 6, 4), {"filter_num": 2, "filter_size": 3, "pad": 1, "stride": 1}),
    ((2, 5, 7), {"filter_num": 3, "filter_size": 4, "pad": 2, "stride": 1}),
    ((3, 7, 11), {"filter_num": 2, "filter_size": 3, "pad": 1, "stride": 2}),
    ((1, 8, 12), {"filter_num": 2, "filter_size": 4, "pad": 1, "stride": 2}),
]


def small_net(input_dim, conv_param, batch=3, seed=0, backend="numpy", weight_init_std=0.5):
    """A net with O(1) weights and non-zero biases, sparse inputs, and labels."""
    net = SimpleConvNet(
        input_dim,
        conv_param,
        hidden_size=4,
        output_size=3,
        weight_init_std=weight_init_std,
        seed=seed,
        backend=backend,
    )
    rng = np.random.default_rng(seed + 100)
    for k in ("b1", "b2", "b3"):
        net.params[k] = rng.normal(0, 0.3, net.params[k].shape)
    x = rng.random((batch, *input_dim))
    x[rng.random(x.shape) < 0.4] = 0.0  # zeros, like MNIST's background
    return net, x, rng.integers(0, 3, batch)


def oracle_gradient(net, x, t):
    return ReferenceLayeredNet.numerical_gradient(net, x, t)


# ----------------------------------------------------------------------------- the oracle


def test_the_book_network_shapes_stack_and_seeding():
    net = SimpleConvNet(seed=1, backend="numpy")
    shapes = {k: v.shape for k, v in net.params.items()}
    assert shapes == {
        "W1": (30, 1, 5, 5),
        "b1": (30,),
        "W2": (4320, 100),
        "b2": (100,),
        "W3": (100, 10),
        "b3": (10,),
    }
    assert sum(v.size for v in net.params.values()) == 433_890
    assert net.stack == (
        ("conv", "W1", "b1", 1, 0),
        ("relu",),
        ("pool", 2, 2, 2, 0),
        ("affine", "W2", "b2"),
        ("relu",),
        ("affine", "W3", "b3"),
    )
    assert list(net.layers) == ["Conv1", "Relu1", "Pool1", "Affine1", "Relu2", "Affine2"]
    assert 0.009 < net.params["W2"].std() < 0.011 and not net.params["b1"].any()
    again = ReferenceSimpleConvNet(seed=1)
    assert all(np.array_equal(again.params[k], net.params[k]) for k in net.params)


@pytest.mark.parametrize("input_dim, conv_param", GEOMETRIES)
def test_numerical_gradient_matches_backprop(input_dim, conv_param, monkeypatch):
    net, x, t = small_net(input_dim, conv_param, weight_init_std=0.1)
    num, bp = net.numerical_gradient(x, t), net.gradient(x, t)
    assert all(num[k].shape == net.params[k].shape for k in num)
    assert np.abs(bp["W1"]).max() > 1e-4  # the check is not vacuous
    assert max_abs_diff(num, bp) <= GUARD_TOL
    # Without the book's log guard the two agree to the central difference's own error.
    monkeypatch.setattr(reference, "LOG_GUARD", 0.0)
    net, x, t = small_net(input_dim, conv_param)
    assert max_abs_diff(net.numerical_gradient(x, t), net.gradient(x, t)) <= UNGUARDED_TOL


@pytest.mark.parametrize("name", BACKPROP_STACKS)
def test_general_stacks_numerical_gradient_matches_backprop(name, monkeypatch):
    net, _, x, t = problem(name, scale=0.1)
    num, bp = ReferenceLayeredNet.numerical_gradient(net, x, t), net.gradient(x, t)
    assert list(num) == list(param_names(net.stack))
    assert max_abs_diff(num, bp) <= GUARD_TOL
    monkeypatch.setattr(reference, "LOG_GUARD", 0.0)
    net, _, x, t = problem(name)
    num, bp = ReferenceLayeredNet.numerical_gradient(net, x, t), net.gradient(x, t)
    assert np.abs(bp["W1"]).max() > 1e-4  # the check is not vacuous
    assert max_abs_diff(num, bp) <= UNGUARDED_TOL


def test_numpy_backend_is_the_oracle_and_leaves_parameters_untouched():
    net, x, t = small_net(*GEOMETRIES[1])
    before = {k: v.copy() for k, v in net.params.items()}
    assert max_abs_diff(net.numerical_gradient(x, t), oracle_gradient(net, x, t)) == 0.0
    assert all(np.array_equal(before[k], net.params[k]) for k in before)
    assert net.loss(x, t) == ReferenceLayeredNet.loss(net, x, t)
    assert net.accuracy(x, np.eye(3)[t]) == net.accuracy(x, t)


def test_numerical_gradient_at_samples_the_full_gradient():
    net, x, t = small_net(*GEOMETRIES[3])
    full = net.numerical_gradient(x, t)
    rng = np.random.default_rng(0)
    indices = {k: rng.choice(v.size, min(5, v.size), replace=False) for k, v in net.params.items()}
    sampled = net.numerical_gradient_at(x, t, indices)
    assert max_abs_diff(sampled, {k: full[k].ravel()[i] for k, i in indices.items()}) == 0.0


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"input_dim": (1, 28, 29)},
            r"input of 29: \(29 \+ 2\*0 - 5\) / 1.*convolution|"
            r"output 24x25 .* cannot be max-pooled",
        ),
        ({"conv_param": {"filter_size": 5, "stride": 2}}, r"\(28 \+ 2\*0 - 5\) / 2"),
        ({"conv_param": {"filter_size": 4}}, r"output 25x25 of input_dim=\(1, 28, 28\)"),
        ({"conv_param": {"filter_size": 30}}, r"\(28 \+ 2\*0 - 30\)"),
        ({"conv_param": {"filters": 3}}, r"unknown key\(s\) \['filters'\]"),
        ({"conv_param": {"pad": -1}}, r"conv_param\['pad'\]=-1 must be at least 0"),
        ({"conv_param": {"stride": 1.5}}, r"conv_param\['stride'\]=1.5"),
        ({"input_dim": (28, 28)}, r"\(channels, height, width\)"),
        ({"input_dim": (1, 0, 28)}, r"input_dim\[1\]=0"),
        ({"hidden_size": 0}, "hidden_size=0"),
        ({"output_size": 1}, "output_size=1 must be at least 2"),
        ({"weight_init_std": float("nan")}, "weight_init_std=nan"),
        ({"backend": "gpu"}, r"backend='gpu' .*is unknown"),
        ({"strategy": "fast"}, "strategy='fast' is unknown"),
    ],
)
def test_bad_construction_is_refused_with_the_sizes(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        SimpleConvNet(**kwargs)


def test_bad_inputs_are_refused_with_the_fix():
    net, x, t = small_net(*GEOMETRIES[1])
    with pytest.raises(ValueError, match=r"shape \(3, 72\).*\(batch, 3, 6, 4\).*flatten=False"):
        net.loss(x.reshape(3, -1), t)
    with pytest.raises(ValueError, match=r"\(batch, 3, 6, 4\)"):
        net.predict(x[0])
    with pytest.raises(ValueError, match="empty batch"):
        net.predict(x[:0])
    bad = x.copy()
    bad[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite value nan at index \(1, 2, 3, 0\)"):
        net.numerical_gradient(bad, t)
    with pytest.raises(TypeError, match="dtype object"):
        net.predict(x.astype(object))
    with pytest.raises(ValueError, match="label 3, outside 0..2"):
        net.gradient(x, [0, 1, 3])
    with pytest.raises(ValueError, match="h=0"):
        net.numerical_gradient(x, t, h=0)
    with pytest.raises(ValueError, match=r"indices\['W1'\] must be a 1-D integer array.*0..53"):
        net.numerical_gradient_at(x, t, {"W1": [54]})
    with pytest.raises(KeyError, match="'W9'"):
        net.numerical_gradient_at(x, t, {"W9": [0]})


def test_replaced_parameters_are_checked_on_every_public_call():
    net, x, t = small_net(*GEOMETRIES[0])
    good = net.params["W2"]
    net.params["W2"] = good[:-1]
    for call in (
        lambda: net.loss(x, t),
        lambda: net.numerical_gradient(x, t),
        lambda: net.predict(x),
        lambda: net.gradient(x, t),
    ):
        with pytest.raises(ValueError, match=r"params\['W2'\] has shape \(7, 4\).*\(8, 4\)"):
            call()
    net.params["W2"] = good.astype(np.int64)
    with pytest.raises(ValueError, match=r"params\['W2'\].*dtype int64"):
        net.loss(x, t)
    net.params["W2"] = np.where(good == good.flat[0], np.nan, good)
    with pytest.raises(ValueError, match=r"params\['W2'\] contains a non-finite value nan"):
        net.numerical_gradient(x, t)


def test_float32_and_one_hot_inputs_give_the_float64_result():
    net, x, t = small_net(*GEOMETRIES[2])
    x32 = x.astype(np.float32)
    base = net.numerical_gradient(x32.astype(np.float64), t)
    g = net.numerical_gradient(x32, np.eye(3)[t])
    assert all(np.array_equal(g[k], base[k]) for k in base)


# ----------------------------------------------------------------------------- the engine


@pytest.mark.parametrize("input_dim, conv_param", GEOMETRIES)
def test_engine_matches_the_oracle_on_every_parameter(input_dim, conv_param):
    net, x, t = small_net(input_dim, conv_param)
    ref_ = oracle_gradient(net, x, t)
    ref_loss, ref_probs = ReferenceLayeredNet.loss(net, x, t), ReferenceLayeredNet.predict(net, x)
    on_kernels(net)
    for strategy in STRATEGIES:
        comp_ = net.numerical_gradient(x, t, strategy=strategy)
        assert all(comp_[k].shape == net.params[k].shape for k in comp_)
        assert max_abs_diff(comp_, ref_) <= TOL, strategy
    assert net.loss(x, t) == pytest.approx(ref_loss, rel=1e-12, abs=0)
    assert np.allclose(net.predict(x), ref_probs, rtol=1e-12, atol=0)


def test_engine_sampled_gradient_matches_its_full_gradient():
    net, x, t = small_net(*GEOMETRIES[4])
    on_kernels(net)
    rng = np.random.default_rng(1)
    indices = {k: rng.choice(v.size, min(4, v.size), replace=False) for k, v in net.params.items()}
    for strategy in STRATEGIES:
        full = net.numerical_gradient(x, t, strategy=strategy)
        sampled = net.numerical_gradient_at(x, t, indices, strategy=strategy)
        assert max_abs_diff(sampled, {k: full[k].ravel()[i] for k, i in indices.items()}) <= TOL


def _mnist_images(folder, n):
    from fastnum.data import load_mnist

    _, (x, t) = load_mnist(flatten=False, data_dir=folder)
    return x[:n], t[:n].astype(np.int64)


def test_engine_on_real_mnist_small_network_every_parameter(mnist_source_dir):
    n, filters = (10, 3) if JIT_ENABLED else (3, 2)
    x, t = _mnist_images(mnist_source_dir, n)
    assert x.shape == (n, 1, 28, 28)
    x = x[:, :, 7:21, 7:21]  # the centre 14x14: every parameter stays quick in the oracle
    assert 0.3 < np.mean(x == 0) < 0.9  # real, sparse pixels
    net = SimpleConvNet(
        (1, 14, 14),
        {"filter_num": filters, "filter_size": 5},
        hidden_size=4,
        weight_init_std=0.1,
        seed=3,
        backend="numpy",
    )
    x64 = x.astype(np.float64)
    ref_ = oracle_gradient(net, x64, t)
    assert np.abs(ref_["W1"]).max() > 0
    on_kernels(net)
    for strategy in STRATEGIES:
        assert max_abs_diff(net.numerical_gradient(x, t, strategy=strategy), ref_) <= TOL
    assert net.loss(x, t) == pytest.approx(ReferenceLayeredNet.loss(net, x64, t), rel=1e-12)


@pytest.mark.numba  # the book-size network is too slow as plain Python
def test_engine_on_real_mnist_book_network_sampled_parameters(mnist_source_dir):
    x, t = _mnist_images(mnist_source_dir, 100)
    net = SimpleConvNet(seed=0, weight_init_std=0.01, backend="numpy")
    x64 = x.astype(np.float64)
    rng = np.random.default_rng(2)
    indices = {k: rng.choice(v.size, 3, replace=False) for k, v in net.params.items()}
    ref_ = net.numerical_gradient_at(x64, t, indices)
    ref_loss = ReferenceLayeredNet.loss(net, x64, t)
    ref_probs = ReferenceLayeredNet.predict(net, x64)
    on_kernels(net)
    assert net.loss(x, t) == pytest.approx(ref_loss, rel=1e-12, abs=0)
    assert np.allclose(net.predict(x), ref_probs, rtol=1e-12, atol=0)
    for strategy in STRATEGIES:
        assert (
            max_abs_diff(net.numerical_gradient_at(x, t, indices, strategy=strategy), ref_) <= TOL
        ), strategy
    comp_ = net.numerical_gradient(x, t)  # delta, all 433,890 parameters
    assert max_abs_diff({k: comp_[k].ravel()[i] for k, i in indices.items()}, ref_) <= TOL


@pytest.mark.threads
def test_engine_results_do_not_depend_on_the_thread_count():
    # Enough filters, units and samples that work is split into more tasks on 2 threads.
    net = SimpleConvNet(
        (2, 12, 12),
        {"filter_num": 6, "filter_size": 5},
        hidden_size=8,
        weight_init_std=0.3,
        seed=4,
        backend="numba",
    )
    rng = np.random.default_rng(4)
    x = rng.random((33, 2, 12, 12))
    x[x < 0.5] = 0.0
    t = rng.integers(0, 10, 33)
    results = {}
    before = get_num_threads()
    for threads in (1, 2):
        set_num_threads(threads)
        try:
            results[threads] = [net.numerical_gradient(x, t, strategy=s) for s in STRATEGIES]
            results[threads].append({"loss": net.loss(x, t), "p": net.predict(x)})
        finally:
            set_num_threads(before)
    for a, b in zip(results[1], results[2], strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_accuracy_in_chunks_equals_one_pass(monkeypatch):
    from fastnum import convnet

    net, _, _ = small_net(*GEOMETRIES[0])
    rng = np.random.default_rng(9)
    x, t = rng.random((23, 1, 6, 6)), rng.integers(0, 3, 23)
    whole = ReferenceLayeredNet.accuracy(net, x, t)
    monkeypatch.setattr(convnet, "ACCURACY_CHUNK", 5)
    assert net.accuracy(x, t) == whole


# ----------------------------------------------------------------------------- training, CLI


@pytest.fixture(scope="module")
def mnist_images(mnist_source_dir):
    from fastnum.data import load_mnist

    return load_mnist(flatten=False, data_dir=mnist_source_dir)


def test_train_simpleconv_on_mnist_writes_outputs_and_resumes(mnist_images, tmp_path):
    from fastnum.train import TrainConfig

    (x, t), (x_test, t_test) = mnist_images
    data = (x[:200], t[:200]), (x_test[:100], t_test[:100])
    config = TrainConfig(
        net="simpleconv", grad="backprop", iters=25, batch_size=20, hidden_size=6, seed=1
    )
    full = quiet_train(config, data, tmp_path / "full")
    assert full.net.params["W1"].shape == (30, 1, 5, 5) and full.net.params["W3"].shape == (6, 10)
    assert full.history["epoch_iter"] == [1, 11, 21] and len(full.history["loss"]) == 25
    assert np.mean(full.history["loss"][-5:]) < np.mean(full.history["loss"][:5])
    with pytest.raises(SimulatedInterruptError):
        quiet_train(config, data, tmp_path / "cut", callback=stop_at_epoch(2))
    resumed = quiet_train(config, data, tmp_path / "cut", resume=True)
    assert resumed.history == full.history
    assert all(np.array_equal(resumed.params[k], full.params[k]) for k in full.params)
    with np.load(tmp_path / "cut" / "params.npz") as saved:
        assert sorted(saved.files) == ["W1", "W2", "W3", "b1", "b2", "b3"]
    assert (tmp_path / "cut" / "accuracy.png").stat().st_size > 0


@pytest.mark.skipif(not HAVE_NUMBA, reason="backend='numba' needs numba installed")
def test_numerical_training_runs_the_same_on_the_engine_and_the_oracle(mnist_images):
    from fastnum.train import TrainConfig

    (x, t), (x_test, t_test) = mnist_images
    crop = lambda a: a[:, :, 8:20, 8:20]  # noqa: E731 - 12x12 centres: a quick oracle
    data = (crop(x[:60]), t[:60]), (crop(x_test[:30]), t_test[:30])
    config = dict(
        net="simpleconv",
        grad="numerical",
        iters=2,
        batch_size=5,
        hidden_size=3,
        weight_init_std=0.1,
        seed=2,
    )
    ref_ = quiet_train(TrainConfig(backend="numpy", **config), data)
    comp_ = quiet_train(TrainConfig(backend="numba", **config), data)
    assert comp_.net.input_dim == (1, 12, 12)
    assert max_abs_diff(comp_.params, ref_.params) <= 2 * 0.1 * TOL


def test_train_config_and_data_errors_for_simpleconv():
    from fastnum.train import TrainConfig

    with pytest.raises(ValueError, match="net='cnn'"):
        TrainConfig(net="cnn")
    with pytest.raises(ValueError, match="hidden_sizes is for net='dense'"):
        TrainConfig(net="simpleconv", hidden_sizes=(5,))
    flat = np.zeros((10, 784), np.float32), np.zeros(10, np.uint8)
    with pytest.raises(ValueError, match=r"x_train has shape \(10, 784\).*flatten=False"):
        quiet_train(TrainConfig(net="simpleconv", batch_size=5), (flat, flat))


def test_cli_trains_simpleconv(capsys, tmp_path, mnist_source_dir):
    from fastnum.cli import main

    out = tmp_path / "conv"
    argv = [
        "train",
        "--net",
        "simpleconv",
        "--grad",
        "backprop",
        "--iters",
        "3",
        "--batch-size",
        "10",
        "--train-size",
        "50",
        "--test-size",
        "20",
        "--hidden",
        "5",
        "--data-dir",
        str(mnist_source_dir),
        "--out",
        str(out),
        "-q",
    ]
    assert main(argv) == 0
    doc = json.loads((out / "history.json").read_text())
    assert doc["status"] == "completed" and doc["config"]["net"] == "simpleconv"
    assert doc["data"]["n_features"] == 784
    assert main([*argv[:-1], "--resume", "--iters", "4"]) == 0
    assert len(json.loads((out / "history.json").read_text())["history"]["loss"]) == 4


@pytest.mark.numba  # 433,890 parameters need the compiled engine
def test_cli_gradcheck_simpleconv_on_100_images_passes(capsys, mnist_source_dir):
    from fastnum.cli import main

    code = main(
        [
            "gradcheck",
            "--net",
            "simpleconv",
            "--batch-size",
            "100",
            "--data-dir",
            str(mnist_source_dir),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASS" in out and "30x1x5x5" in out and "4320x100" in out and "h=1e-08" in out


def test_registry_extrapolation_and_its_label_in_the_report():

    from fastnum.registry import COMPARISONS, make_problem

    op = COMPARISONS["convolution"]
    rng = np.random.default_rng(0)
    problem = make_problem(rng.random((2, 784)), [1, 2], hidden_size=100, seed=0)
    net, x, _, _, sample = op.args("numpy", problem)
    assert x.shape == (2, 1, 28, 28) and sum(v.size for v in net.params.values()) == 433_890
    factor = op.extrapolate["numpy"](problem)
    assert factor == 433_890 / sum(len(i) for i in sample.values())
    assert "numba-delta" not in op.extrapolate  # timed on every parameter

    from benchmarks import report

    info = {"op": "convolution", "batch": 100, "hidden": 100, "threads": None}
    results = {
        "benchmarks": [
            {
                "extra_info": {**info, "impl": "numpy", "extrapolate_factor": factor},
                "stats": {"median": 2.0, "rounds": 3},
            },
            {
                "extra_info": {**info, "impl": "numba-delta", "threads": 2},
                "stats": {"median": 0.5, "rounds": 5},
            },
        ]
    }
    rows = report.rows_from(results)
    assert rows[0].median == 2.0 * factor and rows[1].median == 0.5
    impls = report.catalog(results)["convolution"]
    assert "extrapolated" in "\n".join(report.op_table(rows, impls, "convolution"))
    assert "**extrapolated**" in report.headline(rows, impls, "convolution", book=(100, 100))[0]


def test_cli_gradcheck_simpleconv_without_the_compiled_engine_is_refused(capsys, monkeypatch):
    import fastnum._jit
    from fastnum.cli import main

    monkeypatch.setattr(fastnum._jit, "JIT_ENABLED", False)
    assert main(["gradcheck", "--net", "simpleconv"]) == 2
    err = capsys.readouterr().err
    assert "needs numba's compiled engine" in err and "hours" in err
