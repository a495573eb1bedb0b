"""Input checks shared by the public API: each error names the value and the fix."""

from __future__ import annotations

import numpy as np


def as_float_batch(x, n_features=None, name="x"):
    """Return ``x`` as a C-contiguous float64 2-D array, or raise a clear error."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{name} has dtype {x.dtype}; pass a numeric array (float32 or float64).")
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
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {x.shape}); pass at least one sample.")
    x = np.ascontiguousarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(
            f"{name} contains a non-finite value {x[tuple(bad)]} at index {tuple(bad.tolist())}; "
            "clean the data (np.nan_to_num) before training."
        )
    return x


def as_labels(t, batch, n_classes, name="t"):
    """Return integer labels of shape (batch,) from integer or one-hot ``t``, or raise."""
    t = np.asarray(t)
    if t.ndim == 2 and t.shape == (batch, n_classes):
        if not np.isfinite(t).all():
            raise ValueError(f"{name} (one-hot) contains NaN or inf; labels must be finite.")
        return np.ascontiguousarray(t.argmax(axis=1), dtype=np.int64)
    if t.ndim == 2 and t.shape[0] == batch and t.shape[1] == 1:
        t = t.ravel()
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(
            f"{name} has shape {t.shape}; expected ({batch},) integer labels or "
            f"({batch}, {n_classes}) one-hot rows to match a batch of {batch} samples."
        )
    if t.dtype.kind == "f":
        if not np.isfinite(t).all() or not np.all(t == np.round(t)):
            raise ValueError(f"{name} holds non-integer values; pass integer class labels.")
    elif t.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {t.dtype}; pass integer class labels.")
    t = t.astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= n_classes):
        bad = t[(t < 0) | (t >= n_classes)][0]
        raise ValueError(
            f"{name} contains label {bad}, outside 0..{n_classes - 1}; "
            f"labels must index one of the network's {n_classes} outputs."
        )
    return np.ascontiguousarray(t)


def check_step(h, name="h"):
    """Raise unless ``h`` is a finite positive float."""
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"{name}={h!r} must be a finite positive number (the book uses 1e-4).")
    return float(h)
