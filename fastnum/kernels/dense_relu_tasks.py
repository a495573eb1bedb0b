"""The tasks of the corner-aware dense ReLU gradient (:mod:`fastnum.kernels.dense_relu`).

Three serial ``nogil`` task kernels, run by :func:`fastnum._jit.run_tasks` on one block
of samples: :func:`_groups_task` groups each layer's inputs by magnitude,
:func:`_jacobian_task` caches each sample's logit columns ``J`` and how far each unit
may move without crossing a later corner, and :func:`_eval_task` evaluates the perturbed
losses (on the line where no later corner can be crossed, :func:`_line_losses`; else
exactly, :func:`_exact_losses`) and adds their differences to the gradient.  The
algorithm, the layout and the order of the sums are in
:mod:`fastnum.kernels.dense_relu`'s docstring.
"""

from __future__ import annotations

import numpy as np

from fastnum._jit import njit
from fastnum.kernels._blocks import RELU, _act, _stable_argsort, _zeroed
from fastnum.kernels.dense_delta import _logit_step_losses
from fastnum.kernels.losses import column_losses

#: Relative shrink of each unit's corner distance: rounding of ``z`` and ``P`` never
#: turns a crossing into a linear step by more than this.
_MARGIN = 1e-9


@njit
def _groups_task(task, n_tasks, x, A, sizes, z_off, in_off, gcount, gval, gend, grow, gsgn):
    """For each (layer l, sample s): the distinct |inputs| of layer l (non-zero inputs and
    the bias's 1) in ascending order, gval[base:base + G], and their members: rows
    grow[...] (n_in for the bias) with signs gsgn[...], group g ending at gend[base + g].

    ``base = in_off[l] + s * (n_in + 1)``; G is gcount[l * n + s].  One task of
    ``n_tasks`` owns samples task, task + n_tasks, ...
    """
    n = x.shape[0]
    n_layers = sizes.shape[0] - 1
    width = 1
    for layer in range(n_layers):
        width = max(width, sizes[layer] + 1)
    mag = np.empty(width)
    rows = np.empty(width, dtype=np.int64)
    sgn = np.empty(width)
    order = np.empty(width, dtype=np.int64)
    spare = np.empty(width, dtype=np.int64)
    for s in range(task, n, n_tasks):
        for layer in range(n_layers):
            n_in = sizes[layer]
            base = in_off[layer] + s * (n_in + 1)
            cnt = 0
            for r in range(n_in):
                if layer == 0:
                    v = x[s, r]
                else:
                    v = A[z_off[layer - 1] + s * n_in + r]
                if v != 0.0:
                    mag[cnt] = abs(v)
                    rows[cnt] = r
                    sgn[cnt] = 1.0 if v > 0.0 else -1.0
                    cnt += 1
            mag[cnt] = 1.0  # the bias
            rows[cnt] = n_in
            sgn[cnt] = 1.0
            cnt += 1
            _stable_argsort(mag, cnt, order, spare)
            n_groups = 0
            for p in range(cnt):
                q = order[p]
                grow[base + p] = rows[q]
                gsgn[base + p] = sgn[q]
                if n_groups == 0 or mag[q] != gval[base + n_groups - 1]:
                    gval[base + n_groups] = mag[q]
                    n_groups += 1
                gend[base + n_groups - 1] = p + 1
            gcount[layer * n + s] = n_groups


@njit
def _jacobian_task(task, n_tasks, n, w, w_off, sizes, z_off, Z, hid_off, width, T, J):
    """For every sample s and unit j that is on in hidden layer l: J[s, hid_off[l] + j]
    = d logits / d a_l[j] through the units on in s, and T[s, hid_off[l] + j, side]
    the largest increase (side 0) or decrease (side 1) of a_l[j] that provably crosses
    no corner after layer l (-1 when the products are not finite: every evaluation
    then takes the exact path; -1 too for the units that are off).

    One task of ``n_tasks`` owns samples task, task + n_tasks, ...
    """
    n_layers = sizes.shape[0] - 1
    k_out = sizes[n_layers]
    P = np.empty((width, width))
    P2 = np.empty((width, width))
    units = np.empty(width, dtype=np.int64)
    on = np.empty(width, dtype=np.int64)
    tau = np.empty((width, 2))
    for s in range(task, n, n_tasks):
        for layer in range(n_layers - 1):
            d = sizes[layer + 1]
            zl = z_off[layer] + s * d
            n_units = 0
            for j in range(d):
                T[s, hid_off[layer] + j, 0] = -1.0
                T[s, hid_off[layer] + j, 1] = -1.0
                if Z[zl + j] > 0.0:
                    units[n_units] = j
                    n_units += 1
            if n_units == 0:
                continue
            n_next = sizes[layer + 2]
            for a in range(n_units):
                start = w_off[layer + 1] + units[a] * n_next
                src_row = w[start : start + n_next]
                for c in range(n_next):
                    P[a, c] = src_row[c]
                tau[a, 0] = np.inf
                tau[a, 1] = np.inf
            src = P
            dst = P2
            m = layer + 1
            while m < n_layers - 1:
                dm = sizes[m + 1]
                zm = z_off[m] + s * dm
                zrow = Z[zm : zm + dm]
                # A later unit k moves by chg * P[k]: away from its corner for one sign
                # of chg, towards it for the other, where it stays on its side while
                # |chg| * |P[k]| < |z_m[k]| (a zero entry bounds nothing).
                for a in range(n_units):
                    tp = tau[a, 0]
                    tm = tau[a, 1]
                    for k in range(dm):
                        p = src[a, k]
                        if p == 0.0:
                            continue
                        z = zrow[k]
                        az = abs(z)
                        ap = abs(p)
                        if (z > 0.0) == (p < 0.0):  # chg > 0 moves it towards 0
                            if ap * tp > az:
                                tp = az / ap
                        elif ap * tm > az:
                            tm = az / ap
                    tau[a, 0] = tp
                    tau[a, 1] = tm
                n_on = 0
                for k in range(dm):
                    if zrow[k] > 0.0:
                        on[n_on] = k
                        n_on += 1
                d2 = sizes[m + 2]
                # Four rows at a time share each weight row's loads; every out[c] is
                # still its own sum over k in ascending order.
                for a0 in range(0, n_units, 4):
                    n_rows = min(4, n_units - a0)
                    for a in range(a0, a0 + n_rows):
                        for c in range(d2):
                            dst[a, c] = 0.0
                    if n_rows < 4:
                        for a in range(a0, a0 + n_rows):
                            out = dst[a, :d2]
                            for i in range(n_on):
                                k = on[i]
                                pk = src[a, k]
                                start = w_off[m + 1] + k * d2
                                wrow = w[start : start + d2]
                                for c in range(d2):
                                    out[c] += pk * wrow[c]
                        continue
                    out0 = dst[a0, :d2]
                    out1 = dst[a0 + 1, :d2]
                    out2 = dst[a0 + 2, :d2]
                    out3 = dst[a0 + 3, :d2]
                    for i in range(n_on):
                        k = on[i]
                        p0 = src[a0, k]
                        p1 = src[a0 + 1, k]
                        p2 = src[a0 + 2, k]
                        p3 = src[a0 + 3, k]
                        start = w_off[m + 1] + k * d2
                        wrow = w[start : start + d2]
                        for c in range(d2):
                            wc = wrow[c]
                            out0[c] += p0 * wc
                            out1[c] += p1 * wc
                            out2[c] += p2 * wc
                            out3[c] += p3 * wc
                src, dst = dst, src
                m += 1
            for a in range(n_units):
                cell = hid_off[layer] + units[a]
                finite = tau[a, 0] == tau[a, 0] and tau[a, 1] == tau[a, 1]
                for c in range(k_out):
                    v = src[a, c]
                    J[s, cell, c] = v
                    if not (abs(v) < np.inf):
                        finite = False
                for side in range(2):
                    T[s, cell, side] = tau[a, side] * (1.0 - _MARGIN) if finite else -1.0


@njit
def _line_losses(Z, zs, k_out, jrow, chg, n_q, label, guard, z1, mx, sm, out):
    """out[q] = loss when the logits Z[zs:zs + k_out] move by chg[q] * jrow (q < n_q)."""
    if _logit_step_losses(Z, zs, k_out, jrow, 0, chg, n_q, label, guard, mx, sm, out):
        return
    for c in range(k_out):  # steps too large for the cached exponentials
        zc = Z[zs + c]
        jc = jrow[c]
        for q in range(n_q):
            z1[c, q] = zc + chg[q] * jc
    column_losses(z1, k_out, n_q, label, guard, mx, sm, out)


@njit
def _exact_losses(
    layer, j, s, chg, n_q, sign, tail, t, guard, pcol, pnext, zq, znext, zl, mx, sm, out
):
    """out[q] = loss of sample s when a_layer[j] moves by chg[q] (q < n_q, each 0 or of
    the given sign), every later relu applied: linear (``chg * P``) through the layers
    where no unit can cross its corner for the largest |chg|, then layer by layer from
    the first where one may.

    ``pcol``, ``pnext``, ``zq``, ``znext`` hold ``width`` values, ``zl`` (k_out, n_q)
    the logits; ``tail`` as for :func:`fastnum.kernels.layered._propagate`.
    """
    w, w_off, sizes, acts, z_off, Z, A = tail
    n_layers = sizes.shape[0] - 1
    k_out = sizes[n_layers]
    cmax = 0.0
    for q in range(n_q):
        cmax = max(cmax, abs(chg[q]))
    m = layer + 1
    d = sizes[m + 1]
    start = w_off[m] + j * d
    wrow = w[start : start + d]
    for c in range(d):
        pcol[c] = wrow[c]
    while m < n_layers - 1:
        zrow = Z[z_off[m] + s * d : z_off[m] + (s + 1) * d]
        cross = False
        for k in range(d):
            p = pcol[k]
            z = zrow[k]
            # Units moving away from their corner cannot cross it.  Not "<": a unit at
            # exactly 0 (or an overflowed product) takes the exact path.
            towards = (z > 0.0) == (sign * p < 0.0)
            if (towards or not abs(p) < np.inf) and not (cmax * abs(p) < abs(z)):
                cross = True
                break
        if cross:
            break
        d2 = sizes[m + 2]
        for c in range(d2):
            pnext[c] = 0.0
        for k in range(d):
            pk = pcol[k]
            if zrow[k] > 0.0 and pk != 0.0:
                start = w_off[m + 1] + k * d2
                wrow = w[start : start + d2]
                for c in range(d2):
                    pnext[c] += pk * wrow[c]
        for c in range(d2):
            pcol[c] = pnext[c]
        m += 1
        d = d2
    zs = z_off[n_layers - 1] + s * k_out
    if m == n_layers - 1:  # no corner can be crossed: the logits move along pcol
        _line_losses(Z, zs, k_out, pcol, chg, n_q, t[s], guard, zl, mx, sm, out)
        return
    for q in range(n_q):
        cq = chg[q]
        zstart = z_off[m] + s * d
        for k in range(d):
            zq[k] = Z[zstart + k] + cq * pcol[k]
        mm = m
        dd = d
        while True:
            d2 = sizes[mm + 2]
            zn = z_off[mm + 1] + s * d2
            for c in range(d2):
                znext[c] = Z[zn + c]
            am = z_off[mm] + s * dd
            for k in range(dd):
                dk = _act(zq[k], RELU) - A[am + k]
                if dk != 0.0:  # a unit that did not move adds exactly nothing
                    start = w_off[mm + 1] + k * d2
                    wrow = w[start : start + d2]
                    for c in range(d2):
                        znext[c] += dk * wrow[c]
            mm += 1
            dd = d2
            if mm == n_layers - 1:
                break
            for c in range(dd):
                zq[c] = znext[c]
        for c in range(k_out):
            zl[c, q] = znext[c]
    column_losses(zl, k_out, n_q, t[s], guard, mx, sm, out)


@njit
def _scatter(gsum, gbase, grow, gsgn, gend, base, g_lo, g_hi, out, half):
    """Add each group's difference out[g] - out[half + g] to its members' cells."""
    for g in range(g_lo, g_hi):
        diff = out[g] - out[half + g]
        start = base if g == 0 else base + gend[base + g - 1]
        for p in range(start, base + gend[base + g]):
            gsum[gbase + grow[p]] += gsgn[p] * diff


@njit
def _eval_task(
    task,
    n_tasks,
    n,
    tail,
    t,
    h,
    guard,
    in_off,
    gcount,
    gval,
    gend,
    grow,
    gsgn,
    hid_off,
    T,
    J,
    unit_off,
    g_off,
    max_g,
    width,
    gsum,
):
    """gsum[g_off[l] + j * (n_in + 1) + r] += sum_s L_s(+) - L_s(-) for W_l[r, j] (r < n_in)
    and b_l[j] (r = n_in), samples in ascending order.

    One task of ``n_tasks`` owns the units u = task, task + n_tasks, ... of all layers
    (unit j of layer l is u = unit_off[l] + j).  ``tail`` as for
    :func:`fastnum.kernels.layered._propagate`.
    """
    w, w_off, sizes, acts, z_off, Z, A = tail
    n_layers = sizes.shape[0] - 1
    k_out = sizes[n_layers]
    n_q_max = 2 * max_g
    chg = np.empty(n_q_max)
    out = np.empty(n_q_max)
    both = np.empty(n_q_max)
    mx = np.empty(n_q_max)
    sm = np.empty(n_q_max)
    z1 = np.empty((k_out, n_q_max))
    pcol = np.empty(width)
    pnext = np.empty(width)
    zq = np.empty(width)
    znext = np.empty(width)
    eye = _zeroed(np.empty(k_out))
    layer = 0
    for u in range(task, unit_off[n_layers], n_tasks):
        while u >= unit_off[layer + 1]:
            layer += 1
        j = u - unit_off[layer]
        n_in = sizes[layer]
        n_out = sizes[layer + 1]
        gbase = g_off[layer] + j * (n_in + 1)
        hidden = layer < n_layers - 1
        zs = z_off[n_layers - 1]  # the logits of sample s at zs + s * k_out
        for s in range(n):
            n_groups = gcount[layer * n + s]
            base = in_off[layer] + s * (n_in + 1)
            vals = gval[base : base + n_groups]
            if not hidden:
                # A logit moves by delta itself: a line along e_j, never a corner.
                for g in range(n_groups):
                    chg[g] = h * vals[g]
                    chg[n_groups + g] = -h * vals[g]
                eye[j] = 1.0
                _line_losses(
                    Z, zs + s * k_out, k_out, eye, chg, 2 * n_groups, t[s], guard, z1, mx, sm, out
                )
                eye[j] = 0.0
                _scatter(gsum, gbase, grow, gsgn, gend, base, 0, n_groups, out, n_groups)
                continue
            zj = Z[z_off[layer] + s * n_out + j]
            aj = A[z_off[layer] + s * n_out + j]
            zsl = zs + s * k_out
            lo = 0  # groups [0, lo): nothing moves (an off unit that stays off)
            if zj <= 0.0:
                if zj + h * vals[n_groups - 1] <= 0.0:  # off before and after every step
                    continue
                while zj + h * vals[lo] <= 0.0:
                    lo += 1
            # Losses at +h (both[g]) and -h (both[n_groups + g]) for the groups g >= lo.
            for side in range(2):
                sign = 1.0 if side == 0 else -1.0
                at = side * n_groups
                if zj <= 0.0 and side == 1:  # an off unit stepped down stays off
                    chg[0] = 0.0
                    _line_losses(Z, zsl, k_out, eye, chg, 1, t[s], guard, z1, mx, sm, out)
                    for g in range(lo, n_groups):
                        both[at + g] = out[0]
                    continue
                for g in range(lo, n_groups):
                    chg[g] = _act(zj + sign * h * vals[g], RELU) - aj
                # [lo, hi): linear in chg (no later corner within reach); [hi, n_groups):
                # the exact path.  Only units that are on have a Jacobian row.
                hi = lo
                if zj > 0.0:
                    tau = T[s, hid_off[layer] + j, side]
                    while hi < n_groups and h * vals[hi] < tau:
                        hi += 1
                if hi > lo:
                    jrow = J[s, hid_off[layer] + j]
                    _line_losses(
                        Z, zsl, k_out, jrow, chg[lo:hi], hi - lo, t[s], guard, z1, mx, sm, out
                    )
                    for g in range(lo, hi):
                        both[at + g] = out[g - lo]
                if hi < n_groups:
                    _exact_losses(
                        layer,
                        j,
                        s,
                        chg[hi:n_groups],
                        n_groups - hi,
                        sign,
                        tail,
                        t,
                        guard,
                        pcol,
                        pnext,
                        zq,
                        znext,
                        z1,
                        mx,
                        sm,
                        out,
                    )
                    for g in range(hi, n_groups):
                        both[at + g] = out[g - hi]
            _scatter(gsum, gbase, grow, gsgn, gend, base, lo, n_groups, both, n_groups)
