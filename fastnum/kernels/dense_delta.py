"""The delta evaluation of a perturbed affine layer (the engine's dense delta).

An affine weight ``W_l[r, j]`` (or the bias ``b_l[j]``, an input of 1) moves unit j
of layer l by ``h * input_r`` for every sample whose input r is non-zero; from
there :func:`fastnum.kernels.layered._propagate` re-evaluates the later layers
from the cache.  For one sample, every selected row r of unit j is evaluated side
by side (2 columns per row: +h, then -h, or 0 for forward differences: the
``h_minus`` of :class:`~fastnum.kernels.layered.Evaluation`), so the inner loops
vectorize over the evaluations.  When only the output layer's logits move (the layer before the
logits, no output activation), :func:`_logit_step_losses` reuses the cached
exponentials.  Layout, cache and guarantees: :mod:`fastnum.kernels.layered`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fastnum._jit import njit
from fastnum.kernels._blocks import NONE, RELU, _act
from fastnum.kernels._vmath import SMALL_EXP_BOUND, fexp, fexp_small, flog
from fastnum.kernels.layered import _propagate

# Largest |logit step| (|chg * w|) for which _logit_step_losses reuses the cached
# exponentials exp(z_k - m).  Below it exp(step) and every product stay finite, and a
# cached exponential that underflowed or went subnormal (z_k - m < -708) is off by at
# most 5e-324 * e**256 relative to the sum (which is at least e**-256): nothing.
# Beyond it (inputs x 1e10 moved logits by thousands) exp(step) overflowed to inf
# and 0 * inf made NaN where the reference, shifting by the perturbed max, is finite;
# such steps take the general path, as the reference computes.
_CACHED_EXP_SAFE = 256.0


class RowSelection(NamedTuple):
    """Which rows r of each unit j a dense delta task evaluates.

    ``use_all``: every row whose input is non-zero (the CSR ``nz_ptr``/``nz_idx``
    of the layer's inputs) plus the bias; otherwise unit j's rows are
    ``sel_idx[sel_ptr[j]:sel_ptr[j + 1]]`` (row ``n_in`` is the bias).  ``max_q``
    bounds the rows of one sample; ``amax[s]`` is sample s's largest |input|.
    """

    use_all: bool
    nz_ptr: np.ndarray
    nz_idx: np.ndarray
    sel_ptr: np.ndarray
    sel_idx: np.ndarray
    max_q: int
    amax: np.ndarray


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
def _gather_rows(
    layer, j, s, F, A, z_off, n_in, use_all, nz_ptr, nz_idx, sel_ptr, sel_idx, rows, vals
):
    """Rows r of unit j that move sample s (non-zero input), with their inputs: the count
    (:class:`RowSelection` says which rows)."""
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
    return nr


@njit
def _output_columns(j, zs, n_out, zj, h, h_minus, nr, vals, Z, z1):
    """z1[:, q]: the output layer's pre-activations with unit j moved by +h * vals[q]
    (q < nr), then by h_minus * vals[q - nr]."""
    n_q = 2 * nr
    for c in range(n_out):
        zc = Z[zs + c]
        for q in range(n_q):
            z1[c, q] = zc
    for q in range(nr):
        z1[j, q] = zj + h * vals[q]
        z1[j, nr + q] = zj + h_minus * vals[q]


@njit
def _activation_changes(zj, aj, h, h_minus, nr, vals, code, chg):
    """chg[q]: how hidden unit j's activation moves in each evaluation; whether any does."""
    for q in range(nr):
        chg[q] = _act(zj + h * vals[q], code) - aj
        chg[nr + q] = _act(zj + h_minus * vals[q], code) - aj
    moved = False
    for q in range(2 * nr):
        if chg[q] != 0.0:
            moved = True
    return moved


@njit
def _next_layer_columns(zs, row, n_next, n_q, chg, w, Z, z1):
    """z1[:, q]: the next layer's pre-activations moved by chg[q] times row j of its weights."""
    for c in range(n_next):
        zc = Z[zs + c]
        wjc = w[row + c]
        for q in range(n_q):
            z1[c, q] = zc + chg[q] * wjc


@njit
def _dense_delta_task(task, n_tasks, layer, F, tail, ev, chosen, width, gT):
    """gT[j, r] = sum_n (L_n(+) - L_n(-)) for W_l[r, j] (r < n_in) and b_l[j] (r = n_in).

    One task of ``n_tasks`` (run side by side by :func:`fastnum._jit.run_tasks`).  Tasks
    own whole units j (interleaved); ``tail`` is the :class:`~fastnum.kernels.layered.
    DenseTail`, ``ev`` the :class:`~fastnum.kernels.layered.Evaluation`, ``chosen`` the
    :class:`RowSelection`; ``F`` the tail's input (layer 0's inputs).  The groups are
    unpacked once here and the helpers take plain arrays (a NamedTuple field read in a
    hot loop costs a reference count each time).
    """
    w, w_off, sizes, acts, z_off, Z, A = tail
    t, h, guard, h_minus = ev
    use_all, nz_ptr, nz_idx, sel_ptr, sel_idx, max_q, amax = chosen
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
            nr = _gather_rows(
                layer,
                j,
                s,
                F,
                A,
                z_off,
                n_in,
                use_all,
                nz_ptr,
                nz_idx,
                sel_ptr,
                sel_idx,
                rows,
                vals,
            )
            if nr == 0:
                continue
            n_q = 2 * nr
            if last:
                zs = z_off[layer] + s * n_out
                _output_columns(j, zs, n_out, zj, h, h_minus, nr, vals, Z, z1)
                _propagate(layer, n_q, s, z1, z2, dq, tail, t, guard, mx, sm, out)
            else:
                aj = A[z_off[layer] + s * n_out + j]
                if not _activation_changes(zj, aj, h, h_minus, nr, vals, code, chg):
                    continue
                n_next = sizes[layer + 2]
                zs = z_off[layer + 1] + s * n_next
                row = w_off[layer + 1] + j * n_next
                # Only the logits move: the cached exponentials serve (when the step is safe).
                if not (
                    layer == n_layers - 2
                    and acts[n_layers - 1] == NONE
                    and _logit_step_losses(
                        Z, zs, n_next, w, row, chg, n_q, t[s], guard, mx, sm, out
                    )
                ):
                    _next_layer_columns(zs, row, n_next, n_q, chg, w, Z, z1)
                    _propagate(layer + 1, n_q, s, z1, z2, dq, tail, t, guard, mx, sm, out)
            for q in range(nr):
                g[rows[q]] += out[q] - out[nr + q]
