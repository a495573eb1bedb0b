"""Gradient check of book-style networks: verdicts, planted bugs, paths that must agree."""

# The book-style nets draw from NumPy's global generator, so the tests seed it.
# ruff: noqa: NPY002

from __future__ import annotations

import numpy as np
import pytest

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
    return book.SimpleConvNet((1, 6, 6), {"filter_num": 2, "filter_size": 3, "pad": 1,
                                          "stride": 1}, 5, 3, 0.3)


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


def test_engine_and_generic_paths_agree():
    engine = check(two_layer(), method="engine")
    generic = check(two_layer(), method="generic")
    assert "engine" in engine.method and "generic" in generic.method
    for name in engine.params:
        assert abs(engine.params[name].max_abs - generic.params[name].max_abs) < 1e-9


@pytest.mark.parametrize("kw", [
    {"use_batchnorm": True},
    {"use_dropout": True, "dropout_ration": 0.3},
    {"use_batchnorm": True, "use_dropout": True, "activation": "sigmoid",
     "weight_init_std": "sigmoid"},
    {"weight_decay_lambda": 0.1},
], ids=["batchnorm", "dropout", "bn-dropout-sigmoid", "weight-decay"])
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


def test_dask_cluster_gives_the_serial_numbers():
    distributed = pytest.importorskip("distributed", reason="Dask not installed: "
                                      "pip install 'fastnum[distributed]'")
    serial = check(multi(use_dropout=True), method="generic")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        remote = check(multi(use_dropout=True), scheduler=cluster)
    assert "Dask" in remote.method
    assert serial.params == remote.params


# ------------------------------------------------ engine recognition and its cross-check


def test_a_loss_that_is_not_the_stack_falls_back_to_its_own_loss():
    net = multi(weight_decay_lambda=0.1)  # Affine/Relu only, but the loss adds weight decay
    result = check(net)
    assert result.passed and "generic" in result.method
    assert any("differs from that of the recognised layers" in n for n in result.notes)
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


def test_log_guard_off_is_refused_where_the_loss_cannot_change():
    net = FastnumTwoLayerNet(12, 4, 3, weight_init_std=0.3, seed=0, backend="numpy")
    result = check(net, log_guard=False)
    assert result.log_guard and "log_guard=False is not possible" in result.report()


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
    for words in ("book error", "max abs err", "max rel err", "1e-07", "backprop ignores it",
                  "12x5", "PASS"):
        assert words in report


@pytest.mark.parametrize("kw, match", [
    ({"h": 0}, "h=0"), ({"rtol": -1}, "rtol=-1"), ({"atol": float("nan")}, "atol=nan"),
    ({"rtol": 0, "atol": 0}, "both 0"), ({"method": "fastest"}, "method='fastest'"),
    ({"workers": 0}, "workers=0"), ({"directions": 0}, "directions=0"),
])
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
