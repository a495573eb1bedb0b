"""The building blocks every kernel family shares: op codes, activations, the affine loop.

One home for what the layered engine (:mod:`~fastnum.kernels.layered`), the chapter 6
kernels (:mod:`~fastnum.kernels.normalization`), the book's two-layer kernel
(:mod:`~fastnum.kernels.two_layer`) and the dense ``full`` kernel
(:mod:`~fastnum.kernels.dense_full`) would otherwise each write: the op codes they
dispatch on, :func:`_act`, :func:`_affine_into`, the ordered sum, the zeroing of work
arrays, the stable sort, and on the Python side the non-zero lists, the task count and
the dense packing with its offsets.

Dense layout
------------
A dense stack of widths ``sizes = (d0, d1, ..., dL)`` is passed to the kernels as
flat vectors: every ``W_l`` (row-major) concatenated into ``w`` and every ``b_l``
into ``b``, with ``w_off[l]`` / ``b_off[l]`` the start of layer ``l``.  A batch's
cached pre-activations ``Z`` (and activations ``A``) use the same idea, layer ``l``
starting at ``z_off[l]`` with rows of ``d_{l+1}`` per sample.  Flat buffers give one
kernel signature for every depth (numba has no cheap list of arrays of different
shapes) and stay plain Python under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fastnum._jit import get_num_threads, njit
from fastnum.kernels._vmath import fexp

# ------------------------------------------------------------------------------ op codes

#: Every code a kernel dispatches on, activations and the conv pipeline's steps in one
#: table, so two codes cannot collide: a new activation is appended here (and gets a
#: branch in :func:`_act`), a new pipeline step too (and gets its case in
#: ``conv_delta._pipeline_step``).  ``none`` passes a value through.  The last four are
#: the step kinds of the deep conv-stack kernel's ops table (:mod:`.conv_stack`), whose
#: ``activation`` rows carry one of the activation codes in a column of their own.
OP_NAMES = ("none", "relu", "sigmoid", "pool", "conv", "activation", "dropout", "affine")
OP_CODES = {name: code for code, name in enumerate(OP_NAMES)}
NONE = OP_CODES["none"]
RELU = OP_CODES["relu"]
SIGMOID = OP_CODES["sigmoid"]
POOL = OP_CODES["pool"]
#: Activation name -> code: the kernels' half of the one activation table (the NumPy half
#: is :data:`fastnum.activations.ACTIVATIONS`, built from this).
ACTIVATION_CODES = {"sigmoid": SIGMOID, "relu": RELU}

# Tasks per thread for the parallel loops: a few per thread even out uneven rows
# (border pixels are almost always zero).  Which task computes a cell never changes it.
TASKS_PER_THREAD = 4


# ------------------------------------------------------------------------------ kernels


@njit
def _act(v, kind):
    """The activation ``kind`` of one value (NONE passes it through; NaN stays NaN)."""
    if kind == RELU:
        return 0.0 if v <= 0.0 else v  # not "v > 0", which turns NaN into 0
    if kind == SIGMOID:
        # Branch-free so loops over it vectorize; fexp(-v) overflows to inf for
        # v < -709.8, giving 0 as the reference does.
        return 1.0 / (1.0 + fexp(-v))
    return v


@njit
def _affine_into(src, n_in, w, w_base, b, b_base, n_out, dst):
    """dst[:n_out] = src[:n_in] @ W + b for one sample; W is row-major from w[w_base],
    b from b[b_base].  The one affine loop of the dense kernels."""
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
def _ordered_sum(v):
    """Sum in ascending index order (fixed, whatever the threads)."""
    total = 0.0
    for k in range(v.shape[0]):
        total += v[k]
    return total


@njit
def _zeroed(a):
    """The new 1-D work array ``a``, every element set to 0."""
    # Kernels allocate work arrays with np.empty and zero them here: np.zeros inside a
    # kernel compiles three numba overloads for each dtype and rank; these loops compile
    # in a fraction of that (a rank-generic version's reshape doubled it).
    for i in range(a.shape[0]):
        a[i] = 0
    return a


@njit
def _zeroed_2d(a):
    """The new 2-D work array ``a``, every element set to 0."""
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            a[i, j] = 0
    return a


#: Run length of :func:`_stable_argsort`'s insertion sort, before it merges the runs.
_RUN = 16


@njit
def _before(a, b):
    """``a`` sorts strictly before ``b``: ascending, NaN after every number."""
    return a < b or (b != b and a == a)


@njit
def _stable_argsort(keys, m, order, spare):
    """order[:m] = np.argsort(keys[:m], kind="mergesort"): ascending, ties in index order.

    A stable sort's permutation is unique, so this is NumPy's to the last index.  Written
    out because numba's argsort compiled slowly inside a kernel (~0.8 s for mergesort,
    ~2 s for quicksort).  ``spare``: work space of at least ``m`` integers.  Runs of
    ``_RUN`` keys are insertion-sorted, then merged pairwise, bottom-up.
    """
    for start in range(0, m, _RUN):
        for i in range(start, min(start + _RUN, m)):
            j = i
            while j > start and _before(keys[i], keys[order[j - 1]]):
                order[j] = order[j - 1]
                j -= 1
            order[j] = i
    src, dst = order, spare
    in_spare = False  # where the last pass left the order
    width = _RUN
    while width < m:
        for lo in range(0, m, 2 * width):
            a, mid = lo, min(lo + width, m)
            b, hi = mid, min(lo + 2 * width, m)
            for k in range(lo, hi):
                # The right run's key goes first only if strictly smaller: stable.
                if b < hi and (a == mid or _before(keys[src[b]], keys[src[a]])):
                    dst[k] = src[b]
                    b += 1
                else:
                    dst[k] = src[a]
                    a += 1
        src, dst = dst, src
        in_spare = not in_spare
        width *= 2
    if in_spare:
        for k in range(m):
            order[k] = spare[k]


# ------------------------------------------------------------------------------ Python side


def nonzeros(a):
    """CSR of the non-zero entries of each row of ``a`` (2-D): row s's column indices,
    ascending, are ``nz_idx[nz_ptr[s]:nz_ptr[s + 1]]``."""
    nonzero = a != 0
    nz_ptr = np.zeros(a.shape[0] + 1, dtype=np.int64)
    np.cumsum(nonzero.sum(axis=1), out=nz_ptr[1:])
    return nz_ptr, np.ascontiguousarray(np.nonzero(nonzero)[1], dtype=np.int64)


def n_tasks(n_items):
    """Tasks for ``n_items`` independent work items: a few per thread, at least one."""
    return max(1, min(int(n_items), TASKS_PER_THREAD * get_num_threads()))


class Packed(NamedTuple):
    """A dense stack flattened for the kernels (module docstring)."""

    sizes: np.ndarray
    w: np.ndarray
    b: np.ndarray
    w_off: np.ndarray
    b_off: np.ndarray


def starts(counts):
    """Offsets of consecutive blocks of ``counts`` entries: 0, c0, c0 + c1, ... (int64)."""
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)


def pack_dense(weights, biases):
    """:class:`Packed` of the weight matrices ``(d_{l-1}, d_l)`` and biases ``(d_l,)``
    (trusted: consecutive widths match)."""
    sizes = np.array([weights[0].shape[0]] + [W.shape[1] for W in weights], dtype=np.int64)
    return Packed(
        sizes=sizes,
        w=np.ascontiguousarray(np.concatenate([W.ravel() for W in weights]), dtype=np.float64),
        b=np.ascontiguousarray(np.concatenate([v.ravel() for v in biases]), dtype=np.float64),
        w_off=starts(sizes[:-1] * sizes[1:]),
        b_off=starts(sizes[1:]),
    )


def batch_offsets(n, sizes):
    """``z_off``: where layer ``l``'s rows of a batch of ``n`` start in the flat Z and A."""
    return starts(n * sizes[1:])
