"""The delta evaluation of a perturbed convolution (the engine's conv delta).

A conv parameter moves one output channel f by ``h * x`` at the positions its
non-zero inputs reach.  That channel's activation/pooling pipeline is pushed
forward from the dirty positions only (:func:`_pipeline_step`: an op recomputes
the outputs a dirty input can reach and keeps those that really changed), the
features that moved shift the first affine layer's pre-activations, and
:func:`fastnum.kernels.layered._propagate` re-evaluates the rest of the tail.
A task owns whole filters, so each sample's cached channel is loaded once for all
of the filter's parameters.  Layout, cache and guarantees:
:mod:`fastnum.kernels.layered`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fastnum._jit import njit
from fastnum.kernels._blocks import POOL, _act, _zeroed, _zeroed_2d
from fastnum.kernels.layered import (
    OP_H,
    OP_KIND,
    OP_OH,
    OP_OW,
    OP_PAD,
    OP_PH,
    OP_PW,
    OP_STRIDE,
    OP_W,
    _pool_window,
    _propagate,
)


class ConvImage(NamedTuple):
    """The batch's images (N, C*H*W) and their non-zero pixels: channel c of sample s
    has entries ``nz_ptr[s * C + c]`` to ``nz_ptr[s * C + c + 1]`` of ``nz_row``,
    ``nz_col`` (position) and ``nz_val`` (value)."""

    x: np.ndarray
    nz_ptr: np.ndarray
    nz_row: np.ndarray
    nz_col: np.ndarray
    nz_val: np.ndarray
    C: int
    H: int
    W: int


class ConvBlock(NamedTuple):
    """The convolution (filters ``Wt`` (FN, C, FH, FW), stride, padding, output OH x OW),
    its pipeline's ops table, and the cache ``S`` of every stage per channel (stage k
    of channel f at ``FN * st_off[k] + f * st_size[k]``)."""

    Wt: np.ndarray
    stride: int
    pad: int
    OH: int
    OW: int
    ops: np.ndarray
    st_off: np.ndarray
    st_size: np.ndarray
    S: np.ndarray


class ConvSelection(NamedTuple):
    """The conv parameters to evaluate: ``sel[p]`` a flat index into Wt (then the bias
    at ``Wt.size + f``); filter f's positions in sel are
    ``grp_idx[grp_ptr[f]:grp_ptr[f + 1]]``."""

    sel: np.ndarray
    grp_ptr: np.ndarray
    grp_idx: np.ndarray


@njit
def _window_tables(ops, lo_h, hi_h, lo_w, hi_w):
    """For each pooling op and input row (column): the first and last window containing it."""
    for o in range(ops.shape[0]):
        if ops[o, OP_KIND] != POOL:
            continue
        for axis in range(2):
            win = ops[o, OP_PH + axis]
            stride = ops[o, OP_STRIDE]
            pad = ops[o, OP_PAD]
            n_in = ops[o, OP_H + axis]
            n_out = ops[o, OP_OH + axis]
            lo_t = lo_h if axis == 0 else lo_w
            hi_t = hi_h if axis == 0 else hi_w
            for i in range(n_in):
                lo = i + pad - win + 1
                lo_t[o, i] = 0 if lo <= 0 else (lo + stride - 1) // stride
                hi_t[o, i] = min((i + pad) // stride, n_out - 1)


@njit
def _pool_step(o, ops, st_off, work, dirty, d_row, d_col, n_dirty, mark, lo_h, hi_h, lo_w, hi_w):
    """Pooling op o of the pipeline from its dirty inputs: the outputs that changed."""
    H = ops[o, OP_H]
    W = ops[o, OP_W]
    OW = ops[o, OP_OW]
    ph = ops[o, OP_PH]
    pw = ops[o, OP_PW]
    stride = ops[o, OP_STRIDE]
    pad = ops[o, OP_PAD]
    w_in = st_off[o]
    w_out = st_off[o + 1]
    # The windows a dirty input lies in, each once (mark), are the candidates.
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
    n_new = 0
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
    return n_new


@njit
def _act_step(o, kind, st_off, work, dirty, d_row, d_col, n_dirty):
    """Activation op o of the pipeline from its dirty inputs: the outputs that changed."""
    w_in = st_off[o]
    w_out = st_off[o + 1]
    n_new = 0
    for d in range(n_dirty[o]):
        p = dirty[o, d]
        v = _act(work[w_in + p], kind)
        if v != work[w_out + p]:
            work[w_out + p] = v
            dirty[o + 1, n_new] = p
            d_row[o + 1, n_new] = d_row[o, d]
            d_col[o + 1, n_new] = d_col[o, d]
            n_new += 1
    return n_new


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
        kind = ops[o, OP_KIND]
        if kind == POOL:
            n_new = _pool_step(
                o, ops, st_off, work, dirty, d_row, d_col, n_dirty, mark, lo_h, hi_h, lo_w, hi_w
            )
        else:
            n_new = _act_step(o, kind, st_off, work, dirty, d_row, d_col, n_dirty)
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
def _touched_outputs(param, s, geom, xnz_ptr, xnz_row, xnz_col, xnz_val, tpos, trow, tcol, tval):
    """The conv outputs ``param`` touches in sample s, into tpos/trow/tcol and tval (the
    input that multiplies it): their count (zero inputs move nothing).  ``geom`` is
    (C, FH, FW, n_w, OH, OW, stride, pad), n_w the number of filter weights."""
    C, FH, FW, n_w, OH, OW, stride, pad = geom
    nt = 0
    if param >= n_w:  # the bias: every output position, input 1
        for oh in range(OH):
            for ow in range(OW):
                tpos[nt] = nt
                trow[nt] = oh
                tcol[nt] = ow
                tval[nt] = 1.0
                nt += 1
        return nt
    rem = param % (C * FH * FW)
    ci = rem // (FH * FW)
    kh = (rem % (FH * FW)) // FW
    kw = rem % FW
    # Walk the channel's non-zero pixels: each is seen by at most one output
    # position through this filter tap.
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
    return nt


@njit
def _first_layer_columns(zs, d1, n_moved, moved_idx, moved_d, w, Z, zacc, z1):
    """z1[:, sign] = the first affine layer's pre-activations (from Z[zs:]) with the moved
    features of each sign added (contiguous accumulation, which vectorizes)."""
    for sign in range(2):
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


@njit
def _conv_delta_task(task, n_tasks, image, block, tail, ev, chosen, width, out_sums):
    """out_sums[p] = sum_n (L_n(+) - L_n(-)) for conv parameter chosen.sel[p], samples in
    ascending order inside one task (L_n(-): the step ``ev.h_minus``).

    One task of ``n_tasks`` (run side by side by :func:`fastnum._jit.run_tasks`); it owns
    whole filters f.  ``image`` is the :class:`ConvImage`, ``block`` the
    :class:`ConvBlock`, ``tail`` the :class:`~fastnum.kernels.layered.DenseTail`,
    ``ev`` the :class:`~fastnum.kernels.layered.Evaluation`, ``chosen`` the
    :class:`ConvSelection`.  The groups are unpacked once here and the helpers take
    plain arrays (a NamedTuple field read in a hot loop costs a reference count each time).
    """
    x, xnz_ptr, xnz_row, xnz_col, xnz_val, C, H, W = image
    Wt, stride, pad, OH, OW, ops, st_off, st_size, S = block
    t, h, guard, h_minus = ev
    sel, grp_ptr, grp_idx = chosen
    w, _, sizes, _, z_off, Z, _ = tail
    n = x.shape[0]
    FN = Wt.shape[0]
    geom = (C, Wt.shape[2], Wt.shape[3], Wt.size, OH, OW, stride, pad)
    last = st_size.shape[0] - 1
    fsize = st_size[last]
    d1 = sizes[1]
    # The task's buffers: this channel's stages (stage k at st_off[k]); per stage the
    # positions that differ from the cache with their rows and columns; the pooling
    # outputs already queued; per pooling op and input row/column the first and last
    # window; the conv outputs one parameter touches; the tail inputs that moved.
    n_stages = st_size.shape[0]
    size = OH * OW
    biggest = 0
    for k in range(n_stages):
        biggest = max(biggest, st_size[k])
    work = np.empty(st_off[n_stages])
    dirty = np.empty((n_stages, biggest), dtype=np.int64)
    d_row = np.empty((n_stages, biggest), dtype=np.int64)
    d_col = np.empty((n_stages, biggest), dtype=np.int64)
    n_dirty = _zeroed(np.empty(n_stages, dtype=np.int64))
    mark = _zeroed(np.empty(biggest, dtype=np.int8))
    lo_h = _zeroed_2d(np.empty((max(n_stages - 1, 1), max(H, OH)), dtype=np.int64))
    hi_h = _zeroed_2d(np.empty(lo_h.shape, dtype=np.int64))
    lo_w = _zeroed_2d(np.empty((max(n_stages - 1, 1), max(W, OW)), dtype=np.int64))
    hi_w = _zeroed_2d(np.empty(lo_w.shape, dtype=np.int64))
    _window_tables(ops, lo_h, hi_h, lo_w, hi_w)
    tpos = np.empty(size, dtype=np.int64)
    trow = np.empty(size, dtype=np.int64)
    tcol = np.empty(size, dtype=np.int64)
    tval = np.empty(size)
    moved_idx = np.empty((2, fsize), dtype=np.int64)
    moved_d = np.empty((2, fsize))
    n_moved = _zeroed(np.empty(2, dtype=np.int64))
    z1 = np.empty((width, 2))
    z2 = np.empty((width, 2))
    zacc = np.empty(d1)
    dq = np.empty(2)
    mx = np.empty(2)
    sm = np.empty(2)
    res = np.empty(2)
    acc = _zeroed(np.empty(sel.shape[0]))
    for f in range(task, FN, n_tasks):
        if grp_ptr[f + 1] == grp_ptr[f]:
            continue
        fstart = FN * st_off[last] + f * fsize
        for s in range(n):
            _load_channel(S, s, f, FN, st_off, st_size, work)
            for g in range(grp_ptr[f], grp_ptr[f + 1]):
                p = grp_idx[g]
                nt = _touched_outputs(
                    sel[p], s, geom, xnz_ptr, xnz_row, xnz_col, xnz_val, tpos, trow, tcol, tval
                )
                if nt == 0:
                    continue
                # +h (sign 0) and h_minus (sign 1: -h, or 0 for forward differences)
                # through the channel's pipeline: the tail inputs that moved, and by how much.
                for sign in range(2):
                    step = h if sign == 0 else h_minus
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
                _first_layer_columns(zs, d1, n_moved, moved_idx, moved_d, w, Z, zacc, z1)
                _propagate(0, 2, s, z1, z2, dq, tail, t, guard, mx, sm, res)
                acc[p] += res[0] - res[1]
        for g in range(grp_ptr[f], grp_ptr[f + 1]):
            out_sums[grp_idx[g]] = acc[grp_idx[g]]
