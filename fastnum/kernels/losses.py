"""Fused softmax + cross-entropy over a batch of logits (numba, parallel over rows)."""

from __future__ import annotations

import numpy as np

from fastnum._jit import njit, prange
from fastnum._validate import as_float_batch, as_labels
from fastnum.constants import LOG_GUARD


@njit
def _row_cross_entropy(a, n, label, guard):
    """-log(softmax(a[n])[label] + guard), shifting by the row max so exp cannot overflow."""
    m = a[n, 0]
    for k in range(1, a.shape[1]):
        m = max(m, a[n, k])
    s = 0.0
    for k in range(a.shape[1]):
        s += np.exp(a[n, k] - m)
    return -np.log(np.exp(a[n, label] - m) / s + guard)


@njit(parallel=True)
def _softmax_cross_entropy_rows(a, t, guard, losses):
    """losses[n] = cross-entropy of row n; each row is one independent task."""
    for n in prange(a.shape[0]):
        losses[n] = _row_cross_entropy(a, n, t[n], guard)


def softmax_cross_entropy(logits, t, per_sample=False):
    """Softmax followed by the book's cross-entropy, fused and parallel over the batch.

    Parameters
    ----------
    logits : array_like, shape (N, K) or (K,)
        Unnormalised scores; stable for magnitudes of 1e3 and beyond.
    t : array_like
        Integer labels (N,) or one-hot rows (N, K).
    per_sample : bool, default False
        Also return the per-sample losses.

    Returns
    -------
    float or (float, ndarray)
        The batch-mean loss, and the per-sample losses when ``per_sample``.
    """
    a = as_float_batch(logits, name="logits")
    if a.shape[1] < 2:
        raise ValueError(f"logits have {a.shape[1]} class(es) per row; softmax needs at least 2.")
    labels = as_labels(t, a.shape[0], a.shape[1])
    losses = np.empty(a.shape[0])
    _softmax_cross_entropy_rows(a, labels, LOG_GUARD, losses)
    mean = float(losses.sum() / a.shape[0])
    return (mean, losses) if per_sample else mean
