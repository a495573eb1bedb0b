"""The numerical gradient of any ``@njit`` scalar function (``fastnum.kernels.generic``)."""

from __future__ import annotations

import numpy as np
import pytest

from fastnum import _jit, reference
from fastnum.gradient import numerical_gradient


def _loss(x):
    total = 0.0
    for v in x.ravel():
        total += np.sin(v) * v * v
    return total


@pytest.mark.numba
@pytest.mark.parametrize("shape", [(7,), (3, 5), (300,)])
def test_jitted_function_matches_the_reference_bit_for_bit(shape):
    f = _jit.njit(_loss, cache=False)
    x = np.random.default_rng(0).normal(size=shape)
    ref_grad = reference.numerical_gradient(_loss, x.copy())
    comp_grad = numerical_gradient(f, x)
    assert comp_grad.shape == x.shape
    assert np.array_equal(comp_grad, ref_grad)


@pytest.mark.threads
def test_jitted_function_gradient_is_the_same_on_1_and_2_threads():
    f = _jit.njit(_loss, cache=False)
    x = np.random.default_rng(1).normal(size=(40, 3))[::2]  # not contiguous
    before = _jit.get_num_threads()
    try:
        _jit.set_num_threads(1)
        one = numerical_gradient(f, x)
        _jit.set_num_threads(2)
        two = numerical_gradient(f, x)
    finally:
        _jit.set_num_threads(before)
    assert np.array_equal(one, two)
    assert np.array_equal(two, reference.numerical_gradient(_loss, x.copy()))
