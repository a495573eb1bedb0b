"""The public TwoLayerNet: validation, backend choice, and both backends agreeing."""

from __future__ import annotations

import numpy as np
import pytest

from fastnum import backend
from fastnum._jit import JIT_ENABLED
from fastnum._validate import as_float_batch, as_labels
from fastnum.multilayer import MultiLayerNet
from fastnum.network import TwoLayerNet
from fastnum.train import TrainConfig
from tests._backends import NUMBA_BACKEND


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    x = rng.random((4, 6))
    x[x < 0.5] = 0
    return x, np.array([0, 1, 2, 1])


@pytest.mark.parametrize("backend_name", [NUMBA_BACKEND])
def test_backends_agree_on_predict_loss_accuracy_and_gradient(batch, backend_name):
    x, t = batch
    ref_net = TwoLayerNet(6, 3, 3, seed=2, weight_init_std=0.5, backend="numpy")
    comp_net = TwoLayerNet(6, 3, 3, seed=2, weight_init_std=0.5, backend=backend_name)
    assert np.allclose(comp_net.predict(x), ref_net.predict(x), rtol=1e-12, atol=0)
    assert comp_net.loss(x, t) == pytest.approx(ref_net.loss(x, t), rel=1e-12)
    assert comp_net.accuracy(x, t) == ref_net.accuracy(x, t)
    ref_, comp_ = ref_net.numerical_gradient(x, t), comp_net.numerical_gradient(x, t)
    assert max(np.abs(ref_[k] - comp_[k]).max() for k in ref_) <= 1e-9


def test_auto_backend_follows_jit_and_environment(monkeypatch):
    monkeypatch.delenv(backend.BACKEND_ENV, raising=False)
    assert backend.resolve_backend("auto") == ("numba" if JIT_ENABLED else "numpy")
    monkeypatch.setenv(backend.BACKEND_ENV, "numpy")
    assert TwoLayerNet(4, 2, 2).backend == "numpy"
    assert TwoLayerNet(4, 2, 2, backend="auto").backend == ("numba" if JIT_ENABLED else "numpy")
    monkeypatch.setenv(backend.BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match="backend='cuda'.*FASTNUM_BACKEND"):
        TwoLayerNet(4, 2, 2)


def test_explicit_numba_without_numba_installed_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(backend, "HAVE_NUMBA", False)
    with pytest.raises(ImportError, match="pip install numba"):
        backend.resolve_backend("numba")
    monkeypatch.setattr(backend, "JIT_ENABLED", False)
    assert backend.resolve_backend("auto") == "numpy"
    assert "numba not installed" in backend.describe_backend("numpy")


@pytest.mark.parametrize(
    ("x", "t", "error", "message"),
    [
        (np.zeros((4, 5)), [0, 1, 2, 1], ValueError, "5 features.*expects 6"),
        (np.zeros((4, 6)), [0, 1, 2, 3], ValueError, "label 3, outside 0..2"),
        (np.zeros((4, 6)), [0, 1, -1, 0], ValueError, "label -1"),
        (np.zeros((4, 6)), [0, 1], ValueError, r"shape \(2,\)"),
        (np.zeros((4, 6)), [0.5, 1, 1, 1], ValueError, "non-integer"),
        (np.full((4, 6), np.inf), [0, 1, 2, 1], ValueError, "non-finite value inf"),
        (np.zeros((4, 2, 3)), [0, 1, 2, 1], ValueError, "Flatten"),
        (np.array([["a"] * 6] * 4), [0, 1, 2, 1], TypeError, "dtype"),
    ],
)
@pytest.mark.parametrize("backend_name", ["numpy", NUMBA_BACKEND])
def test_bad_input_gets_an_error_naming_the_value(x, t, error, message, backend_name):
    net = TwoLayerNet(6, 3, 3, backend=backend_name)
    with pytest.raises(error, match=message):
        net.numerical_gradient(x, t)
    with pytest.raises(error, match=message):
        net.loss(x, t)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 0}, "hidden_size=0"),
        ({"output_size": 1}, "output_size=1"),
        ({"strategy": "fast"}, "strategy='fast'"),
    ],
)
def test_bad_network_arguments(kwargs, message):
    args = {"input_size": 4, "hidden_size": 2, "output_size": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        TwoLayerNet(**args)


def test_bad_step_is_refused(batch):
    x, t = batch
    with pytest.raises(ValueError, match="h=-0.1"):
        TwoLayerNet(6, 3, 3).numerical_gradient(x, t, h=-0.1)


def test_trusted_twins_compute_what_the_validating_methods_do(batch):
    x, t = batch
    net = TwoLayerNet(6, 3, 3, seed=2, weight_init_std=0.5, backend="numpy")
    # The public methods accept lists and one-hot labels; the twins take what they convert to.
    xv, tv = as_float_batch(x, 6), as_labels(t, len(t), 3)
    x_list, one_hot = x.tolist(), np.eye(3)[t]
    assert np.array_equal(net.predict_trusted(xv), net.predict(x_list))
    assert net.loss_trusted(xv, tv) == net.loss(x_list, one_hot)
    assert net.accuracy_trusted(xv, tv) == net.accuracy(x_list, one_hot)
    grads = net.numerical_gradient(x_list, one_hot)
    twin = net.numerical_gradient_trusted(xv, tv, 1e-4, net.strategy)
    assert all(np.array_equal(grads[k], twin[k]) for k in grads)
    back, back_twin = net.gradient(x_list, one_hot), net.gradient_trusted(xv, tv)
    assert all(np.array_equal(back[k], back_twin[k]) for k in back)


def test_strategy_defaults_are_the_backends():
    assert TwoLayerNet(4, 2, 2).strategy == backend.DEFAULT_STRATEGY
    assert MultiLayerNet(4, [2], 2).strategy == backend.DEFAULT_STRATEGY
    assert TrainConfig().strategy == backend.DEFAULT_STRATEGY
