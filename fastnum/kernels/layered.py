"""Numba kernels of the layered engine (:mod:`fastnum.engine`): forward and delta cache.

Trusted inputs, float64.  The delta evaluations that read the cache are in
:mod:`~fastnum.kernels.dense_delta` (a perturbed affine layer) and
:mod:`~fastnum.kernels.conv_delta` (a perturbed convolution); both end in
:func:`_propagate` here, which re-evaluates the dense tail from a changed layer.

Layout
------
Every per-sample tensor is a flat row: a conv block's maps ``(C, H, W)`` are
rows of ``C * H * W`` doubles, so one kernel signature serves every geometry
(and the kernels stay plain Python under ``NUMBA_DISABLE_JIT=1``).

* Map kernels (``_conv_channel``, ``_pool_map``, ``_act_map``) work on one
  sample's flat maps; the batch kernels run in parallel over samples (the
  batch convolution scatters non-zero pixels instead, see ``_conv_batch``).
* The conv block's activation and pooling steps are the rows of an ops table
  (``engine`` builds it), read through the column names ``OP_KIND`` ... ``OP_OW``.
* The dense tail (affine layers, each with an optional activation) is packed
  as :mod:`fastnum.kernels._blocks` describes: flat ``w``/``b`` with per-layer
  offsets, widths ``sizes = (d0, ..., dL)``, activation codes ``acts``.
* The delta cache: ``F`` (N, d0) the tail's input, ``Z``/``A`` the tail's
  pre-activations/activations (layer ``l`` at ``z_off[l] + s * d_{l+1}``),
  and for a conv stack ``S``: every stage of the conv block per channel (the
  conv output, then each activation/pooling output).  :class:`DenseTail` groups
  what the delta tasks read of the tail.

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

The delta kernels are plain (``nogil``) functions of one task; the engine runs
their tasks on a thread pool.  A ``prange`` around them made numba compile and
optimize the whole kernel a second time inside the parallel region (the
SimpleConvNet delta path compiled about 5x longer cold, measured).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fastnum._jit import njit, run_tasks
from fastnum.kernels._blocks import NONE, POOL, _act, _affine_into, _zeroed_2d
from fastnum.kernels.losses import column_losses

# Columns of a row of the conv pipeline's ops table (one row per activation or pooling
# step after the convolution): the step's code, the pooling window, stride and
# padding (activations: 0, 0, 1, 0), and the step's input and output map sizes.
OP_KIND, OP_PH, OP_PW, OP_STRIDE, OP_PAD, OP_H, OP_W, OP_OH, OP_OW = range(9)
OPS_COLUMNS = 9


class DenseTail(NamedTuple):
    """The dense tail as the delta tasks read it: the packed weights and the unperturbed
    pass of :func:`_tail_cache` (module docstring)."""

    w: np.ndarray
    w_off: np.ndarray
    sizes: np.ndarray
    acts: np.ndarray
    z_off: np.ndarray
    Z: np.ndarray
    A: np.ndarray


class Evaluation(NamedTuple):
    """What every perturbed loss needs besides the network: labels, steps and log guard."""

    t: np.ndarray
    h: float  # the first evaluation of each pair moves the parameter by +h
    guard: float
    # The second moves it by h_minus: -h for central differences, 0.0 for forward
    # differences (then the second is the unperturbed loss L(theta) itself, evaluated
    # the same way).  zj + (-h) * v is bit for bit zj - h * v.
    h_minus: float


# ------------------------------------------------------------------------------ map pieces


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

# The batch kernels below are serial tasks of :func:`fastnum._jit.run_tasks` over samples
# (a sample's outputs are computed by one task, in the order of a single-thread loop, so
# the split never changes a bit); they compile several times faster than a ``prange``.
# Fewest samples worth a task of their own: a conv or affine row takes tens of
# microseconds, an elementwise or pooling row a few.
_MIN_CONV_ROWS = 4
_MIN_MAP_ROWS = 32


@njit
def _conv_rows(task, n_tasks, x, C, H, W, Wcl, b, stride, pad, OH, OW, out):
    """Samples of :func:`_conv_batch` in task ``task`` of ``n_tasks``."""
    FH = Wcl.shape[1]
    FW = Wcl.shape[2]
    FN = Wcl.shape[3]
    size = OH * OW
    acc = np.empty((size, FN))  # one per task, zeroed per sample
    for n in range(task * x.shape[0] // n_tasks, (task + 1) * x.shape[0] // n_tasks):
        _zeroed_2d(acc)
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


def _conv_batch(x, C, H, W, Wcl, b, stride, pad, OH, OW, out):
    """out (N, FN*OH*OW) = convolution of x (N, C*H*W), parallel over samples.

    ``Wcl`` is the filter bank channel-last, (C, FH, FW, FN): every non-zero pixel
    is scattered into the outputs it feeds for all filters at once (a contiguous,
    vectorized loop over filters), and zero pixels, most of an MNIST digit, cost
    nothing.
    """
    run_tasks(
        _conv_rows,
        x.shape[0],
        x,
        C,
        H,
        W,
        Wcl,
        b,
        stride,
        pad,
        OH,
        OW,
        out,
        min_items=_MIN_CONV_ROWS,
    )


@njit
def _pool_rows(task, n_tasks, x, C, H, W, ph, pw, stride, pad, OH, OW, out):
    """Samples of :func:`_pool_batch` in task ``task`` of ``n_tasks``."""
    for n in range(task * x.shape[0] // n_tasks, (task + 1) * x.shape[0] // n_tasks):
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


def _pool_batch(x, C, H, W, ph, pw, stride, pad, OH, OW, out):
    """out (N, C*OH*OW) = max pooling of x (N, C*H*W)."""
    run_tasks(
        _pool_rows,
        x.shape[0],
        x,
        C,
        H,
        W,
        ph,
        pw,
        stride,
        pad,
        OH,
        OW,
        out,
        min_items=_MIN_MAP_ROWS,
    )


@njit
def _act_rows(task, n_tasks, x, kind, out):
    """Samples of :func:`_act_batch` in task ``task`` of ``n_tasks``."""
    for n in range(task * x.shape[0] // n_tasks, (task + 1) * x.shape[0] // n_tasks):
        _act_map(x[n], x.shape[1], kind, out[n])


def _act_batch(x, kind, out):
    """out = act(x) elementwise, parallel over samples."""
    run_tasks(_act_rows, x.shape[0], x, kind, out, min_items=_MIN_MAP_ROWS)


@njit
def _affine_rows(task, n_tasks, x, Wm, b, out):
    """Samples of :func:`_affine_batch` in task ``task`` of ``n_tasks``."""
    D, M = Wm.shape
    w = Wm.reshape(D * M)  # a view: Wm is C-contiguous
    for n in range(task * x.shape[0] // n_tasks, (task + 1) * x.shape[0] // n_tasks):
        _affine_into(x[n], D, w, 0, b, 0, M, out[n])


def _affine_batch(x, Wm, b, out):
    """out (N, M) = x (N, D) @ Wm (D, M) + b, parallel over samples."""
    run_tasks(_affine_rows, x.shape[0], x, Wm, b, out, min_items=_MIN_CONV_ROWS)


# ------------------------------------------------------------------------------ delta cache


@njit
def _conv_cache_rows(task, n_tasks, x, C, H, W, Wt, b, stride, pad, OH, OW, ops, st_off, S, F):
    """Samples of :func:`_conv_cache` in task ``task`` of ``n_tasks``."""
    FN = Wt.shape[0]
    n_ops = ops.shape[0]
    for n in range(task * x.shape[0] // n_tasks, (task + 1) * x.shape[0] // n_tasks):
        for f in range(FN):
            size = OH * OW
            start = FN * st_off[0] + f * size
            _conv_channel(x[n], C, H, W, Wt, b, f, stride, pad, OH, OW, S[n, start : start + size])
            for o in range(n_ops):
                src = S[n, start : start + size]
                size = ops[o, OP_OH] * ops[o, OP_OW]
                start = FN * st_off[o + 1] + f * size
                dst = S[n, start : start + size]
                if ops[o, OP_KIND] == POOL:
                    _pool_map(
                        src,
                        ops[o, OP_H],
                        ops[o, OP_W],
                        ops[o, OP_PH],
                        ops[o, OP_PW],
                        ops[o, OP_STRIDE],
                        ops[o, OP_PAD],
                        ops[o, OP_OH],
                        ops[o, OP_OW],
                        dst,
                    )
                else:
                    _act_map(src, size, ops[o, OP_KIND], dst)
            for q in range(size):
                F[n, f * size + q] = S[n, start + q]


def _conv_cache(x, C, H, W, Wt, b, stride, pad, OH, OW, ops, st_off, S, F):
    """S (N, FN * stage sizes): per channel, the conv output (stage 0) and the output of
    every pipeline op (stage k + 1), channel f of stage k at FN * st_off[k] + f * size_k;
    F (N, d0) the last stage, the dense tail's input."""
    run_tasks(
        _conv_cache_rows,
        x.shape[0],
        x,
        C,
        H,
        W,
        Wt,
        b,
        stride,
        pad,
        OH,
        OW,
        ops,
        st_off,
        S,
        F,
        min_items=_MIN_CONV_ROWS,
    )


@njit
def _tail_cache_rows(task, n_tasks, F, w, b, w_off, b_off, sizes, acts, z_off, Z, A):
    """Samples of :func:`_tail_cache` in task ``task`` of ``n_tasks``."""
    n_layers = sizes.shape[0] - 1
    for s in range(task * F.shape[0] // n_tasks, (task + 1) * F.shape[0] // n_tasks):
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


def _tail_cache(F, w, b, w_off, b_off, sizes, acts, z_off, Z, A):
    """The dense tail's unperturbed pass: Z, A per layer."""
    run_tasks(
        _tail_cache_rows,
        F.shape[0],
        F,
        w,
        b,
        w_off,
        b_off,
        sizes,
        acts,
        z_off,
        Z,
        A,
        min_items=_MIN_CONV_ROWS,
    )


@njit
def _propagate(m, n_q, s, z1, z2, dq, tail, t, guard, mx, sm, out):
    """Losses of sample s for the n_q evaluations whose layer-m pre-activations are the
    columns of z1[:d_{m+1}, :n_q]; every later layer is the cached pre-activation plus
    the activation changes times the weights.

    ``tail`` is the :class:`DenseTail`.
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
