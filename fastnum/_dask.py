"""The one way fastnum connects to Dask: experiment grids and gradient checks share it."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def dask_client(scheduler):
    """Yield a ``distributed.Client`` for ``scheduler`` and close it afterwards if we made it.

    ``scheduler`` is an address such as ``tcp://host:8786``, a cluster object, an
    existing ``Client`` (left open), or ``"local"``: an in-process cluster with one
    thread, for trying the Dask path without a cluster.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError(
            "scheduler= (--scheduler) needs Dask: pip install 'fastnum[distributed]' "
            "(or 'dask[distributed]')."
        ) from None
    if isinstance(scheduler, Client):
        yield scheduler
        return
    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        )
        scheduler = cluster
    client = Client(scheduler)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
