"""The NumPy layers: forward against direct loops, backward against numerical gradients.

Sizes are tiny and the geometries odd (pad 1 and 2, stride 2, filters 3 and 4,
3 input channels, non-square images, a pooling window of 3), so that an
off-by-one in im2col or col2im cannot hide behind a symmetric case.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastnum import layers, reference

TOL = 1e-7  # backward vs central differences of a piecewise-linear or smooth layer

# (channels, height, width, filter h, filter w, stride, pad): every one tiles its input
CONV_GEOMETRIES = [
    (3, 7, 5, 3, 3, 1, 0),
    (3, 7, 5, 3, 3, 1, 1),
    (3, 7, 5, 3, 3, 2, 0),
    (2, 8, 6, 4, 4, 2, 1),
    (3, 6, 5, 4, 4, 1, 2),
    (1, 8, 6, 4, 4, 2, 2),
    (2, 5, 7, 3, 4, 1, 1),
]
# (channels, height, width, pool h, pool w, stride, pad)
POOL_GEOMETRIES = [
    (3, 8, 6, 2, 2, 2, 0),
    (2, 7, 5, 3, 3, 1, 0),
    (3, 7, 5, 3, 3, 2, 1),
    (2, 6, 9, 3, 3, 3, 0),
    (1, 5, 4, 2, 3, 1, 1),
]


def numerical_grad(f, a, h=1e-5):
    return reference.numerical_gradient(lambda _: f(), a, h)


def check_backward(layer, x, params=()):
    """d sum(forward(x) * R) by backward(R) against central differences, for x and params."""
    rng = np.random.default_rng(7)
    weights = rng.standard_normal(layer.forward(x).shape)
    objective = lambda: float(np.sum(layer.forward(x) * weights))  # noqa: E731
    layer.forward(x)
    dx = layer.backward(weights)
    assert dx.shape == x.shape
    assert np.abs(dx - numerical_grad(objective, x)).max() <= TOL
    for name, grad_name in params:
        layer.forward(x)
        layer.backward(weights)
        analytic = getattr(layer, grad_name)
        numeric = numerical_grad(objective, getattr(layer, name))
        assert analytic.shape == numeric.shape
        assert np.abs(analytic - numeric).max() <= TOL, name


def direct_convolution(x, W, b, stride, pad):
    """The definition, one output at a time."""
    n, _, h, w = x.shape
    fn, _, fh, fw = W.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    oh, ow = (h + 2 * pad - fh) // stride + 1, (w + 2 * pad - fw) // stride + 1
    out = np.empty((n, fn, oh, ow))
    for i, f, r, c in np.ndindex(out.shape):
        patch = xp[i, :, r * stride : r * stride + fh, c * stride : c * stride + fw]
        out[i, f, r, c] = np.sum(patch * W[f]) + b[f]
    return out


def direct_max_pool(x, ph, pw, stride, pad):
    """The definition (zero padding, as the book's im2col), one output at a time."""
    n, c, h, w = x.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    oh, ow = (h + 2 * pad - ph) // stride + 1, (w + 2 * pad - pw) // stride + 1
    out = np.empty((n, c, oh, ow))
    for i, k, r, q in np.ndindex(out.shape):
        out[i, k, r, q] = xp[i, k, r * stride : r * stride + ph, q * stride : q * stride + pw].max()
    return out


def conv_problem(geometry, batch=2, filters=3, seed=0):
    c, h, w, fh, fw, stride, pad = geometry
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((batch, c, h, w)),
        rng.standard_normal((filters, c, fh, fw)),
        rng.standard_normal(filters),
        stride,
        pad,
    )


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    "in_size, filt, stride, pad, expected",
    [
        (28, 5, 1, 0, 24),
        (24, 2, 2, 0, 12),
        (7, 3, 2, 1, 4),
        (5, 4, 1, 2, 6),
        (3, 3, 1, 0, 1),
        (1, 3, 1, 1, 1),
    ],
)
def test_conv_output_size(in_size, filt, stride, pad, expected):
    assert layers.conv_output_size(in_size, filt, stride, pad) == expected


@pytest.mark.parametrize(
    "in_size, filt, stride, pad", [(28, 5, 2, 0), (23, 2, 2, 0), (3, 5, 1, 0), (10, 3, 3, 0)]
)
def test_conv_output_size_refuses_partial_windows_naming_the_sizes(in_size, filt, stride, pad):
    with pytest.raises(ValueError, match=rf"\({in_size} \+ 2\*{pad} - {filt}\) / {stride}"):
        layers.conv_output_size(in_size, filt, stride, pad)


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_col2im_is_the_adjoint_of_im2col(geometry):
    x, W, _, stride, pad = conv_problem(geometry)
    fh, fw = W.shape[2:]
    col = layers.im2col(x, fh, fw, stride, pad)
    oh = layers.conv_output_size(x.shape[2], fh, stride, pad)
    ow = layers.conv_output_size(x.shape[3], fw, stride, pad)
    assert col.shape == (x.shape[0] * oh * ow, x.shape[1] * fh * fw)
    other = np.random.default_rng(3).standard_normal(col.shape)
    back = layers.col2im(other, x.shape, fh, fw, stride, pad)
    assert back.shape == x.shape
    assert np.sum(col * other) == pytest.approx(np.sum(x * back), rel=1e-12)


# ----------------------------------------------------------------------------- convolution


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_convolution_forward_is_the_definition(geometry):
    x, W, b, stride, pad = conv_problem(geometry)
    out = layers.Convolution(W, b, stride, pad).forward(x)
    assert np.allclose(out, direct_convolution(x, W, b, stride, pad), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_convolution_backward_matches_numerical_gradients(geometry):
    x, W, b, stride, pad = conv_problem(geometry)
    layer = layers.Convolution(W, b, stride, pad)
    check_backward(layer, x, params=[("W", "dW"), ("b", "db")])
    assert layer.col.shape[1] == layer.col_W.shape[0] == W[0].size


# ----------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("geometry", POOL_GEOMETRIES)
def test_pooling_forward_is_the_definition(geometry):
    c, h, w, ph, pw, stride, pad = geometry
    x = np.random.default_rng(1).standard_normal((2, c, h, w))
    out = layers.Pooling(ph, pw, stride, pad).forward(x)
    assert np.array_equal(out, direct_max_pool(x, ph, pw, stride, pad))


@pytest.mark.parametrize("geometry", POOL_GEOMETRIES)
def test_pooling_backward_matches_numerical_gradients(geometry):
    c, h, w, ph, pw, stride, pad = geometry
    # Distinct values (no ties within any window) and positive, so a padded zero never wins:
    # the max is then differentiable and central differences are exact.
    x = np.random.default_rng(2).permutation(2 * c * h * w).reshape(2, c, h, w) / 7.0 + 1.0
    layer = layers.Pooling(ph, pw, stride, pad)
    check_backward(layer, x)
    assert layer.arg_max.shape == (layer.forward(x).size,)


def test_pooling_routes_the_gradient_to_the_window_max_only():
    x = np.array([[[[1.0, 5.0], [3.0, 2.0]]]])
    layer = layers.Pooling(2, 2, stride=2)
    assert layer.forward(x).item() == 5.0
    assert np.array_equal(layer.backward(np.array([[[[2.5]]]])), [[[[0, 2.5], [0, 0]]]])


# ----------------------------------------------------------------------------- the rest


def test_affine_flattens_images_and_restores_their_shape():
    rng = np.random.default_rng(4)
    x, W = rng.standard_normal((3, 2, 3, 2)), rng.standard_normal((12, 5))
    b = rng.standard_normal(5)
    layer = layers.Affine(W, b)
    assert np.allclose(layer.forward(x), x.reshape(3, -1) @ W + b, rtol=1e-14, atol=0)
    assert layer.original_x_shape == x.shape
    check_backward(layer, x, params=[("W", "dW"), ("b", "db")])


@pytest.mark.parametrize("layer_class", [layers.Relu, layers.Sigmoid])
def test_activations_match_numerical_gradients(layer_class):
    x = np.random.default_rng(5).standard_normal((4, 2, 3))
    x[np.abs(x) < 1e-3] = 0.5  # keep relu's kink out of reach of the central difference
    layer = layer_class()
    out = layer.forward(x)
    expected = np.maximum(x, 0) if layer_class is layers.Relu else 1 / (1 + np.exp(-x))
    assert np.array_equal(out, expected)
    check_backward(layer, x)


@pytest.mark.parametrize("one_hot", [False, True])
def test_softmax_with_loss_is_the_guarded_cross_entropy(one_hot):
    rng = np.random.default_rng(6)
    logits, t = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    labels = np.eye(4)[t] if one_hot else t
    layer = layers.SoftmaxWithLoss()
    y = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(y[np.arange(5), t] + 1e-7))
    assert layer.forward(logits, labels) == pytest.approx(expected, rel=1e-13)
    assert np.allclose(layer.y, y, rtol=1e-13, atol=0)
    dx = layer.backward()
    numeric = numerical_grad(lambda: layers.SoftmaxWithLoss().forward(logits, labels), logits)
    # backward is the unguarded gradient: the 1e-7 guard shifts the numerical one by ~1e-7 / y
    assert 0 < np.abs(dx - numeric).max() <= 1e-6
