"""fastnum.engine against the NumPy layers (fastnum.convnet.ReferenceLayeredNet).

Every stack is checked at tiny sizes for every parameter (both strategies, and
at sampled indices), so the module also runs as plain Python under
NUMBA_DISABLE_JIT=1 and without numba.  The book-size SimpleConvNet on real
MNIST is checked at sampled parameters in tests/test_convnet.py (compiled only).
"""

from __future__ import annotations

import numpy as np
import pytest

from fastnum import engine
from fastnum._jit import get_num_threads, set_num_threads
from fastnum.convnet import ReferenceLayeredNet, param_names
from fastnum.kernels import _blocks
from tests._stacks import SIMPLE, STACKS, max_abs_diff, problem

TOL = 1e-9  # gradients, absolute
REL = 1e-12  # losses and forward passes, relative
STRATEGIES = ("delta", "full")


@pytest.mark.parametrize("name", STACKS)
def test_forward_and_loss_match_reference(name):
    ref, params, x, t = problem(name)
    ref_y = ref.predict(x)
    comp_y = engine.predict(ref.stack, params, x)
    assert comp_y.shape == ref_y.shape
    assert np.abs(comp_y - ref_y).max() <= REL * np.abs(ref_y).max()
    ref_loss = ref.loss(x, t)
    assert abs(engine.loss(ref.stack, params, x, t) - ref_loss) <= REL * abs(ref_loss)


def test_large_batches_run_in_chunks_with_the_same_result():
    ref, params, x, t = problem("conv-only", batch=2 * engine._FORWARD_CHUNK + 3)
    comp_y = engine.predict(ref.stack, params, x)
    ref_y = ref.predict(x)
    assert np.abs(comp_y - ref_y).max() <= REL * np.abs(ref_y).max()
    # Chunking never changes a sample's result: one sample alone gives the same row.
    assert np.array_equal(engine.predict(ref.stack, params, x[-1:]), comp_y[-1:])


def unguarded_loss(ref, x, t):
    """Batch-mean -log(softmax) without the guard, from the reference's logits."""
    z = ReferenceLayeredNet._logits(ref, x, ReferenceLayeredNet.layers.fget(ref))
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(t)), t].mean())


def test_log_guard_zero_is_the_unguarded_loss():
    ref, params, x, t = problem("simpleconv", scale=2.0)
    ref_loss = unguarded_loss(ref, x, t)
    comp_loss = engine.loss(ref.stack, params, x, t, log_guard=0.0)
    assert abs(comp_loss - ref_loss) <= REL * abs(ref_loss)
    assert comp_loss != engine.loss(ref.stack, params, x, t)  # the guard really is an argument


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", STACKS)
def test_every_parameter_matches_reference(name, strategy):
    ref, params, x, t = problem(name)
    ref_g = ref.numerical_gradient(x, t)
    comp_g = engine.numerical_gradient(ref.stack, params, x, t, strategy=strategy)
    assert {k: v.shape for k, v in comp_g.items()} == {k: v.shape for k, v in ref_g.items()}
    assert max_abs_diff(comp_g, ref_g) <= TOL
    # The engine never writes into the parameters it is given.
    assert max_abs_diff(params, ref.params) == 0.0


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "name", ["simpleconv", "pool3-stride2-pad1", "dense-mixed", "two-convs", "two-layer-relu"]
)
def test_gradient_at_sampled_indices(name, strategy):
    ref, params, x, t = problem(name, seed=3)
    rng = np.random.default_rng(7)
    names = param_names(ref.stack)
    # Some names left out, some indices repeated, order arbitrary.
    indices = {k: rng.integers(0, params[k].size, 4) for k in names[::2]}
    indices[names[-1]] = np.array([1, 0, 1])
    ref_g = ref.numerical_gradient(x, t)
    comp_g = engine.numerical_gradient_at(ref.stack, params, x, t, indices, strategy=strategy)
    assert comp_g.keys() == indices.keys()
    for k, idx in indices.items():
        assert comp_g[k].shape == (len(idx),)
        assert np.abs(comp_g[k] - ref_g[k].ravel()[idx]).max() <= TOL


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradient_with_another_guard_matches_its_own_central_differences(strategy):
    ref, params, x, t = problem("dense-relu-3", scale=1.5)
    h = 1e-4
    comp_g = engine.numerical_gradient(
        ref.stack, params, x, t, h=h, strategy=strategy, log_guard=0.0
    )
    for k in param_names(ref.stack):
        w = ref.params[k]
        for i in range(w.size):
            idx = np.unravel_index(i, w.shape)
            saved = w[idx]
            w[idx] = saved + h
            f_plus = unguarded_loss(ref, x, t)
            w[idx] = saved - h
            f_minus = unguarded_loss(ref, x, t)
            w[idx] = saved
            assert abs(comp_g[k][idx] - (f_plus - f_minus) / (2 * h)) <= TOL


def test_delta_plan_covers_one_conv_block_and_dense_layers():
    assert engine._delta_plan(SIMPLE) == engine._DeltaPlan(
        SIMPLE[0], SIMPLE[1:3], (("W2", "b2", _blocks.RELU), ("W3", "b3", _blocks.NONE))
    )
    assert engine._delta_plan(STACKS["two-convs"][0]) is None  # the conv-stack kernel's
    assert engine._delta_plan((("relu",), ("affine", "W", "b"))) is None


def test_fast_paths_are_selected_at_the_books_guard(monkeypatch):
    ref, params, x, t = problem("two-layer-sigmoid")
    from fastnum.kernels import two_layer

    expected = two_layer.numerical_gradient_trusted(
        two_layer.as_params(params), x, t, 1e-4, "delta"
    )
    comp_g = engine.numerical_gradient(ref.stack, params, x, t)
    assert max_abs_diff(comp_g, expected) == 0.0
    assert engine.loss(ref.stack, params, x, t) == two_layer.loss_trusted(
        two_layer.as_params(params), x, t
    )
    assert np.array_equal(
        engine.predict(ref.stack, params, x),
        two_layer.predict_trusted(two_layer.as_params(params), x),
    )
    # Another guard cannot use the hand-written kernels (their guard is fixed).
    calls = []

    def spy(stack, params, x, t, h, strategy):
        calls.append(strategy)
        return None

    monkeypatch.setattr(
        engine, "FAST_PATHS", tuple(f._replace(gradient=spy) for f in engine.FAST_PATHS)
    )
    engine.numerical_gradient(ref.stack, params, x, t, log_guard=1e-3)
    assert calls == []
    engine.numerical_gradient(ref.stack, params, x, t)  # at the book's guard they are asked
    assert calls == ["delta", "delta"]  # the two rows that serve delta


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_layer_kernel_takes_relu_and_matches_at_its_corner(strategy):
    # Units whose input sits exactly at ReLU's corner, within h of it on either side,
    # and far below it (the kernel skips those): every case the delta kernel branches on.
    from fastnum.kernels import two_layer

    ref, params, x, t = problem("two-layer-relu", batch=4)
    h = 1e-4
    a1 = x @ params["W1"]
    for j, offset in enumerate((0.0, 0.5 * h, -0.5 * h, -2.0, 3 * h)):
        params["b1"][j] = ref.params["b1"][j] = offset - a1[1, j]
    ref_g = ref.numerical_gradient(x, t)
    comp_g = two_layer.numerical_gradient_trusted(
        two_layer.as_params(params), x, t, h, strategy, _blocks.RELU
    )
    assert max_abs_diff(comp_g, ref_g) <= TOL
    if strategy == "delta":  # the engine hands the stack to this kernel
        assert max_abs_diff(engine.numerical_gradient(ref.stack, params, x, t), comp_g) == 0.0


def test_dense_stacks_of_one_activation_take_the_dense_full_kernel_for_full():
    ref, params, x, t = problem("dense-relu-3")
    from fastnum.kernels import _blocks, dense_full

    names = param_names(ref.stack)
    packed = _blocks.pack_dense([params[k] for k in names[0::2]], [params[k] for k in names[1::2]])
    expected = dense_full.numerical_gradient_trusted(packed, x, t, 1e-4, _blocks.RELU)
    comp_g = engine.numerical_gradient(ref.stack, params, x, t, strategy="full")
    assert max_abs_diff(comp_g, dict(zip(names, expected, strict=True))) == 0.0
    # delta stays on the engine's own kernels; the same values to rounding.
    assert engine._fast_path(ref.stack, params, x, t, 1e-4, "delta", 1e-7) is None
    assert max_abs_diff(engine.numerical_gradient(ref.stack, params, x, t), comp_g) <= TOL


def test_a_strategy_that_does_not_cover_a_stack_refuses_it(monkeypatch):
    # A strategy row without a fallback refuses the stacks it does not cover, naming
    # the strategy and the stack, instead of running another strategy.
    ref, params, x, t = problem("conv-bn")  # batch norm after a conv: no delta kernel
    row = engine.Strategy(lambda *args: None, None)
    monkeypatch.setitem(engine.STRATEGIES, "sparse", row)
    with pytest.raises(engine.StrategyNotImplementedError) as refused:
        engine.numerical_gradient(ref.stack, params, x, t, strategy="sparse")
    message = str(refused.value)
    assert "strategy='sparse'" in message and "conv, batchnorm" in message
    with pytest.raises(engine.StrategyNotImplementedError, match="strategy='sparse'"):
        engine.numerical_gradient_at(ref.stack, params, x, t, {"W1": [0]}, strategy="sparse")
    # delta's fallback to full is the table's, explicit: the same values as full.
    assert engine.STRATEGIES["delta"].fallback == "full"
    assert engine._delta(ref.stack, params, x, t, 1e-4, 1e-7, None, None) is None
    ref_g = engine.numerical_gradient(ref.stack, params, x, t, strategy="full")
    comp_g = engine.numerical_gradient(ref.stack, params, x, t, strategy="delta")
    assert max_abs_diff(comp_g, ref_g) == 0.0


def test_unknown_strategy_and_layer_kind_are_refused():
    ref, params, x, t = problem("simpleconv")
    with pytest.raises(ValueError, match="strategy='fast'"):
        engine.numerical_gradient(ref.stack, params, x, t, strategy="fast")
    with pytest.raises(ValueError, match="'lstm' is unknown"):
        engine.param_names((("lstm",),))


@pytest.mark.threads
@pytest.mark.parametrize("name", ["simpleconv", "dense-mixed", "two-layer-relu"])
def test_results_are_bit_identical_at_one_and_two_threads(name):
    ref, params, x, t = problem(name, batch=7)
    before = get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            set_num_threads(threads)
            results.append(
                (
                    engine.numerical_gradient(ref.stack, params, x, t),
                    engine.loss(ref.stack, params, x, t),
                    engine.predict(ref.stack, params, x),
                )
            )
    finally:
        set_num_threads(before)
    (g1, l1, y1), (g2, l2, y2) = results
    assert max_abs_diff(g1, g2) == 0.0 and l1 == l2 and np.array_equal(y1, y2)
