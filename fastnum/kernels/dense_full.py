"""The dense ``full`` kernel: parallel over parameters, for the engine's dense stacks.

For a dense stack of one hidden activation (affine, act, affine, act, ..., affine)
the engine's ``full`` strategy runs here (:data:`fastnum.engine.FAST_PATHS`): each
task owns a share of the parameters and, per parameter, runs the whole forward pass
and loss of the batch at ``theta +/- h`` in a task-private copy of the packed
parameters (:class:`fastnum.kernels._blocks.Packed`, the layout of that module).  The
engine's own ``full`` runs one batch forward pass per evaluation from Python, which
costs a call per parameter; this kernel stays inside numba for the whole gradient.

Each gradient cell is written by exactly one task and every sum runs over samples
in ascending order inside it, so the result does not depend on the thread count.
Inputs are trusted (the networks validate); ``delta`` lives in the engine only.
"""

from __future__ import annotations

import numpy as np

from fastnum._jit import njit, run_tasks
from fastnum.constants import LOG_GUARD
from fastnum.kernels._blocks import _act, _affine_into, nonzeros

# Vectorizable exp/log, full double precision (within 2 ulp of libm): the
# perturbed-loss loops are dominated by exp, which libm would keep scalar.
from fastnum.kernels._vmath import fexp, flog_guarded


@njit
def _sample_loss(z, start, k, label):
    # Softmax cross-entropy of one sample's logits z[start:start + k]; the max
    # is subtracted so exp() cannot overflow, and the book's guard sits inside log.
    m = z[start]
    for c in range(1, k):
        if z[start + c] > m:
            m = z[start + c]
    s = 0.0
    for c in range(k):
        s += fexp(z[start + c] - m)
    return -flog_guarded(fexp(z[start + label] - m) / s + LOG_GUARD)


@njit
def _dense(w, b, w_off, b_off, layer, n_in, n_out, src, dst, act_kind, hidden):
    # dst = act(src @ W_l + b_l) for one sample (no activation on the output layer).
    _affine_into(src, n_in, w, w_off[layer], b, b_off[layer], n_out, dst)
    if hidden:
        for k in range(n_out):
            dst[k] = _act(dst[k], act_kind)


@njit
def _logits_into(w, b, w_off, b_off, sizes, x, s, nz_ptr, nz_idx, act_kind, buf1, buf2):
    # Forward pass of sample s; returns the buffer that holds the logits.
    # The first layer walks only the non-zero inputs listed in nz_idx (CSR):
    # the same sum as the dense loop in the same order, without a
    # hard-to-predict branch per pixel.
    n_layers = sizes.shape[0] - 1
    n_out = sizes[1]
    for k in range(n_out):
        buf1[k] = 0.0
    # Layer 0's weights and biases start at offset 0 of w and b.
    for p in range(nz_ptr[s], nz_ptr[s + 1]):
        i = nz_idx[p]
        a = x[s, i]
        wrow = w[i * n_out : (i + 1) * n_out]
        for k in range(n_out):
            buf1[k] += a * wrow[k]
    for k in range(n_out):
        v = buf1[k] + b[k]
        buf1[k] = _act(v, act_kind) if n_layers > 1 else v
    src = buf1
    dst = buf2
    for layer in range(1, n_layers):
        _dense(
            w,
            b,
            w_off,
            b_off,
            layer,
            sizes[layer],
            sizes[layer + 1],
            src,
            dst,
            act_kind,
            layer < n_layers - 1,
        )
        src, dst = dst, src
    return src


@njit
def _batch_loss(w, b, w_off, b_off, sizes, x, nz_ptr, nz_idx, t, act_kind, buf1, buf2):
    # Mean loss of the batch, samples summed in ascending order.
    n = x.shape[0]
    k = sizes[sizes.shape[0] - 1]
    total = 0.0
    for s in range(n):
        z = _logits_into(w, b, w_off, b_off, sizes, x, s, nz_ptr, nz_idx, act_kind, buf1, buf2)
        total += _sample_loss(z, 0, k, t[s])
    return total / n


@njit
def _perturbed_loss_difference(
    vec, q, h, wc, bc, w_off, b_off, sizes, x, nz_ptr, nz_idx, t, act_kind, buf1, buf2
):
    """L(theta + h e_q) - L(theta - h e_q) for element q of ``vec`` (``wc`` or ``bc``)."""
    saved = vec[q]
    vec[q] = saved + h
    f_plus = _batch_loss(wc, bc, w_off, b_off, sizes, x, nz_ptr, nz_idx, t, act_kind, buf1, buf2)
    vec[q] = saved - h
    f_minus = _batch_loss(wc, bc, w_off, b_off, sizes, x, nz_ptr, nz_idx, t, act_kind, buf1, buf2)
    vec[q] = saved
    return f_plus - f_minus


@njit
def _full_gradient(
    task, n_tasks, w, b, w_off, b_off, sizes, x, nz_ptr, nz_idx, t, h, act_kind, width, gw, gb
):
    """Parameters task, task + n_tasks, ... (weights, then biases) of one task of
    :func:`fastnum._jit.run_tasks`; each parameter's difference is computed alone."""
    n_w = w.shape[0]
    n_params = n_w + b.shape[0]
    # A private copy per task, so perturbing it races with no other task.
    wc = w.copy()
    bc = b.copy()
    buf1 = np.empty(width)
    buf2 = np.empty(width)
    for p in range(task, n_params, n_tasks):
        vec, q = (wc, p) if p < n_w else (bc, p - n_w)
        diff = _perturbed_loss_difference(
            vec, q, h, wc, bc, w_off, b_off, sizes, x, nz_ptr, nz_idx, t, act_kind, buf1, buf2
        )
        if p < n_w:
            gw[q] = diff / (2.0 * h)
        else:
            gb[q] = diff / (2.0 * h)


def numerical_gradient_trusted(packed, x, t, h, act_kind):
    """Central-difference gradient of the batch-mean loss, the ``full`` way, inputs trusted.

    Parameters
    ----------
    packed : fastnum.kernels._blocks.Packed
        From :func:`fastnum.kernels._blocks.pack_dense`.
    x : ndarray, shape (batch, d0)
        C-contiguous float64.
    t : ndarray of int64, shape (batch,)
        Labels in range.
    h : float
        Positive step.
    act_kind : int
        The code of every hidden activation (:data:`fastnum.kernels._blocks.OP_CODES`).

    Returns
    -------
    list of ndarray
        ``[gW1, gb1, ..., gWL, gbL]``, views into two freshly allocated vectors.
    """
    sizes, w, b, w_off, b_off = packed
    gw = np.empty_like(w)
    gb = np.empty_like(b)
    nz_ptr, nz_idx = nonzeros(x)
    run_tasks(
        _full_gradient,
        w.shape[0] + b.shape[0],
        w,
        b,
        w_off,
        b_off,
        sizes,
        x,
        nz_ptr,
        nz_idx,
        np.ascontiguousarray(t, dtype=np.int64),
        float(h),
        act_kind,
        int(sizes[1:].max()),
        gw,
        gb,
    )
    out = []
    for layer in range(len(sizes) - 1):
        n_in, n_out = int(sizes[layer]), int(sizes[layer + 1])
        wo, bo = int(w_off[layer]), int(b_off[layer])
        out.append(gw[wo : wo + n_in * n_out].reshape(n_in, n_out))
        out.append(gb[bo : bo + n_out])
    return out
