"""Delta kernels for deep convolution stacks (:mod:`fastnum._conv_stack_plan` drives them).

A perturbation moves one channel (or unit) of one layer; its change is pushed through
the later ops one by one (:mod:`fastnum.kernels.conv_stack_ops`: the layout, each op's
step and the implicit -h column), and the loss of each sign is computed from the cached
logits plus their change.  This module holds the driver (:func:`_evaluate`,
:func:`_stack_delta_task`) and one shortcut:

A ``conv relu pool affine`` stretch (the last block of the book's DeepConvNet) is
piecewise linear: while no ReLU changes side and no pooling window changes its argmax,
the change of the affine output is one matrix (per sample, :func:`_linear_tail_cache`)
times the change of the convolution's input, which replaces the convolution's whole
scatter.  Each evaluation first proves that no corner is crossed at +h or -h: a
unit's change is at most its filter's absolute sum times the largest change in its
receptive field, windows this bound cannot clear are checked with their units' exact
changes, and when one of them really crosses, the ops run one by one as above.

Each job (one parameter) sums ``L_n(+) - L_n(-)`` over the samples in ascending
order inside one task, so results do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np

from fastnum._jit import njit, run_tasks
from fastnum.kernels._blocks import _zeroed, _zeroed_2d
from fastnum.kernels.conv_stack_ops import (
    AFFINE,
    C_IN,
    C_OUT,
    CONV,
    DROPOUT,
    H_IN,
    H_OUT,
    IN_OFF,
    KH,
    KIND,
    KW,
    OUT_OFF,
    PAD,
    POOL,
    STRIDE,
    W_IN,
    W_OFF,
    W_OUT,
    _clear,
    _negate_into_second,
    _op_act,
    _op_affine,
    _op_conv,
    _op_dropout,
    _op_pool,
    _seed,
)
from fastnum.kernels.losses import column_losses

# Relative slack on the bound of a convolution's change: the computed sum of products
# may exceed the exact one's bound by a few roundings.
_BOUND_SLACK = 1.0 + 1e-9


@njit
def _linear_tail_rows(task, n_tasks, S, wp, ops, a, J):
    """Samples of :func:`_linear_tail_cache` in task ``task`` of ``n_tasks``."""
    C = ops[a, C_IN]
    W = ops[a, W_IN]
    H = ops[a, H_IN]
    FN = ops[a, C_OUT]
    OW = ops[a, W_OUT]
    stride = ops[a, STRIDE]
    pad = ops[a, PAD]
    FH = ops[a, KH]
    FW = ops[a, KW]
    w6 = ops[a, W_OFF]
    r_off = ops[a + 1, OUT_OFF]
    p = a + 2
    PH = ops[p, H_IN]
    PW = ops[p, W_IN]
    ph = ops[p, KH]
    pw = ops[p, KW]
    pstride = ops[p, STRIDE]
    ppad = ops[p, PAD]
    POW = ops[p, W_OUT]
    n_win = ops[p, H_OUT] * POW
    p_off = ops[p, OUT_OFF]
    M = ops[a + 3, C_OUT]
    w7 = ops[a + 3, W_OFF]
    for s in range(task * S.shape[0] // n_tasks, (task + 1) * S.shape[0] // n_tasks):
        Js = J[s]
        for q in range(Js.shape[0]):
            Js[q] = 0.0
        for wq in range(n_win):
            i0 = (wq // POW) * pstride - ppad
            j0 = (wq % POW) * pstride - ppad
            for o in range(FN):
                m = S[s, p_off + wq * FN + o]
                if not m > 0.0:
                    continue
                # The window's argmax: the first unit (scan order) holding the max.
                best = -1
                for da in range(max(0, -i0), min(ph, PH - i0)):
                    for db in range(max(0, -j0), min(pw, PW - j0)):
                        unit = (i0 + da) * PW + j0 + db
                        if best < 0 and S[s, r_off + unit * FN + o] == m:
                            best = unit
                oh = best // OW
                ow = best % OW
                frow = w7 + (wq * FN + o) * M
                for c in range(C):
                    for kh in range(FH):
                        i = oh * stride + kh - pad
                        if i < 0 or i >= H:
                            continue
                        for kw in range(FW):
                            jj = ow * stride + kw - pad
                            if jj < 0 or jj >= W:
                                continue
                            wv = wp[w6 + ((c * FH + kh) * FW + kw) * FN + o]
                            row = ((i * W + jj) * C + c) * M
                            for u in range(M):
                                Js[row + u] += wv * wp[frow + u]


def _linear_tail_cache(S, wp, ops, a, J):
    """J[s] ((H W C) x M, rows channels-last): the map from the change of stage a (the
    last convolution's input) to the change of the first affine layer's output, for
    conv a -> relu -> max pool -> affine while no ReLU or pooling corner is crossed.

    In that region each pooled feature is one conv unit (its window's argmax; a window
    whose max is 0 stays 0), so the map is that unit's filter times the feature's row
    of the affine weights.
    """
    run_tasks(_linear_tail_rows, S.shape[0], S, wp, ops, a, J, min_items=1)


@njit
def _unit_change(s, a, D, wp, ops, o, unit):
    """The change of conv a's output unit (channel o, position unit): its filter over
    the change of its input (column 0), gathered."""
    C = ops[a, C_IN]
    H = ops[a, H_IN]
    W = ops[a, W_IN]
    FN = ops[a, C_OUT]
    OW = ops[a, W_OUT]
    stride = ops[a, STRIDE]
    pad = ops[a, PAD]
    FH = ops[a, KH]
    FW = ops[a, KW]
    w_off = ops[a, W_OFF]
    i_off = ops[a, IN_OFF]
    oh = unit // OW
    ow = unit % OW
    acc = 0.0
    for kh in range(FH):
        i = oh * stride + kh - pad
        if i < 0 or i >= H:
            continue
        for kw in range(FW):
            jj = ow * stride + kw - pad
            if jj < 0 or jj >= W:
                continue
            base = i_off + (i * W + jj) * C
            for c in range(C):
                acc += wp[w_off + ((c * FH + kh) * FW + kw) * FN + o] * D[0, base + c]
    return acc


@njit
def _linear_tail(s, a, S, D, wp, ops, pos, npos, clo, chi, J, n1, mabs, bnd, ex):
    """Stage a + 4 (the first affine output) from stage a's change through J, when no
    corner of conv a -> relu -> pool is crossed at +h or -h; False (nothing written)
    otherwise.

    A unit's change is at most n1[o] (its filter's absolute sum) times the largest
    change in its receptive field; windows that this bound cannot clear are checked
    with their units' exact changes.
    """
    C = ops[a, C_IN]
    H = ops[a, H_IN]
    W = ops[a, W_IN]
    FN = ops[a, C_OUT]
    OH = ops[a, H_OUT]
    OW = ops[a, W_OUT]
    stride = ops[a, STRIDE]
    pad = ops[a, PAD]
    FH = ops[a, KH]
    FW = ops[a, KW]
    i_off = ops[a, IN_OFF]
    z_off = ops[a, OUT_OFF]
    p = a + 2
    ph = ops[p, KH]
    pw = ops[p, KW]
    pstride = ops[p, STRIDE]
    ppad = ops[p, PAD]
    POW = ops[p, W_OUT]
    n_win = ops[p, H_OUT] * POW
    p_off = ops[p, OUT_OFF]
    for q in range(H * W):
        mabs[q] = 0.0
    for d in range(npos[a]):
        q = pos[a, d]
        big = 0.0
        for c in range(clo[a], chi[a]):
            v = abs(D[0, i_off + q * C + c])
            if not v <= big:  # NaN too: it clears no window
                big = v
        mabs[q] = big
    for oh in range(OH):
        for ow in range(OW):
            big = 0.0
            for kh in range(FH):
                i = oh * stride + kh - pad
                if i < 0 or i >= H:
                    continue
                for kw in range(FW):
                    jj = ow * stride + kw - pad
                    if 0 <= jj < W and not mabs[i * W + jj] <= big:
                        big = mabs[i * W + jj]
            bnd[oh * OW + ow] = big * _BOUND_SLACK
    for wq in range(n_win):
        i0 = (wq // POW) * pstride - ppad
        j0 = (wq % POW) * pstride - ppad
        a_lo = max(0, -i0)
        a_hi = min(ph, OH - i0)
        b_lo = max(0, -j0)
        b_hi = min(pw, OW - j0)
        moved = False
        for da in range(a_lo, a_hi):
            for db in range(b_lo, b_hi):
                if bnd[(i0 + da) * OW + j0 + db] != 0.0:
                    moved = True
        if not moved:  # no unit of the window changes (a tie stays a tie): nothing moves
            continue
        for o in range(FN):
            m = S[s, p_off + wq * FN + o]
            nb = n1[o]
            best = -1
            if m > 0.0:
                for da in range(a_lo, a_hi):
                    for db in range(b_lo, b_hi):
                        unit = (i0 + da) * OW + j0 + db
                        if best < 0 and S[s, z_off + unit * FN + o] == m:
                            best = unit
                low = m - nb * bnd[best]
                clear = low > 0.0
                for da in range(a_lo, a_hi):
                    for db in range(b_lo, b_hi):
                        unit = (i0 + da) * OW + j0 + db
                        if unit != best:
                            up = S[s, z_off + unit * FN + o] + nb * bnd[unit]
                            if not up < low:
                                clear = False
            else:
                clear = True
                for da in range(a_lo, a_hi):
                    for db in range(b_lo, b_hi):
                        unit = (i0 + da) * OW + j0 + db
                        if not S[s, z_off + unit * FN + o] + nb * bnd[unit] <= 0.0:
                            clear = False
            if clear:
                continue
            # The bound cannot clear the window: its units' exact changes decide.
            e = 0
            for da in range(a_lo, a_hi):
                for db in range(b_lo, b_hi):
                    ex[e] = _unit_change(s, a, D, wp, ops, o, (i0 + da) * OW + j0 + db)
                    e += 1
            for sign in (1.0, -1.0):
                if best >= 0:
                    e = 0
                    top = 0.0
                    for da in range(a_lo, a_hi):
                        for db in range(b_lo, b_hi):
                            if (i0 + da) * OW + j0 + db == best:
                                top = m + sign * ex[e]
                            e += 1
                    if not top > 0.0:
                        return False
                e = 0
                for da in range(a_lo, a_hi):
                    for db in range(b_lo, b_hi):
                        unit = (i0 + da) * OW + j0 + db
                        v = S[s, z_off + unit * FN + o] + sign * ex[e]
                        e += 1
                        if best < 0:
                            if not v <= 0.0:
                                return False
                        elif unit != best and not v < top:
                            return False
    M = ops[a + 3, C_OUT]
    h_off = ops[a + 3, OUT_OFF]
    out = D[0, h_off : h_off + M]
    Js = J[s]
    for d in range(npos[a]):
        q = pos[a, d]
        for c in range(clo[a], chi[a]):
            dv = D[0, i_off + q * C + c]
            if dv != 0.0:
                row = (q * C + c) * M
                for u in range(M):
                    out[u] += dv * Js[row + u]
    for st in range(a + 1, a + 4):
        npos[st] = 0
    pos[a + 4, 0] = 0
    npos[a + 4] = 1
    clo[a + 4] = 0
    chi[a + 4] = M
    return True


@njit
def _evaluate(
    s, job, S, mk, wp, ops, t, h, guard, D, pos, npos, clo, chi, mark, z, mx, sm, res, lin
):
    """L_s(theta + h e) - L_s(theta - h e) of sample s for one job.

    ``lin`` is (a, J, n1, mabs, bnd, ex): the linear stretch of :func:`_linear_tail`
    from stage a (a = -1: none).
    """
    a, J, n1, mabs, bnd, ex = lin
    n_ops = ops.shape[0]
    k = job[0]
    _seed(s, job, S, D, ops, pos, npos, clo, chi, h)
    ncol = 1
    diff = 0.0
    alive = npos[k + 1] > 0
    o = k + 1
    while alive and o < n_ops:
        kind = ops[o, KIND]
        if (
            o == a
            and ncol == 1
            and _linear_tail(s, a, S, D, wp, ops, pos, npos, clo, chi, J, n1, mabs, bnd, ex)
        ):
            o = a + 4
            continue
        if kind == CONV:
            _op_conv(o, D, wp, ops, pos, npos, clo, chi, ncol, mark)
        elif kind == AFFINE:
            _op_affine(o, D, wp, ops, pos, npos, clo, chi, ncol)
        elif kind == DROPOUT:
            _op_dropout(s, o, mk, D, ops, pos, npos, clo, chi, ncol)
        elif kind == POOL:
            if _op_pool(s, o, S, D, ops, pos, npos, clo, chi, ncol, mark):
                _negate_into_second(o, D, ops, pos, npos, clo, chi)
                ncol = 2
                _op_pool(s, o, S, D, ops, pos, npos, clo, chi, ncol, mark)
        elif _op_act(s, o, S, D, ops, pos, npos, clo, chi, ncol):
            _negate_into_second(o, D, ops, pos, npos, clo, chi)
            ncol = 2
            _op_act(s, o, S, D, ops, pos, npos, clo, chi, ncol)
        alive = npos[o + 1] > 0
        o += 1
    if alive:
        K = ops[n_ops - 1, C_OUT]
        off = ops[n_ops - 1, OUT_OFF]
        for c in range(K):
            zc = S[s, off + c]
            z[c, 0] = zc + D[0, off + c]
            z[c, 1] = zc + D[1, off + c] if ncol == 2 else zc - D[0, off + c]
        column_losses(z, K, 2, t[s], guard, mx, sm, res)
        diff = res[0] - res[1]
    _clear(k, n_ops, D, ops, pos, npos, clo, chi)
    return diff


@njit
def _stack_delta_task(task, n_tasks, jobs, S, mk, wp, ops, t, h, guard, max_pos, lin_a, J, n1, out):
    """out[j] += sum_n (L_n(+) - L_n(-)) for every job j of this task (jobs task, task +
    n_tasks, ...), samples in ascending order (``out`` starts at zero).

    A job is (op k, output channel or unit f, input channel c or channels-last input
    row, tap kh * FW + kw); c = -1 is the bias of f.  One task of ``n_tasks`` (run side
    by side by fastnum.engine._run_tasks).
    """
    n_ops = ops.shape[0]
    D = _zeroed_2d(np.empty((2, S.shape[1])))
    pos = _zeroed_2d(np.empty((n_ops + 1, max_pos), dtype=np.int64))
    npos = _zeroed(np.empty(n_ops + 1, dtype=np.int64))
    clo = _zeroed(np.empty(n_ops + 1, dtype=np.int64))
    chi = _zeroed(np.empty(n_ops + 1, dtype=np.int64))
    mark = _zeroed(np.empty(max_pos, dtype=np.int8))
    K = ops[n_ops - 1, C_OUT]
    z = np.empty((K, 2))
    mx = np.empty(2)
    sm = np.empty(2)
    res = np.empty(2)
    win = ops[lin_a + 2, KH] * ops[lin_a + 2, KW] if lin_a >= 0 else 1
    lin = (lin_a, J, n1, np.empty(max_pos), np.empty(max_pos), np.empty(win))
    # Samples outermost: one sample's stages and matrix stay in cache for all the jobs
    # (jobs outermost ran 1.9x slower per sample at batch 10 than at batch 2).
    for s in range(S.shape[0]):
        for j in range(task, jobs.shape[0], n_tasks):
            out[j] += _evaluate(
                s,
                jobs[j],
                S,
                mk,
                wp,
                ops,
                t,
                h,
                guard,
                D,
                pos,
                npos,
                clo,
                chi,
                mark,
                z,
                mx,
                sm,
                res,
                lin,
            )
