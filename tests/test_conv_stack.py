"""The delta gradient of deep convolution stacks against the engine's ``full`` path.

Every stack is tiny, so each check covers every parameter and also runs as plain
Python (NUMBA_DISABLE_JIT=1, no numba).  The inputs are built to cross corners:
small-integer images and weights on a coarse grid give ReLU inputs that are exactly
0 and pooling windows with tied maxima, and a tiny-weight variant puts many
pre-activations within h of their corner.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastnum import _conv_stack_plan, engine
from fastnum._jit import JIT_ENABLED, get_num_threads, set_num_threads
from fastnum.convnet import ReferenceLayeredNet
from fastnum.kernels import conv_stack

TOL = 1e-9  # gradients, absolute

# name -> (stack, parameter shapes, input shape per sample, dropout mask shapes)
STACKS = {
    "two-convs": (
        (
            ("conv", "W1", "b1", 1, 1),
            ("relu",),
            ("conv", "W2", "b2", 1, 0),
            ("relu",),
            ("pool", 2, 2, 2, 0),
            ("affine", "W3", "b3"),
        ),
        {"W1": (3, 2, 3, 3), "b1": (3,), "W2": (2, 3, 2, 2), "b2": (2,), "W3": (8, 3), "b3": (3,)},
        (2, 5, 5),
        {},
    ),
    "deepconv-like": (  # the chapter 8 pattern, small: conv relu conv relu pool ... dropout
        (
            ("conv", "W1", "b1", 1, 1),
            ("relu",),
            ("conv", "W2", "b2", 1, 1),
            ("relu",),
            ("pool", 2, 2, 2, 0),
            ("conv", "W3", "b3", 1, 2),
            ("relu",),
            ("pool", 2, 2, 2, 0),
            ("affine", "W4", "b4"),
            ("relu",),
            ("dropout", "m1"),
            ("affine", "W5", "b5"),
            ("dropout", "m2"),
        ),
        {
            "W1": (2, 1, 3, 3),
            "b1": (2,),
            "W2": (3, 2, 3, 3),
            "b2": (3,),
            "W3": (2, 3, 3, 3),
            "b3": (2,),
            "W4": (2 * 3 * 3, 5),
            "b4": (5,),
            "W5": (5, 4),
            "b5": (4,),
        },
        (1, 8, 8),
        {"m1": (5,), "m2": (4,)},
    ),
    "strides-sigmoid-mask-in-block": (
        (
            ("conv", "W1", "b1", 2, 1),
            ("sigmoid",),
            ("dropout", "m1"),
            ("pool", 3, 3, 1, 1),
            ("conv", "W2", "b2", 1, 0),
            ("relu",),
            ("pool", 2, 2, 1, 0),
            ("affine", "W3", "b3"),
            ("sigmoid",),
            ("affine", "W4", "b4"),
        ),
        {
            "W1": (2, 2, 3, 3),
            "b1": (2,),
            "W2": (3, 2, 2, 2),
            "b2": (3,),
            "W3": (3 * 2 * 1, 4),
            "b3": (4,),
            "W4": (4, 3),
            "b4": (3,),
        },
        (2, 7, 5),
        {"m1": (2, 4, 3)},
    ),
}


def problem(name, batch=2, seed=0, grid=False, scale=0.5):
    """Parameters, images, labels and masks of one stack.

    ``grid``: images of 0, 1, 2 and weights on multiples of 0.25 with zero biases (ReLU
    inputs exactly 0, tied pooling maxima); otherwise normal draws times ``scale``.
    """
    stack, shapes, sample, mask_shapes = STACKS[name]
    rng = np.random.default_rng(seed)
    if grid:
        params = {k: 0.25 * rng.integers(-2, 3, s).astype(float) for k, s in shapes.items()}
        params.update({k: np.zeros(s) for k, s in shapes.items() if k.startswith("b")})
        x = rng.integers(0, 3, (batch, *sample)).astype(float)
    else:
        params = {k: scale * rng.normal(size=s) for k, s in shapes.items()}
        x = rng.normal(size=(batch, *sample))
    n_classes = shapes[[s[1] for s in stack if s[0] == "affine"][-1]][1]
    t = rng.integers(0, n_classes, batch).astype(np.int64)
    masks = {
        k: (rng.random((batch, int(np.prod(s)))) > 0.3).astype(float)
        for k, s in mask_shapes.items()
    }
    return stack, params, x, t, masks


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def test_plan_takes_deep_stacks_and_leaves_the_rest():
    for stack, *_ in STACKS.values():
        assert _conv_stack_plan.plan(stack) is not None
    simple = (("conv", "W1", "b1", 1, 0), ("relu",), ("pool", 2, 2, 2, 0), ("affine", "W2", "b2"))
    assert _conv_stack_plan.plan(simple) is None  # the engine's one-conv kernel keeps it
    with_dropout = simple + (("dropout", "m"),)
    assert _conv_stack_plan.plan(with_dropout) is not None
    assert _conv_stack_plan.plan((("affine", "W", "b"), ("relu",), ("affine", "V", "c"))) is None
    batchnorm = (("conv", "W1", "b1", 1, 0), ("batchnorm", "g", "be"), *simple)
    assert _conv_stack_plan.plan(batchnorm) is None
    no_dense_output = (("conv", "W1", "b1", 1, 0), ("relu",), ("conv", "W2", "b2", 1, 0))
    assert _conv_stack_plan.plan(no_dense_output) is None


@pytest.mark.parametrize("name", STACKS)
@pytest.mark.parametrize(
    "variant",
    [{}, {"grid": True}, {"scale": 1e-4}, {"scale": 1e-2, "seed": 2}],
    ids=["normal", "grid-ties", "tiny", "small"],
)
def test_every_parameter_matches_the_full_path(name, variant):
    stack, params, x, t, masks = problem(name, **variant)
    ref_g = engine.numerical_gradient(stack, params, x, t, strategy="full", masks=masks)
    comp_g = engine.numerical_gradient(stack, params, x, t, strategy="delta", masks=masks)
    assert max_diff(comp_g, ref_g) <= TOL
    # The reference oracle agrees on the loss the full path differentiates.
    ref_loss = ReferenceLayeredNet(stack, params, masks).loss(x, t)
    assert abs(engine.loss(stack, params, x, t, masks=masks) - ref_loss) <= 1e-12 * abs(ref_loss)


def test_corners_within_h_are_crossed_and_still_match():
    # Biases put many ReLU inputs within h of 0, so +h and -h land on different sides.
    stack, params, x, t, masks = problem("deepconv-like", grid=True, seed=3)
    h = 1e-4
    for k in ("b1", "b2", "b3"):
        params[k] = np.full(params[k].shape, 0.5 * h)
    ref_g = engine.numerical_gradient(stack, params, x, t, h=h, strategy="full", masks=masks)
    comp_g = engine.numerical_gradient(stack, params, x, t, h=h, strategy="delta", masks=masks)
    assert max_diff(comp_g, ref_g) <= TOL


@pytest.mark.skipif(JIT_ENABLED, reason="counts calls of a kernel function: plain Python only")
def test_the_linear_stretch_is_taken_and_left_where_a_corner_may_be_crossed(monkeypatch):
    # conv relu pool affine maps its input's change through one matrix unless a window
    # of the pooling may change its argmax or a ReLU its side; then the ops run one by one.
    taken = []

    def counted(*args):
        taken.append(linear_tail(*args))
        return taken[-1]

    linear_tail = conv_stack._linear_tail
    monkeypatch.setattr(conv_stack, "_linear_tail", counted)
    stack, params, x, t, masks = problem("deepconv-like", scale=1e-2, seed=2)
    ref_g = engine.numerical_gradient(stack, params, x, t, strategy="full", masks=masks)
    comp_g = engine.numerical_gradient(stack, params, x, t, strategy="delta", masks=masks)
    assert max_diff(comp_g, ref_g) <= TOL
    assert True in taken and False in taken


def test_sampled_indices_and_weight_decay():
    stack, params, x, t, masks = problem("deepconv-like", seed=1)
    rng = np.random.default_rng(5)
    indices = {k: rng.integers(0, v.size, 4) for k, v in params.items() if k != "b5"}
    ref_g = engine.numerical_gradient_at(
        stack, params, x, t, indices, strategy="full", masks=masks, weight_decay=0.1
    )
    comp_g = engine.numerical_gradient_at(
        stack, params, x, t, indices, strategy="delta", masks=masks, weight_decay=0.1
    )
    assert set(comp_g) == set(indices)
    assert max_diff(comp_g, ref_g) <= TOL


def test_missing_mask_is_refused():
    stack, params, x, t, _ = problem("deepconv-like")
    with pytest.raises(ValueError, match="masks"):
        engine.numerical_gradient(stack, params, x, t, strategy="delta")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the full path meets inf - inf
def test_a_non_finite_loss_gives_nan_like_the_full_path():
    stack, params, x, t, masks = problem("two-convs")
    params["b3"] = np.array([1e308, -1e308, 0.0]) * 10
    comp_g = engine.numerical_gradient(stack, params, x, t, strategy="delta", masks=masks)
    ref_g = engine.numerical_gradient(stack, params, x, t, strategy="full", masks=masks)
    assert all(np.isnan(g).all() for g in comp_g.values())
    assert all(np.isnan(g).all() for g in ref_g.values())


def test_delta_memory_counts_the_caches_and_the_guard_refuses_early(monkeypatch):
    stack, params, x, t, masks = problem("deepconv-like")
    mem = engine.delta_memory(stack, params, x.shape[1:])  # at the current thread count
    shape, stages = x.shape[1:], x[0].size
    for spec in stack:
        shape = engine.LAYER_KINDS[spec[0]].out_shape(spec, params, shape)
        stages += int(np.prod(shape))
    assert mem.per_sample >= 8 * stages  # at least every stage of the pass, once
    assert mem.bytes(10) - mem.bytes(9) == mem.per_sample
    monkeypatch.setenv(engine.MEMORY_LIMIT_ENV, str(mem.bytes(1)))
    with pytest.raises(engine.DeltaMemoryError, match="at most 1 samples"):
        engine.numerical_gradient(stack, params, x, t, strategy="delta", masks=masks)


@pytest.mark.threads
def test_results_are_bit_identical_at_one_and_two_threads():
    stack, params, x, t, masks = problem("deepconv-like", batch=5, grid=True)
    before = get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            set_num_threads(threads)
            results.append(
                engine.numerical_gradient(stack, params, x, t, strategy="delta", masks=masks)
            )
    finally:
        set_num_threads(before)
    assert max_diff(results[0], results[1]) == 0.0


def deep_conv_net(batch, seed=0, ratio=0.5):
    """The chapter 8 architecture (6 convolutions 3x3, 3 poolings, dropout; 123,552
    parameters, He initialisation), images with a zero background like MNIST's."""
    rng = np.random.default_rng(seed)
    stack, params = [], {}
    for i, (fn, c, pad) in enumerate(
        [(16, 1, 1), (16, 16, 1), (32, 16, 1), (32, 32, 2), (64, 32, 1), (64, 64, 1)], 1
    ):
        params[f"W{i}"] = rng.normal(0, np.sqrt(2.0 / (9 * c)), (fn, c, 3, 3))
        params[f"b{i}"] = np.zeros(fn)
        stack += [("conv", f"W{i}", f"b{i}", 1, pad), ("relu",)]
        if i % 2 == 0:
            stack.append(("pool", 2, 2, 2, 0))
    params["W7"], params["b7"] = rng.normal(0, np.sqrt(2.0 / 1024), (1024, 50)), np.zeros(50)
    params["W8"], params["b8"] = rng.normal(0, np.sqrt(2.0 / 50), (50, 10)), np.zeros(10)
    stack += [("affine", "W7", "b7"), ("relu",), ("dropout", "m1")]
    stack += [("affine", "W8", "b8"), ("dropout", "m2")]
    x = rng.random((batch, 1, 28, 28)) * (rng.random((batch, 1, 28, 28)) < 0.2)
    t = rng.integers(0, 10, batch).astype(np.int64)
    masks = {
        k: (rng.random((batch, d)) >= ratio).astype(float) for k, d in (("m1", 50), ("m2", 10))
    }
    return tuple(stack), params, x, t, masks


@pytest.mark.numba
def test_the_chapter8_deep_conv_net_matches_the_full_path_at_sampled_parameters():
    stack, params, x, t, masks = deep_conv_net(batch=2)
    assert sum(v.size for v in params.values()) == 123_552
    assert _conv_stack_plan.plan(stack) is not None
    rng = np.random.default_rng(1)
    indices = {k: rng.integers(0, v.size, 2) for k, v in params.items()}
    ref_g = engine.numerical_gradient_at(stack, params, x, t, indices, strategy="full", masks=masks)
    comp_g = engine.numerical_gradient_at(
        stack, params, x, t, indices, strategy="delta", masks=masks
    )
    assert max_diff(comp_g, ref_g) <= TOL
    mem = engine.delta_memory(stack, params, x.shape[1:], threads=2)
    assert 1e6 < mem.per_sample < 1e7  # every stage (121k doubles) and the linear stretch


@pytest.mark.numba  # tracemalloc over the plain-Python kernels traces every scalar: minutes
def test_delta_memory_bounds_the_arrays_the_gradient_allocates(monkeypatch):
    import tracemalloc

    monkeypatch.setenv(engine.MEMORY_LIMIT_ENV, "off")
    stack, params, x, t, masks = problem("deepconv-like", batch=300)
    x = x + 5.0  # no zeros: the estimate's worst case
    engine.numerical_gradient(
        stack, params, x[:2], t[:2], masks={k: m[:2] for k, m in masks.items()}
    )
    tracemalloc.start()
    try:
        engine.numerical_gradient(stack, params, x, t, strategy="delta", masks=masks)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = engine.delta_memory(stack, params, x.shape[1:]).bytes(len(x))
    # The tasks' buffers, allocated inside the compiled kernels, are not traced.
    assert 0.5 * estimate <= peak <= estimate
