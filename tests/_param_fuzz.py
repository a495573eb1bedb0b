"""Child process of the parameter fuzz test: ``python -m tests._param_fuzz < cases.json``.

Runs each case (a network whose one parameter array is replaced by a mutated
copy, then every public method called) and prints ``START i`` before and
``DONE i ok`` or ``DONE i FAIL <why>`` after it, flushing each line, so that the
parent can name the case that was running when a crash killed the process.
"""

from __future__ import annotations

import json
import sys

import numpy as np

INPUT, HIDDEN, OUTPUT, BATCH = 7, (5, 4), 3, 4
GOOD_DTYPES = ("float16", "float32")  # computed in float64: must give float64's results


def build(kind, backend, strategy):
    """A small network of ``kind`` ("two_layer" or "multilayer")."""
    from fastnum.multilayer import MultiLayerNet
    from fastnum.network import TwoLayerNet

    if kind == "two_layer":
        return TwoLayerNet(
            INPUT,
            HIDDEN[0],
            OUTPUT,
            weight_init_std=0.5,
            seed=1,
            backend=backend,
            strategy=strategy,
        )
    return MultiLayerNet(
        INPUT, HIDDEN, OUTPUT, weight_init_std=0.5, seed=1, backend=backend, strategy=strategy
    )


def mutations(shape):
    """Names of the mutations of an array of ``shape`` (see :func:`mutate`)."""
    names = [f"dim{axis}{sign}" for axis in range(len(shape)) for sign in "+-"]
    return names + ["scalar", "extra_axis", "int64", *GOOD_DTYPES]


def mutate(a, how):
    """A copy of ``a`` with one dimension +-1, as a scalar, with an extra axis or a dtype."""
    if how.startswith("dim"):
        axis, sign = int(how[3]), how[4]
        shape = list(a.shape)
        shape[axis] += 1 if sign == "+" else -1
        return np.resize(a, shape)  # -1 on a width of 1 gives an empty axis: also refused
    if how == "scalar":
        return np.float64(a.ravel()[0])
    if how == "extra_axis":
        return a[np.newaxis]
    return a.astype(how)


def outcomes(net, x, t, strategy):
    """Each public method's result, or the exception it raised."""
    calls = {
        "predict": lambda: net.predict(x),
        "loss": lambda: net.loss(x, t),
        "accuracy": lambda: net.accuracy(x, t),
        "numerical_gradient": lambda: net.numerical_gradient(x, t, strategy=strategy),
        "gradient": lambda: net.gradient(x, t),
    }
    out = {}
    for name, call in calls.items():
        try:
            out[name] = call()
        except (TypeError, ValueError, KeyError) as exc:
            out[name] = exc
    return out


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype == np.float64 and np.array_equal(a, b)


def run_case(case):
    """None if the case behaves, else a description of what went wrong."""
    kind, backend, strategy, param, how = (
        case[k] for k in ("kind", "backend", "strategy", "param", "how")
    )
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, INPUT))
    x[x < 0.4] = 0.0
    t = np.array([0, 1, 2, 1])
    net = build(kind, backend, strategy)
    bad = mutate(net.params[param], how)
    net.params[param] = bad
    got = outcomes(net, x, t, strategy)
    if how in GOOD_DTYPES:
        # The rule: computed in float64 and returned as float64, equal to a float64
        # network holding the same (rounded) values.
        twin = build(kind, backend, strategy)
        twin.params[param] = bad.astype(np.float64)
        want = outcomes(twin, x, t, strategy)
        wrong = [m for m in got if isinstance(got[m], Exception) or not _same(got[m], want[m])]
        return f"{how} differs from float64 in {wrong}: {got}" if wrong else None
    for method, result in got.items():
        if not isinstance(result, Exception):
            return f"{method} accepted {param} {np.shape(bad)} {np.asarray(bad).dtype}"
        message = str(result)
        if param not in message and "features" not in message:
            return f"{method}'s error does not name {param}: {message}"
    return None


def main():
    for i, case in enumerate(json.load(sys.stdin)):
        print(f"START {i}", flush=True)
        try:
            problem = run_case(case)
        except Exception as exc:  # noqa: BLE001 - any other exception is a finding
            problem = f"unexpected {type(exc).__name__}: {exc}"
        print(
            f"DONE {i} " + ("ok" if problem is None else "FAIL " + problem.replace("\n", " ")),
            flush=True,
        )


if __name__ == "__main__":
    main()
