"""Gradient check: numerical gradient vs backprop, and why the tolerance is 1e-5."""

from __future__ import annotations

import numpy as np
import pytest

from fastnum import reference
from fastnum._jit import JIT_ENABLED
from fastnum.gradcheck import DEFAULT_TOL, gradcheck
from fastnum.network import TwoLayerNet

PARAMS = ("W1", "b1", "W2", "b2")


@pytest.fixture
def batch():
    rng = np.random.default_rng(1)
    return rng.random((5, 7)), np.array([0, 1, 2, 3, 0])


def net(backend="numpy", **kw):
    return TwoLayerNet(7, 3, 4, weight_init_std=1, seed=0, backend=backend, **kw)


def test_correct_gradient_passes(batch):
    result = gradcheck(net(), *batch)
    assert result.passed and result.tol == DEFAULT_TOL == 1e-5
    assert list(result.abs_err) == list(PARAMS)
    assert max(result.abs_err.values()) < 1e-6  # ~1e-7 for this net, as documented
    assert 1e-8 < result.max_rel_err < 1e-5
    assert result.shapes == {"W1": (7, 3), "b1": (3,), "W2": (3, 4), "b2": (4,)}


def test_the_log_guard_explains_the_difference(batch, monkeypatch):
    # Without the book's 1e-7 inside log(), numerical and backprop agree to ~1e-9.
    monkeypatch.setattr(reference, "LOG_GUARD", 0.0)
    result = gradcheck(net(), *batch)
    assert result.max_rel_err < 1e-7


def test_guard_effect_estimate_matches_the_observed_error(batch):
    result = gradcheck(net(), *batch)
    assert result.guard_effect / 10 < result.max_rel_err < result.guard_effect * 10


def test_report_explains_the_tolerance(batch):
    report = gradcheck(net(), *batch).report()
    for word in (*PARAMS, "max abs err", "max rel err", "PASS", "1e-07", "1e-05",
                 "backprop ignores it", "7x3"):
        assert word in report


def test_tiny_tolerance_fails(batch):
    result = gradcheck(net(), *batch, tol=1e-12)
    assert not result.passed
    assert "FAIL: worst relative error" in result.report() and "> tol 1e-12" in result.report()


@pytest.mark.parametrize("name", PARAMS)
def test_a_wrong_gradient_is_caught(batch, monkeypatch, name):
    model = net()
    right = model.gradient

    def wrong(x, t):
        grads = right(x, t)
        grads[name] = grads[name] * 1.001  # a 0.1 % bug, far above the guard's 1e-6
        return grads

    monkeypatch.setattr(model, "gradient", wrong)
    result = gradcheck(model, *batch)
    assert not result.passed
    assert max(result.rel_err, key=result.rel_err.get) == name


def test_one_hot_labels_and_h(batch):
    x, t = batch
    a = gradcheck(net(), x, np.eye(4)[t], h=1e-3)
    b = gradcheck(net(), x, t, h=1e-3)
    assert a.abs_err == b.abs_err and a.h == 1e-3 and "h=0.001" in a.report()


@pytest.mark.parametrize("tol", [0, -1e-5, float("nan"), "1e-5"])
def test_bad_tolerance(batch, tol):
    with pytest.raises(ValueError, match="tol="):
        gradcheck(net(), *batch, tol=tol)


def test_bad_step_and_labels(batch):
    x, t = batch
    with pytest.raises(ValueError, match="h=0"):
        gradcheck(net(), x, t, h=0)
    with pytest.raises(ValueError, match="label 4, outside 0..3"):
        gradcheck(net(), x, np.array([0, 1, 2, 3, 4]))


@pytest.mark.numba
@pytest.mark.skipif(not JIT_ENABLED, reason="numba JIT not available or disabled")
@pytest.mark.parametrize("strategy", ["delta", "full"])
def test_numba_numerical_gradient_passes(batch, strategy):
    result = gradcheck(net("numba", strategy=strategy), *batch)
    assert result.passed
    reference_result = gradcheck(net(), *batch)
    for name in PARAMS:
        assert abs(result.abs_err[name] - reference_result.abs_err[name]) < 1e-9
