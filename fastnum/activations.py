"""The one table of hidden-layer activations, and the initial weight scales.

A new activation is a row of :data:`ACTIVATIONS`: its NumPy forward and backward, and
the code the kernels dispatch on (a name in :data:`fastnum.kernels._blocks.OP_NAMES` and
a branch in ``_blocks._act``; the kernels map, :mod:`fastnum.kernels`, lists the rest).
:class:`fastnum.multilayer.MultiLayerNet` and its reference compute with it, and the
choices of ``MultiLayerNet(activation=...)`` and ``fastnum train --activation`` are its
names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from fastnum import reference
from fastnum._validate import ParameterTypeError, check_positive
from fastnum.kernels._blocks import ACTIVATION_CODES


def relu(x):
    """max(0, x), elementwise."""
    return np.maximum(0, x)


class Activation(NamedTuple):
    """One hidden-layer activation, as the reference and the kernels compute it."""

    forward: Callable  # NumPy: pre-activation z -> a = f(z)
    backward: Callable  # NumPy: (upstream gradient g, output a) -> g * f'(z)
    kernel_code: int  # the code that fastnum.kernels._blocks._act computes


#: The one table of activations: name -> NumPy forward and backward, and kernel code.
#: The sigmoid's backward keeps the product order of the book's TwoLayerNet.gradient.
ACTIVATIONS = {
    "sigmoid": Activation(
        reference.sigmoid, lambda g, a: g * a * (1 - a), ACTIVATION_CODES["sigmoid"]
    ),
    "relu": Activation(relu, lambda g, a: g * (a > 0), ACTIVATION_CODES["relu"]),
}


#: Initial weight scales by name, as the book's multi-layer net takes them: the std of a
#: layer's weights is sqrt(gain / n_in), n_in the width of the layer before it.  He's gain 2
#: suits relu (which zeroes half of its inputs), Xavier's 1 suits sigmoid.
WEIGHT_INITS = {"relu": 2.0, "he": 2.0, "sigmoid": 1.0, "xavier": 1.0}


def check_weight_init_std(value):
    """Return a positive std as a float or a name of :data:`WEIGHT_INITS` (lower case), or raise."""
    if isinstance(value, str) and value.lower() in WEIGHT_INITS:
        return value.lower()
    if isinstance(value, str):
        raise ParameterTypeError(
            "weight_init_std",
            "{name}={value!r} must be a number such as 0.01 or one of: {names}.",
            value=value,
            names=", ".join(WEIGHT_INITS),
        )
    return check_positive("weight_init_std", value, "the book uses 0.01, or 'he' / 'xavier'.")


def layer_init_std(weight_init_std, n_in):
    """The std of one layer's initial weights: a number as is, a name scaled by ``n_in``."""
    if isinstance(weight_init_std, str):
        return math.sqrt(WEIGHT_INITS[weight_init_std.lower()] / n_in)
    return weight_init_std
