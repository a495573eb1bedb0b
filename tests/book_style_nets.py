"""Networks written the way a reader of "Deep Learning from Scratch" writes them.

Same interface as the book's chapter 5 to 8 classes (attribute names, method
signatures, layers in an OrderedDict (a list in chapter 8), ``lastLayer`` / ``last_layer``, weights
drawn from NumPy's global generator), but our own code.  fastnum never imports
this module: the gradient check must recognise these classes by structure only.
"""

# The book draws weights and dropout masks from NumPy's global generator; so do these.
# ruff: noqa: NPY002

from __future__ import annotations

from collections import OrderedDict

import numpy as np

LOG_GUARD = 1e-7


def softmax(x):
    """Row-wise softmax, shifted by the row max."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy_error(y, t):
    """Batch-mean cross-entropy of probabilities ``y`` against integer or one-hot ``t``."""
    if t.ndim == 2:
        t = t.argmax(axis=1)
    return -np.log(y[np.arange(len(y)), t] + LOG_GUARD).sum() / len(y)


def im2col(images, fh, fw, stride=1, pad=0):
    """(N, C, H, W) -> (N * OH * OW, C * fh * fw): one row per output position."""
    n, c, h, w = images.shape
    oh, ow = (h + 2 * pad - fh) // stride + 1, (w + 2 * pad - fw) // stride + 1
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((n, c, fh, fw, oh, ow))
    for i in range(fh):
        for j in range(fw):
            cols[:, :, i, j] = padded[
                :, :, i : i + stride * oh : stride, j : j + stride * ow : stride
            ]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, -1)


def col2im(cols, shape, fh, fw, stride=1, pad=0):
    """Adjoint of :func:`im2col`: sum the rows back into (N, C, H, W)."""
    n, c, h, w = shape
    oh, ow = (h + 2 * pad - fh) // stride + 1, (w + 2 * pad - fw) // stride + 1
    cols = cols.reshape(n, oh, ow, c, fh, fw).transpose(0, 3, 4, 5, 1, 2)
    padded = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    for i in range(fh):
        for j in range(fw):
            padded[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride] += cols[
                :, :, i, j
            ]
    return padded[:, :, pad : pad + h, pad : pad + w]


class Relu:
    def __init__(self):
        self.mask = None

    def forward(self, x):
        self.mask = x <= 0
        return np.where(self.mask, 0.0, x)

    def backward(self, dout):
        return np.where(self.mask, 0.0, dout)


class Sigmoid:
    def __init__(self):
        self.out = None

    def forward(self, x):
        self.out = 1 / (1 + np.exp(-x))
        return self.out

    def backward(self, dout):
        return dout * self.out * (1.0 - self.out)


class Affine:
    def __init__(self, W, b):
        self.W, self.b = W, b
        self.x = self.original_x_shape = self.dW = self.db = None

    def forward(self, x):
        self.original_x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)
        return self.x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        return (dout @ self.W.T).reshape(self.original_x_shape)


class SoftmaxWithLoss:
    def __init__(self):
        self.loss = self.y = self.t = None

    def forward(self, x, t):
        self.t, self.y = t, softmax(x)
        self.loss = cross_entropy_error(self.y, t)
        return self.loss

    def backward(self, dout=1):
        n = self.t.shape[0]
        target = self.t if self.t.size == self.y.size else np.eye(self.y.shape[1])[self.t]
        return dout * (self.y - target) / n


class BatchNormalization:
    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None):
        self.gamma, self.beta, self.momentum = gamma, beta, momentum
        self.running_mean, self.running_var = running_mean, running_var
        self.input_shape = self.xc = self.std = self.xn = self.batch_size = None
        self.dgamma = self.dbeta = None

    def forward(self, x, train_flg=True):
        self.input_shape = x.shape
        x = x.reshape(x.shape[0], -1)
        if self.running_mean is None:
            self.running_mean, self.running_var = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        if train_flg:
            mu = x.mean(axis=0)
            self.xc = x - mu
            var = (self.xc**2).mean(axis=0)
            self.std = np.sqrt(var + 10e-7)
            self.xn = self.xc / self.std
            self.batch_size = x.shape[0]
            m = self.momentum
            self.running_mean = m * self.running_mean + (1 - m) * mu
            self.running_var = m * self.running_var + (1 - m) * var
            xn = self.xn
        else:
            xn = (x - self.running_mean) / np.sqrt(self.running_var + 10e-7)
        return (self.gamma * xn + self.beta).reshape(self.input_shape)

    def backward(self, dout):
        dout = dout.reshape(dout.shape[0], -1)
        self.dbeta = dout.sum(axis=0)
        self.dgamma = (self.xn * dout).sum(axis=0)
        dxn = self.gamma * dout
        dstd = -((dxn * self.xc) / self.std**2).sum(axis=0)
        dvar = 0.5 * dstd / self.std
        dxc = dxn / self.std + (2.0 / self.batch_size) * self.xc * dvar
        dx = dxc - dxc.mean(axis=0)
        return dx.reshape(self.input_shape)


class Dropout:
    def __init__(self, dropout_ratio=0.5):
        self.dropout_ratio, self.mask = dropout_ratio, None

    def forward(self, x, train_flg=True):
        if train_flg:  # the mask comes from NumPy's global generator, as in the book
            self.mask = np.random.rand(*x.shape) > self.dropout_ratio
            return x * self.mask
        return x * (1.0 - self.dropout_ratio)

    def backward(self, dout):
        return dout * self.mask


class Convolution:
    def __init__(self, W, b, stride=1, pad=0):
        self.W, self.b, self.stride, self.pad = W, b, stride, pad
        self.x = self.col = self.col_W = self.dW = self.db = None

    def forward(self, x):
        fn, _, fh, fw = self.W.shape
        n, _, h, w = x.shape
        oh = (h + 2 * self.pad - fh) // self.stride + 1
        ow = (w + 2 * self.pad - fw) // self.stride + 1
        self.x = x
        self.col = im2col(x, fh, fw, self.stride, self.pad)
        self.col_W = self.W.reshape(fn, -1).T
        out = self.col @ self.col_W + self.b
        return out.reshape(n, oh, ow, fn).transpose(0, 3, 1, 2)

    def backward(self, dout):
        fn, c, fh, fw = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, fn)
        self.db = dout.sum(axis=0)
        self.dW = (self.col.T @ dout).T.reshape(fn, c, fh, fw)
        dcol = dout @ self.col_W.T
        return col2im(dcol, self.x.shape, fh, fw, self.stride, self.pad)


class Pooling:
    def __init__(self, pool_h, pool_w, stride=1, pad=0):
        self.pool_h, self.pool_w, self.stride, self.pad = pool_h, pool_w, stride, pad
        self.x = self.arg_max = None

    def forward(self, x):
        n, c, h, w = x.shape
        oh = (h + 2 * self.pad - self.pool_h) // self.stride + 1
        ow = (w + 2 * self.pad - self.pool_w) // self.stride + 1
        col = im2col(x, self.pool_h, self.pool_w, self.stride, self.pad)
        col = col.reshape(-1, self.pool_h * self.pool_w)
        self.x, self.arg_max = x, col.argmax(axis=1)
        return col.max(axis=1).reshape(n, oh, ow, c).transpose(0, 3, 1, 2)

    def backward(self, dout):
        size = self.pool_h * self.pool_w
        dout = dout.transpose(0, 2, 3, 1)
        dmax = np.zeros((dout.size, size))
        dmax[np.arange(dout.size), self.arg_max] = dout.ravel()
        dcol = dmax.reshape(dout.shape[0] * dout.shape[1] * dout.shape[2], -1)
        return col2im(dcol, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad)


def _not_needed(*args, **kwargs):
    raise AssertionError("the gradient check must not call the network's numerical_gradient")


def _backward_through(layers, last_layer):
    dout = last_layer.backward(1)
    for layer in reversed(list(layers.values())):
        dout = layer.backward(dout)


class TwoLayerNet:
    """Chapter 5: Affine1 -> Relu1 -> Affine2, softmax-with-loss in ``lastLayer``.

    ``activation="sigmoid"`` puts a ``Sigmoid1`` in place of ``Relu1``, the swap a
    reader makes to compare with chapter 4's network.
    """

    def __init__(
        self, input_size, hidden_size, output_size, weight_init_std=0.01, activation="relu"
    ):
        self.params = {
            "W1": weight_init_std * np.random.randn(input_size, hidden_size),
            "b1": np.zeros(hidden_size),
            "W2": weight_init_std * np.random.randn(hidden_size, output_size),
            "b2": np.zeros(output_size),
        }
        self.layers = OrderedDict()
        self.layers["Affine1"] = Affine(self.params["W1"], self.params["b1"])
        key, layer = {"relu": ("Relu1", Relu), "sigmoid": ("Sigmoid1", Sigmoid)}[activation]
        self.layers[key] = layer()
        self.layers["Affine2"] = Affine(self.params["W2"], self.params["b2"])
        self.lastLayer = SoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        return self.lastLayer.forward(self.predict(x), t)

    def accuracy(self, x, t):
        t = t.argmax(axis=1) if t.ndim != 1 else t
        return float(np.mean(self.predict(x).argmax(axis=1) == t))

    numerical_gradient = _not_needed

    def gradient(self, x, t):
        self.loss(x, t)
        _backward_through(self.layers, self.lastLayer)
        return {
            "W1": self.layers["Affine1"].dW,
            "b1": self.layers["Affine1"].db,
            "W2": self.layers["Affine2"].dW,
            "b2": self.layers["Affine2"].db,
        }


class MultiLayerNetExtend:
    """Chapter 6: Affine -> [BatchNorm] -> activation -> [Dropout], repeated; weight decay."""

    def __init__(
        self,
        input_size,
        hidden_size_list,
        output_size,
        activation="relu",
        weight_init_std="relu",
        weight_decay_lambda=0,
        use_dropout=False,
        dropout_ration=0.5,
        use_batchnorm=False,
    ):
        self.input_size, self.output_size = input_size, output_size
        self.hidden_size_list, self.hidden_layer_num = hidden_size_list, len(hidden_size_list)
        self.use_dropout, self.use_batchnorm = use_dropout, use_batchnorm
        self.weight_decay_lambda = weight_decay_lambda
        self.params = {}
        sizes = [input_size, *hidden_size_list, output_size]
        for k in range(1, len(sizes)):
            scale = weight_init_std
            if str(weight_init_std).lower() in ("relu", "he"):
                scale = np.sqrt(2.0 / sizes[k - 1])
            elif str(weight_init_std).lower() in ("sigmoid", "xavier"):
                scale = np.sqrt(1.0 / sizes[k - 1])
            self.params[f"W{k}"] = scale * np.random.randn(sizes[k - 1], sizes[k])
            self.params[f"b{k}"] = np.zeros(sizes[k])
        activation_layer = {"sigmoid": Sigmoid, "relu": Relu}[activation]
        self.layers = OrderedDict()
        for k in range(1, self.hidden_layer_num + 1):
            self.layers[f"Affine{k}"] = Affine(self.params[f"W{k}"], self.params[f"b{k}"])
            if use_batchnorm:
                self.params[f"gamma{k}"] = np.ones(sizes[k])
                self.params[f"beta{k}"] = np.zeros(sizes[k])
                self.layers[f"BatchNorm{k}"] = BatchNormalization(
                    self.params[f"gamma{k}"], self.params[f"beta{k}"]
                )
            self.layers[f"Activation_function{k}"] = activation_layer()
            if use_dropout:
                self.layers[f"Dropout{k}"] = Dropout(dropout_ration)
        k = self.hidden_layer_num + 1
        self.layers[f"Affine{k}"] = Affine(self.params[f"W{k}"], self.params[f"b{k}"])
        self.last_layer = SoftmaxWithLoss()

    def predict(self, x, train_flg=False):
        for layer in self.layers.values():
            if isinstance(layer, Dropout | BatchNormalization):
                x = layer.forward(x, train_flg)
            else:
                x = layer.forward(x)
        return x

    def loss(self, x, t, train_flg=False):
        decay = sum(
            0.5 * self.weight_decay_lambda * np.sum(self.params[f"W{k}"] ** 2)
            for k in range(1, self.hidden_layer_num + 2)
        )
        return self.last_layer.forward(self.predict(x, train_flg), t) + decay

    def accuracy(self, x, t):
        t = t.argmax(axis=1) if t.ndim != 1 else t
        return float(np.mean(self.predict(x, train_flg=False).argmax(axis=1) == t))

    numerical_gradient = _not_needed

    def gradient(self, x, t):
        self.loss(x, t, train_flg=True)
        _backward_through(self.layers, self.last_layer)
        grads = {}
        for k in range(1, self.hidden_layer_num + 2):
            affine = self.layers[f"Affine{k}"]
            grads[f"W{k}"] = affine.dW + self.weight_decay_lambda * affine.W
            grads[f"b{k}"] = affine.db
            if self.use_batchnorm and k <= self.hidden_layer_num:
                grads[f"gamma{k}"] = self.layers[f"BatchNorm{k}"].dgamma
                grads[f"beta{k}"] = self.layers[f"BatchNorm{k}"].dbeta
        return grads


class MultiLayerNet(MultiLayerNetExtend):
    """Chapter 6's plain version: Affine -> activation, repeated; weight decay; no train_flg."""

    def __init__(
        self,
        input_size,
        hidden_size_list,
        output_size,
        activation="relu",
        weight_init_std="relu",
        weight_decay_lambda=0,
    ):
        super().__init__(
            input_size,
            hidden_size_list,
            output_size,
            activation=activation,
            weight_init_std=weight_init_std,
            weight_decay_lambda=weight_decay_lambda,
        )

    def loss(self, x, t):
        return super().loss(x, t)

    def gradient(self, x, t):
        # The extended net's gradient calls loss(x, t, train_flg=True); this loss takes no flag.
        self.loss(x, t)
        _backward_through(self.layers, self.last_layer)
        grads = {}
        for k in range(1, self.hidden_layer_num + 2):
            affine = self.layers[f"Affine{k}"]
            grads[f"W{k}"] = affine.dW + self.weight_decay_lambda * affine.W
            grads[f"b{k}"] = affine.db
        return grads


class SimpleConvNet:
    """Chapter 7: Conv1 -> Relu1 -> Pool1 -> Affine1 -> Relu2 -> Affine2, ``last_layer``."""

    def __init__(
        self,
        input_dim=(1, 28, 28),
        conv_param={"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1},  # noqa: B006 - the book's signature
        hidden_size=100,
        output_size=10,
        weight_init_std=0.01,
    ):
        fn, fs = conv_param["filter_num"], conv_param["filter_size"]
        pad, stride = conv_param["pad"], conv_param["stride"]
        c, size = input_dim[0], input_dim[1]
        conv_out = (size - fs + 2 * pad) // stride + 1
        pool_out = fn * (conv_out // 2) * (conv_out // 2)
        self.params = {
            "W1": weight_init_std * np.random.randn(fn, c, fs, fs),
            "b1": np.zeros(fn),
            "W2": weight_init_std * np.random.randn(pool_out, hidden_size),
            "b2": np.zeros(hidden_size),
            "W3": weight_init_std * np.random.randn(hidden_size, output_size),
            "b3": np.zeros(output_size),
        }
        self.layers = OrderedDict()
        self.layers["Conv1"] = Convolution(self.params["W1"], self.params["b1"], stride, pad)
        self.layers["Relu1"] = Relu()
        self.layers["Pool1"] = Pooling(pool_h=2, pool_w=2, stride=2)
        self.layers["Affine1"] = Affine(self.params["W2"], self.params["b2"])
        self.layers["Relu2"] = Relu()
        self.layers["Affine2"] = Affine(self.params["W3"], self.params["b3"])
        self.last_layer = SoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        return self.last_layer.forward(self.predict(x), t)

    numerical_gradient = _not_needed

    def gradient(self, x, t):
        self.loss(x, t)
        _backward_through(self.layers, self.last_layer)
        names = (("W1", "b1", "Conv1"), ("W2", "b2", "Affine1"), ("W3", "b3", "Affine2"))
        grads = {}
        for w, b, layer in names:
            grads[w], grads[b] = self.layers[layer].dW, self.layers[layer].db
        return grads


class DeepConvNet:
    """Chapter 8: (Conv Relu Conv Relu Pool) x 3, Affine Relu Dropout Affine Dropout; a list.

    He initialisation, W1..W8 as the book numbers them; dropout masks from NumPy's global
    generator on every training forward pass; ``predict`` returns the logits.
    """

    def __init__(
        self,
        input_dim=(1, 28, 28),
        conv_param_1={"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},  # noqa: B006 - the book's signature
        conv_param_2={"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},  # noqa: B006
        conv_param_3={"filter_num": 32, "filter_size": 3, "pad": 1, "stride": 1},  # noqa: B006
        conv_param_4={"filter_num": 32, "filter_size": 3, "pad": 2, "stride": 1},  # noqa: B006
        conv_param_5={"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1},  # noqa: B006
        conv_param_6={"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1},  # noqa: B006
        hidden_size=50,
        output_size=10,
        dropout_ratio=0.5,
    ):
        convs = [conv_param_1, conv_param_2, conv_param_3, conv_param_4, conv_param_5, conv_param_6]
        channels, size = input_dim[0], input_dim[1]
        self.params, self.layers = {}, []
        for i, cp in enumerate(convs):
            fs, fn = cp["filter_size"], cp["filter_num"]
            scale = np.sqrt(2.0 / (channels * fs * fs))
            self.params[f"W{i + 1}"] = scale * np.random.randn(fn, channels, fs, fs)
            self.params[f"b{i + 1}"] = np.zeros(fn)
            self.layers.append(
                Convolution(
                    self.params[f"W{i + 1}"], self.params[f"b{i + 1}"], cp["stride"], cp["pad"]
                )
            )
            self.layers.append(Relu())
            size = (size + 2 * cp["pad"] - fs) // cp["stride"] + 1
            channels = fn
            if i % 2 == 1:
                self.layers.append(Pooling(pool_h=2, pool_w=2, stride=2))
                size //= 2
        flat = channels * size * size
        self.params["W7"] = np.sqrt(2.0 / flat) * np.random.randn(flat, hidden_size)
        self.params["b7"] = np.zeros(hidden_size)
        self.params["W8"] = np.sqrt(2.0 / hidden_size) * np.random.randn(hidden_size, output_size)
        self.params["b8"] = np.zeros(output_size)
        self.layers += [
            Affine(self.params["W7"], self.params["b7"]),
            Relu(),
            Dropout(dropout_ratio),
            Affine(self.params["W8"], self.params["b8"]),
            Dropout(dropout_ratio),
        ]
        self.last_layer = SoftmaxWithLoss()

    def predict(self, x, train_flg=False):
        for layer in self.layers:
            x = layer.forward(x, train_flg) if isinstance(layer, Dropout) else layer.forward(x)
        return x

    def loss(self, x, t):
        return self.last_layer.forward(self.predict(x, train_flg=True), t)

    def accuracy(self, x, t, batch_size=100):
        t = t.argmax(axis=1) if t.ndim != 1 else t
        hits = 0
        for i in range(0, len(x), batch_size):
            y = self.predict(x[i : i + batch_size])
            hits += int(np.sum(y.argmax(axis=1) == t[i : i + batch_size]))
        return hits / len(x)

    numerical_gradient = _not_needed

    def gradient(self, x, t):
        self.loss(x, t)
        dout = self.last_layer.backward(1)
        for layer in self.layers[::-1]:
            dout = layer.backward(dout)
        grads, k = {}, 0
        for layer in self.layers:
            if isinstance(layer, Convolution | Affine):
                k += 1
                grads[f"W{k}"], grads[f"b{k}"] = layer.dW, layer.db
        return grads


# ---------------------------------------------------------------- planted backprop bugs


class SoftmaxWithLossNoBatchDivision(SoftmaxWithLoss):
    """Bug: forgets to divide by the batch size, so every gradient is N times too large."""

    def backward(self, dout=1):
        return super().backward(dout) * self.t.shape[0]


class AffineTransposedGrad(Affine):
    """Bug: dW computed as (dout^T x), the transpose of the right gradient (square W only)."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.dW = dout.T @ self.x
        return dx


class AffineWrongBiasGrad(Affine):
    """Bug: db from the first sample only instead of the sum over the batch."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.db = dout[0].copy()
        return dx


class AffineBiasGradOff(Affine):
    """Bug: db 2% too large (a constant folded in twice, say)."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.db = 1.02 * self.db
        return dx


class ReluPassesAll(Relu):
    """Bug: the backward pass lets every gradient through, negative inputs included."""

    def backward(self, dout):
        return dout


class DropoutOwnGenerator(Dropout):
    """Bug for a gradient check: each forward draws a fresh mask from the layer's own
    generator, which the check cannot rewind, so the loss is not a function of the weights."""

    def __init__(self, dropout_ratio=0.5, seed=0):
        super().__init__(dropout_ratio)
        self.rng = np.random.default_rng(seed)

    def forward(self, x, train_flg=True):
        if train_flg:
            self.mask = self.rng.random(x.shape) > self.dropout_ratio
            return x * self.mask
        return x * (1.0 - self.dropout_ratio)
