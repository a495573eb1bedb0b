"""Misuse of the public networks gets a clear error, never a crash or a wrong number.

Covers issue 10's parameter checks (shapes, dtypes, finiteness on every public
call of both networks and backends), the float16/float32 rule, the step and
label messages, and issue 11's one validator set.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastnum._jit import HAVE_NUMBA
from fastnum._validate import MIN_STEP, as_labels, check_step
from fastnum.multilayer import MultiLayerNet
from fastnum.network import TwoLayerNet
from fastnum.train import TrainConfig
from tests import _param_fuzz
from tests._backends import NUMBA_BACKEND

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ["numpy", NUMBA_BACKEND]


def _fuzz_cases():
    """Every (network, backend, strategy, parameter, mutation) of the fuzz test."""
    cases = []
    for kind in ("two_layer", "multilayer"):
        params = _param_fuzz.build(kind, "numpy", "delta").params
        for backend in ("numpy", "numba") if HAVE_NUMBA else ("numpy",):
            for strategy in ("delta", "full"):
                for param, array in params.items():
                    for how in _param_fuzz.mutations(array.shape):
                        cases.append(
                            {
                                "kind": kind,
                                "backend": backend,
                                "strategy": strategy,
                                "param": param,
                                "how": how,
                            }
                        )
    return cases


def _run_children(cases):
    """Run ``cases`` in child processes; return {case index: problem} for failures.

    One child runs as many cases as it can; if it dies, the case it had started
    is recorded as a crash and a fresh child continues after it.
    """
    problems, start = {}, 0
    while start < len(cases):
        proc = subprocess.run(
            [sys.executable, "-m", "tests._param_fuzz"],
            cwd=REPO,
            input=json.dumps(cases[start:]),
            capture_output=True,
            text=True,
            timeout=600,
        )
        running = None
        for line in proc.stdout.splitlines():
            word, index, *rest = line.split(" ", 2)
            index = start + int(index)
            if word == "START":
                running = index
            elif word == "DONE":
                running = None
                if rest[0] != "ok":
                    problems[index] = rest[0]
        if proc.returncode == 0 and running is None:
            break
        if running is None:  # died before or between cases: nothing to attribute it to
            pytest.fail(f"fuzz child exited {proc.returncode}: {proc.stderr[-2000:]}")
        problems[running] = f"CRASH (exit {proc.returncode}): {proc.stderr[-300:]}"
        start = running + 1
    return problems


def test_fuzzed_parameter_shapes_and_dtypes_are_refused_or_computed_in_float64():
    # Each parameter array of both networks, on every backend and strategy, replaced
    # by a copy with one dimension +-1, a scalar, an extra axis, an int dtype, or
    # float16/float32; every public method is called.  The mutation space is small
    # enough to enumerate in full (~320 cases), which beats sampling it.  Before the
    # fix TwoLayerNet on numba aborted the process (heap corruption) on several.
    cases = _fuzz_cases()
    problems = _run_children(cases)
    report = "\n".join(f"{cases[i]}: {why}" for i, why in sorted(problems.items()))
    assert not problems, f"{len(problems)} of {len(cases)} cases misbehave:\n{report}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "make_net",
    [
        lambda backend: TwoLayerNet(6, 3, 3, seed=0, backend=backend),
        lambda backend: MultiLayerNet(6, (3, 4), 3, seed=0, backend=backend),
    ],
)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_parameters_are_refused_by_every_public_method(make_net, backend, value):
    net = make_net(backend)
    last_b = f"b{len(net.params) // 2}"
    net.params[last_b][1] = value
    x, t = np.ones((2, 6)), np.array([0, 2])
    for call in (
        lambda: net.predict(x),
        lambda: net.loss(x, t),
        lambda: net.accuracy(x, t),
        lambda: net.numerical_gradient(x, t),
        lambda: net.gradient(x, t),
    ):
        with pytest.raises(ValueError, match=rf"params\['{last_b}'\].*non-finite value {value}"):
            call()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_low_precision_parameters_give_the_float64_answer_on_every_backend(backend, dtype):
    # The rule: parameters and inputs are computed in float64 and results are float64.
    # Before, the NumPy backend's float16 gradient was 35-43% off.
    rng = np.random.default_rng(3)
    x = rng.random((5, 6)).astype(dtype)
    t = np.array([0, 1, 2, 1, 0])
    low = TwoLayerNet(6, 4, 3, weight_init_std=0.5, seed=4, backend=backend)
    low.params = {k: v.astype(dtype) for k, v in low.params.items()}
    ref_net = TwoLayerNet(6, 4, 3, seed=4, backend="numpy")
    ref_net.params = {k: v.astype(np.float64) for k, v in low.params.items()}
    x64 = x.astype(np.float64)
    ref_, comp_ = ref_net.numerical_gradient(x64, t), low.numerical_gradient(x, t)
    for k in ref_:
        assert comp_[k].dtype == np.float64
        assert np.abs(comp_[k] - ref_[k]).max() <= 1e-9
    assert low.loss(x, t) == pytest.approx(ref_net.loss(x64, t), rel=1e-12)
    assert all(v.dtype == dtype for v in low.params.values())  # the caller's arrays untouched


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"input_size": True}, TypeError, "input_size=True must be an integer"),
        ({"hidden_size": 50.0}, TypeError, "hidden_size=50.0 must be an integer"),
        ({"output_size": 1}, ValueError, "output_size=1 must be at least 2"),
        ({"weight_init_std": float("nan")}, ValueError, "weight_init_std=nan must be a finite"),
        ({"weight_init_std": -1}, ValueError, "weight_init_std=-1 must be a finite number > 0"),
        ({"weight_init_std": 0}, ValueError, "weight_init_std=0 must be a finite number > 0"),
        ({"weight_init_std": "0.01"}, TypeError, "weight_init_std='0.01' must be a number"),
    ],
)
def test_two_layer_and_multilayer_nets_share_one_rule_per_argument(kwargs, error, message):
    args = {"input_size": 6, "hidden_size": 3, "output_size": 3} | kwargs
    with pytest.raises(error, match=message):
        TwoLayerNet(**args)
    hidden = args.pop("hidden_size")
    with pytest.raises(error, match=message.replace("hidden_size", r"hidden_sizes\[0\]")):
        MultiLayerNet(**args, hidden_sizes=(hidden,))


def test_train_config_follows_the_same_rules():
    with pytest.raises(ValueError, match="weight_init_std=0.0 must be a finite number > 0"):
        TrainConfig(weight_init_std=0.0)
    with pytest.raises(TypeError, match="hidden_size=50.0 must be an integer"):
        TrainConfig(hidden_size=50.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_must_be_a_number_large_enough_to_move_the_loss(backend):
    net, x, t = TwoLayerNet(6, 3, 3, backend=backend), np.ones((2, 6)), np.array([0, 1])
    with pytest.raises(TypeError, match=r"h='1e-4' must be a number \(a str was given\)"):
        net.numerical_gradient(x, t, h="1e-4")
    with pytest.raises(ValueError, match=r"h=1e-300 is too small.*Use h >= 1e-12"):
        MultiLayerNet(6, 3, 3, backend=backend).numerical_gradient(x, t, h=1e-300)
    assert check_step(MIN_STEP) == MIN_STEP and check_step(np.float32(1e-3)) == np.float32(1e-3)


def test_the_smallest_step_still_gives_the_gradient_and_the_next_smaller_ones_do_not():
    # Why MIN_STEP = 1e-12: there the rounding noise (~eps |L| / h) is ~1e-4 of a
    # gradient of ~0.1; a thousand times smaller it is the gradient's own size.
    rng = np.random.default_rng(0)
    x, t = rng.random((10, 6)), rng.integers(0, 3, 10)
    net = TwoLayerNet(6, 4, 3, weight_init_std=1.0, seed=0, backend="numpy")
    exact = net.gradient(x, t)
    scale = max(np.abs(g).max() for g in exact.values())

    def error(h):
        num = net.numerical_gradient(x, t, h=MIN_STEP * h)
        return max(np.abs(num[k] - exact[k]).max() for k in exact) / scale

    assert error(1) < 1e-2
    with pytest.raises(ValueError, match="too small"):
        error(1e-3)


@pytest.mark.parametrize(
    ("t", "message"),
    [
        (np.array([0, 2**63], dtype=np.uint64), "label 9223372036854775808, outside 0..2"),
        (np.array([0, 1e30]), "label 1e\\+30, outside 0..2"),
        (np.array([0, 0.5]), "non-integer values such as 0.5"),
        (np.array([True, False]), "dtype bool"),
        (np.array(["a", "b"]), "dtype <U1"),
    ],
)
def test_label_messages_name_the_value_as_given(t, message):
    with pytest.raises((ValueError, TypeError), match=message):
        as_labels(t, 2, 3)
