"""Non-finite values and extreme magnitudes: the kernels agree with libm and the reference.

The kernels are called through their trusted entry points (the engine's for the dense
stacks), so these tests run
compiled, with NUMBA_DISABLE_JIT=1 and without numba (as plain Python).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastnum import engine, reference
from fastnum._jit import JIT_ENABLED
from fastnum.kernels import two_layer
from fastnum.kernels._vmath import fexp, flog
from fastnum.multilayer import ReferenceMultiLayerNet

# The reference's sigmoid overflows (to the right limit, 0) at the extreme scales these
# tests choose on purpose; NumPy's warning about it is expected, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

EPS = np.finfo(np.float64).eps


def _dense_stack(n_layers, activation):
    """The engine stack of a MultiLayerNet: affine (activation affine) * (n_layers - 1)."""
    stack = []
    for k in range(1, n_layers + 1):
        stack += [("affine", f"W{k}", f"b{k}")] + ([(activation,)] if k < n_layers else [])
    return tuple(stack)


TINY = np.finfo(np.float64).tiny
# Special points and the edges of exp's range: overflow (~709.78), the last normal
# result (~-708.40), the subnormal results down to the last non-zero (~-745.13).
EXP_POINTS = [
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    5e-324,
    TINY,
    1e-300,
    1.0,
    -1.0,
    700.0,
    709.78,
    709.79,
    710.0,
    1e4,
    1e308,
    -700.0,
    -708.39,
    -708.4,
    -720.0,
    -740.0,
    -745.13,
    -745.14,
    -746.0,
    -1e4,
    -1e308,
]
LOG_POINTS = [
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    -1.0,
    -5e-324,
    5e-324,
    1e-320,
    TINY / 2,
    TINY,
    1e-300,
    0.5,
    1.0,
    2.0,
    math.sqrt(2),
    1e300,
    1.7976931348623157e308,
]


def _libm(f, x):
    """math.exp / math.log with IEEE results instead of Python's exceptions."""
    try:
        return f(x)
    except OverflowError:
        return math.inf
    except ValueError:  # log of 0 or of a negative number
        return -math.inf if x == 0 else math.nan


def _assert_agrees(comp, ref):
    if math.isnan(ref):
        assert math.isnan(comp)
    elif math.isinf(ref) or ref == 0:
        assert comp == ref
    else:  # within 2 ulp of libm (1 ulp of a subnormal is 5e-324)
        assert abs(comp - ref) <= 2 * np.spacing(abs(ref))


@pytest.mark.parametrize("x", EXP_POINTS)
def test_fexp_agrees_with_libm_at_special_points_and_range_edges(x):
    # Before: fexp(inf) = 8.2e307, fexp(-720) = 3e-308 (clamped), fexp(nan) finite.
    _assert_agrees(float(fexp(x)), _libm(math.exp, x))


@pytest.mark.parametrize("x", LOG_POINTS)
def test_flog_agrees_with_libm_at_special_points_and_subnormals(x):
    # Before: flog(nan) = 710.19, flog(0) = -709.09, subnormals wrong.
    _assert_agrees(float(flog(x)), _libm(math.log, x))


def _tolerance(ref_grads, loss, reach, h):
    """How far delta may be from the reference: 1e-9 scaled, plus the reference's own noise.

    Both compute (L(+h) - L(-h)) / 2h in float64, each from differently rounded
    sums, so beyond the brief's 1e-9 (relative to gradients larger than 1) they
    may differ by the rounding of the loss, about eps * |L| per evaluation, and of
    the pre-activations, at most eps * reach (reach = the largest sum of
    |input * weight| into a unit, times the largest downstream weight sum), both
    divided by 2h.  With the factor 16 this is far below the errors the test
    exists to catch (3e2 at inputs x 1e7, 3e-2 at x 1e5 with h = 1).
    """
    scale = max(1.0, max(float(np.abs(g).max()) for g in ref_grads))
    return 1e-9 * scale + 16 * EPS * (max(1.0, abs(loss)) + reach) / (2 * h)


def _batch(seed, n, d):
    rng = np.random.default_rng(seed)
    x = rng.random((n, d))
    x[x < 0.5] = 0.0  # sparse like MNIST, so the delta kernels' zero skipping is exercised
    return x, rng.integers(0, 3, n).astype(np.int64)


def _reach(x, weights):
    # Largest |pre-activation| sum of the first layer times the later layers' gains.
    first = float((np.abs(x) @ np.abs(weights[0])).max())
    return first * math.prod(float(np.abs(w).sum(axis=1).max()) for w in weights[1:])


# Over inputs of magnitude 1e-8..1e12 and steps 1e-8..1: the delta kernels were
# wrong once h * x passed ~708 (MNIST x 1e7: 16-19 where the reference gives 0).
SCALES = st.floats(-8.0, 12.0).map(lambda e: 10.0**e)
STEPS = st.floats(-8.0, 0.0).map(lambda e: 10.0**e)
# Weights from 1e-3 to 1e5 times the init: huge ones made two-layer delta return NaN.
WEIGHTS = st.floats(-3.0, 5.0).map(lambda e: 10.0**e)
EXAMPLES = 40 if JIT_ENABLED else 10  # the kernels run as Python without the JIT


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scale=SCALES, h=STEPS, seed=st.integers(0, 2**16), weight_scale=WEIGHTS)
def test_two_layer_delta_equals_the_reference_for_any_input_scale(scale, h, seed, weight_scale):
    x, t = _batch(seed, 4, 12)
    x *= scale
    net = reference.TwoLayerNet(12, 5, 3, weight_init_std=0.3 * weight_scale, seed=seed)
    ref_ = net.numerical_gradient(x, t, h)
    comp_ = two_layer.numerical_gradient_trusted(two_layer.as_params(net.params), x, t, h, "delta")
    tol = _tolerance(
        ref_.values(), net.loss(x, t), _reach(x, [net.params["W1"], net.params["W2"]]), h
    )
    for k in ref_:
        assert np.isfinite(comp_[k]).all()
        assert np.abs(comp_[k] - ref_[k]).max() <= tol, (k, scale, h)


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    scale=SCALES,
    h=STEPS,
    seed=st.integers(0, 2**16),
    weight_scale=WEIGHTS,
    activation=st.sampled_from(["sigmoid", "relu"]),
)
def test_multilayer_delta_equals_the_reference_for_any_input_scale(
    scale, h, seed, weight_scale, activation
):
    x, t = _batch(seed, 4, 10)
    x *= scale
    net = ReferenceMultiLayerNet(
        10, (5, 4), 3, activation, weight_init_std=0.3 * weight_scale, seed=seed
    )
    ref_ = net.numerical_gradient(x, t, h)
    comp_ = engine.numerical_gradient(_dense_stack(3, activation), net.params, x, t, h, "delta")
    weights = [net.params[f"W{k}"] for k in (1, 2, 3)]
    tol = _tolerance(ref_.values(), net.loss(x, t), _reach(x, weights), h)
    for k in net.param_names:
        assert np.isfinite(comp_[k]).all()
        assert np.abs(comp_[k] - ref_[k]).max() <= tol, (k, scale, h)


@pytest.mark.parametrize("strategy", ["delta", "full"])
def test_kernels_given_a_nan_parameter_return_nan_like_the_reference(strategy):
    # The public networks refuse NaN parameters; a trusted kernel that gets one anyway
    # must not turn it into a finite number (before: loss -710.19, finite gradients).
    x, t = _batch(0, 3, 8)
    params = reference.TwoLayerNet(8, 4, 3, seed=0).params
    params["b2"][1] = np.nan
    packed = two_layer.as_params(params)
    assert np.isnan(two_layer.loss_trusted(packed, x, t))
    grads = two_layer.numerical_gradient_trusted(packed, x, t, 1e-4, strategy)
    assert all(np.isnan(g).all() for g in grads.values())

    # The engine's dense path (two hidden layers: not the two-layer kernel).
    ml = ReferenceMultiLayerNet(8, (4, 4), 3, seed=0)
    ml.params["b3"][1] = np.nan
    stack = _dense_stack(3, "sigmoid")
    assert np.isnan(engine.loss(stack, ml.params, x, t))
    grads = engine.numerical_gradient(stack, ml.params, x, t, 1e-4, strategy)
    assert all(np.isnan(g).all() for g in grads.values())
