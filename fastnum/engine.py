"""One numba engine for sequential layer stacks: forward pass, loss and numerical gradient.

A *stack* is a tuple of layer specs applied in order, followed implicitly by
softmax-with-loss::

    ("conv", W_name, b_name, stride, pad)   # W (FN, C, FH, FW), b (FN,)
    ("pool", pool_h, pool_w, stride, pad)   # max pooling, zero padding
    ("relu",)  ("sigmoid",)
    ("affine", W_name, b_name)              # W (D, M), b (M,); flattens (N, ...) -> (N, D)
    ("batchnorm", gamma_name, beta_name)    # gamma, beta (prod(shape),): training mode
    ("dropout", mask_name)                  # times masks[mask_name], (N, prod(shape)) of 0/1

Batch normalisation is the book's training mode (each feature normalised with the
batch's mean and variance, epsilon ``BN_EPSILON``), so it couples the samples: the
engine's loss is the training loss.  A dropout mask is data, not a parameter: it is
passed in the ``masks`` dict of every call and gets no gradient (the engine never
draws).  ``weight_decay`` adds the book's ``0.5 * lambda * sum(W**2)`` over the conv
and affine weights to the loss, and its exact change to every weight's difference
quotient (``(R(w + h) - R(w - h)) / 2h`` of the real term values, all strategies).

Inputs are trusted (the networks' public front ends validate): ``params`` maps
names to float64 C-contiguous arrays, ``x`` is float64 C-contiguous, (N, C, H, W)
for a stack starting with conv and (N, D) otherwise, ``t`` int64 labels.

Strategies of the numerical gradient (both evaluate the loss at theta +- h e_i
for every parameter; no analytic derivatives anywhere):

``full``
    Per parameter, perturb a private copy of the parameters and run the whole
    forward pass and loss of the batch (the batch kernels are parallel over
    samples, the per-sample losses are summed in a fixed order).  For sampled
    parameters (:func:`numerical_gradient_at`) and small networks.
``delta``
    Cache the unperturbed pass and recompute only what a perturbation changes
    (:mod:`fastnum.kernels.layered`).  Covered stacks: an optional first
    convolution followed by any activations and poolings, then affine layers
    each followed by at most one activation; and dense stacks with batch norm or
    dropout, each affine layer followed by ``[batchnorm] [activation] [dropout]``
    in the book's order (:mod:`fastnum.kernels.normalization`: a perturbation's
    column is renormalised over the batch, then the later layers are recomputed
    for every sample that moved).  Any other stack (two convolutions, two
    activations in a row, batch norm after a convolution, ...) falls back to
    ``full``.

Fast paths: with ``log_guard == 1e-7`` the book's sigmoid two-layer stack runs on
:mod:`fastnum.kernels.two_layer` (gradient and loss; ``predict`` at any guard), so
it is not slower and compiles nothing new through the engine; so does the ``delta``
gradient of the chapter 5 ReLU two-layer stack (1.6 ms vs the engine's 11.8 ms at
784-50-10, batch 100, 2 threads; this is what makes ``fastnum.gradcheck`` of that
network over 1,000x the book's loop); the ``full``
gradient of a dense stack of one hidden activation runs on
:mod:`fastnum.kernels.multilayer` (parallel over parameters).  Its ``delta``
stays on the engine, which was faster on every dense stack measured side by
side (batch 100, MNIST, 2 threads, best of 5, an informal run on the shared
machine: 784-50-10 relu 8.7 ms vs 11.2 ms, 784-100-100-10 relu 69 ms vs 108 ms,
784-50-50-10 sigmoid 84 ms vs 127 ms; the two-layer kernel's 2.2 ms against the
engine's 13.8 ms is why it stays the book's path).  All of them are covered by
the same equivalence tests.

Memory of the delta caches grows with the batch: :func:`delta_memory` counts
what :func:`_delta_at` allocates (``fixed + per_sample * batch`` bytes, formula
in its docstring), and the gradient raises :class:`DeltaMemoryError` (a
``MemoryError``) *before allocating* when that exceeds :func:`available_memory`,
naming the largest batch that fits.  For the book's SimpleConvNet the estimate
is 0.49 MB per image plus 39 MB at 2 threads (88 MB at batch 100, 4.9 GB at
10,000); the measured growth of the virtual size was 0.40 MB per image (MNIST
and uniform random images alike, batch 1,000: 378 MiB and 399 MiB against the
estimate's 502 MiB; ``/proc/self/statm`` sampled every 0.5 ms).

Adding a layer type
-------------------
Everything about a layer type sits in two places: one row in :data:`LAYER_KINDS`
here (its output shape, its batch forward and where its parameter names are in
the spec) and its kernel pieces in :mod:`fastnum.kernels.layered` (a map kernel
like ``_pool_map`` plus the batch wrapper).  That makes it usable by
``predict``, ``loss`` and the ``full`` gradient at once.  For ``delta``: an
elementwise or per-channel op joins the conv channel pipeline as one more
``kind`` in ``_pipeline_step`` (recompute only the outputs a dirty input can
reach) and in :func:`_ops_table`; a layer that mixes channels needs its own
delta kernel beside ``_conv_delta_task`` and a case in :func:`_delta_plan`.  Until
then :func:`_delta_plan` returns None for stacks with it and ``delta`` falls
back to ``full``, which stays correct.  (This paragraph is meant for the map in
``fastnum/kernels/__init__.py``.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from fastnum._jit import JIT_ENABLED, get_num_threads
from fastnum.backend import DEFAULT_STRATEGY, check_strategy
from fastnum.constants import BN_EPSILON, H
from fastnum.constants import LOG_GUARD as BOOK_LOG_GUARD  # the fast-path kernels hard-code it
from fastnum.kernels import layered as kern
from fastnum.kernels import losses as kernel_losses
from fastnum.kernels import normalization as norm_kern
from fastnum.layers import conv_output_size

# Parallel tasks per thread: a few per thread evens out uneven work (border
# pixels are nearly always zero).  Which task computes a gradient cell never
# changes its value.
_TASKS_PER_THREAD = 4


# ---------------------------------------------------------------------------- layer table


def _conv_shape(spec, params, shape):
    FN, C, FH, FW = params[spec[1]].shape
    _, H, W = shape
    return (
        FN,
        conv_output_size(H, FH, spec[3], spec[4]),
        conv_output_size(W, FW, spec[3], spec[4]),
    )


def _conv_forward(spec, params, a, shape):
    C, H, W = shape
    out_shape = _conv_shape(spec, params, shape)
    out = np.empty((a.shape[0], int(np.prod(out_shape))))
    filters_last = np.ascontiguousarray(params[spec[1]].transpose(1, 2, 3, 0))
    kern._conv_batch(
        a, C, H, W, filters_last, params[spec[2]], spec[3], spec[4], out_shape[1], out_shape[2], out
    )
    return out


def _pool_shape(spec, params, shape):
    C, H, W = shape
    _, ph, pw, stride, pad = spec
    return (C, conv_output_size(H, ph, stride, pad), conv_output_size(W, pw, stride, pad))


def _pool_forward(spec, params, a, shape):
    C, H, W = shape
    out_shape = _pool_shape(spec, params, shape)
    out = np.empty((a.shape[0], int(np.prod(out_shape))))
    kern._pool_batch(
        a, C, H, W, spec[1], spec[2], spec[3], spec[4], out_shape[1], out_shape[2], out
    )
    return out


def _act_forward(spec, params, a, shape):
    out = np.empty_like(a)
    kern._act_batch(a, kern.ACTIVATION_CODES[spec[0]], out)
    return out


def _affine_shape(spec, params, shape):
    return (params[spec[1]].shape[1],)


def _affine_forward(spec, params, a, shape):
    W = params[spec[1]]
    out = np.empty((a.shape[0], W.shape[1]))
    kern._affine_batch(a, W, params[spec[2]], out)
    return out


def _batchnorm_forward(spec, params, a, shape):
    out = np.empty_like(a)
    gamma, beta = params[spec[1]].reshape(-1), params[spec[2]].reshape(-1)
    norm_kern._batchnorm_batch(a, gamma, beta, BN_EPSILON, np.empty_like(a), out)
    return out


def _dropout_forward(spec, inputs, a, shape):
    # ``inputs`` holds the masks next to the parameters (see _logits).
    out = np.empty_like(a)
    norm_kern._mask_batch(a, inputs[spec[1]].reshape(a.shape), out)
    return out


def _same_shape(spec, params, shape):
    return shape


class LayerKind(NamedTuple):
    """How the engine runs one layer type: output shape and batch forward on flat rows."""

    out_shape: Callable  # (spec, params, in_shape) -> out_shape
    forward: Callable  # (spec, params, a (N, prod(in_shape)), in_shape) -> (N, prod(out_shape))
    param_slots: tuple  # positions of parameter names in the spec


#: One table of layer types (the extension axis for layers).
LAYER_KINDS = {
    "conv": LayerKind(_conv_shape, _conv_forward, (1, 2)),
    "pool": LayerKind(_pool_shape, _pool_forward, ()),
    "relu": LayerKind(lambda spec, params, shape: shape, _act_forward, ()),
    "sigmoid": LayerKind(lambda spec, params, shape: shape, _act_forward, ()),
    "affine": LayerKind(_affine_shape, _affine_forward, (1, 2)),
    "batchnorm": LayerKind(_same_shape, _batchnorm_forward, (1, 2)),
    "dropout": LayerKind(_same_shape, _dropout_forward, ()),
}


def param_names(stack):
    """Names of the stack's parameters, in layer order."""
    names = []
    for spec in stack:
        if spec[0] not in LAYER_KINDS:
            raise ValueError(
                f"layer kind {spec[0]!r} is unknown; use one of {', '.join(LAYER_KINDS)}."
            )
        names.extend(spec[k] for k in LAYER_KINDS[spec[0]].param_slots)
    return names


# ---------------------------------------------------------------------------- forward and loss


# Forward passes run this many samples at a time: the conv block's intermediate maps
# of a large batch (276 MB for 2,000 MNIST digits in SimpleConvNet) would otherwise
# be allocated and faulted in whole.  Each sample's result does not depend on it.
_FORWARD_CHUNK = 256


def _mask_names(stack):
    return [spec[1] for spec in stack if spec[0] == "dropout"]


def _logits(stack, params, x, masks=None):
    names = _mask_names(stack)
    missing = [nm for nm in names if nm not in (masks or {})]
    if missing:
        raise ValueError(
            f"the stack's dropout layers need masks {missing}; pass masks={{name: 0/1 array}}."
        )
    # Batch normalisation couples the samples: such a batch is never split.
    if x.shape[0] > _FORWARD_CHUNK and not any(spec[0] == "batchnorm" for spec in stack):
        return np.concatenate(
            [
                _logits(
                    stack,
                    params,
                    x[k : k + _FORWARD_CHUNK],
                    {nm: masks[nm].reshape(x.shape[0], -1)[k : k + _FORWARD_CHUNK] for nm in names},
                )
                for k in range(0, x.shape[0], _FORWARD_CHUNK)
            ]
        )
    if names:  # the dropout rows read their masks beside the parameters
        params = {**params, **{nm: masks[nm] for nm in names}}
    shape = x.shape[1:]
    a = x.reshape(x.shape[0], -1)
    for spec in stack:
        kind = LAYER_KINDS[spec[0]]
        a_new = kind.forward(spec, params, a, shape)
        shape = kind.out_shape(spec, params, shape)
        a = a_new
    return a


def _mean_loss(stack, params, x, t, log_guard, masks=None):
    z = _logits(stack, params, x, masks)
    losses = np.empty(z.shape[0])
    kernel_losses._softmax_cross_entropy_rows(z, t, float(log_guard), losses)
    return kern._ordered_sum(losses) / z.shape[0]


def _decay_names(stack):
    """The weights the book's weight decay covers: conv and affine W, in stack order."""
    return [spec[1] for spec in stack if spec[0] in ("conv", "affine")]


def _weight_decay_term(stack, params, weight_decay):
    """The book's ``0.5 * lambda * sum(W**2)``, summed layer by layer (0.0 for lambda 0)."""
    term = 0.0
    if weight_decay:
        for name in _decay_names(stack):
            term += 0.5 * weight_decay * float(np.sum(params[name] ** 2))
    return term


def _decay_differences(w, h, weight_decay):
    """R(w + h) - R(w - h) of the term of each weight: the real values, then the difference."""
    w_plus, w_minus = w + h, w - h
    return 0.5 * weight_decay * (w_plus * w_plus) - 0.5 * weight_decay * (w_minus * w_minus)


def _add_decay(grads, stack, params, h, weight_decay, indices=None):
    """Add the weight-decay term's difference quotient to the gradients of the weights."""
    if not weight_decay:
        return grads
    for name in _decay_names(stack):
        if name not in grads:
            continue
        w = params[name].reshape(-1) if indices is None else params[name].reshape(-1)[indices[name]]
        diff = _decay_differences(w, h, weight_decay) / (2.0 * h)
        grads[name] = grads[name] + diff.reshape(grads[name].shape)
    return grads


def predict(stack, params, x, masks=None):
    """Softmax probabilities of the stack for a batch.

    Parameters
    ----------
    stack : tuple of layer specs
    params : dict of str to ndarray
    x : ndarray, (N, C, H, W) for a stack starting with conv, else (N, D)
    masks : dict of str to ndarray, optional
        The dropout masks the stack names, each (N, ...) of 0/1 (module docstring).

    Returns
    -------
    ndarray, shape (N, K)
    """
    names = _two_layer_names(stack, x)
    if names is not None:  # the book's network keeps its own (already compiled) kernels
        fast = _fast_path_kernels()
        return fast.two_layer_predict(
            fast.two_layer_params(
                {k: params[nm] for k, nm in zip(_BOOK_NAMES, names, strict=True)}
            ),
            x,
        )
    z = _logits(stack, params, x, masks)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def loss(stack, params, x, t, log_guard=BOOK_LOG_GUARD, masks=None, weight_decay=0.0):
    """Batch-mean softmax cross-entropy, ``-log(y[t] + log_guard)`` (guard 0.0: none).

    Parameters
    ----------
    stack, params, x, masks
        As for :func:`predict`.
    t : ndarray of int64, shape (N,)
    log_guard : float, default 1e-7
    weight_decay : float, default 0.0
        The book's lambda: ``0.5 * lambda * sum(W**2)`` over the conv and affine
        weights is added to the loss.

    Returns
    -------
    float
    """
    if weight_decay:
        return loss(stack, params, x, t, log_guard, masks) + _weight_decay_term(
            stack, params, weight_decay
        )
    names = _two_layer_names(stack, x)
    if names is not None and log_guard == BOOK_LOG_GUARD:
        fast = _fast_path_kernels()
        return fast.two_layer_loss(
            fast.two_layer_params(
                {k: params[nm] for k, nm in zip(_BOOK_NAMES, names, strict=True)}
            ),
            x,
            t,
        )
    return float(_mean_loss(stack, params, x, t, log_guard, masks))


# ---------------------------------------------------------------------------- full strategy


def _full_at(stack, params, x, t, h, log_guard, indices, masks=None):
    """Central differences, one whole forward pass per evaluation, on a private copy."""
    private = {k: np.array(v, dtype=np.float64, order="C") for k, v in params.items()}
    grads = {}
    for name, idx in indices.items():
        flat = private[name].reshape(-1)
        g = np.empty(len(idx))
        for q, i in enumerate(idx):
            saved = flat[i]
            flat[i] = saved + h
            f_plus = _mean_loss(stack, private, x, t, log_guard, masks)
            flat[i] = saved - h
            f_minus = _mean_loss(stack, private, x, t, log_guard, masks)
            flat[i] = saved
            g[q] = (f_plus - f_minus) / (2.0 * h)
        grads[name] = g
    return grads


# ---------------------------------------------------------------------------- delta strategy


class _DeltaPlan(NamedTuple):
    conv: tuple | None  # the conv spec, or None for a dense stack
    ops: tuple  # activation/pool specs between the conv and the first affine
    tail: tuple  # (W_name, b_name, activation code) per affine layer


def _delta_plan(stack):
    """The stack in the shape the delta kernels cover, or None (then ``full`` is used)."""
    k = 0
    conv = None
    ops = []
    if stack and stack[0][0] == "conv":
        conv = stack[0]
        k = 1
        while k < len(stack) and stack[k][0] in ("relu", "sigmoid", "pool"):
            ops.append(stack[k])
            k += 1
    tail = []
    while k < len(stack):
        spec = stack[k]
        if spec[0] != "affine":
            return None
        code = kern.NONE
        if k + 1 < len(stack) and stack[k + 1][0] in kern.ACTIVATION_CODES:
            code = kern.ACTIVATION_CODES[stack[k + 1][0]]
            k += 1
        tail.append((spec[1], spec[2], code))
        k += 1
    if not tail:
        return None
    return _DeltaPlan(conv, tuple(ops), tuple(tail))


def _n_tasks(n_items):
    return max(1, min(int(n_items), _TASKS_PER_THREAD * get_num_threads()))


def _run_tasks(task_kernel, n_tasks, *args):
    """task_kernel(task, *args, n_tasks, ...) for every task, on get_num_threads() threads.

    The delta kernels are compiled ``nogil``, so Python threads run them truly in
    parallel.  Every output cell belongs to exactly one task and is summed in a
    fixed order inside it, so the schedule never changes a result.
    """
    threads = min(get_num_threads(), n_tasks)
    if threads <= 1 or not JIT_ENABLED:
        for task in range(n_tasks):
            task_kernel(task, *args)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(task_kernel, task, *args) for task in range(n_tasks)]:
            future.result()  # re-raises a task's exception here


def _ops_table(ops, shape):
    """Rows (kind, ph, pw, stride, pad, H, W, OH, OW) of the channel pipeline."""
    rows = []
    for spec in ops:
        _, H, W = shape
        if spec[0] == "pool":
            _, ph, pw, stride, pad = spec
            OH, OW = conv_output_size(H, ph, stride, pad), conv_output_size(W, pw, stride, pad)
            rows.append((kern.POOL, ph, pw, stride, pad, H, W, OH, OW))
            shape = (shape[0], OH, OW)
        else:
            rows.append((kern.ACTIVATION_CODES[spec[0]], 0, 0, 1, 0, H, W, H, W))
    return np.array(rows, dtype=np.int64).reshape(len(rows), 9), shape


def _nonzeros(a):
    nonzero = a != 0
    nz_ptr = np.zeros(a.shape[0] + 1, dtype=np.int64)
    np.cumsum(nonzero.sum(axis=1), out=nz_ptr[1:])
    return nz_ptr, np.ascontiguousarray(np.nonzero(nonzero)[1], dtype=np.int64)


def _finite_loss(logits, t, guard):
    """Whether every sample's loss at the cached logits is finite (in NumPy: a parallel
    kernel's launch cost 150 us on the loaded 2-core machine, this 40 us at batch 100)."""
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


def _delta_at(plan, params, x, t, h, log_guard, indices):
    """Delta gradients at ``indices`` (dict name -> flat indices, or None for all)."""
    n = x.shape[0]
    guard = float(log_guard)
    tail_w = [params[w] for w, _, _ in plan.tail]
    sizes = np.array([tail_w[0].shape[0]] + [W.shape[1] for W in tail_w], dtype=np.int64)
    w = np.concatenate([W.ravel() for W in tail_w])
    b = np.concatenate([params[bn] for _, bn, _ in plan.tail])
    acts = np.array([code for _, _, code in plan.tail], dtype=np.int64)
    w_off = np.concatenate(([0], np.cumsum(sizes[:-1] * sizes[1:])[:-1])).astype(np.int64)
    b_off = np.concatenate(([0], np.cumsum(sizes[1:])[:-1])).astype(np.int64)
    width = int(sizes[1:].max())

    if plan.conv is not None:
        _, cw, cb, stride, pad = plan.conv
        Wt = params[cw]
        C, H, W = x.shape[1:]
        FN, OH, OW = _conv_shape(plan.conv, params, x.shape[1:])
        ops, fshape = _ops_table(plan.ops, (FN, OH, OW))
        st_size = np.array([OH * OW] + [r[7] * r[8] for r in ops], dtype=np.int64)
        st_off = np.concatenate(([0], np.cumsum(st_size))).astype(np.int64)
        xf = x.reshape(n, -1)
        S = np.empty((n, FN * int(st_off[-1])))
        F = np.empty((n, int(np.prod(fshape))))
        kern._conv_cache(xf, C, H, W, Wt, params[cb], stride, pad, OH, OW, ops, st_off, S, F)
    else:
        F = x.reshape(n, -1)
    z_off = np.concatenate(([0], np.cumsum(n * sizes[1:])[:-1])).astype(np.int64)
    Z = np.empty(n * int(sizes[1:].sum()))
    A = np.empty_like(Z)
    kern._tail_cache(F, w, b, w_off, b_off, sizes, acts, z_off, Z, A)
    if not _finite_loss(A[int(z_off[-1]) :].reshape(n, int(sizes[-1])), t, guard):
        return _nan_gradients(plan, params, indices)
    tail = (w, w_off, sizes, acts, z_off, Z, A)  # what the delta tasks read (kernels' order)
    scale = 1.0 / (2.0 * h * n)
    grads = {}

    if plan.conv is not None:
        names = (cw, cb)
        wanted = [nm for nm in names if indices is None or nm in indices]
        if wanted:
            n_w = Wt.size
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
            xnz_ptr, xnz_idx = _nonzeros(xf.reshape(n * C, H * W))
            xnz_val = np.ascontiguousarray(
                xf.reshape(n * C, H * W)[np.repeat(np.arange(n * C), np.diff(xnz_ptr)), xnz_idx]
            )
            n_tasks = _n_tasks(FN)
            _run_tasks(
                kern._conv_delta_task,
                n_tasks,
                xf,
                xnz_ptr,
                xnz_idx // W,
                xnz_idx % W,
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
                float(h),
                guard,
                sel,
                grp_ptr,
                grp_idx,
                width,
                n_tasks,
                sums,
            )
            sums *= scale
            if indices is None:
                grads[cw] = sums[:n_w].reshape(Wt.shape)
                grads[cb] = sums[n_w:]
            else:
                n_sel_w = len(indices.get(cw, ()))
                if cw in indices:
                    grads[cw] = sums[:n_sel_w]
                if cb in indices:
                    grads[cb] = sums[n_sel_w:]

    for layer, (wn, bn, _) in enumerate(plan.tail):
        if indices is not None and wn not in indices and bn not in indices:
            continue
        n_in, n_out = int(sizes[layer]), int(sizes[layer + 1])
        if layer == 0:
            inputs = F
        else:
            start = int(z_off[layer - 1])
            inputs = A[start : start + n * n_in].reshape(n, n_in)
        amax = np.abs(inputs).max(axis=1) if n_in else np.zeros(n)
        amax = np.ascontiguousarray(amax)
        gT = np.zeros((n_out, n_in + 1))
        if indices is None:
            nz_ptr, nz_idx = _nonzeros(inputs)
            use_all = True
            sel_ptr = np.zeros(n_out + 1, dtype=np.int64)
            sel_idx = np.zeros(0, dtype=np.int64)
            max_q = int(np.diff(nz_ptr).max()) + 1
        else:
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
            use_all = False
            max_q = max(int(np.diff(sel_ptr).max()), 1)
        n_tasks = _n_tasks(n_out)
        _run_tasks(
            kern._dense_delta_task,
            n_tasks,
            layer,
            F,
            tail,
            t,
            float(h),
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
        )
        gT *= scale
        if indices is None:
            grads[wn] = np.ascontiguousarray(gT[:, :n_in].T)
            grads[bn] = gT[:, n_in].copy()
        else:
            if wn in indices:
                grads[wn] = gT[flat_w % n_out, flat_w // n_out]
            if bn in indices:
                grads[bn] = gT[flat_b, n_in]
    return grads


# ---------------------------------------------------------------------------- chapter 6 delta


# The chapter 6 delta blocks: parameters evaluated side by side (+h and -h each), and
# the most values a block's buffer (width x evaluations x samples) may hold.
_NORM_PAIRS = 16
_NORM_BLOCK_VALUES = 1 << 21


class _NormLayer(NamedTuple):
    w: str
    b: str
    gamma: str | None  # batch normalisation's parameters, or None
    beta: str | None
    act: int  # activation code (kern.NONE: none)
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
        code = kern.NONE
        if k < len(stack) and stack[k][0] == "batchnorm":
            gamma, beta = stack[k][1:3]
            k += 1
        if k < len(stack) and stack[k][0] in kern.ACTIVATION_CODES:
            code = kern.ACTIVATION_CODES[stack[k][0]]
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
    w_off = np.concatenate(([0], np.cumsum(sizes[:-1] * sizes[1:])[:-1])).astype(np.int64)
    b = np.concatenate([params[layer.b].ravel() for layer in plan])
    b_off = np.concatenate(([0], np.cumsum(d_out)[:-1])).astype(np.int64)
    pairs = list(zip(plan, d_out, strict=True))
    # Layers without batch normalisation carry gamma 1, beta 0 that the kernel never reads.
    g = np.concatenate([params[ly.gamma].ravel() if ly.gamma else np.ones(d) for ly, d in pairs])
    be = np.concatenate([params[ly.beta].ravel() if ly.beta else np.zeros(d) for ly, d in pairs])
    acts = np.array([layer.act for layer in plan], dtype=np.int64)
    bn = np.array([layer.gamma is not None for layer in plan], dtype=np.int64)
    drop = np.array([layer.mask is not None for layer in plan], dtype=np.int64)
    z_off = np.concatenate(([0], np.cumsum(n * d_out)[:-1])).astype(np.int64)
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
    norm_kern._net_cache(XT, net, BN_EPSILON)
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
        n_tasks = _n_tasks(d)
        _run_tasks(
            norm_kern._norm_delta_task,
            n_tasks,
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
            n_tasks,
            gT,
        )
        gT *= scale
        grads[spec.w] = np.ascontiguousarray(gT[:, :n_in].T)
        grads[spec.b] = gT[:, n_in].reshape(params[spec.b].shape)
        if spec.gamma is not None:
            grads[spec.gamma] = gT[:, n_in + 1].reshape(params[spec.gamma].shape)
            grads[spec.beta] = gT[:, n_in + 2].reshape(params[spec.beta].shape)
    return grads


# ---------------------------------------------------------------------------- delta memory


#: Environment variable that overrides the memory the delta guard may use, in bytes
#: (suffixes K, M, G, T: powers of 1024), or ``off`` to skip the check.
MEMORY_LIMIT_ENV = "FASTNUM_MEMORY_LIMIT"


class DeltaMemoryError(MemoryError):
    """A delta gradient whose caches would not fit in the available memory.

    Raised by :func:`numerical_gradient` and :func:`numerical_gradient_at` before
    anything is allocated.  ``needed`` and ``available`` are bytes, ``batch`` the
    batch asked for and ``max_batch`` the largest that fits (0 if none does).
    """

    def __init__(self, needed, available, batch, max_batch, source):
        self.needed, self.available = needed, available
        self.batch, self.max_batch = batch, max_batch
        fix = (
            f"use batches of at most {max_batch:,} samples (the gradient is the mean, so "
            "average the gradients of smaller batches weighted by their sizes)"
            if max_batch
            else "not even one sample fits"
        )
        super().__init__(
            f"the delta gradient of a batch of {batch:,} samples needs about "
            f"{needed / 2**20:,.0f} MiB for its caches, but {available / 2**20:,.0f} MiB are "
            f"available ({source}); {fix}, or set {MEMORY_LIMIT_ENV} (bytes, 'off' to skip "
            "this check) if the estimate is wrong for this machine."
        )


class DeltaMemory(NamedTuple):
    """Bytes the delta strategy allocates for a stack: ``fixed + per_sample * batch``.

    ``fixed`` includes the per-task buffers of ``threads`` tasks running at once.
    """

    per_sample: int
    fixed: int
    threads: int

    def bytes(self, batch):
        """The estimate at ``batch`` samples."""
        return self.fixed + self.per_sample * int(batch)

    def max_batch(self, available):
        """The largest batch whose estimate fits in ``available`` bytes (0 if none)."""
        return max(0, (int(available) - self.fixed) // max(self.per_sample, 1))


def _delta_memory(plan, shapes, sample_shape, threads):
    """:class:`DeltaMemory` of ``plan``: the allocations of :func:`_delta_at`, counted."""
    tail_w = [shapes[w] for w, _, _ in plan.tail]
    d = [int(tail_w[0][0])] + [int(s[1]) for s in tail_w]  # widths d_0 .. d_L
    width = max(d[1:])
    per_sample = 16 * sum(d[1:])  # Z and A
    # A dense layer's |input| temporary (8 bytes), non-zero mask (1) and index lists
    # (2 x 8) per input, while the previous layer's index list (8) is still held.
    per_sample += max(25 * d[k] + (8 * d[k - 1] if k else 0) for k in range(len(d) - 1))
    per_sample += 8 * (len(d) + 2)  # amax per layer, the row pointers
    # Packed weights and biases, then per layer gT and the gradient copied out of it.
    fixed = 8 * sum(d[k] * d[k + 1] + d[k + 1] for k in range(len(d) - 1))
    fixed += 16 * sum((d[k] + 1) * d[k + 1] for k in range(len(d) - 1))
    # A dense task's buffers: rows and vals, z1 and z2 (width x 2 max_q), and dq, chg,
    # mx, sm, out (2 max_q each) with max_q = non-zero inputs + 1 <= d_k + 1.
    task = max(8 * (d[k] + 1) * (4 * width + 12) for k in range(len(d) - 1))
    if plan.conv is not None:
        _, cw, _, stride, pad = plan.conv
        FN, C, FH, FW = (int(v) for v in shapes[cw])
        _, H, W = (int(v) for v in sample_shape)
        OH, OW = (conv_output_size(n, f, stride, pad) for n, f in ((H, FH), (W, FW)))
        ops, _ = _ops_table(plan.ops, (FN, OH, OW))
        stages = [OH * OW] + [int(r[7] * r[8]) for r in ops]
        n_params = FN * C * FH * FW + FN
        pixels = C * H * W
        # S (every stage of every channel) and F (the last stage); the input's non-zero
        # lists, assuming every pixel is non-zero: index, row, column, value (8 bytes
        # each) and 9 bytes of temporaries (mask, np.repeat's rows), row pointers.
        per_sample += 8 * FN * sum(stages) + 8 * FN * stages[-1] + 41 * pixels + 8 * C
        fixed += 40 * n_params  # sel, sums, filter keys, argsort and grp_idx
        big = max(stages)
        side = max(H, W, OH, OW)
        doubles = (
            sum(stages)  # work
            + 3 * len(stages) * big  # dirty, d_row, d_col
            + 4 * max(len(stages) - 1, 1) * side  # window tables
            + 4 * OH * OW  # tpos, trow, tcol, tval
            + 4 * stages[-1]  # moved_idx, moved_d
            + 4 * width  # z1, z2
            + d[1]  # zacc
            + 8  # dq, mx, sm, res
            + n_params  # acc
        )
        task = max(task, 8 * doubles + big)  # + mark, one byte per position
    return DeltaMemory(per_sample, fixed + threads * task, threads)


def delta_memory(stack, params, sample_shape, threads=None):
    """How much memory the ``delta`` gradient of a stack allocates, per sample and fixed.

    The count mirrors the arrays the delta strategy allocates (see
    :class:`DeltaMemory`: the estimate at a batch ``n`` is ``fixed + per_sample * n``):

    * per sample: for a conv stack, every stage of the conv block per channel
      (``8 FN (OH OW + sum of each activation/pooling output size)`` bytes) and
      the tail's input (``8 d_0``), and the input's non-zero lists
      (``41 C H W``, as if every pixel were non-zero); the dense layers'
      pre-activations and activations (``16 sum_{l>=1} d_l``); a dense layer's
      non-zero lists and temporaries (``25 d_l + 8 d_{l-1}`` at the largest layer);
    * fixed: the packed weights and biases, each affine layer's gradient
      accumulator and the gradient copied out of it (``24`` bytes per affine
      parameter), the conv parameters' selection lists (``40`` bytes per conv
      parameter), and the buffers of ``threads`` tasks running at once: a dense
      task holds ``8 (d_l + 1) (4 width + 12)`` bytes (``width`` the widest dense
      layer), a conv task about ``8`` times the stages of one channel.

    Data that has zeros (MNIST's background, relu outputs) needs less: it is an
    upper bound, about 20 % above the resident memory measured for SimpleConvNet.
    Sampled gradients (:func:`numerical_gradient_at`) allocate less still.

    Parameters
    ----------
    stack : tuple of layer specs
    params : dict of str to ndarray or shape tuple
        The parameters (only their shapes are read).
    sample_shape : tuple of int
        One sample's shape: (C, H, W) for a stack starting with conv, else (D,).
    threads : int, optional
        Tasks running at once; default the numba thread count (1 without the JIT).

    Returns
    -------
    DeltaMemory or None
        None when ``delta`` does not cover the stack (it falls back to ``full``,
        whose forward passes run 256 samples at a time).  The hand-written
        two-layer kernel, which the book's two-layer networks take instead of the
        engine, allocates less than this estimate.
    """
    param_names(stack)  # refuses unknown layer kinds
    plan = _delta_plan(stack)
    if plan is None:
        return None
    if threads is None:
        threads = get_num_threads() if JIT_ENABLED else 1
    shapes = {k: tuple(getattr(v, "shape", v)) for k, v in params.items()}
    from fastnum.kernels import dense_relu  # deep dense relu stacks run on its kernel

    sizes = dense_relu.stack_sizes(stack, shapes) if len(sample_shape) == 1 else None
    if sizes is not None:  # its caches are per block of samples: an upper bound
        fixed = dense_relu.fixed_bytes(sizes, threads)
        return DeltaMemory(dense_relu.per_sample_bytes(sizes), fixed, int(threads))
    return _delta_memory(plan, shapes, tuple(sample_shape), int(threads))


def _parse_bytes(text):
    """Bytes from '123', '512M', '2G' (powers of 1024); None for 'off'."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    if value in ("OFF", "NONE"):
        return None
    factor = 1
    if value[-1:] in "KMGT" and value[-1:]:
        factor = 1024 ** ("KMGT".index(value[-1]) + 1)
        value = value[:-1]
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0 or number == float("inf"):
        raise ValueError(
            f"{MEMORY_LIMIT_ENV}={text!r} is not a size; use bytes (e.g. 2000000000), "
            "a size such as 512M or 2G, or 'off'."
        )
    return int(number * factor)


# Address space a thread takes when it starts: its stack (8 MiB) and its malloc arena
# (64 MiB).  The first delta gradient starts numba's workers and the task threads (the
# first SimpleConvNet gradient at 2 threads grew the virtual size by 311 MiB, batch 2),
# so under an address-space limit 2 x threads of these are kept free.
_THREAD_ADDRESS_SPACE = 80 * 2**20


def _address_space_left():
    """Bytes left under the soft address-space limit (RLIMIT_AS), or None when unlimited."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        return max(0, soft - used)
    except (ImportError, OSError, ValueError):
        return None


_MEMINFO = "/proc/meminfo"


def _machine_available():
    """(bytes, source): MemAvailable, else free pages from os.sysconf, else (None, why)."""
    try:
        with open(_MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, f"MemAvailable in {_MEMINFO}"
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages, "free physical pages from os.sysconf"
    except (OSError, ValueError, AttributeError):
        return None, "unknown"


def available_memory():
    """Bytes the delta caches may use, and where that figure comes from.

    ``$FASTNUM_MEMORY_LIMIT`` when set (``off``: None, no limit); else
    ``MemAvailable`` of ``/proc/meminfo`` (free memory plus what the kernel can
    reclaim), falling back to ``os.sysconf`` (free physical pages); either one
    capped by what is left under an address-space limit (``ulimit -v``), less
    80 MiB for each thread the gradient may start (its stack and malloc arena).

    Returns
    -------
    (int or None, str)
    """
    env = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if env:
        return _parse_bytes(env), f"{MEMORY_LIMIT_ENV}={env}"
    available, source = _machine_available()
    if available is None:
        return None, source
    left = _address_space_left()
    if left is not None:
        threads = get_num_threads() if JIT_ENABLED else 1
        left = max(0, left - 2 * threads * _THREAD_ADDRESS_SPACE)
        if left < available:
            available, source = left, "what the address-space limit (ulimit -v) leaves"
    return available, source


def _check_delta_memory(plan, params, x):
    """Raise DeltaMemoryError, before any allocation, when the batch's caches do not fit."""
    available, source = available_memory()
    if available is None:
        return
    threads = get_num_threads() if JIT_ENABLED else 1
    shapes = {k: params[k].shape for k in params}
    need = _delta_memory(plan, shapes, x.shape[1:], threads)
    batch = x.shape[0]
    if need.bytes(batch) > available:
        raise DeltaMemoryError(
            need.bytes(batch), available, batch, need.max_batch(available), source
        )


# ---------------------------------------------------------------------------- fast paths


class _FastPaths(NamedTuple):
    two_layer_params: Callable
    two_layer_predict: Callable
    two_layer_loss: Callable
    two_layer_gradient: Callable
    multilayer_params: Callable
    multilayer_gradient: Callable


def _fast_path_kernels():
    """Today's hand-written kernels: the one place their (trusted) entry points are named."""
    from fastnum.kernels import multilayer, two_layer

    return _FastPaths(
        two_layer.as_params,
        two_layer.predict_trusted,
        two_layer.loss_trusted,
        two_layer.numerical_gradient_trusted,
        multilayer.as_params,
        multilayer.numerical_gradient_trusted,
    )


_BOOK_NAMES = ("W1", "b1", "W2", "b2")


def _two_layer_names(stack, x, activation="sigmoid"):
    """The stack's (W1, b1, W2, b2) names when it is the book's two-layer net (by default
    the sigmoid one of chapter 4)."""
    if x.ndim == 2 and tuple(spec[0] for spec in stack) == ("affine", activation, "affine"):
        return (stack[0][1], stack[0][2], stack[2][1], stack[2][2])
    return None


def _two_layer_fast_path(stack, params, x, t, h, strategy, log_guard):
    """The gradient from the two-layer kernel when it covers the stack, else None."""
    if log_guard != BOOK_LOG_GUARD or x.ndim != 2:
        return None
    names = _two_layer_names(stack, x)
    # The chapter 5 ReLU net's delta too: the two-layer kernel evaluates each distinct
    # pixel value once per sample, which the engine's dense layer does not (784-50-10,
    # batch 100, 2 threads: 1.6 ms vs 11.8 ms); its full strategy stays on the
    # multilayer kernel (_fast_path).
    relu_names = _two_layer_names(stack, x, "relu") if strategy == "delta" else None
    if names is None and relu_names is None:
        return None
    code = kern.SIGMOID if names is not None else kern.RELU
    names = names or relu_names
    fast = _fast_path_kernels()
    packed = fast.two_layer_params(
        {k: params[nm] for k, nm in zip(_BOOK_NAMES, names, strict=True)}
    )
    g = fast.two_layer_gradient(packed, x, t, h, strategy, code)
    return {nm: g[k] for nm, k in zip(names, _BOOK_NAMES, strict=True)}


def _fast_path(stack, params, x, t, h, strategy, log_guard):
    """The gradient from a hand-written kernel when one covers the stack, else None."""
    two_layer = _two_layer_fast_path(stack, params, x, t, h, strategy, log_guard)
    if two_layer is not None or log_guard != BOOK_LOG_GUARD or x.ndim != 2:
        return two_layer
    kinds = tuple(spec[0] for spec in stack)
    fast = _fast_path_kernels()
    affines = kinds[0::2]
    hidden = set(kinds[1::2])
    # Only for "full": the engine's own delta beats the multilayer delta kernel on every
    # dense stack measured (1.3x to 1.6x, module docstring).
    if (
        strategy == "full"
        and len(kinds) % 2 == 1
        and set(affines) == {"affine"}
        and len(hidden) == 1
        and hidden <= set(kern.ACTIVATION_CODES)
    ):
        names = [nm for spec in stack[0::2] for nm in (spec[1], spec[2])]
        packed = fast.multilayer_params([params[k] for k in names])
        g = fast.multilayer_gradient(packed, x, t, h, kern.ACTIVATION_CODES[hidden.pop()], strategy)
        return dict(zip(names, g, strict=True))
    return None


# ---------------------------------------------------------------------------- public gradient


def numerical_gradient(
    stack,
    params,
    x,
    t,
    h=H,
    strategy=DEFAULT_STRATEGY,
    log_guard=BOOK_LOG_GUARD,
    masks=None,
    weight_decay=0.0,
):
    """Central-difference gradient of the batch-mean loss over every parameter.

    Parameters
    ----------
    stack : tuple of layer specs
    params : dict of str to ndarray
    x : ndarray
    t : ndarray of int64
    h : float, default 1e-4
    strategy : {"delta", "full"}
        ``delta`` falls back to ``full`` for stacks it does not cover (module docstring).
    log_guard : float, default 1e-7
    masks : dict of str to ndarray, optional
        The dropout masks the stack names (:func:`predict`); every evaluation uses them.
    weight_decay : float, default 0.0
        The book's lambda (:func:`loss`).

    Returns
    -------
    dict of str to ndarray
        One gradient per parameter of the stack, shaped like it.
    """
    check_strategy(strategy)
    grads = _data_gradient(stack, params, x, t, h, strategy, log_guard, masks)
    return _add_decay(grads, stack, params, h, weight_decay)


def _data_gradient(stack, params, x, t, h, strategy, log_guard, masks):
    """numerical_gradient without the weight-decay term."""
    if _is_chapter6(stack):
        plan = _norm_plan(stack, x) if strategy == "delta" else None
        if plan is not None:
            return _norm_delta_at(plan, params, x, t, h, log_guard, masks)
        names = param_names(stack)
        flat = _full_at(
            stack, params, x, t, h, log_guard, {k: np.arange(params[k].size) for k in names}, masks
        )
        return {k: flat[k].reshape(params[k].shape) for k in names}
    fast = _fast_path(stack, params, x, t, h, strategy, log_guard)
    if fast is not None:
        return fast
    if strategy == "delta":  # deep dense relu stacks: the corner-aware kernel
        from fastnum.kernels import dense_relu

        fast = dense_relu.engine_gradient(stack, params, x, t, h, log_guard)
        if fast is not None:
            return fast
    plan = _delta_plan(stack) if strategy == "delta" else None
    if plan is not None:
        _check_delta_memory(plan, params, x)
        return _delta_at(plan, params, x, t, h, log_guard, None)
    names = param_names(stack)
    flat = _full_at(
        stack, params, x, t, h, log_guard, {k: np.arange(params[k].size) for k in names}
    )
    return {k: flat[k].reshape(params[k].shape) for k in names}


def numerical_gradient_at(
    stack,
    params,
    x,
    t,
    indices,
    h=H,
    strategy=DEFAULT_STRATEGY,
    log_guard=BOOK_LOG_GUARD,
    masks=None,
    weight_decay=0.0,
):
    """Central-difference gradient at some parameters only.

    Parameters
    ----------
    stack, params, x, t, h, strategy, log_guard, masks, weight_decay
        As for :func:`numerical_gradient`.
    indices : dict of str to array of int
        Flat (row-major) indices into ``params[name]``.

    Returns
    -------
    dict of str to ndarray
        ``name -> gradient at indices[name]`` (1-D, in the given order).
    """
    check_strategy(strategy)
    indices = {k: np.asarray(v, dtype=np.int64).reshape(-1) for k, v in indices.items()}
    grads = _data_gradient_at(stack, params, x, t, indices, h, strategy, log_guard, masks)
    return _add_decay(grads, stack, params, h, weight_decay, indices)


def _data_gradient_at(stack, params, x, t, indices, h, strategy, log_guard, masks):
    """numerical_gradient_at without the weight-decay term."""
    if _is_chapter6(stack):
        # The delta kernel's whole gradient costs about as much as its cache: cells from it.
        plan = _norm_plan(stack, x) if strategy == "delta" else None
        if plan is not None:
            whole = _norm_delta_at(plan, params, x, t, h, log_guard, masks)
            return {k: whole[k].reshape(-1)[idx] for k, idx in indices.items()}
        return _full_at(stack, params, x, t, h, log_guard, indices, masks)
    # The two-layer kernel's whole gradient (~2 ms at the book's size) costs less than
    # the engine's forward caches and tasks for a few cells, so take the cells from it.
    whole = _two_layer_fast_path(stack, params, x, t, h, strategy, log_guard)
    if whole is not None:
        return {k: whole[k].reshape(-1)[idx] for k, idx in indices.items()}
    plan = _delta_plan(stack) if strategy == "delta" else None
    if plan is not None:
        _check_delta_memory(plan, params, x)
        return _delta_at(plan, params, x, t, h, log_guard, indices)
    return _full_at(stack, params, x, t, h, log_guard, indices)
