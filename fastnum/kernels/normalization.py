"""Numba kernels of the engine's chapter 6 layers: batch normalisation and dropout.

Batch forward
-------------
``_batchnorm_batch`` normalises each column of a batch (N, D) with the column's
mean and biased variance (``BN_EPSILON`` inside the square root), parallel over
columns: batch normalisation couples the samples, so a column, not a sample, is
the unit of work.  ``_mask_batch`` multiplies by a given dropout mask.

Delta evaluation of a dense stack
---------------------------------
A stack of affine layers, each optionally followed by batch normalisation, an
activation and a dropout mask (the book's order), is packed like the engine's
dense tail: flat weights ``w``/``b`` with offsets, flat ``gamma``/``beta`` at
``b_off``, per layer the activation code and whether it normalises (``bn``) or
drops (``drop``).  The cache holds, per layer, the pre-activations ``Z``, the
normalised values ``XN`` and the output ``A`` (activation times mask), rows of
``d_{l+1}`` per sample from ``z_off[l]``, the masks ``M`` in the same layout,
and each sample's loss ``L0``.

A perturbation of ``W_l[r, j]``, ``b_l[j]``, ``gamma_l[j]`` or ``beta_l[j]``
changes column j of layer l (for every sample whose input r is non-zero).  With
batch normalisation that column's statistics are recomputed, which moves the
column for every sample; after the activation and the mask the change of
column j is a vector over samples, and the next layer's pre-activations move
by that vector times row j of the next weights (a rank-1 change).  From there
:func:`_run_from` recomputes every later layer for the samples that moved (a
normalising layer moves all samples, and only its columns whose input changed
are recomputed), and the losses of the moved samples; the others keep their
cached loss.  Every value is computed by the same functions as the cache, so
an unchanged input gives bit-for-bit the cached output.  A unit that the mask
drops for every sample, or an input column that is zero for every sample,
moves nothing and is skipped.  No analytic derivative is used anywhere.
"""

from __future__ import annotations

import numpy as np

from fastnum._jit import njit, prange
from fastnum.kernels._vmath import fexp, flog
from fastnum.kernels.multilayer import RELU, SIGMOID


@njit
def _act(v, kind):
    """The activation ``kind`` (RELU, SIGMOID, anything else passes) of one value."""
    if kind == RELU:
        return v if v > 0.0 else 0.0
    if kind == SIGMOID:
        return 1.0 / (1.0 + fexp(-v))
    return v


@njit
def _bn_column(z, n, gamma, beta, eps, xn, y):
    """xn[:n] = (z - mean) / sqrt(var + eps) over the column z[:n]; y = gamma * xn + beta."""
    s = 0.0
    for k in range(n):
        s += z[k]
    mu = s / n
    v = 0.0
    for k in range(n):
        d = z[k] - mu
        v += d * d
    std = np.sqrt(v / n + eps)
    for k in range(n):
        xn[k] = (z[k] - mu) / std
        y[k] = gamma * xn[k] + beta


@njit(parallel=True)
def _batchnorm_batch(a, gamma, beta, eps, xn, out):
    """out (N, D) = batch normalisation of a (N, D) per column; xn the normalised values."""
    n = a.shape[0]
    for c in prange(a.shape[1]):
        _bn_column(a[:, c], n, gamma[c], beta[c], eps, xn[:, c], out[:, c])


@njit(parallel=True)
def _mask_batch(a, mask, out):
    """out = a * mask elementwise, parallel over samples."""
    for s in prange(a.shape[0]):
        for k in range(a.shape[1]):
            out[s, k] = a[s, k] * mask[s, k]


@njit
def _row_loss(z, k, label, guard):
    """-log(softmax(z[:k])[label] + guard), shifted by the row max."""
    m = z[0]
    for c in range(1, k):
        m = max(m, z[c])
    s = 0.0
    for c in range(k):
        s += fexp(z[c] - m)
    return -flog(fexp(z[label] - m) / s + guard)


# ------------------------------------------------------------------------------ cache


@njit
def _layer_out(net, layer, s, c, y):
    """Output (activation, then mask) of unit c of sample s for the value y after BN."""
    sizes, w, w_off, b, b_off, g, be, acts, bn, drop, z_off, Z, XN, A, M, L0 = net
    v = _act(y, acts[layer])
    if drop[layer]:
        v = v * M[z_off[layer] + s * sizes[layer + 1] + c]
    return v


@njit
def _net_cache(X, net, t, guard, eps, col, col2):
    """Fill Z, XN, A and L0 of ``net`` (see the module docstring) for the batch X."""
    sizes, w, w_off, b, b_off, g, be, acts, bn, drop, z_off, Z, XN, A, M, L0 = net
    n = X.shape[0]
    n_layers = sizes.shape[0] - 1
    for layer in range(n_layers):
        n_in = sizes[layer]
        d = sizes[layer + 1]
        zo = z_off[layer]
        for s in range(n):
            for c in range(d):
                Z[zo + s * d + c] = b[b_off[layer] + c]
            for r in range(n_in):
                a = X[s, r] if layer == 0 else A[z_off[layer - 1] + s * n_in + r]
                if a != 0.0:
                    row = w_off[layer] + r * d
                    for c in range(d):
                        Z[zo + s * d + c] += a * w[row + c]
        for c in range(d):
            for s in range(n):
                col[s] = Z[zo + s * d + c]
            if bn[layer]:
                _bn_column(col, n, g[b_off[layer] + c], be[b_off[layer] + c], eps, col2, col)
                for s in range(n):
                    XN[zo + s * d + c] = col2[s]
            for s in range(n):
                A[zo + s * d + c] = _layer_out(net, layer, s, c, col[s])
    last = z_off[n_layers - 1]
    k = sizes[n_layers]
    for s in range(n):
        L0[s] = _row_loss(A[last + s * k : last + (s + 1) * k], k, t[s], guard)


# ------------------------------------------------------------------------------ delta


@njit
def _run_from(m, P, Q, active, n_act, net, t, guard, eps, col, col2, Ls):
    """Ls[s] = loss of each sample s that moved, given P[s, :d_{m+1}], the perturbed
    pre-activations of layer m of the ``n_act`` samples in ``active`` (the other samples
    equal the cache).  P and Q are scratch (N, width) and are overwritten."""
    sizes, w, w_off, b, b_off, g, be, acts, bn, drop, z_off, Z, XN, A, M, L0 = net
    n = P.shape[0]
    n_layers = sizes.shape[0] - 1
    while True:
        d = sizes[m + 1]
        zo = z_off[m]
        if bn[m]:
            # The batch statistics couple the samples: every sample takes part from here.
            if n_act < n:
                _all_samples(P, active, n_act, Z, zo, d)
                n_act = n
            for c in range(d):
                changed = False
                for s in range(n):
                    col[s] = P[s, c]
                    if col[s] != Z[zo + s * d + c]:
                        changed = True
                if not changed:
                    for s in range(n):
                        Q[s, c] = A[zo + s * d + c]
                    continue
                _bn_column(col, n, g[b_off[m] + c], be[b_off[m] + c], eps, col2, col)
                for s in range(n):
                    Q[s, c] = _layer_out(net, m, s, c, col[s])
        else:
            for a in range(n_act):
                s = active[a]
                for c in range(d):
                    Q[s, c] = _layer_out(net, m, s, c, P[s, c])
        if m == n_layers - 1:
            for a in range(n_act):
                s = active[a]
                Ls[s] = _row_loss(Q[s], d, t[s], guard)
            return
        d2 = sizes[m + 2]
        zo2 = z_off[m + 1]
        kept = 0
        for a in range(n_act):
            s = active[a]
            prow = P[s]
            for c in range(d2):
                prow[c] = Z[zo2 + s * d2 + c]
            moved = False
            for k in range(d):
                dk = Q[s, k] - A[zo + s * d + k]
                if dk != 0.0:
                    moved = True
                    wrow = w[w_off[m + 1] + k * d2 : w_off[m + 1] + (k + 1) * d2]
                    for c in range(d2):
                        prow[c] += dk * wrow[c]
            if moved:
                active[kept] = s
                kept += 1
        n_act = kept
        if n_act == 0:
            return
        m += 1


@njit
def _all_samples(P, active, n_act, Z, zo, d):
    """Make every sample active: rows of P not in active[:n_act] take the cached Z."""
    n = P.shape[0]
    is_active = np.zeros(n, dtype=np.bool_)
    for a in range(n_act):
        is_active[active[a]] = True
    for s in range(n):
        if not is_active[s]:
            for c in range(d):
                P[s, c] = Z[zo + s * d + c]
        active[s] = s


@njit
def _column_losses(layer, j, stage, col, net, t, guard, eps, P, Q, active, col2, dcol, Ls):
    """Ls = per-sample losses when column j of layer ``layer`` takes the values col[:N]:
    pre-activations (stage 0) or values after batch normalisation (stage 1)."""
    sizes, w, w_off, b, b_off, g, be, acts, bn, drop, z_off, Z, XN, A, M, L0 = net
    n = P.shape[0]
    n_layers = sizes.shape[0] - 1
    d = sizes[layer + 1]
    zo = z_off[layer]
    for s in range(n):
        Ls[s] = L0[s]
    if stage == 0 and bn[layer]:
        _bn_column(col, n, g[b_off[layer] + j], be[b_off[layer] + j], eps, col2, col)
    n_act = 0
    for s in range(n):
        dcol[s] = _layer_out(net, layer, s, j, col[s]) - A[zo + s * d + j]
        if dcol[s] != 0.0:
            active[n_act] = s
            n_act += 1
    if n_act == 0:
        return
    if layer == n_layers - 1:
        for a in range(n_act):
            s = active[a]
            for c in range(d):
                Q[s, c] = A[zo + s * d + c]
            Q[s, j] += dcol[s]
            Ls[s] = _row_loss(Q[s], d, t[s], guard)
        return
    d2 = sizes[layer + 2]
    zo2 = z_off[layer + 1]
    wrow = w[w_off[layer + 1] + j * d2 : w_off[layer + 1] + (j + 1) * d2]
    for a in range(n_act):
        s = active[a]
        for c in range(d2):
            P[s, c] = Z[zo2 + s * d2 + c] + dcol[s] * wrow[c]
    _run_from(layer + 1, P, Q, active, n_act, net, t, guard, eps, col, col2, Ls)


@njit
def _norm_delta_task(task, layer, X, nz_cols, net, t, h, guard, eps, width, n_tasks, gT):
    """gT[j, r] = sum_s (L_s(+) - L_s(-)) for W_l[r, j] (r < n_in), b_l[j] (r = n_in),
    gamma_l[j] (n_in + 1) and beta_l[j] (n_in + 2) of layer ``layer``.

    One task of ``n_tasks`` (run side by side by fastnum.engine._run_tasks); a task owns
    whole units j (interleaved) and sums the samples in ascending order.  nz_cols lists
    the input columns that are non-zero for some sample (the others move nothing).
    """
    sizes, w, w_off, b, b_off, g, be, acts, bn, drop, z_off, Z, XN, A, M, L0 = net
    n = X.shape[0]
    n_in = sizes[layer]
    d = sizes[layer + 1]
    zo = z_off[layer]
    P = np.empty((n, width))
    Q = np.empty((n, width))
    active = np.empty(n, dtype=np.int64)
    col = np.empty(n)
    col2 = np.empty(n)
    dcol = np.empty(n)
    Lp = np.empty(n)
    Lm = np.empty(n)
    n_par = 3 if bn[layer] else 1
    for j in range(task, d, n_tasks):
        if drop[layer]:
            kept = False
            for s in range(n):
                if M[zo + s * d + j] != 0.0:
                    kept = True
            if not kept:  # dropped for every sample: no parameter of unit j moves the loss
                continue
        for q in range(nz_cols.shape[0] + n_par):
            for sign in range(2):
                step = h if sign == 0 else -h
                Ls = Lp if sign == 0 else Lm
                if q < nz_cols.shape[0]:  # W[r, j]: moves z by step * input r
                    r = nz_cols[q]
                    for s in range(n):
                        a = X[s, r] if layer == 0 else A[z_off[layer - 1] + s * n_in + r]
                        col[s] = Z[zo + s * d + j] + step * a
                    stage = 0
                elif q == nz_cols.shape[0]:  # b[j]
                    for s in range(n):
                        col[s] = Z[zo + s * d + j] + step
                    stage = 0
                else:  # gamma[j] or beta[j]: y = gamma * xn + beta with one of them moved
                    gj = g[b_off[layer] + j]
                    bej = be[b_off[layer] + j]
                    if q == nz_cols.shape[0] + 1:
                        gj = gj + step
                    else:
                        bej = bej + step
                    for s in range(n):
                        col[s] = gj * XN[zo + s * d + j] + bej
                    stage = 1
                _column_losses(
                    layer, j, stage, col, net, t, guard, eps, P, Q, active, col2, dcol, Ls
                )
            total = 0.0
            for s in range(n):
                total += Lp[s] - Lm[s]
            if q < nz_cols.shape[0]:
                gT[j, nz_cols[q]] = total
            else:
                gT[j, n_in + q - nz_cols.shape[0]] = total
