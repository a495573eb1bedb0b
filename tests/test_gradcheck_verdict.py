"""The gradient check's verdict is honest by construction: no wrong answer either way."""

# The book's networks draw from NumPy's global generator; so do these tests' networks.
# ruff: noqa: NPY002

from __future__ import annotations

import time

import numpy as np
import pytest

import fastnum
from fastnum.gradcheck import GradcheckRefusedError, UserCodeError, _kinks
from tests import book_style_nets as book

RNG = np.random.default_rng(7)
X = RNG.random((10, 12))
X[X < 0.4] = 0.0  # MNIST-like: many exact zeros
T = RNG.integers(0, 4, 10)


def two_layer(seed=0, cls=book.TwoLayerNet):
    np.random.seed(seed)
    return cls(12, 6, 4, weight_init_std=0.5)


def check(net, x=X, t=T, **kw):
    return fastnum.gradcheck(net, x, t, **{"workers": 1, **kw})


class NaNGradient(book.TwoLayerNet):
    def gradient(self, x, t):
        grads = dict(super().gradient(x, t))
        grads["W1"] = grads["W1"].copy()
        grads["W1"][2, 3] = np.nan
        return grads


class InfGradient(book.TwoLayerNet):
    def gradient(self, x, t):
        grads = dict(super().gradient(x, t))
        grads["b2"] = grads["b2"] + np.array([0.0, np.inf, 0.0, 0.0])
        return grads


@pytest.mark.parametrize("method", ["engine", "generic"])
@pytest.mark.parametrize(("cls", "name"), [(NaNGradient, "W1"), (InfGradient, "b2")])
def test_a_non_finite_backprop_element_fails_and_is_named(cls, name, method):
    result = check(two_layer(cls=cls), method=method)
    assert result.verdict == "FAIL" and result.failed == [name]
    assert result.params[name].n_fail == 1
    assert f"FAIL: {name} (1 failing" in result.report()


class NoisyLoss(book.TwoLayerNet):
    """1e-6 of noise from its own generator, and a 3x wrong W2 gradient."""

    noise = np.random.default_rng(5)

    def loss(self, x, t):
        return super().loss(x, t) + 1e-6 * self.noise.standard_normal()

    def gradient(self, x, t):
        grads = dict(super().gradient(x, t))
        grads["W2"] = 3 * grads["W2"]
        return grads


class OwnDropout(book.TwoLayerNet):
    """Dropout drawing a fresh mask from its own generator on every call."""

    masks = np.random.default_rng(3)

    def predict(self, x):
        hidden = self.layers["Relu1"].forward(self.layers["Affine1"].forward(x))
        return self.layers["Affine2"].forward(hidden * (self.masks.random(hidden.shape) > 0.5))


class MovesItsParameters(book.TwoLayerNet):
    def loss(self, x, t):
        self.params["W1"] += 1e-3
        return super().loss(x, t)


class GradientMovesParameters(book.TwoLayerNet):
    def gradient(self, x, t):
        grads = super().gradient(x, t)
        self.params["b1"] -= 0.1 * grads["b1"]
        return grads


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("cls", [NoisyLoss, OwnDropout])
def test_a_loss_that_is_not_a_function_is_refused_on_every_seed(cls, seed):
    with pytest.raises(GradcheckRefusedError, match="not a function of the parameters"):
        check(two_layer(seed, cls))


@pytest.mark.parametrize(
    ("cls", "call"),
    [(MovesItsParameters, "net.loss"), (GradientMovesParameters, "net.gradient")],
)
def test_moving_the_parameters_is_refused(cls, call):
    with pytest.raises(GradcheckRefusedError, match=rf"{call}\(x, t\) changed net.params"):
        check(two_layer(cls=cls))


def test_a_gradient_that_raises_is_one_line_of_user_code_error():
    class Raises(book.TwoLayerNet):
        def gradient(self, x, t):
            raise KeyError("W9")

    with pytest.raises(UserCodeError, match=r"net.gradient\(x, t\) raised KeyError: 'W9'"):
        check(two_layer(cls=Raises))


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda p: p.__setitem__("c", np.array(1.0)), TypeError, "0-d array"),
        (lambda p: p["W1"].__setitem__((0, 0), np.nan), ValueError, r"W1'\] has 1 non-finite"),
    ],
)
def test_parameters_no_gradient_can_be_taken_at_are_refused(mutate, error, match):
    net = two_layer()
    mutate(net.params)
    with pytest.raises(error, match=match):
        check(net)


def test_an_empty_batch_is_refused():
    with pytest.raises(ValueError, match="empty batch"):
        check(two_layer(), X[:0], T[:0])


class SubclassedRelu(book.Relu):
    pass


class RectifierOfMyOwn:
    def forward(self, x):
        self.mask = x <= 0
        return np.where(self.mask, 0.0, x)

    def backward(self, dout):
        return np.where(self.mask, 0.0, dout)


@pytest.mark.parametrize("layer", [SubclassedRelu, RectifierOfMyOwn])
def test_activations_are_recognised_by_behaviour_not_by_name(layer):
    net = two_layer()
    net.layers["Relu1"] = layer()
    result = check(net, method="engine")  # raises when the stack is not recognised
    assert result.passed and "engine" in result.method, result.report()


def test_a_layer_that_only_looks_like_relu_is_not_taken_for_one():
    class LeakyRelu(RectifierOfMyOwn):
        def forward(self, x):
            self.mask = x <= 0
            return np.where(self.mask, 0.01 * x, x)

        def backward(self, dout):
            return np.where(self.mask, 0.01 * dout, dout)

    net = two_layer()
    net.layers["Relu1"] = LeakyRelu()
    result = check(net)
    assert result.passed and "generic" in result.method, result.report()


def batchnorm_net(seed=0, **kw):
    np.random.seed(seed)
    return book.MultiLayerNetExtend(12, [6, 6], 4, use_batchnorm=True, **kw)


def test_batch_norm_at_batch_one_says_what_was_not_checked():
    result = check(batchnorm_net(), X[:1], T[:1])
    assert result.passed
    assert {"W1", "b1", "W2", "b2"} <= set(result.unchecked)
    report = result.report()
    assert "batch has one sample" in report and "at least 2" in report
    assert "not checked" in report


def test_a_bias_before_batch_norm_is_not_called_suspicious():
    result = check(batchnorm_net())
    assert result.passed and set(result.unchecked) == {"b1", "b2"}
    assert not any("read net.params" in note for note in result.notes)


class DecayUnderAnotherName(book.MultiLayerNetExtend):
    """Weight decay added by the loss, its lambda kept where fastnum cannot know it."""

    def weights(self):
        return [f"W{k}" for k in range(1, self.hidden_layer_num + 2)]

    def loss(self, x, t, train_flg=False):
        decay = sum(np.sum(self.params[w] ** 2) for w in self.weights())
        return super().loss(x, t, train_flg) + 0.5 * 0.1 * decay

    def gradient(self, x, t):
        grads = dict(super().gradient(x, t))
        return {k: g + 0.1 * self.params[k] if k in self.weights() else g for k, g in grads.items()}


@pytest.mark.parametrize("kw", [{"use_batchnorm": True}, {"use_dropout": True}, {}])
def test_chapter6_stacks_run_on_the_engine(kw):
    np.random.seed(0)
    net = book.MultiLayerNetExtend(12, [6, 6], 4, weight_decay_lambda=0.1, **kw)
    result = check(net, method="engine")
    assert result.passed and "engine" in result.method, result.report()


def test_weight_decay_is_named_when_it_is_what_the_engine_lacks():
    np.random.seed(0)
    result = check(DecayUnderAnotherName(12, [6, 6], 4))
    assert result.passed and "generic" in result.method
    assert any("weight decay" in n and "lambda = 0.1" in n for n in result.notes)


def test_a_tolerance_below_rounding_is_not_excused_by_smaller_steps():
    # At h/1000 the loss's rounding (~1e-8) dwarfs a 1e-15 tolerance: agreeing "within
    # rounding" there would pass every element, so it must not count.
    result = check(two_layer(), rtol=1e-12, atol=1e-15, log_guard=False)
    assert result.verdict == "FAIL"


def test_unprobed_elements_are_unresolved_never_passed():
    net = two_layer()
    x = X.copy()
    x[0] = 0.0  # sample 0's hidden inputs sit exactly at the ReLU's corner: one-sided probes
    result = check(net, x, method="generic", probe_seconds=1e-9)
    assert result.verdict == "INCONCLUSIVE" and not result.passed and not result.failed
    assert result.unresolved and "unresolved" in result.report()
    assert check(net, x, method="generic").passed


def test_fast_mode_does_not_fall_back_past_its_bound():
    net = batchnorm_net(weight_decay_lambda=0.1)
    net.layers["Affine3"] = book.AffineWrongBiasGrad(net.params["W3"], net.params["b3"])
    result = check(net, fast=True, fallback_seconds=1e-9, method="generic")
    assert result.verdict == "FAIL" and not result.params
    assert any("fallback_seconds" in note for note in result.notes)
    with pytest.warns(UserWarning, match="checking every element"):
        assert check(net, fast=True, method="generic").failed == ["b3"]


# ------------------------------------------------------------------ the ladder's rule


def _resolve(f, bp, x0=0.0, h=1e-4, tol=1e-9):
    """Run the ladder on one element of a 1-D function ``f`` at ``x0`` with backprop ``bp``."""
    loss = f(x0)
    num = (f(x0 + h) - f(x0 - h)) / (2 * h)
    found = {"p": _kinks.start([0], np.array([num]), np.array([bp]), np.array([tol]), [True])}

    def probe(requests, step, deadline):
        forward = np.array([(f(x0 + step) - loss) / step])
        backward = np.array([(loss - f(x0 - step)) / step])
        return {"p": (forward, backward, np.array([True]))}

    _kinks.resolve(found, probe, h, loss, time.monotonic() + 10, 8)
    return found["p"].state[0]


def test_the_ladder_tells_corners_from_bugs():
    relu = lambda v: max(v, 0.0)  # noqa: E731
    # A corner exactly at the point: backprop takes one side, every central difference the mean.
    assert _resolve(relu, 0.0) == _kinks.KINK
    assert _resolve(relu, 1.0) == _kinks.KINK
    assert _resolve(relu, 1.5) == _kinks.FAILED  # outside both slopes
    # A corner within h: the step h/10 no longer reaches it.
    assert _resolve(lambda v: relu(v - 3e-5), 0.0) == _kinks.KINK
    # Smooth: a wrong value is a failure, the right one needs no probe.
    assert _resolve(np.sin, 1.02) == _kinks.FAILED
    assert _resolve(np.sin, float("nan")) == _kinks.FAILED


def test_the_cross_check_of_the_kernels_allows_for_rounding_at_a_tiny_step():
    # At h = 1e-8 each central difference carries ~1e-8 of rounding: the kernels and the
    # reader's loss may differ by that, and the check must stay on the engine.
    result = check(two_layer(), method="engine", h=1e-8)
    assert result.passed and "engine" in result.method, result.report()
