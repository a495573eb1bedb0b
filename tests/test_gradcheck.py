"""Gradient check of book-style networks: verdicts, planted bugs, paths that must agree."""

# The book-style nets draw from NumPy's global generator, so the tests seed it.
# ruff: noqa: NPY002

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastnum
from fastnum import gradcheck as gradcheck_module
from fastnum.gradcheck import DEFAULT_ATOL, DEFAULT_RTOL, GradcheckResult, gradcheck
from fastnum.network import TwoLayerNet as FastnumTwoLayerNet
from tests import book_style_nets as book

RNG = np.random.default_rng(7)
X = RNG.random((4, 12))
T = np.array([0, 1, 2, 1])
X_IMG = RNG.random((3, 1, 6, 6))


def two_layer(seed=0, **kw):
    np.random.seed(seed)
    return book.TwoLayerNet(12, 5, 3, weight_init_std=kw.pop("std", 0.3), **kw)


def multi(seed=0, **kw):
    np.random.seed(seed)
    return book.MultiLayerNetExtend(12, [6, 6], 3, **kw)


def conv(seed=0):
    np.random.seed(seed)
    return book.SimpleConvNet(
        (1, 6, 6), {"filter_num": 2, "filter_size": 3, "pad": 1, "stride": 1}, 5, 3, 0.3
    )


def check(net, x=X, t=T, **kw):
    return gradcheck(net, x, t, **{"workers": 1, **kw})


# ----------------------------------------------------------------- correct nets pass


@pytest.mark.parametrize("method", ["auto", "engine", "generic"])
def test_book_two_layer_net_passes_without_its_numerical_gradient(method):
    result = check(two_layer(), method=method)  # its numerical_gradient raises if called
    assert result.passed, result.report()
    assert list(result.params) == ["W1", "b1", "W2", "b2"]
    assert result.params["W1"].shape == (12, 5)
    assert 1e-9 < result.max_rel_err < 1e-5  # the log guard's ~1e-6, as documented


@pytest.mark.numba  # BLAS is limited only around compiled kernels
def test_blas_has_one_thread_during_an_engine_check_and_its_own_count_after():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    seen = []

    class Recording(book.TwoLayerNet):
        def gradient(self, x, t):
            seen.append(blas_threads())
            return super().gradient(x, t)

    np.random.seed(0)
    before = blas_threads()
    assert check(Recording(12, 5, 3, weight_init_std=0.3), method="engine").passed
    assert blas_threads() == before
    assert seen == [[1] * len(before)]


def test_engine_and_generic_paths_agree():
    engine = check(two_layer(), method="engine")
    generic = check(two_layer(), method="generic")
    assert "engine" in engine.method and "generic" in generic.method
    for name in engine.params:
        assert abs(engine.params[name].max_abs - generic.params[name].max_abs) < 1e-9


@pytest.mark.parametrize(
    "kw",
    [
        {"use_batchnorm": True},
        {"use_dropout": True, "dropout_ration": 0.3},
        {
            "use_batchnorm": True,
            "use_dropout": True,
            "activation": "sigmoid",
            "weight_init_std": "sigmoid",
        },
        {"weight_decay_lambda": 0.1},
    ],
    ids=["batchnorm", "dropout", "bn-dropout-sigmoid", "weight-decay"],
)
def test_chapter_6_networks_pass(kw):
    result = check(multi(**kw))
    assert result.passed, result.report()
    assert "generic" in result.method


def test_bias_before_batch_norm_is_not_a_relative_error_of_one():
    # Its true gradient is exactly 0: both sides are rounding noise.
    result = check(multi(use_batchnorm=True))
    assert result.params["b1"].max_abs < 1e-10
    assert result.rel_err["b1"] == 0.0 and result.params["b1"].passed


def test_simple_conv_net_passes():
    result = check(conv(), X_IMG, T[:3])
    assert result.passed, result.report()
    assert result.params["W1"].shape == (2, 1, 3, 3)


def test_dropout_masks_repeat_and_the_random_state_is_left_alone():
    net = multi(use_dropout=True, dropout_ration=0.5)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    result = check(net)
    assert result.passed, result.report()
    assert np.array_equal(np.random.get_state()[1], before)


# ----------------------------------------------------------------- planted bugs fail


def test_missing_division_by_batch_size_fails_every_parameter():
    net = two_layer()
    net.lastLayer = book.SoftmaxWithLossNoBatchDivision()
    result = check(net)
    assert not result.passed and result.failed == ["W1", "b1", "W2", "b2"]
    assert "FAIL: W1" in result.report()


@pytest.mark.parametrize("method", ["engine", "generic"])
def test_transposed_weight_gradient_is_named(method):
    net = multi(activation="relu", weight_init_std=0.3)
    net.layers["Affine2"] = book.AffineTransposedGrad(net.params["W2"], net.params["b2"])
    result = check(net, method=method)
    assert result.failed == ["W2"]
    index, num, bp, kink = result.params["W2"].worst[0]
    assert not kink and abs(num - bp) > 1e-3
    assert f"W2[{index[0]}, {index[1]}]" in result.report()


def test_transposed_gradient_of_another_shape_is_named():
    net = two_layer()
    net.layers["Affine1"] = book.AffineTransposedGrad(net.params["W1"], net.params["b1"])
    result = check(net)
    assert result.failed == ["W1"]
    assert "shape (5, 12)" in result.params["W1"].problem and "transposed" in result.report()


def test_a_parameter_the_loss_does_not_read_is_named():
    net = two_layer()
    net.params["W1"] = net.params["W1"].copy()  # the layers keep the old array
    result = check(net)
    assert result.failed == ["W1"]
    assert "does loss(x, t) read net.params['W1'] in place?" in result.report()
    assert "net.params['b1']" not in result.report()


@pytest.mark.parametrize("layer, name", [("Affine1", "b1"), ("Affine2", "b2")])
def test_wrong_bias_gradient_is_named(layer, name):
    net = two_layer()
    net.layers[layer] = book.AffineWrongBiasGrad(net.layers[layer].W, net.layers[layer].b)
    result = check(net)
    assert result.failed == [name]


def test_a_small_error_is_caught():
    net = two_layer()
    right = net.gradient
    net.gradient = lambda x, t: {**right(x, t), "W2": right(x, t)["W2"] * 1.001}
    assert check(net).failed == ["W2"]


# --------------------------------------------------------- paths give the same numbers


def test_processes_give_the_serial_numbers():
    serial = check(multi(use_batchnorm=True, use_dropout=True), workers=1)
    parallel = check(multi(use_batchnorm=True, use_dropout=True), workers=2)
    assert "2 processes" in parallel.method
    assert serial.params == parallel.params


@pytest.mark.parametrize(
    "kw", [{"workers": 1}, {"workers": 2}, {"scheduler": "local"}], ids=["serial", "2", "dask"]
)
def test_the_readers_class_is_left_as_it_was(kw):
    # A class defined in a function (like one in a notebook) travels by value in
    # cloudpickle; unpickled in this process it would rebind the class's methods to
    # copies whose closures no longer see the reader's later changes.
    if "scheduler" in kw:
        pytest.importorskip("distributed", reason="Dask not installed")
    scale = [1.0]

    class Quadratic:
        def __init__(self):
            self.params = {"W": np.arange(24.0).reshape(12, 2) / 100}

        def loss(self, x, t):
            return scale[0] * float(np.sum((x @ self.params["W"]) ** 2))

        def gradient(self, x, t):
            return {"W": scale[0] * 2 * x.T @ (x @ self.params["W"])}

    def methods():
        return {name: f for name, f in vars(Quadratic).items() if callable(f)}

    before = methods()
    assert check(Quadratic(), **kw).passed
    assert methods() == before
    scale[0] = 0.0
    assert Quadratic().loss(X, T) == 0.0


def test_dask_cluster_gives_the_serial_numbers():
    distributed = pytest.importorskip(
        "distributed", reason="Dask not installed: pip install 'fastnum[distributed]'"
    )
    serial = check(multi(use_dropout=True), method="generic")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        remote = check(multi(use_dropout=True), scheduler=cluster)
    assert "Dask" in remote.method
    assert serial.params == remote.params


# ------------------------------------------------ engine recognition and its cross-check


def test_a_loss_that_is_not_the_stack_falls_back_to_its_own_loss():
    net = multi(weight_decay_lambda=0.1)  # Affine/Relu only, but the loss adds weight decay
    result = check(net)
    assert result.passed and "generic" in result.method
    assert any("adds weight decay" in n and "weight_decay_lambda=0.1" in n for n in result.notes)
    with pytest.raises(ValueError, match="method='engine' is not possible"):
        check(net, method="engine")


def test_layers_that_are_not_the_books_are_named():
    result = check(multi(use_batchnorm=True), method="auto")
    assert any("'BatchNorm1' (BatchNormalization)" in note for note in result.notes)


# ------------------------------------------------- log guard, fast mode, Richardson


def test_without_the_log_guard_a_correct_net_agrees_to_1e_9():
    result = check(two_layer(), log_guard=False)
    assert result.passed and not result.log_guard
    assert result.max_rel_err < 1e-8 and "log guard off" in result.report()


class NoLastLayer:
    """A network whose loss is opaque: no lastLayer to take the guard out of."""

    def __init__(self, inner):
        self.params, self.loss, self.gradient = inner.params, inner.loss, inner.gradient


def test_log_guard_off_is_refused_where_the_loss_cannot_change():
    result = check(NoLastLayer(two_layer()), log_guard=False)
    assert result.passed and result.log_guard
    assert "log_guard=False is not possible" in result.report()


def test_log_guard_off_for_fastnums_own_network():
    net = FastnumTwoLayerNet(12, 4, 3, weight_init_std=0.3, seed=0, backend="numpy")
    result = check(net, log_guard=False)
    assert result.passed and not result.log_guard and result.max_rel_err < 1e-8


def test_the_guard_gets_a_slack_that_log_guard_false_removes():
    result = check(two_layer(std=3.0))  # confident wrong predictions: a large guard effect
    assert result.passed and result.guard_effect > DEFAULT_RTOL
    assert result.guard_slack == 5 * result.guard_effect
    assert "the guard's slack" in result.report()
    assert check(two_layer(std=3.0), log_guard=False).guard_slack == 0.0


def test_fast_mode_passes_with_directional_derivatives():
    result = check(multi(use_batchnorm=True), fast=True, directions=3)
    assert result.passed and len(result.directions) == 3 and not result.params
    assert "fast mode: 3 random directions" in result.report()


def test_fast_mode_falls_back_to_name_the_bad_parameter():
    net = multi(activation="relu", weight_init_std=0.3)
    net.layers["Affine3"] = book.AffineWrongBiasGrad(net.params["W3"], net.params["b3"])
    result = check(net, fast=True)
    assert result.failed == ["b3"]
    assert any("fast mode found a mismatch" in note for note in result.notes)


def test_richardson_estimates_truncation():
    result = check(two_layer(), richardson=True)
    assert result.passed
    for name, param in result.params.items():
        assert 0 <= param.truncation < 1e-6, name
    assert "trunc. est" in result.report() and "Richardson" in result.report()


def test_a_relu_kink_is_reported_not_failed():
    net = two_layer()
    x = X.copy()
    x[0] = 0.0  # with zero biases, sample 0's hidden inputs sit exactly at the ReLU's corner
    result = check(net, x)
    assert result.passed, result.report()
    assert sum(p.n_kinks for p in result.params.values()) > 0
    assert "kink" in result.report()


@pytest.mark.parametrize("method", ["engine", "generic"])
def test_a_relu_corner_within_h_is_reported_not_failed(method):
    net = two_layer()
    # Put sample 0's first hidden input 3e-5 from the corner: a step of h=1e-4 crosses it.
    net.params["b1"][0] = 3e-5 - X[0] @ net.params["W1"][:, 0]
    result = check(net, method=method)
    assert result.passed, result.report()
    assert result.params["b1"].n_kinks >= 1


@given(
    st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, np.inf, np.nan]), min_size=1, max_size=40),
    st.integers(1, 45),
)
def test_worst_elements_are_those_a_stable_argsort_ranks_first(values, k):
    # The report's top-k (a partition, not a full sort) with ties, inf and NaN.
    from fastnum.gradcheck._report import _largest

    values = np.array(values)
    ref_order = np.argsort(-values, kind="stable")[:k]
    assert _largest(values, k).tolist() == ref_order.tolist()


# ------------------------------------------------------------- fastnum's own networks


def test_fastnum_two_layer_net():
    net = FastnumTwoLayerNet(12, 4, 3, weight_init_std=1, seed=0, backend="numpy")
    result = check(net)
    assert result.passed and result.guard_effect is not None
    assert result.guard_effect / 10 < result.max_rel_err < result.guard_effect * 10


def test_labels_out_of_range_are_named():
    net = FastnumTwoLayerNet(12, 4, 3, seed=0, backend="numpy")
    for method in ("engine", "generic"):
        with pytest.raises(ValueError, match="label 3, outside 0..2"):
            check(net, X, np.array([0, 1, 2, 3]), method=method)


# ------------------------------------------------------------------- API and errors


def test_the_module_is_callable_and_stays_a_module():
    import fastnum.gradcheck as module

    assert module is gradcheck_module is fastnum.gradcheck
    assert module.GradcheckResult is GradcheckResult
    result = fastnum.gradcheck(two_layer(), X, T, workers=1)
    assert isinstance(result, GradcheckResult) and result.passed
    assert "rtol" in str(module.__signature__)


def test_defaults_are_documented():
    assert (DEFAULT_RTOL, DEFAULT_ATOL) == (1e-5, 1e-6)
    report = check(two_layer()).report()
    for words in (
        "book error",
        "max abs err",
        "max rel err",
        "1e-07",
        "backprop ignores it",
        "12x5",
        "PASS",
    ):
        assert words in report


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"h": 0}, "h=0"),
        ({"rtol": -1}, "rtol=-1"),
        ({"atol": float("nan")}, "atol=nan"),
        ({"rtol": 0, "atol": 0}, "both 0"),
        ({"method": "fastest"}, "method='fastest'"),
        ({"workers": 0}, "workers=0"),
        ({"directions": 0}, "directions=0"),
    ],
)
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        check(two_layer(), **kw)


def test_bad_networks_and_batches():
    with pytest.raises(TypeError, match="no params dict"):
        gradcheck(object(), X, T)
    net = two_layer()
    net.params["W1"] = net.params["W1"].astype(np.float32)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(net, X, T)
    with pytest.raises(ValueError, match="x has 4 samples but t has 3"):
        gradcheck(two_layer(), X, T[:3])


# --------------------------------------------------------------------- the command line


@pytest.fixture
def run(mnist_parsed_once, capsys):
    """Run ``fastnum gradcheck ARGS`` on MNIST parsed once; return (exit code, stdout, stderr)."""
    from fastnum.cli import main

    def run_(*argv):
        code = main(["gradcheck", "--data-dir", str(mnist_parsed_once), "--workers", "1", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run_


BOOK = "tests/book_style_nets.py"
TWO_LAYER_ARGS = '{"input_size": 784, "hidden_size": 6, "output_size": 10}'
BATCH_NORM_ARGS = (
    '{"input_size": 784, "hidden_size_list": [5], "output_size": 10, "use_batchnorm": true}'
)


def test_cli_checks_a_readers_class(run):
    code, out, _ = run(
        "--model", f"{BOOK}:TwoLayerNet", "--model-args", TWO_LAYER_ARGS, "--first", "3"
    )
    assert code == 0, out
    assert f"checking {BOOK}:TwoLayerNet on 3 MNIST training images" in out
    assert "PASS" in out and "784x6" in out


def test_cli_names_the_bug_in_a_readers_class(run, tmp_path):
    buggy = tmp_path / "buggy_net.py"
    buggy.write_text(
        "from tests import book_style_nets as book\n\n\n"
        "class BuggyNet(book.TwoLayerNet):\n"
        "    def __init__(self, **kw):\n"
        "        super().__init__(**kw)\n"
        "        self.layers['Affine2'] = book.AffineWrongBiasGrad(self.params['W2'], "
        "self.params['b2'])\n"
    )
    code, out, _ = run(
        "--model", f"{buggy}:BuggyNet", "--model-args", TWO_LAYER_ARGS, "--one-hot", "--fast"
    )
    assert code == 1
    assert "FAIL: b2" in out and "worst elements of b2" in out and "fast mode" in out


def test_cli_multilayer(run):
    code, out, _ = run(
        "--net",
        "multilayer",
        "--hidden-sizes",
        "8,8",
        "--activation",
        "relu",
        "--weight-init-std",
        "0.1",
    )
    assert code == 0, out
    assert "784x8" in out and "8x10" in out


def test_cli_without_the_guard_and_with_richardson(run):
    code, out, _ = run(
        "--model",
        f"{BOOK}:TwoLayerNet",
        "--model-args",
        TWO_LAYER_ARGS,
        "--no-log-guard",
        "--richardson",
    )
    assert code == 0, out
    assert "log guard off" in out and "trunc. est" in out


def test_cli_loads_parameters(run, tmp_path):
    rng = np.random.default_rng(0)
    good = {
        "W1": rng.normal(0, 0.1, (784, 4)),
        "b1": rng.normal(0, 0.1, 4),
        "W2": rng.normal(0, 0.1, (4, 10)),
        "b2": rng.normal(0, 0.1, 10),
    }
    np.savez(tmp_path / "params.npz", **good)
    code, out, _ = run("--params", str(tmp_path / "params.npz"), "--hidden", "4")
    assert code == 0, out
    code, _, err = run("--params", str(tmp_path / "params.npz"), "--hidden", "5")
    assert code == 2 and "params['W1'] has shape (784, 4)" in err and "(784, 5)" in err
    bad = {**good, "b2": np.full(10, np.nan)}  # a diverged run's weights are refused too
    np.savez(tmp_path / "params.npz", **bad)
    code, _, err = run("--params", str(tmp_path / "params.npz"), "--hidden", "4")
    assert code == 2 and "params['b2'] contains a non-finite value nan" in err


@pytest.mark.numba  # the generic path (no JIT) would take minutes on 28x28 images
def test_cli_checks_simpleconv(run):
    code, out, _ = run("--net", "simpleconv", "--hidden", "4", "--first", "2")
    assert code == 0, out
    assert "W1" in out and "b3" in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--model", "nowhere.py"], "must be FILE.py:CLASS"),
        (["--model", "nowhere.py:Net"], "nowhere.py does not exist"),
        (["--model", f"{BOOK}:NoSuchNet"], "defines no class 'NoSuchNet'"),
        (["--model", f"{BOOK}:TwoLayerNet", "--model-args", "{input_size: 1}"], "not valid JSON"),
        (["--model", f"{BOOK}:TwoLayerNet", "--model-args", "[1]"], "JSON object"),
        (["--tol", "-1"], "--tol=-1.0"),
        (["--tol", "0", "--atol", "0"], "--tol and --atol are both 0"),
        (["--workers", "0"], "--workers=0"),
        (["--first", "0"], "--first=0"),
        (
            [
                "--model",
                f"{BOOK}:MultiLayerNetExtend",
                "--model-args",
                BATCH_NORM_ARGS,
                "--method",
                "engine",
            ],
            "--method engine is not possible",
        ),
    ],
)
def test_cli_input_errors(run, argv, words):
    code, _, err = run(*argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], err
