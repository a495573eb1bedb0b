"""Numba kernels of the layered engine (:mod:`fastnum.engine`): trusted inputs, float64.

Layout
------
Every per-sample tensor is a flat row: a conv block's maps ``(C, H, W)`` are
rows of ``C * H * W`` doubles, so one kernel signature serves every geometry
(and the kernels stay plain Python under ``NUMBA_DISABLE_JIT=1``).

* Map kernels (``_conv_channel``, ``_pool_map``, ``_act_map``) work on one
  sample's flat maps; the batch kernels run in parallel over samples (the
  batch convolution scatters non-zero pixels instead, see ``_conv_batch``).
* The dense tail (affine layers, each with an optional activation) is packed
  like :mod:`fastnum.kernels.multilayer`: flat ``w``/``b`` with per-layer
  offsets, widths ``sizes = (d0, ..., dL)``, activation codes ``acts``.
* The delta cache: ``F`` (N, d0) the tail's input, ``Z``/``A`` the tail's
  pre-activations/activations (layer ``l`` at ``z_off[l] + s * d_{l+1}``),
  and for a conv stack ``S``: every stage of the conv block per channel (the
  conv output, then each activation/pooling output).

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

The two delta kernels are plain (``nogil``) functions of one task; the engine
runs their tasks on a thread pool.  A ``prange`` around them made numba compile
and optimize the whole kernel a second time inside the parallel region (the
SimpleConvNet delta path compiled about 5x longer cold, measured).
"""

from __future__ import annotations

import numpy as np

from fastnum._jit import njit, prange
from fastnum.kernels._vmath import SMALL_EXP_BOUND, fexp, fexp_small, flog
from fastnum.kernels.losses import column_losses

# The activation codes are the multilayer kernels' (one table); the engine reads them here.
from fastnum.kernels.multilayer import ACTIVATION_CODES, RELU, SIGMOID, _affine_into  # noqa: F401

# Largest |logit step| (|chg * w|) for which _logit_step_losses reuses the cached
# exponentials exp(z_k - m).  Below it exp(step) and every product stay finite, and a
# cached exponential that underflowed or went subnormal (z_k - m < -708) is off by at
# most 5e-324 * e**256 relative to the sum (which is at least e**-256): nothing.
# Beyond it (inputs x 1e10 moved logits by thousands) exp(step) overflowed to inf
# and 0 * inf made NaN where the reference, shifting by the perturbed max, is finite;
# such steps take the general path, as the reference computes.
_CACHED_EXP_SAFE = 256.0

# Pipeline codes: the activations' codes are those of the multilayer kernels (``_act``
# computes them here); NONE passes a value through and POOL marks a pooling step.
NONE = 0
POOL = 3


# ------------------------------------------------------------------------------ map pieces


@njit
def _act(v, kind):
    """The activation ``kind`` of one value (NONE passes it through; NaN stays NaN)."""
    if kind == RELU:
        return 0.0 if v <= 0.0 else v  # not "v > 0", which turns NaN into 0
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
                # Output columns whose input column ow * stride + kw - pad lies inside the
                # image: a branch-free inner loop (it vectorizes at stride 1).
                ow_lo = max(0, -((kw - pad) // stride))
                ow_hi = min(OW, (W - 1 - kw + pad) // stride + 1)
                for oh in range(OH):
                    i = oh * stride + kh - pad
                    if i < 0 or i >= H:
                        continue
                    src = xs[(c * H + i) * W : (c * H + i + 1) * W]
                    dst = out[oh * OW : (oh + 1) * OW]
                    for ow in range(ow_lo, ow_hi):
                        dst[ow] += src[ow * stride + kw - pad] * wv
    for o in range(OH * OW):
        out[o] += b[f]


@njit
def _pool_window(src, H, W, ph, pw, stride, pad, oh, ow):
    """Max of one pooling window; padded positions count as 0 (im2col's zero padding).

    A NaN in the window is the max, as NumPy's max has it (overflowed sums give NaN).
    """
    i0 = oh * stride - pad
    j0 = ow * stride - pad
    a_lo = max(0, -i0)
    a_hi = min(ph, H - i0)
    c_lo = max(0, -j0)
    c_hi = min(pw, W - j0)
    m = -np.inf
    if a_lo > 0 or a_hi < ph or c_lo > 0 or c_hi < pw:
        m = 0.0  # the window reaches into the zero padding
    for a in range(a_lo, a_hi):
        base = (i0 + a) * W + j0
        for c in range(c_lo, c_hi):
            v = src[base + c]
            if v > m or v != v:
                m = v
    return m


@njit
def _pool_map(src, H, W, ph, pw, stride, pad, OH, OW, dst):
    """Max pooling of one (H, W) map into dst[:OH*OW]."""
    for oh in range(OH):
        for ow in range(OW):
            dst[oh * OW + ow] = _pool_window(src, H, W, ph, pw, stride, pad, oh, ow)


# ------------------------------------------------------------------------------ batch forward


@njit(parallel=True)
def _conv_batch(x, C, H, W, Wcl, b, stride, pad, OH, OW, out):
    """out (N, FN*OH*OW) = convolution of x (N, C*H*W), parallel over samples.

    ``Wcl`` is the filter bank channel-last, (C, FH, FW, FN): every non-zero pixel
    is scattered into the outputs it feeds for all filters at once (a contiguous,
    vectorized loop over filters), and zero pixels, most of an MNIST digit, cost
    nothing.
    """
    FH = Wcl.shape[1]
    FW = Wcl.shape[2]
    FN = Wcl.shape[3]
    size = OH * OW
    for n in prange(x.shape[0]):
        acc = np.zeros((size, FN))
        xs = x[n]
        for c in range(C):
            for i in range(H):
                for jj in range(W):
                    xv = xs[(c * H + i) * W + jj]
                    if xv == 0.0:
                        continue
                    for kh in range(FH):
                        ih = i + pad - kh
                        if ih < 0 or ih % stride:
                            continue
                        oh = ih // stride
                        if oh >= OH:
                            continue
                        for kw in range(FW):
                            iw = jj + pad - kw
                            if iw < 0 or iw % stride:
                                continue
                            ow = iw // stride
                            if ow >= OW:
                                continue
                            wv = Wcl[c, kh, kw]
                            dst = acc[oh * OW + ow]
                            for f in range(FN):
                                dst[f] += xv * wv[f]
        for f in range(FN):
            for o in range(size):
                out[n, f * size + o] = acc[o, f] + b[f]


@njit(parallel=True)
def _pool_batch(x, C, H, W, ph, pw, stride, pad, OH, OW, out):
    """out (N, C*OH*OW) = max pooling of x (N, C*H*W)."""
    for n in prange(x.shape[0]):
        for c in range(C):
            _pool_map(
                x[n, c * H * W : (c + 1) * H * W],
                H,
                W,
                ph,
                pw,
                stride,
                pad,
                OH,
                OW,
                out[n, c * OH * OW : (c + 1) * OH * OW],
            )


@njit(parallel=True)
def _act_batch(x, kind, out):
    """out = act(x) elementwise, parallel over samples."""
    for n in prange(x.shape[0]):
        _act_map(x[n], x.shape[1], kind, out[n])


@njit(parallel=True)
def _affine_batch(x, Wm, b, out):
    """out (N, M) = x (N, D) @ Wm (D, M) + b, parallel over samples."""
    D, M = Wm.shape
    w = Wm.reshape(D * M)  # a view: Wm is C-contiguous
    for n in prange(x.shape[0]):
        _affine_into(x[n], D, w, 0, b, 0, M, out[n])


@njit
def _ordered_sum(v):
    """Sum in ascending index order (fixed, whatever the threads)."""
    total = 0.0
    for k in range(v.shape[0]):
        total += v[k]
    return total


# ------------------------------------------------------------------------------ delta cache


@njit(parallel=True)
def _conv_cache(x, C, H, W, Wt, b, stride, pad, OH, OW, ops, st_off, S, F):
    """S (N, FN * stage sizes): per channel, the conv output (stage 0) and the output of
    every pipeline op (stage k + 1), channel f of stage k at FN * st_off[k] + f * size_k;
    F (N, d0) the last stage, the dense tail's input."""
    FN = Wt.shape[0]
    n_ops = ops.shape[0]
    for n in prange(x.shape[0]):
        for f in range(FN):
            size = OH * OW
            start = FN * st_off[0] + f * size
            _conv_channel(x[n], C, H, W, Wt, b, f, stride, pad, OH, OW, S[n, start : start + size])
            for o in range(n_ops):
                src = S[n, start : start + size]
                size = ops[o, 7] * ops[o, 8]
                start = FN * st_off[o + 1] + f * size
                dst = S[n, start : start + size]
                if ops[o, 0] == POOL:
                    _pool_map(
                        src,
                        ops[o, 5],
                        ops[o, 6],
                        ops[o, 1],
                        ops[o, 2],
                        ops[o, 3],
                        ops[o, 4],
                        ops[o, 7],
                        ops[o, 8],
                        dst,
                    )
                else:
                    _act_map(src, size, ops[o, 0], dst)
            for q in range(size):
                F[n, f * size + q] = S[n, start + q]


@njit(parallel=True)
def _tail_cache(F, w, b, w_off, b_off, sizes, acts, z_off, Z, A):
    """The dense tail's unperturbed pass: Z, A per layer."""
    n_layers = sizes.shape[0] - 1
    for s in prange(F.shape[0]):
        for layer in range(n_layers):
            n_in = sizes[layer]
            n_out = sizes[layer + 1]
            out = z_off[layer] + s * n_out
            zrow = Z[out : out + n_out]
            src = (
                F[s]
                if layer == 0
                else A[z_off[layer - 1] + s * n_in : z_off[layer - 1] + (s + 1) * n_in]
            )
            _affine_into(src, n_in, w, w_off[layer], b, b_off[layer], n_out, zrow)
            for k in range(n_out):
                A[out + k] = _act(zrow[k], acts[layer])


@njit
def _propagate(m, n_q, s, z1, z2, dq, tail, t, guard, mx, sm, out):
    """Losses of sample s for the n_q evaluations whose layer-m pre-activations are the
    columns of z1[:d_{m+1}, :n_q]; every later layer is the cached pre-activation plus
    the activation changes times the weights.

    ``tail`` is the dense tail as the delta kernels share it: (w, w_off, sizes, acts,
    z_off, Z, A), the packed weights and the unperturbed pass of :func:`_tail_cache`.
    """
    w, w_off, sizes, acts, z_off, Z, A = tail
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
    column_losses(src, sizes[n_layers], n_q, t[s], guard, mx, sm, out)


# ------------------------------------------------------------------------------ delta: dense


@njit
def _logit_step_losses(Z, zs, k_out, w, row, chg, n_q, label, guard, y, sm, out):
    """out[q] = loss when the logits Z[zs:zs + k_out] move by chg[q] * w[row:row + k_out];
    False (out untouched) when a step exceeds _CACHED_EXP_SAFE, else True.

    exp(z_k + c w_k - m) = exp(z_k - m) * exp(c w_k), with m the unperturbed max: the
    cached exponentials are reused and exp of the small step is a short polynomial
    (exact to double precision below SMALL_EXP_BOUND).  A zero step gives exactly
    the unperturbed sum, in the same order.
    """
    biggest = 0.0
    for q in range(n_q):
        biggest = max(biggest, abs(chg[q]))
    w_max = 0.0
    for c in range(k_out):
        w_max = max(w_max, abs(w[row + c]))
    if not biggest * w_max <= _CACHED_EXP_SAFE:  # NaN too: the general path propagates it
        return False
    m = Z[zs]
    for c in range(1, k_out):
        m = max(m, Z[zs + c])
    for q in range(n_q):
        sm[q] = 0.0
    for c in range(k_out):
        ec = fexp(Z[zs + c] - m)
        wc = w[row + c]
        small = biggest * abs(wc) <= SMALL_EXP_BOUND
        if small:
            for q in range(n_q):
                sm[q] += ec * fexp_small(chg[q] * wc)
        else:
            for q in range(n_q):
                sm[q] += ec * fexp(chg[q] * wc)
        if c == label:
            if small:
                for q in range(n_q):
                    y[q] = ec * fexp_small(chg[q] * wc)
            else:
                for q in range(n_q):
                    y[q] = ec * fexp(chg[q] * wc)
    for q in range(n_q):
        out[q] = -flog(y[q] / sm[q] + guard)
    return True


@njit
def _dense_delta_task(
    task,
    layer,
    F,
    tail,
    t,
    h,
    guard,
    nz_ptr,
    nz_idx,
    amax,
    sel_ptr,
    sel_idx,
    use_all,
    max_q,
    width,
    n_tasks,
    gT,
):
    """gT[j, r] = sum_n (L_n(+) - L_n(-)) for W_l[r, j] (r < n_in) and b_l[j] (r = n_in).

    One task of ``n_tasks`` (run side by side by fastnum.engine._run_tasks).  Tasks
    own whole units j (interleaved); for one sample, every selected row r whose
    input is non-zero is evaluated side by side (2 columns per row: +h, then -h).
    ``use_all`` selects every row (the CSR nz_ptr/nz_idx lists the non-zero inputs);
    otherwise unit j's rows are sel_idx[sel_ptr[j]:sel_ptr[j + 1]].  ``tail`` as for
    :func:`_propagate`.
    """
    w, w_off, sizes, acts, z_off, Z, A = tail
    n = F.shape[0]
    n_layers = sizes.shape[0] - 1
    n_in = sizes[layer]
    n_out = sizes[layer + 1]
    last = layer == n_layers - 1
    code = acts[layer]
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
                _propagate(layer, n_q, s, z1, z2, dq, tail, t, guard, mx, sm, out)
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
                if (
                    layer == n_layers - 2
                    and acts[n_layers - 1] == NONE
                    and _logit_step_losses(
                        Z, zs, n_next, w, row, chg, n_q, t[s], guard, mx, sm, out
                    )
                ):
                    for q in range(nr):
                        g[rows[q]] += out[q] - out[nr + q]
                    continue
                for c in range(n_next):
                    zc = Z[zs + c]
                    wjc = w[row + c]
                    for q in range(n_q):
                        z1[c, q] = zc + chg[q] * wjc
                _propagate(layer + 1, n_q, s, z1, z2, dq, tail, t, guard, mx, sm, out)
            for q in range(nr):
                g[rows[q]] += out[q] - out[nr + q]


# ------------------------------------------------------------------------------ delta: conv


@njit
def _window_tables(ops, lo_h, hi_h, lo_w, hi_w):
    """For each pooling op and input row (column): the first and last window containing it."""
    for o in range(ops.shape[0]):
        if ops[o, 0] != POOL:
            continue
        for axis in range(2):
            win = ops[o, 1 + axis]
            stride = ops[o, 3]
            pad = ops[o, 4]
            n_in = ops[o, 5 + axis]
            n_out = ops[o, 7 + axis]
            lo_t = lo_h if axis == 0 else lo_w
            hi_t = hi_h if axis == 0 else hi_w
            for i in range(n_in):
                lo = i + pad - win + 1
                lo_t[o, i] = 0 if lo <= 0 else (lo + stride - 1) // stride
                hi_t[o, i] = min((i + pad) // stride, n_out - 1)


@njit
def _pipeline_step(ops, st_off, work, dirty, d_row, d_col, n_dirty, mark, lo_h, hi_h, lo_w, hi_w):
    """Push the dirty stage-0 positions of one channel through the pipeline ops.

    ``work`` holds this channel's stages (stage k at st_off[k]) equal to the cache
    except at the dirty positions (flat index, row, column per stage); each op
    recomputes only the outputs that can see a dirty input and keeps those that
    really changed (a relu that stays off, a window whose max did not change, stop
    the propagation there).
    """
    for o in range(ops.shape[0]):
        kind = ops[o, 0]
        H = ops[o, 5]
        W = ops[o, 6]
        OW = ops[o, 8]
        w_in = st_off[o]
        w_out = st_off[o + 1]
        n_new = 0
        if kind == POOL:
            ph = ops[o, 1]
            pw = ops[o, 2]
            stride = ops[o, 3]
            pad = ops[o, 4]
            n_cand = 0
            for d in range(n_dirty[o]):
                i = d_row[o, d]
                jj = d_col[o, d]
                for oh in range(lo_h[o, i], hi_h[o, i] + 1):
                    for ow in range(lo_w[o, jj], hi_w[o, jj] + 1):
                        q = oh * OW + ow
                        if mark[q] == 0:
                            mark[q] = 1
                            dirty[o + 1, n_cand] = q
                            d_row[o + 1, n_cand] = oh
                            d_col[o + 1, n_cand] = ow
                            n_cand += 1
            src = work[w_in : w_in + H * W]
            for d in range(n_cand):
                q = dirty[o + 1, d]
                oh = d_row[o + 1, d]
                ow = d_col[o + 1, d]
                mark[q] = 0
                v = _pool_window(src, H, W, ph, pw, stride, pad, oh, ow)
                if v != work[w_out + q]:
                    work[w_out + q] = v
                    dirty[o + 1, n_new] = q
                    d_row[o + 1, n_new] = oh
                    d_col[o + 1, n_new] = ow
                    n_new += 1
        else:
            for d in range(n_dirty[o]):
                p = dirty[o, d]
                v = _act(work[w_in + p], kind)
                if v != work[w_out + p]:
                    work[w_out + p] = v
                    dirty[o + 1, n_new] = p
                    d_row[o + 1, n_new] = d_row[o, d]
                    d_col[o + 1, n_new] = d_col[o, d]
                    n_new += 1
        n_dirty[o + 1] = n_new
        if n_new == 0:
            for later in range(o + 2, ops.shape[0] + 1):
                n_dirty[later] = 0
            return


@njit
def _load_channel(S, s, f, FN, st_off, st_size, work):
    """work = channel f of every cached stage of sample s."""
    for k in range(st_size.shape[0]):
        start = FN * st_off[k] + f * st_size[k]
        for q in range(st_size[k]):
            work[st_off[k] + q] = S[s, start + q]


@njit
def _restore_channel(S, s, f, FN, st_off, st_size, work, dirty, n_dirty):
    """Undo the dirty positions of every stage (back to the cache)."""
    for k in range(st_size.shape[0]):
        start = FN * st_off[k] + f * st_size[k]
        for d in range(n_dirty[k]):
            p = dirty[k, d]
            work[st_off[k] + p] = S[s, start + p]


@njit
def _conv_delta_task(
    task,
    x,
    xnz_ptr,
    xnz_row,
    xnz_col,
    xnz_val,
    C,
    H,
    W,
    Wt,
    stride,
    pad,
    OH,
    OW,
    ops,
    st_off,
    st_size,
    S,
    tail,
    t,
    h,
    guard,
    sel,
    grp_ptr,
    grp_idx,
    width,
    n_tasks,
    out_sums,
):
    """out_sums[p] = sum_n (L_n(+) - L_n(-)) for conv parameter sel[p] (flat index into
    Wt, then the bias), samples in ascending order inside one task.

    One task of ``n_tasks`` (run side by side by fastnum.engine._run_tasks).  A task
    owns whole filters f (the positions p of filter f's parameters in sel are
    grp_idx[grp_ptr[f]:grp_ptr[f + 1]]), so each sample's cached channel is loaded
    once for all of the filter's parameters.  The non-zero pixels of channel c of
    sample s are entries xnz_ptr[s * C + c] to xnz_ptr[s * C + c + 1] of xnz_row,
    xnz_col (position) and xnz_val (value).  ``tail`` as for :func:`_propagate`.
    """
    w, w_off, sizes, acts, z_off, Z, A = tail
    n = x.shape[0]
    FN = Wt.shape[0]
    FH = Wt.shape[2]
    FW = Wt.shape[3]
    n_w = Wt.size
    size = OH * OW
    n_stages = st_size.shape[0]
    last = n_stages - 1
    fsize = st_size[last]
    d1 = sizes[1]
    n_sel = sel.shape[0]
    biggest = 0
    for k in range(n_stages):
        biggest = max(biggest, st_size[k])
    work = np.empty(st_off[n_stages])
    dirty = np.empty((n_stages, biggest), dtype=np.int64)
    d_row = np.empty((n_stages, biggest), dtype=np.int64)
    d_col = np.empty((n_stages, biggest), dtype=np.int64)
    n_dirty = np.zeros(n_stages, dtype=np.int64)
    lo_h = np.zeros((max(n_stages - 1, 1), max(H, OH)), dtype=np.int64)
    hi_h = np.zeros_like(lo_h)
    lo_w = np.zeros((max(n_stages - 1, 1), max(W, OW)), dtype=np.int64)
    hi_w = np.zeros_like(lo_w)
    _window_tables(ops, lo_h, hi_h, lo_w, hi_w)
    mark = np.zeros(biggest, dtype=np.int8)
    tpos = np.empty(size, dtype=np.int64)
    trow = np.empty(size, dtype=np.int64)
    tcol = np.empty(size, dtype=np.int64)
    tval = np.empty(size)
    moved_idx = np.empty((2, fsize), dtype=np.int64)
    moved_d = np.empty((2, fsize))
    n_moved = np.zeros(2, dtype=np.int64)
    z1 = np.empty((width, 2))
    z2 = np.empty((width, 2))
    zacc = np.empty(d1)
    dq = np.empty(2)
    mx = np.empty(2)
    sm = np.empty(2)
    res = np.empty(2)
    acc = np.zeros(n_sel)
    for f in range(task, FN, n_tasks):
        if grp_ptr[f + 1] == grp_ptr[f]:
            continue
        fstart = FN * st_off[last] + f * fsize
        for s in range(n):
            _load_channel(S, s, f, FN, st_off, st_size, work)
            for g in range(grp_ptr[f], grp_ptr[f + 1]):
                p = grp_idx[g]
                param = sel[p]
                # Conv outputs this parameter touches in sample s (zero inputs move nothing).
                nt = 0
                if param >= n_w:  # the bias: every output position, input 1
                    for oh in range(OH):
                        for ow in range(OW):
                            tpos[nt] = nt
                            trow[nt] = oh
                            tcol[nt] = ow
                            tval[nt] = 1.0
                            nt += 1
                else:
                    rem = param % (C * FH * FW)
                    ci = rem // (FH * FW)
                    kh = (rem % (FH * FW)) // FW
                    kw = rem % FW
                    # Walk the channel's non-zero pixels: each is seen by at most one
                    # output position through this filter tap.
                    row = s * C + ci
                    for e in range(xnz_ptr[row], xnz_ptr[row + 1]):
                        ih = xnz_row[e] + pad - kh
                        iw = xnz_col[e] + pad - kw
                        if ih < 0 or iw < 0:
                            continue
                        if stride == 1:
                            oh = ih
                            ow = iw
                        else:
                            if ih % stride or iw % stride:
                                continue
                            oh = ih // stride
                            ow = iw // stride
                        if oh < OH and ow < OW:
                            tpos[nt] = oh * OW + ow
                            trow[nt] = oh
                            tcol[nt] = ow
                            tval[nt] = xnz_val[e]
                            nt += 1
                if nt == 0:
                    continue
                for sign in range(2):
                    step = h if sign == 0 else -h
                    for d in range(nt):
                        o = tpos[d]
                        work[o] = work[o] + step * tval[d]
                        dirty[0, d] = o
                        d_row[0, d] = trow[d]
                        d_col[0, d] = tcol[d]
                    n_dirty[0] = nt
                    _pipeline_step(
                        ops,
                        st_off,
                        work,
                        dirty,
                        d_row,
                        d_col,
                        n_dirty,
                        mark,
                        lo_h,
                        hi_h,
                        lo_w,
                        hi_w,
                    )
                    n_moved[sign] = n_dirty[last]
                    for d in range(n_dirty[last]):
                        q = dirty[last, d]
                        moved_idx[sign, d] = f * fsize + q
                        moved_d[sign, d] = work[st_off[last] + q] - S[s, fstart + q]
                    _restore_channel(S, s, f, FN, st_off, st_size, work, dirty, n_dirty)
                if n_moved[0] == 0 and n_moved[1] == 0:
                    continue
                zs = z_off[0] + s * d1
                for sign in range(2):
                    # Contiguous accumulation (vectorizes), then into the evaluation column.
                    for c in range(d1):
                        zacc[c] = Z[zs + c]
                    for q in range(n_moved[sign]):
                        row = moved_idx[sign, q] * d1
                        d = moved_d[sign, q]
                        wrow = w[row : row + d1]
                        for c in range(d1):
                            zacc[c] += d * wrow[c]
                    for c in range(d1):
                        z1[c, sign] = zacc[c]
                _propagate(0, 2, s, z1, z2, dq, tail, t, guard, mx, sm, res)
                acc[p] += res[0] - res[1]
        for g in range(grp_ptr[f], grp_ptr[f + 1]):
            out_sums[grp_idx[g]] = acc[grp_idx[g]]
