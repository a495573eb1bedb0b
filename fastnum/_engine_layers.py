"""The engine's layer table and its forward pass, loss and ``full`` strategy.

:data:`LAYER_KINDS` is the one table of layer types (:mod:`fastnum.engine` describes
the stack format): each row says how a layer changes the shape of one sample, how it
runs on a batch of flat rows (a batch kernel of :mod:`fastnum.kernels.layered` or
:mod:`fastnum.kernels.normalization`) and where its parameter names sit in the spec.
Everything here is trusted (the networks validate).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from fastnum.constants import BN_EPSILON
from fastnum.kernels import layered, normalization
from fastnum.kernels import losses as kernel_losses
from fastnum.kernels._blocks import ACTIVATION_CODES, _ordered_sum
from fastnum.layers import conv_output_size


def _conv_shape(spec, params, shape):
    FN, C, FH, FW = params[spec[1]].shape
    _, H, W = shape
    return (
        FN,
        conv_output_size(H, FH, spec[3], spec[4]),
        conv_output_size(W, FW, spec[3], spec[4]),
    )


def _conv_forward(spec, params, a, shape):
    C, H, W = shape
    out_shape = _conv_shape(spec, params, shape)
    out = np.empty((a.shape[0], int(np.prod(out_shape))))
    filters_last = np.ascontiguousarray(params[spec[1]].transpose(1, 2, 3, 0))
    layered._conv_batch(
        a, C, H, W, filters_last, params[spec[2]], spec[3], spec[4], out_shape[1], out_shape[2], out
    )
    return out


def _pool_shape(spec, params, shape):
    C, H, W = shape
    _, ph, pw, stride, pad = spec
    return (C, conv_output_size(H, ph, stride, pad), conv_output_size(W, pw, stride, pad))


def _pool_forward(spec, params, a, shape):
    C, H, W = shape
    out_shape = _pool_shape(spec, params, shape)
    out = np.empty((a.shape[0], int(np.prod(out_shape))))
    layered._pool_batch(
        a, C, H, W, spec[1], spec[2], spec[3], spec[4], out_shape[1], out_shape[2], out
    )
    return out


def _act_forward(spec, params, a, shape):
    out = np.empty_like(a)
    layered._act_batch(a, ACTIVATION_CODES[spec[0]], out)
    return out


def _affine_shape(spec, params, shape):
    return (params[spec[1]].shape[1],)


def _affine_forward(spec, params, a, shape):
    W = params[spec[1]]
    out = np.empty((a.shape[0], W.shape[1]))
    layered._affine_batch(a, W, params[spec[2]], out)
    return out


def _batchnorm_forward(spec, params, a, shape):
    out = np.empty_like(a)
    gamma, beta = params[spec[1]].reshape(-1), params[spec[2]].reshape(-1)
    normalization._batchnorm_batch(a, gamma, beta, BN_EPSILON, np.empty_like(a), out)
    return out


def _dropout_forward(spec, inputs, a, shape):
    # ``inputs`` holds the masks next to the parameters (see _logits).
    out = np.empty_like(a)
    normalization._mask_batch(a, inputs[spec[1]].reshape(a.shape), out)
    return out


def _same_shape(spec, params, shape):
    return shape


class LayerKind(NamedTuple):
    """How the engine runs one layer type: output shape and batch forward on flat rows."""

    out_shape: Callable  # (spec, params, in_shape) -> out_shape
    forward: Callable  # (spec, params, a (N, prod(in_shape)), in_shape) -> (N, prod(out_shape))
    param_slots: tuple  # positions of parameter names in the spec


#: One table of layer types (the extension axis for layers).
LAYER_KINDS = {
    "conv": LayerKind(_conv_shape, _conv_forward, (1, 2)),
    "pool": LayerKind(_pool_shape, _pool_forward, ()),
    "relu": LayerKind(lambda spec, params, shape: shape, _act_forward, ()),
    "sigmoid": LayerKind(lambda spec, params, shape: shape, _act_forward, ()),
    "affine": LayerKind(_affine_shape, _affine_forward, (1, 2)),
    "batchnorm": LayerKind(_same_shape, _batchnorm_forward, (1, 2)),
    "dropout": LayerKind(_same_shape, _dropout_forward, ()),
}


def param_names(stack):
    """Names of the stack's parameters, in layer order."""
    names = []
    for spec in stack:
        if spec[0] not in LAYER_KINDS:
            raise ValueError(
                f"layer kind {spec[0]!r} is unknown; use one of {', '.join(LAYER_KINDS)}."
            )
        names.extend(spec[k] for k in LAYER_KINDS[spec[0]].param_slots)
    return names


# ---------------------------------------------------------------------------- forward and loss


# Forward passes run this many samples at a time: the conv block's intermediate maps
# of a large batch (276 MB for 2,000 MNIST digits in SimpleConvNet) would otherwise
# be allocated and faulted in whole.  Each sample's result does not depend on it.
_FORWARD_CHUNK = 256


def _mask_names(stack):
    return [spec[1] for spec in stack if spec[0] == "dropout"]


def _logits(stack, params, x, masks=None):
    names = _mask_names(stack)
    missing = [nm for nm in names if nm not in (masks or {})]
    if missing:
        raise ValueError(
            f"the stack's dropout layers need masks {missing}; pass masks={{name: 0/1 array}}."
        )
    # Batch normalisation couples the samples: such a batch is never split.
    if x.shape[0] > _FORWARD_CHUNK and not any(spec[0] == "batchnorm" for spec in stack):
        return np.concatenate(
            [
                _logits(
                    stack,
                    params,
                    x[k : k + _FORWARD_CHUNK],
                    {nm: masks[nm].reshape(x.shape[0], -1)[k : k + _FORWARD_CHUNK] for nm in names},
                )
                for k in range(0, x.shape[0], _FORWARD_CHUNK)
            ]
        )
    if names:  # the dropout rows read their masks beside the parameters
        params = {**params, **{nm: masks[nm] for nm in names}}
    shape = x.shape[1:]
    a = x.reshape(x.shape[0], -1)
    for spec in stack:
        kind = LAYER_KINDS[spec[0]]
        a_new = kind.forward(spec, params, a, shape)
        shape = kind.out_shape(spec, params, shape)
        a = a_new
    return a


def _mean_loss(stack, params, x, t, log_guard, masks=None):
    z = _logits(stack, params, x, masks)
    losses = np.empty(z.shape[0])
    kernel_losses._softmax_cross_entropy_rows(z, t, float(log_guard), losses)
    return _ordered_sum(losses) / z.shape[0]


def _decay_names(stack):
    """The weights the book's weight decay covers: conv and affine W, in stack order."""
    return [spec[1] for spec in stack if spec[0] in ("conv", "affine")]


def _weight_decay_term(stack, params, weight_decay):
    """The book's ``0.5 * lambda * sum(W**2)``, summed layer by layer (0.0 for lambda 0)."""
    term = 0.0
    if weight_decay:
        for name in _decay_names(stack):
            term += 0.5 * weight_decay * float(np.sum(params[name] ** 2))
    return term


def _decay_differences(w, h, weight_decay, one_sided=False):
    """R(w + h) - R(w - h) of the term of each weight (R(w + h) - R(w) when ``one_sided``):
    the real values, then the difference."""
    w_plus, w_other = w + h, (w if one_sided else w - h)
    return 0.5 * weight_decay * (w_plus * w_plus) - 0.5 * weight_decay * (w_other * w_other)


def _add_decay(grads, stack, params, h, weight_decay, indices=None, one_sided=False):
    """Add the weight-decay term's difference quotient to the gradients of the weights
    (forward differences when ``one_sided``)."""
    if not weight_decay:
        return grads
    step = h if one_sided else 2.0 * h
    for name in _decay_names(stack):
        if name not in grads:
            continue
        w = params[name].reshape(-1) if indices is None else params[name].reshape(-1)[indices[name]]
        diff = _decay_differences(w, h, weight_decay, one_sided) / step
        grads[name] = grads[name] + diff.reshape(grads[name].shape)
    return grads


# ---------------------------------------------------------------------------- full strategy


def _full_at(stack, params, x, t, h, log_guard, indices, masks=None):
    """Central differences, one whole forward pass per evaluation, on a private copy."""
    private = {k: np.array(v, dtype=np.float64, order="C") for k, v in params.items()}
    grads = {}
    for name, idx in indices.items():
        flat = private[name].reshape(-1)
        g = np.empty(len(idx))
        for q, i in enumerate(idx):
            saved = flat[i]
            flat[i] = saved + h
            f_plus = _mean_loss(stack, private, x, t, log_guard, masks)
            flat[i] = saved - h
            f_minus = _mean_loss(stack, private, x, t, log_guard, masks)
            flat[i] = saved
            g[q] = (f_plus - f_minus) / (2.0 * h)
        grads[name] = g
    return grads
