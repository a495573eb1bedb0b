"""Record or compare every gradient the engine serves, bit for bit.

A refactor of the kernels must not move a single bit of any result.  This script
computes the numerical gradient (whole and sampled), the loss and the prediction of
every kind of network the engine serves (the book's two-layer nets, dense stacks of
one to three hidden layers, chapter 6 stacks with batch norm, dropout and weight
decay, conv stacks with and without pooling, stacks ``delta`` does not cover), under
each strategy and at 1 and 2 numba threads, on small fixed-seed problems::

    python scripts/bitwise_gradients.py save  /tmp/before.npz   # on the old code
    python scripts/bitwise_gradients.py check /tmp/before.npz   # on the new code

``check`` exits 1 and names every result that is not ``np.array_equal`` to the saved
one (NaNs compare equal).  ``threads`` compares thread counts instead, up to those of a
bigger machine than this one (numba runs more threads than cores when asked to)::

    NUMBA_NUM_THREADS=16 python scripts/bitwise_gradients.py threads 1,2,16

It exits 1 and names every result at a count that differs from the first count's.  Run
it from the repository root with ``PYTHONPATH=$PWD``.
"""

from __future__ import annotations

import sys

import numpy as np

from fastnum import engine
from fastnum._jit import JIT_ENABLED, set_num_threads

STRATEGIES = ("full", "delta")
THREADS = (1, 2)


def _dense(sizes, acts, rng, std=0.3):
    """A dense stack affine [act] ... affine over widths ``sizes``."""
    stack, params = [], {}
    for k in range(1, len(sizes)):
        stack.append(("affine", f"W{k}", f"b{k}"))
        params[f"W{k}"] = std * rng.standard_normal((sizes[k - 1], sizes[k]))
        params[f"b{k}"] = 0.1 * rng.standard_normal(sizes[k])
        if k < len(sizes) - 1 and acts[k - 1]:
            stack.append((acts[k - 1],))
    return tuple(stack), params


def _sparse_x(rng, shape, zero=0.5):
    """Inputs with exact zeros (MNIST's background) and a few repeated values."""
    x = rng.standard_normal(shape)
    x[rng.random(shape) < zero] = 0.0
    return np.ascontiguousarray(x)


def _chapter6(sizes, act, rng, bn, drop, n):
    stack, params, masks = [], {}, {}
    for k in range(1, len(sizes)):
        stack.append(("affine", f"W{k}", f"b{k}"))
        params[f"W{k}"] = 0.3 * rng.standard_normal((sizes[k - 1], sizes[k]))
        params[f"b{k}"] = 0.1 * rng.standard_normal(sizes[k])
        if k < len(sizes) - 1:
            if bn:
                stack.append(("batchnorm", f"gamma{k}", f"beta{k}"))
                params[f"gamma{k}"] = 1.0 + 0.1 * rng.standard_normal(sizes[k])
                params[f"beta{k}"] = 0.1 * rng.standard_normal(sizes[k])
            stack.append((act,))
            if drop:
                stack.append(("dropout", f"mask{k}"))
                masks[f"mask{k}"] = (rng.random((n, sizes[k])) > 0.4).astype(np.float64)
    return tuple(stack), params, masks


def cases():
    """name -> (stack, params, x, t, masks, weight_decay)."""
    rng = np.random.default_rng(20261204)
    out = {}
    n, d, k = 7, 12, 4
    for name, sizes, acts in [
        ("two-layer-sigmoid", (d, 5, k), ("sigmoid",)),
        ("two-layer-relu", (d, 5, k), ("relu",)),
        ("dense1-relu", (d, 6, 3), ("relu",)),
        ("dense1-sigmoid", (d, 6, 3), ("sigmoid",)),
        ("dense2-relu", (d, 6, 5, k), ("relu", "relu")),
        ("dense2-sigmoid", (d, 6, 5, k), ("sigmoid", "sigmoid")),
        ("dense3-relu", (d, 5, 4, 6, k), ("relu", "relu", "relu")),
        ("dense3-sigmoid", (d, 5, 4, 6, k), ("sigmoid", "sigmoid", "sigmoid")),
        ("dense-mixed", (d, 5, 4, k), ("relu", "sigmoid")),
        ("dense-no-act", (d, 5, k), (None,)),
    ]:
        stack, params = _dense(sizes, acts, rng)
        x = _sparse_x(rng, (n, d))
        t = rng.integers(0, sizes[-1], n).astype(np.int64)
        out[name] = (stack, params, x, t, None, 0.0)
    # Relu units on their kink: zero biases and a blank sample.
    stack, params = _dense((d, 6, 5, k), ("relu", "relu"), rng)
    params["b1"][:] = 0.0
    x = _sparse_x(rng, (n, d), zero=0.7)
    x[0] = 0.0
    out["dense2-relu-kinks"] = (stack, params, x, rng.integers(0, k, n).astype(np.int64), None, 0)
    # Two activations in a row: delta does not cover it (falls back to full today).
    stack = (("affine", "W1", "b1"), ("relu",), ("sigmoid",), ("affine", "W2", "b2"))
    _, params = _dense((d, 5, k), ("relu",), rng)
    out["two-activations"] = (
        stack,
        params,
        _sparse_x(rng, (n, d)),
        rng.integers(0, k, n).astype(np.int64),
        None,
        0.0,
    )
    # Chapter 6: batch norm, dropout, weight decay.
    for name, act, bn, drop, wd, hidden in [
        ("bn-relu", "relu", True, False, 0.0, (6,)),
        ("bn-sigmoid-2", "sigmoid", True, False, 0.0, (6, 5)),
        ("dropout-relu-2", "relu", False, True, 0.0, (6, 5)),
        ("bn-dropout-relu-wd", "relu", True, True, 0.1, (6, 5)),
    ]:
        stack, params, masks = _chapter6((d, *hidden, k), act, rng, bn, drop, n)
        x = _sparse_x(rng, (n, d))
        t = rng.integers(0, k, n).astype(np.int64)
        out[name] = (stack, params, x, t, masks or None, wd)
    stack, params = _dense((d, 6, 5, k), ("relu", "relu"), rng)
    out["dense2-relu-wd"] = (
        stack,
        params,
        _sparse_x(rng, (n, d)),
        rng.integers(0, k, n).astype(np.int64),
        None,
        0.1,
    )
    # Conv stacks (tests/_stacks.py shapes, drawn here so this file stands alone).
    conv_stacks = {
        "simpleconv": (
            (
                ("conv", "W1", "b1", 1, 0),
                ("relu",),
                ("pool", 2, 2, 2, 0),
                ("affine", "W2", "b2"),
                ("relu",),
                ("affine", "W3", "b3"),
            ),
            {"W1": (3, 1, 3, 3), "b1": (3,), "W2": (27, 5), "b2": (5,), "W3": (5, 4), "b3": (4,)},
            (1, 8, 8),
        ),
        "conv-no-pool": (
            (("conv", "W1", "b1", 1, 1), ("affine", "W2", "b2")),
            {"W1": (2, 2, 3, 3), "b1": (2,), "W2": (2 * 4 * 3, 3), "b2": (3,)},
            (2, 4, 3),
        ),
        "conv-sigmoid-stride2-pad2": (
            (
                ("conv", "W1", "b1", 2, 2),
                ("sigmoid",),
                ("pool", 2, 3, 1, 0),
                ("affine", "W2", "b2"),
            ),
            {"W1": (2, 1, 4, 4), "b1": (2,), "W2": (2 * 3 * 3, 4), "b2": (4,)},
            (1, 6, 8),
        ),
        "conv-pool3-stride2-pad1": (
            (
                ("conv", "W1", "b1", 1, 0),
                ("relu",),
                ("pool", 3, 3, 2, 1),
                ("affine", "W2", "b2"),
                ("relu",),
                ("affine", "W3", "b3"),
            ),
            {
                "W1": (2, 1, 3, 3),
                "b1": (2,),
                "W2": (2 * 4 * 3, 3),
                "b2": (3,),
                "W3": (3, 3),
                "b3": (3,),
            },
            (1, 9, 7),
        ),
        "conv-pool-then-act": (
            (
                ("conv", "W1", "b1", 1, 0),
                ("pool", 2, 3, 1, 0),
                ("sigmoid",),
                ("affine", "W2", "b2"),
            ),
            {"W1": (2, 1, 3, 3), "b1": (2,), "W2": (2 * 3 * 2, 4), "b2": (4,)},
            (1, 6, 6),
        ),
        "two-convs": (
            (
                ("conv", "W1", "b1", 1, 0),
                ("relu",),
                ("conv", "W2", "b2", 1, 0),
                ("affine", "W3", "b3"),
            ),
            {
                "W1": (2, 1, 2, 2),
                "b1": (2,),
                "W2": (2, 2, 2, 2),
                "b2": (2,),
                "W3": (2 * 3 * 3, 3),
                "b3": (3,),
            },
            (1, 5, 5),
        ),
    }
    for name, (stack, shapes, sample) in conv_stacks.items():
        params = {nm: 0.3 * rng.standard_normal(s) for nm, s in shapes.items()}
        x = _sparse_x(rng, (5, *sample))
        k_out = shapes[stack[-1][1]][1]
        t = rng.integers(0, k_out, 5).astype(np.int64)
        out[name] = (stack, params, x, t, None, 0.0)
    simple = out["simpleconv"]
    out["simpleconv-wd"] = (*simple[:5], 0.1)
    return out


def _sample(params, rng):
    return {k: rng.choice(v.size, min(5, v.size), replace=False) for k, v in params.items()}


def compute(thread_counts=THREADS):
    """name -> array of every result, at each of ``thread_counts`` numba threads."""
    results = {}
    for name, (stack, params, x, t, masks, wd) in cases().items():
        results[f"{name}/loss"] = np.array(
            engine.loss(stack, params, x, t, masks=masks, weight_decay=wd)
        )
        results[f"{name}/predict"] = engine.predict(stack, params, x, masks)
        sample = _sample(params, np.random.default_rng(1))
        for threads in thread_counts if JIT_ENABLED else (1,):
            if JIT_ENABLED:
                set_num_threads(threads)
            for strategy in STRATEGIES:
                key = f"{name}/{strategy}/t{threads}"
                g = engine.numerical_gradient(
                    stack, params, x, t, strategy=strategy, masks=masks, weight_decay=wd
                )
                for nm, v in g.items():
                    results[f"{key}/grad/{nm}"] = v
                g = engine.numerical_gradient_at(
                    stack, params, x, t, sample, strategy=strategy, masks=masks, weight_decay=wd
                )
                for nm, v in g.items():
                    results[f"{key}/at/{nm}"] = v
        print(name, flush=True)
    return results


def _compare_thread_counts(counts):
    """Exit status of ``threads``: 1 if any result differs between ``counts`` threads."""
    results = compute(counts)
    first = f"/t{counts[0]}/"
    bad, compared = [], 0
    for key, value in results.items():
        for count in counts[1:]:
            mark = f"/t{count}/"
            if mark in key:
                compared += 1
                if not np.array_equal(value, results[key.replace(mark, first)], equal_nan=True):
                    bad.append(key)
    for key in bad:
        print("DIFFERS:", key)
    print(f"{compared} results at {counts[1:]} threads against {counts[0]}, {len(bad)} differ")
    return 1 if bad else 0


def main(argv):
    if len(argv) != 3 or argv[1] not in ("save", "check", "threads"):
        print(__doc__)
        return 2
    if argv[1] == "threads":
        counts = tuple(int(c) if c.isdigit() else 0 for c in argv[2].split(","))
        if len(counts) < 2 or min(counts) < 1 or not JIT_ENABLED:
            print(f"threads {argv[2]}: give two or more positive counts (1,2,16), JIT on")
            return 2
        import numba

        if max(counts) > numba.config.NUMBA_NUM_THREADS:
            print(
                f"threads: {max(counts)} threads asked, numba allows "
                f"{numba.config.NUMBA_NUM_THREADS}; set NUMBA_NUM_THREADS={max(counts)}"
            )
            return 2
        return _compare_thread_counts(counts)
    results = compute()
    if argv[1] == "save":
        np.savez(argv[2], **results)
        print(f"saved {len(results)} results to {argv[2]}")
        return 0
    saved = np.load(argv[2])
    bad = [k for k in saved.files if k not in results]
    bad += [k for k in results if k not in saved.files]
    bad += [
        k
        for k in saved.files
        if k in results and not np.array_equal(saved[k], results[k], equal_nan=True)
    ]
    for k in bad:
        print("DIFFERS:", k)
    print(f"{len(saved.files)} saved, {len(results)} computed, {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
