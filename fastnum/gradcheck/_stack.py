"""The fast path: recognise a stack of the book's layers and hand it to fastnum's kernels.

Layers are recognised by structure and attributes only (``W``/``b`` of an
Affine, ``stride``/``pad`` of a Convolution, ``pool_h``/``pool_w`` of a
Pooling, the class names ``Relu`` and ``Sigmoid``); nothing of the reader's is
imported.  Parameter names come from the identity of each layer's arrays with
the entries of ``net.params``.  The result is the engine's stack spec (see
:mod:`fastnum.engine`); :func:`engine_inputs` checks and converts what the engine
is then given.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fastnum._validate import as_labels, check_finite
from fastnum.constants import LOG_GUARD as BOOK_LOG_GUARD
from fastnum.gradcheck._generic import last_layer_name


class EngineUnsupportedError(Exception):
    """The recognised stack is beyond what the kernels can compute (the message says why)."""


def _param_name(params, array, layer_key, attr):
    for name, value in params.items():
        if value is array:
            return name
    raise EngineUnsupportedError(
        f"layers[{layer_key!r}].{attr} is not one of the arrays in "
        "net.params (a copy?), so its gradient could not be named"
    )


def _layer_spec(key, layer, params):
    """One layer's spec, or raise EngineUnsupportedError naming the layer."""
    kind = type(layer).__name__.lower()
    W, b = getattr(layer, "W", None), getattr(layer, "b", None)
    if isinstance(W, np.ndarray) and isinstance(b, np.ndarray):
        names = (_param_name(params, W, key, "W"), _param_name(params, b, key, "b"))
        if W.ndim == 4 and b.ndim == 1 and hasattr(layer, "stride") and hasattr(layer, "pad"):
            return ("conv", *names, int(layer.stride), int(layer.pad))
        if W.ndim == 2 and b.ndim == 1 and not hasattr(layer, "stride"):
            return ("affine", *names)
    if all(hasattr(layer, a) for a in ("pool_h", "pool_w", "stride", "pad")):
        return ("pool", int(layer.pool_h), int(layer.pool_w), int(layer.stride), int(layer.pad))
    if kind in ("relu", "sigmoid"):
        return (kind,)
    raise EngineUnsupportedError(
        f"layer {key!r} ({type(layer).__name__}) is not one of the book's "
        "Affine, Relu, Sigmoid, Convolution, Pooling"
    )


def fastnum_stack(net):
    """The stack of fastnum's own networks, or None."""
    from fastnum import reference
    from fastnum.multilayer import ReferenceMultiLayerNet

    if isinstance(getattr(net, "stack", None), tuple):  # fastnum's SimpleConvNet, MultiLayerNet
        # Dropout masks and weight decay are engine inputs this check does not pass yet:
        # such a network takes the generic path (its own loss).
        if any(spec[0] == "dropout" for spec in net.stack) or getattr(
            net, "weight_decay_lambda", 0
        ):
            return None
        return net.stack
    if isinstance(net, reference.TwoLayerNet):
        return (("affine", "W1", "b1"), ("sigmoid",), ("affine", "W2", "b2"))
    if isinstance(net, ReferenceMultiLayerNet):
        layers = []
        for k in range(1, net.n_layers + 1):
            layers += [("affine", f"W{k}", f"b{k}"), (net.activation,)]
        return tuple(layers[:-1])
    return None


def recognise(net):
    """The engine stack spec of ``net``; raise EngineUnsupportedError saying why there is none."""
    stack = fastnum_stack(net)
    if stack is not None:
        return stack
    layers = getattr(net, "layers", None)
    if not isinstance(layers, Mapping):
        raise EngineUnsupportedError("the network keeps no ordered dict of layers in net.layers")
    last = last_layer_name(net)
    if last is None or "softmax" not in type(getattr(net, last)).__name__.lower():
        raise EngineUnsupportedError("the network has no softmax-with-loss lastLayer / last_layer")
    params = net.params
    stack = tuple(_layer_spec(key, layer, params) for key, layer in layers.items())
    used = [name for spec in stack if spec[0] in ("affine", "conv") for name in spec[1:3]]
    if sorted(used) != sorted(params):
        extra = sorted(set(params) - set(used))
        raise EngineUnsupportedError(
            f"net.params has entries {extra} that no recognised layer uses"
        )
    if not stack or stack[-1][0] != "affine":
        raise EngineUnsupportedError("the layer before the softmax-with-loss is not an Affine")
    return stack


def engine_inputs(stack, params, x, t, log_guard):
    """The engine's trusted arguments, checked once: float64 C-contiguous parameters and
    images or rows, int64 labels in range, and the guard (0.0 when ``log_guard`` is off)."""
    params = {name: np.ascontiguousarray(value, dtype=np.float64) for name, value in params.items()}
    x = np.asarray(x, dtype=np.float64)
    if stack[0][0] != "conv":  # the book's Affine flattens (N, ...) itself
        x = x.reshape(len(x), -1)
    elif x.ndim != 4:
        raise EngineUnsupportedError(
            f"a convolution needs images (N, C, H, W); x has shape {x.shape}"
        )
    x = np.ascontiguousarray(x)
    check_finite(x, "x", "clean the data before the gradient check.")
    last = [spec for spec in stack if spec[0] == "affine"][-1]
    t = as_labels(t, len(x), params[last[1]].shape[1])
    return params, x, t, BOOK_LOG_GUARD if log_guard else 0.0
