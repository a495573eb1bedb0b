"""Gradient check: the numerical gradient against backpropagation, per parameter.

The relative error of a parameter is normwise,
``max|num - bp| / max(max|num|, max|bp|)``, rather than elementwise
``|num - bp| / (|num| + |bp|)``: entries whose true gradient is ~0 carry only
rounding noise, and elementwise they would report relative errors near 1 for a
perfectly correct gradient.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from fastnum.reference import LOG_GUARD

__all__ = ["DEFAULT_TOL", "GradcheckResult", "gradcheck"]

#: Default tolerance on the relative error: well above the ~1e-6 that the log guard causes.
DEFAULT_TOL = 1e-5

_EXPLANATION = (
    "Relative error = max|num - backprop| / max(max|num|, max|backprop|) per parameter.\n"
    f"The book's loss is -log(y + {LOG_GUARD:g}): that guard moves the numerical gradient by\n"
    f"about {LOG_GUARD:g} / y relative (~1e-6 for y ~ 0.1) while backprop ignores it, so the\n"
    f"default tolerance is {DEFAULT_TOL:g} relative, not machine precision."
)


@dataclasses.dataclass(frozen=True)
class GradcheckResult:
    """Per-parameter errors of a gradient check.

    Attributes
    ----------
    abs_err : dict of str to float
        ``max|num - bp|`` for each parameter.
    rel_err : dict of str to float
        ``max|num - bp| / max(max|num|, max|bp|)`` for each parameter.
    shapes : dict of str to tuple
    tol : float
        Tolerance on the relative error.
    h : float
        Central-difference step used.
    guard_effect : float
        ``1e-7 / min p(true class)`` over the batch: the expected relative
        shift that the log guard causes.
    """

    abs_err: dict
    rel_err: dict
    shapes: dict
    tol: float
    h: float
    guard_effect: float

    @property
    def max_rel_err(self):
        """The worst relative error over all parameters."""
        return max(self.rel_err.values())

    @property
    def passed(self):
        """True when every relative error is within ``tol``."""
        return self.max_rel_err <= self.tol

    def report(self):
        """Describe the check for people.

        Returns
        -------
        str
            A table of max absolute and relative error per parameter, the
            verdict against ``tol``, and why the tolerance is not tighter.
        """
        lines = [f"gradient check: numerical (central differences, h={self.h:g}) vs backprop",
                 f"{'param':<6} {'shape':<14} {'max abs err':>12} {'max rel err':>12}"]
        for name, err in self.abs_err.items():
            shape = "x".join(map(str, self.shapes[name]))
            lines.append(f"{name:<6} {shape:<14} {err:12.3e} {self.rel_err[name]:12.3e}")
        verdict = "PASS" if self.passed else "FAIL"
        sign = "<=" if self.passed else ">"
        lines.append(f"{verdict}: worst relative error {self.max_rel_err:.3e} {sign} "
                     f"tol {self.tol:g}")
        lines.append(_EXPLANATION)
        lines.append(f"In this batch the smallest true-class probability gives an expected "
                     f"guard effect of {self.guard_effect:.1e}.")
        return "\n".join(lines)


def _rel_err(num, bp):
    diff = float(np.max(np.abs(num - bp)))
    scale = max(float(np.max(np.abs(num))), float(np.max(np.abs(bp))))
    if scale == 0:
        return diff, 0.0 if diff == 0 else math.inf
    return diff, diff / scale


def _guard_effect(net, x, t):
    y = net.predict(x)
    t = np.asarray(t)
    t = t.argmax(axis=1) if t.ndim == 2 else t.astype(np.int64).ravel()
    return LOG_GUARD / float(np.min(y[np.arange(len(t)), t]))


def gradcheck(net, x, t, h=1e-4, tol=DEFAULT_TOL):
    """Compare ``net.numerical_gradient`` with ``net.gradient`` (backprop).

    Parameters
    ----------
    net : fastnum.network.TwoLayerNet
        Any object with ``params``, ``predict``, ``numerical_gradient(x, t, h)``
        and ``gradient(x, t)``.
    x : array (batch, input_size)
    t : array (batch,) of int labels, or (batch, output_size) one-hot
    h : float, default 1e-4
        Central-difference step.
    tol : float, default 1e-5
        Pass threshold on the worst relative error.

    Returns
    -------
    GradcheckResult
        Per-parameter errors; ``.passed`` and ``.report()`` give the verdict.

    Examples
    --------
    >>> from fastnum.network import TwoLayerNet
    >>> net = TwoLayerNet(7, 3, 4, weight_init_std=1, seed=0, backend="numpy")
    >>> x = np.random.default_rng(1).random((5, 7))
    >>> gradcheck(net, x, np.array([0, 1, 2, 3, 0])).passed
    True
    """
    if not (isinstance(tol, int | float) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol={tol!r} must be a finite number > 0 (default {DEFAULT_TOL:g}).")
    num = net.numerical_gradient(x, t, h=h)
    bp = net.gradient(x, t)
    abs_err, rel_err = {}, {}
    for name in net.params:
        abs_err[name], rel_err[name] = _rel_err(num[name], bp[name])
    shapes = {name: tuple(np.shape(net.params[name])) for name in net.params}
    return GradcheckResult(abs_err, rel_err, shapes, float(tol), float(h),
                           _guard_effect(net, x, t))
