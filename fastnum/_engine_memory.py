"""How much memory the ``delta`` caches take, how much is available, and the guard.

:func:`delta_memory` counts what :func:`fastnum._engine_delta._delta_at` allocates
(``fixed + per_sample * batch`` bytes, formula in its docstring); the gradient
raises :class:`DeltaMemoryError` (a ``MemoryError``) *before allocating* when that
exceeds :func:`available_memory`, naming the largest batch that fits.  All public
names here are re-exported by :mod:`fastnum.engine`.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from fastnum import _conv_stack_plan
from fastnum._engine_delta import _delta_plan, _ops_table
from fastnum._engine_layers import param_names
from fastnum._jit import JIT_ENABLED, get_num_threads
from fastnum.kernels import dense_relu
from fastnum.kernels.layered import OP_OH, OP_OW
from fastnum.layers import conv_output_size

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
        stages = [OH * OW] + [int(r[OP_OH] * r[OP_OW]) for r in ops]
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
    conv_stack = _conv_stack_plan.plan(stack)
    if plan is None and conv_stack is None:
        return None
    if threads is None:
        threads = get_num_threads() if JIT_ENABLED else 1
    shapes = {k: tuple(getattr(v, "shape", v)) for k, v in params.items()}
    if conv_stack is not None:
        per_sample, fixed = _conv_stack_plan.memory(conv_stack, shapes, sample_shape, threads)
        return DeltaMemory(per_sample, fixed, int(threads))
    sizes = dense_relu.stack_sizes(stack, shapes) if len(sample_shape) == 1 else None
    if sizes is not None and dense_relu.ENABLED:  # caches per block of samples: an upper bound
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
