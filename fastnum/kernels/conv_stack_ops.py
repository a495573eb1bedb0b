"""The ops of the deep convolution stacks' delta kernel: the ops table and each op's step.

The driver, :mod:`fastnum.kernels.conv_stack`, pushes a perturbation's change through
the ops one by one; this module holds the table's schema (op kinds and column names,
which :mod:`fastnum._conv_stack_plan` fills) and what each op does to a change.

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
"""

from __future__ import annotations

import numpy as np

from fastnum._jit import njit
from fastnum.kernels._blocks import OP_CODES, RELU, _act

# Op kinds (column 0 of the ops table), from the one op-code table.
CONV = OP_CODES["conv"]
POOL = OP_CODES["pool"]
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
