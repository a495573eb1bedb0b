"""Corner-aware delta gradient of dense ReLU stacks: ``affine (relu affine)+`` + softmax loss.

A ReLU network is exactly linear between its corners.  For one sample, a
perturbation of ``W_l[r, j]`` (or ``b_l[j]``) moves the pre-activation ``z_l[j]``
by ``delta = +-h a_{l-1}[r]`` (``+-h`` for the bias).  Unit ``j``'s activation
then moves by ``chg = relu(z_l[j] + delta) - a_l[j]`` (|chg| <= |delta|), and as long
as no unit *after* layer ``l`` crosses its corner, every later pre-activation moves
by ``chg`` times a column of ``P_{m<-l} = d z_m / d a_l[j]``, the product of the
weights through the units that are on in this sample.  So the perturbed logits
are the cached logits plus ``chg * J[:, j]`` (``J`` the logits' column), and the
loss is one softmax cross-entropy of those logits; no layer is re-run.

Whether a corner can be crossed is decided exactly, per sample, unit and sign of
the step (a later unit moving away from its corner cannot cross it): with
``tau_j = min over later hidden units k moving towards their corner of
|z_m[k]| / |P_{m<-l}[k, j]|`` (shrunk by a relative 1e-9), every ``|delta| <
tau_j`` leaves every later unit on its side (by induction over the layers, the
change each one sees is exactly ``chg * P``).  Unit ``j`` itself may cross: the
relu in ``chg`` is exact.  The other evaluations (``|delta| >= tau_j``, and a unit
that is off but within ``|delta|`` of its corner, whose ``J`` is not cached) take
the exact path, :func:`_exact_losses`: the change stays ``chg * P`` up to the first
layer where a unit may cross, and from there every layer is recomputed from its
cached pre-activation plus the activation changes (every relu applied), as the
engine's delta kernel does, so kinks within ``h`` are evaluated, never
linearised.  A unit that is off and stays off (``z + |delta| <= 0``) changes
nothing: its difference is exactly 0, as in a brute-force evaluation.  The
decisions near a corner are as good as the rounding of ``z`` and ``P``; a ReLU
network is continuous, so a decision that rounding flips changes a loss by a
rounding-sized amount only.  Per-sample losses of +h and -h are differenced,
then summed over samples in ascending order.

How fast it is against the engine's generic delta kernel: ``python -m benchmarks.dense_relu``
(side by side; the README's chapter 8 table gives a run).  The caches of 784-100x4-10 and
784-100x6-10 take 10.8 MiB and 14.0 MiB at batch 100 (:func:`cache_bytes`).

Evaluations are shared: the inputs of a layer that have the same magnitude (an
MNIST digit has ~65 distinct values among ~147 non-zero pixels; a bias's input
is 1) give the same two losses, computed once per (sample, unit); a negative
input's difference is the positive one's negated (exact in floating point).

Layout and order: the dense tail is packed as in :mod:`fastnum.kernels.layered`
(``w``/``b`` with per-layer offsets, ``Z``/``A`` per layer at ``z_off[l] + s *
d_{l+1}``).  Samples are processed in blocks of :data:`BLOCK` (the caches are
per block); the gradient cell ``(W_l[r, j])`` is owned by the task of unit ``j``
and receives its per-sample differences in ascending sample order, so results
do not depend on the thread count.  Inputs are trusted (float64, C-contiguous,
finite cached pass; :func:`engine_gradient` declines anything else).
"""

from __future__ import annotations

import numpy as np

from fastnum._jit import njit, run_tasks
from fastnum.kernels._blocks import NONE, RELU, _act
from fastnum.kernels.dense_delta import _logit_step_losses
from fastnum.kernels.layered import _tail_cache
from fastnum.kernels.losses import column_losses

#: Samples per block: the per-sample caches (pre-activations, Jacobian rows, input
#: groups) are allocated for one block at a time.
BLOCK = 256

#: Relative shrink of each unit's corner distance: rounding of ``z`` and ``P`` never
#: turns a crossing into a linear step by more than this.
_MARGIN = 1e-9

#: Set False to send dense ReLU stacks to the engine's generic delta kernel instead
#: (the benchmark's side-by-side comparison, and tests).
ENABLED = True


# ---------------------------------------------------------------------------- kernels


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
            order = np.argsort(mag[:cnt], kind="mergesort")
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
    eye = np.zeros(k_out)
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


# ---------------------------------------------------------------------------- driver


def _offsets(counts):
    """Exclusive prefix sums of ``counts`` (length len(counts) + 1), int64."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=out[1:])
    return out


def _finite_pass(Z, logits_at, t, guard):
    """Whether the cached pass is finite and so is every sample's loss (a sample whose
    loss is inf makes every central difference NaN, as the engine computes them)."""
    if not np.isfinite(Z).all():
        return False
    logits = Z[int(logits_at) :].reshape(len(t), -1)
    with np.errstate(all="ignore"):  # an underflowed probability is what this looks for
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        y = e[np.arange(len(t)), t] / e.sum(axis=1)
        return bool(np.isfinite(np.log(y + guard)).all())


def numerical_gradient_trusted(weights, biases, x, t, h, log_guard):
    """Central-difference gradient of the batch-mean loss of a dense ReLU stack.

    Parameters
    ----------
    weights, biases : list of ndarray
        ``W_1 .. W_L`` (float64 (d_{l-1}, d_l), C-contiguous) and ``b_1 .. b_L``; relu
        after every layer but the last, then softmax with cross-entropy.
    x : ndarray, float64 (N, d_0), C-contiguous
    t : ndarray of int64, (N,)
    h : float
    log_guard : float

    Returns
    -------
    list of (ndarray, ndarray) or None
        The gradients ``(dW_l, db_l)`` per layer, or None when a cached pre-activation
        or a sample's loss is not finite (the caller's general kernels handle that case:
        the engine's gradients are then NaN).
    """
    n_layers = len(weights)
    n = x.shape[0]
    sizes = np.array([weights[0].shape[0]] + [W.shape[1] for W in weights], dtype=np.int64)
    w = np.concatenate([W.ravel() for W in weights])
    b = np.concatenate([np.ravel(v) for v in biases])
    w_off = _offsets(sizes[:-1] * sizes[1:])[:-1]
    b_off = _offsets(sizes[1:])[:-1]
    acts = np.array([RELU] * (n_layers - 1) + [NONE], dtype=np.int64)
    hid_off = _offsets(sizes[1:-1])
    unit_off = _offsets(sizes[1:])
    g_off = _offsets(sizes[1:] * (sizes[:-1] + 1))
    width = int(sizes[1:].max())
    max_g = int(sizes[:-1].max()) + 1
    gsum = np.zeros(int(g_off[-1]))
    for start in range(0, n, BLOCK):
        xb = x[start : start + BLOCK]
        tb = t[start : start + BLOCK]
        nb = xb.shape[0]
        z_off = _offsets(nb * sizes[1:])[:-1]
        Z = np.empty(nb * int(sizes[1:].sum()))
        A = np.empty_like(Z)
        _tail_cache(xb, w, b, w_off, b_off, sizes, acts, z_off, Z, A)
        if not _finite_pass(Z, z_off[-1], tb, log_guard):
            return None
        in_off = _offsets(nb * (sizes[:-1] + 1))[:-1]
        n_slots = int(nb * (sizes[:-1] + 1).sum())
        gcount = np.empty(n_layers * nb, dtype=np.int64)
        gval = np.empty(n_slots)
        gend = np.empty(n_slots, dtype=np.int64)
        grow = np.empty(n_slots, dtype=np.int64)
        gsgn = np.empty(n_slots)
        run_tasks(_groups_task, nb, xb, A, sizes, z_off, in_off, gcount, gval, gend, grow, gsgn)
        T = np.empty((nb, int(hid_off[-1]), 2))
        J = np.zeros((nb, int(hid_off[-1]), int(sizes[-1])))
        run_tasks(_jacobian_task, nb, nb, w, w_off, sizes, z_off, Z, hid_off, width, T, J)
        tail = (w, w_off, sizes, acts, z_off, Z, A)
        run_tasks(
            _eval_task,
            int(unit_off[-1]),
            nb,
            tail,
            tb,
            float(h),
            float(log_guard),
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
        )
        del tail, Z, A, gcount, gval, gend, grow, gsgn, T, J  # before the next block's
    gsum *= 1.0 / (2.0 * h * n)
    grads = []
    for layer in range(n_layers):
        n_in, n_out = int(sizes[layer]), int(sizes[layer + 1])
        gT = gsum[g_off[layer] : g_off[layer + 1]].reshape(n_out, n_in + 1)
        grads.append((np.ascontiguousarray(gT[:, :n_in].T), gT[:, n_in].copy()))
    return grads


#: Python objects of a call beyond its arrays (the thread pool, the tasks' futures),
#: per thread: measured 3 KiB at 1 thread, 19 KiB at 2 (tracemalloc).
_PYTHON_BYTES_PER_THREAD = 12 * 1024


def per_sample_bytes(sizes):
    """Bytes :func:`numerical_gradient_trusted` allocates per sample of a block.

    Pre-activations and activations (``16 sum d_l``, l >= 1), the input groups
    (``32 sum (d_l + 1)``, l < L), the corner distances (``16 H``) and Jacobian rows
    (``8 H d_L``), H the hidden units; ``sizes`` the widths d_0 .. d_L.
    """
    sizes = [int(v) for v in sizes]
    hidden = sum(sizes[1:-1])
    return (
        16 * sum(sizes[1:])
        + 32 * sum(d + 1 for d in sizes[:-1])
        + 16 * hidden
        + 8 * hidden * sizes[-1]
    )


def fixed_bytes(sizes, threads=1):
    """Bytes :func:`numerical_gradient_trusted` allocates whatever the batch.

    The packed weights, the gradient accumulator and the gradients copied out of it
    (``24`` bytes per parameter); per running task the Jacobian task's two ``width x
    width`` blocks or the evaluation task's buffers (``8 (d_L + 5)`` values per
    evaluation column, 2 (max d_l + 1) columns), whichever is larger, and the call's
    Python objects (:data:`_PYTHON_BYTES_PER_THREAD`).
    """
    sizes = [int(v) for v in sizes]
    n_params = sum((sizes[k] + 1) * sizes[k + 1] for k in range(len(sizes) - 1))
    width = max(sizes[1:])
    columns = 2 * (max(sizes[:-1]) + 1)
    task = max(16 * width * width, 8 * (sizes[-1] + 5) * columns + 32 * width)
    return 24 * n_params + int(threads) * (task + _PYTHON_BYTES_PER_THREAD)


def cache_bytes(sizes, batch, threads=1):
    """Bytes :func:`numerical_gradient_trusted` allocates for widths ``sizes`` (d_0 .. d_L)
    at a batch of ``batch`` on ``threads`` threads: :func:`fixed_bytes` plus
    :func:`per_sample_bytes` for each sample of one block (at most :data:`BLOCK`)."""
    return fixed_bytes(sizes, threads) + per_sample_bytes(sizes) * min(int(batch), BLOCK)


def stack_sizes(stack, shapes):
    """The widths d_0 .. d_L of a stack :func:`engine_gradient` takes, else None.

    ``shapes`` maps parameter names to shapes.
    """
    names = relu_stack_names(stack)
    if names is None:
        return None
    return [int(shapes[names[0][0]][0])] + [int(shapes[wn][1]) for wn, _ in names]


def relu_stack_names(stack):
    """[(W_name, b_name), ...] when the stack is ``affine (relu affine)+`` with at least
    two hidden layers, else None (the engine runs one on the two-layer kernels)."""
    kinds = tuple(spec[0] for spec in stack)
    n_hidden = len(kinds) // 2
    if n_hidden < 2 or kinds != ("affine", "relu") * n_hidden + ("affine",):
        return None
    return [(spec[1], spec[2]) for spec in stack[0::2]]


def engine_gradient(stack, params, x, t, h, log_guard):
    """The engine's ``delta`` gradient of a dense ReLU stack, or None when not covered.

    ``stack``/``params``/``x``/``t`` as :func:`fastnum.engine.numerical_gradient` takes
    them (trusted).  None for any other stack, when :data:`ENABLED` is False, and
    when the cached pass or a loss is not finite (the engine's delta then gives NaN
    gradients).
    """
    names = relu_stack_names(stack) if ENABLED and x.ndim == 2 else None
    if names is None:
        return None
    weights = [params[wn] for wn, _ in names]
    biases = [params[bn] for _, bn in names]
    grads = numerical_gradient_trusted(weights, biases, x, t, h, log_guard)
    if grads is None:
        return None
    out = {}
    for (wn, bn), (gw, gb) in zip(names, grads, strict=True):
        out[wn] = gw
        out[bn] = gb.reshape(params[bn].shape)
    return out
