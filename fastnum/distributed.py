"""A numerical gradient in parameter blocks on a Dask cluster.

The gradient's cells are independent: each is ``(L(theta + h e_i) - L(theta - h e_i)) / 2h``
for one flat parameter index ``i``.  :func:`numerical_gradient` cuts the stack's
parameters, taken in the engine's order and flattened row-major, into blocks of
consecutive cells (:func:`parameter_blocks`: the cut depends on the sizes and the
block size only, never on the cluster) and runs one Dask task per block.  A task is
:func:`fastnum.engine.numerical_gradient_at` on the block's indices, so the numba
kernels compute every cell exactly as in one process; the blocks come back into one
gradient dict, equal (``np.array_equal``) to :func:`fastnum.engine.numerical_gradient`.

The batch, the parameters and the dropout masks travel once per gradient: they are
scattered to every worker (``broadcast=True``) before the tasks, which name them.  A
task then only carries its block's bounds and returns its block's cells.

Cost: each task builds the engine's caches for the whole batch (the forward pass the
``delta`` strategy starts from), so a block should hold enough cells to cover that
(:data:`DEFAULT_BLOCK_SIZE`).  Stacks that the engine answers whole and slices (the
book's two-layer network on its hand-written kernel; dense stacks with batch norm or
dropout on the ``delta`` strategy) compute their whole gradient in every block: the
Dask path is still exact there, but not faster than one process.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

from fastnum._dask import dask_client
from fastnum._validate import check_int
from fastnum.backend import DEFAULT_STRATEGY, check_strategy
from fastnum.constants import LOG_GUARD as BOOK_LOG_GUARD
from fastnum.constants import H

#: Cells per block unless told otherwise (read at each call, so it may be set for a
#: whole program: ``fastnum.distributed.DEFAULT_BLOCK_SIZE = 483``).  No size suits
#: every stack (README, "Scale out"): on ``delta`` every block pays the engine's cached
#: forward pass again (SimpleConvNet at batch 100, one thread: a block pays about 10 times
#: what 4,096 of its dense cells cost), so cheap cells want big blocks; on
#: ``full`` a cell costs two forward passes and nothing is paid per block, so a big
#: cluster wants at least one block per core (the deep conv net's 123,552 cells on 256
#: cores: 483).
DEFAULT_BLOCK_SIZE = 4096


def parameter_blocks(sizes, block_size=DEFAULT_BLOCK_SIZE):
    """Cut a flat parameter index space into blocks of consecutive cells.

    Parameters
    ----------
    sizes : dict of str to int
        Number of cells per parameter, in the order the cells are numbered (the
        engine's :func:`~fastnum.engine.param_names` order).
    block_size : int, default DEFAULT_BLOCK_SIZE
        Cells per block; the last block holds the rest.

    Returns
    -------
    list of dict of str to (int, int)
        One dict per block: ``name -> (start, stop)``, flat indices ``start..stop-1``
        of that parameter.  A block may cover the end of one parameter and the start
        of the next.  The blocks cover every cell once, in order.
    """
    block_size = check_int("block_size", block_size, 1, "e.g. 4096 cells per task.")
    blocks, block, room = [], {}, block_size
    for name, size in sizes.items():
        start = 0
        while start < size:
            stop = min(size, start + room)
            block[name] = (start, stop)
            room -= stop - start
            start = stop
            if room == 0:
                blocks.append(block)
                block, room = {}, block_size
    if block:
        blocks.append(block)
    return blocks


def _block_gradient(shared, block, h, strategy, log_guard, weight_decay):
    """One task: the engine's gradient at the block's cells ({name: 1-D array})."""
    from fastnum import engine

    stack, params, x, t, masks = shared
    indices = {name: np.arange(start, stop, dtype=np.int64) for name, (start, stop) in block}
    return engine.numerical_gradient_at(
        stack, params, x, t, indices, h, strategy, log_guard, masks, weight_decay
    )


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
    *,
    scheduler="local",
    block_size=None,
):
    """:func:`fastnum.engine.numerical_gradient` computed in parameter blocks on Dask.

    Parameters
    ----------
    stack, params, x, t, h, strategy, log_guard, masks, weight_decay
        As for :func:`fastnum.engine.numerical_gradient` (trusted inputs: float64
        C-contiguous parameters and batch, int64 labels; the networks' public
        ``numerical_gradient(..., scheduler=...)`` validates them first).
    scheduler : str, Client or cluster, default "local"
        Where the blocks run: a scheduler address such as ``"tcp://host:8786"``, a
        ``distributed.Client`` (kept open: pass one to reuse it across training
        steps), a cluster object, or ``"local"`` for an in-process one-worker
        cluster (for trying the path without a cluster).
    block_size : int, optional
        Cells per task (:func:`parameter_blocks`), default :data:`DEFAULT_BLOCK_SIZE`.
        The result does not depend on it.

    Returns
    -------
    dict of str to ndarray
        One gradient per parameter of the stack, shaped like it: equal to
        :func:`fastnum.engine.numerical_gradient`'s, cell for cell.

    Raises
    ------
    ImportError
        Dask is not installed (``pip install 'fastnum[distributed]'``).
    """
    from fastnum import engine

    check_strategy(strategy)
    names = engine.param_names(stack)
    sizes = {name: params[name].size for name in names}
    blocks = parameter_blocks(sizes, DEFAULT_BLOCK_SIZE if block_size is None else block_size)
    # The tasks read only what the stack names: the parameters' arrays and the masks.
    shared = (
        tuple(stack),
        {name: params[name] for name in names},
        x,
        t,
        None if masks is None else dict(masks),
    )
    with dask_client(scheduler) as client:
        [data] = client.scatter([shared], broadcast=True, hash=False)
        try:
            futures = [
                client.submit(
                    _block_gradient,
                    data,
                    tuple(block.items()),
                    float(h),
                    strategy,
                    float(log_guard),
                    float(weight_decay),
                    pure=False,
                )
                for block in blocks
            ]
            parts = client.gather(futures)
        finally:
            client.cancel([data])
    flat = {name: np.empty(params[name].size) for name in names}
    for block, part in zip(blocks, parts, strict=True):
        for name, (start, stop) in block.items():
            flat[name][start:stop] = part[name]
    return {name: flat[name].reshape(params[name].shape) for name in names}


def gradient_function(scheduler=None):
    """:func:`fastnum.engine.numerical_gradient`, or this module's twin on ``scheduler``.

    The networks call the result with the engine's arguments, so one call site
    serves both: ``gradient_function(scheduler)(stack, params, x, t, h, strategy, ...)``.
    """
    if scheduler is None:
        from fastnum import engine

        return engine.numerical_gradient
    return functools.partial(numerical_gradient, scheduler=scheduler)


@contextlib.contextmanager
def scheduled(net, scheduler):
    """While the block lasts, every numerical gradient of ``net`` runs on ``scheduler``.

    One Dask client serves all of them (connecting once, not per gradient), so a
    training loop inside the block pays the cluster's start-up once.  For
    ``fastnum train --scheduler ADDRESS``: the trainer's steps call the network's
    ``numerical_gradient_trusted``, which reads ``net.scheduler``.

    Parameters
    ----------
    net : TwoLayerNet, MultiLayerNet or SimpleConvNet
        A public network on the numba backend.
    scheduler : str, Client, cluster or None
        As for :func:`numerical_gradient`; None leaves ``net`` as it is.

    Yields
    ------
    net
    """
    if scheduler is None:
        yield net
        return
    if getattr(net, "backend", None) != "numba":
        raise ValueError(
            f"scheduler={scheduler!r} runs the engine's numba kernels on the workers, but the "
            f"network's backend is {getattr(net, 'backend', None)!r}; use the numba backend."
        )
    saved = getattr(net, "scheduler", None)
    with dask_client(scheduler) as client:
        net.scheduler = client
        try:
            yield net
        finally:
            net.scheduler = saved
