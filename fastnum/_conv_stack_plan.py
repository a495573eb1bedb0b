"""The ``delta`` gradient of deep convolution stacks (:mod:`fastnum.kernels.conv_stack`).

:mod:`fastnum.engine` hands a stack here when it starts with a convolution, has no
batch normalisation, reaches a dense output (at least one affine layer, no
convolution or pooling after the first affine) and is not already covered by the
engine's one-convolution delta kernel: any sequence of convolutions, poolings,
activations and dropout masks, then affine layers with activations and dropout (the
book's chapter 8 ``DeepConvNet``).

The unperturbed pass runs on the engine's own batch kernels (the ``full`` path's
values exactly), and every stage is kept, channels-last, for the whole batch.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fastnum._engine_delta import _delta_plan, _finite_loss
from fastnum._engine_layers import LAYER_KINDS, _mask_names
from fastnum._jit import JIT_ENABLED, get_num_threads, run_tasks
from fastnum.kernels import conv_stack as kern
from fastnum.kernels import conv_stack_ops as table
from fastnum.kernels._blocks import ACTIVATION_CODES
from fastnum.layers import conv_output_size


class StackPlan(NamedTuple):
    stack: tuple


def plan(stack):
    """A :class:`StackPlan` when the conv-stack delta kernel covers ``stack``, else None."""
    if not stack or stack[0][0] != "conv":
        return None
    dense = False
    for spec in stack:
        kind = spec[0]
        if kind == "affine":
            dense = True
        elif kind in ("conv", "pool"):
            if dense:
                return None
        elif kind not in ACTIVATION_CODES and kind != "dropout":
            return None  # batch normalisation couples the samples: not this kernel
    if not dense:
        return None
    if _delta_plan(stack) is not None:
        return None  # one convolution: the engine's own delta kernel
    return StackPlan(tuple(stack))


def _geometry(stack, shapes, sample_shape):
    """Per op: (kind row of the ops table without offsets), stage sizes, mask sizes."""
    C, H, W = sample_shape
    rows, sizes, mask_sizes = [], [C * H * W], []
    for spec in stack:
        kind = spec[0]
        row = [0] * table.N_COLS
        row[table.C_IN], row[table.H_IN], row[table.W_IN] = C, H, W
        row[table.STRIDE] = 1
        if kind == "conv":
            FN, _, FH, FW = shapes[spec[1]]
            stride, pad = spec[3], spec[4]
            C, H, W = FN, conv_output_size(H, FH, stride, pad), conv_output_size(W, FW, stride, pad)
            row[table.KIND], row[table.KH], row[table.KW] = table.CONV, FH, FW
            row[table.STRIDE], row[table.PAD] = stride, pad
        elif kind == "pool":
            _, ph, pw, stride, pad = spec
            H, W = conv_output_size(H, ph, stride, pad), conv_output_size(W, pw, stride, pad)
            row[table.KIND], row[table.KH], row[table.KW] = table.POOL, ph, pw
            row[table.STRIDE], row[table.PAD] = stride, pad
        elif kind == "affine":
            C, H, W = shapes[spec[1]][1], 1, 1
            row[table.KIND] = table.AFFINE
        elif kind == "dropout":
            row[table.KIND] = table.DROPOUT
            mask_sizes.append(C * H * W)
        else:
            row[table.KIND], row[table.CODE] = table.ACT, ACTIVATION_CODES[kind]
        row[table.C_OUT], row[table.H_OUT], row[table.W_OUT] = C, H, W
        rows.append(row)
        sizes.append(C * H * W)
    return rows, sizes, mask_sizes


def _linear_stretch(stack):
    """Op index a of ``conv relu pool affine`` (the last such convolution after the
    first op), whose change the kernel maps through one matrix per sample; -1: none."""
    kinds = [spec[0] for spec in stack]
    for a in range(len(kinds) - 4, 0, -1):
        if kinds[a : a + 4] == ["conv", "relu", "pool", "affine"]:
            return a
    return -1


def _channels_last(a, shape):
    """(N, C*H*W) channel-major rows -> (N, H*W*C) channels-last rows."""
    C, H, W = shape
    return a.reshape(a.shape[0], C, H, W).transpose(0, 2, 3, 1).reshape(a.shape[0], -1)


def _jobs(stack, shapes, shapes_in, indices):
    """Jobs (op, f, c, tap) of the requested parameters, and (name, slice) of each."""
    rows, spans = [], []
    start = 0
    for k, spec in enumerate(stack):
        if spec[0] not in ("conv", "affine"):
            continue
        wn, bn = spec[1], spec[2]
        for name, is_bias in ((wn, False), (bn, True)):
            if indices is None:
                idx = np.arange(int(np.prod(shapes[name])), dtype=np.int64)
            elif name in indices:
                idx = np.asarray(indices[name], dtype=np.int64)
            else:
                continue
            job = np.zeros((len(idx), 4), dtype=np.int64)
            job[:, 0] = k
            if is_bias:
                job[:, 1], job[:, 2] = idx, -1
            elif spec[0] == "conv":
                FN, C, FH, FW = shapes[wn]
                f, c, kh, kw = np.unravel_index(idx, (FN, C, FH, FW))
                job[:, 1], job[:, 2], job[:, 3] = f, c, kh * FW + kw
            else:
                M = shapes[wn][1]
                r, j = idx // M, idx % M
                Ci, Hi, Wi = shapes_in[k]
                # Row r of W reads feature r of the channel-major flattening.
                job[:, 1], job[:, 2] = j, (r % (Hi * Wi)) * Ci + r // (Hi * Wi)
            rows.append(job)
            spans.append((name, slice(start, start + len(idx))))
            start += len(idx)
    jobs = np.concatenate(rows) if rows else np.zeros((0, 4), dtype=np.int64)
    return np.ascontiguousarray(jobs), spans


def delta_gradient(splan, params, x, t, h, log_guard, masks, indices=None):
    """Delta gradients of a conv stack: every parameter (``indices`` None, arrays shaped
    like the parameters) or at ``indices`` (name -> flat indices, 1-D results)."""
    stack = splan.stack
    n = x.shape[0]
    masks = masks or {}
    shapes = {k: v.shape for k, v in params.items()}
    _check_memory(splan, shapes, x)
    rows, sizes, _ = _geometry(stack, shapes, x.shape[1:])
    st_off = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    shapes_in = [(r[table.C_IN], r[table.H_IN], r[table.W_IN]) for r in rows]

    # The unperturbed pass on the engine's batch kernels, every stage kept channels-last.
    S = np.empty((n, int(st_off[-1])))
    S[:, : sizes[0]] = _channels_last(x.reshape(n, -1), x.shape[1:])
    inputs = {**params, **{nm: masks[nm] for nm in _mask_names(stack) if nm in masks}}
    missing = [nm for nm in _mask_names(stack) if nm not in masks]
    if missing:
        raise ValueError(
            f"the stack's dropout layers need masks {missing}; pass masks={{name: 0/1 array}}."
        )
    a = x.reshape(n, -1)
    shape = x.shape[1:]
    packed_w, w_off, mask_rows, m_off = [], 0, [], 0
    for k, spec in enumerate(stack):
        layer = LAYER_KINDS[spec[0]]
        a = layer.forward(spec, inputs, a, shape)
        shape = layer.out_shape(spec, inputs, shape)
        out_shape = (rows[k][table.C_OUT], rows[k][table.H_OUT], rows[k][table.W_OUT])
        S[:, st_off[k + 1] : st_off[k + 2]] = _channels_last(a, out_shape)
        rows[k][table.IN_OFF], rows[k][table.OUT_OFF] = st_off[k], st_off[k + 1]
        if spec[0] == "conv":
            packed_w.append(params[spec[1]].transpose(1, 2, 3, 0).ravel())
        elif spec[0] == "affine":
            Ci, Hi, Wi = shapes_in[k]
            Wm = params[spec[1]]
            # Rows into the input's channels-last order.
            packed_w.append(Wm.reshape(Ci, Hi, Wi, -1).transpose(1, 2, 0, 3).ravel())
        elif spec[0] == "dropout":
            mask = np.asarray(masks[spec[1]], dtype=np.float64).reshape(n, -1)
            mask_rows.append(_channels_last(mask, shapes_in[k]))
            rows[k][table.M_OFF] = m_off
            m_off += mask_rows[-1].shape[1]
        if spec[0] in ("conv", "affine"):
            rows[k][table.W_OFF] = w_off
            w_off += packed_w[-1].size
    ops = np.array(rows, dtype=np.int64).reshape(len(rows), table.N_COLS)
    wp = np.ascontiguousarray(np.concatenate(packed_w))
    mk = np.ascontiguousarray(np.concatenate(mask_rows, axis=1) if mask_rows else np.zeros((n, 1)))

    jobs, spans = _jobs(stack, shapes, shapes_in, indices)
    names = [name for name, _ in spans]
    logits = S[:, st_off[-2] : st_off[-1]]
    if not _finite_loss(logits, t, float(log_guard)):
        # Every central difference of a non-finite batch loss is NaN (engine._nan_gradients).
        return {
            nm: np.full(shapes[nm] if indices is None else len(indices[nm]), np.nan) for nm in names
        }
    sums = np.zeros(len(jobs))
    lin_a = _linear_stretch(stack)
    if lin_a >= 0 and len(jobs) and jobs[:, 0].min() < lin_a:
        M = rows[lin_a + 3][table.C_OUT]
        J = np.empty((n, sizes[lin_a] * M))
        kern._linear_tail_cache(S, wp, ops, lin_a, J)
        Wc = params[stack[lin_a][1]]
        n1 = np.abs(Wc).reshape(Wc.shape[0], -1).sum(axis=1)
    else:
        lin_a, J, n1 = -1, np.zeros((1, 1)), np.zeros(1)
    if len(jobs):
        max_pos = max(r[table.H_OUT] * r[table.W_OUT] for r in rows)
        max_pos = max(max_pos, sizes[0])
        run_tasks(
            kern._stack_delta_task,
            len(jobs),
            jobs,
            S,
            mk,
            wp,
            ops,
            np.ascontiguousarray(t, dtype=np.int64),
            float(h),
            float(log_guard),
            int(max_pos),
            int(lin_a),
            J,
            n1,
            sums,
        )
    sums *= 1.0 / (2.0 * h * n)
    grads = {}
    for name, span in spans:
        g = sums[span]
        grads[name] = g.reshape(shapes[name]) if indices is None else g.copy()
    return grads


def _check_memory(splan, shapes, x):
    """Raise the engine's DeltaMemoryError, before allocating, when the caches do not fit."""
    # Imported here: the engine's memory module counts this kernel's caches (memory below).
    from fastnum._engine_memory import DeltaMemory, DeltaMemoryError, available_memory

    available, source = available_memory()
    if available is None:
        return
    threads = get_num_threads() if JIT_ENABLED else 1
    need = DeltaMemory(*memory(splan, shapes, x.shape[1:], threads), threads)
    if need.bytes(x.shape[0]) > available:
        raise DeltaMemoryError(
            need.bytes(x.shape[0]), available, x.shape[0], need.max_batch(available), source
        )


def memory(splan, shapes, sample_shape, threads):
    """(per_sample, fixed) bytes that :func:`delta_gradient` allocates.

    Per sample: every stage of the unperturbed pass, channels-last (``8 sum_k size_k``
    with the input), the dropout masks in the same layout (``8`` per masked value),
    and the engine's forward stage and its channels-last copy while the cache is
    built (``16 max_k size_k``), and for a ``conv relu pool affine`` stretch after the
    first op, its matrix (``8 size_a M``: the convolution's input times the affine
    layer's outputs).  Fixed: the packed weights and the gradient (``16``
    bytes per parameter), the jobs (``32`` bytes per parameter) and per task running
    at once: two change columns of every stage (``16 sum_k size_k``) and the dirty
    lists (``8 (n_ops + 1) max_pos + max_pos``, max_pos the most spatial positions
    of any stage).
    """
    rows, sizes, mask_sizes = _geometry(splan.stack, shapes, tuple(sample_shape))
    total = sum(sizes)
    per_sample = 8 * total + 8 * sum(mask_sizes) + 16 * max(sizes)
    a = _linear_stretch(splan.stack)
    if a >= 0:  # the linear stretch's matrix
        per_sample += 8 * sizes[a] * rows[a + 3][table.C_OUT]
    n_params = sum(
        int(np.prod(shapes[spec[k]]))
        for spec in splan.stack
        if spec[0] in ("conv", "affine")
        for k in (1, 2)
    )
    max_pos = max([r[table.H_OUT] * r[table.W_OUT] for r in rows] + [sizes[0]])
    task = 16 * total + 8 * (len(rows) + 1) * max_pos + max_pos
    return per_sample, 48 * n_params + threads * task
