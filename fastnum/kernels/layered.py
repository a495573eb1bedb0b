"""Numba kernels of the layered engine (:mod:`fastnum.engine`): trusted inputs, float64.

Layout
------
Every per-sample tensor is a flat row: a conv block's maps ``(C, H, W)`` are
rows of ``C * H * W`` doubles, so one kernel signature serves every geometry
(and the kernels stay plain Python under ``NUMBA_DISABLE_JIT=1``).

* Map kernels (``_conv_channel``, ``_pool_map``, ``_act_map``) work on one
  sample's flat maps; the batch kernels call them in parallel over samples.
* The dense tail (affine layers, each with an optional activation) is packed
  like :mod:`fastnum.kernels.multilayer`: flat ``w``/``b`` with per-layer
  offsets, widths ``sizes = (d0, ..., dL)``, activation codes ``acts``.
* The delta cache: ``F`` (N, d0) the tail's input, ``Z``/``A`` the tail's
  pre-activations/activations (layer ``l`` at ``z_off[l] + s * d_{l+1}``),
  ``loss_n`` each sample's loss, and for a conv stack ``Zc`` the conv output.

Delta evaluation
----------------
Every evaluation is the loss of one sample at theta +- h e_i, computed from the
cached unperturbed values plus the change the perturbation makes: a conv weight
moves one output channel by h * x over its receptive positions (that channel's
activation/pooling pipeline is recomputed and compared with the cache: only the
features that changed move the first affine layer); an affine weight W[r, j]
moves unit j by h * input_r.  From there every later layer is recomputed from
its cached pre-activation plus the activation changes (a unit whose activation
did not change adds nothing).  Per-sample differences L_n(+) - L_n(-) are
summed over samples in ascending order inside one task, so results do not
depend on the thread count.  No analytic derivatives are used anywhere.
"""

from __future__ import annotations

import numpy as np

from fastnum._jit import njit, prange
from fastnum.kernels._vmath import fexp, flog

NONE = 0
RELU = 1
SIGMOID = 2
POOL = 3
#: Activation codes (a table: add an activation here and in ``_act``).
ACTIVATION_CODES = {"relu": RELU, "sigmoid": SIGMOID}


# ------------------------------------------------------------------------------ map pieces


@njit
def _act(v, kind):
    """The activation ``kind`` of one value (NONE passes it through)."""
    if kind == RELU:
        return v if v > 0.0 else 0.0
    if kind == SIGMOID:
        return 1.0 / (1.0 + fexp(-v))
    return v


@njit
def _act_map(src, n, kind, dst):
    """dst[:n] = act(src[:n])."""
    for k in range(n):
        dst[k] = _act(src[k], kind)


@njit
def _conv_channel(xs, C, H, W, Wt, b, f, stride, pad, OH, OW, out):
    """Channel f of the convolution of one sample (flat (C, H, W) row) into out[:OH*OW]."""
    FH = Wt.shape[2]
    FW = Wt.shape[3]
    for o in range(OH * OW):
        out[o] = 0.0
    for c in range(C):
        for kh in range(FH):
            for kw in range(FW):
                wv = Wt[f, c, kh, kw]
                for oh in range(OH):
                    i = oh * stride + kh - pad
                    if i < 0 or i >= H:
                        continue
                    base = (c * H + i) * W
                    for ow in range(OW):
                        jj = ow * stride + kw - pad
                        if 0 <= jj < W:
                            out[oh * OW + ow] += xs[base + jj] * wv
    for o in range(OH * OW):
        out[o] += b[f]


@njit
def _pool_map(src, H, W, ph, pw, stride, pad, OH, OW, dst):
    """Max pooling of one (H, W) map; padded positions count as 0 (im2col's zero padding)."""
    for oh in range(OH):
        for ow in range(OW):
            m = -np.inf
            for a in range(ph):
                i = oh * stride + a - pad
                for c in range(pw):
                    jj = ow * stride + c - pad
                    if 0 <= i < H and 0 <= jj < W:
                        v = src[i * W + jj]
                    else:
                        v = 0.0
                    if v > m:
                        m = v
            dst[oh * OW + ow] = m


@njit
def _run_ops(ops, n_ops, buf_a, buf_b, first):
    """Apply the channel pipeline ``ops`` (rows: kind, ph, pw, stride, pad, H, W, OH, OW)
    to the map in ``buf_a`` (or in ``first`` when it is the first op's input); returns
    the buffer holding the result."""
    src = buf_a
    dst = buf_b
    for o in range(n_ops):
        kind = ops[o, 0]
        H = ops[o, 5]
        W = ops[o, 6]
        OH = ops[o, 7]
        OW = ops[o, 8]
        s = first if o == 0 else src
        if kind == POOL:
            _pool_map(s, H, W, ops[o, 1], ops[o, 2], ops[o, 3], ops[o, 4], OH, OW, dst)
        else:
            _act_map(s, H * W, kind, dst)
        src, dst = dst, src
    return src if n_ops > 0 else first


# ------------------------------------------------------------------------------ batch forward


@njit(parallel=True)
def _conv_batch(x, C, H, W, Wt, b, stride, pad, OH, OW, out):
    """out (N, FN*OH*OW) = convolution of x (N, C*H*W), parallel over samples."""
    FN = Wt.shape[0]
    size = OH * OW
    for n in prange(x.shape[0]):
        for f in range(FN):
            _conv_channel(x[n], C, H, W, Wt, b, f, stride, pad, OH, OW,
                          out[n, f * size:(f + 1) * size])


@njit(parallel=True)
def _pool_batch(x, C, H, W, ph, pw, stride, pad, OH, OW, out):
    """out (N, C*OH*OW) = max pooling of x (N, C*H*W)."""
    for n in prange(x.shape[0]):
        for c in range(C):
            _pool_map(x[n, c * H * W:(c + 1) * H * W], H, W, ph, pw, stride, pad, OH, OW,
                      out[n, c * OH * OW:(c + 1) * OH * OW])


@njit(parallel=True)
def _act_batch(x, kind, out):
    """out = act(x) elementwise, parallel over samples."""
    for n in prange(x.shape[0]):
        _act_map(x[n], x.shape[1], kind, out[n])


@njit
def _affine_row(src, Wm, b, dst):
    """dst = src @ Wm + b for one sample, skipping zero inputs (they add exactly nothing)."""
    n_out = Wm.shape[1]
    for k in range(n_out):
        dst[k] = 0.0
    for i in range(Wm.shape[0]):
        a = src[i]
        if a != 0.0:
            wrow = Wm[i]
            for k in range(n_out):
                dst[k] += a * wrow[k]
    for k in range(n_out):
        dst[k] += b[k]


@njit(parallel=True)
def _affine_batch(x, Wm, b, out):
    """out (N, M) = x (N, D) @ Wm (D, M) + b, parallel over samples."""
    for n in prange(x.shape[0]):
        _affine_row(x[n], Wm, b, out[n])


@njit(parallel=True)
def _sample_losses(z, t, guard, out):
    """out[n] = -log(softmax(z[n])[t[n]] + guard), shifted by the row max."""
    for n in prange(z.shape[0]):
        m = z[n, 0]
        for k in range(1, z.shape[1]):
            m = max(m, z[n, k])
        s = 0.0
        for k in range(z.shape[1]):
            s += np.exp(z[n, k] - m)
        out[n] = -np.log(np.exp(z[n, t[n]] - m) / s + guard)


@njit
def _ordered_sum(v):
    """Sum in ascending index order (fixed, whatever the threads)."""
    total = 0.0
    for k in range(v.shape[0]):
        total += v[k]
    return total


# ------------------------------------------------------------------------------ delta cache


@njit
def _column_losses(z, k, n_e, label, guard, mx, sm, out):
    """out[e] = softmax cross-entropy of column e of z[:k, :n_e] (columns are evaluations)."""
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
    for e in range(n_e):
        out[e] = -flog(fexp(z[label, e] - mx[e]) / sm[e] + guard)


@njit(parallel=True)
def _conv_cache(x, C, H, W, Wt, b, stride, pad, OH, OW, ops, F, Zc):
    """Zc (N, FN*OH*OW) conv output and F (N, d0) the channel pipelines' output."""
    FN = Wt.shape[0]
    size = OH * OW
    n_ops = ops.shape[0]
    fsize = F.shape[1] // FN
    for n in prange(x.shape[0]):
        buf_a = np.empty(max(size, 1))
        buf_b = np.empty(max(size, 1))
        for f in range(FN):
            zc = Zc[n, f * size:(f + 1) * size]
            _conv_channel(x[n], C, H, W, Wt, b, f, stride, pad, OH, OW, zc)
            res = _run_ops(ops, n_ops, buf_a, buf_b, zc)
            for q in range(fsize):
                F[n, f * fsize + q] = res[q]


@njit(parallel=True)
def _tail_cache(F, w, b, w_off, b_off, sizes, acts, t, guard, z_off, Z, A, loss_n):
    """The dense tail's unperturbed pass: Z, A per layer and loss_n per sample."""
    n_layers = sizes.shape[0] - 1
    k_out = sizes[n_layers]
    for s in prange(F.shape[0]):
        for layer in range(n_layers):
            n_in = sizes[layer]
            n_out = sizes[layer + 1]
            out = z_off[layer] + s * n_out
            zrow = Z[out:out + n_out]
            for k in range(n_out):
                zrow[k] = 0.0
            for i in range(n_in):
                a = F[s, i] if layer == 0 else A[z_off[layer - 1] + s * n_in + i]
                if a != 0.0:
                    wrow = w[w_off[layer] + i * n_out:w_off[layer] + (i + 1) * n_out]
                    for k in range(n_out):
                        zrow[k] += a * wrow[k]
            for k in range(n_out):
                zrow[k] += b[b_off[layer] + k]
                A[out + k] = _act(zrow[k], acts[layer])
        col = np.empty((k_out, 1))
        last = z_off[n_layers - 1] + s * k_out
        for k in range(k_out):
            col[k, 0] = A[last + k]
        mx = np.empty(1)
        sm = np.empty(1)
        res = np.empty(1)
        _column_losses(col, k_out, 1, t[s], guard, mx, sm, res)
        loss_n[s] = res[0]


@njit
def _propagate(m, n_q, s, z1, z2, dq, w, w_off, sizes, acts, z_off, Z, A, t, guard, mx, sm,
               out):
    """Losses of sample s for the n_q evaluations whose layer-m pre-activations are the
    columns of z1[:d_{m+1}, :n_q]; every later layer is the cached pre-activation plus
    the activation changes times the weights."""
    n_layers = sizes.shape[0] - 1
    src = z1
    dst = z2
    while True:
        width = sizes[m + 1]
        code = acts[m]
        if code != NONE:
            for k in range(width):
                for q in range(n_q):
                    src[k, q] = _act(src[k, q], code)
        if m == n_layers - 1:
            break
        n_next = sizes[m + 2]
        a_off = z_off[m] + s * width
        zs = z_off[m + 1] + s * n_next
        for c in range(n_next):
            zc = Z[zs + c]
            for q in range(n_q):
                dst[c, q] = zc
        for k in range(width):
            ak = A[a_off + k]
            moved = False
            for q in range(n_q):
                dq[q] = src[k, q] - ak
                if dq[q] != 0.0:
                    moved = True
            if moved:  # a unit that did not change in any evaluation adds exactly nothing
                row = w_off[m + 1] + k * n_next
                for c in range(n_next):
                    wkc = w[row + c]
                    for q in range(n_q):
                        dst[c, q] += dq[q] * wkc
        src, dst = dst, src
        m += 1
    _column_losses(src, sizes[n_layers], n_q, t[s], guard, mx, sm, out)


# ------------------------------------------------------------------------------ delta: dense


@njit(parallel=True)
def _dense_delta(layer, F, w, w_off, sizes, acts, t, h, guard, z_off, Z, A, loss_n,
                 nz_ptr, nz_idx, amax, sel_ptr, sel_idx, use_all, max_q, width, n_tasks, gT):
    """gT[j, r] = sum_n (L_n(+) - L_n(-)) for W_l[r, j] (r < n_in) and b_l[j] (r = n_in).

    Tasks own whole units j (interleaved); for one sample, every selected row r whose
    input is non-zero is evaluated side by side (2 columns per row: +h, then -h).
    ``use_all`` selects every row (the CSR nz_ptr/nz_idx lists the non-zero inputs);
    otherwise unit j's rows are sel_idx[sel_ptr[j]:sel_ptr[j + 1]].
    """
    n = F.shape[0]
    n_layers = sizes.shape[0] - 1
    n_in = sizes[layer]
    n_out = sizes[layer + 1]
    last = layer == n_layers - 1
    code = acts[layer]
    for task in prange(n_tasks):
        rows = np.empty(max_q, dtype=np.int64)
        vals = np.empty(max_q)
        z1 = np.empty((width, 2 * max_q))
        z2 = np.empty((width, 2 * max_q))
        dq = np.empty(2 * max_q)
        chg = np.empty(2 * max_q)
        mx = np.empty(2 * max_q)
        sm = np.empty(2 * max_q)
        out = np.empty(2 * max_q)
        for j in range(task, n_out, n_tasks):
            g = gT[j]
            for s in range(n):
                zj = Z[z_off[layer] + s * n_out + j]
                # A relu unit off before and after every step of this sample: nothing moves.
                if code == RELU and not last and zj + h * max(amax[s], 1.0) <= 0.0:
                    continue
                nr = 0
                if use_all:
                    for p in range(nz_ptr[s], nz_ptr[s + 1]):
                        r = nz_idx[p]
                        rows[nr] = r
                        vals[nr] = F[s, r] if layer == 0 else A[z_off[layer - 1] + s * n_in + r]
                        nr += 1
                    rows[nr] = n_in
                    vals[nr] = 1.0
                    nr += 1
                else:
                    for p in range(sel_ptr[j], sel_ptr[j + 1]):
                        r = sel_idx[p]
                        if r == n_in:
                            a = 1.0
                        elif layer == 0:
                            a = F[s, r]
                        else:
                            a = A[z_off[layer - 1] + s * n_in + r]
                        if a != 0.0:
                            rows[nr] = r
                            vals[nr] = a
                            nr += 1
                if nr == 0:
                    continue
                n_q = 2 * nr
                if last:
                    zs = z_off[layer] + s * n_out
                    for c in range(n_out):
                        zc = Z[zs + c]
                        for q in range(n_q):
                            z1[c, q] = zc
                    for q in range(nr):
                        z1[j, q] = zj + h * vals[q]
                        z1[j, nr + q] = zj - h * vals[q]
                    _propagate(layer, n_q, s, z1, z2, dq, w, w_off, sizes, acts, z_off, Z, A,
                               t, guard, mx, sm, out)
                else:
                    aj = A[z_off[layer] + s * n_out + j]
                    for q in range(nr):
                        chg[q] = _act(zj + h * vals[q], code) - aj
                        chg[nr + q] = _act(zj - h * vals[q], code) - aj
                    moved = False
                    for q in range(n_q):
                        if chg[q] != 0.0:
                            moved = True
                    if not moved:
                        continue
                    n_next = sizes[layer + 2]
                    zs = z_off[layer + 1] + s * n_next
                    row = w_off[layer + 1] + j * n_next
                    for c in range(n_next):
                        zc = Z[zs + c]
                        wjc = w[row + c]
                        for q in range(n_q):
                            z1[c, q] = zc + chg[q] * wjc
                    _propagate(layer + 1, n_q, s, z1, z2, dq, w, w_off, sizes, acts, z_off, Z,
                               A, t, guard, mx, sm, out)
                for q in range(nr):
                    g[rows[q]] += out[q] - out[nr + q]


# ------------------------------------------------------------------------------ delta: conv


@njit(parallel=True)
def _conv_delta(x, C, H, W, Wt, stride, pad, OH, OW, ops, Zc, F, w, w_off, sizes, acts, t, h,
                guard, z_off, Z, A, sel, width, n_tasks, out_sums):
    """out_sums[p] = sum_n (L_n(+) - L_n(-)) for conv parameter sel[p] (flat index into
    Wt, then the bias), samples in ascending order inside one task."""
    n = x.shape[0]
    FN = Wt.shape[0]
    FH = Wt.shape[2]
    FW = Wt.shape[3]
    n_w = Wt.size
    size = OH * OW
    n_ops = ops.shape[0]
    fsize = F.shape[1] // FN
    d1 = sizes[1]
    n_sel = sel.shape[0]
    for task in prange(n_tasks):
        pert = np.empty(max(size, 1))
        buf_a = np.empty(max(size, 1))
        buf_b = np.empty(max(size, 1))
        moved_idx = np.empty((2, max(fsize, 1)), dtype=np.int64)
        moved_d = np.empty((2, max(fsize, 1)))
        n_moved = np.zeros(2, dtype=np.int64)
        z1 = np.empty((width, 2))
        z2 = np.empty((width, 2))
        dq = np.empty(2)
        mx = np.empty(2)
        sm = np.empty(2)
        res = np.empty(2)
        for p in range(task, n_sel, n_tasks):
            param = sel[p]
            if param < n_w:
                f = param // (C * FH * FW)
                rem = param % (C * FH * FW)
                ci = rem // (FH * FW)
                kh = (rem % (FH * FW)) // FW
                kw = rem % FW
            else:
                f = param - n_w
                ci = -1
                kh = 0
                kw = 0
            acc = 0.0
            for s in range(n):
                zc = Zc[s, f * size:(f + 1) * size]
                any_moved = False
                for sign in range(2):
                    step = h if sign == 0 else -h
                    touched = False
                    for o in range(size):
                        pert[o] = zc[o]
                    if ci < 0:
                        for o in range(size):
                            pert[o] = zc[o] + step
                        touched = True
                    else:
                        for oh in range(OH):
                            i = oh * stride + kh - pad
                            if i < 0 or i >= H:
                                continue
                            base = (ci * H + i) * W
                            for ow in range(OW):
                                jj = ow * stride + kw - pad
                                if 0 <= jj < W:
                                    xv = x[s, base + jj]
                                    if xv != 0.0:
                                        pert[oh * OW + ow] = zc[oh * OW + ow] + step * xv
                                        touched = True
                    n_moved[sign] = 0
                    if not touched:
                        continue
                    res_map = _run_ops(ops, n_ops, buf_a, buf_b, pert)
                    for q in range(fsize):
                        d = res_map[q] - F[s, f * fsize + q]
                        if d != 0.0:
                            moved_idx[sign, n_moved[sign]] = f * fsize + q
                            moved_d[sign, n_moved[sign]] = d
                            n_moved[sign] += 1
                    if n_moved[sign] > 0:
                        any_moved = True
                if not any_moved:
                    continue
                zs = z_off[0] + s * d1
                for c in range(d1):
                    zcv = Z[zs + c]
                    z1[c, 0] = zcv
                    z1[c, 1] = zcv
                for sign in range(2):
                    for q in range(n_moved[sign]):
                        row = moved_idx[sign, q] * d1
                        d = moved_d[sign, q]
                        for c in range(d1):
                            z1[c, sign] += d * w[row + c]
                _propagate(0, 2, s, z1, z2, dq, w, w_off, sizes, acts, z_off, Z, A, t, guard,
                           mx, sm, res)
                acc += res[0] - res[1]
            out_sums[p] = acc
