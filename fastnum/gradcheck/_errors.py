"""Why a gradient check gives no verdict: the loss is not a function, or the reader's code broke."""

from __future__ import annotations

import numbers

import numpy as np


class GradcheckRefusedError(RuntimeError):
    """No verdict is possible: two evaluations of the loss at the same point disagree, or the
    loss or backprop moved the parameters.  The CLI exits with ``EXIT_REFUSED`` (3)."""


class UserCodeError(RuntimeError):
    """The network's own code raised, or a worker process running it died.

    The message is one line naming the call (``net.loss(x, t)``, ``net.gradient(x, t)``)
    and the original error; the CLI exits with 2 (bad input), not 1 (check failed).
    """


def describe_exception(exc):
    """``TypeName: message`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def as_loss_value(value, call="net.loss(x, t)"):
    """The float a loss returned; TypeError naming what came back when it is not one number."""
    if isinstance(value, np.ndarray) and value.size == 1 and value.ndim <= 1:
        value = value.reshape(())[()]
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, np.ndarray):
        what = f"an array of shape {value.shape}"
    else:
        what = f"{type(value).__name__} {value!r}"[:80]
    raise TypeError(
        f"{call} returned {what}; it must return the batch's loss as one float "
        "(for per-sample losses, return their mean)."
    )
