"""Softmax + cross-entropy kernels: fused over a batch of rows, and over columns of evaluations."""

from __future__ import annotations

import numpy as np

from fastnum._jit import njit, run_tasks
from fastnum._validate import as_float_batch, as_labels
from fastnum.constants import LOG_GUARD
from fastnum.kernels._vmath import SMALLEST_NORMAL, fexp, flog, flog_guarded


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


@njit
def column_losses(z, k, n_e, label, guard, mx, sm, out):
    """out[e] = -log(softmax(z[:k, e])[label] + guard) for each column e < n_e.

    The numerical-gradient kernels keep one perturbed evaluation per column, so the loop
    over columns is innermost and runs on contiguous memory.  With a guard of at least
    the smallest normal float, log's argument is normal and the cheaper ``flog_guarded``
    serves; the engine's unguarded loss (guard 0) needs ``flog``.
    """
    for e in range(n_e):
        mx[e] = z[0, e]
    for c in range(1, k):
        for e in range(n_e):
            if z[c, e] > mx[e]:
                mx[e] = z[c, e]
    for e in range(n_e):
        sm[e] = 0.0
    for c in range(k):
        for e in range(n_e):
            sm[e] += fexp(z[c, e] - mx[e])
    if guard >= SMALLEST_NORMAL:
        for e in range(n_e):
            out[e] = -flog_guarded(fexp(z[label, e] - mx[e]) / sm[e] + guard)
    else:
        for e in range(n_e):
            out[e] = -flog(fexp(z[label, e] - mx[e]) / sm[e] + guard)


@njit
def _cross_entropy_task(task, n_tasks, a, t, guard, losses):
    """losses[n] = cross-entropy of row n, for this task's rows."""
    for n in range(task * a.shape[0] // n_tasks, (task + 1) * a.shape[0] // n_tasks):
        losses[n] = _row_cross_entropy(a, n, t[n], guard)


def _softmax_cross_entropy_rows(a, t, guard, losses):
    """losses[n] = cross-entropy of row n (float64 C-contiguous a, int64 t); rows in parallel."""
    # A row takes well under a microsecond: only big batches are worth several threads.
    run_tasks(_cross_entropy_task, a.shape[0], a, t, float(guard), losses, min_items=1024)


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
