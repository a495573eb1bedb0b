"""What the Dask block gradient costs and what a cluster would give (``fastnum.distributed``).

``python -m benchmarks.distributed_scale`` measures on real MNIST at batch 100:

- per step, the book's TwoLayerNet (784-50-10) and SimpleConvNet: the numerical gradient in
  one process against the same gradient in blocks on an in-process ``LocalCluster``
  (``processes=False``, one worker of one thread: the cluster's own overhead, since
  the blocks then run one after another on the same cores); medians of ``--rounds``;
- per block: each block of the default partition timed alone in this process
  (``engine.numerical_gradient_at`` on 1 numba thread, CPU seconds), with their sum;
- the chapter 8 deep conv net (123,552 parameters; the stack is built here): its costliest
  block on 1 thread (delta), scaled to 16 machines x 16 cores (blocks / 256 rounds of
  that block's cost, on paper).

It checks every Dask gradient against the one-process one (``np.array_equal``) and
prints one table; ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import numpy as np

from fastnum import distributed, engine
from fastnum._jit import get_num_threads, set_num_threads
from fastnum.convnet import SimpleConvNet
from fastnum.data import load_mnist
from fastnum.network import TwoLayerNet

CORES = 16 * 16  # the paper cluster: 16 machines of 16 cores, one 1-thread task per core


def _median_seconds(fn, rounds, clock=time.perf_counter):
    times = []
    for _ in range(rounds):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def _median_wall_and_cpu(fn, rounds):
    """Medians of wall seconds and of this process's CPU seconds (all its threads)."""
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


# The costs on one thread are CPU seconds of this process: on the shared machine the wall
# time of a one-thread computation grows with the other jobs' load, its CPU time hardly.
_CPU = time.process_time


def deep_conv_stack():
    """The book's chapter 8 network as an engine stack: 6 convolutions 3x3, 3 poolings,
    affine 50 + ReLU + dropout, affine 10 + dropout (the book's pads)."""
    stack, shape, k = [], (1, 28, 28), 0
    specs = []
    for filters, pad in ((16, 1), (16, 1), (32, 1), (32, 2), (64, 1), (64, 1)):
        k += 1
        specs.append(("conv", filters, pad, k))
        if k % 2 == 0:
            specs.append(("pool",))
    sizes = {}
    for spec in specs:
        if spec[0] == "conv":
            _, filters, pad, k = spec
            sizes[f"W{k}"] = (filters, shape[0], 3, 3)
            sizes[f"b{k}"] = (filters,)
            stack += [("conv", f"W{k}", f"b{k}", 1, pad), ("relu",)]
            shape = (filters, shape[1] + 2 * pad - 2, shape[2] + 2 * pad - 2)
        else:
            stack.append(("pool", 2, 2, 2, 0))
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
    sizes.update({"W7": (int(np.prod(shape)), 50), "b7": (50,), "W8": (50, 10), "b8": (10,)})
    stack += [("affine", "W7", "b7"), ("relu",), ("dropout", "mask1")]
    stack += [("affine", "W8", "b8"), ("dropout", "mask2")]
    return tuple(stack), sizes


def deep_conv_params(sizes, rng):
    """He initial weights (std sqrt(2 / fan-in)), zero biases."""
    params = {}
    for name, shape in sizes.items():
        if name[0] == "W":
            fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
            params[name] = np.sqrt(2.0 / fan_in) * rng.standard_normal(shape)
        else:
            params[name] = np.zeros(shape)
    return params


def _block_costs(stack, params, x, t, block_size, masks=None):
    names = engine.param_names(stack)
    blocks = distributed.parameter_blocks({k: params[k].size for k in names}, block_size)
    costs = []
    for block in blocks:
        indices = {k: np.arange(a, b) for k, (a, b) in block.items()}
        start = _CPU()
        engine.numerical_gradient_at(stack, params, x, t, indices, masks=masks)
        costs.append(_CPU() - start)
    return costs


def measure_network(label, net, x, t, rounds, client, block_size):
    """One process vs LocalCluster per step, and the per-block costs on 1 thread."""
    stack, params = net.stack, net.params

    def one_process():
        return engine.numerical_gradient(stack, params, x, t)

    n_params = int(sum(params[k].size for k in engine.param_names(stack)))

    def on_dask(size=block_size):
        return distributed.numerical_gradient(
            stack, params, x, t, scheduler=client, block_size=size
        )

    ref_grads, comp_grads = one_process(), on_dask()  # also compiles and warms the worker
    identical = all(np.array_equal(ref_grads[k], comp_grads[k]) for k in ref_grads)
    local, local_cpu = _median_wall_and_cpu(one_process, rounds)
    dask = _median_seconds(on_dask, rounds)
    # One block: the same computation as one process, plus Dask's own cost per step (its
    # CPU seconds too: in-process workers count in this process, and CPU time is what
    # the machine's load distorts least).
    dask_one, dask_one_cpu = _median_wall_and_cpu(lambda: on_dask(n_params), rounds)
    threads = get_num_threads()
    set_num_threads(1)
    try:
        whole_1 = _median_seconds(one_process, rounds, _CPU)
        costs = _block_costs(stack, params, x, t, block_size)
        # What every block pays whatever its cells: a block of the last bias's first cell.
        last = engine.param_names(stack)[-1]
        fixed = _median_seconds(
            lambda: engine.numerical_gradient_at(stack, params, x, t, {last: np.arange(1)}),
            rounds,
            _CPU,
        )
    finally:
        set_num_threads(threads)
    return {
        "network": label,
        "parameters": n_params,
        "one_process_s": local,
        "local_cluster_one_block_s": dask_one,
        "overhead_s": dask_one - local,
        "one_process_cpu_s": local_cpu,
        "local_cluster_one_block_cpu_s": dask_one_cpu,
        "overhead_cpu_s": dask_one_cpu - local_cpu,
        "local_cluster_s": dask,
        "identical": identical,
        "blocks": len(costs),
        "block_size": block_size,
        "block_fixed_s": fixed,
        "block_median_s": statistics.median(costs),
        "block_max_s": max(costs),
        "blocks_sum_s": sum(costs),
        "whole_1thread_s": whole_1,
    }


def measure_deep_conv(x, t, block_size, rng):
    """The deep conv net's costliest block on 1 thread (delta), scaled to a cluster on paper.

    Every block pays the unperturbed pass (the delta cache) and then its cells, whose cost
    depends on the layer: a cell of the middle convolutions is pushed through every later
    layer, a cell of the dense tail through two.  The block timed is the first
    ``block_size`` cells of ``W3``, the layer with the costliest cells (per-layer CPU of
    the whole gradient: W2 1.76 s, W3 2.25 s, W4 1.88 s at batch 2 for 2,320, 4,640 and
    9,248 cells), so a round of blocks on a cluster takes at most about that long.
    """
    stack, sizes = deep_conv_stack()
    params = deep_conv_params(sizes, rng)
    n = len(x)
    masks = {"mask1": (rng.random((n, 50)) > 0.5) * 1.0, "mask2": (rng.random((n, 10)) > 0.5) * 1.0}
    total = int(sum(p.size for p in params.values()))
    indices = {"W3": np.arange(min(block_size, params["W3"].size))}
    threads = get_num_threads()
    set_num_threads(1)
    try:
        start = _CPU()
        engine.numerical_gradient_at(stack, params, x, t, indices, masks=masks)
        per_block = _CPU() - start
    finally:
        set_num_threads(threads)
    blocks = math.ceil(total / block_size)
    return {
        "network": "deep conv net (chapter 8)",
        "parameters": total,
        "block_size": block_size,
        "blocks": blocks,
        "costliest_block_1thread_s": per_block,
        "cluster_cores": CORES,
        "cluster_rounds": math.ceil(blocks / CORES),
        "cluster_s": math.ceil(blocks / CORES) * per_block,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per median")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--block-size", type=int, default=distributed.DEFAULT_BLOCK_SIZE)
    parser.add_argument(
        "--deep-block-size",
        type=int,
        default=483,
        help="cells per block of the deep conv net on paper (483: 256 blocks, one per core)",
    )
    parser.add_argument(
        "--processes",
        action="store_true",
        help="the LocalCluster's worker in its own process (data pickled to it)",
    )
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args(argv)

    from distributed import Client, LocalCluster

    rng = np.random.default_rng(0)
    (x_train, t_train), _ = load_mnist()
    idx = rng.choice(len(x_train), args.batch, replace=False)
    x = np.ascontiguousarray(x_train[idx], dtype=np.float64)
    t = t_train[idx].astype(np.int64)
    images = np.ascontiguousarray(x.reshape(-1, 1, 28, 28))
    rows = []
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=args.processes, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        nets = (
            ("TwoLayerNet 784-50-10", TwoLayerNet(784, 50, 10, seed=0), x),
            ("SimpleConvNet (book)", SimpleConvNet(seed=0), images),
        )
        for label, net, inputs in nets:
            rows.append(
                measure_network(label, net, inputs, t, args.rounds, client, args.block_size)
            )
    deep = measure_deep_conv(images, t, args.deep_block_size, rng)
    load = os.getloadavg()
    where = "worker process" if args.processes else "in-process worker"
    print(
        f"batch {args.batch}, {get_num_threads()} numba threads, LocalCluster: 1 {where}, "
        f"load {load[0]:.2f}"
    )
    print(
        "| network | params | one process | LocalCluster, 1 block | overhead | LocalCluster, "
        "blocks | identical | blocks | CPU on 1 thread: block of 1 cell | block median | block max "
        "| sum of blocks | whole |"
    )
    for r in rows:
        print(
            f"| {r['network']} | {r['parameters']:,} | {r['one_process_s'] * 1e3:.1f} ms "
            f"| {r['local_cluster_one_block_s'] * 1e3:.1f} ms | {r['overhead_s'] * 1e3:+.1f} ms "
            f"(CPU {r['overhead_cpu_s'] * 1e3:+.1f} ms) "
            f"| {r['local_cluster_s'] * 1e3:.1f} ms "
            f"| {r['identical']} | {r['blocks']} x {r['block_size']} "
            f"| {r['block_fixed_s'] * 1e3:.1f} ms "
            f"| {r['block_median_s'] * 1e3:.1f} ms | {r['block_max_s'] * 1e3:.1f} ms "
            f"| {r['blocks_sum_s'] * 1e3:.1f} ms | {r['whole_1thread_s'] * 1e3:.1f} ms |"
        )
    print(
        f"deep conv net, {deep['parameters']:,} parameters: "
        f"{deep['blocks']} blocks of {deep['block_size']} cells, the costliest "
        f"{deep['costliest_block_1thread_s']:.1f} s CPU on 1 thread; "
        f"on {deep['cluster_cores']} cores "
        f"{deep['cluster_rounds']} round(s): {deep['cluster_s']:.1f} s per gradient (on paper)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "batch": args.batch,
                    "processes": args.processes,
                    "load": load,
                    "networks": rows,
                    "deep": deep,
                },
                f,
            )


if __name__ == "__main__":
    main()
