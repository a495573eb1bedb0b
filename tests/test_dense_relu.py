"""The corner-aware delta kernel of dense ReLU stacks (fastnum.kernels.dense_relu).

Its gradient must equal brute force, the engine's ``full`` strategy (every loss at
theta +- h e_i by a whole forward pass) and the NumPy reference, to 1e-9 on nets
built so that relu corners *are* crossed within h: units placed within h of their
corner, exact zeros (dyadic weights and inputs, whose sums are exact), a large h,
tiny weights.  Each such test also counts, by brute force, the perturbations that
change some unit's side, so a net that happens to stay linear cannot pass for one
that crosses.  The nets are tiny, so the module also runs under NUMBA_DISABLE_JIT=1
and without numba.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastnum import engine
from fastnum._jit import get_num_threads, set_num_threads
from fastnum.convnet import ReferenceLayeredNet
from fastnum.kernels import dense_relu
from tests._stacks import max_abs_diff

TOL = 1e-9  # gradients, absolute
H = 1e-4


def relu_stack(n_layers):
    """``affine (relu affine) * (n_layers - 1)`` with parameters W1, b1, W2, ..."""
    stack = []
    for k in range(1, n_layers + 1):
        stack.append(("affine", f"W{k}", f"b{k}"))
        if k < n_layers:
            stack.append(("relu",))
    return tuple(stack)


def _hidden_pre_activations(stack, params, x):
    """Pre-activations of every hidden layer (NumPy, for the crossing count)."""
    zs, a = [], x
    for spec in stack:
        if spec[0] == "affine":
            z = a @ params[spec[1]] + params[spec[2]]
            a = z
        else:
            zs.append(z)
            a = np.maximum(z, 0.0)
    return zs


def corner_crossings(stack, params, x, h):
    """How many of the 2 x n_params perturbations theta +- h e_i put some unit of some
    sample on the other side of its corner (relu(z) = 0 for z <= 0, else z)."""
    base = [z > 0 for z in _hidden_pre_activations(stack, params, x)]
    crossed = 0
    for value in params.values():
        flat = value.reshape(-1)
        for i in range(flat.size):
            saved = flat[i]
            for step in (h, -h):
                flat[i] = saved + step
                zs = _hidden_pre_activations(stack, params, x)
                crossed += any(((z > 0) != on).any() for z, on in zip(zs, base, strict=True))
            flat[i] = saved
    return crossed


def near_corner_net(sizes, batch, seed, h=H, scale=0.8, offsets=None):
    """O(1) weights; each hidden unit's bias puts one sample's pre-activation at an offset
    within a few h of its corner (exactly at it for offset 0)."""
    rng = np.random.default_rng(seed)
    if offsets is None:
        offsets = (0.0, 0.05 * h, -0.05 * h, 0.2 * h, -0.2 * h, 0.5 * h, -0.5 * h, 2 * h)
    stack = relu_stack(len(sizes) - 1)
    x = rng.random((batch, sizes[0]))
    x[rng.random(x.shape) < 0.3] = 0.0
    x[:, 0] = np.round(x[:, 0] * 4) / 4  # repeated input values share evaluations
    params, a = {}, x
    for k in range(1, len(sizes)):
        W = rng.normal(0, scale, (sizes[k - 1], sizes[k]))
        b = rng.normal(0, 0.1, sizes[k])
        z = a @ W + b
        if k < len(sizes) - 1:
            for j in range(sizes[k]):
                s = rng.integers(batch)
                b[j] += offsets[rng.integers(len(offsets))] - z[s, j]
            z = a @ W + b
            a = np.maximum(z, 0.0)
        params[f"W{k}"], params[f"b{k}"] = W, b
    t = rng.integers(0, sizes[-1], batch)
    return stack, params, x, t


def dyadic_net(sizes, batch, seed):
    """Weights, biases and inputs (some negative, the same magnitude with both signs) on a
    grid of 1/4: every sum is exact, so pre-activations of exactly 0 occur (the biases
    put several there), and steps of h = 1/4 land on corners exactly."""
    rng = np.random.default_rng(seed)
    stack = relu_stack(len(sizes) - 1)
    x = rng.integers(-3, 5, (batch, sizes[0])) / 4.0  # negative inputs too
    params, a = {}, x
    for k in range(1, len(sizes)):
        W = rng.integers(-4, 5, (sizes[k - 1], sizes[k])) / 4.0
        b = rng.integers(-2, 3, sizes[k]) / 4.0
        if k < len(sizes) - 1:
            for j in range(0, sizes[k], 2):
                b[j] = -(a[rng.integers(batch)] @ W[:, j])  # exact: a 1/16 grid, small sums
            a = np.maximum(a @ W + b, 0.0)
        params[f"W{k}"], params[f"b{k}"] = W, b
    t = rng.integers(0, sizes[-1], batch)
    return stack, params, x, t


def tiny_net(sizes, batch, seed):
    """Weights and biases of about h: most units sit within a step of their corner."""
    rng = np.random.default_rng(seed)
    stack = relu_stack(len(sizes) - 1)
    x = rng.random((batch, sizes[0]))
    params = {}
    for k in range(1, len(sizes)):
        params[f"W{k}"] = rng.normal(0, 3 * H, (sizes[k - 1], sizes[k]))
        params[f"b{k}"] = rng.normal(0, H, sizes[k])
    t = rng.integers(0, sizes[-1], batch)
    return stack, params, x, t


CASES = {
    # name: (builder, sizes, h)
    "near-corners-3-hidden": (near_corner_net, (6, 5, 4, 4, 3), H),
    "near-corners-1-hidden": (near_corner_net, (5, 4, 3), H),
    "dyadic-large-h": (dyadic_net, (5, 4, 4, 3), 0.25),
    "tiny-weights": (tiny_net, (4, 3, 3, 3, 2), H),
}


def check_against_brute_force(stack, params, x, t, h, log_guard=1e-7):
    """The kernel's gradient against engine full and the NumPy reference; returns it."""
    names = [(spec[1], spec[2]) for spec in stack if spec[0] == "affine"]
    grads = dense_relu.numerical_gradient_trusted(
        [params[w] for w, _ in names], [params[b] for _, b in names], x, t, h, log_guard
    )
    comp_g = {}
    for (wn, bn), (gw, gb) in zip(names, grads, strict=True):
        comp_g[wn], comp_g[bn] = gw, gb
    full_g = engine.numerical_gradient(
        stack, params, x, t, h=h, strategy="full", log_guard=log_guard
    )
    assert max_abs_diff(comp_g, full_g) <= TOL
    if log_guard == 1e-7:
        ref = ReferenceLayeredNet(stack, {k: v.copy() for k, v in params.items()})
        ref_g = ref.numerical_gradient(x, t, h)
        assert max_abs_diff(comp_g, ref_g) <= TOL
    return comp_g


@pytest.mark.parametrize("batch", [1, 5, 17])
@pytest.mark.parametrize("case", CASES)
def test_matches_brute_force_where_corners_are_crossed(case, batch):
    build, sizes, h = CASES[case]
    stack, params, x, t = build(sizes, batch, seed=batch)
    crossed = corner_crossings(stack, params, x, h)
    n_params = sum(v.size for v in params.values())
    # A sizeable share of the evaluations cross a corner (the nets are built for it).
    assert crossed >= max(2, n_params // 20)
    check_against_brute_force(stack, params, x, t, h)


def test_a_batch_of_128_in_blocks(monkeypatch):
    # Blocks of 50 samples: the caches are per block, the sums run on across them.
    monkeypatch.setattr(dense_relu, "BLOCK", 50)
    stack, params, x, t = near_corner_net((5, 4, 4, 3), 128, seed=11)
    assert corner_crossings(stack, params, x, H) > 0
    check_against_brute_force(stack, params, x, t, H)


def test_unguarded_loss_and_large_logits():
    # Guard 0 takes the other log; logits of hundreds take the general softmax path.
    stack, params, x, t = near_corner_net((5, 4, 4, 3), 6, seed=4, scale=6.0)
    logits = engine._logits(stack, params, x)
    assert np.abs(logits).max() > 100
    check_against_brute_force(stack, params, x, t, 0.3, log_guard=0.0)
    check_against_brute_force(stack, params, x, t, 0.3)


def test_a_dead_layer_and_zero_inputs():
    # A hidden layer whose units are all off for every sample: only its biases' steps
    # across the corner move anything; an all-zero sample moves only biases.
    stack, params, x, t = near_corner_net((5, 4, 3, 3), 4, seed=5)
    params["b2"] = np.full(3, -0.5 * H)
    params["W2"] = np.zeros((4, 3))
    x[1] = 0.0
    assert corner_crossings(stack, params, x, H) > 0
    check_against_brute_force(stack, params, x, t, H)


def test_engine_delta_takes_the_kernel_for_dense_relu_stacks(monkeypatch):
    stack, params, x, t = near_corner_net((6, 5, 4, 3), 5, seed=2)
    calls = []
    kernel = dense_relu.numerical_gradient_trusted
    monkeypatch.setattr(
        dense_relu,
        "numerical_gradient_trusted",
        lambda *args: calls.append(1) or kernel(*args),
    )
    comp_g = engine.numerical_gradient(stack, params, x, t)
    assert calls == [1]
    # The engine's own delta kernel (dense_relu switched off) computes the same gradient.
    monkeypatch.setattr(dense_relu, "ENABLED", False)
    engine_g = engine.numerical_gradient(stack, params, x, t)
    assert calls == [1]
    assert max_abs_diff(comp_g, engine_g) <= TOL
    # Stacks of another shape are not taken.
    monkeypatch.setattr(dense_relu, "ENABLED", True)
    sigmoid = tuple(("sigmoid",) if spec == ("relu",) else spec for spec in stack)
    assert dense_relu.engine_gradient(sigmoid, params, x, t, H, 1e-7) is None
    assert dense_relu.relu_stack_names(stack[:-1]) is None
    assert dense_relu.relu_stack_names(stack[2:]) is None  # one hidden layer: two-layer kernels
    assert dense_relu.relu_stack_names(stack) == [("W1", "b1"), ("W2", "b2"), ("W3", "b3")]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
def test_huge_weights_and_a_pass_that_overflows():
    stack, params, x, t = near_corner_net((5, 4, 4, 3), 3, seed=6)
    params["W1"] = params["W1"] * 1e300  # finite logits of ~1e300: steps lost to rounding
    check_against_brute_force(stack, params, x, t, H)
    # A sample whose unguarded loss is inf (its label's probability underflows to 0):
    # every central difference is NaN; left to the engine, which says so.
    params["W1"] = params["W1"] / 1e300
    params["W3"] = params["W3"] * 1e4
    assert engine.loss(stack, params, x, t, log_guard=0.0) == np.inf
    assert dense_relu.engine_gradient(stack, params, x, t, H, 0.0) is None
    grads = engine.numerical_gradient(stack, params, x, t, log_guard=0.0)
    assert all(np.isnan(g).all() for g in grads.values())
    params["W1"] = params["W1"] * 1e308  # overflows: left to the engine, which gives NaN
    assert dense_relu.engine_gradient(stack, params, x, t, H, 1e-7) is None
    grads = engine.numerical_gradient(stack, params, x, t)
    assert all(np.isnan(g).all() for g in grads.values())


@pytest.mark.threads
def test_bit_identical_at_one_and_two_threads():
    stack, params, x, t = near_corner_net((7, 6, 5, 4, 3), 23, seed=8)
    before = get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            set_num_threads(threads)
            results.append(dense_relu.engine_gradient(stack, params, x, t, H, 1e-7))
    finally:
        set_num_threads(before)
    assert max_abs_diff(results[0], results[1]) == 0.0


@pytest.mark.numba
def test_mnist_deep_relu_net_matches_full(mnist, monkeypatch):
    from fastnum.multilayer import MultiLayerNet

    (x, t), _ = mnist
    x, t = np.ascontiguousarray(x[:24], dtype=np.float64), t[:24]
    net = MultiLayerNet(784, [20, 20, 20], 10, activation="relu", seed=0)
    comp_g = dense_relu.engine_gradient(net.stack, net.params, x, t, H, 1e-7)
    monkeypatch.setattr(dense_relu, "ENABLED", False)
    engine_g = engine.numerical_gradient(net.stack, net.params, x, t)
    assert max_abs_diff(comp_g, engine_g) <= TOL
    rng = np.random.default_rng(0)
    sample = {k: rng.choice(v.size, min(40, v.size), replace=False) for k, v in net.params.items()}
    full_g = engine.numerical_gradient_at(net.stack, net.params, x, t, sample, strategy="full")
    for k, idx in sample.items():
        assert np.abs(comp_g[k].ravel()[idx] - full_g[k]).max() <= TOL


@pytest.mark.numba  # plain Python under tracemalloc takes a minute: the same arrays
@pytest.mark.parametrize("batch", [5, 40])
def test_memory_is_what_cache_bytes_says(batch, monkeypatch):
    import tracemalloc

    sizes = (30, 20, 12, 4)
    monkeypatch.setattr(dense_relu, "BLOCK", 16)  # three blocks at batch 40
    stack, params, x, t = near_corner_net(sizes, batch, seed=9)
    names = dense_relu.relu_stack_names(stack)
    weights, biases = [params[w] for w, _ in names], [params[b] for _, b in names]
    dense_relu.numerical_gradient_trusted(weights, biases, x, t, H, 1e-7)  # compile first
    tracemalloc.start()  # NumPy's and numba's arrays are traced
    try:
        dense_relu.numerical_gradient_trusted(weights, biases, x, t, H, 1e-7)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    estimate = dense_relu.cache_bytes(sizes, batch, get_num_threads())
    assert 0.5 * estimate <= peak <= estimate
    # The engine states it (linear in the batch: beyond one block, an upper bound).
    memory = engine.delta_memory(stack, params, (sizes[0],))
    assert memory.bytes(min(batch, 16)) == estimate
    assert memory.bytes(batch) >= estimate
