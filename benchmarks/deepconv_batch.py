"""One numerical gradient of the chapter 8 DeepConvNet at a given batch, here and on Dask.

``python -m benchmarks.deepconv_batch [--batch 100] [--cluster]`` times
``DeepConvNet(seed=0).numerical_gradient`` on the first MNIST training images (the
engine's deep conv-stack ``delta`` kernel, the numba threads of this process), wall and
CPU seconds, after a compile call at batch 2.  With ``--cluster`` it then times the same
gradient in parameter blocks on an in-process ``LocalCluster`` of 2 one-thread workers
and checks that both gradients are equal (``np.array_equal``).  The load average is
printed before and after: the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from fastnum.data import load_mnist
from fastnum.deepconv import DeepConvNet


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    """Print the times; return 1 if the cluster's gradient differs from this process's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--cluster", action="store_true", help="also on a LocalCluster")
    args = parser.parse_args(argv)
    (x, t), _ = load_mnist(flatten=False)
    x = np.ascontiguousarray(x[: args.batch], dtype=np.float64)
    t = np.asarray(t[: args.batch])
    print(f"load average {os.getloadavg()}")
    net = DeepConvNet(seed=0)
    net.numerical_gradient(x[:2], t[:2])  # compiles (or loads the cache)
    one, wall, cpu = _timed(lambda: net.numerical_gradient(x, t))
    print(f"batch {args.batch}, one process: {wall:.1f} s wall, {cpu:.1f} s CPU")
    same = True
    if args.cluster:
        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            twin = DeepConvNet(seed=0)  # the same masks: the same draws in the same order
            twin.numerical_gradient(x[:2], t[:2], scheduler=client)
            blocks, wall, cpu = _timed(lambda: twin.numerical_gradient(x, t, scheduler=client))
        same = all(np.array_equal(one[k], blocks[k]) for k in one)
        print(
            f"LocalCluster, 2 workers x 1 thread: {wall:.1f} s wall, {cpu:.1f} s CPU; "
            f"identical: {same}"
        )
    print(f"load average {os.getloadavg()}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
