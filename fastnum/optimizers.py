"""The optimizers of the book's chapter 6: SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam.

Each takes its hyperparameters (the book's defaults) when it is made, and then one call of
``update(params, grads)`` per step changes the arrays of ``params`` in place, so a network,
or the layers of a network, holding those arrays sees the new values::

    optimizer = Adam()
    for i in range(iters):
        grads = net.gradient(x_batch, t_batch)
        optimizer.update(net.params, grads)

The update rules are the book's, in the book's order of floating-point operations, with
its small constant ``EPS = 1e-7`` where the book puts it: added to the square root of the
accumulated squares (AdaGrad, RMSprop, Adam).  Adam is the book's variant: running
averages ``m += (1 - beta1) * (g - m)`` and ``v += (1 - beta2) * (g**2 - v)``, with the
bias correction folded into the step size ``lr * sqrt(1 - beta2**t) / (1 - beta1**t)``.
Nesterov is the book's rewritten form, which needs no look-ahead gradient.

The state (velocities, accumulated squares, Adam's step count) is plain arrays and
numbers (:meth:`Optimizer.state_dict`), so a training checkpoint can carry it and a
resumed run continues bit for bit.  :data:`OPTIMIZERS` (name -> class) is the one table
of optimizers; a new one is a subclass with its ``SLOTS`` and ``_step`` and an entry there.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping

import numpy as np

from fastnum._validate import ParameterError, ParameterTypeError

__all__ = [
    "EPS",
    "OPTIMIZERS",
    "SGD",
    "AdaGrad",
    "Adam",
    "Momentum",
    "Nesterov",
    "Optimizer",
    "RMSprop",
    "make_optimizer",
]

#: The book's guard against division by zero, added to the square root.
EPS = 1e-7

# Hyperparameter -> (check, what it must be).  Rates in [0, 1): 1 would never forget
# (momentum) or never learn (a running average that never moves).
_POSITIVE, _UNIT = "a finite number > 0", "a number in [0, 1)"
_RULES = {
    "lr": _POSITIVE,
    "momentum": _UNIT,
    "decay_rate": _UNIT,
    "beta1": _UNIT,
    "beta2": _UNIT,
}


def _check_hyperparameter(name, value, default):
    """Return ``value`` as a float, or raise an error naming it and the book's value."""
    rule = _RULES[name]
    message = "{name}={value!r} must be {rule}; the book uses {name}={default}."
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterTypeError(name, message, value=value, rule=rule, default=default)
    value = float(value)
    ok = value > 0 if rule == _POSITIVE else 0 <= value < 1
    if not (math.isfinite(value) and ok):
        raise ParameterError(name, message, value=value, rule=rule, default=default)
    return value


class Optimizer:
    """Base class: hyperparameter checks, per-parameter state, checks of ``update``'s input.

    A subclass names its state arrays in ``SLOTS`` (one array per slot and parameter,
    zeros at the first update, as the book creates them) and implements ``_step``.
    """

    #: Name in :data:`OPTIMIZERS`.
    name = ""
    #: Per-parameter state arrays, e.g. ("v",) for Momentum.
    SLOTS: tuple[str, ...] = ()

    def __init__(self, **hyperparameters):
        defaults = self.defaults()
        for key, value in hyperparameters.items():
            setattr(self, key, _check_hyperparameter(key, value, defaults[key]))
        self.iterations = 0  # updates done; Adam's t
        self.state = {slot: {} for slot in self.SLOTS}

    @classmethod
    def defaults(cls):
        """The book's hyperparameters of this optimizer.

        Returns
        -------
        dict
            Hyperparameter name -> default, in the constructor's order.
        """
        signature = inspect.signature(cls.__init__)
        return {k: p.default for k, p in signature.parameters.items() if k != "self"}

    @property
    def hyperparameters(self):
        """The current hyperparameters as a dict (name -> float)."""
        return {k: getattr(self, k) for k in self.defaults()}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"{type(self).__name__}({args})"

    def update(self, params, grads):
        """Apply one step to ``params`` in place.

        Parameters
        ----------
        params : dict of str -> numpy.ndarray
            The parameters, floating-point arrays; each is changed in place (the dict
            keeps the same array objects).
        grads : dict of str -> array_like
            The gradient of the loss for each key of ``params``, of the same shape.

        Raises
        ------
        TypeError, ValueError
            ``params`` or ``grads`` are not matching dicts of floating-point arrays, or
            do not match the parameters this optimizer holds state for.
        """
        grads = self._checked(params, grads)
        if self.SLOTS and not self.state[self.SLOTS[0]]:
            for slot in self.SLOTS:
                self.state[slot] = {k: np.zeros_like(p) for k, p in params.items()}
        self.iterations += 1
        self._begin_step()
        for key, param in params.items():
            self._step(param, grads[key], *(self.state[slot][key] for slot in self.SLOTS))

    def _begin_step(self):
        """Work shared by every parameter of one step (Adam's step size)."""

    def _step(self, param, grad, *slots):
        """Update one parameter array (and its state arrays) in place."""
        raise NotImplementedError

    def _checked(self, params, grads):
        """Check ``update``'s arguments; return the gradients as arrays."""
        for what, d in (("params", params), ("grads", grads)):
            if not isinstance(d, Mapping):
                raise TypeError(
                    f"{what} must be a dict of arrays such as net.params, got {type(d).__name__}."
                )
        if set(params) != set(grads):
            missing, extra = sorted(set(params) - set(grads)), sorted(set(grads) - set(params))
            raise ValueError(
                f"grads must have the keys of params: missing {missing}, extra {extra}; "
                "pass the dict the network's gradient method returns."
            )
        out = {}
        for key, p in params.items():
            if not (isinstance(p, np.ndarray) and p.dtype.kind == "f"):
                got = f"{type(p).__name__} of dtype {getattr(p, 'dtype', None)}"
                raise TypeError(
                    f"params[{key!r}] must be a floating-point NumPy array updated in place "
                    f"(got {got}); convert it once with np.asarray(..., dtype=float) first."
                )
            if not p.flags.writeable:
                raise ValueError(f"params[{key!r}] is read-only; the update writes into it.")
            g = np.asarray(grads[key])
            if g.shape != p.shape:
                raise ValueError(
                    f"grads[{key!r}] has shape {g.shape} but params[{key!r}] has {p.shape}."
                )
            out[key] = g
        held = self.state[self.SLOTS[0]] if self.SLOTS else {}
        if held and (
            set(held) != set(params) or any(held[k].shape != params[k].shape for k in held)
        ):
            theirs = {k: p.shape for k, p in params.items()}
            mine = {k: a.shape for k, a in held.items()}
            raise ValueError(
                f"this {type(self).__name__} holds state for parameters {mine}, but params "
                f"are {theirs}; use a new optimizer for another network."
            )
        return out

    def state_dict(self):
        """The optimizer's state as plain numbers and arrays (copies).

        Returns
        -------
        dict
            ``name`` (str), ``hyperparameters`` (name -> float), ``iterations`` (int,
            updates done) and ``state`` (slot -> parameter name -> array; empty dicts
            before the first update).
        """
        return {
            "name": self.name,
            "hyperparameters": self.hyperparameters,
            "iterations": self.iterations,
            "state": {
                slot: {k: a.copy() for k, a in arrays.items()}
                for slot, arrays in self.state.items()
            },
        }

    def load_state_dict(self, state):
        """Continue from a state that :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict
            As :meth:`state_dict` returns it, from an optimizer of the same class and
            hyperparameters.  The arrays are copied.

        Raises
        ------
        ValueError, TypeError
            The state is of another optimizer or other hyperparameters, or malformed;
            the message lists the differences.
        """
        if not isinstance(state, Mapping) or set(state) != {
            "name",
            "hyperparameters",
            "iterations",
            "state",
        }:
            raise TypeError(
                "state must be the dict an optimizer's state_dict() returns (name, "
                "hyperparameters, iterations, state)."
            )
        if state["name"] != self.name:
            raise ValueError(
                f"the state is of optimizer {state['name']!r}, not {self.name!r}; load it "
                f"into a {state['name']!r} optimizer."
            )
        mine, theirs = self.hyperparameters, dict(state["hyperparameters"])
        diffs = [
            f"{k}={theirs.get(k)!r} there, {v!r} here"
            for k, v in mine.items()
            if theirs.get(k) != v
        ]
        if diffs or set(theirs) != set(mine):
            raise ValueError(
                f"the state was saved with other hyperparameters ({'; '.join(diffs) or theirs}); "
                f"make the optimizer with {theirs} to continue it."
            )
        iterations = state["iterations"]
        if (
            isinstance(iterations, bool)
            or not isinstance(iterations, numbers.Integral)
            or iterations < 0
        ):
            raise ValueError(f"iterations={iterations!r} in the state must be a count >= 0.")
        slots = state["state"]
        if not isinstance(slots, Mapping) or set(slots) != set(self.SLOTS):
            held = sorted(slots) if isinstance(slots, Mapping) else slots
            raise ValueError(
                f"the state's arrays are for slots {held!r}; a {type(self).__name__} has "
                f"{list(self.SLOTS)}."
            )
        loaded = {}
        for slot in self.SLOTS:
            loaded[slot] = {k: np.array(a, copy=True) for k, a in slots[slot].items()}
            for k, a in loaded[slot].items():
                if a.dtype.kind != "f" or not np.isfinite(a).all():
                    raise ValueError(f"state {slot!r} of {k!r} must be finite floating-point.")
        shapes = [{k: a.shape for k, a in arrays.items()} for arrays in loaded.values()]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("the state's slots hold arrays for different parameters.")
        if bool(shapes and shapes[0]) != bool(iterations and self.SLOTS):
            raise ValueError(
                f"the state says {iterations} updates but holds "
                f"{'no' if not (shapes and shapes[0]) else 'some'} arrays."
            )
        self.iterations, self.state = int(iterations), loaded


class SGD(Optimizer):
    """Stochastic gradient descent: ``W -= lr * g``.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, finite and > 0.
    """

    name = "sgd"

    def __init__(self, lr=0.01):
        super().__init__(lr=lr)

    def _step(self, param, grad):
        param -= self.lr * grad


class Momentum(Optimizer):
    """Momentum: ``v = momentum * v - lr * g``, then ``W += v``.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, finite and > 0.
    momentum : float, default 0.9
        Fraction of the velocity kept per step, in [0, 1).
    """

    name = "momentum"
    SLOTS = ("v",)

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr=lr, momentum=momentum)

    def _step(self, param, grad, v):
        v *= self.momentum
        v -= self.lr * grad
        param += v


class Nesterov(Optimizer):
    """Nesterov's accelerated gradient, in the book's form without a look-ahead gradient.

    ``v = momentum * v - lr * g``, then ``W += momentum**2 * v - (1 + momentum) * lr * g``.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, finite and > 0.
    momentum : float, default 0.9
        Fraction of the velocity kept per step, in [0, 1).
    """

    name = "nesterov"
    SLOTS = ("v",)

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr=lr, momentum=momentum)

    def _step(self, param, grad, v):
        m = self.momentum
        v *= m
        v -= self.lr * grad
        param += m * m * v
        param -= (1 + m) * self.lr * grad


class AdaGrad(Optimizer):
    """AdaGrad: ``h += g * g``, then ``W -= lr * g / (sqrt(h) + 1e-7)``.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, finite and > 0.
    """

    name = "adagrad"
    SLOTS = ("h",)

    def __init__(self, lr=0.01):
        super().__init__(lr=lr)

    def _step(self, param, grad, h):
        h += grad * grad
        param -= self.lr * grad / (np.sqrt(h) + EPS)


class RMSprop(Optimizer):
    """RMSprop: ``h = decay_rate * h + (1 - decay_rate) * g * g``, then AdaGrad's step.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, finite and > 0.
    decay_rate : float, default 0.99
        Fraction of the accumulated squares kept per step, in [0, 1).
    """

    name = "rmsprop"
    SLOTS = ("h",)

    def __init__(self, lr=0.01, decay_rate=0.99):
        super().__init__(lr=lr, decay_rate=decay_rate)

    def _step(self, param, grad, h):
        h *= self.decay_rate
        h += (1 - self.decay_rate) * grad * grad
        param -= self.lr * grad / (np.sqrt(h) + EPS)


class Adam(Optimizer):
    """Adam as the book writes it: bias correction folded into the step size.

    At step ``t``: ``m += (1 - beta1) * (g - m)``, ``v += (1 - beta2) * (g**2 - v)``,
    ``W -= lr_t * m / (sqrt(v) + 1e-7)`` with
    ``lr_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)``.

    Parameters
    ----------
    lr : float, default 0.001
        Learning rate, finite and > 0.
    beta1, beta2 : float, default 0.9, 0.999
        Decay of the running averages of the gradient and of its square, in [0, 1).
    """

    name = "adam"
    SLOTS = ("m", "v")

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        super().__init__(lr=lr, beta1=beta1, beta2=beta2)

    def _begin_step(self):
        t = self.iterations
        self._lr_t = self.lr * math.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)

    def _step(self, param, grad, m, v):
        m += (1 - self.beta1) * (grad - m)
        v += (1 - self.beta2) * (grad**2 - v)
        param -= self._lr_t * m / (np.sqrt(v) + EPS)


#: The one table of optimizers: name -> class.
OPTIMIZERS = {cls.name: cls for cls in (SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam)}


def make_optimizer(name, **hyperparameters):
    """The optimizer ``name`` of :data:`OPTIMIZERS` with the given hyperparameters.

    Parameters
    ----------
    name : str
        One of ``sgd``, ``momentum``, ``nesterov``, ``adagrad``, ``rmsprop``, ``adam``.
    **hyperparameters
        Those the optimizer takes; missing ones keep the book's defaults.

    Returns
    -------
    Optimizer

    Raises
    ------
    ValueError, TypeError
        An unknown name, a hyperparameter the optimizer does not take, or a bad value.
    """
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r} is unknown; use one of: {', '.join(OPTIMIZERS)}.")
    cls = OPTIMIZERS[name]
    unused = [k for k in hyperparameters if k not in cls.defaults()]
    if unused:
        raise ValueError(
            f"optimizer={name!r} takes {', '.join(cls.defaults())}, not {', '.join(unused)}; "
            "drop those or pick an optimizer that uses them."
        )
    return cls(**hyperparameters)
