"""The engine's ``delta`` strategy: which stacks each delta kernel covers, and its driver.

:data:`fastnum.engine.DELTA_KERNELS` lists the delta kernels as (plan, run) rows; a
plan function returns the stack in the shape its kernel covers, or None.  This
module holds the two rows of today: an optional convolution block followed by
dense layers (:func:`_delta_plan`, :func:`_delta_at`; kernels in
:mod:`fastnum.kernels.layered`, :mod:`~fastnum.kernels.dense_delta` and
:mod:`~fastnum.kernels.conv_delta`), and dense stacks with batch norm or dropout
(:func:`_norm_plan`, :func:`_norm_delta_at`; :mod:`fastnum.kernels.normalization`).
The delta tasks run side by side on a thread pool (:func:`fastnum._jit.run_tasks`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fastnum._engine_layers import _conv_shape
from fastnum._jit import run_tasks
from fastnum.constants import BN_EPSILON
from fastnum.kernels import conv_delta, dense_delta, layered, normalization
from fastnum.kernels._blocks import (
    ACTIVATION_CODES,
    NONE,
    POOL,
    batch_offsets,
    nonzeros,
    pack_dense,
    starts,
)
from fastnum.kernels.layered import OP_OH, OP_OW, OPS_COLUMNS
from fastnum.layers import conv_output_size

# ---------------------------------------------------------------------------- tasks


# The delta kernels run on the shared pool of :func:`fastnum._jit.run_tasks` (one item
# per filter, unit or job; a task takes items task, task + n_tasks, ...).  Every output
# cell belongs to exactly one item and is summed in a fixed order inside it, so neither
# the split nor the schedule changes a result.  Re-exported under its old name.
_run_tasks = run_tasks


# ---------------------------------------------------------------------------- conv + dense


class _DeltaPlan(NamedTuple):
    conv: tuple | None  # the conv spec, or None for a dense stack
    ops: tuple  # activation/pool specs between the conv and the first affine
    tail: tuple  # (W_name, b_name, activation code) per affine layer


def _delta_plan(stack):
    """The stack in the shape the layered delta kernels cover, or None."""
    k = 0
    conv = None
    ops = []
    if stack and stack[0][0] == "conv":
        conv = stack[0]
        k = 1
        while k < len(stack) and (stack[k][0] == "pool" or stack[k][0] in ACTIVATION_CODES):
            ops.append(stack[k])
            k += 1
    tail = []
    while k < len(stack):
        spec = stack[k]
        if spec[0] != "affine":
            return None
        code = NONE
        if k + 1 < len(stack) and stack[k + 1][0] in ACTIVATION_CODES:
            code = ACTIVATION_CODES[stack[k + 1][0]]
            k += 1
        tail.append((spec[1], spec[2], code))
        k += 1
    if not tail:
        return None
    return _DeltaPlan(conv, tuple(ops), tuple(tail))


def _ops_table(ops, shape):
    """The channel pipeline's rows, columns as ``layered.OP_KIND`` ... ``OP_OW`` name them."""
    rows = []
    for spec in ops:
        _, H, W = shape
        if spec[0] == "pool":
            _, ph, pw, stride, pad = spec
            OH, OW = conv_output_size(H, ph, stride, pad), conv_output_size(W, pw, stride, pad)
            rows.append((POOL, ph, pw, stride, pad, H, W, OH, OW))
            shape = (shape[0], OH, OW)
        else:
            rows.append((ACTIVATION_CODES[spec[0]], 0, 0, 1, 0, H, W, H, W))
    return np.array(rows, dtype=np.int64).reshape(len(rows), OPS_COLUMNS), shape


def _finite_loss(logits, t, guard):
    """Whether every sample's loss at the cached logits is finite (in NumPy: a parallel
    kernel's launch costs more than this at the book's batch sizes)."""
    with np.errstate(all="ignore"):  # overflowed logits are what this looks for
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        y = e[np.arange(len(t)), t] / e.sum(axis=1)
        return bool(np.isfinite(np.log(y + guard)).all())


def _nan_gradients(plan, params, indices):
    """NaN for every requested gradient cell, shaped as :func:`_delta_at` returns them.

    When a sample's loss at theta is not finite (logits that overflowed, a NaN
    parameter), so is the batch mean at theta +- h, and every central difference is
    NaN, as the reference computes it.  The delta evaluations would instead count a
    parameter that moves nothing (a step lost to rounding next to 1e307) as an exact
    0: a finite, wrong gradient.
    """
    names = ([plan.conv[1], plan.conv[2]] if plan.conv is not None else []) + [
        nm for wn, bn, _ in plan.tail for nm in (wn, bn)
    ]
    if indices is None:
        return {nm: np.full(params[nm].shape, np.nan) for nm in names}
    return {nm: np.full(len(indices[nm]), np.nan) for nm in names if nm in indices}


def _conv_cache(plan, params, x):
    """The conv block's cache: (its :class:`~fastnum.kernels.conv_delta.ConvBlock`, F)."""
    n = x.shape[0]
    _, cw, cb, stride, pad = plan.conv
    Wt = params[cw]
    C, H, W = x.shape[1:]
    FN, OH, OW = _conv_shape(plan.conv, params, x.shape[1:])
    ops, fshape = _ops_table(plan.ops, (FN, OH, OW))
    st_size = np.array([OH * OW] + [r[OP_OH] * r[OP_OW] for r in ops], dtype=np.int64)
    st_off = np.concatenate(([0], np.cumsum(st_size))).astype(np.int64)
    xf = x.reshape(n, -1)
    S = np.empty((n, FN * int(st_off[-1])))
    F = np.empty((n, int(np.prod(fshape))))
    layered._conv_cache(xf, C, H, W, Wt, params[cb], stride, pad, OH, OW, ops, st_off, S, F)
    block = conv_delta.ConvBlock(Wt, stride, pad, OH, OW, ops, st_off, st_size, S)
    return block, F


def _conv_image(x):
    """The batch's images as flat rows with their non-zero pixels (:class:`ConvImage`)."""
    n, C, H, W = x.shape
    xf = x.reshape(n, -1)
    xnz_ptr, xnz_idx = nonzeros(xf.reshape(n * C, H * W))
    xnz_val = np.ascontiguousarray(
        xf.reshape(n * C, H * W)[np.repeat(np.arange(n * C), np.diff(xnz_ptr)), xnz_idx]
    )
    return conv_delta.ConvImage(xf, xnz_ptr, xnz_idx // W, xnz_idx % W, xnz_val, C, H, W)


def _conv_gradients(plan, block, x, tail, ev, indices, width):
    """The conv parameters' delta gradients (unscaled sums): name -> sums."""
    _, cw, cb, _, _ = plan.conv
    Wt = block.Wt
    FN, n_w = Wt.shape[0], Wt.size
    if indices is None:
        sel = np.arange(n_w + FN, dtype=np.int64)
    else:
        sel = np.concatenate(
            [
                np.asarray(indices.get(cw, ()), dtype=np.int64),
                np.asarray(indices.get(cb, ()), dtype=np.int64) + n_w,
            ]
        )
    sums = np.zeros(len(sel))
    # Positions in sel grouped by filter (a task owns whole filters).
    filt = np.where(sel < n_w, sel // max(n_w // FN, 1), sel - n_w)
    grp_idx = np.argsort(filt, kind="stable").astype(np.int64)
    grp_ptr = np.zeros(FN + 1, dtype=np.int64)
    np.cumsum(np.bincount(filt, minlength=FN), out=grp_ptr[1:])
    chosen = conv_delta.ConvSelection(sel, grp_ptr, grp_idx)
    run_tasks(conv_delta._conv_delta_task, FN, _conv_image(x), block, tail, ev, chosen, width, sums)
    if indices is None:
        return {cw: sums[:n_w].reshape(Wt.shape), cb: sums[n_w:]}
    n_sel_w = len(indices.get(cw, ()))
    out = {cw: sums[:n_sel_w], cb: sums[n_sel_w:]}
    return {nm: g for nm, g in out.items() if nm in indices}


def _row_selection(inputs, indices, wn, bn, n_out):
    """The :class:`~fastnum.kernels.dense_delta.RowSelection` of one affine layer, and the
    requested flat cells (None: all)."""
    n, n_in = inputs.shape
    amax = np.ascontiguousarray(np.abs(inputs).max(axis=1) if n_in else np.zeros(n))
    if indices is None:
        nz_ptr, nz_idx = nonzeros(inputs)
        max_q = int(np.diff(nz_ptr).max()) + 1
        empty = np.zeros(0, dtype=np.int64)
        sel_ptr = np.zeros(n_out + 1, dtype=np.int64)
        return dense_delta.RowSelection(True, nz_ptr, nz_idx, sel_ptr, empty, max_q, amax), None
    flat_w = np.asarray(indices.get(wn, ()), dtype=np.int64)
    flat_b = np.asarray(indices.get(bn, ()), dtype=np.int64)
    rows = np.concatenate([flat_w // n_out, np.full(len(flat_b), n_in)])
    cols = np.concatenate([flat_w % n_out, flat_b])
    # Each requested cell once, grouped by unit (a repeat would be summed twice).
    keys = np.unique(cols * (n_in + 1) + rows)
    rows, cols = keys % (n_in + 1), keys // (n_in + 1)
    sel_idx = np.ascontiguousarray(rows, dtype=np.int64)
    sel_ptr = np.zeros(n_out + 1, dtype=np.int64)
    np.cumsum(np.bincount(cols, minlength=n_out), out=sel_ptr[1:])
    nz_ptr = np.zeros(n + 1, dtype=np.int64)
    nz_idx = np.zeros(0, dtype=np.int64)
    max_q = max(int(np.diff(sel_ptr).max()), 1)
    chosen = dense_delta.RowSelection(False, nz_ptr, nz_idx, sel_ptr, sel_idx, max_q, amax)
    return chosen, (flat_w, flat_b)


def _dense_gradients(layer, wn, bn, F, tail, ev, indices, width):
    """One affine layer's unscaled delta sums gT (n_out, n_in + 1; the bias last) and the
    requested cells (None: all)."""
    n = F.shape[0]
    n_in, n_out = int(tail.sizes[layer]), int(tail.sizes[layer + 1])
    if layer == 0:
        inputs = F
    else:
        start = int(tail.z_off[layer - 1])
        inputs = tail.A[start : start + n * n_in].reshape(n, n_in)
    chosen, cells = _row_selection(inputs, indices, wn, bn, n_out)
    gT = np.zeros((n_out, n_in + 1))
    run_tasks(dense_delta._dense_delta_task, n_out, layer, F, tail, ev, chosen, width, gT)
    return gT, cells


def _delta_at(plan, params, x, t, h, log_guard, indices, one_sided=False):
    """Delta gradients at ``indices`` (dict name -> flat indices, or None for all).

    ``one_sided``: forward differences (L(theta + h e_i) - L(theta)) / h instead.
    """
    n = x.shape[0]
    guard = float(log_guard)
    packed = pack_dense(
        [params[wn] for wn, _, _ in plan.tail], [params[bn] for _, bn, _ in plan.tail]
    )
    sizes, w, b, w_off, b_off = packed
    acts = np.array([code for _, _, code in plan.tail], dtype=np.int64)
    width = int(sizes[1:].max())
    if plan.conv is not None:
        block, F = _conv_cache(plan, params, x)
    else:
        F = x.reshape(n, -1)
    z_off = batch_offsets(n, sizes)
    Z = np.empty(n * int(sizes[1:].sum()))
    A = np.empty_like(Z)
    layered._tail_cache(F, w, b, w_off, b_off, sizes, acts, z_off, Z, A)
    if not _finite_loss(A[int(z_off[-1]) :].reshape(n, int(sizes[-1])), t, guard):
        return _nan_gradients(plan, params, indices)
    tail = layered.DenseTail(w, w_off, sizes, acts, z_off, Z, A)
    # Central differences pair +h with -h; forward differences pair it with 0 (L(theta)).
    ev = layered.Evaluation(t, float(h), guard, 0.0 if one_sided else -float(h))
    scale = 1.0 / ((1.0 if one_sided else 2.0) * h * n)
    grads = {}
    conv_names = () if plan.conv is None else plan.conv[1:3]
    if any(indices is None or nm in indices for nm in conv_names):
        for nm, sums in _conv_gradients(plan, block, x, tail, ev, indices, width).items():
            sums *= scale
            grads[nm] = sums
    for layer, (wn, bn, _) in enumerate(plan.tail):
        if indices is not None and wn not in indices and bn not in indices:
            continue
        gT, cells = _dense_gradients(layer, wn, bn, F, tail, ev, indices, width)
        gT *= scale
        n_in, n_out = int(sizes[layer]), int(sizes[layer + 1])
        if cells is None:
            grads[wn] = np.ascontiguousarray(gT[:, :n_in].T)
            grads[bn] = gT[:, n_in].copy()
            continue
        flat_w, flat_b = cells
        if wn in indices:
            grads[wn] = gT[flat_w % n_out, flat_w // n_out]
        if bn in indices:
            grads[bn] = gT[flat_b, n_in]
    return grads


# ---------------------------------------------------------------------------- chapter 6


# The chapter 6 delta blocks: parameters evaluated side by side (+h and -h each), and
# the most values a block's buffer (width x evaluations x samples) may hold.
_NORM_PAIRS = 16
_NORM_BLOCK_VALUES = 1 << 21


class _NormLayer(NamedTuple):
    w: str
    b: str
    gamma: str | None  # batch normalisation's parameters, or None
    beta: str | None
    act: int  # activation code (NONE: none)
    mask: str | None  # dropout mask name, or None


def _is_chapter6(stack):
    """True for stacks with batch normalisation or dropout (their own delta kernel)."""
    return any(spec[0] in ("batchnorm", "dropout") for spec in stack)


def _norm_plan(stack, x):
    """Dense layers ``affine [batchnorm] [activation] [dropout]`` (the book's order), or
    None (then ``full`` is used)."""
    if x.ndim != 2:
        return None
    plan, k = [], 0
    while k < len(stack):
        if stack[k][0] != "affine":
            return None
        w, b = stack[k][1:3]
        k += 1
        gamma = beta = mask = None
        code = NONE
        if k < len(stack) and stack[k][0] == "batchnorm":
            gamma, beta = stack[k][1:3]
            k += 1
        if k < len(stack) and stack[k][0] in ACTIVATION_CODES:
            code = ACTIVATION_CODES[stack[k][0]]
            k += 1
        if k < len(stack) and stack[k][0] == "dropout":
            mask = stack[k][1]
            k += 1
        plan.append(_NormLayer(w, b, gamma, beta, code, mask))
    return tuple(plan) if plan else None


def _norm_delta_at(plan, params, x, t, h, log_guard, masks):
    """Every gradient of a dense stack with batch norm / dropout, by the delta kernel
    (:mod:`fastnum.kernels.normalization`)."""
    n = x.shape[0]
    sizes = np.array(
        [params[plan[0].w].shape[0]] + [params[layer.w].shape[1] for layer in plan], dtype=np.int64
    )
    d_out = sizes[1:]
    w = np.concatenate([params[layer.w].ravel() for layer in plan])
    w_off = starts(sizes[:-1] * sizes[1:])
    b = np.concatenate([params[layer.b].ravel() for layer in plan])
    b_off = starts(d_out)
    pairs = list(zip(plan, d_out, strict=True))
    # Layers without batch normalisation carry gamma 1, beta 0 that the kernel never reads.
    g = np.concatenate([params[ly.gamma].ravel() if ly.gamma else np.ones(d) for ly, d in pairs])
    be = np.concatenate([params[ly.beta].ravel() if ly.beta else np.zeros(d) for ly, d in pairs])
    acts = np.array([layer.act for layer in plan], dtype=np.int64)
    bn = np.array([layer.gamma is not None for layer in plan], dtype=np.int64)
    drop = np.array([layer.mask is not None for layer in plan], dtype=np.int64)
    z_off = batch_offsets(n, sizes)
    M = np.concatenate(
        [
            np.asarray(masks[ly.mask], dtype=np.float64).reshape(n, d).T.ravel()
            if ly.mask
            else np.ones(n * d)
            for ly, d in pairs
        ]
    )
    total = int(np.sum(n * d_out))
    Z, XN, A = np.empty(total), np.zeros(total), np.empty(total)
    net = (sizes, w, w_off, b, b_off, g, be, acts, bn, drop, z_off, Z, XN, A, M)
    XT = np.ascontiguousarray(x.T)
    normalization._net_cache(XT, net, BN_EPSILON)
    width = int(d_out.max())
    # Evaluations side by side: the inner loops run over them, so more is faster (the
    # 784-100-100-10 net at batch 100: 10 s of CPU with 2, 4.0 s with 32), within a cap
    # on each buffer's size.
    ne_max = 2 * max(1, min(_NORM_PAIRS, _NORM_BLOCK_VALUES // (2 * width * n)))
    scale = 1.0 / (2.0 * h * n)
    grads = {}
    for layer, spec in enumerate(plan):
        n_in, d = int(sizes[layer]), int(sizes[layer + 1])
        inputs = XT if layer == 0 else A[z_off[layer - 1] : z_off[layer - 1] + n_in * n]
        inputs = inputs.reshape(n_in, n)
        nz_rows = np.flatnonzero((inputs != 0).any(axis=1)).astype(np.int64)
        gT = np.zeros((d, n_in + 3))
        run_tasks(
            normalization._norm_delta_task,
            d,
            layer,
            inputs,
            nz_rows,
            net,
            t,
            float(h),
            float(log_guard),
            BN_EPSILON,
            width,
            ne_max,
            gT,
        )
        gT *= scale
        grads[spec.w] = np.ascontiguousarray(gT[:, :n_in].T)
        grads[spec.b] = gT[:, n_in].reshape(params[spec.b].shape)
        if spec.gamma is not None:
            grads[spec.gamma] = gT[:, n_in + 1].reshape(params[spec.gamma].shape)
            grads[spec.beta] = gT[:, n_in + 2].reshape(params[spec.beta].shape)
    return grads
