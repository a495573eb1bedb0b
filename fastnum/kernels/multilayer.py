"""Numba kernels for :class:`fastnum.multilayer.MultiLayerNet`: any depth, float64.

Layout
------
A network with widths ``sizes = (d0, d1, ..., dL)`` is passed to the kernels as
flat vectors: every ``W_l`` (row-major) concatenated into ``w`` and every
``b_l`` into ``b``, with ``w_off[l]`` / ``b_off[l]`` the start of layer ``l``
(0-based).  Cached batch activations use the same idea: ``Z`` holds the
pre-activations of every layer, ``A`` the activations, layer ``l`` starting at
``z_off[l]`` with rows of ``sizes[l + 1]`` per sample.  Flat buffers give one
kernel signature for every depth (numba has no cheap list of arrays of
different shapes) and stay plain Python under ``NUMBA_DISABLE_JIT=1``.

Strategies for the central-difference gradient
----------------------------------------------
``full``
    For each parameter, run the whole forward pass of the batch at
    ``theta +/- h`` in a task-private copy of the parameters.
``delta``
    Cache the unperturbed forward pass.  Perturbing ``W_l[i, j]`` changes only
    unit ``j`` of layer ``l`` and only for samples whose input ``i`` is
    non-zero, so only those samples' losses are re-evaluated, starting from the
    cached pre-activation of that unit; the other samples keep their cached
    loss and cancel in the difference.

Both are parallel over parameters: each gradient cell is written by exactly one
task, and every sum runs over samples in ascending order inside that task, so
the result does not depend on the thread count.  This module never imports
:mod:`fastnum.reference`, so the oracle stays an independent check.

Every function here trusts its inputs; :class:`fastnum.multilayer.MultiLayerNet`
validates them once (see :mod:`fastnum.kernels`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fastnum._jit import get_num_threads, njit, prange
from fastnum.constants import LOG_GUARD

# Vectorizable exp/log, full double precision (within 2 ulp of libm): the
# perturbed-loss loops are dominated by exp, which libm would keep scalar.
from fastnum.kernels._vmath import fexp, flog_guarded
from fastnum.kernels.losses import column_losses

# Activation codes, the ``act_kind`` argument of the kernels: :func:`_act` computes
# each one.  The layered engine's kernels use the same codes (one home, here); names
# map to codes in fastnum.multilayer.ACTIVATIONS, the one table of activations.
RELU = 1
SIGMOID = 2
#: Activation name -> code: the kernels' half of the one activation table (the NumPy half
#: is fastnum.multilayer.ACTIVATIONS, built from this).
ACTIVATION_CODES = {"sigmoid": SIGMOID, "relu": RELU}
# Tasks per thread for the parallel loops: a few per thread evens out uneven
# rows (border pixels are almost always zero) under numba's static schedule.
TASKS_PER_THREAD = 4


class Packed(NamedTuple):
    """A network flattened for the kernels (see the module docstring)."""

    sizes: np.ndarray
    w: np.ndarray
    b: np.ndarray
    w_off: np.ndarray
    b_off: np.ndarray


# --------------------------------------------------------------------------- scalar helpers


@njit
def _act(v, kind):
    # The activation with code `kind` (SIGMOID, RELU) at the pre-activation v.
    if kind == RELU:
        return v if v > 0.0 else 0.0
    # The reference's 1 / (1 + exp(-v)), branch-free so loops over it vectorize
    # (fexp(-v) overflows to inf for v < -709.8, giving 0 as the reference does,
    # and a sign branch would cost 2x in mispredictions on mixed-sign inputs).
    return 1.0 / (1.0 + fexp(-v))


@njit
def _sample_loss(z, start, k, label):
    # Softmax cross-entropy of one sample's logits z[start:start + k]; the max
    # is subtracted so exp() cannot overflow, and the book's guard sits inside log.
    m = z[start]
    for c in range(1, k):
        if z[start + c] > m:
            m = z[start + c]
    s = 0.0
    for c in range(k):
        s += fexp(z[start + c] - m)
    return -flog_guarded(fexp(z[start + label] - m) / s + LOG_GUARD)


@njit
def _affine_into(src, n_in, w, w_base, b, b_base, n_out, dst):
    """dst[:n_out] = src[:n_in] @ W + b for one sample; W is row-major from w[w_base],
    b from b[b_base].  The one affine loop of the dense kernels (multilayer and layered)."""
    for k in range(n_out):
        dst[k] = 0.0
    for i in range(n_in):
        a = src[i]
        # A zero input adds exactly nothing; MNIST rows are ~81% zeros.
        if a != 0.0:
            # A slice, not w[row + k]: numba's negative-index check on a
            # computed index stops LLVM from vectorizing the loop (4x slower).
            wrow = w[w_base + i * n_out : w_base + (i + 1) * n_out]
            for k in range(n_out):
                dst[k] += a * wrow[k]
    for k in range(n_out):
        dst[k] += b[b_base + k]


@njit
def _dense(w, b, w_off, b_off, layer, n_in, n_out, src, dst, act_kind, hidden):
    # dst = act(src @ W_l + b_l) for one sample (no activation on the output layer).
    _affine_into(src, n_in, w, w_off[layer], b, b_off[layer], n_out, dst)
    if hidden:
        for k in range(n_out):
            dst[k] = _act(dst[k], act_kind)


@njit
def _logits_into(w, b, w_off, b_off, sizes, x, s, nz_ptr, nz_idx, act_kind, buf1, buf2):
    # Forward pass of sample s; returns the buffer that holds the logits.
    # The first layer walks only the non-zero inputs listed in nz_idx (CSR):
    # the same sum as the dense loop in the same order, without a
    # hard-to-predict branch per pixel.
    n_layers = sizes.shape[0] - 1
    n_out = sizes[1]
    for k in range(n_out):
        buf1[k] = 0.0
    # Layer 0's weights and biases start at offset 0 of w and b.
    for p in range(nz_ptr[s], nz_ptr[s + 1]):
        i = nz_idx[p]
        a = x[s, i]
        wrow = w[i * n_out : (i + 1) * n_out]
        for k in range(n_out):
            buf1[k] += a * wrow[k]
    for k in range(n_out):
        v = buf1[k] + b[k]
        buf1[k] = _act(v, act_kind) if n_layers > 1 else v
    src = buf1
    dst = buf2
    for layer in range(1, n_layers):
        _dense(
            w,
            b,
            w_off,
            b_off,
            layer,
            sizes[layer],
            sizes[layer + 1],
            src,
            dst,
            act_kind,
            layer < n_layers - 1,
        )
        src, dst = dst, src
    return src


@njit
def _batch_loss(w, b, w_off, b_off, sizes, x, nz_ptr, nz_idx, t, act_kind, buf1, buf2):
    # Mean loss of the batch, samples summed in ascending order.
    n = x.shape[0]
    k = sizes[sizes.shape[0] - 1]
    total = 0.0
    for s in range(n):
        z = _logits_into(w, b, w_off, b_off, sizes, x, s, nz_ptr, nz_idx, act_kind, buf1, buf2)
        total += _sample_loss(z, 0, k, t[s])
    return total / n


# --------------------------------------------------------------------------- forward kernels


@njit
def _mean_loss(z, t):
    # Samples summed in ascending order, as in the gradient kernels.
    n, k = z.shape
    total = 0.0
    for s in range(n):
        total += _sample_loss(z[s], 0, k, t[s])
    return total / n


@njit(parallel=True)
def _logits(w, b, w_off, b_off, sizes, x, nz_ptr, nz_idx, act_kind, width, n_tasks, out):
    n = x.shape[0]
    k = sizes[sizes.shape[0] - 1]
    for task in prange(n_tasks):
        buf1 = np.empty(width)
        buf2 = np.empty(width)
        for s in range(task * n // n_tasks, (task + 1) * n // n_tasks):
            z = _logits_into(w, b, w_off, b_off, sizes, x, s, nz_ptr, nz_idx, act_kind, buf1, buf2)
            for c in range(k):
                out[s, c] = z[c]


@njit(parallel=True)
def _forward_cache(w, b, w_off, b_off, sizes, x, t, act_kind, z_off, Z, A, loss_n):
    # Unperturbed forward pass of every sample, keeping each layer's
    # pre-activations Z and activations A, and each sample's loss.
    n = x.shape[0]
    n_layers = sizes.shape[0] - 1
    for s in prange(n):
        for layer in range(n_layers):
            n_in = sizes[layer]
            n_out = sizes[layer + 1]
            out = z_off[layer] + s * n_out
            zrow = Z[out : out + n_out]  # slices keep the loops vectorizable (see _affine_into)
            arow = A[out : out + n_out]
            src = (
                x[s]
                if layer == 0
                else A[z_off[layer - 1] + s * n_in : z_off[layer - 1] + (s + 1) * n_in]
            )
            _affine_into(src, n_in, w, w_off[layer], b, b_off[layer], n_out, zrow)
            for k in range(n_out):
                arow[k] = _act(zrow[k], act_kind) if layer < n_layers - 1 else zrow[k]
        last = n_layers - 1
        loss_n[s] = _sample_loss(Z, z_off[last] + s * sizes[last + 1], sizes[last + 1], t[s])


# --------------------------------------------------------------------------- numerical gradient


@njit
def _row_losses(layer, s, r, a, net, t, h, act_kind, loss_n, scratch, out):
    # Losses of sample s (input a on row r of layer `layer`; r == n_in is the
    # bias) with each parameter of that row moved by +h (out[j]) and by -h
    # (out[n_out + j]).  The 2 * n_out evaluations run side by side as the
    # columns of z1/z2: unit j's pre-activation is recomputed from its cached
    # value, and every later layer in full from the activation changes.
    # net: the weights and unperturbed pass, scratch: the task's buffers (_delta_layer).
    w, b, w_off, b_off, sizes, z_off, Z, A = net
    delta, chg, jrow, which, z1, z2, mx, sm, lq = scratch
    n_layers = sizes.shape[0] - 1
    n_in = sizes[layer]
    n_out = sizes[layer + 1]
    n_e = 2 * n_out
    for j in range(n_out):
        p = b[b_off[layer] + j] if r == n_in else w[w_off[layer] + r * n_out + j]
        # The steps a stored float parameter really takes, (p+h)-p and (p-h)-p,
        # rather than the nominal +/-h.
        delta[j] = ((p + h) - p) * a
        delta[n_out + j] = ((p - h) - p) * a
    zs = z_off[layer] + s * n_out
    if layer == n_layers - 1:
        for c in range(n_out):
            for e in range(n_e):
                z1[c, e] = Z[zs + c]
        for e in range(n_e):
            z1[e % n_out, e] += delta[e]
        column_losses(z1, n_out, n_e, t[s], LOG_GUARD, mx, sm, out)
        return
    # Keep only the evaluations whose activation moves: a relu unit that stays
    # off leaves every later layer, hence the loss, exactly at the cached values.
    m = layer + 1
    n_next = sizes[m + 1]
    n_act = 0
    for e in range(n_e):
        j = e % n_out
        change = _act(Z[zs + j] + delta[e], act_kind) - A[zs + j]
        if change == 0.0:
            out[e] = loss_n[s]
        else:
            which[n_act] = e
            chg[n_act] = change
            jrow[n_act] = w_off[m] + j * n_next
            n_act += 1
    if n_act == 0:
        return
    zs = z_off[m] + s * n_next
    for k in range(n_next):
        zk = Z[zs + k]
        for q in range(n_act):
            z1[k, q] = zk + chg[q] * w[jrow[q] + k]
    src = z1
    dst = z2
    while m < n_layers - 1:
        width = sizes[m + 1]
        n_next = sizes[m + 2]
        zs = z_off[m] + s * width
        for k in range(width):
            ak = A[zs + k]
            for q in range(n_act):
                src[k, q] = _act(src[k, q], act_kind) - ak
        zs = z_off[m + 1] + s * n_next
        for c in range(n_next):
            zc = Z[zs + c]
            for q in range(n_act):
                dst[c, q] = zc
        for k in range(width):
            moved = False
            for q in range(n_act):
                if src[k, q] != 0.0:
                    moved = True
                    break
            # Units unchanged in every evaluation (relu units that stay off)
            # add exactly nothing; elsewhere a zero change adds an exact 0.
            if moved:
                row = w_off[m + 1] + k * n_next
                for c in range(n_next):
                    wkc = w[row + c]
                    for q in range(n_act):
                        dst[c, q] += src[k, q] * wkc
        src, dst = dst, src
        m += 1
    column_losses(src, sizes[n_layers], n_act, t[s], LOG_GUARD, mx, sm, lq)
    for q in range(n_act):
        out[which[q]] = lq[q]


@njit(parallel=True)
def _delta_layer(
    layer, w, b, w_off, b_off, sizes, x, t, h, act_kind, z_off, Z, A, loss_n, width, n_tasks, gw, gb
):
    # Gradient of W_l and b_l.  Row r < n_in of the task space is W_l[r, :],
    # row n_in is b_l (an input of 1 for every sample).  A task owns whole
    # rows and sums each cell over the samples in ascending order.
    n = x.shape[0]
    n_in = sizes[layer]
    n_out = sizes[layer + 1]
    n_rows = n_in + 1
    scale = 1.0 / (2.0 * h * n)
    net = (w, b, w_off, b_off, sizes, z_off, Z, A)
    for task in prange(n_tasks):
        acc = np.empty(n_out)
        delta = np.empty(2 * width)
        chg = np.empty(2 * width)
        mx = np.empty(2 * width)
        sm = np.empty(2 * width)
        lq = np.empty(2 * width)
        out = np.empty(2 * width)
        jrow = np.empty(2 * width, dtype=np.int64)
        which = np.empty(2 * width, dtype=np.int64)
        z1 = np.empty((width, 2 * width))
        z2 = np.empty((width, 2 * width))
        scratch = (delta, chg, jrow, which, z1, z2, mx, sm, lq)
        # Interleaved rows balance the load (border pixels are nearly always
        # zero); which task owns a row does not change its value.
        for r in range(task, n_rows, n_tasks):
            for j in range(n_out):
                acc[j] = 0.0
            for s in range(n):
                if r == n_in:
                    a = 1.0
                elif layer == 0:
                    a = x[s, r]
                else:
                    a = A[z_off[layer - 1] + s * n_in + r]
                if a == 0.0:
                    # This sample's loss is the same at theta+h and theta-h.
                    continue
                _row_losses(layer, s, r, a, net, t, h, act_kind, loss_n, scratch, out)
                for j in range(n_out):
                    acc[j] += out[j] - out[n_out + j]
            for j in range(n_out):
                if r == n_in:
                    gb[b_off[layer] + j] = acc[j] * scale
                else:
                    gw[w_off[layer] + r * n_out + j] = acc[j] * scale


@njit
def _perturbed_loss_difference(
    vec, q, h, wc, bc, w_off, b_off, sizes, x, nz_ptr, nz_idx, t, act_kind, buf1, buf2
):
    """L(theta + h e_q) - L(theta - h e_q) for element q of ``vec`` (``wc`` or ``bc``)."""
    saved = vec[q]
    vec[q] = saved + h
    f_plus = _batch_loss(wc, bc, w_off, b_off, sizes, x, nz_ptr, nz_idx, t, act_kind, buf1, buf2)
    vec[q] = saved - h
    f_minus = _batch_loss(wc, bc, w_off, b_off, sizes, x, nz_ptr, nz_idx, t, act_kind, buf1, buf2)
    vec[q] = saved
    return f_plus - f_minus


@njit(parallel=True)
def _full_gradient(
    w, b, w_off, b_off, sizes, x, nz_ptr, nz_idx, t, h, act_kind, width, n_tasks, gw, gb
):
    # Parameters are numbered 0..len(w)-1 for the weights, then the biases.
    n_w = w.shape[0]
    n_params = n_w + b.shape[0]
    for task in prange(n_tasks):
        # A private copy per task, so perturbing it races with no other task.
        wc = w.copy()
        bc = b.copy()
        buf1 = np.empty(width)
        buf2 = np.empty(width)
        for p in range(task, n_params, n_tasks):
            vec, q = (wc, p) if p < n_w else (bc, p - n_w)
            diff = _perturbed_loss_difference(
                vec, q, h, wc, bc, w_off, b_off, sizes, x, nz_ptr, nz_idx, t, act_kind, buf1, buf2
            )
            if p < n_w:
                gw[q] = diff / (2.0 * h)
            else:
                gb[q] = diff / (2.0 * h)


# --------------------------------------------------------------------------- Python entry points


def as_params(params_list):
    """Check a ``[W1, b1, ..., WL, bL]`` list and flatten it for the kernels.

    Parameters
    ----------
    params_list : sequence of ndarray
        Weights of shape ``(d_{l-1}, d_l)`` and biases of shape ``(d_l,)``,
        alternating, with consecutive widths matching.

    Returns
    -------
    Packed
        Widths, flat float64 weights and biases, and their per-layer offsets.

    Raises
    ------
    ValueError, TypeError
        On an odd-length list, wrong dimensions, mismatched widths, an output
        layer narrower than 2, or a non-float parameter.
    """
    params_list = list(params_list)
    if len(params_list) < 2 or len(params_list) % 2:
        raise ValueError(
            f"params_list has {len(params_list)} arrays; expected [W1, b1, ..., WL, bL] "
            "(an even number, at least 2)."
        )
    ws, bs, sizes = [], [], []
    for layer in range(len(params_list) // 2):
        W = np.asarray(params_list[2 * layer])
        bias = np.asarray(params_list[2 * layer + 1])
        for name, arr in ((f"W{layer + 1}", W), (f"b{layer + 1}", bias)):
            if arr.dtype.kind != "f":
                raise TypeError(f"{name} has dtype {arr.dtype}; parameters must be float arrays.")
        if W.ndim != 2 or bias.shape != (W.shape[1],):
            raise ValueError(
                f"W{layer + 1} has shape {W.shape} and b{layer + 1} {bias.shape}; expected "
                f"(n_in, n_out) and (n_out,)."
            )
        if sizes and W.shape[0] != sizes[-1]:
            raise ValueError(
                f"W{layer + 1} has {W.shape[0]} rows but layer {layer} has {sizes[-1]} units; "
                "consecutive layer widths must match."
            )
        if not sizes:
            sizes.append(W.shape[0])
        sizes.append(W.shape[1])
        ws.append(W.ravel())
        bs.append(bias)
    if sizes[-1] < 2:
        raise ValueError(f"the output layer has {sizes[-1]} unit(s); a softmax needs at least 2.")
    sizes = np.array(sizes, dtype=np.int64)
    w_counts = sizes[:-1] * sizes[1:]
    return Packed(
        sizes=sizes,
        w=np.ascontiguousarray(np.concatenate(ws), dtype=np.float64),
        b=np.ascontiguousarray(np.concatenate(bs), dtype=np.float64),
        w_off=np.concatenate(([0], np.cumsum(w_counts)[:-1])).astype(np.int64),
        b_off=np.concatenate(([0], np.cumsum(sizes[1:])[:-1])).astype(np.int64),
    )


def _nonzeros(x):
    # CSR of the non-zero inputs: row s's column indices, ascending, are
    # nz_idx[nz_ptr[s]:nz_ptr[s + 1]].
    nonzero = x != 0
    nz_ptr = np.zeros(x.shape[0] + 1, dtype=np.int64)
    np.cumsum(nonzero.sum(axis=1), out=nz_ptr[1:])
    return nz_ptr, np.ascontiguousarray(np.nonzero(nonzero)[1], dtype=np.int64)


def _n_tasks(n_items):
    return max(1, min(int(n_items), TASKS_PER_THREAD * get_num_threads()))


def _unpack(packed, gw, gb):
    # Views into the two flat gradient vectors, in params_list order.
    sizes, out = packed.sizes, []
    for layer in range(len(sizes) - 1):
        n_in, n_out = int(sizes[layer]), int(sizes[layer + 1])
        wo, bo = int(packed.w_off[layer]), int(packed.b_off[layer])
        out.append(gw[wo : wo + n_in * n_out].reshape(n_in, n_out))
        out.append(gb[bo : bo + n_out])
    return out


def logits_trusted(packed, x, act_kind):
    """Output-layer pre-activations (logits) of a batch, inputs not checked.

    Parameters
    ----------
    packed : Packed
        From :func:`as_params`.
    x : ndarray, shape (batch, d0)
        C-contiguous float64, finite.
    act_kind : int
        Activation code of the hidden layers (``SIGMOID``, ``RELU``).

    Returns
    -------
    ndarray, shape (batch, dL)
    """
    out = np.empty((x.shape[0], int(packed.sizes[-1])))
    nz_ptr, nz_idx = _nonzeros(x)
    _logits(
        packed.w,
        packed.b,
        packed.w_off,
        packed.b_off,
        packed.sizes,
        x,
        nz_ptr,
        nz_idx,
        act_kind,
        int(packed.sizes[1:].max()),
        _n_tasks(x.shape[0]),
        out,
    )
    return out


def predict_trusted(packed, x, act_kind):
    """Softmax probabilities, inputs not checked (see :func:`logits_trusted`).

    Returns
    -------
    ndarray, shape (batch, dL)
    """
    z = logits_trusted(packed, x, act_kind)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def loss_trusted(packed, x, t, act_kind):
    """Batch-mean cross-entropy, inputs not checked (see :func:`logits_trusted`).

    ``t`` must be int64 labels of shape (batch,) in range.

    Returns
    -------
    float
    """
    z = logits_trusted(packed, x, act_kind)
    return float(_mean_loss(z, np.ascontiguousarray(t, dtype=np.int64)))


def _full_strategy(packed, x, t, h, act_kind, gw, gb):
    """The full strategy: every parameter's batch loss at theta +- h, from scratch."""
    sizes, w, b, w_off, b_off = packed
    nz_ptr, nz_idx = _nonzeros(x)
    _full_gradient(
        w,
        b,
        w_off,
        b_off,
        sizes,
        x,
        nz_ptr,
        nz_idx,
        t,
        h,
        act_kind,
        int(sizes[1:].max()),
        _n_tasks(w.shape[0] + b.shape[0]),
        gw,
        gb,
    )


def _delta_strategy(packed, x, t, h, act_kind, gw, gb):
    """The delta strategy: cache the forward pass, re-evaluate only what a step moves."""
    sizes, w, b, w_off, b_off = packed
    n, n_layers = x.shape[0], len(sizes) - 1
    z_off = np.concatenate(([0], np.cumsum(n * sizes[1:])[:-1])).astype(np.int64)
    Z = np.empty(n * int(sizes[1:].sum()))
    A = np.empty_like(Z)
    loss_n = np.empty(n)
    _forward_cache(w, b, w_off, b_off, sizes, x, t, act_kind, z_off, Z, A, loss_n)
    if np.isnan(loss_n).any():
        # A NaN loss (a NaN parameter) makes every perturbed batch loss of the reference
        # NaN; delta would leave exact zeros where a sample's input is 0.
        gw.fill(np.nan)
        gb.fill(np.nan)
        return
    width = int(sizes[1:].max())  # widest layer output: the size of every scratch row
    for layer in range(n_layers):
        _delta_layer(
            layer,
            w,
            b,
            w_off,
            b_off,
            sizes,
            x,
            t,
            h,
            act_kind,
            z_off,
            Z,
            A,
            loss_n,
            width,
            _n_tasks(sizes[layer] + 1),
            gw,
            gb,
        )


#: The numerical-gradient strategies, simplest first (the order of the registry's
#: implementations, the benchmarks and the CLI choices): name -> function
#: ``(packed, x, t, h, act_kind, gw, gb)`` that fills the flat gradients ``gw``, ``gb``.
STRATEGIES = {"full": _full_strategy, "delta": _delta_strategy}


def numerical_gradient_trusted(packed, x, t, h, act_kind, strategy):
    """Central-difference gradient of the batch-mean loss, inputs not checked.

    Parameters
    ----------
    packed : Packed
        From :func:`as_params`.
    x : ndarray, shape (batch, d0)
        C-contiguous float64, finite.
    t : ndarray, shape (batch,)
        Integer labels in range.
    h : float
        Positive step.
    act_kind : int
        Activation code of the hidden layers (``SIGMOID``, ``RELU``).
    strategy : str
        A key of :data:`STRATEGIES`.

    Returns
    -------
    list of ndarray
        ``[gW1, gb1, ..., gWL, gbL]``, views into two freshly allocated vectors.
    """
    gw = np.empty_like(packed.w)
    gb = np.empty_like(packed.b)
    STRATEGIES[strategy](
        packed, x, np.ascontiguousarray(t, dtype=np.int64), float(h), act_kind, gw, gb
    )
    return _unpack(packed, gw, gb)
