"""Deep dense ReLU stacks: the corner-aware delta kernel beside the engine's generic delta.

``python -m benchmarks.dense_relu`` times, on real MNIST (the first images of the
training set), the numerical gradient of every parameter of the chapter 6 deep
networks as ``MultiLayerNet(784, [100] * k, 10, activation="relu")`` computes it
(``engine.numerical_gradient``, strategy ``delta``):

- ``corner-aware``: :mod:`fastnum.kernels.dense_relu` (what the engine runs);
- ``engine delta``: the engine's generic dense delta kernel, the same call with
  ``dense_relu.ENABLED`` off.

Both run in one process, alternating round by round; each figure is the median of
the rounds (wall time, and process CPU time over all threads).  The load average is
printed before and after, since the machine may be shared.  The two gradients are
compared (they must agree to 1e-9).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from fastnum import engine
from fastnum._jit import get_num_threads, set_num_threads
from fastnum.data import load_mnist
from fastnum.kernels import dense_relu
from fastnum.multilayer import MultiLayerNet

#: (hidden layers of 100, batch): issue 19's two deep networks.
CASES = ((4, 128), (6, 100))


def _time(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _gradient(net, x, t, corner_aware):
    dense_relu.ENABLED = corner_aware
    try:
        return engine.numerical_gradient(net.stack, net.params, x, t, strategy="delta")
    finally:
        dense_relu.ENABLED = True


def run_case(x_all, t_all, n_hidden, batch, rounds, weight_init_std):
    """Print one network's medians, their ratio and the largest gradient difference."""
    x = np.ascontiguousarray(x_all[:batch], dtype=np.float64)
    t = np.ascontiguousarray(t_all[:batch], dtype=np.int64)
    net = MultiLayerNet(
        784, [100] * n_hidden, 10, activation="relu", weight_init_std=weight_init_std, seed=0
    )
    times = {True: [], False: []}
    grads = {}
    for corner_aware in (True, False):  # compile both outside the timing
        grads[corner_aware] = _gradient(net, x, t, corner_aware)
    for _ in range(rounds):
        for corner_aware in (True, False):
            wall, cpu, _ = _time(lambda ca=corner_aware: _gradient(net, x, t, ca))
            times[corner_aware].append((wall, cpu))
    diff = max(float(np.abs(grads[True][k] - grads[False][k]).max()) for k in grads[True])
    med = {ca: tuple(statistics.median(v[i] for v in times[ca]) for i in range(2)) for ca in times}
    sizes = [784] + [100] * n_hidden + [10]
    memory = dense_relu.cache_bytes(sizes, batch, get_num_threads())
    label = "-".join(map(str, sizes))
    print(f"{label} relu, batch {batch}, weight_init_std {weight_init_std}:")
    for ca, name in ((True, "corner-aware"), (False, "engine delta")):
        wall, cpu = med[ca]
        print(f"  {name:13s} {wall * 1e3:9.1f} ms wall  {cpu * 1e3:9.1f} ms CPU")
    print(
        f"  ratio (engine delta / corner-aware): {med[False][0] / med[True][0]:.1f}x wall, "
        f"{med[False][1] / med[True][1]:.1f}x CPU; max |difference| {diff:.1e}; "
        f"corner-aware caches {memory / 2**20:.1f} MiB"
    )


def main(argv=None):
    """Time both kernels on each network of :data:`CASES`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="numba threads (default: all)")
    parser.add_argument("--weight-init-std", default="0.01", help="0.01 (default) or relu")
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    if args.threads:
        set_num_threads(args.threads)
    try:
        init = float(args.weight_init_std)
    except ValueError:
        init = args.weight_init_std
    (x, t), _ = load_mnist(data_dir=args.data_dir)
    print(f"threads {get_num_threads()}, load average before {os.getloadavg()}")
    for n_hidden, batch in CASES:
        run_case(x, t, n_hidden, batch, args.rounds, init)
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
