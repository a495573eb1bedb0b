"""Chapter 6 on the engine: batch norm, dropout and weight decay against the NumPy layers.

The reference layers (:class:`fastnum.layers.BatchNormalization`, :class:`Dropout`)
are checked against direct formulas and their backward against central differences;
the engine's loss, forward pass and both gradient strategies are checked against
:class:`fastnum.convnet.ReferenceLayeredNet` (the plain-NumPy oracle, brute force at
theta +- h e_i) on small random stacks, so the module also runs under
NUMBA_DISABLE_JIT=1 and without numba.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastnum import _engine_delta, engine, layers
from fastnum._jit import get_num_threads, set_num_threads
from fastnum.constants import BN_EPSILON
from fastnum.convnet import ReferenceLayeredNet, param_names
from fastnum.kernels import normalization
from tests._backends import NUMBA_BACKEND, on_kernels
from tests._stacks import DROPOUT_STACKS, max_abs_diff, problem
from tests.test_layers import check_backward

TOL = 1e-9  # gradients, absolute
REL = 1e-12  # losses and forward passes, relative
STRATEGIES = ("delta", "full")
CH6 = ["dense-bn", "conv-bn", *DROPOUT_STACKS]
DENSE = ["dense-bn", "book-ch6", "dense-dropout", "bn-dropout-mixed"]


# ------------------------------------------------------------------------ reference layers


def test_batchnorm_training_forward_is_the_formula_per_feature():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (5, 2, 3, 2))  # images: every (channel, row, column) a feature
    gamma, beta = rng.normal(1, 0.3, 12), rng.normal(0, 0.3, 12)
    layer = layers.BatchNormalization(gamma, beta, momentum=0.8)
    ref_out = np.empty((5, 12))
    flat = x.reshape(5, 12)
    for f in range(12):
        col = flat[:, f]
        mean = sum(col) / 5
        var = sum((v - mean) ** 2 for v in col) / 5
        ref_out[:, f] = gamma[f] * (col - mean) / np.sqrt(var + BN_EPSILON) + beta[f]
    comp_out = layer.forward(x)
    assert comp_out.shape == x.shape
    assert np.abs(comp_out.reshape(5, 12) - ref_out).max() <= 1e-12
    # Running statistics move from zero by (1 - momentum) towards the batch's.
    assert np.allclose(layer.running_mean, 0.2 * flat.mean(axis=0), rtol=1e-14)
    assert np.allclose(layer.running_var, 0.2 * flat.var(axis=0), rtol=1e-14)


def test_batchnorm_test_mode_uses_the_running_statistics():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (4, 3))
    mean, var = rng.normal(0, 1, 3), rng.random(3) + 0.5
    layer = layers.BatchNormalization(np.full(3, 2.0), np.full(3, 0.5), 0.9, mean, var)
    comp = layer.forward(x, train_flg=False)
    ref = 2.0 * (x - mean) / np.sqrt(var + BN_EPSILON) + 0.5
    assert np.abs(comp - ref).max() <= 1e-14
    assert layer.running_mean is mean  # test mode leaves them alone


@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 2, 3)])
def test_batchnorm_backward_matches_central_differences(shape):
    rng = np.random.default_rng(2)
    n_features = int(np.prod(shape[1:]))
    layer = layers.BatchNormalization(
        rng.normal(1, 0.5, n_features), rng.normal(0, 0.5, n_features)
    )
    check_backward(layer, rng.normal(0, 1, shape), params=[("gamma", "dgamma"), ("beta", "dbeta")])


def test_dropout_mask_is_data_drawn_from_a_generator_or_given():
    x = np.random.default_rng(3).normal(0, 1, (4, 6))
    a = layers.Dropout(0.3, rng=np.random.default_rng(5))
    b = layers.Dropout(0.3, rng=np.random.default_rng(5))
    out_a = a.forward(x)
    assert np.array_equal(out_a, b.forward(x))  # same seed, same mask
    ref_mask = np.random.default_rng(5).random(x.shape) > 0.3
    assert np.array_equal(a.mask, ref_mask) and np.array_equal(out_a, x * ref_mask)
    given = np.random.default_rng(9).random(x.shape) > 0.5
    assert np.array_equal(a.forward(x, mask=given), x * given)
    assert np.array_equal(a.backward(np.ones_like(x)), given.astype(float))
    assert np.array_equal(a.forward(x, train_flg=False), x * 0.7)  # test mode: the keep rate
    # Without a generator, NumPy's global state, as the book draws it.
    np.random.seed(11)  # noqa: NPY002
    first = layers.Dropout(0.5).forward(x)
    np.random.seed(11)  # noqa: NPY002
    assert np.array_equal(layers.Dropout(0.5).forward(x), first)


def test_dropout_backward_matches_central_differences():
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (3, 5))
    mask = rng.random(x.shape) > 0.5
    layer = layers.Dropout(0.5)
    layer.forward = lambda v, train_flg=True, _f=layer.forward: _f(v, train_flg, mask=mask)
    check_backward(layer, x)


# ------------------------------------------------------------------------ engine vs reference


@pytest.mark.parametrize("weight_decay", [0.0, 0.2])
@pytest.mark.parametrize("name", CH6)
def test_forward_and_loss_match_reference(name, weight_decay):
    ref, params, x, t = problem(name, batch=4, weight_decay=weight_decay)
    ref_y = ref.predict(x)
    comp_y = engine.predict(ref.stack, params, x, masks=ref.masks)
    assert np.abs(comp_y - ref_y).max() <= REL * np.abs(ref_y).max()
    ref_loss = ref.loss(x, t)
    comp_loss = engine.loss(ref.stack, params, x, t, masks=ref.masks, weight_decay=weight_decay)
    assert abs(comp_loss - ref_loss) <= REL * abs(ref_loss)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.2])
@pytest.mark.parametrize("name", CH6)
def test_every_parameter_matches_reference(name, weight_decay, strategy):
    ref, params, x, t = problem(name, batch=4, weight_decay=weight_decay)
    ref_g = ref.numerical_gradient(x, t)
    comp_g = engine.numerical_gradient(
        ref.stack, params, x, t, strategy=strategy, masks=ref.masks, weight_decay=weight_decay
    )
    assert {k: v.shape for k, v in comp_g.items()} == {k: v.shape for k, v in ref_g.items()}
    assert max_abs_diff(comp_g, ref_g) <= TOL
    assert max_abs_diff(params, ref.params) == 0.0  # the engine never writes into them


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("name", ["book-ch6", "conv-bn-dropout"])
def test_random_problems_with_both_strategies(name, seed):
    ref, params, x, t = problem(name, batch=3 + seed, seed=seed, scale=1.0, weight_decay=0.05)
    ref_g = ref.numerical_gradient(x, t)
    for strategy in STRATEGIES:
        comp_g = engine.numerical_gradient(
            ref.stack, params, x, t, strategy=strategy, masks=ref.masks, weight_decay=0.05
        )
        assert max_abs_diff(comp_g, ref_g) <= TOL


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_relu_corners_after_batch_norm_match_brute_force(strategy):
    # beta1 puts unit 0 exactly at relu's corner for sample 1 and units 1, 2 within h of
    # it: the perturbed evaluations cross the corner, and every loss value must still be
    # the brute-force one.
    ref, params, x, t = problem("book-ch6", batch=5, weight_decay=0.1)
    h = 1e-4
    z = x @ params["W1"] + params["b1"]
    xn = (z - z.mean(axis=0)) / np.sqrt(z.var(axis=0) + BN_EPSILON)
    for j, offset in enumerate((0.0, 0.5 * h, -0.5 * h)):
        params["beta1"][j] = ref.params["beta1"][j] = offset - params["gamma1"][j] * xn[1, j]
    ref_g = ref.numerical_gradient(x, t)
    comp_g = engine.numerical_gradient(
        ref.stack, params, x, t, h=h, strategy=strategy, masks=ref.masks, weight_decay=0.1
    )
    assert max_abs_diff(comp_g, ref_g) <= TOL


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", ["book-ch6", "conv-bn-dropout"])
def test_gradient_at_sampled_indices(name, strategy):
    ref, params, x, t = problem(name, seed=3, weight_decay=0.3)
    rng = np.random.default_rng(7)
    names = param_names(ref.stack)
    indices = {k: rng.integers(0, params[k].size, 4) for k in names[::2]}
    indices[names[-1]] = np.array([1, 0, 1])
    ref_g = ref.numerical_gradient(x, t)
    comp_g = engine.numerical_gradient_at(
        ref.stack, params, x, t, indices, strategy=strategy, masks=ref.masks, weight_decay=0.3
    )
    assert comp_g.keys() == indices.keys()
    for k, idx in indices.items():
        assert np.abs(comp_g[k] - ref_g[k].ravel()[idx]).max() <= TOL


def test_weight_decay_covers_conv_and_affine_weights_only():
    ref, params, x, t = problem("conv-bn-dropout", weight_decay=0.0)
    lam = 0.7
    ref_term = sum(0.5 * lam * np.sum(params[k] ** 2) for k in ("W1", "W2"))
    plain = engine.loss(ref.stack, params, x, t, masks=ref.masks)
    decayed = engine.loss(ref.stack, params, x, t, masks=ref.masks, weight_decay=lam)
    assert abs((decayed - plain) - ref_term) <= 1e-12 * ref_term
    g0 = engine.numerical_gradient(ref.stack, params, x, t, masks=ref.masks, strategy="full")
    g1 = engine.numerical_gradient(
        ref.stack, params, x, t, masks=ref.masks, strategy="full", weight_decay=lam
    )
    for k in ("b1", "gamma1", "beta1", "b2"):  # biases, gamma, beta: untouched
        assert np.array_equal(g0[k], g1[k])
    for k in ("W1", "W2"):  # the term's derivative lambda * W (exact for a quadratic)
        assert np.abs(g1[k] - g0[k] - lam * params[k]).max() <= 1e-9


def test_delta_plan_covers_dense_chapter6_stacks_and_its_kernel_runs(monkeypatch):
    for name in DENSE:
        ref, params, x, t = problem(name)
        assert engine._norm_plan(ref.stack, x) is not None
    ref, params, x, t = problem("conv-bn-dropout")
    assert engine._norm_plan(ref.stack, x) is None  # a convolution: full
    calls = []
    original = normalization._norm_delta_task
    monkeypatch.setattr(
        normalization, "_norm_delta_task", lambda *a: calls.append(1) or original(*a)
    )
    ref, params, x, t = problem("book-ch6")
    engine.numerical_gradient(ref.stack, params, x, t, masks=ref.masks)
    assert calls  # delta is the delta kernel, not another strategy
    calls.clear()
    engine.numerical_gradient(ref.stack, params, x, t, masks=ref.masks, strategy="full")
    assert not calls


def test_masks_are_inputs_and_a_missing_one_is_named():
    ref, params, x, t = problem("dense-dropout")
    assert "mask1" not in engine.param_names(ref.stack)
    with pytest.raises(ValueError, match=r"masks \['mask1', 'mask2'\]"):
        engine.loss(ref.stack, params, x, t)
    # A dropped unit's parameters move nothing: all-zero mask columns give zero gradients.
    masks = {k: v.copy() for k, v in ref.masks.items()}
    masks["mask1"][:, 2] = 0.0
    g = engine.numerical_gradient(ref.stack, params, x, t, masks=masks)
    assert np.all(g["W1"][:, 2] == 0.0) and g["b1"][2] == 0.0


def test_batch_norm_batches_are_never_split():
    batch = 2 * engine._FORWARD_CHUNK + 3
    for name in ("dense-bn", "dense-dropout"):
        ref, params, x, t = problem(name, batch=batch)
        ref_loss = ref.loss(x, t)
        comp_loss = engine.loss(ref.stack, params, x, t, masks=ref.masks)
        assert abs(comp_loss - ref_loss) <= REL * abs(ref_loss)


@pytest.mark.threads
@pytest.mark.parametrize("name", ["book-ch6", "conv-bn-dropout"])
def test_results_are_bit_identical_at_one_and_two_threads(name):
    ref, params, x, t = problem(name, batch=7, weight_decay=0.1)
    before = get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            set_num_threads(threads)
            results.append(
                (
                    engine.numerical_gradient(
                        ref.stack, params, x, t, masks=ref.masks, weight_decay=0.1
                    ),
                    engine.loss(ref.stack, params, x, t, masks=ref.masks, weight_decay=0.1),
                    engine.predict(ref.stack, params, x, masks=ref.masks),
                )
            )
    finally:
        set_num_threads(before)
    (g1, l1, y1), (g2, l2, y2) = results
    assert max_abs_diff(g1, g2) == 0.0 and l1 == l2 and np.array_equal(y1, y2)


def test_reference_backprop_with_batch_norm_dropout_and_decay_matches_its_numerical_gradient():
    # The oracle's own backward (used by gradient checks) against its brute force.
    ref, params, x, t = problem("book-ch6", batch=6, scale=0.3, weight_decay=0.2)
    num = ReferenceLayeredNet.numerical_gradient(ref, x, t, h=1e-6)
    bp = ref.gradient(x, t)
    assert max_abs_diff(num, bp) <= 1e-6  # the log guard and h^2 truncation, nothing more


# ------------------------------------------------------------------------ the public network

BOOK_CH6 = dict(
    activation="relu",
    weight_init_std=0.3,
    seed=1,
    use_batchnorm=True,
    use_dropout=True,
    dropout_ratio=0.3,
    weight_decay_lambda=0.1,
)


def ch6_problem(batch=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 12))
    x[x < 0.4] = 0.0
    return x, rng.integers(0, 4, batch)


def test_multilayer_net_is_exported_with_the_books_names():
    import fastnum

    net = fastnum.MultiLayerNet(12, [7, 5], 4, **BOOK_CH6)
    assert list(net.params) == [
        *("W1", "b1", "W2", "b2", "W3", "b3"),
        *("gamma1", "beta1", "gamma2", "beta2"),
    ]
    assert net.param_names == (
        *("W1", "b1", "gamma1", "beta1", "W2", "b2", "gamma2", "beta2", "W3", "b3"),
    )
    assert np.array_equal(net.params["gamma2"], np.ones(5))
    assert np.array_equal(net.params["beta1"], np.zeros(7))
    kinds = [spec[0] for spec in net.stack]
    assert kinds == ["affine", "batchnorm", "relu", "dropout"] * 2 + ["affine"]
    plain = fastnum.MultiLayerNet(12, [7, 5], 4, seed=1)
    assert plain.param_names == ("W1", "b1", "W2", "b2", "W3", "b3")
    assert [spec[0] for spec in plain.stack] == ["affine", "sigmoid"] * 2 + ["affine"]


def test_numerical_gradient_numba_equals_numpy_and_uses_one_mask_per_gradient():
    from fastnum.multilayer import MultiLayerNet

    x, t = ch6_problem()
    comp = on_kernels(MultiLayerNet(12, [7, 5], 4, backend="numpy", **BOOK_CH6))
    ref = MultiLayerNet(12, [7, 5], 4, backend="numpy", **BOOK_CH6)
    comp_g = comp.numerical_gradient(x, t)
    ref_g = ref.numerical_gradient(x, t)  # the book's loop over the NumPy layers
    assert max_abs_diff(comp_g, ref_g) <= TOL
    masks = comp.dropout_masks
    assert all(np.array_equal(masks[k], ref.dropout_masks[k]) for k in masks)
    # The gradient is that of the loss with the masks it drew, all evaluations alike ...
    again = engine.numerical_gradient(
        comp.stack, comp.params, x, t, masks=masks, weight_decay=0.1, strategy="full"
    )
    assert max_abs_diff(comp_g, again) <= TOL
    # ... and the next gradient draws new ones from the seeded generator.
    comp.numerical_gradient(x, t)
    assert any(not np.array_equal(masks[k], comp.dropout_masks[k]) for k in masks)


@pytest.mark.parametrize("backend", [NUMBA_BACKEND, "numpy"])
def test_backprop_sees_the_numerical_gradients_masks_and_gradcheck_passes(backend):
    import fastnum
    from fastnum.multilayer import MultiLayerNet

    x, t = ch6_problem()
    net = MultiLayerNet(12, [7, 5], 4, backend=backend, **BOOK_CH6)
    num = net.numerical_gradient(x, t)
    bp = net.gradient(x, t)  # the same masks, then the next step's are drawn
    for k in num:
        assert np.abs(num[k] - bp[k]).max() <= 1e-5 * max(1.0, np.abs(bp[k]).max()), k
    result = fastnum.gradcheck(net, x, t, workers=1)
    assert all(check.n_fail == 0 for check in result.params.values())


def test_loss_is_the_training_loss_and_test_mode_uses_running_statistics():
    from fastnum.multilayer import MultiLayerNet

    x, t = ch6_problem(batch=8)
    net = MultiLayerNet(12, [7, 5], 4, **BOOK_CH6)
    comp_loss = net.loss(x, t)
    masks = net.dropout_masks
    ref = ReferenceLayeredNet(
        net.stack, {k: v.copy() for k, v in net.params.items()}, masks, weight_decay_lambda=0.1
    )
    assert abs(comp_loss - ref.loss(x, t)) <= REL * comp_loss
    assert net.loss(x, t) == comp_loss  # the same masks until a gradient moves on
    # One gradient moves the running statistics once, from zero by (1 - momentum).
    net.numerical_gradient(x, t)
    z1 = x @ net.params["W1"] + net.params["b1"]
    assert np.allclose(net.running_stats[1][0], 0.1 * z1.mean(axis=0), rtol=1e-12)
    assert np.allclose(net.running_stats[1][1], 0.1 * z1.var(axis=0), rtol=1e-12)
    # Test mode: running statistics and dropout's keep rate, the book's layers by hand.
    p, (mean, var) = net.params, net.running_stats[1]
    a = np.maximum(0, p["gamma1"] * (z1 - mean) / np.sqrt(var + BN_EPSILON) + p["beta1"]) * 0.7
    z2 = a @ p["W2"] + p["b2"]
    mean, var = net.running_stats[2]
    a = np.maximum(0, p["gamma2"] * (z2 - mean) / np.sqrt(var + BN_EPSILON) + p["beta2"]) * 0.7
    logits = a @ p["W3"] + p["b3"]
    ref_y = np.exp(logits - logits.max(axis=1, keepdims=True))
    ref_y /= ref_y.sum(axis=1, keepdims=True)
    assert np.abs(net.predict(x) - ref_y).max() <= 1e-12
    assert net.accuracy(x, t) == np.mean(ref_y.argmax(axis=1) == t)


def test_chapter6_arguments_are_validated():
    from fastnum.multilayer import MultiLayerNet

    with pytest.raises(ValueError, match="dropout_ratio=1.0 must be below 1"):
        MultiLayerNet(4, [3], 2, use_dropout=True, dropout_ratio=1.0)
    with pytest.raises(ValueError, match="weight_decay_lambda=-0.1"):
        MultiLayerNet(4, [3], 2, weight_decay_lambda=-0.1)
    with pytest.raises(TypeError, match="use_batchnorm='yes'"):
        MultiLayerNet(4, [3], 2, use_batchnorm="yes")
    net = MultiLayerNet(4, [3], 2, use_batchnorm=True)
    net.params["gamma1"] = np.ones(4)
    with pytest.raises(ValueError, match="gamma1"):
        net.loss(np.ones((2, 4)), [0, 1])


@pytest.mark.parametrize("pairs", [1, 3])
def test_delta_blocks_of_any_size_give_the_same_gradient(pairs, monkeypatch):
    # A unit's parameters are evaluated in blocks of ``pairs`` (+h and -h each); blocks
    # that split the weights, and the bias/gamma/beta stage, must not change a value.
    ref, params, x, t = problem("book-ch6", batch=5, weight_decay=0.1)
    ref_g = ref.numerical_gradient(x, t)
    monkeypatch.setattr(_engine_delta, "_NORM_PAIRS", pairs)
    comp_g = engine.numerical_gradient(ref.stack, params, x, t, masks=ref.masks, weight_decay=0.1)
    assert max_abs_diff(comp_g, ref_g) <= TOL


@pytest.mark.numba
def test_book_size_chapter6_net_matches_reference_at_sampled_parameters():
    # The network: 784-100-100-10, batch norm, dropout 0.5, weight decay 0.1,
    # batch 10, MNIST-like sparse inputs; the whole delta gradient against the NumPy
    # layers' brute force at 40 sampled entries of every parameter.
    rng = np.random.default_rng(0)
    x = rng.random((10, 784))
    x[rng.random(x.shape) < 0.8] = 0.0
    t = rng.integers(0, 10, 10)
    sizes, params, stack = (784, 100, 100, 10), {}, []
    for k in range(1, 4):
        params[f"W{k}"] = rng.normal(0, np.sqrt(2 / sizes[k - 1]), (sizes[k - 1], sizes[k]))
        params[f"b{k}"] = rng.normal(0, 0.1, sizes[k])
        stack.append(("affine", f"W{k}", f"b{k}"))
        if k < 3:
            params[f"gamma{k}"] = rng.normal(1, 0.1, sizes[k])
            params[f"beta{k}"] = rng.normal(0, 0.1, sizes[k])
            stack += [("batchnorm", f"gamma{k}", f"beta{k}"), ("relu",), ("dropout", f"mask{k}")]
    masks = {f"mask{k}": (rng.random((10, 100)) > 0.5).astype(float) for k in (1, 2)}
    ref = ReferenceLayeredNet(tuple(stack), {k: v.copy() for k, v in params.items()}, masks, 0.1)
    indices = {k: rng.integers(0, v.size, 40) for k, v in params.items()}
    ref_g = ref.numerical_gradient_at(x, t, indices)
    comp_g = engine.numerical_gradient(tuple(stack), params, x, t, masks=masks, weight_decay=0.1)
    for k, idx in indices.items():
        assert np.abs(comp_g[k].ravel()[idx] - ref_g[k]).max() <= TOL, k
