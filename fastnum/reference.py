"""The book's chapter 4 in plain NumPy: the oracle every fast kernel must match.

Deliberately short and literal.  It validates nothing and is never imported by
the kernels; the public, validating API lives in :mod:`fastnum.network`.
"""

from __future__ import annotations

import numpy as np

from fastnum.constants import LOG_GUARD, H


def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x))."""
    return 1 / (1 + np.exp(-x))


def softmax(x):
    """Softmax over the last axis, shifted by the max so exp cannot overflow."""
    x = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=-1, keepdims=True)


def sum_squares_error(y, t):
    """Half the sum of squared differences (the book's SSE)."""
    return 0.5 * np.sum((y - t) ** 2)


def cross_entropy_error(y, t):
    """Batch-mean cross-entropy of probabilities ``y`` against one-hot or integer labels ``t``."""
    if y.ndim == 1:
        y, t = y.reshape(1, -1), np.reshape(t, (1, -1))
    if t.size == y.size:  # one-hot -> label indices
        t = t.argmax(axis=1)
    t = np.ravel(t)
    return -np.sum(np.log(y[np.arange(y.shape[0]), t] + LOG_GUARD)) / y.shape[0]


def numerical_diff(f, x, h=H):
    """Central difference (f(x+h) - f(x-h)) / 2h."""
    return (f(x + h) - f(x - h)) / (2 * h)


def numerical_gradient(f, x, h=H):
    """Central-difference gradient of scalar ``f`` at float array ``x`` (``x`` is restored)."""
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"numerical_gradient needs a float array, got dtype {x.dtype}: an integer array "
            "cannot hold x + h. Convert it first, e.g. x.astype(np.float64)."
        )
    return numerical_gradient_at(f, x, range(x.size), h).reshape(x.shape)


def numerical_gradient_at(f, x, flat_indices, h=H):
    """:func:`numerical_gradient` at the flat (C-order) ``flat_indices`` of ``x`` only."""
    grad = np.empty(len(flat_indices), dtype=x.dtype)
    for k, i in enumerate(flat_indices):
        idx = np.unravel_index(i, x.shape)
        saved = x[idx]
        x[idx] = saved + h
        f_plus = f(x)
        x[idx] = saved - h
        f_minus = f(x)
        x[idx] = saved
        grad[k] = (f_plus - f_minus) / (2 * h)
    return grad


def gradient_descent(f, init_x, lr=0.01, step_num=100, return_path=False):
    """Plain gradient descent from ``init_x``; optionally also the path of visited points."""
    x = np.array(init_x, dtype=np.float64)
    path = [x.copy()]
    for _ in range(step_num):
        x -= lr * numerical_gradient(f, x)
        path.append(x.copy())
    return (x, np.array(path)) if return_path else x


def function_1(x):
    """The book's 0.01 x^2 + 0.1 x."""
    return 0.01 * x**2 + 0.1 * x


def function_2(x):
    """The book's x0^2 + x1^2 (sum of squares over the last axis)."""
    return np.sum(x**2, axis=-1)


class simpleNet:
    """The book's 2x3 single-layer net used to demo gradients of a loss."""

    def __init__(self, W=None, seed=None):
        self.W = np.random.default_rng(seed).standard_normal((2, 3)) if W is None else W

    def predict(self, x):
        """Logits x @ W."""
        return np.dot(x, self.W)

    def loss(self, x, t):
        """Cross-entropy of softmax(predict(x)) against ``t``."""
        return cross_entropy_error(softmax(self.predict(x)), t)

    def numerical_gradient(self, x, t):
        """Central-difference gradient of the loss with respect to W."""
        return numerical_gradient(lambda _: self.loss(x, t), self.W)


class TwoLayerNet:
    """affine -> sigmoid -> affine -> softmax, with the book's initialisation."""

    PARAM_NAMES = ("W1", "b1", "W2", "b2")

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01, seed=None):
        rng = np.random.default_rng(seed)
        self.params = {
            "W1": weight_init_std * rng.standard_normal((input_size, hidden_size)),
            "b1": np.zeros(hidden_size),
            "W2": weight_init_std * rng.standard_normal((hidden_size, output_size)),
            "b2": np.zeros(output_size),
        }

    def predict(self, x):
        """Class probabilities for a batch ``x``."""
        p = self.params
        z1 = sigmoid(np.dot(x, p["W1"]) + p["b1"])
        return softmax(np.dot(z1, p["W2"]) + p["b2"])

    # loss and numerical_gradient name TwoLayerNet rather than self: the public
    # subclass's validation and numba dispatch must not leak into the oracle.

    def loss(self, x, t):
        """Batch-mean cross-entropy (with the book's 1e-7 guard)."""
        return cross_entropy_error(TwoLayerNet.predict(self, x), t)

    def accuracy(self, x, t):
        """Fraction of samples whose arg-max class equals the label (integer or one-hot)."""
        t = t.argmax(axis=1) if t.ndim == 2 else t
        return float(np.mean(TwoLayerNet.predict(self, x).argmax(axis=1) == t))

    def numerical_gradient(self, x, t, h=H):
        """Central-difference gradient of the loss for every parameter (the slow oracle)."""
        loss = lambda _: TwoLayerNet.loss(self, x, t)  # noqa: E731 - the book's idiom
        return {k: numerical_gradient(loss, self.params[k], h) for k in self.PARAM_NAMES}

    def gradient(self, x, t):
        """Analytic backprop gradient (ignores the log guard), the oracle for gradient checks."""
        p, n = self.params, x.shape[0]
        z1 = sigmoid(np.dot(x, p["W1"]) + p["b1"])
        y = softmax(np.dot(z1, p["W2"]) + p["b2"])
        onehot = t if t.ndim == 2 else np.eye(y.shape[1])[t]
        dy = (y - onehot) / n
        dz1 = np.dot(dy, p["W2"].T) * z1 * (1 - z1)
        return {
            "W1": np.dot(x.T, dz1),
            "b1": dz1.sum(axis=0),
            "W2": np.dot(z1.T, dy),
            "b2": dy.sum(axis=0),
        }
