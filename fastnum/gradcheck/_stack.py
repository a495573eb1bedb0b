"""The fast path: recognise a stack of the book's layers and hand it to fastnum's kernels.

Layers are recognised by structure and behaviour only (``W``/``b`` of an
Affine, ``stride``/``pad`` of a Convolution, ``pool_h``/``pool_w`` of a
Pooling; a layer without parameters by what its ``forward`` does to a probe
array, so a subclass of ``Relu`` or a ``MyActivation`` is recognised too);
nothing of the reader's is imported, and whatever is recognised is only used
once the engine's loss equals the network's own.  Parameter names come from
the identity of each layer's arrays with the entries of ``net.params``.  The
result is the engine's stack spec (see :mod:`fastnum.engine`); :func:`engine_inputs`
checks and converts what the engine is then given.
"""

from __future__ import annotations

import copy
import numbers
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


#: Prefix of a reader's dropout layer's mask name: the rest is the layer's key.
DROPOUT_MASK = "mask of layer "

#: A probe for parameter-free layers: negative, zero and positive values, as a batch of 2.
_PROBE = np.array([[-2.5, -1e-3, 0.0, 1e-3, 0.75, 3.0], [4.0, -0.5, 0.25, -7.0, 0.0, 1.5]])

#: Parameter-free layer behaviours the engine computes, with their reference function.
_ACTIVATIONS = {
    "relu": lambda a: np.maximum(a, 0.0),
    "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a)),
}


def _activation_kind(layer):
    """``"relu"`` or ``"sigmoid"`` when the layer's forward behaves as one, else None."""
    forward = getattr(layer, "forward", None)
    if not callable(forward):
        return None
    try:
        out = copy.deepcopy(layer).forward(_PROBE.copy())  # the copy keeps its mask
    except Exception:  # noqa: BLE001 - any failure means "not a recognised activation"
        return None
    if not isinstance(out, np.ndarray) or out.shape != _PROBE.shape:
        return None
    for kind, reference in _ACTIVATIONS.items():
        if np.allclose(out, reference(_PROBE), rtol=1e-12, atol=1e-15):
            return kind
    return None


def _layer_spec(key, layer, params):
    """One layer's spec, or raise EngineUnsupportedError naming the layer."""
    gamma, beta = getattr(layer, "gamma", None), getattr(layer, "beta", None)
    if (
        isinstance(gamma, np.ndarray)
        and isinstance(beta, np.ndarray)
        and hasattr(layer, "momentum")
    ):
        gamma_name = _param_name(params, gamma, key, "gamma")
        return ("batchnorm", gamma_name, _param_name(params, beta, key, "beta"))
    if hasattr(layer, "dropout_ratio"):
        return ("dropout", f"{DROPOUT_MASK}{key}")  # its mask: what the reader's forward drew
    W, b = getattr(layer, "W", None), getattr(layer, "b", None)
    if isinstance(W, np.ndarray) and isinstance(b, np.ndarray):
        names = (_param_name(params, W, key, "W"), _param_name(params, b, key, "b"))
        if W.ndim == 4 and b.ndim == 1 and hasattr(layer, "stride") and hasattr(layer, "pad"):
            return ("conv", *names, int(layer.stride), int(layer.pad))
        if W.ndim == 2 and b.ndim == 1 and not hasattr(layer, "stride"):
            return ("affine", *names)
    if all(hasattr(layer, a) for a in ("pool_h", "pool_w", "stride", "pad")):
        return ("pool", int(layer.pool_h), int(layer.pool_w), int(layer.stride), int(layer.pad))
    state = getattr(layer, "__dict__", {}).values()
    holds_params = any(isinstance(v, np.ndarray) and _is_param(v, params) for v in state)
    kind = None if holds_params else _activation_kind(layer)
    if kind is not None:
        return (kind,)
    raise EngineUnsupportedError(
        f"layer {key!r} ({type(layer).__name__}) is not one of the book's "
        "Affine, Relu, Sigmoid, Convolution, Pooling"
    )


def _is_param(array, params):
    return any(array is value for value in params.values())


def layer_list(net):
    """``(key, layer)`` pairs of ``net.layers`` (an ordered dict or a list), else []."""
    layers = getattr(net, "layers", None)
    if isinstance(layers, Mapping):
        return list(layers.items())
    if isinstance(layers, (list, tuple)):
        return [(str(i), layer) for i, layer in enumerate(layers)]
    return []


def fastnum_stack(net):
    """The stack of fastnum's own networks, or None."""
    from fastnum import reference
    from fastnum.multilayer import ReferenceMultiLayerNet

    if isinstance(getattr(net, "stack", None), tuple):  # fastnum's SimpleConvNet, MultiLayerNet
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
    layers = layer_list(net)
    if not layers:
        raise EngineUnsupportedError("the network keeps no layers in net.layers (a dict or list)")
    last = last_layer_name(net)
    if last is None or "softmax" not in type(getattr(net, last)).__name__.lower():
        raise EngineUnsupportedError("the network has no softmax-with-loss lastLayer / last_layer")
    params = net.params
    stack = tuple(_layer_spec(key, layer, params) for key, layer in layers)
    used = [name for spec in stack if spec[0] in PARAMETRISED for name in spec[1:3]]
    if sorted(used) != sorted(params):
        extra = sorted(set(params) - set(used))
        raise EngineUnsupportedError(
            f"net.params has entries {extra} that no recognised layer uses"
        )
    # Dropout may follow the last Affine (the book's chapter 8 net drops logits too).
    kinds = [spec[0] for spec in stack if spec[0] != "dropout"]
    if not kinds or kinds[-1] != "affine":
        raise EngineUnsupportedError("the layer before the softmax-with-loss is not an Affine")
    return stack


#: Layer kinds whose spec names two parameters (weights or gamma, then biases or beta).
PARAMETRISED = ("affine", "conv", "batchnorm")


def engine_extras(stack, evaluated, batch):
    """The dropout masks and the weight decay the engine needs besides the parameters.

    ``evaluated`` is a copy of the network whose loss was just evaluated at theta with the
    random state every evaluation starts from, so its dropout layers hold the masks that
    every evaluation draws (fastnum's own networks keep them in ``dropout_masks``).
    """
    masks, own = {}, getattr(evaluated, "dropout_masks", None)
    layers = dict(layer_list(evaluated))
    for spec in (spec for spec in stack if spec[0] == "dropout"):
        name = spec[1]
        if isinstance(own, Mapping) and name in own:
            mask = own[name]
        else:
            mask = getattr(layers.get(name.removeprefix(DROPOUT_MASK)), "mask", None)
        if not isinstance(mask, np.ndarray) or mask.size % batch:
            raise EngineUnsupportedError(f"the dropout layer's {name} is not an array of the batch")
        masks[name] = np.ascontiguousarray(mask.reshape(batch, -1), dtype=np.float64)
    lam = getattr(evaluated, "weight_decay_lambda", 0) or 0
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not lam >= 0:
        raise EngineUnsupportedError(f"weight_decay_lambda={lam!r} is not a number >= 0")
    return masks, float(lam)


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
