"""The book's chapter 5 to 7 layers in plain NumPy: the oracle the engine must match.

Each layer has ``forward`` and ``backward`` and keeps what backward needs on
itself, under the book's attribute names.  Deliberately short; it validates
nothing and never imports a kernel.  Images are ``(N, C, H, W)``; convolution
and pooling go through :func:`im2col` (padding is zeros, as in the book, also
for max pooling).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fastnum import reference
from fastnum.constants import BN_EPSILON


def conv_output_size(in_size, filter_size, stride=1, pad=0):
    """Output length of a window sliding over ``in_size`` (+ padding); refuses partial steps."""
    span = in_size + 2 * pad - filter_size
    if span < 0 or span % stride:
        raise ValueError(
            f"a window of {filter_size} with stride {stride} and pad {pad} does not tile an "
            f"input of {in_size}: ({in_size} + 2*{pad} - {filter_size}) / {stride} + 1 is not a "
            "whole number >= 1; change the filter size, stride or padding."
        )
    return span // stride + 1


def im2col(x, filter_h, filter_w, stride=1, pad=0):
    """(N, C, H, W) images -> (N*OH*OW, C*FH*FW): one row per window position."""
    n, c, h, w = x.shape
    oh = conv_output_size(h, filter_h, stride, pad)
    ow = conv_output_size(w, filter_w, stride, pad)
    padded = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    windows = sliding_window_view(padded, (filter_h, filter_w), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]  # (N, C, OH, OW, FH, FW)
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * filter_h * filter_w)


def col2im(col, x_shape, filter_h, filter_w, stride=1, pad=0):
    """Inverse layout of :func:`im2col`, summing where windows overlap (its adjoint)."""
    n, c, h, w = x_shape
    oh = conv_output_size(h, filter_h, stride, pad)
    ow = conv_output_size(w, filter_w, stride, pad)
    patches = col.reshape(n, oh, ow, c, filter_h, filter_w).transpose(0, 3, 4, 5, 1, 2)
    img = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    for i in range(filter_h):
        for j in range(filter_w):
            img[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride] += patches[
                :, :, i, j
            ]
    return img[:, :, pad : pad + h, pad : pad + w]


class Relu:
    """max(0, x); ``mask`` marks the inputs that were clipped."""

    def forward(self, x):
        """Clip negatives to zero."""
        self.mask = x <= 0
        return np.where(self.mask, 0.0, x)

    def backward(self, dout):
        """Pass the gradient where the input was positive."""
        return np.where(self.mask, 0.0, dout)


class Sigmoid:
    """Logistic function; ``out`` is kept for backward."""

    def forward(self, x):
        """1 / (1 + exp(-x))."""
        self.out = reference.sigmoid(x)
        return self.out

    def backward(self, dout):
        """dout * s * (1 - s)."""
        return dout * (1.0 - self.out) * self.out


class Affine:
    """x @ W + b, flattening each sample of ``x`` first."""

    def __init__(self, W, b):
        self.W, self.b = W, b
        self.x = self.original_x_shape = self.dW = self.db = None

    def forward(self, x):
        """(N, ...) -> (N, M)."""
        self.original_x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)
        return np.dot(self.x, self.W) + self.b

    def backward(self, dout):
        """Store dW, db; return the gradient shaped like the input."""
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        return np.dot(dout, self.W.T).reshape(self.original_x_shape)


class SoftmaxWithLoss:
    """Softmax then batch-mean cross-entropy (with the book's 1e-7 guard)."""

    def __init__(self):
        self.loss = self.y = self.t = None

    def forward(self, x, t):
        """Loss of logits ``x`` against integer or one-hot labels ``t``."""
        self.t = t
        self.y = reference.softmax(x)
        self.loss = reference.cross_entropy_error(self.y, t)
        return self.loss

    def backward(self, dout=1):
        """(y - onehot) / N: the gradient of the unguarded loss."""
        onehot = self.t if self.t.ndim == 2 else np.eye(self.y.shape[1])[self.t]
        return dout * (self.y - onehot) / self.y.shape[0]


class Convolution:
    """Filters ``W`` (FN, C, FH, FW) plus bias ``b`` (FN,) over (N, C, H, W) images."""

    def __init__(self, W, b, stride=1, pad=0):
        self.W, self.b, self.stride, self.pad = W, b, stride, pad
        self.x = self.col = self.col_W = self.dW = self.db = None

    def forward(self, x):
        """(N, C, H, W) -> (N, FN, OH, OW)."""
        fn, _, fh, fw = self.W.shape
        self.x = x
        self.col = im2col(x, fh, fw, self.stride, self.pad)
        self.col_W = self.W.reshape(fn, -1).T
        out = np.dot(self.col, self.col_W) + self.b  # (N*OH*OW, FN)
        oh = conv_output_size(x.shape[2], fh, self.stride, self.pad)
        return out.reshape(x.shape[0], oh, -1, fn).transpose(0, 3, 1, 2)

    def backward(self, dout):
        """Store dW, db; return the gradient shaped like the input."""
        fn, _, fh, fw = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, fn)
        self.db = np.sum(dout, axis=0)
        self.dW = np.dot(self.col.T, dout).T.reshape(self.W.shape)
        dcol = np.dot(dout, self.col_W.T)
        return col2im(dcol, self.x.shape, fh, fw, self.stride, self.pad)


class Pooling:
    """Max pooling over pool_h x pool_w windows; ``arg_max`` is each window's winner."""

    def __init__(self, pool_h, pool_w, stride=1, pad=0):
        self.pool_h, self.pool_w, self.stride, self.pad = pool_h, pool_w, stride, pad
        self.x = self.arg_max = None

    def forward(self, x):
        """(N, C, H, W) -> (N, C, OH, OW)."""
        n, c, h, _ = x.shape
        self.x = x
        col = im2col(x, self.pool_h, self.pool_w, self.stride, self.pad)
        col = col.reshape(-1, self.pool_h * self.pool_w)  # one row per (sample, pos, channel)
        self.arg_max = np.argmax(col, axis=1)
        oh = conv_output_size(h, self.pool_h, self.stride, self.pad)
        return np.max(col, axis=1).reshape(n, oh, -1, c).transpose(0, 3, 1, 2)

    def backward(self, dout):
        """Route each window's gradient to its max (the first one on ties)."""
        window = self.pool_h * self.pool_w
        dmax = np.zeros((dout.size, window))
        dmax[np.arange(dout.size), self.arg_max] = dout.transpose(0, 2, 3, 1).ravel()
        dcol = dmax.reshape(-1, self.x.shape[1] * window)
        return col2im(dcol, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad)


class BatchNormalization:
    """Per-feature batch normalisation ``gamma * (x - mean) / sqrt(var + eps) + beta``.

    Training mode normalises with the batch's mean and (biased) variance and moves
    ``running_mean`` / ``running_var`` towards them by ``1 - momentum``; test mode
    uses the running statistics.  Images are flattened per sample first, so every
    (channel, row, column) is a feature of its own, as in the book.
    """

    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None):
        self.gamma, self.beta, self.momentum = gamma, beta, momentum
        self.running_mean, self.running_var = running_mean, running_var
        self.input_shape = self.batch_size = self.xc = self.xn = self.std = None
        self.dgamma = self.dbeta = None

    def forward(self, x, train_flg=True):
        """(N, ...) -> same shape; updates the running statistics in training mode."""
        self.input_shape = x.shape
        x = x.reshape(x.shape[0], -1)
        if self.running_mean is None:
            self.running_mean, self.running_var = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        if train_flg:
            mu = x.mean(axis=0)
            xc = x - mu
            var = np.mean(xc**2, axis=0)
            std = np.sqrt(var + BN_EPSILON)
            self.batch_size, self.xc, self.std, self.xn = x.shape[0], xc, std, xc / std
            m = self.momentum
            self.running_mean = m * self.running_mean + (1 - m) * mu
            self.running_var = m * self.running_var + (1 - m) * var
            xn = self.xn
        else:
            xn = (x - self.running_mean) / np.sqrt(self.running_var + BN_EPSILON)
        return (self.gamma * xn + self.beta).reshape(self.input_shape)

    def backward(self, dout):
        """Store dgamma, dbeta; return the gradient shaped like the input (training mode)."""
        dout = dout.reshape(dout.shape[0], -1)
        self.dbeta = dout.sum(axis=0)
        self.dgamma = np.sum(self.xn * dout, axis=0)
        dxn = self.gamma * dout
        # The batch statistics depend on every sample: the mean of the upstream terms
        # and their projection on xn are subtracted (the chain rule through mean and var).
        dx = (dxn - dxn.mean(axis=0) - self.xn * np.mean(dxn * self.xn, axis=0)) / self.std
        return dx.reshape(self.input_shape)


class Dropout:
    """Zero each unit with probability ``dropout_ratio`` in training; scale by the keep rate
    in test mode.

    The mask is data: ``forward(x, mask=...)`` uses the given one, otherwise it is
    drawn from ``rng`` (a ``np.random.Generator``), or from NumPy's global random
    state as in the book when ``rng`` is None.  ``mask`` keeps the last one for backward.
    """

    def __init__(self, dropout_ratio=0.5, rng=None):
        self.dropout_ratio, self.rng = dropout_ratio, rng
        self.mask = None

    def forward(self, x, train_flg=True, mask=None):
        """x * mask in training (mask True = kept), x * (1 - dropout_ratio) in test mode."""
        if not train_flg:
            return x * (1.0 - self.dropout_ratio)
        if mask is None:
            draw = np.random.rand(*x.shape) if self.rng is None else self.rng.random(x.shape)  # noqa: NPY002 - the book's global state
            mask = draw > self.dropout_ratio
        self.mask = mask
        return x * mask

    def backward(self, dout):
        """The gradient of the kept units."""
        return dout * self.mask


def draw_dropout_masks(rng, ratio, batch_size, widths):
    """One training step's dropout masks: for each name of ``widths`` (in order) a
    (batch_size, width) array of 1.0 (kept, probability 1 - ratio) and 0.0, from ``rng``."""
    return {
        name: (rng.random((batch_size, d)) > ratio).astype(np.float64) for name, d in widths.items()
    }
