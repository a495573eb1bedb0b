"""The conv engine at extreme input scales, and the delta strategy's memory guard.

The engine is called on small stacks (tests/_stacks.py), so these tests run
compiled, with NUMBA_DISABLE_JIT=1 and without numba (as plain Python); only the
book-size SimpleConvNet on MNIST needs the compiled kernels.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastnum import _engine_delta, _engine_memory, engine
from fastnum._jit import JIT_ENABLED
from fastnum.convnet import LAYER_TYPES, SimpleConvNet
from tests._stacks import STACKS, problem

# The reference overflows (its sigmoid to the limit, its softmax to NaN) at the scales
# chosen on purpose; NumPy's warnings about it are expected.
pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

REPO = Path(__file__).resolve().parents[1]
EPS = np.finfo(np.float64).eps
STRATEGIES = ("delta", "full")
# Conv stacks of every shape the delta kernels cover: relu and sigmoid, pooling before
# and after the activation, stride, padding, one or two affine layers after the block.
CONV_STACKS = (
    "simpleconv",
    "pool3-stride2-pad1",
    "stride2",
    "pad2-stride2-sigmoid",
    "sigmoid-pool-first",
    "conv-only",
)


def _abs_reach(stack, params, x):
    """The largest value the forward pass can reach from |x|, |W| and |b|.

    Every sum the engine and the reference form in a different order differs by at
    most eps times this (relu passes non-negative values on; a sigmoid's output is
    at most 1, its rounding error at most its input's).
    """
    a = np.abs(x)
    for kind, *args in stack:
        if kind in ("conv", "affine"):
            absolute = {name: np.abs(params[name]) for name in args[:2]}
            a = LAYER_TYPES[kind][1](absolute, *args).forward(a)
        elif kind == "pool":
            a = LAYER_TYPES[kind][1](params, *args).forward(a)
        elif kind == "sigmoid":
            a = np.maximum(a, 1.0)
    return float(a.max())


def _tolerance(ref_grads, loss, reach, h):
    """1e-9 relative to the largest gradient, plus both sides' rounding (as for the dense
    kernels in tests/test_hardening_numerics.py): eps * |L| per evaluation and eps per
    unit of reach in the logits, divided by 2h."""
    finite = [np.abs(g[np.isfinite(g)]).max(initial=0.0) for g in ref_grads]
    scale = max(1.0, *finite)
    return 1e-9 * scale + 16 * EPS * (max(1.0, abs(loss)) + reach) / (2 * h)


def _assert_comparable(comp, ref, tol, what):
    """Where the reference is finite the engine is finite and within tol; where the
    reference is not (an overflowed or NaN loss), the engine must not be a number."""
    comp, ref = np.asarray(comp), np.asarray(ref)
    finite = np.isfinite(ref)
    assert np.isfinite(comp[finite]).all(), (what, "non-finite where the reference is finite")
    err = np.abs(comp[finite] - ref[finite]).max(initial=0.0)
    assert err <= tol, (what, err, tol)
    assert not np.isfinite(comp[~finite]).any(), (what, "finite where the reference is not")


# Inputs of magnitude 1e-8..1e12, steps 1e-8..1, weights 1e-3..1e5 times O(1): at x 1e10
# SimpleConvNet's delta W2 had 50,083 NaN elements (a logit step's exp overflowed to inf
# and was multiplied by a cached exp(z - max) of 0).
SCALES = st.floats(-8.0, 12.0).map(lambda e: 10.0**e)
STEPS = st.floats(-8.0, 0.0).map(lambda e: 10.0**e)
WEIGHTS = st.floats(-3.0, 5.0).map(lambda e: 10.0**e)
EXAMPLES = 40 if JIT_ENABLED else 8  # the kernels run as Python without the JIT


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(CONV_STACKS),
    scale=SCALES,
    h=STEPS,
    seed=st.integers(0, 2**16),
    weight_scale=WEIGHTS,
)
def test_conv_engine_equals_the_reference_for_any_input_scale(name, scale, h, seed, weight_scale):
    ref, params, x, t = problem(name, batch=3, seed=seed, scale=0.3 * weight_scale)
    x *= scale
    # A few cells of every parameter: the reference's loop over all of them is what
    # would make this slow.
    rng = np.random.default_rng(seed)
    indices = {k: rng.choice(v.size, min(v.size, 5), replace=False) for k, v in params.items()}
    ref_ = ref.numerical_gradient_at(x, t, indices, h)
    tol = _tolerance(ref_.values(), ref.loss(x, t), _abs_reach(ref.stack, params, x), h)
    comp_ = engine.numerical_gradient(ref.stack, params, x, t, h, "delta")
    for k, idx in indices.items():
        _assert_comparable(comp_[k].reshape(-1)[idx], ref_[k], tol, ("delta", k, scale, h))
    for strategy in STRATEGIES:  # the sampled cells' own paths
        comp_at = engine.numerical_gradient_at(ref.stack, params, x, t, indices, h, strategy)
        for k in indices:
            _assert_comparable(comp_at[k], ref_[k], tol, (strategy, "at", k, scale, h))


@pytest.mark.parametrize("name", ["simpleconv", "stride2", "dense-relu-3"])
def test_huge_logit_steps_give_the_reference_gradient_not_nan(name):
    # x 1e9 with h = 1 moves the logits by ~1e9 per step: exp of the step overflowed.
    ref, params, x, t = problem(name, batch=3, seed=5, scale=1.0)
    x *= 1e9
    ref_ = ref.numerical_gradient(x, t, 1.0)
    comp_ = engine.numerical_gradient(ref.stack, params, x, t, 1.0, "delta")
    tol = _tolerance(ref_.values(), ref.loss(x, t), _abs_reach(ref.stack, params, x), 1.0)
    assert any(np.abs(g).max() > 0.1 for g in ref_.values())  # a gradient to get wrong
    for k in ref_:
        assert np.isfinite(comp_[k]).all(), k
        assert np.abs(comp_[k] - ref_[k]).max() <= tol, k


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", ["simpleconv", "conv-only"])
def test_overflowed_logits_give_nan_gradients_like_the_reference(name, strategy):
    # Inputs x 1e306 overflow the logits to +-inf in both: the loss at theta is NaN, so is
    # every central difference.  Before, delta returned 0 for each parameter whose step
    # was lost to rounding next to 1e307 ("nothing moved"): finite and wrong.
    ref, params, x, t = problem(name, batch=3, seed=1, scale=5.0)
    x *= 1e306
    assert math.isnan(ref.loss(x, t))
    ref_ = ref.numerical_gradient(x, t)
    comp_ = engine.numerical_gradient(ref.stack, params, x, t, strategy=strategy)
    indices = {k: np.arange(v.size) for k, v in params.items()}
    comp_at = engine.numerical_gradient_at(ref.stack, params, x, t, indices, strategy=strategy)
    for k in ref_:
        assert not np.isfinite(ref_[k]).any()
        _assert_comparable(comp_[k], ref_[k], 0.0, k)
        _assert_comparable(comp_at[k], ref_[k].reshape(-1), 0.0, k)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", ["simpleconv", "pad2-stride2-sigmoid"])
def test_a_nan_parameter_gives_nan_gradients(name, strategy):
    # (A NaN weight that meets only zero inputs is skipped as 0 by the sparse forward
    # passes; a bias reaches every sample.)
    ref, params, x, t = problem(name)
    params["b2"][1] = np.nan
    comp_ = engine.numerical_gradient(ref.stack, params, x, t, strategy=strategy)
    assert all(np.isnan(g).all() for g in comp_.values())


@pytest.mark.numba
def test_simpleconv_on_mnist_times_1e10_matches_the_reference(mnist):
    # The case: SimpleConvNet(seed=0), 10 MNIST images x 1e10.
    (x_train, t_train), _ = mnist
    x = x_train[:10].reshape(10, 1, 28, 28).astype(np.float64) * 1e10
    t = t_train[:10]
    net = SimpleConvNet(seed=0)
    comp_ = net.numerical_gradient(x, t)
    assert all(np.isfinite(g).all() for g in comp_.values())
    # A few cells (the reference's loop takes ~0.1 s per evaluation here), most in W2.
    rng = np.random.default_rng(0)
    indices = {
        k: rng.choice(v.size, 4 if k == "W2" else 1, replace=False) for k, v in net.params.items()
    }
    ref_ = net._oracle({k: v.copy() for k, v in net.params.items()}).numerical_gradient_at(
        x, t, indices
    )
    for k, idx in indices.items():
        assert np.abs(comp_[k].reshape(-1)[idx] - ref_[k]).max() <= 1e-9, k


# ------------------------------------------------------------------------------ memory


@pytest.fixture
def no_memory_override(monkeypatch):
    monkeypatch.delenv(engine.MEMORY_LIMIT_ENV, raising=False)


def _dense_batch(name, n, seed=0):
    """Parameters and a batch without zeros (the estimate's worst case)."""
    ref, params, x, _ = problem(name, batch=1, seed=seed)
    rng = np.random.default_rng(seed)
    return ref.stack, params, rng.random((n, *x.shape[1:])) + 0.5, rng.integers(0, 3, n)


@pytest.mark.numba  # tracemalloc over the plain-Python kernels traces every scalar: minutes
@pytest.mark.parametrize("name", ["simpleconv", "dense-relu-3"])
def test_delta_memory_bounds_the_arrays_the_gradient_allocates(name, no_memory_override):
    stack, params, x, t = _dense_batch(name, 400)
    engine.numerical_gradient(stack, params, x[:2], t[:2])  # compiled and warm
    tracemalloc.start()
    try:
        engine.numerical_gradient(stack, params, x, t)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = engine.delta_memory(stack, params, x.shape[1:]).bytes(len(x))
    # The arrays NumPy allocates stay under the estimate, which is not far above them
    # either (measured 0.70 to 0.93 of it).  The tasks' buffers, allocated inside the
    # compiled kernels, are not traced.
    assert 0.5 * estimate <= peak <= estimate


def test_delta_memory_grows_with_the_batch_and_is_none_where_delta_falls_back():
    stack, shapes, sample = STACKS["simpleconv"]
    one = engine.delta_memory(stack, shapes, sample, threads=1)
    two = engine.delta_memory(stack, shapes, sample, threads=2)
    assert one.per_sample == two.per_sample > 0
    assert two.fixed > one.fixed  # a second task's buffers
    assert one.bytes(1000) - one.bytes(10) == 990 * one.per_sample
    assert one.max_batch(one.bytes(37)) == 37
    assert one.max_batch(one.fixed - 1) == 0
    conv_bn, shapes, sample = STACKS["conv-bn"]  # batch norm after a conv: full
    assert engine.delta_memory(conv_bn, shapes, sample) is None
    two_convs, shapes, sample = STACKS["two-convs"]  # the conv-stack kernel's estimate
    assert engine.delta_memory(two_convs, shapes, sample).per_sample > 0


def test_book_simpleconvnet_estimate_at_batch_100_is_tens_of_megabytes():
    net = SimpleConvNet(seed=0, backend="numpy")
    memory = engine.delta_memory(net.stack, net.params, (1, 28, 28), threads=2)
    # Per image: 30 channels x (576 conv + 576 relu + 144 pooled) doubles cached, 311 kB.
    assert 8 * 30 * (576 + 576 + 144) < memory.per_sample < 0.6e6
    assert 50e6 < memory.bytes(100) < 100e6


@pytest.mark.parametrize("at", [False, True])
def test_a_batch_that_does_not_fit_is_refused_before_allocating(monkeypatch, at):
    stack, params, x, t = _dense_batch("simpleconv", 40)
    memory = engine.delta_memory(stack, params, x.shape[1:])
    available = memory.bytes(25)
    monkeypatch.setattr(_engine_memory, "available_memory", lambda: (available, "a test's limit"))

    def must_not_run(*args):
        raise AssertionError("allocated before refusing")

    monkeypatch.setattr(_engine_delta, "_delta_at", must_not_run)
    with pytest.raises(engine.DeltaMemoryError) as err:
        if at:
            engine.numerical_gradient_at(stack, params, x, t, {"W1": [0, 1]})
        else:
            engine.numerical_gradient(stack, params, x, t)
    assert isinstance(err.value, MemoryError)
    assert (err.value.needed, err.value.available) == (memory.bytes(40), available)
    assert (err.value.batch, err.value.max_batch) == (40, 25)
    message = str(err.value)
    assert "40 samples" in message and "at most 25 samples" in message
    assert "a test's limit" in message and engine.MEMORY_LIMIT_ENV in message


def test_the_largest_batch_named_fits_and_one_more_does_not(monkeypatch):
    stack, params, x, t = _dense_batch("simpleconv", 12)
    memory = engine.delta_memory(stack, params, x.shape[1:])
    monkeypatch.setattr(_engine_memory, "available_memory", lambda: (memory.bytes(11), "test"))
    cells = {"W1": [0, 7], "b1": [1], "W2": [3, 40], "b3": [2]}
    ref_ = engine.numerical_gradient_at(stack, params, x[:11], t[:11], cells, strategy="full")
    comp_ = engine.numerical_gradient(stack, params, x[:11], t[:11])
    assert max(np.abs(comp_[k].reshape(-1)[i] - ref_[k]).max() for k, i in cells.items()) <= 1e-9
    with pytest.raises(engine.DeltaMemoryError, match="at most 11 samples"):
        engine.numerical_gradient(stack, params, x, t)
    # The full strategy's forward passes run 256 samples at a time: never refused.
    engine.numerical_gradient_at(stack, params, x, t, cells, strategy="full")


def test_memory_limit_variable_overrides_and_turns_the_check_off(monkeypatch):
    stack, params, x, t = _dense_batch("simpleconv", 4)
    monkeypatch.setenv(engine.MEMORY_LIMIT_ENV, "16K")
    assert engine.available_memory() == (16 * 1024, f"{engine.MEMORY_LIMIT_ENV}=16K")
    with pytest.raises(engine.DeltaMemoryError, match=f"{engine.MEMORY_LIMIT_ENV}=16K"):
        engine.numerical_gradient(stack, params, x, t)
    monkeypatch.setenv(engine.MEMORY_LIMIT_ENV, "off")
    assert engine.available_memory()[0] is None
    engine.numerical_gradient(stack, params, x, t)
    monkeypatch.setenv(engine.MEMORY_LIMIT_ENV, "2G")
    assert engine.available_memory()[0] == 2 * 2**30
    monkeypatch.setenv(engine.MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match="FASTNUM_MEMORY_LIMIT='lots' is not a size"):
        engine.available_memory()


def test_available_memory_reads_the_machine_and_the_address_space_limit(
    monkeypatch, no_memory_override
):
    monkeypatch.setattr(_engine_memory, "_address_space_left", lambda: None)
    available, source = engine.available_memory()
    assert available > 0 and source.startswith("MemAvailable in ")
    monkeypatch.setattr(_engine_memory, "_MEMINFO", "/nonexistent/meminfo")
    available, source = engine.available_memory()
    assert available > 0 and source == "free physical pages from os.sysconf"
    # An address-space limit counts when it leaves less (less the threads' reserve).
    monkeypatch.setattr(_engine_memory, "_address_space_left", lambda: 2**62)
    assert engine.available_memory()[1] == "free physical pages from os.sysconf"
    monkeypatch.setattr(_engine_memory, "_address_space_left", lambda: 5 * 2**20)
    assert engine.available_memory() == (0, "what the address-space limit (ulimit -v) leaves")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ulimit -v is Linux's here")
def test_under_an_address_space_limit_a_huge_batch_is_refused_not_aborted(tmp_path):
    # Before: "cannot allocate memory for thread-local data" and an abort.  The 10,000
    # images are one array of 63 MB; the caches would need about 4.9 GB.
    script = textwrap.dedent(
        """
        import resource, numpy as np
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, resource.RLIM_INFINITY))
        from fastnum import engine
        from fastnum.convnet import SimpleConvNet
        net = SimpleConvNet(seed=0, backend="numpy")
        x = np.random.default_rng(0).random((10_000, 1, 28, 28))
        t = np.zeros(10_000, dtype=np.int64)
        try:
            engine.numerical_gradient(net.stack, net.params, x, t)
        except engine.DeltaMemoryError as err:
            print("refused:", err)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != engine.MEMORY_LIMIT_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: the delta gradient of a batch of 10,000 samples" in done.stdout
    if _engine_memory._machine_available()[0] > 3 * 2**30:  # else MemAvailable is the smaller
        assert "ulimit -v" in done.stdout
