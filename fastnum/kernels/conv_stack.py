"""Delta kernels for deep convolution stacks (:mod:`fastnum._conv_stack_plan` drives them).

Layout
------
Every per-sample tensor is a flat row in *channels-last* order: stage ``(C, H, W)``
at spatial position ``p = i * W + j`` holds channel ``c`` at ``p * C + c``, so the
C values of one position are contiguous (the scatter of a convolution runs over
output channels in its innermost loop).  A dense stage is ``(M, 1, 1)``: one
position.  ``S`` (N, total) holds every stage of the unperturbed pass (stage 0 the
input, stage ``o + 1`` the output of op ``o``), ``mk`` (N, ...) the dropout masks in
the same layout and ``wp`` the packed weights: a convolution's ``(C, FH, FW, FN)``,
an affine layer's ``(D, M)`` with its rows permuted into the input's channels-last
order.

Delta evaluation
----------------
A perturbation of conv layer k's parameter moves one output channel of that layer,
by ``h * x`` over the positions where its input tap is non-zero (the bias: by ``h``
everywhere); an affine parameter W[r, j] moves unit j by ``h * a_r``.  From there
each op maps the change of its input (``D``: zero except at the listed *dirty*
positions and channels) to the change of its output, the perturbed value being the
cached value plus the change:

* convolution and affine: linear, so the change is the convolution (product) of the
  input's change alone, scattered from the dirty inputs;
* ReLU, sigmoid: recomputed at the dirty entries only (a ReLU that stays off stops
  the change there);
* max pooling: the windows that contain a dirty input are recomputed;
* dropout: the change times the mask.

The loss of each sign is then computed from the cached logits plus their change.

The -h evaluation is carried implicitly as the bitwise negation of the +h change
while that holds exactly: linear ops and masks map ``-d`` to ``-(their image of d)``
in IEEE arithmetic (rounding to nearest is symmetric), and a ReLU or pooling window
is checked entry by entry (its -h output must be the negation of its +h output:
no corner crossed, no tie broken the other way).  The first op where it fails is
rerun with two explicit columns, and every later op carries both.  No analytic
derivative is used anywhere: both losses are evaluations at theta +- h e_i.

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
from fastnum.kernels._blocks import OP_CODES, POOL, RELU, _act
from fastnum.kernels.losses import column_losses

# Op kinds (column 0 of the ops table), from the one op-code table.
CONV = OP_CODES["conv"]
ACT = OP_CODES["activation"]
DROPOUT = OP_CODES["dropout"]
AFFINE = OP_CODES["affine"]

# Columns of the ops table, one row per op (stage o -> stage o + 1).
KIND, CODE, C_IN, H_IN, W_IN, C_OUT, H_OUT, W_OUT = 0, 1, 2, 3, 4, 5, 6, 7
STRIDE, PAD, KH, KW, W_OFF, M_OFF, IN_OFF, OUT_OFF = 8, 9, 10, 11, 12, 13, 14, 15
N_COLS = 16


@njit
def _relu_change(z, d):
    """relu(z + d) - relu(z), with relu(z + d) kept as ``z + d`` where both are on."""
    if z > 0.0:
        return d if z + d > 0.0 else -z
    v = z + d
    return v if v > 0.0 else 0.0


@njit
def _op_act(s, o, S, D, ops, pos, npos, clo, chi, ncol):
    """Activation of the dirty entries; True (and nothing kept) when the implicit -h
    column would be wrong (then the caller reruns with two columns)."""
    C = ops[o, C_IN]
    code = ops[o, CODE]
    i_off = ops[o, IN_OFF]
    o_off = ops[o, OUT_OFF]
    lo = clo[o]
    hi = chi[o]
    if ncol == 1 and code != RELU:
        return True  # a smooth activation is never odd around the cached value
    cnt = 0
    for d in range(npos[o]):
        p = pos[o, d]
        moved = False
        for c in range(lo, hi):
            idx = p * C + c
            z = S[s, i_off + idx]
            if code == RELU:
                if ncol == 1:
                    dv = D[0, i_off + idx]
                    up = _relu_change(z, dv)
                    if _relu_change(z, -dv) != -up:
                        return True
                    D[0, o_off + idx] = up
                    moved = moved or up != 0.0
                else:
                    for col in range(2):
                        v = _relu_change(z, D[col, i_off + idx])
                        D[col, o_off + idx] = v
                        moved = moved or v != 0.0
            else:
                a = S[s, o_off + idx]
                for col in range(2):
                    dv = D[col, i_off + idx]
                    v = 0.0 if dv == 0.0 else _act(z + dv, code) - a
                    D[col, o_off + idx] = v
                    moved = moved or v != 0.0
        if moved:
            pos[o + 1, cnt] = p
            cnt += 1
    npos[o + 1] = cnt
    clo[o + 1] = lo
    chi[o + 1] = hi
    return False


@njit
def _window_change(s, S, D, col, sign, i_off, C, H, W, c, i0, j0, ph, pw, m):
    """Change of one pooling window's max (channel c) when its inputs move by sign * D[col]:
    (a_q - m) + d_q at the perturbed argmax q (the cached max m plus exactly d_q when q
    was the max)."""
    a_lo = max(0, -i0)
    a_hi = min(ph, H - i0)
    b_lo = max(0, -j0)
    b_hi = min(pw, W - j0)
    best = -np.inf
    best_a = 0.0
    best_d = 0.0
    if a_lo > 0 or a_hi < ph or b_lo > 0 or b_hi < pw:
        best = 0.0  # the window reaches into the zero padding (value 0, never moves)
    for a in range(a_lo, a_hi):
        base = ((i0 + a) * W + j0) * C + c
        for b in range(b_lo, b_hi):
            idx = i_off + base + b * C
            av = S[s, idx]
            dv = sign * D[col, idx]
            v = av + dv
            if v > best or v != v:
                best = v
                best_a = av
                best_d = dv
    return (best_a - m) + best_d


@njit
def _op_pool(s, o, S, D, ops, pos, npos, clo, chi, ncol, mark):
    """Max pooling of the windows that contain a dirty input; True as for _op_act."""
    C = ops[o, C_IN]
    H = ops[o, H_IN]
    W = ops[o, W_IN]
    OH = ops[o, H_OUT]
    OW = ops[o, W_OUT]
    stride = ops[o, STRIDE]
    pad = ops[o, PAD]
    ph = ops[o, KH]
    pw = ops[o, KW]
    i_off = ops[o, IN_OFF]
    o_off = ops[o, OUT_OFF]
    lo = clo[o]
    hi = chi[o]
    n_cand = 0
    for d in range(npos[o]):
        p = pos[o, d]
        i = p // W
        jj = p % W
        r = i + pad - ph + 1
        oh_lo = 0 if r <= 0 else (r + stride - 1) // stride
        oh_hi = min((i + pad) // stride, OH - 1)
        r = jj + pad - pw + 1
        ow_lo = 0 if r <= 0 else (r + stride - 1) // stride
        ow_hi = min((jj + pad) // stride, OW - 1)
        for oh in range(oh_lo, oh_hi + 1):
            for ow in range(ow_lo, ow_hi + 1):
                q = oh * OW + ow
                if mark[q] == 0:
                    mark[q] = 1
                    pos[o + 1, n_cand] = q
                    n_cand += 1
    for d in range(n_cand):
        mark[pos[o + 1, d]] = 0
    asym = False
    cnt = 0
    for d in range(n_cand):
        q = pos[o + 1, d]
        i0 = (q // OW) * stride - pad
        j0 = (q % OW) * stride - pad
        moved = False
        for c in range(lo, hi):
            m = S[s, o_off + q * C + c]
            up = _window_change(s, S, D, 0, 1.0, i_off, C, H, W, c, i0, j0, ph, pw, m)
            if ncol == 1:
                down = _window_change(s, S, D, 0, -1.0, i_off, C, H, W, c, i0, j0, ph, pw, m)
                if down != -up:
                    asym = True
                    break
            else:
                down = _window_change(s, S, D, 1, 1.0, i_off, C, H, W, c, i0, j0, ph, pw, m)
                D[1, o_off + q * C + c] = down
                moved = moved or down != 0.0
            D[0, o_off + q * C + c] = up
            moved = moved or up != 0.0
        if asym:
            break
        if moved:
            pos[o + 1, cnt] = q
            cnt += 1
    npos[o + 1] = cnt
    clo[o + 1] = lo
    chi[o + 1] = hi
    return asym


@njit
def _op_dropout(s, o, mk, D, ops, pos, npos, clo, chi, ncol):
    """The change times the mask (dropped entries stop the change)."""
    C = ops[o, C_IN]
    i_off = ops[o, IN_OFF]
    o_off = ops[o, OUT_OFF]
    m_off = ops[o, M_OFF]
    lo = clo[o]
    hi = chi[o]
    cnt = 0
    for d in range(npos[o]):
        p = pos[o, d]
        moved = False
        for c in range(lo, hi):
            idx = p * C + c
            mv = mk[s, m_off + idx]
            for col in range(ncol):
                v = D[col, i_off + idx] * mv
                D[col, o_off + idx] = v
                moved = moved or v != 0.0
        if moved:
            pos[o + 1, cnt] = p
            cnt += 1
    npos[o + 1] = cnt
    clo[o + 1] = lo
    chi[o + 1] = hi


@njit
def _op_conv(o, D, wp, ops, pos, npos, clo, chi, ncol, mark):
    """Change of a convolution's output: the convolution of its input's change alone,
    scattered from the dirty inputs over all output channels."""
    C = ops[o, C_IN]
    W = ops[o, W_IN]
    FN = ops[o, C_OUT]
    OH = ops[o, H_OUT]
    OW = ops[o, W_OUT]
    stride = ops[o, STRIDE]
    pad = ops[o, PAD]
    FH = ops[o, KH]
    FW = ops[o, KW]
    w_off = ops[o, W_OFF]
    i_off = ops[o, IN_OFF]
    o_off = ops[o, OUT_OFF]
    n_taps = FH * FW
    tap_w = np.empty(n_taps, dtype=np.int64)  # filter tap and output position per valid tap
    tap_q = np.empty(n_taps, dtype=np.int64)
    cnt = 0
    for d in range(npos[o]):
        p = pos[o, d]
        i = p // W
        jj = p % W
        base = i_off + p * C
        moved = False
        for c in range(clo[o], chi[o]):
            if D[0, base + c] != 0.0 or (ncol == 2 and D[1, base + c] != 0.0):
                moved = True
                break
        if not moved:
            continue
        # The outputs this input position feeds, once for all its channels.
        nv = 0
        for kh in range(FH):
            ih = i + pad - kh
            if ih < 0 or ih % stride or ih // stride >= OH:
                continue
            for kw in range(FW):
                iw = jj + pad - kw
                if iw < 0 or iw % stride or iw // stride >= OW:
                    continue
                q = (ih // stride) * OW + iw // stride
                tap_w[nv] = kh * FW + kw
                tap_q[nv] = q
                nv += 1
                if mark[q] == 0:
                    mark[q] = 1
                    pos[o + 1, cnt] = q
                    cnt += 1
        for c in range(clo[o], chi[o]):
            d0 = D[0, base + c]
            d1 = D[1, base + c] if ncol == 2 else 0.0
            if d0 == 0.0 and d1 == 0.0:
                continue
            for v in range(nv):
                w0 = w_off + (c * n_taps + tap_w[v]) * FN
                wrow = wp[w0 : w0 + FN]
                q = tap_q[v]
                out0 = D[0, o_off + q * FN : o_off + (q + 1) * FN]
                for f in range(FN):
                    out0[f] += d0 * wrow[f]
                if ncol == 2:
                    out1 = D[1, o_off + q * FN : o_off + (q + 1) * FN]
                    for f in range(FN):
                        out1[f] += d1 * wrow[f]
    for d in range(cnt):
        mark[pos[o + 1, d]] = 0
    npos[o + 1] = cnt
    clo[o + 1] = 0
    chi[o + 1] = FN


@njit
def _op_affine(o, D, wp, ops, pos, npos, clo, chi, ncol):
    """Change of an affine layer's output: the input's change times the weights."""
    C = ops[o, C_IN]
    M = ops[o, C_OUT]
    w_off = ops[o, W_OFF]
    i_off = ops[o, IN_OFF]
    o_off = ops[o, OUT_OFF]
    out0 = D[0, o_off : o_off + M]
    out1 = D[1, o_off : o_off + M]
    for d in range(npos[o]):
        p = pos[o, d]
        for c in range(clo[o], chi[o]):
            r = p * C + c
            wrow = wp[w_off + r * M : w_off + (r + 1) * M]
            d0 = D[0, i_off + r]
            if d0 != 0.0:
                for u in range(M):
                    out0[u] += d0 * wrow[u]
            if ncol == 2:
                d1 = D[1, i_off + r]
                if d1 != 0.0:
                    for u in range(M):
                        out1[u] += d1 * wrow[u]
    pos[o + 1, 0] = 0
    npos[o + 1] = 1
    clo[o + 1] = 0
    chi[o + 1] = M


@njit
def _negate_into_second(o, D, ops, pos, npos, clo, chi):
    """D[1] = -D[0] over the dirty entries of stage o (the -h column made explicit)."""
    C = ops[o, C_IN]
    i_off = ops[o, IN_OFF]
    for d in range(npos[o]):
        p = pos[o, d]
        for c in range(clo[o], chi[o]):
            D[1, i_off + p * C + c] = -D[0, i_off + p * C + c]


@njit
def _seed(s, job, S, D, ops, pos, npos, clo, chi, h):
    """The change of the perturbed layer's output for +h: dirty positions of stage k + 1."""
    k = job[0]
    f = job[1]
    c = job[2]
    st = k + 1
    o_off = ops[k, OUT_OFF]
    i_off = ops[k, IN_OFF]
    cnt = 0
    if ops[k, KIND] == CONV:
        Cin = ops[k, C_IN]
        Hin = ops[k, H_IN]
        Win = ops[k, W_IN]
        FN = ops[k, C_OUT]
        OH = ops[k, H_OUT]
        OW = ops[k, W_OUT]
        stride = ops[k, STRIDE]
        pad = ops[k, PAD]
        if c < 0:  # the bias moves every output position
            for p in range(OH * OW):
                D[0, o_off + p * FN + f] = h
                pos[st, cnt] = p
                cnt += 1
        else:
            kh = job[3] // ops[k, KW]
            kw = job[3] % ops[k, KW]
            for oh in range(OH):
                i = oh * stride + kh - pad
                if i < 0 or i >= Hin:
                    continue
                for ow in range(OW):
                    jj = ow * stride + kw - pad
                    if jj < 0 or jj >= Win:
                        continue
                    v = S[s, i_off + (i * Win + jj) * Cin + c]
                    if v != 0.0:  # a zero input moves nothing
                        p = oh * OW + ow
                        D[0, o_off + p * FN + f] = h * v
                        pos[st, cnt] = p
                        cnt += 1
    else:
        v = 1.0 if c < 0 else S[s, i_off + c]
        if v != 0.0:
            D[0, o_off + f] = h * v
            pos[st, 0] = 0
            cnt = 1
    npos[st] = cnt
    clo[st] = f
    chi[st] = f + 1


@njit
def _clear(k, n_ops, D, ops, pos, npos, clo, chi):
    """Zero the change buffers of stages k + 1 .. n_ops at their dirty entries."""
    for st in range(k + 1, n_ops + 1):
        C = ops[st - 1, C_OUT]
        off = ops[st - 1, OUT_OFF]
        for d in range(npos[st]):
            p = pos[st, d]
            for c in range(clo[st], chi[st]):
                D[0, off + p * C + c] = 0.0
                D[1, off + p * C + c] = 0.0
        npos[st] = 0


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
    D = np.zeros((2, S.shape[1]))
    pos = np.zeros((n_ops + 1, max_pos), dtype=np.int64)
    npos = np.zeros(n_ops + 1, dtype=np.int64)
    clo = np.zeros(n_ops + 1, dtype=np.int64)
    chi = np.zeros(n_ops + 1, dtype=np.int64)
    mark = np.zeros(max_pos, dtype=np.int8)
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
