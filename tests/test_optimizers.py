"""The chapter 6 optimizers: update rules, defaults, in-place updates, convergence, state."""

# The book's networks draw their weights from NumPy's global generator; so does this test.
# ruff: noqa: NPY002

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fastnum.optimizers import (
    EPS,
    OPTIMIZERS,
    SGD,
    AdaGrad,
    Adam,
    Momentum,
    Nesterov,
    RMSprop,
    make_optimizer,
)
from fastnum.reference import function_2, numerical_gradient
from tests import book_style_nets as book
from tests._training import blob_data

# --- the rules, transcribed from the formulas: one step of one array, state in a dict --------


def ref_sgd(p, g, s, lr):
    return p - lr * g


def ref_momentum(p, g, s, lr, momentum):
    s["v"] = momentum * s["v"] - lr * g
    return p + s["v"]


def ref_nesterov(p, g, s, lr, momentum):
    s["v"] = momentum * s["v"] - lr * g
    return p + momentum * momentum * s["v"] - (1 + momentum) * lr * g


def ref_adagrad(p, g, s, lr):
    s["h"] = s["h"] + g * g
    return p - lr * g / (np.sqrt(s["h"]) + 1e-7)


def ref_rmsprop(p, g, s, lr, decay_rate):
    s["h"] = decay_rate * s["h"] + (1 - decay_rate) * g * g
    return p - lr * g / (np.sqrt(s["h"]) + 1e-7)


def ref_adam(p, g, s, lr, beta1, beta2):
    s["t"] += 1
    lr_t = lr * np.sqrt(1.0 - beta2 ** s["t"]) / (1.0 - beta1 ** s["t"])
    s["m"] = s["m"] + (1 - beta1) * (g - s["m"])
    s["v"] = s["v"] + (1 - beta2) * (g**2 - s["v"])
    return p - lr_t * s["m"] / (np.sqrt(s["v"]) + 1e-7)


REFS = {
    "sgd": (ref_sgd, ()),
    "momentum": (ref_momentum, ("v",)),
    "nesterov": (ref_nesterov, ("v",)),
    "adagrad": (ref_adagrad, ("h",)),
    "rmsprop": (ref_rmsprop, ("h",)),
    "adam": (ref_adam, ("m", "v")),
}
# Hyperparameters away from the defaults, so that a swapped or ignored one shows.
HYPER = {
    "sgd": {"lr": 0.3},
    "momentum": {"lr": 0.05, "momentum": 0.7},
    "nesterov": {"lr": 0.05, "momentum": 0.6},
    "adagrad": {"lr": 0.2},
    "rmsprop": {"lr": 0.02, "decay_rate": 0.8},
    "adam": {"lr": 0.01, "beta1": 0.7, "beta2": 0.95},
}


def params_and_grads(seed, steps):
    rng = np.random.default_rng(seed)
    params = {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    grads = [{k: rng.standard_normal(p.shape) for k, p in params.items()} for _ in range(steps)]
    return params, grads


def test_the_table_names_every_optimizer():
    assert set(OPTIMIZERS) == set(REFS)
    assert all(cls.name == name for name, cls in OPTIMIZERS.items())


@pytest.mark.parametrize("name", list(REFS))
def test_each_rule_matches_its_formula_over_several_steps(name):
    ref_rule, slots = REFS[name]
    hyper = HYPER[name]
    params, grads = params_and_grads(1, steps=6)
    ref_params = {k: p.copy() for k, p in params.items()}
    ref_state = {k: {**{s: np.zeros_like(p) for s in slots}, "t": 0} for k, p in params.items()}
    optimizer = make_optimizer(name, **hyper)
    comp_params = params
    for g in grads:
        optimizer.update(comp_params, g)
        for k in ref_params:
            ref_params[k] = ref_rule(ref_params[k], g[k], ref_state[k], **hyper)
    for k in ref_params:
        # Same operations in the same order: the same bits, as the book's code gives.
        assert np.array_equal(comp_params[k], ref_params[k]), k
        for s in slots:
            assert np.array_equal(optimizer.state[s][k], ref_state[k][s]), (k, s)
        assert not np.array_equal(comp_params[k], params_and_grads(1, 0)[0][k])  # it moved
    assert optimizer.iterations == len(grads)


def test_the_books_adam_is_adam_with_its_epsilon_inside_the_bias_correction():
    # Kingma & Ba's bias-corrected m_hat / (sqrt(v_hat) + eps) equals the book's folded
    # step size up to where eps sits: eps / sqrt(v), about 3e-6 of a step here.
    params, grads = params_and_grads(2, steps=8)
    lr, b1, b2 = 0.01, 0.9, 0.999
    start = params["W"].copy()
    ref_p, m, v = start.copy(), 0.0, 0.0
    optimizer = Adam(lr, b1, b2)
    for t, g in enumerate(grads, start=1):
        optimizer.update(params, g)
        m = b1 * m + (1 - b1) * g["W"]
        v = b2 * v + (1 - b2) * g["W"] ** 2
        ref_p = ref_p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + EPS)
    np.testing.assert_allclose(params["W"] - start, ref_p - start, rtol=1e-4)
    assert not np.array_equal(params["W"], ref_p)  # the book's placement, not the paper's


def test_the_books_defaults():
    book_defaults = {
        SGD: {"lr": 0.01},
        Momentum: {"lr": 0.01, "momentum": 0.9},
        Nesterov: {"lr": 0.01, "momentum": 0.9},
        AdaGrad: {"lr": 0.01},
        RMSprop: {"lr": 0.01, "decay_rate": 0.99},
        Adam: {"lr": 0.001, "beta1": 0.9, "beta2": 0.999},
    }
    for cls, defaults in book_defaults.items():
        optimizer = cls()
        assert cls.defaults() == defaults == optimizer.hyperparameters
        for k, v in defaults.items():
            assert getattr(optimizer, k) == v  # the book's attribute names
    assert repr(Adam()) == "Adam(lr=0.001, beta1=0.9, beta2=0.999)"
    assert EPS == 1e-7


@pytest.mark.parametrize("name", list(REFS))
def test_update_is_in_place_and_the_books_layers_see_it(name):
    np.random.seed(3)
    net = book.TwoLayerNet(6, 5, 4, weight_init_std=0.5)
    (x, t), _ = blob_data(4)
    arrays = dict(net.params)  # the objects, not copies
    before = {k: p.copy() for k, p in net.params.items()}
    optimizer = make_optimizer(name, lr=0.1)
    loss0 = net.loss(x, t)
    for _ in range(20):
        optimizer.update(net.params, net.gradient(x, t))
    assert all(net.params[k] is arrays[k] for k in arrays)
    assert net.layers["Affine1"].W is net.params["W1"]
    assert net.layers["Affine2"].b is net.params["b2"]
    assert not np.array_equal(net.params["W1"], before["W1"])
    assert net.loss(x, t) < 0.9 * loss0  # the layers compute with the updated weights


@pytest.mark.parametrize(
    "name, lr",
    [("sgd", 0.1), ("momentum", 0.1), ("nesterov", 0.1), ("adagrad", 1.0), ("rmsprop", 0.1)]
    + [("adam", 0.1)],
)
def test_each_converges_on_the_books_function_2(name, lr):
    optimizer = make_optimizer(name, lr=lr)
    params = {"x": np.array([-3.0, 4.0])}
    start = function_2(params["x"])
    losses = []
    for _ in range(300):
        optimizer.update(params, {"x": numerical_gradient(function_2, params["x"])})
        losses.append(function_2(params["x"]))
    assert np.abs(params["x"]).max() < 1e-5
    assert max(losses[-50:]) < 1e-9 * start


@pytest.mark.parametrize(
    "cls, kwargs, error",
    [
        (SGD, {"lr": 0}, ValueError),
        (SGD, {"lr": -0.1}, ValueError),
        (SGD, {"lr": float("nan")}, ValueError),
        (Adam, {"lr": float("inf")}, ValueError),
        (SGD, {"lr": "0.1"}, TypeError),
        (SGD, {"lr": True}, TypeError),
        (Momentum, {"momentum": 1.0}, ValueError),
        (Momentum, {"momentum": -0.1}, ValueError),
        (Nesterov, {"momentum": float("nan")}, ValueError),
        (RMSprop, {"decay_rate": 1}, ValueError),
        (RMSprop, {"decay_rate": None}, TypeError),
        (Adam, {"beta1": 1.0}, ValueError),
        (Adam, {"beta2": 1.5}, ValueError),
        (Adam, {"beta2": -1e-9}, ValueError),
    ],
)
def test_bad_hyperparameters_are_refused_by_name(cls, kwargs, error):
    [(name, value)] = kwargs.items()
    with pytest.raises(error) as info:
        cls(**kwargs)
    message = str(info.value)
    assert f"{name}={value!r}" in message or f"{name}={float(value)!r}" in message
    assert f"the book uses {name}={cls.defaults()[name]}" in message


def test_edges_of_the_ranges_are_accepted():
    assert Momentum(momentum=0).momentum == 0.0
    assert Adam(beta1=0, beta2=0).beta2 == 0.0
    assert RMSprop(decay_rate=np.float32(0.5)).decay_rate == 0.5
    assert type(SGD(lr=np.float64(0.5)).lr) is float


def test_make_optimizer_refuses_unknown_names_and_unused_hyperparameters():
    with pytest.raises(ValueError, match="optimizer='adadelta' is unknown; use one of: sgd"):
        make_optimizer("adadelta")
    with pytest.raises(ValueError, match="takes lr, beta1, beta2, not momentum"):
        make_optimizer("adam", momentum=0.9)
    assert make_optimizer("rmsprop").hyperparameters == {"lr": 0.01, "decay_rate": 0.99}


def test_update_refuses_mismatched_params_and_grads():
    params, [grads] = params_and_grads(5, steps=1)
    optimizer = Adam()
    with pytest.raises(ValueError, match=r"missing \['b'\], extra \['c'\]"):
        optimizer.update(params, {"W": grads["W"], "c": grads["b"]})
    with pytest.raises(ValueError, match=r"grads\['b'\] has shape \(4,\) but params\['b'\] has"):
        optimizer.update(params, {**grads, "b": np.zeros(4)})
    with pytest.raises(TypeError, match=r"params\['b'\] must be a floating-point NumPy array"):
        optimizer.update({**params, "b": np.zeros(3, dtype=int)}, grads)
    with pytest.raises(TypeError, match="params must be a dict"):
        optimizer.update([params["W"]], grads)
    assert optimizer.iterations == 0 and optimizer.state["m"] == {}  # nothing happened
    optimizer.update(params, grads)
    with pytest.raises(ValueError, match="use a new optimizer for another network"):
        optimizer.update({"W": params["W"][:2]}, {"W": grads["W"][:2]})


@pytest.mark.parametrize("name", list(REFS))
def test_state_round_trips_and_continues_bit_for_bit(name):
    hyper = HYPER[name]
    params, grads = params_and_grads(6, steps=6)
    ref_params = {k: p.copy() for k, p in params.items()}
    ref_opt = make_optimizer(name, **hyper)
    for g in grads:
        ref_opt.update(ref_params, g)

    first = make_optimizer(name, **hyper)
    for g in grads[:3]:
        first.update(params, g)
    state = first.state_dict()
    comp_params = {k: p.copy() for k, p in params.items()}
    for g in grads[3:]:  # the snapshot must not follow the optimizer it came from
        first.update(params, {k: 1e3 * a for k, a in g.items()})
    # The numbers go to JSON, the arrays to .npz: both must survive that.
    numbers = json.loads(json.dumps({k: v for k, v in state.items() if k != "state"}))
    comp_opt = make_optimizer(name, **hyper)
    comp_opt.load_state_dict({**numbers, "state": state["state"]})
    for g in grads[3:]:
        comp_opt.update(comp_params, g)
    for k in ref_params:
        assert np.array_equal(comp_params[k], ref_params[k]), k
    assert comp_opt.iterations == ref_opt.iterations == 6


def test_load_state_dict_refuses_another_optimizer_or_hyperparameters():
    params, [grads] = params_and_grads(7, steps=1)
    saved = Momentum(lr=0.05)
    saved.update(params, grads)
    state = saved.state_dict()
    with pytest.raises(ValueError, match="the state is of optimizer 'momentum', not 'nesterov'"):
        Nesterov(lr=0.05).load_state_dict(state)
    with pytest.raises(ValueError, match="lr=0.05 there, 0.01 here"):
        Momentum().load_state_dict(state)
    nan = {k: np.full_like(a, math.nan) for k, a in state["state"]["v"].items()}
    with pytest.raises(ValueError, match="must be finite"):
        Momentum(lr=0.05).load_state_dict({**state, "state": {"v": nan}})
    with pytest.raises(ValueError, match="holds no arrays"):
        Momentum(lr=0.05).load_state_dict({**state, "state": {"v": {}}})
    with pytest.raises(TypeError, match="the dict an optimizer's state_dict"):
        Momentum(lr=0.05).load_state_dict({"v": state["state"]["v"]})
