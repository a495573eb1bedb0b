"""The delta strategy of the book's two-layer network: cached activations, and one loss
evaluation per sample, hidden unit and distinct input value.

A step in ``W1[i, j]`` moves hidden unit ``j`` of the samples whose pixel ``i`` is
non-zero, by ``h * x[n, i]``; everything else is unchanged, so those samples' loss terms
cancel exactly in ``L(+) - L(-)``.  For one sample the perturbed loss depends on ``i``
only through the pixel value, so each distinct value is evaluated once (MNIST: ~67
distinct of ~151 non-zero).  A step in ``W2`` or a bias moves one logit or one hidden
input of every sample.  Every evaluation is a real loss value at theta +- h e_i, computed
from the cached unperturbed sample (no Taylor expansion); per-sample differences are
summed over samples in ascending order, so no thread count changes a result.

Trusted inputs, as :mod:`fastnum.kernels.two_layer` describes; that module's
``STRATEGIES["delta"]`` and ``forward_gradient_trusted`` call :func:`delta_gradients`.
"""

from __future__ import annotations

import numpy as np

from fastnum._jit import njit, run_tasks
from fastnum.constants import LOG_GUARD
from fastnum.kernels._blocks import RELU, _act, _stable_argsort
from fastnum.kernels._vmath import SMALL_EXP_BOUND, fexp, fexp_small, flog_guarded

# |exponent| up to which exp(-a) * exp(-s) equals exp(-(a + s)) to rounding: every
# factor and the product stay normal numbers (exp overflows past ~709.8).
_PRODUCT_SAFE = 700.0
# Perturbation buffers are padded to a multiple of this many doubles (one AVX-512
# register) so that the vectorized loops have no scalar remainder.
_SIMD_WIDTH = 8

# The two-layer kernels (these and the forward and full ones of two_layer.py) are serial,
# each a task of :func:`fastnum._jit.run_tasks` over samples (or parameters): compiled as
# parallel=True they took ~30% longer to compile (a parallel launcher per kernel, tried
# 2026-12-04, added ~8 s to the cold compile).  Handing a task to another thread costs
# ~50 us, which these millisecond calls feel: one task per thread (the samples cost about
# the same), and batches of fewer than _MIN_ROWS samples per task on one thread.  They
# compile noalias (their outputs are fresh arrays from their callers): a prange loop gets
# it from numba, and without it LLVM left _assemble_delta's loops scalar (2.8x slower,
# measured 2026-12-05).
_MIN_ROWS = 32
TASKS = {"min_items": _MIN_ROWS, "tasks_per_thread": 1}


@njit(noalias=True)
def _distinct_inputs(task, n_tasks, x, values, n_values, value_index, one_index):
    """Per sample of this task: sorted distinct non-zero pixel values plus 1.0 (the bias input).

    ``value_index[n, i]`` is the position of ``x[n, i]`` in ``values[n]`` (-1 for
    a zero pixel); ``one_index[n]`` is the position of 1.0, which b1 uses.
    """
    n_pixels = x.shape[1]
    pixel = np.empty(n_pixels + 1, dtype=np.int64)
    vals = np.empty(n_pixels + 1)
    order = np.empty(n_pixels + 1, dtype=np.int64)
    spare = np.empty(n_pixels + 1, dtype=np.int64)
    for n in range(task * x.shape[0] // n_tasks, (task + 1) * x.shape[0] // n_tasks):
        m = 0
        for i in range(n_pixels):
            value_index[n, i] = -1
            if x[n, i] != 0.0:
                pixel[m] = i
                vals[m] = x[n, i]
                m += 1
        pixel[m] = -1  # the bias's constant input
        vals[m] = 1.0
        _stable_argsort(vals, m + 1, order, spare)
        count = 0
        for p in range(m + 1):
            q = order[p]
            if count == 0 or vals[q] != values[n, count - 1]:
                values[n, count] = vals[q]
                count += 1
            if pixel[q] >= 0:
                value_index[n, pixel[q]] = count - 1
            else:
                one_index[n] = count - 1
        n_values[n] = count


@njit(noalias=True)
def _delta_sample_terms(
    task,
    n_tasks,
    x,
    t,
    W1,
    b1,
    W2,
    b2,
    h,
    activation,
    values,
    n_values,
    offsets,
    d_hidden,
    d_out,
    one_sided,
):
    """For this task's samples, the loss differences L_n(+) - L_n(-) of each distinct
    perturbation.

    ``one_sided``: L_n(+) - L_n(0) instead (forward differences), with no -h evaluations.

    ``d_hidden[offsets[n] + v, j]``: step of h * values[n, v] on hidden unit j's input.
    ``d_out[n, k, u]``: step of h * z1[n, u] (u < H) or h * 1 (u = H) on logit k.
    Loops run over the perturbations (the +h half, then the -h half) so they vectorize.
    """
    n_hidden, n_out = W2.shape
    # Work arrays, allocated once per task at their largest sizes (allocating them per
    # sample cost ~10% of the gradient): a sample has at most n_pixels + 1 distinct values.
    a1 = np.empty(n_hidden)
    exp_neg_a1 = np.empty(n_hidden)
    z1 = np.empty(n_hidden)
    shifted = np.empty(n_out)
    e_row = np.empty(n_out)
    most = x.shape[1] + 1
    widest = -(-2 * most // _SIMD_WIDTH) * _SIMD_WIDTH
    step = np.empty(widest)
    exp_neg_step = np.empty(widest)
    change = np.empty(widest)
    total = np.empty(widest)
    y_label = np.empty(widest)
    diff = np.empty(most)
    out_step = np.empty(n_hidden + 1)
    for n in range(task * x.shape[0] // n_tasks, (task + 1) * x.shape[0] // n_tasks):
        # The unperturbed sample, with the same exp as the perturbed evaluations so
        # that their differences carry no exp-implementation mismatch.
        for j in range(n_hidden):  # loops, not a1[:] = b1: slice assignment compiles ~1 s
            a1[j] = b1[j]
        for i in range(x.shape[1]):
            xi = x[n, i]
            if xi != 0.0:
                for j in range(n_hidden):
                    a1[j] += xi * W1[i, j]
        for j in range(n_hidden):
            if activation == RELU:
                z1[j] = _act(a1[j], RELU)
            else:
                exp_neg_a1[j] = fexp(-a1[j])
                z1[j] = 1.0 / (1.0 + exp_neg_a1[j])
        for k in range(n_out):  # the logits minus their max
            shifted[k] = b2[k]
        for k in range(n_out):
            for j in range(n_hidden):
                shifted[k] += z1[j] * W2[j, k]
        top = shifted[0]  # shifted.max() as np.max gives it (first NaN, else first largest)
        for k in range(1, n_out):
            if top != top:
                break
            if shifted[k] > top or shifted[k] != shifted[k]:
                top = shifted[k]
        shifted -= top
        for k in range(n_out):
            e_row[k] = fexp(shifted[k])
        label = t[n]
        # The unperturbed sample's -log term, summed in the order the perturbed rows are
        # (a zero change leaves every factor exactly 1), so that L(0) cancels to rounding.
        total0 = 0.0
        for k in range(n_out):
            total0 += e_row[k]
        base = flog_guarded(e_row[label] / total0 + LOG_GUARD)

        # W1[i, j] and b1[j]: hidden input j moves by +-h * v for each distinct v.
        nv = n_values[n]
        half = nv if one_sided else 2 * nv  # evaluations per hidden unit
        # Padded to whole SIMD vectors; the padding (step 0) is computed and ignored,
        # which is cheaper than the scalar remainder loop it replaces.
        width = -(-half // _SIMD_WIDTH) * _SIMD_WIDTH
        # step: the move of the hidden input, +h v then -h v; exp_neg_step: exp(-step),
        # which with exp(-a1) gives exp(-a1').  The padding moves by 0: exp(-0) = 1.
        for v in range(half, width):
            step[v] = 0.0
            exp_neg_step[v] = 1.0
        for v in range(nv):
            step[v] = h * values[n, v]
            exp_neg_step[v] = fexp(-step[v])
            if not one_sided:
                step[nv + v] = -step[v]
                exp_neg_step[nv + v] = fexp(step[v])
        # values are sorted, so the largest |step| is at one end.
        reach = max(abs(step[0]), abs(step[nv - 1]))
        row = offsets[n]
        for j in range(n_hidden):
            if activation == RELU and a1[j] + reach <= 0.0:
                # Every perturbed input stays at or below ReLU's corner (rounding is
                # monotonic), so z1'[j] = z1[j] = 0 and both losses are the unperturbed
                # one: their difference is exactly 0, as the full evaluation gives.
                for v in range(nv):
                    d_hidden[row + v, j] = 0.0
                continue
            # z1'[j] - z1[j].  exp(-(a1 + s)) = exp(-a1) * exp(-s) saves an exp per
            # perturbation, but only while neither factor nor the product can overflow
            # or underflow (|a1| + |s| <= _PRODUCT_SAFE); beyond that (huge inputs or
            # steps) a factor saturates to 0 or inf where the true exp does not, so
            # the sum a1 + s is exponentiated as the reference does.
            biggest = 0.0
            if activation == RELU:
                for v in range(width):
                    change[v] = _act(a1[j] + step[v], RELU) - z1[j]
                    biggest = max(biggest, abs(change[v]))
            elif abs(a1[j]) + reach <= _PRODUCT_SAFE:
                for v in range(width):
                    change[v] = 1.0 / (1.0 + exp_neg_a1[j] * exp_neg_step[v]) - z1[j]
                    biggest = max(biggest, abs(change[v]))
            else:
                for v in range(width):
                    change[v] = 1.0 / (1.0 + fexp(-(a1[j] + step[v]))) - z1[j]
                    biggest = max(biggest, abs(change[v]))
            w_max = 0.0
            for k in range(n_out):
                w_max = max(w_max, abs(W2[j, k]))
            if biggest * w_max > _PRODUCT_SAFE:
                # Huge weights: exp(a2[k] - m) * exp(d * W2[j, k]) could overflow where the
                # reference, shifting by the perturbed row's own max, does not; do as it does.
                for v in range(width):
                    top = -np.inf
                    for k in range(n_out):
                        top = max(top, shifted[k] + change[v] * W2[j, k])
                    total[v] = 0.0
                    for k in range(n_out):
                        total[v] += fexp(shifted[k] + change[v] * W2[j, k] - top)
                    y_label[v] = fexp(shifted[label] + change[v] * W2[j, label] - top)
            else:
                for v in range(width):
                    total[v] = 0.0
            for k in range(n_out if biggest * w_max <= _PRODUCT_SAFE else 0):
                # exp(a2'[k] - m) = exp(a2[k] - m) * exp(d * W2[j, k]), d = z1'[j] - z1[j]
                w = W2[j, k]
                ek = e_row[k]
                if biggest * abs(w) <= SMALL_EXP_BOUND:
                    for v in range(width):
                        total[v] += ek * fexp_small(change[v] * w)
                else:
                    for v in range(width):
                        total[v] += ek * fexp(change[v] * w)
                if k == label:  # recompute the label's term rather than branch in the loop
                    if biggest * abs(w) <= SMALL_EXP_BOUND:
                        for v in range(width):
                            y_label[v] = ek * fexp_small(change[v] * w)
                    else:
                        for v in range(width):
                            y_label[v] = ek * fexp(change[v] * w)
            if one_sided:  # -log(y+ + g) - (-log(y0 + g))
                for v in range(nv):
                    diff[v] = base - flog_guarded(y_label[v] / total[v] + LOG_GUARD)
            else:  # -log(y+ + g) - (-log(y- + g)), contiguous so it vectorizes
                for v in range(nv):
                    diff[v] = flog_guarded(
                        y_label[nv + v] / total[nv + v] + LOG_GUARD
                    ) - flog_guarded(y_label[v] / total[v] + LOG_GUARD)
            for v in range(nv):
                d_hidden[row + v, j] = diff[v]

        # W2[u, k] and b2[k]: logit k moves by +-h * z1[u], or +-h for the bias.
        for u in range(n_hidden):
            out_step[u] = h * z1[u]
        out_step[n_hidden] = h
        for k in range(n_out):
            # The perturbed row's sum in the same ascending order as the unperturbed one.
            before = 0.0
            for q in range(k):
                before += e_row[q]
            after = 0.0
            for q in range(k + 1, n_out):
                after += e_row[q]
            sk = shifted[k]
            for u in range(n_hidden + 1):
                e_plus = fexp(sk + out_step[u])
                e_minus = e_row[k] if one_sided else fexp(sk - out_step[u])
                y_plus = e_plus if k == label else e_row[label]
                y_minus = e_minus if k == label else e_row[label]
                d_out[n, k, u] = flog_guarded(
                    y_minus / ((before + e_minus) + after) + LOG_GUARD
                ) - flog_guarded(y_plus / ((before + e_plus) + after) + LOG_GUARD)


@njit(noalias=True)
def _assemble_delta(
    task, n_tasks, value_index, offsets, one_index, d_hidden, d_out, scale, gW1, gb1, gW2, gb2
):
    """Sum the per-sample loss differences into gradients, samples in ascending order.

    Tasks split the pixels (the rows of gW1); the last task also sums gb1, gW2 and gb2.
    """
    n_batch, n_pixels = value_index.shape
    n_hidden, n_out = gW2.shape
    for i in range(task * n_pixels // n_tasks, (task + 1) * n_pixels // n_tasks):
        for n in range(n_batch):
            v = value_index[n, i]
            if v >= 0:
                for j in range(n_hidden):
                    gW1[i, j] += d_hidden[offsets[n] + v, j]
        for j in range(n_hidden):
            gW1[i, j] *= scale
    if task != n_tasks - 1:
        return
    for n in range(n_batch):
        for j in range(n_hidden):
            gb1[j] += d_hidden[offsets[n] + one_index[n], j]
        for k in range(n_out):
            for j in range(n_hidden):
                gW2[j, k] += d_out[n, k, j]
            gb2[k] += d_out[n, k, n_hidden]
    gb1 *= scale
    gW2 *= scale
    gb2 *= scale


def delta_gradients(params, x, t, h, activation, one_sided):
    """(gW1, gb1, gW2, gb2) by delta evaluation for validated inputs (module docstring).

    ``params`` is (W1, b1, W2, b2) as C-contiguous float64 arrays; ``one_sided`` gives
    forward differences (L(theta + h e_i) - L(theta)) / h instead of central ones.
    """
    W1, b1, W2, b2 = params
    n_batch, n_pixels = x.shape
    n_hidden, n_out = W2.shape
    values = np.empty((n_batch, n_pixels + 1))
    n_values = np.empty(n_batch, dtype=np.int64)
    value_index = np.empty((n_batch, n_pixels), dtype=np.int32)
    one_index = np.empty(n_batch, dtype=np.int64)
    run_tasks(_distinct_inputs, n_batch, x, values, n_values, value_index, one_index, **TASKS)
    offsets = np.zeros(n_batch + 1, dtype=np.int64)
    np.cumsum(n_values, out=offsets[1:])
    d_hidden = np.empty((offsets[-1], n_hidden))
    d_out = np.empty((n_batch, n_out, n_hidden + 1))
    run_tasks(
        _delta_sample_terms,
        n_batch,
        x,
        t,
        W1,
        b1,
        W2,
        b2,
        h,
        activation,
        values,
        n_values,
        offsets,
        d_hidden,
        d_out,
        one_sided,
        tasks_per_thread=1,
    )
    grads = tuple(np.zeros(a.shape) for a in (W1, b1, W2, b2))
    # (L(+) - L(-)) / 2h (or (L(+) - L(0)) / h) with L the batch mean, as a sum of
    # per-sample differences.
    scale = 1.0 / ((1.0 if one_sided else 2.0) * h * n_batch)
    run_tasks(
        _assemble_delta,
        n_pixels,
        value_index,
        offsets,
        one_index,
        d_hidden,
        d_out,
        scale,
        *grads,
        tasks_per_thread=1,
    )
    if np.isnan(d_out).all(axis=(1, 2)).any():
        # A sample's loss is NaN (a NaN parameter): so is every perturbed batch loss of
        # the reference, where delta would leave exact zeros for parameters that do not
        # reach that sample.  Never a finite number where the reference has NaN.
        for g in grads:
            g.fill(np.nan)
    return grads
