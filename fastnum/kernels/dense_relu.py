"""Corner-aware delta gradient of dense ReLU stacks: ``affine (relu affine)+`` + softmax loss.

A ReLU network is exactly linear between its corners.  For one sample, a
perturbation of ``W_l[r, j]`` (or ``b_l[j]``) moves the pre-activation ``z_l[j]``
by ``delta = +-h a_{l-1}[r]`` (``+-h`` for the bias).  Unit ``j``'s activation
then moves by ``chg = relu(z_l[j] + delta) - a_l[j]`` (|chg| <= |delta|), and as long
as no unit *after* layer ``l`` crosses its corner, every later pre-activation moves
by ``chg`` times a column of ``P_{m<-l} = d z_m / d a_l[j]``, the product of the
weights through the units that are on in this sample.  So the perturbed logits
are the cached logits plus ``chg * J[:, j]`` (``J`` the logits' column), and the
loss is one softmax cross-entropy of those logits; no layer is re-run.

Whether a corner can be crossed is decided exactly, per sample, unit and sign of
the step (a later unit moving away from its corner cannot cross it): with
``tau_j = min over later hidden units k moving towards their corner of
|z_m[k]| / |P_{m<-l}[k, j]|`` (shrunk by a relative 1e-9), every ``|delta| <
tau_j`` leaves every later unit on its side (by induction over the layers, the
change each one sees is exactly ``chg * P``).  Unit ``j`` itself may cross: the
relu in ``chg`` is exact.  The other evaluations (``|delta| >= tau_j``, and a unit
that is off but within ``|delta|`` of its corner, whose ``J`` is not cached) take
the exact path (``dense_relu_tasks._exact_losses``): the change stays ``chg * P`` up to the first
layer where a unit may cross, and from there every layer is recomputed from its
cached pre-activation plus the activation changes (every relu applied), as the
engine's delta kernel does, so kinks within ``h`` are evaluated, never
linearised.  A unit that is off and stays off (``z + |delta| <= 0``) changes
nothing: its difference is exactly 0, as in a brute-force evaluation.  The
decisions near a corner are as good as the rounding of ``z`` and ``P``; a ReLU
network is continuous, so a decision that rounding flips changes a loss by a
rounding-sized amount only.  Per-sample losses of +h and -h are differenced,
then summed over samples in ascending order.

How fast it is against the engine's generic delta kernel: ``python -m benchmarks.dense_relu``
(side by side; the README's chapter 8 table gives a run).  The caches of 784-100x4-10 and
784-100x6-10 take 10.8 MiB and 14.0 MiB at batch 100 (:func:`cache_bytes`).

Evaluations are shared: the inputs of a layer that have the same magnitude (an
MNIST digit has ~65 distinct values among ~147 non-zero pixels; a bias's input
is 1) give the same two losses, computed once per (sample, unit); a negative
input's difference is the positive one's negated (exact in floating point).

Layout and order: the dense tail is packed as in :mod:`fastnum.kernels.layered`
(``w``/``b`` with per-layer offsets, ``Z``/``A`` per layer at ``z_off[l] + s *
d_{l+1}``).  Samples are processed in blocks of :data:`BLOCK` (the caches are
per block); the gradient cell ``(W_l[r, j])`` is owned by the task of unit ``j``
and receives its per-sample differences in ascending sample order, so results
do not depend on the thread count.  Inputs are trusted (float64, C-contiguous,
finite cached pass; :func:`engine_gradient` declines anything else).
"""

from __future__ import annotations

import numpy as np

from fastnum._jit import run_tasks
from fastnum.kernels._blocks import NONE, RELU
from fastnum.kernels.dense_relu_tasks import _eval_task, _groups_task, _jacobian_task
from fastnum.kernels.layered import _tail_cache

#: Samples per block: the per-sample caches (pre-activations, Jacobian rows, input
#: groups) are allocated for one block at a time.
BLOCK = 256

#: Set False to send dense ReLU stacks to the engine's generic delta kernel instead
#: (the benchmark's side-by-side comparison, and tests).
ENABLED = True


# ---------------------------------------------------------------------------- driver


def _offsets(counts):
    """Exclusive prefix sums of ``counts`` (length len(counts) + 1), int64."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=out[1:])
    return out


def _finite_pass(Z, logits_at, t, guard):
    """Whether the cached pass is finite and so is every sample's loss (a sample whose
    loss is inf makes every central difference NaN, as the engine computes them)."""
    if not np.isfinite(Z).all():
        return False
    logits = Z[int(logits_at) :].reshape(len(t), -1)
    with np.errstate(all="ignore"):  # an underflowed probability is what this looks for
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        y = e[np.arange(len(t)), t] / e.sum(axis=1)
        return bool(np.isfinite(np.log(y + guard)).all())


def numerical_gradient_trusted(weights, biases, x, t, h, log_guard):
    """Central-difference gradient of the batch-mean loss of a dense ReLU stack.

    Parameters
    ----------
    weights, biases : list of ndarray
        ``W_1 .. W_L`` (float64 (d_{l-1}, d_l), C-contiguous) and ``b_1 .. b_L``; relu
        after every layer but the last, then softmax with cross-entropy.
    x : ndarray, float64 (N, d_0), C-contiguous
    t : ndarray of int64, (N,)
    h : float
    log_guard : float

    Returns
    -------
    list of (ndarray, ndarray) or None
        The gradients ``(dW_l, db_l)`` per layer, or None when a cached pre-activation
        or a sample's loss is not finite (the caller's general kernels handle that case:
        the engine's gradients are then NaN).
    """
    n_layers = len(weights)
    n = x.shape[0]
    sizes = np.array([weights[0].shape[0]] + [W.shape[1] for W in weights], dtype=np.int64)
    w = np.concatenate([W.ravel() for W in weights])
    b = np.concatenate([np.ravel(v) for v in biases])
    w_off = _offsets(sizes[:-1] * sizes[1:])[:-1]
    b_off = _offsets(sizes[1:])[:-1]
    acts = np.array([RELU] * (n_layers - 1) + [NONE], dtype=np.int64)
    hid_off = _offsets(sizes[1:-1])
    unit_off = _offsets(sizes[1:])
    g_off = _offsets(sizes[1:] * (sizes[:-1] + 1))
    width = int(sizes[1:].max())
    max_g = int(sizes[:-1].max()) + 1
    gsum = np.zeros(int(g_off[-1]))
    for start in range(0, n, BLOCK):
        xb = x[start : start + BLOCK]
        tb = t[start : start + BLOCK]
        nb = xb.shape[0]
        z_off = _offsets(nb * sizes[1:])[:-1]
        Z = np.empty(nb * int(sizes[1:].sum()))
        A = np.empty_like(Z)
        _tail_cache(xb, w, b, w_off, b_off, sizes, acts, z_off, Z, A)
        if not _finite_pass(Z, z_off[-1], tb, log_guard):
            return None
        in_off = _offsets(nb * (sizes[:-1] + 1))[:-1]
        n_slots = int(nb * (sizes[:-1] + 1).sum())
        gcount = np.empty(n_layers * nb, dtype=np.int64)
        gval = np.empty(n_slots)
        gend = np.empty(n_slots, dtype=np.int64)
        grow = np.empty(n_slots, dtype=np.int64)
        gsgn = np.empty(n_slots)
        run_tasks(_groups_task, nb, xb, A, sizes, z_off, in_off, gcount, gval, gend, grow, gsgn)
        T = np.empty((nb, int(hid_off[-1]), 2))
        J = np.zeros((nb, int(hid_off[-1]), int(sizes[-1])))
        run_tasks(_jacobian_task, nb, nb, w, w_off, sizes, z_off, Z, hid_off, width, T, J)
        tail = (w, w_off, sizes, acts, z_off, Z, A)
        run_tasks(
            _eval_task,
            int(unit_off[-1]),
            nb,
            tail,
            tb,
            float(h),
            float(log_guard),
            in_off,
            gcount,
            gval,
            gend,
            grow,
            gsgn,
            hid_off,
            T,
            J,
            unit_off,
            g_off,
            max_g,
            width,
            gsum,
        )
        del tail, Z, A, gcount, gval, gend, grow, gsgn, T, J  # before the next block's
    gsum *= 1.0 / (2.0 * h * n)
    grads = []
    for layer in range(n_layers):
        n_in, n_out = int(sizes[layer]), int(sizes[layer + 1])
        gT = gsum[g_off[layer] : g_off[layer + 1]].reshape(n_out, n_in + 1)
        grads.append((np.ascontiguousarray(gT[:, :n_in].T), gT[:, n_in].copy()))
    return grads


#: Python objects of a call beyond its arrays (the thread pool, the tasks' futures),
#: per thread: measured 3 KiB at 1 thread, 19 KiB at 2 (tracemalloc).
_PYTHON_BYTES_PER_THREAD = 12 * 1024


def per_sample_bytes(sizes):
    """Bytes :func:`numerical_gradient_trusted` allocates per sample of a block.

    Pre-activations and activations (``16 sum d_l``, l >= 1), the input groups
    (``32 sum (d_l + 1)``, l < L), the corner distances (``16 H``) and Jacobian rows
    (``8 H d_L``), H the hidden units; ``sizes`` the widths d_0 .. d_L.
    """
    sizes = [int(v) for v in sizes]
    hidden = sum(sizes[1:-1])
    return (
        16 * sum(sizes[1:])
        + 32 * sum(d + 1 for d in sizes[:-1])
        + 16 * hidden
        + 8 * hidden * sizes[-1]
    )


def fixed_bytes(sizes, threads=1):
    """Bytes :func:`numerical_gradient_trusted` allocates whatever the batch.

    The packed weights, the gradient accumulator and the gradients copied out of it
    (``24`` bytes per parameter); per running task the Jacobian task's two ``width x
    width`` blocks or the evaluation task's buffers (``8 (d_L + 5)`` values per
    evaluation column, 2 (max d_l + 1) columns), whichever is larger, and the call's
    Python objects (:data:`_PYTHON_BYTES_PER_THREAD`).
    """
    sizes = [int(v) for v in sizes]
    n_params = sum((sizes[k] + 1) * sizes[k + 1] for k in range(len(sizes) - 1))
    width = max(sizes[1:])
    columns = 2 * (max(sizes[:-1]) + 1)
    task = max(16 * width * width, 8 * (sizes[-1] + 5) * columns + 32 * width)
    return 24 * n_params + int(threads) * (task + _PYTHON_BYTES_PER_THREAD)


def cache_bytes(sizes, batch, threads=1):
    """Bytes :func:`numerical_gradient_trusted` allocates for widths ``sizes`` (d_0 .. d_L)
    at a batch of ``batch`` on ``threads`` threads: :func:`fixed_bytes` plus
    :func:`per_sample_bytes` for each sample of one block (at most :data:`BLOCK`)."""
    return fixed_bytes(sizes, threads) + per_sample_bytes(sizes) * min(int(batch), BLOCK)


def stack_sizes(stack, shapes):
    """The widths d_0 .. d_L of a stack :func:`engine_gradient` takes, else None.

    ``shapes`` maps parameter names to shapes.
    """
    names = relu_stack_names(stack)
    if names is None:
        return None
    return [int(shapes[names[0][0]][0])] + [int(shapes[wn][1]) for wn, _ in names]


def relu_stack_names(stack):
    """[(W_name, b_name), ...] when the stack is ``affine (relu affine)+`` with at least
    two hidden layers, else None (the engine runs one on the two-layer kernels)."""
    kinds = tuple(spec[0] for spec in stack)
    n_hidden = len(kinds) // 2
    if n_hidden < 2 or kinds != ("affine", "relu") * n_hidden + ("affine",):
        return None
    return [(spec[1], spec[2]) for spec in stack[0::2]]


def engine_gradient(stack, params, x, t, h, log_guard):
    """The engine's ``delta`` gradient of a dense ReLU stack, or None when not covered.

    ``stack``/``params``/``x``/``t`` as :func:`fastnum.engine.numerical_gradient` takes
    them (trusted).  None for any other stack, when :data:`ENABLED` is False, and
    when the cached pass or a loss is not finite (the engine's delta then gives NaN
    gradients).
    """
    names = relu_stack_names(stack) if ENABLED and x.ndim == 2 else None
    if names is None:
        return None
    weights = [params[wn] for wn, _ in names]
    biases = [params[bn] for _, bn in names]
    grads = numerical_gradient_trusted(weights, biases, x, t, h, log_guard)
    if grads is None:
        return None
    out = {}
    for (wn, bn), (gw, gb) in zip(names, grads, strict=True):
        out[wn] = gw
        out[bn] = gb.reshape(params[bn].shape)
    return out
