"""MultiLayerNet: the numba kernels against the NumPy oracle, at several depths and widths.

Sizes stay tiny so the module also runs quickly as plain Python under
NUMBA_DISABLE_JIT=1.  The kernels are reached through the validating network,
with ``on_kernels`` forcing its numba backend, which works with or without numba
installed (without it the kernels are plain Python); only the thread-count test
needs compiled kernels (the ``numba`` marker).  Strategies and activations come
from their tables, so a new entry is tested here without editing this file.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastnum import reference
from fastnum._jit import JIT_ENABLED, get_num_threads, set_num_threads
from fastnum.activations import ACTIVATIONS
from fastnum.backend import STRATEGIES
from fastnum.multilayer import MultiLayerNet, ReferenceMultiLayerNet
from fastnum.network import TwoLayerNet
from tests._backends import on_kernels
from tests._stacks import max_abs_diff

TOL = 1e-9  # kernels vs the oracle's numerical gradient, absolute
ACTIVATION_NAMES = list(ACTIVATIONS)


def random_net_and_batch(hidden, activation, batch, seed=0, n_in=6, n_out=4, zero_frac=0.5):
    """A net with O(1) random weights and biases, sparse inputs and labels."""
    net = MultiLayerNet(
        n_in, hidden, n_out, activation=activation, weight_init_std=0.7, seed=seed, backend="numpy"
    )
    rng = np.random.default_rng(seed + 100)
    for k in net.param_names:
        if k.startswith("b"):  # non-zero biases, so they are really exercised
            net.params[k] = rng.normal(0, 0.5, net.params[k].shape)
    x = rng.random((batch, n_in))
    x[rng.random(x.shape) < zero_frac] = 0.0
    t = rng.integers(0, n_out, batch)
    return net, x, t


def oracle_gradient(net, x, t):
    return ReferenceMultiLayerNet.numerical_gradient(net, x, t)


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("hidden", [(), (1,), (3,), (7,), (3, 7), (7, 1, 3)])
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("batch", [1, 5])
def test_kernel_gradients_match_the_reference(hidden, activation, batch):
    net, x, t = random_net_and_batch(hidden, activation, batch)
    ref_ = oracle_gradient(net, x, t)
    on_kernels(net)
    for strategy in STRATEGIES:
        comp_ = net.numerical_gradient(x, t, strategy=strategy)
        assert all(comp_[k].shape == net.params[k].shape for k in comp_)
        assert max_abs_diff(comp_, ref_) <= TOL, strategy


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_label_formats_dtypes_and_layouts_give_the_same_gradient(activation):
    net, x, t = random_net_and_batch((3, 7), activation, 5)
    on_kernels(net)
    x32 = x.astype(np.float32)
    for strategy in STRATEGIES:
        base = net.numerical_gradient(x32.astype(np.float64), t, strategy=strategy)
        assert max_abs_diff(base, oracle_gradient(net, x32.astype(np.float64), t)) <= TOL
        wide = np.zeros((5, 2 * x.shape[1]), dtype=np.float32)
        wide[:, ::2] = x32  # a strided view of the same values
        for xv, tv in [
            (x32, t),
            (wide[:, ::2], t),
            (np.asfortranarray(x32), t),
            (x32, np.eye(4)[t]),
            (x32, t.astype(np.uint8)),
        ]:
            g = net.numerical_gradient(xv, tv, strategy=strategy)
            assert all(np.array_equal(g[k], base[k]) for k in base), strategy


def test_numpy_backend_is_the_reference():
    net, x, t = random_net_and_batch((3,), "relu", 5)
    assert net.backend == "numpy"
    assert max_abs_diff(net.numerical_gradient(x, t), oracle_gradient(net, x, t)) == 0.0


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("hidden", [(), (7,), (3, 7, 5)])
def test_loss_predict_accuracy_match_the_reference(activation, hidden):
    net, x, t = random_net_and_batch(hidden, activation, 5)
    ref_net = ReferenceMultiLayerNet.__new__(ReferenceMultiLayerNet)
    ref_net.params, ref_net.activation = net.params, activation
    on_kernels(net)
    assert np.allclose(net.predict(x), ref_net.predict(x), rtol=1e-12, atol=0)
    assert net.loss(x, t) == pytest.approx(ref_net.loss(x, t), rel=1e-12)
    assert net.loss(x, np.eye(4)[t]) == net.loss(x, t)
    assert net.accuracy(x, t) == ref_net.accuracy(x, t)


def test_gradients_leave_the_parameters_untouched():
    net, x, t = random_net_and_batch((3, 7), "sigmoid", 5)
    before = {k: v.copy() for k, v in net.params.items()}
    on_kernels(net)
    for strategy in STRATEGIES:
        net.numerical_gradient(x, t, strategy=strategy)
    assert all(np.array_equal(before[k], net.params[k]) for k in before)


# ----------------------------------------------------------------------------- backprop


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("hidden", [(7,), (3, 7), (7, 5, 3)])
def test_numerical_gradient_agrees_with_backprop(activation, hidden):
    net, x, t = random_net_and_batch(hidden, activation, 5, seed=3)
    on_kernels(net)
    bp = net.gradient(x, t)
    assert max_abs_diff(bp, net.gradient(x, np.eye(4)[t])) == 0.0
    num = net.numerical_gradient(x, t)
    flat = lambda g: np.concatenate([g[k].ravel() for k in net.param_names])  # noqa: E731
    # The 1e-7 log guard alone moves the numerical gradient by ~1e-6 relative.
    rel = np.linalg.norm(flat(num) - flat(bp)) / np.linalg.norm(flat(bp))
    assert rel <= 1e-5


# ----------------------------------------------------------------------------- determinism


@pytest.mark.threads
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_results_do_not_depend_on_the_thread_count(activation):
    net, x, t = random_net_and_batch((7, 5), activation, 9, n_in=23, n_out=3)
    on_kernels(net)
    results = {}
    all_threads = get_num_threads()
    try:
        for threads in (1, 2):
            set_num_threads(threads)
            results[threads] = [net.numerical_gradient(x, t, strategy=s) for s in STRATEGIES]
            results[threads].append({"predict": net.predict(x)})
    finally:
        set_num_threads(all_threads)
    one, many = results[1], results[2]
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(one, many, strict=True) for k in a)


# ----------------------------------------------------------------------------- TwoLayerNet


def test_one_hidden_layer_is_the_two_layer_net():
    rng = np.random.default_rng(7)
    x, t = rng.random((5, 8)), rng.integers(0, 3, 5)
    two = TwoLayerNet(8, 4, 3, weight_init_std=0.3, seed=11, backend="numpy")
    deep = MultiLayerNet(
        8, [4], 3, activation="sigmoid", weight_init_std=0.3, seed=11, backend="numpy"
    )
    assert deep.param_names == TwoLayerNet.PARAM_NAMES
    assert all(np.array_equal(two.params[k], deep.params[k]) for k in two.params)
    assert deep.loss(x, t) == two.loss(x, t)
    assert np.array_equal(deep.predict(x), two.predict(x))
    assert max_abs_diff(deep.gradient(x, t), two.gradient(x, t)) == 0.0
    assert max_abs_diff(deep.numerical_gradient(x, t), two.numerical_gradient(x, t)) == 0.0
    on_kernels(deep)
    for strategy in STRATEGIES:
        g = deep.numerical_gradient(x, t, strategy=strategy)
        assert max_abs_diff(g, two.numerical_gradient(x, t)) <= TOL
    # an int hidden_sizes is the same single hidden layer
    assert MultiLayerNet(8, 4, 3, weight_init_std=0.3, seed=11).sizes == (8, 4, 3)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"activation": "tanh"}, ValueError, "activation='tanh'.*sigmoid, relu"),
        ({"hidden_sizes": [3, 0]}, ValueError, r"hidden_sizes\[1\]=0"),
        ({"hidden_sizes": [3, 2.5]}, TypeError, r"hidden_sizes\[1\]=2.5"),
        ({"hidden_sizes": "50"}, TypeError, "sequence of layer widths"),
        ({"hidden_sizes": None}, TypeError, "sequence of layer widths"),
        ({"output_size": 1}, ValueError, "at least 2"),
        ({"input_size": 0}, ValueError, "input_size=0"),
        ({"weight_init_std": float("nan")}, ValueError, "weight_init_std"),
        ({"backend": "cuda"}, ValueError, "backend='cuda'"),
        ({"strategy": "fast"}, ValueError, "strategy='fast'"),
    ],
)
def test_bad_construction_is_refused(kwargs, error, message):
    args = {"input_size": 6, "hidden_sizes": [3], "output_size": 4} | kwargs
    with pytest.raises(error, match=message):
        MultiLayerNet(**args)


def test_empty_hidden_sizes_is_softmax_regression():
    net = MultiLayerNet(6, [], 4, seed=0)
    assert net.param_names == ("W1", "b1") and net.sizes == (6, 4)


@pytest.mark.parametrize(
    ("x", "t", "message"),
    [
        (np.zeros((4, 5)), [0, 1, 2, 1], "5 features.*expects 6"),
        (np.zeros((4, 6)), [0, 1, 2, 4], "label 4, outside 0..3"),
        (np.zeros((4, 6)), [0, 1, -1, 0], "label -1"),
        (np.zeros((4, 6)), [0, 1], r"shape \(2,\)"),
        (np.zeros((4, 6)), np.zeros((4, 3)), r"shape \(4, 3\)"),
        (np.full((4, 6), np.inf), [0, 1, 2, 1], "non-finite"),
        (np.zeros((0, 6)), [], "empty batch"),
        (np.zeros((2, 3, 6)), [0, 1], "expected \\(batch, features\\)"),
    ],
)
def test_bad_inputs_are_refused_with_a_fix(x, t, message):
    net = on_kernels(MultiLayerNet(6, [3, 2], 4, seed=0))
    with pytest.raises(ValueError, match=message):
        net.numerical_gradient(x, t)
    with pytest.raises(ValueError, match=message):
        net.loss(x, t)


def test_bad_step_and_strategy_are_refused():
    net, x, t = random_net_and_batch((3,), "sigmoid", 2)
    for h in (0.0, -1e-4, float("nan")):
        with pytest.raises(ValueError, match="finite positive"):
            net.numerical_gradient(x, t, h=h)
    with pytest.raises(ValueError, match="strategy='exact'"):
        on_kernels(net).numerical_gradient(x, t, strategy="exact")


# ----------------------------------------------------------------------------- real MNIST


def _mnist_test_batch(folder, n):
    from fastnum.data import load_mnist

    _, (x, t) = load_mnist(data_dir=folder)
    return x[:n], t[:n].astype(np.int64)


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_real_mnist_batch(mnist_source_dir, activation):
    # Compiled: a small deep net on 20 images; as Python only what stays quick.
    hidden, n = ((16, 8), 20) if JIT_ENABLED else ((2,), 2)
    x, t = _mnist_test_batch(mnist_source_dir, n)
    assert x.dtype == np.float32 and 0.6 < np.mean(x == 0) < 0.95  # real, sparse pixels
    net = on_kernels(
        MultiLayerNet(784, hidden, 10, activation=activation, weight_init_std=0.1, seed=5)
    )
    x64 = x.astype(np.float64)
    ref_ = oracle_gradient(net, x64, t)
    assert np.abs(ref_["W1"]).max() > 0  # the check is not vacuous
    for strategy in STRATEGIES:
        assert max_abs_diff(net.numerical_gradient(x, t, strategy=strategy), ref_) <= TOL
    assert net.loss(x, t) == pytest.approx(
        reference.cross_entropy_error(ReferenceMultiLayerNet.predict(net, x64), t), rel=1e-12
    )
