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
drops (``drop``).  The cache holds, per layer and unit-major (unit c of layer l
at ``z_off[l] + c * N``, its N samples contiguous), the pre-activations ``Z``,
the normalised values ``XN``, the output ``A`` (activation times mask) and the
masks ``M``.

A perturbation of ``W_l[r, j]``, ``b_l[j]``, ``gamma_l[j]`` or ``beta_l[j]``
changes column j of layer l (for every sample whose input r is non-zero).  With
batch normalisation that column's statistics are recomputed, which moves the
column for every sample; after the activation and the mask, the column's change
is a vector over samples, and the next layer's pre-activations move by that
vector times row j of the next weights (a rank-1 change).  From there
:func:`_run_from` recomputes every later layer for the samples the change
reaches (all of them when a later layer normalises, since its statistics mix
them; otherwise those whose output moved), adding only the rows of units whose
output changed, and then those samples' losses; the gradient sums
L_s(+) - L_s(-) over them in ascending order (the other samples' losses are the
same in both evaluations).  Evaluations run side by side
in blocks (the +h and -h of several parameters of one unit), so every inner
loop, the batch statistics included, vectorizes over them.  The cache and the
evaluations share these functions, so an unchanged input gives bit for bit the
cached output.  A unit that the mask drops for every sample, or an input row
that is zero for every sample, moves nothing and is skipped.  No analytic
derivative is used anywhere.
"""

from __future__ import annotations

import numpy as np

from fastnum._jit import njit, run_tasks
from fastnum.kernels._blocks import _act
from fastnum.kernels._vmath import fexp, flog


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


# Serial tasks of :func:`fastnum._jit.run_tasks` (a column or row is one task's, computed
# as a single-thread loop would); a column of a batch of 100 takes about a microsecond.
_MIN_BN_COLUMNS = 64
_MIN_MASK_ROWS = 256


@njit
def _batchnorm_columns(task, n_tasks, a, gamma, beta, eps, xn, out):
    """Columns of :func:`_batchnorm_batch` in task ``task`` of ``n_tasks``."""
    n = a.shape[0]
    for c in range(task * a.shape[1] // n_tasks, (task + 1) * a.shape[1] // n_tasks):
        _bn_column(a[:, c], n, gamma[c], beta[c], eps, xn[:, c], out[:, c])


def _batchnorm_batch(a, gamma, beta, eps, xn, out):
    """out (N, D) = batch normalisation of a (N, D) per column; xn the normalised values."""
    run_tasks(
        _batchnorm_columns, a.shape[1], a, gamma, beta, eps, xn, out, min_items=_MIN_BN_COLUMNS
    )


@njit
def _mask_rows(task, n_tasks, a, mask, out):
    """Samples of :func:`_mask_batch` in task ``task`` of ``n_tasks``."""
    for s in range(task * a.shape[0] // n_tasks, (task + 1) * a.shape[0] // n_tasks):
        for k in range(a.shape[1]):
            out[s, k] = a[s, k] * mask[s, k]


def _mask_batch(a, mask, out):
    """out = a * mask elementwise, parallel over samples."""
    run_tasks(_mask_rows, a.shape[0], a, mask, out, min_items=_MIN_MASK_ROWS)


# ------------------------------------------------------------------------------ delta
#
# Layout: every array of the dense stack is unit-major.  The cache keeps, per layer,
# rows of N samples per unit (Z, XN, A, M: unit c of layer l at z_off[l] + c * N).
# The delta blocks put ``ne`` evaluations side by side: row c of a block holds sample
# s of evaluation e at s * ne + e, so the inner loops (batch statistics included) run
# over the evaluations, contiguous, and vectorize.  One evaluation (ne = 1) is the
# cache's own layout, computed by the same functions: an input that did not change
# gives bit for bit the cached output.


@njit
def _bn_block(P, ne, n, gamma, beta, eps, acc, mu, std, out, xn, store_xn):
    """out = gamma * xn + beta for each of the ne columns interleaved in P[:n * ne]
    (sample s of column e at s * ne + e), with that column's mean and variance; the
    normalised values go to xn when ``store_xn``."""
    for e in range(ne):
        acc[e] = 0.0
    for s in range(n):
        for e in range(ne):
            acc[e] += P[s * ne + e]
    for e in range(ne):
        mu[e] = acc[e] / n
        acc[e] = 0.0
    for s in range(n):
        for e in range(ne):
            dv = P[s * ne + e] - mu[e]
            acc[e] += dv * dv
    for e in range(ne):
        # One division per column, then products: the same to an ulp as dividing each
        # value, and the cache and the evaluations share this function.
        std[e] = 1.0 / np.sqrt(acc[e] / n + eps)
    if store_xn:
        for s in range(n):
            for e in range(ne):
                xn[s * ne + e] = (P[s * ne + e] - mu[e]) * std[e]
    for s in range(n):
        for e in range(ne):
            out[s * ne + e] = gamma * ((P[s * ne + e] - mu[e]) * std[e]) + beta


@njit
def _layer_block(net, m, ne, n, idx, ns, eps, P, Q, xn, store_xn, acc, mu, std):
    """Q = output of layer m (batch norm per evaluation, activation, mask) for the
    pre-activations P (rows of ns * ne: the samples idx[:ns] of a batch of n; batch norm
    needs them all); the cache (``store_xn``, ne = 1) keeps the normalised values in xn."""
    sizes, w, w_off, b, b_off, g, be, acts, bn, drop, z_off, Z, XN, A, M = net
    d = sizes[m + 1]
    cols = ne * ns
    code = acts[m]
    mo = z_off[m]
    for c in range(d):
        base = c * cols
        out = Q[base : base + cols]
        if bn[m]:
            _bn_block(
                P[base : base + cols],
                ne,
                ns,
                g[b_off[m] + c],
                be[b_off[m] + c],
                eps,
                acc,
                mu,
                std,
                out,
                xn[base : base + cols] if store_xn else xn,
                store_xn,
            )
            for q in range(cols):
                out[q] = _act(out[q], code)
        else:
            for q in range(cols):
                out[q] = _act(P[base + q], code)
        if drop[m]:
            for si in range(ns):
                ms = M[mo + c * n + idx[si]]
                for e in range(ne):
                    out[si * ne + e] *= ms


@njit
def _block_losses(Q, k, ne, idx, ns, t, guard, mx, sm, L):
    """L[si * ne + e] = -log(softmax(Q[:, si * ne + e])[t[idx[si]]] + guard), max-shifted."""
    cols = ne * ns
    for q in range(cols):
        mx[q] = Q[q]
    for c in range(1, k):
        for q in range(cols):
            mx[q] = max(mx[q], Q[c * cols + q])
    for q in range(cols):
        sm[q] = 0.0
    for c in range(k):
        for q in range(cols):
            sm[q] += fexp(Q[c * cols + q] - mx[q])
    for si in range(ns):
        row = t[idx[si]] * cols
        for e in range(ne):
            q = si * ne + e
            L[q] = -flog(fexp(Q[row + q] - mx[q]) / sm[q] + guard)


@njit
def _net_cache(XT, net, eps):
    """Fill Z, XN and A of ``net`` for the batch XT (features, N), unit-major."""
    sizes, w, w_off, b, b_off, g, be, acts, bn, drop, z_off, Z, XN, A, M = net
    n = XT.shape[1]
    idx = np.empty(n, dtype=np.int64)  # every sample; a loop, np.arange compiled for 0.2 s
    for s in range(n):
        idx[s] = s
    src = XT.reshape(XT.size)
    one = np.empty(1)
    one2 = np.empty(1)
    one3 = np.empty(1)
    for m in range(sizes.shape[0] - 1):
        n_in = sizes[m]
        d = sizes[m + 1]
        zo = z_off[m]
        for c in range(d):
            for s in range(n):
                Z[zo + c * n + s] = b[b_off[m] + c]
        for r in range(n_in):
            row = src[r * n : (r + 1) * n]
            nonzero = False
            for s in range(n):
                if row[s] != 0.0:
                    nonzero = True
            if not nonzero:
                continue
            for c in range(d):
                wv = w[w_off[m] + r * d + c]
                for s in range(n):
                    Z[zo + c * n + s] += row[s] * wv
        zs = Z[zo : zo + d * n]
        out = A[zo : zo + d * n]
        _layer_block(net, m, 1, n, idx, n, eps, zs, out, XN[zo : zo + d * n], True, one, one2, one3)
        src = A[zo : zo + d * n]


@njit
def _run_from(m, ne, n, idx, ns, net, t, guard, eps, P, Q, D, xn, acc, mu, std, mx, sm, L):
    """L = losses of the samples idx[:ns] in ne evaluations whose layer-m pre-activations
    are the rows of P (ns * ne values each); P, Q, D are overwritten."""
    sizes, w, w_off, b, b_off, g, be, acts, bn, drop, z_off, Z, XN, A, M = net
    n_layers = sizes.shape[0] - 1
    cols = ne * ns
    while True:
        d = sizes[m + 1]
        zo = z_off[m]
        _layer_block(net, m, ne, n, idx, ns, eps, P, Q, xn, False, acc, mu, std)
        if m == n_layers - 1:
            _block_losses(Q, d, ne, idx, ns, t, guard, mx, sm, L)
            return
        d2 = sizes[m + 2]
        zo2 = z_off[m + 1]
        for c in range(d2):
            for si in range(ns):
                zc = Z[zo2 + c * n + idx[si]]
                for e in range(ne):
                    P[c * cols + si * ne + e] = zc
        for k in range(d):
            for si in range(ns):
                ak = A[zo + k * n + idx[si]]
                for e in range(ne):
                    D[si * ne + e] = Q[k * cols + si * ne + e] - ak
            moved = False
            for q in range(cols):
                if D[q] != 0.0:
                    moved = True
                    break
            if not moved:  # a unit no evaluation changed adds exactly nothing
                continue
            wr = w_off[m + 1] + k * d2
            for c in range(d2):
                wv = w[wr + c]
                row = P[c * cols : (c + 1) * cols]
                for q in range(cols):
                    row[q] += D[q] * wv
        m += 1


@njit
def _column_block(
    layer, j, stage, ne, n, E, net, t, guard, eps, idx, P, Q, D, xn, acc, mu, std, mx, sm, L
):
    """Losses of ne evaluations in which column j of layer ``layer`` takes the values E
    (sample s of evaluation e at s * ne + e): pre-activations (stage 0) or values after
    batch normalisation (stage 1).  Returns ns: L holds the losses of the samples
    idx[:ns] (si * ne + e), those the change reaches; the others' losses are the same
    in every evaluation.  E is overwritten."""
    sizes, w, w_off, b, b_off, g, be, acts, bn, drop, z_off, Z, XN, A, M = net
    n_layers = sizes.shape[0] - 1
    d = sizes[layer + 1]
    zo = z_off[layer]
    code = acts[layer]
    if stage == 0 and bn[layer]:
        gj = g[b_off[layer] + j]
        bj = be[b_off[layer] + j]
        _bn_block(E, ne, n, gj, bj, eps, acc, mu, std, E, xn, False)
    for s in range(n):
        ms = M[zo + j * n + s] if drop[layer] else 1.0
        aj = A[zo + j * n + s]
        for e in range(ne):
            v = _act(E[s * ne + e], code)
            if drop[layer]:
                v *= ms
            E[s * ne + e] = v
            D[s * ne + e] = v - aj
    # The samples the change reaches: all of them when a later layer normalises (its
    # statistics mix them), else those whose output moved in some evaluation.
    normalised_later = False
    for m in range(layer + 1, n_layers):
        if bn[m]:
            normalised_later = True
    ns = 0
    for s in range(n):
        moved = normalised_later
        for e in range(ne):
            if D[s * ne + e] != 0.0:
                moved = True
        if moved:
            for e in range(ne):  # compact in place: ns <= s
                D[ns * ne + e] = D[s * ne + e]
                E[ns * ne + e] = E[s * ne + e]
            idx[ns] = s
            ns += 1
    if ns == 0:
        return 0
    cols = ne * ns
    if layer == n_layers - 1:
        for c in range(d):
            for si in range(ns):
                ac = A[zo + c * n + idx[si]]
                for e in range(ne):
                    Q[c * cols + si * ne + e] = ac
        for q in range(cols):
            Q[j * cols + q] = E[q]
        _block_losses(Q, d, ne, idx, ns, t, guard, mx, sm, L)
        return ns
    d2 = sizes[layer + 2]
    zo2 = z_off[layer + 1]
    wr = w_off[layer + 1] + j * d2
    for c in range(d2):
        wv = w[wr + c]
        for si in range(ns):
            zc = Z[zo2 + c * n + idx[si]]
            for e in range(ne):
                P[c * cols + si * ne + e] = zc + D[si * ne + e] * wv
    _run_from(layer + 1, ne, n, idx, ns, net, t, guard, eps, P, Q, D, xn, acc, mu, std, mx, sm, L)
    return ns


@njit
def _norm_delta_task(task, n_tasks, layer, IN, nz_rows, net, t, h, guard, eps, width, ne_max, gT):
    """gT[j, r] = sum_s (L_s(+) - L_s(-)) for W_l[r, j] (r < n_in), b_l[j] (r = n_in),
    gamma_l[j] (n_in + 1) and beta_l[j] (n_in + 2) of layer ``layer``.

    One task of ``n_tasks`` (run side by side by fastnum._jit.run_tasks); a task owns
    whole units j (interleaved) and sums the samples in ascending order.  IN (n_in, N)
    is the layer's input, unit-major; nz_rows lists its rows that are non-zero for some
    sample (the others move nothing).  Up to ne_max evaluations (+h and -h of
    ne_max / 2 parameters) run side by side.
    """
    sizes, w, w_off, b, b_off, g, be, acts, bn, drop, z_off, Z, XN, A, M = net
    n = IN.shape[1]
    n_in = sizes[layer]
    d = sizes[layer + 1]
    zo = z_off[layer]
    cols = ne_max * n
    E = np.empty(cols)
    P = np.empty(width * cols)
    Q = np.empty(width * cols)
    D = np.empty(cols)
    L = np.empty(cols)
    mx = np.empty(cols)
    sm = np.empty(cols)
    xn = np.empty(cols)
    acc = np.empty(ne_max)
    mu = np.empty(ne_max)
    std = np.empty(ne_max)
    idx = np.empty(n, dtype=np.int64)
    n_rows = nz_rows.shape[0]
    n_items = n_rows + (3 if bn[layer] else 1)
    half = ne_max // 2
    for j in range(task, d, n_tasks):
        if drop[layer]:
            kept = False
            for s in range(n):
                if M[zo + j * n + s] != 0.0:
                    kept = True
            if not kept:  # dropped for every sample: no parameter of unit j moves the loss
                continue
        first = 0
        while first < n_items:
            stage = 0 if first <= n_rows else 1
            last = first
            while last < n_items and last - first < half and (0 if last <= n_rows else 1) == stage:
                last += 1
            ne = 2 * (last - first)
            for k in range(last - first):
                item = first + k
                for sign in range(2):
                    e = 2 * k + sign
                    step = h if sign == 0 else -h
                    if item < n_rows:  # W[r, j] moves z by step * input r
                        r = nz_rows[item]
                        for s in range(n):
                            E[s * ne + e] = Z[zo + j * n + s] + step * IN[r, s]
                    elif item == n_rows:  # b[j]
                        for s in range(n):
                            E[s * ne + e] = Z[zo + j * n + s] + step
                    else:  # gamma[j] or beta[j]: y = gamma * xn + beta, one of them moved
                        gj = g[b_off[layer] + j]
                        bj = be[b_off[layer] + j]
                        if item == n_rows + 1:
                            gj = gj + step
                        else:
                            bj = bj + step
                        for s in range(n):
                            E[s * ne + e] = gj * XN[zo + j * n + s] + bj
            ns = _column_block(
                layer,
                j,
                stage,
                ne,
                n,
                E,
                net,
                t,
                guard,
                eps,
                idx,
                P,
                Q,
                D,
                xn,
                acc,
                mu,
                std,
                mx,
                sm,
                L,
            )
            for k in range(last - first):
                item = first + k
                total = 0.0
                for si in range(ns):
                    total += L[si * ne + 2 * k] - L[si * ne + 2 * k + 1]
                gT[j, nz_rows[item] if item < n_rows else n_in + item - n_rows] = total
            first = last
