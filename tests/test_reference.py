"""The book's worked numbers, reproduced by the pure-NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from fastnum import reference as R  # noqa: N812 - short, like the book's notebooks

BOOK_T = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
BOOK_Y_TWO = np.array([0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0])
BOOK_Y_SEVEN = np.array([0.1, 0.05, 0.1, 0.0, 0.05, 0.1, 0.0, 0.6, 0.0, 0.0])
BOOK_SIMPLENET_W = np.array(
    [[0.47355232, 0.9977393, 0.84668094], [0.85557411, 0.03563661, 0.69422093]]
)


def test_sum_squares_error_book_values():
    assert R.sum_squares_error(BOOK_Y_TWO, BOOK_T) == pytest.approx(0.0975)
    assert R.sum_squares_error(BOOK_Y_SEVEN, BOOK_T) == pytest.approx(0.5975)


def test_cross_entropy_error_book_values_and_label_forms():
    assert R.cross_entropy_error(BOOK_Y_TWO, BOOK_T) == pytest.approx(0.510825457, abs=1e-9)
    assert R.cross_entropy_error(BOOK_Y_SEVEN, BOOK_T) == pytest.approx(2.302584093, abs=1e-9)
    # integer label, and a batch averaged over its rows
    assert R.cross_entropy_error(BOOK_Y_TWO, 2) == pytest.approx(0.510825457, abs=1e-9)
    batch = np.stack([BOOK_Y_TWO, BOOK_Y_SEVEN])
    mean = (0.510825457 + 2.302584093) / 2
    assert R.cross_entropy_error(batch, np.array([2, 2])) == pytest.approx(mean, abs=1e-9)
    assert R.cross_entropy_error(batch, np.stack([BOOK_T, BOOK_T])) == pytest.approx(mean, 1e-9)
    # the 1e-7 guard: a zero probability gives -log(1e-7), not inf
    assert R.cross_entropy_error(BOOK_Y_TWO, 3) == pytest.approx(-np.log(1e-7))


def test_softmax_is_overflow_safe_in_1d_and_2d():
    y = R.softmax(np.array([1010.0, 1000.0, 990.0]))
    assert y == pytest.approx([9.99954600e-01, 4.53978686e-05, 2.06106005e-09], rel=1e-6)
    batch = R.softmax(np.array([[1010.0, 1000.0, 990.0], [0.3, 2.9, 4.0]]))
    assert batch.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert batch[1] == pytest.approx([0.01821127, 0.24519181, 0.73659691], rel=1e-6)


def test_sigmoid_values():
    expected = [0.26894142, 0.73105858, 0.88079708]
    assert R.sigmoid(np.array([-1.0, 1.0, 2.0])) == pytest.approx(expected)


def test_numerical_diff_of_function_1():
    assert R.numerical_diff(R.function_1, 5) == pytest.approx(0.2, abs=1e-9)
    assert R.numerical_diff(R.function_1, 10) == pytest.approx(0.3, abs=1e-9)


@pytest.mark.parametrize(
    ("point", "expected"), [([3.0, 4.0], [6, 8]), ([0.0, 2.0], [0, 4]), ([3.0, 0.0], [6, 0])]
)
def test_numerical_gradient_of_function_2(point, expected):
    assert R.numerical_gradient(R.function_2, np.array(point)) == pytest.approx(expected)


def test_numerical_gradient_restores_noncontiguous_input_and_refuses_integers():
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    view = base[:, ::2]  # non-contiguous
    before = base.copy()
    grad = R.numerical_gradient(lambda a: np.sum(a**3), view)
    assert grad == pytest.approx(3 * view**2, rel=1e-6, abs=1e-6)  # central diff: +h^2 at 0
    assert np.array_equal(base, before)
    with pytest.raises(TypeError, match="int64"):
        R.numerical_gradient(R.function_2, np.array([3, 4]))


def test_gradient_descent_book_learning_rates():
    good, path = R.gradient_descent(
        R.function_2, [-3.0, 4.0], lr=0.1, step_num=100, return_path=True
    )
    assert np.abs(good).max() < 1e-8
    assert path.shape == (101, 2) and np.array_equal(path[0], [-3.0, 4.0])
    diverged = R.gradient_descent(R.function_2, [-3.0, 4.0], lr=10.0, step_num=100)
    assert np.abs(diverged).max() > 1e10
    stalled = R.gradient_descent(R.function_2, [-3.0, 4.0], lr=1e-10, step_num=100)
    assert stalled == pytest.approx([-3.0, 4.0], abs=1e-6)
    assert not np.array_equal(stalled, [-3.0, 4.0])


def test_simplenet_book_values():
    net = R.simpleNet(W=BOOK_SIMPLENET_W.copy())
    x, t = np.array([0.6, 0.9]), np.array([0, 0, 1])
    assert net.predict(x) == pytest.approx([1.05414809, 0.63071653, 1.1328074])
    assert net.loss(x, t) == pytest.approx(0.92806853663411326)
    dW = net.numerical_gradient(x, t)
    book_dW = [[0.21924763, 0.14356247, -0.36281009], [0.32887144, 0.2153437, -0.54421514]]
    assert dW == pytest.approx(np.array(book_dW), abs=1e-6)  # the book prints W rounded


def test_two_layer_net_shapes_seed_and_accuracy_forms():
    a, b = R.TwoLayerNet(784, 50, 10, seed=3), R.TwoLayerNet(784, 50, 10, seed=3)
    assert {k: v.shape for k, v in a.params.items()} == {
        "W1": (784, 50),
        "b1": (50,),
        "W2": (50, 10),
        "b2": (10,),
    }
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    x = np.random.default_rng(0).random((6, 784))
    pred = a.predict(x).argmax(axis=1)
    assert a.accuracy(x, pred) == 1.0
    assert a.accuracy(x, np.eye(10)[pred]) == 1.0
    assert a.accuracy(x, (pred + 1) % 10) == 0.0


def test_two_layer_net_numerical_gradient_matches_backprop():
    rng = np.random.default_rng(0)
    net = R.TwoLayerNet(8, 4, 3, weight_init_std=0.5, seed=1)
    x, t = rng.random((5, 8)), rng.integers(0, 3, 5)
    num, back = net.numerical_gradient(x, t), net.gradient(x, t)
    for k in num:
        # relative 1e-5: the 1e-7 log guard alone moves the numerical side ~1e-6
        assert np.abs(num[k] - back[k]).max() <= 1e-5 * np.abs(back[k]).max(), k
