"""How far the delta gradient of a deeper dense net is from the loss evaluations it cannot avoid.

``python -m benchmarks.dense_limit`` builds the 784-100-100-10 relu network at batch 100
on real MNIST and prints (medians of a few calls, one process, side by side):

- the delta numerical gradient of all parameters (the engine, as MultiLayerNet runs it);
- the NumPy reference, timed on a random sample of parameters and **extrapolated**;
- the evaluations it cannot avoid: every perturbation must re-evaluate the loss, at
  theta + h and theta - h, of each sample whose loss it can change (a weight into a relu
  unit that is off, and stays off, changes nothing; neither does a weight times a zero
  input).  That count, times the cost of one sample's softmax cross-entropy over 10
  logits (the fused kernel on a large batch of rows), is what a kernel that evaluated
  each of them from cached logits would spend; delta's time per evaluation is compared
  with it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from fastnum import engine, reference
from fastnum.constants import LOG_GUARD, H
from fastnum.data import load_mnist
from fastnum.kernels import losses
from fastnum.multilayer import MultiLayerNet, ReferenceMultiLayerNet


def _median_seconds(fn, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def unavoidable_evaluations(net, x):
    """Per-sample loss evaluations (both signs) that a perturbation of each parameter forces."""
    p = net.params
    a1 = x @ p["W1"] + p["b1"]
    h1 = np.maximum(a1, 0)
    a2 = h1 @ p["W2"] + p["b2"]
    h2 = np.maximum(a2, 0)
    on1, on2 = (a1 > 0).astype(float), (a2 > 0).astype(float)
    moved = (
        ((x != 0).astype(float).T @ on1).sum()  # W1[i, j]: pixel i non-zero, unit j on
        + on1.sum()  # b1[j]
        + ((h1 != 0).astype(float).T @ on2).sum()  # W2[u, k]
        + on2.sum()  # b2[k]
        + (h2 != 0).sum() * p["W3"].shape[1]  # W3[u, c]
        + x.shape[0] * p["b3"].size  # b3[c]
    )
    return 2 * int(moved)


def main(argv=None):
    """Print the delta gradient's time against the reference and the floor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    (x, t), _ = load_mnist(data_dir=args.data_dir)
    x, t = np.ascontiguousarray(x[: args.batch], dtype=np.float64), t[: args.batch]
    net = MultiLayerNet(784, [100, 100], 10, activation="relu", weight_init_std=0.1, seed=0)
    params = net.params
    n_params = sum(v.size for v in params.values())

    net.numerical_gradient(x, t)  # compile outside the timing
    delta = _median_seconds(lambda: engine.numerical_gradient(net.stack, params, x, t), args.rounds)

    rng = np.random.default_rng(0)
    sample = {k: rng.choice(v.size, min(20, v.size), replace=False) for k, v in params.items()}
    n_sampled = sum(len(i) for i in sample.values())
    oracle = ReferenceMultiLayerNet(784, [100, 100], 10, activation="relu")
    oracle.params = {k: v.copy() for k, v in params.items()}

    def sampled_reference():
        for k, idx in sample.items():
            reference.numerical_gradient_at(lambda _: oracle.loss(x, t), oracle.params[k], idx, H)

    numpy_all = _median_seconds(sampled_reference, 3) * n_params / n_sampled

    evaluations = unavoidable_evaluations(net, x)
    # One sample's loss: the fused softmax cross-entropy kernel on a large batch of rows,
    # without validation, on all threads as the delta kernels run.
    logits = rng.standard_normal((200_000, 10))
    labels = rng.integers(0, 10, len(logits))
    out = np.empty(len(logits))
    run = lambda: losses._softmax_cross_entropy_rows(logits, labels, LOG_GUARD, out)  # noqa: E731
    run()
    per_eval = _median_seconds(run, 5) / len(logits)
    floor = evaluations * per_eval
    print(f"784-100-100-10 relu, batch {args.batch}, {n_params:,} parameters")
    print(f"  numba delta (engine):           {delta * 1e3:9.1f} ms")
    print(
        f"  NumPy reference (extrapolated): {numpy_all:9.1f} s   -> delta is "
        f"{numpy_all / delta:,.0f}x faster"
    )
    print(
        f"  unavoidable per-sample loss evaluations: {evaluations:,}; delta spends "
        f"{delta / evaluations * 1e9:.1f} ns on each, one fused softmax cross-entropy row "
        f"costs {per_eval * 1e9:.1f} ns: {floor * 1e3:.1f} ms for all, "
        f"{delta / floor:.2f}x of it"
    )


if __name__ == "__main__":
    main()
