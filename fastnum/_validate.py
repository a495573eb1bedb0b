"""Input checks shared by the public API: each error names the value and the fix.

One rule per argument, used by every caller (the networks, ``TrainConfig`` and
the CLI through it):

* sizes and counts (``input_size``, ``hidden_size``, ``iters``, ...) are Python or
  NumPy integers, never ``bool`` and never floats such as ``50.0``
  (:func:`check_int`);
* positive reals (``lr``, ``weight_init_std``) are finite and > 0: a standard
  deviation of 0 gives every hidden unit the same weights, which gradient
  descent can never tell apart (:func:`check_positive`);
* the step ``h`` is a real number from :data:`MIN_STEP` up (:func:`check_step`);
* names from a fixed vocabulary are checked against it (:func:`check_choice`);
* network parameters are finite floating-point arrays whose shapes chain
  (:func:`as_network_params`); float16 and float32 are computed in float64.

A message about a parameter is a :class:`Message`: a template in which parameter
names are fields (``{name}``, ``{train_size}``), so that a caller with another
vocabulary re-spells them without parsing text.  The library writes Python names
(``batch_size=0``); the command line passes its :class:`Spelling` and writes the
options a user types (``--batch-size=0``).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

#: Smallest central-difference step fastnum accepts.  Each loss evaluation carries a
#: float64 rounding error of about eps * |L| (2.2e-16 * 2.3 = 5e-16 for the book's
#: untrained loss), so (L(+h) - L(-h)) / 2h carries about eps * |L| / h: 5e-4 at
#: h = 1e-12, already the size of the small gradients of a trained network, and
#: the whole gradient below that.  At h = 1e-300 no loss moves at all and training
#: returns its initial parameters.  The book's 1e-4 keeps that error near 1e-12.
MIN_STEP = 1e-12


class Spelling:
    """How a :class:`Message` writes parameter names: as Python arguments (``batch_size``).

    The command line subclasses it to write its options instead (``--batch-size``).
    """

    def name(self, name):
        """The spelling of parameter ``name`` (``hidden_sizes[1]``: an element of one)."""
        return name

    def setting(self, name, value):
        """How to write "give ``name`` the value ``value``", e.g. ``hidden_sizes=(50,)``."""
        return f"{self.name(name)}={value!r}"


#: The library's spelling: Python names, as a caller of the functions writes them.
PYTHON = Spelling()


class Setting(NamedTuple):
    """A value of a :class:`Message` that says "``name`` set to ``value``" (in an example)."""

    name: str
    value: object


class _Fields(dict):
    """Template fields: the message's values; any other field is a parameter name."""

    def __init__(self, spelling, values):
        super().__init__(values)
        self.spelling = spelling

    def __missing__(self, key):
        return self.spelling.name(key)


class Message(str):
    """An error message that names parameters, re-spellable without parsing its text.

    ``template`` is a :meth:`str.format` string.  ``{name}`` is the parameter ``name``;
    fields given in ``values`` are substituted as they are (a :class:`Setting` as the
    spelling writes it); any other field is the name of another parameter.  As a ``str``
    the message is written with Python names; :meth:`spelled` writes it with another
    :class:`Spelling`.

    Examples
    --------
    >>> m = Message("{name}={value} exceeds {train_size}", "batch_size", value=200)
    >>> str(m)
    'batch_size=200 exceeds train_size'
    """

    def __new__(cls, template, name=None, **values):
        self = super().__new__(cls, _render(template, name, values, PYTHON))
        self.template, self.name, self.values = template, name, values
        return self

    def spelled(self, spelling):
        """The message with parameter names and settings written by ``spelling``."""
        return _render(self.template, self.name, self.values, spelling)

    def __reduce__(self):  # pickled for worker processes: rebuilt from its parts
        return _message, (self.template, self.name, self.values)


def _message(template, name, values):
    """Unpickle a :class:`Message`."""
    return Message(template, name, **values)


def _render(template, name, values, spelling):
    """``template`` with its fields filled in, names written by ``spelling``."""
    fields = {k: spelling.setting(*v) if isinstance(v, Setting) else v for k, v in values.items()}
    if name is not None:
        fields["name"] = spelling.name(name)
    return template.format_map(_Fields(spelling, fields))


def spelled(exc, spelling):
    """The message of exception ``exc``, its parameter names written by ``spelling``."""
    message = exc.args[0] if len(exc.args) == 1 else None
    return message.spelled(spelling) if isinstance(message, Message) else str(exc)


class _NamedParameter:
    """Mixin: an exception about parameter ``name`` whose message is a :class:`Message`."""

    def __init__(self, name, template, **values):
        self.name = name
        super().__init__(Message(template, name, **values))

    def __reduce__(self):  # the constructor takes parts, not the message: rebuild as is
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls, args, state):
    """Unpickle a :class:`ParameterError` or :class:`ParameterTypeError`."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class ParameterError(_NamedParameter, ValueError):
    """A bad value of parameter ``name`` (the message is a :class:`Message` naming it)."""


class ParameterTypeError(_NamedParameter, TypeError):
    """A value of the wrong type for parameter ``name`` (as :class:`ParameterError`)."""


def check_int(name, value, minimum=1, hint="", optional=False):
    """Return ``value`` as an int, or raise unless it is an integer >= ``minimum``.

    ``bool`` and integral floats (``50.0``) are refused: they are almost always a
    mistake, and a float width would silently be truncated elsewhere.
    ``optional=True`` lets ``None`` through (returned as is).
    """
    if optional and value is None:
        return None
    hint = f"; {hint}" if hint else "."
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterTypeError(
            name, "{name}={value!r} must be an integer{hint}", value=value, hint=hint
        )
    if value < minimum:
        raise ParameterError(
            name,
            "{name}={value} must be at least {minimum}{hint}",
            value=value,
            minimum=minimum,
            hint=hint,
        )
    return int(value)


def check_positive(name, value, hint="", allow_zero=False):
    """Return ``value`` as a float, or raise unless it is a finite real number > 0
    (>= 0 with ``allow_zero``)."""
    hint = f"; {hint}" if hint else "."
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterTypeError(
            name, "{name}={value!r} must be a number{hint}", value=value, hint=hint
        )
    if not (math.isfinite(value) and (value > 0 or (allow_zero and value == 0))):
        raise ParameterError(
            name,
            "{name}={value!r} must be a finite number {bound}{hint}",
            value=value,
            bound=">= 0" if allow_zero else "> 0",
            hint=hint,
        )
    return float(value)


def check_choice(name, value, choices):
    """Return ``value`` unless it is not one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ParameterError(
            name,
            "{name}={value!r} is unknown; use one of: {choices}.",
            value=value,
            choices=", ".join(choices),
        )
    return value


def check_step(h, name="h"):
    """Return the central-difference step ``h`` as a float, or raise.

    ``h`` must be a real number (not a string) from :data:`MIN_STEP` up, and finite.
    """
    hint = "the book uses 1e-4."
    if isinstance(h, np.ndarray) and h.ndim == 0 and h.dtype.kind in "iuf":
        h = h.item()  # a 0-d array, e.g. from np.float64 arithmetic on arrays
    if isinstance(h, bool) or not isinstance(h, numbers.Real):
        raise ParameterTypeError(
            name,
            "{name}={value!r} must be a number (a {type} was given); {hint}",
            value=h,
            type=type(h).__name__,
            hint=hint,
        )
    if not (math.isfinite(h) and h > 0):
        raise ParameterError(
            name, "{name}={value!r} must be a finite positive number; {hint}", value=h, hint=hint
        )
    if h < MIN_STEP:
        raise ParameterError(
            name,
            "{name}={value!r} is too small to move the loss: below {min:g} the float64 "
            "rounding of the loss (about 5e-16 / h) swamps the gradient. Use {name} >= "
            "{min:g}; {hint}",
            value=h,
            min=MIN_STEP,
            hint=hint,
        )
    return float(h)


def as_float_batch(x, n_features=None, name="x"):
    """Return ``x`` as a C-contiguous float64 2-D array, or raise a clear error.

    Integer, float16 and float32 inputs are converted to float64: every backend
    computes in float64.
    """
    x = _numeric(x, name)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2:
        raise ValueError(
            f"{name} has shape {x.shape}; expected (batch, features). "
            "Flatten images first, e.g. load_mnist(flatten=True) or x.reshape(len(x), -1)."
        )
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(
            f"{name} has {x.shape[1]} features per sample but the network expects {n_features}; "
            f"pass inputs of shape (batch, {n_features}) or build the network with "
            f"input_size={x.shape[1]}."
        )
    return _finished_batch(x, name)


def as_image_batch(x, input_dim, name="x"):
    """Return ``x`` as a C-contiguous float64 (N, C, H, W) batch of ``input_dim`` images."""
    x = _numeric(x, name)
    if x.ndim != 4 or x.shape[1:] != tuple(input_dim):
        c, h, w = input_dim
        raise ValueError(
            f"{name} has shape {x.shape}; the network expects images of shape (batch, {c}, {h}, "
            f"{w}). Load MNIST with load_mnist(flatten=False), or reshape with "
            f"x.reshape(-1, {c}, {h}, {w})."
        )
    return _finished_batch(x, name)


def _numeric(x, name):
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{name} has dtype {x.dtype}; pass a numeric array (float32 or float64).")
    return x


def _finished_batch(x, name):
    """A batch of the right shape, checked non-empty and finite, as C-contiguous float64."""
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {x.shape}); pass at least one sample.")
    x = np.ascontiguousarray(x, dtype=np.float64)
    check_finite(x, name, "clean the data (np.nan_to_num) before training.")
    return x


def check_finite(a, name, fix):
    if not np.isfinite(a).all():
        bad = tuple(np.argwhere(~np.isfinite(a))[0].tolist())
        raise ValueError(f"{name} contains a non-finite value {a[bad]} at index {bad}; {fix}")


def as_labels(t, batch, n_classes, name="t"):
    """Return int64 labels of shape (batch,) from integer or one-hot ``t``, or raise.

    The range is checked on the labels as given, before any conversion, so that a
    huge unsigned or float label is reported as it is rather than wrapped around.
    """
    t = np.asarray(t)
    if t.dtype.kind not in "iufb":
        raise TypeError(
            f"{name} has dtype {t.dtype}; pass integer class labels (0..{n_classes - 1})."
        )
    if t.ndim == 2 and t.shape == (batch, n_classes):
        check_finite(t, f"{name} (one-hot)", "one-hot rows must hold finite numbers.")
        return np.ascontiguousarray(t.argmax(axis=1), dtype=np.int64)
    if t.ndim == 2 and t.shape[0] == batch and t.shape[1] == 1:
        t = t.ravel()
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(
            f"{name} has shape {t.shape}; expected ({batch},) integer labels or "
            f"({batch}, {n_classes}) one-hot rows to match a batch of {batch} samples."
        )
    if t.dtype.kind == "b":
        raise TypeError(f"{name} has dtype bool; pass integer class labels (0..{n_classes - 1}).")
    if t.dtype.kind == "f":
        whole = np.isfinite(t) & (t == np.round(t))
        if not whole.all():
            bad = t[~whole][0].item()
            raise ValueError(
                f"{name} holds non-integer values such as {bad!r}; pass integer class labels "
                f"(0..{n_classes - 1}), e.g. t.astype(int)."
            )
    outside = (t < 0) | (t >= n_classes)
    if outside.any():
        bad = t[outside][0].item()  # a Python number: uint64 2**63 prints as itself
        raise ValueError(
            f"{name} contains label {bad}, outside 0..{n_classes - 1}; "
            f"labels must index one of the network's {n_classes} outputs."
        )
    return np.ascontiguousarray(t, dtype=np.int64)


def as_shaped_params(params, shapes):
    """Check parameters against fixed shapes (``name -> shape``); float64 C-contiguous.

    For networks whose parameters do not chain as dense layers do (a convolution's
    filters); the same checks and messages otherwise as :func:`as_network_params`.
    """
    out = {}
    for name, shape in shapes.items():
        if name not in params:
            raise KeyError(f"params is missing {name!r}; this network needs {', '.join(shapes)}.")
        value = np.asarray(params[name])
        if value.shape != shape or value.dtype.kind != "f":
            raise ValueError(
                f"params[{name!r}] has shape {value.shape} and dtype {value.dtype} but this "
                f"network needs a float array of shape {shape}; assign arrays of the "
                "original shapes."
            )
        out[name] = _finite_param(value, name)
    return out


def _finite_param(a, name):
    a = np.ascontiguousarray(a, dtype=np.float64)
    check_finite(
        a,
        f"params[{name!r}]",
        "re-initialise the network or load finite parameters "
        "(training diverged? lower the learning rate).",
    )
    return a


def as_network_params(params, names):
    """Check a network's parameters and return them as C-contiguous float64 arrays.

    Parameters
    ----------
    params : mapping
        ``W1, b1, ..., WL, bL``: weights ``(d_{k-1}, d_k)``, biases ``(d_k,)``,
        consecutive widths matching, at least 2 outputs.
    names : sequence of str
        The expected keys, in order.

    Returns
    -------
    dict of str to ndarray
        float64, C-contiguous; an array that already is one is returned as is
        (not copied), so a caller's in-place update stays visible.

    Raises
    ------
    KeyError, TypeError, ValueError
        A missing key, a non-float dtype, a shape that does not chain, or a
        non-finite value; the message names the parameter and the fix.
    """
    missing = [k for k in names if k not in params]
    if missing:
        raise KeyError(f"params is missing {missing}; expected the keys {list(names)}.")
    out, width = {}, None
    for k in range(len(names) // 2):
        w_name, b_name = names[2 * k], names[2 * k + 1]
        W, b = np.asarray(params[w_name]), np.asarray(params[b_name])
        for name, a in ((w_name, W), (b_name, b)):
            if a.dtype.kind != "f":
                raise TypeError(
                    f"params[{name!r}] has dtype {a.dtype}; parameters must be floating point "
                    f"(float64, or float16/float32, which are computed in float64): "
                    f"convert with .astype(np.float64)."
                )
        expected = f"({'n_in' if width is None else width}, n_out)"
        if W.ndim != 2 or (width is not None and W.shape[0] != width) or 0 in W.shape:
            raise ValueError(
                f"params[{w_name!r}] has shape {W.shape}; expected {expected} with positive "
                f"widths, matching the layer before it. Assign an array of the network's shape."
            )
        if b.shape != (W.shape[1],):
            raise ValueError(
                f"params[{b_name!r}] has shape {b.shape}; expected ({W.shape[1]},) to match "
                f"{w_name} {W.shape}. Assign an array of the network's shape."
            )
        width = W.shape[1]
        out[w_name], out[b_name] = _finite_param(W, w_name), _finite_param(b, b_name)
    if width < 2:
        raise ValueError(
            f"params[{names[-1]!r}] gives {width} output(s); a softmax needs at least 2."
        )
    return out


def check_input_dim(input_dim):
    """``input_dim`` as a tuple (channels, height, width) of positive ints; ValueError else."""
    if (
        isinstance(input_dim, (str, bytes))
        or not hasattr(input_dim, "__len__")
        or len(input_dim) != 3
    ):
        raise ValueError(
            f"input_dim={input_dim!r} must be (channels, height, width), e.g. (1, 28, 28)."
        )
    return tuple(check_int(f"input_dim[{i}]", n, 1) for i, n in enumerate(input_dim))
