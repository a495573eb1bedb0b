"""DeepConvNet (chapter 8): the book's shapes, the oracle, the engine, dropout masks, gradcheck.

The NumPy oracle's central differences are checked against its backprop; the engine
(forced with ``backend = "numba"``, plain Python where numba is missing or disabled)
must match the oracle's loss and numerical gradient to 1e-9 at tiny geometries.  Only
the book-size, thread-count and command-line tests need numba compiled.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastnum
from fastnum import layers
from fastnum.deepconv import DEFAULT_CONV_PARAMS, DeepConvNet, ReferenceDeepConvNet
from fastnum.gradcheck import _stack
from tests._backends import on_kernels

TOL = 1e-9  # engine vs the oracle, absolute
GUARD_TOL = 2e-6  # numerical (guarded loss) vs backprop (unguarded), absolute


def conv(n, pad=1, size=3, stride=1):
    return {"filter_num": n, "filter_size": size, "pad": pad, "stride": stride}


# (input_dim, six conv params): the book's pads at a 4x4 input (ends at 1x1), a non-square
# two-channel input, and a stride-2 first convolution followed by a 2x2 filter without pad.
GEOMETRIES = {
    "4x4": ((1, 4, 4), [conv(2), conv(2), conv(2), conv(2, 2), conv(2), conv(2)]),
    "12x4": ((2, 12, 4), [conv(2), conv(3), conv(2), conv(2, 2), conv(3), conv(2)]),
    "stride2": (
        (1, 9, 9),
        [conv(2, 1, 3, 2), conv(2, 0, 2), conv(2), conv(2, 2), conv(2), conv(3)],
    ),
}


def small_net(name, batch=3, seed=0, backend="numpy", hidden=4, classes=3, dropout_ratio=0.5):
    """A small net with random biases (off the kinks) and random inputs and labels."""
    input_dim, convs = GEOMETRIES[name]
    net = DeepConvNet(
        input_dim,
        *convs,
        hidden_size=hidden,
        output_size=classes,
        dropout_ratio=dropout_ratio,
        seed=seed,
        backend=backend,
    )
    rng = np.random.default_rng(seed + 100)
    for k in net.param_names:
        if k.startswith("b"):
            net.params[k] = rng.normal(0, 0.3, net.params[k].shape)
    x = rng.random((batch, *input_dim))
    return net, x, rng.integers(0, classes, batch)


def twins(name, **kwargs):
    """The same network (seed, parameters) on the reference and on the engine, and a batch."""
    ref_net, x, t = small_net(name, **kwargs)
    comp_net, _, _ = small_net(name, **kwargs)
    return ref_net, on_kernels(comp_net), x, t


def max_abs_diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


# ----------------------------------------------------------------------------- the book's network


def test_the_book_network_shapes_stack_and_he_init():
    net = DeepConvNet(seed=3, backend="numpy")
    shapes = {k: v.shape for k, v in net.params.items()}
    assert shapes == {
        "W1": (16, 1, 3, 3),
        "b1": (16,),
        "W2": (16, 16, 3, 3),
        "b2": (16,),
        "W3": (32, 16, 3, 3),
        "b3": (32,),
        "W4": (32, 32, 3, 3),
        "b4": (32,),
        "W5": (64, 32, 3, 3),
        "b5": (64,),
        "W6": (64, 64, 3, 3),
        "b6": (64,),
        "W7": (1024, 50),
        "b7": (50,),
        "W8": (50, 10),
        "b8": (10,),
    }
    assert sum(v.size for v in net.params.values()) == 123_552
    assert [spec[0] for spec in net.stack] == (
        ["conv", "relu", "conv", "relu", "pool"] * 3
        + ["affine", "relu", "dropout", "affine", "dropout"]
    )
    assert [spec[4] for spec in net.stack if spec[0] == "conv"] == [1, 1, 1, 2, 1, 1]
    # He: W_k = sqrt(2 / fan_in) * N(0, 1), drawn in order from the seed; biases zero.
    rng = np.random.default_rng(3)
    fan_in = [1 * 9, 16 * 9, 16 * 9, 32 * 9, 32 * 9, 64 * 9, 1024, 50]
    for k, n_in in enumerate(fan_in, start=1):
        w = net.params[f"W{k}"]
        assert np.array_equal(w, math.sqrt(2.0 / n_in) * rng.standard_normal(w.shape))
        assert not np.any(net.params[f"b{k}"])
    assert net.dropout_ratio == 0.5 and fastnum.DeepConvNet is DeepConvNet


def test_layers_are_the_book_list_over_the_current_params():
    net, x, t = small_net("4x4")
    built = net.layers
    assert isinstance(built, list)
    kinds = [type(layer) for layer in built]
    assert kinds[:5] == [layers.Convolution, layers.Relu] * 2 + [layers.Pooling]
    assert kinds[-5:] == [layers.Affine, layers.Relu, layers.Dropout, layers.Affine, layers.Dropout]
    assert built[0].W is net.params["W1"] and built[-2].b is net.params["b8"]
    assert isinstance(net.last_layer, layers.SoftmaxWithLoss)
    net.loss(x, t)  # draws the step's masks: the Dropout layers hold them
    assert np.array_equal(net.layers[-1].mask, net.dropout_masks["mask2"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_dim": (1, 27, 27)}, "cannot be max-pooled"),
        ({"input_dim": (1, 28)}, "(channels, height, width)"),
        ({"conv_param_3": {"filter_nums": 3}}, "conv_param_3 has unknown key"),
        ({"conv_param_2": {"pad": -1}}, "conv_param_2['pad']"),
        ({"dropout_ratio": 1.0}, "must be below 1"),
        ({"dropout_ratio": -0.1}, "dropout_ratio"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"output_size": 1}, "output_size"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError) as info:
        DeepConvNet(backend="numpy", **kwargs)
    assert message in str(info.value)


def test_bad_inputs_and_params_are_refused():
    net, x, t = small_net("4x4")
    with pytest.raises(ValueError, match=r"reshape\(-1, 1, 4, 4\)"):
        net.loss(x.reshape(len(x), -1), t)
    net.params["W3"] = np.zeros((2, 2, 2, 2))
    with pytest.raises(ValueError, match="params\\['W3'\\] has shape"):
        net.predict(x)
    with pytest.raises(ValueError, match="batch_size"):
        small_net("4x4")[0].accuracy(x, t, batch_size=0)


# ----------------------------------------------------------------------------- the oracle


@pytest.mark.parametrize("name", GEOMETRIES)
def test_oracle_numerical_gradient_matches_its_backprop(name):
    net, x, t = small_net(name, batch=2)
    masks = net.new_dropout_masks(len(x))
    ref_bp = ReferenceDeepConvNet.gradient(net, x, t)  # uses the masks, then draws others
    net.dropout_masks = masks
    loss = lambda _: ReferenceDeepConvNet._fixed_mask_loss(net, x, t, masks)  # noqa: E731
    for name_ in net.param_names:
        # h = 1e-7 stays clear of the kinks; the guard moves the numerical side by ~1e-6.
        num = fastnum.reference.numerical_gradient(loss, net.params[name_], 1e-7)
        assert np.abs(num - ref_bp[name_]).max() <= GUARD_TOL, name_
    assert any(np.any(g) for g in ref_bp.values())


def test_one_mask_set_per_gradient_from_the_seeded_generator():
    net, x, t = small_net("4x4", batch=4, hidden=6)
    net.numerical_gradient(x, t)
    first = {k: v.copy() for k, v in net.dropout_masks.items()}
    assert set(first) == {"mask1", "mask2"} and first["mask1"].shape == (4, 6)
    assert 0 < first["mask1"].mean() < 1
    # gradient() uses the masks of the numerical gradient before it, then draws the next set.
    comp_bp = net.gradient(x, t)
    twin = small_net("4x4", batch=4, hidden=6)[0]
    twin.dropout_masks = first
    assert max_abs_diff(comp_bp, ReferenceDeepConvNet.gradient(twin, x, t)) == 0.0
    assert not all(np.array_equal(first[k], net.dropout_masks[k]) for k in first)
    # The third set drawn from the seed (gradient, gradient's next, gradient), whoever draws it.
    net.numerical_gradient(x, t)
    other = small_net("4x4", batch=4, hidden=6)[0]
    for _ in range(3):
        third = other.new_dropout_masks(4)
    assert all(np.array_equal(net.dropout_masks[k], third[k]) for k in third)


def test_test_mode_scales_by_the_keep_rate():
    net, x, t = small_net("12x4", dropout_ratio=0.25)
    p = net.predict(x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    logits = x
    for layer in net.layers:
        logits = (
            layer.forward(logits, False)
            if isinstance(layer, layers.Dropout)
            else (layer.forward(logits))
        )
    np.testing.assert_allclose(p, fastnum.reference.softmax(logits), rtol=1e-12)
    hidden = small_net("12x4", dropout_ratio=0.0)[0]
    assert np.array_equal(hidden.predict(x), hidden.predict(x, train_flg=True))


# ----------------------------------------------------------------------------- the engine


@pytest.mark.parametrize("name", GEOMETRIES)
def test_engine_loss_and_predict_match_the_oracle(name):
    ref_net, comp_net, x, t = twins(name)
    assert abs(ref_net.loss(x, t) - comp_net.loss(x, t)) <= TOL
    for train_flg in (False, True):
        ref_p, comp_p = ref_net.predict(x, train_flg), comp_net.predict(x, train_flg)
        assert np.abs(ref_p - comp_p).max() <= 1e-12
    assert ref_net.accuracy(x, t) == comp_net.accuracy(x, t) == comp_net.accuracy(x, t, 2)


@pytest.mark.parametrize(
    ("name", "strategy"), [("4x4", "delta"), ("4x4", "full"), ("stride2", "delta")]
)
def test_engine_numerical_gradient_matches_the_oracle(name, strategy):
    ref_net, comp_net, x, t = twins(name, batch=2)
    ref_ = ref_net.numerical_gradient(x, t)
    comp_ = comp_net.numerical_gradient(x, t, strategy=strategy)
    assert max_abs_diff(ref_, comp_) <= TOL
    # The same masks on both sides: units dropped in every sample get exactly no gradient.
    assert all(
        np.array_equal(ref_net.dropout_masks[k], comp_net.dropout_masks[k])
        for k in ("mask1", "mask2")
    )
    dropped = ~comp_net.dropout_masks["mask1"].any(axis=0)
    assert np.all(comp_["W8"][dropped] == 0.0)


def test_engine_numerical_gradient_at_matches_the_oracle():
    ref_net, comp_net, x, t = twins("12x4", batch=2)
    rng = np.random.default_rng(5)
    indices = {
        k: rng.choice(v.size, min(4, v.size), replace=False) for k, v in ref_net.params.items()
    }
    ref_ = ref_net.numerical_gradient_at(x, t, indices)
    comp_ = comp_net.numerical_gradient_at(x, t, indices)
    assert max_abs_diff(ref_, comp_) <= TOL
    with pytest.raises(ValueError, match="flat indices"):
        comp_net.numerical_gradient_at(x, t, {"W1": np.array([10_000])})


@pytest.mark.numba
def test_the_book_size_on_the_engine_matches_the_oracle():
    ref_net = DeepConvNet(seed=0, backend="numpy")
    comp_net = DeepConvNet(seed=0, backend="numba")
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 28, 28))
    x[x < 0.6] = 0.0  # blank background, as in MNIST
    t = np.array([3, 8])
    assert abs(ref_net.loss(x, t) - comp_net.loss(x, t)) <= TOL
    indices = {k: rng.choice(v.size, 3, replace=False) for k, v in ref_net.params.items()}
    ref_ = ref_net.numerical_gradient_at(x, t, indices)
    comp_ = comp_net.numerical_gradient_at(x, t, indices)
    assert max_abs_diff(ref_, comp_) <= TOL


@pytest.mark.threads
def test_gradient_does_not_depend_on_the_thread_count():
    from fastnum._jit import get_num_threads, set_num_threads

    before = get_num_threads()
    grads = []
    try:
        for threads in (1, 2):
            set_num_threads(threads)
            net, x, t = small_net("4x4", batch=2, backend="numba")
            grads.append(net.numerical_gradient(x, t))
    finally:
        set_num_threads(before)
    assert all(np.array_equal(grads[0][k], grads[1][k]) for k in grads[0])


# ----------------------------------------------------------------------------- gradcheck


def book_net(seed=0):
    """The book-style chapter 8 class (a reader's code) at the 4x4 geometry, random biases."""
    from tests import book_style_nets

    input_dim, convs = GEOMETRIES["4x4"]
    np.random.seed(seed)  # noqa: NPY002 - the book's classes draw from the global generator
    net = book_style_nets.DeepConvNet(input_dim, *convs, hidden_size=5, output_size=3)
    rng = np.random.default_rng(seed)
    for k, v in net.params.items():
        if k.startswith("b"):
            v[...] = rng.normal(0, 0.3, v.shape)  # in place: the layers hold these arrays
    x = rng.random((3, *input_dim))
    return net, x, rng.integers(0, 3, 3)


def test_gradcheck_recognises_the_book_style_deep_conv_net():
    net, x, t = book_net()
    stack = _stack.recognise(net)
    input_dim, convs = GEOMETRIES["4x4"]
    ours = DeepConvNet(input_dim, *convs, hidden_size=5, output_size=3, backend="numpy").stack
    assert [s[0] for s in stack] == [s[0] for s in ours]
    assert [s for s in stack if s[0] != "dropout"] == [s for s in ours if s[0] != "dropout"]
    engine = fastnum.gradcheck(net, x, t, method="engine", workers=1)
    generic = fastnum.gradcheck(net, x, t, method="generic", workers=1)
    assert "engine" in engine.method and "generic" in generic.method
    assert engine.verdict == generic.verdict == "PASS"
    # The same central differences through the kernels (the reader's masks) and its own loss.
    for name in net.params:
        ref_, comp_ = generic.params[name], engine.params[name]
        assert abs(ref_.max_abs - comp_.max_abs) <= TOL, name
        assert abs(ref_.book_error - comp_.book_error) <= TOL, name


def test_gradcheck_catches_a_wrong_backprop_in_the_book_style_net():
    from tests import book_style_nets

    net, x, t = book_net(seed=1)
    old = net.layers[-2]
    net.layers[-2] = book_style_nets.AffineWrongBiasGrad(old.W, old.b)
    result = fastnum.gradcheck(net, x, t, method="engine", workers=1)
    assert result.verdict == "FAIL" and result.failed == ["b8"]


def test_gradcheck_of_fastnum_deep_conv_net_on_the_engine():
    net, x, t = small_net("4x4", batch=2)
    on_kernels(net)
    result = fastnum.gradcheck(net, x, t, method="engine", workers=1)
    assert result.verdict == "PASS" and "engine" in result.method


# ----------------------------------------------------------------------------- command line


@pytest.mark.numba
def test_cli_gradcheck_net_deepconv(capsys, monkeypatch, mnist_parsed_once):
    import fastnum.deepconv
    from fastnum.cli import main

    # The book's geometry (28x28, its pads, three poolings) with 2 filters per convolution.
    small = tuple({**c, "filter_num": 2} for c in DEFAULT_CONV_PARAMS)
    monkeypatch.setattr(fastnum.deepconv, "DEFAULT_CONV_PARAMS", small)
    argv = ["gradcheck", "--net", "deepconv", "--hidden", "4", "--batch-size", "2"]
    assert main([*argv, "--data-dir", str(mnist_parsed_once)]) == 0
    out = capsys.readouterr().out
    assert "engine fast path" in out and "h=1e-08" in out and "W8       4x10" in out
    assert "DeepConvNet is checked with its He-initialised weights" in out


def test_cli_deepconv_refuses_a_weight_init_std(capsys):
    from fastnum.cli import main

    assert main(["gradcheck", "--net", "deepconv", "--weight-init-std", "0.01"]) == 2
    assert "does not apply to --net deepconv" in capsys.readouterr().err
