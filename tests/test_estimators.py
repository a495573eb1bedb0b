"""Gradient estimators: reference vs numba, SPSA determinism and unbiasedness, training, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastnum import _engine_paths, estimators
from fastnum.constants import H
from fastnum.estimators import ESTIMATORS, estimate_gradient, loss_evaluations
from fastnum.multilayer import MultiLayerNet
from fastnum.network import TwoLayerNet
from fastnum.train import TrainConfig
from tests._backends import on_kernels
from tests._training import SimulatedInterruptError, blob_data, quiet_train, small, stop_at_epoch

METHODS = tuple(ESTIMATORS)


def _batch(seed=1, n=6, d=9, classes=3, zeros=0.4):
    """A small batch with MNIST-like exact zeros (the delta kernel skips them)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, d))
    x[x < zeros] = 0.0
    x[0, :3] = 0.5  # repeated pixel values: evaluated once per sample by the kernel
    return x, rng.integers(0, classes, n)


def _nets(activation):
    """Two equal two-layer nets (NumPy) of the hidden activation, weights large enough to matter."""
    if activation == "sigmoid":
        make = lambda: TwoLayerNet(9, 4, 3, weight_init_std=0.8, seed=3, backend="numpy")  # noqa: E731
    else:
        make = lambda: MultiLayerNet(  # noqa: E731
            9, [4], 3, activation="relu", weight_init_std=0.8, seed=3, backend="numpy"
        )
    return make(), make()


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("method", METHODS)
def test_reference_and_kernels_agree(method, activation):
    x, t = _batch()
    ref_net, comp_net = _nets(activation)
    on_kernels(comp_net)
    ref_g = estimate_gradient(ref_net, x, t, method, directions=5, seed=7)
    comp_g = estimate_gradient(comp_net, x, t, method, directions=5, seed=7)
    assert _max_diff(ref_g, comp_g) < 1e-9
    for k, p in ref_net.params.items():
        assert ref_g[k].shape == p.shape and comp_g[k].dtype == np.float64
    assert np.array_equal(ref_net.params["W1"], comp_net.params["W1"])  # left untouched


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_forward_kernel_is_used_and_exact_zero_where_no_pixel(monkeypatch, activation):
    # A pixel that is 0 in every sample: its W1 row gets exactly 0 from the delta kernel
    # (the engine's two-layer fast path, not the loop).
    x, t = _batch()
    x[:, 4] = 0.0
    ref_net, comp_net = _nets(activation)
    on_kernels(comp_net)
    ref_g = estimate_gradient(ref_net, x, t, "forward")
    assert np.all(ref_g["W1"][4] == 0.0)  # the reference's L(+) equals L(0) bit for bit too
    _must_not_loop(monkeypatch)
    comp_g = estimate_gradient(comp_net, x, t, "forward")
    assert np.all(comp_g["W1"][4] == 0.0)
    assert _max_diff(ref_g, comp_g) < 1e-9


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_forward_agrees_with_central_to_order_h(activation):
    x, t = _batch(2)
    net, _ = _nets(activation)
    central = estimate_gradient(net, x, t, "numerical", h=1e-4)
    errors = []
    for h in (1e-2, 1e-3):
        fwd = estimate_gradient(net, x, t, "forward", h=h)
        errors.append(_max_diff(fwd, central))
    # First order: ten times smaller step, about ten times smaller error (not 100x).
    assert errors[0] < 1e-2
    assert 4 < errors[0] / errors[1] < 25


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_spsa_is_unbiased_on_a_tiny_net(distribution):
    # E[u u^T] = I: the mean over many directions approaches the central difference.
    rng = np.random.default_rng(0)
    x, t = rng.random((5, 3)), rng.integers(0, 2, 5)
    net = TwoLayerNet(3, 2, 2, weight_init_std=1.0, seed=1, backend="numpy")
    central = estimate_gradient(net, x, t, "numerical")
    scale = max(float(np.abs(g).max()) for g in central.values())
    errors = [
        _max_diff(
            estimate_gradient(net, x, t, "spsa", directions=k, distribution=distribution), central
        )
        for k in (10, 4000)
    ]
    assert errors[1] < 0.1 * scale
    assert errors[1] < errors[0] / 4  # the error shrinks like 1/sqrt(K)


def test_spsa_same_seed_same_estimate_other_seed_other_estimate():
    x, t = _batch()
    net, _ = _nets("sigmoid")
    a = estimate_gradient(net, x, t, "spsa", directions=3, seed=11)
    b = estimate_gradient(net, x, t, "spsa", directions=3, seed=11)
    c = estimate_gradient(net, x, t, "spsa", directions=3, seed=12)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["W1"], c["W1"])
    # Rademacher: every entry of one direction's estimate is +-(the same slope).
    one = estimate_gradient(net, x, t, "spsa", directions=1, seed=11)
    magnitudes = np.concatenate([np.abs(g).ravel() for g in one.values()])
    assert np.allclose(magnitudes, magnitudes[0], rtol=0, atol=0)


@pytest.mark.threads
@pytest.mark.parametrize("method", ["forward", "spsa"])
def test_kernels_are_bit_identical_across_thread_counts(method):
    from fastnum._jit import get_num_threads, set_num_threads

    x, t = _batch(3, n=20)
    _, comp_net = _nets("sigmoid")
    on_kernels(comp_net)
    before = get_num_threads()
    try:
        set_num_threads(1)
        comp_one = estimate_gradient(comp_net, x, t, method, directions=4, seed=5)
        set_num_threads(2)
        comp_two = estimate_gradient(comp_net, x, t, method, directions=4, seed=5)
    finally:
        set_num_threads(before)
    assert all(np.array_equal(comp_one[k], comp_two[k]) for k in comp_one)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"method": "adjoint"}, ValueError, "method"),
        ({"method": "spsa", "directions": 0}, ValueError, "directions=0"),
        ({"method": "spsa", "directions": 2.0}, TypeError, "directions=2.0"),
        ({"method": "spsa", "distribution": "uniform"}, ValueError, "distribution"),
        ({"method": "forward", "h": 0.0}, ValueError, "h"),
        ({"method": "spsa", "seed": -1}, ValueError, "negative"),
    ],
)
def test_bad_options_are_refused_with_the_value(kwargs, error, words):
    x, t = _batch()
    net, _ = _nets("sigmoid")
    with pytest.raises(error, match=words):
        estimate_gradient(net, x, t, **kwargs)


def test_loss_evaluations_per_estimate():
    assert loss_evaluations("numerical", 100) == 200
    assert loss_evaluations("forward", 100) == 101
    assert loss_evaluations("spsa", 100, 7) == 14
    assert loss_evaluations("backprop", 100) == 1
    with pytest.raises(ValueError, match="method"):
        loss_evaluations("central", 100)


def _must_not_loop(monkeypatch):
    """Make the reference loop refuse to run: the estimate must come from a delta kernel."""

    def refuse(*args):
        raise AssertionError("forward differences fell back to the reference loop")

    monkeypatch.setattr(estimators, "_forward_reference", refuse)


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_forward_on_deeper_dense_nets_runs_on_the_engine_kernel(monkeypatch, activation):
    # Two hidden layers: no two-layer kernel, the engine's dense delta with one-sided steps.
    x, t = _batch()
    make = lambda: MultiLayerNet(  # noqa: E731
        9, [3, 3], 3, activation=activation, weight_init_std=0.8, seed=2, backend="numpy"
    )
    ref_net, comp_net = make(), on_kernels(make())

    assert _engine_paths.two_layer_forward(comp_net.stack, comp_net.params, x, t, 1e-4) is None
    ref_g = estimate_gradient(ref_net, x, t, "forward")
    _must_not_loop(monkeypatch)
    comp_g = estimate_gradient(comp_net, x, t, "forward")
    assert _max_diff(ref_g, comp_g) < 1e-9


def test_forward_at_relu_corners_equals_the_reference_loop(monkeypatch):
    # A blank image with zero biases puts every first-layer unit exactly on its corner:
    # a bias step of +h crosses it, and the one-sided difference is the real loss change
    # (the right-hand slope), as the loop computes it, not the central average.
    x, t = _batch(seed=4, n=8)
    x[0] = 0.0
    make = lambda: MultiLayerNet(  # noqa: E731
        9, [4, 4], 3, activation="relu", weight_init_std=1.0, seed=5, backend="numpy"
    )
    ref_net, comp_net = make(), on_kernels(make())
    for net in (ref_net, comp_net):
        net.params["b1"][:] = 0.0
    central = estimate_gradient(ref_net, x, t, "numerical")
    ref_g = estimate_gradient(ref_net, x, t, "forward")
    assert np.abs(ref_g["b1"] - central["b1"]).max() > 1e-3  # the corner matters here
    _must_not_loop(monkeypatch)
    comp_g = estimate_gradient(comp_net, x, t, "forward")
    assert _max_diff(ref_g, comp_g) < 1e-9


def test_forward_keeps_the_loop_where_no_kernel_covers_the_net():
    # Batch norm and dropout: no delta kernel with one-sided steps, the loop on the
    # compiled loss, still equal.
    x, t = _batch()
    make = lambda: MultiLayerNet(  # noqa: E731
        9, [3, 3], 3, weight_init_std=0.8, seed=2, use_batchnorm=True, backend="numpy"
    )
    ref_net, comp_net = make(), on_kernels(make())
    ref_g = estimate_gradient(ref_net, x, t, "forward")
    comp_g = estimate_gradient(comp_net, x, t, "forward")
    assert _max_diff(ref_g, comp_g) < 1e-9


def _conv_net(weight_decay_lambda=0.0, **options):
    """A small SimpleConvNet; the book's takes no weight decay, so it is set afterwards."""
    from fastnum import SimpleConvNet

    conv = {"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1}
    net = SimpleConvNet((1, 6, 6), conv_param=conv, hidden_size=4, output_size=3, seed=0, **options)
    net.weight_decay_lambda = weight_decay_lambda
    return net


WEIGHT_DECAY_NETS = {
    "two-layer sigmoid": lambda **o: MultiLayerNet(9, [3], 3, "sigmoid", seed=2, **o),
    "two-layer relu": lambda **o: MultiLayerNet(9, [3], 3, "relu", seed=2, **o),
    "dense relu": lambda **o: MultiLayerNet(9, [3, 3], 3, "relu", seed=2, **o),
    "conv": _conv_net,
}


@pytest.mark.parametrize("kind", WEIGHT_DECAY_NETS)
def test_forward_with_weight_decay_runs_on_the_kernels(monkeypatch, kind):
    # The decay term's one-sided difference, added per weight, equals the loop's
    # difference of whole losses; and the decay is large enough here to matter.
    x, t = _batch()
    if kind == "conv":
        x = np.random.default_rng(0).random((3, 1, 6, 6))
        t = t[:3]
    make = WEIGHT_DECAY_NETS[kind]
    options = {"weight_init_std": 0.8, "backend": "numpy"}
    ref_net = make(weight_decay_lambda=0.5, **options)
    comp_net = on_kernels(make(weight_decay_lambda=0.5, **options))
    no_decay = estimate_gradient(make(**options), x, t, "forward")
    ref_g = estimate_gradient(ref_net, x, t, "forward")
    assert _max_diff(ref_g, no_decay) > 0.1  # the decay term moves the weights' gradients
    _must_not_loop(monkeypatch)
    comp_g = estimate_gradient(comp_net, x, t, "forward")
    assert _max_diff(ref_g, comp_g) < 1e-9


@pytest.mark.parametrize("kind", WEIGHT_DECAY_NETS)
def test_forward_on_the_kernels_leaves_the_parameters_untouched(kind):
    # The kernels get the network's own arrays (no copy per step): they must only read them.
    x, t = _batch()
    if kind == "conv":
        x, t = np.random.default_rng(0).random((3, 1, 6, 6)), t[:3]
    net = on_kernels(WEIGHT_DECAY_NETS[kind](weight_init_std=0.8, weight_decay_lambda=0.1))
    before = {k: v.copy() for k, v in net.params.items()}
    estimate_gradient(net, x, t, "forward")
    assert all(np.array_equal(before[k], net.params[k]) for k in before)


def test_engine_refuses_forward_differences_on_a_stack_it_does_not_cover():
    from fastnum import engine

    net = MultiLayerNet(9, [3], 3, seed=0, use_batchnorm=True, backend="numpy")
    x, t = _batch()
    with pytest.raises(engine.StrategyNotImplementedError, match="forward differences"):
        engine.forward_gradient(net.stack, net.params, x, t)


@pytest.mark.parametrize("method", ["forward", "spsa"])
def test_estimators_cover_the_conv_net(monkeypatch, method):
    from fastnum import SimpleConvNet

    rng = np.random.default_rng(0)
    x, t = rng.random((3, 1, 6, 6)), rng.integers(0, 3, 3)
    conv = {"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1}
    make = lambda: SimpleConvNet(  # noqa: E731
        (1, 6, 6), conv_param=conv, hidden_size=4, output_size=3, weight_init_std=0.5, seed=0
    )
    ref_net = make()
    ref_net.backend = "numpy"
    comp_net = on_kernels(make())
    ref_g = estimate_gradient(ref_net, x, t, method, directions=3)
    if method == "forward":
        _must_not_loop(monkeypatch)  # the conv delta kernel with one-sided steps
    comp_g = estimate_gradient(comp_net, x, t, method, directions=3)
    assert _max_diff(ref_g, comp_g) < 1e-9


# --- forward differences over a corpus ---------------------------------------------------------

FORWARD_CORPUS_KINDS = (
    "two-layer sigmoid",
    "two-layer relu",
    "dense sigmoid",
    "dense relu",
    "conv",
)
#: Weight scales of the corpus, by seed: the book's default 0.01, small, the order of He's,
#: large, and large enough that logits reach the hundreds (the kernels' overflow-safe paths).
FORWARD_CORPUS_STDS = (0.01, 0.05, 0.8, 4.0, 30.0)
#: Weight decay by seed (the book's TwoLayerNet has none): off, the book's chapter 6 value,
#: off, and strong enough to dominate the weights' gradients.
FORWARD_CORPUS_DECAYS = (0.0, 0.1, 0.0, 1.0)


def _corpus_case(kind, seed, n):
    """(net on NumPy, the same net on the kernels, x, t) of one corpus case.

    Every third seed zeroes the biases and blanks sample 0, so that ReLU units sit exactly
    on their corners and a step of +h crosses them.
    """
    std = FORWARD_CORPUS_STDS[seed % len(FORWARD_CORPUS_STDS)]
    decay = FORWARD_CORPUS_DECAYS[seed % len(FORWARD_CORPUS_DECAYS)]

    def make():
        if kind == "two-layer sigmoid":
            return TwoLayerNet(9, 4, 3, weight_init_std=std, seed=seed, backend="numpy")
        if kind == "conv":
            from fastnum import SimpleConvNet

            conv = {"filter_num": 2, "filter_size": 3, "pad": 1, "stride": 1}
            net = SimpleConvNet((1, 6, 6), conv, 4, 3, weight_init_std=std, seed=seed)
            net.backend, net.weight_decay_lambda = "numpy", decay  # the book's has no option
            return net
        hidden = [4] if kind.startswith("two-layer") else [4, 3]
        activation = kind.split()[1]
        return MultiLayerNet(
            9, hidden, 3, activation, std, seed, backend="numpy", weight_decay_lambda=decay
        )

    ref_net, comp_net = make(), on_kernels(make())
    rng = np.random.default_rng(1000 + seed)
    x = rng.random((n, 1, 6, 6) if kind == "conv" else (n, 9))
    flat = x.reshape(n, -1)
    flat[flat < 0.4] = 0.0  # MNIST-like exact zeros
    flat[:, :2] = 0.5  # a repeated value: one evaluation per sample in the two-layer kernel
    if seed % 3 == 0:
        flat[0] = 0.0
        for net in (ref_net, comp_net):
            for name, p in net.params.items():
                if name.startswith("b"):
                    p[:] = 0.0
    return ref_net, comp_net, x, rng.integers(0, 3, n)


@pytest.mark.parametrize("kind", FORWARD_CORPUS_KINDS)
def test_forward_kernels_equal_the_reference_loop_over_a_corpus(monkeypatch, kind):
    # 8 seeds x 3 batch sizes per kind: the one-sided delta kernels against the loop of real
    # loss values, with weights from tiny to huge, ReLU units on their corners and (but for
    # the book's TwoLayerNet) weight decay on half the seeds.
    cases = [_corpus_case(kind, seed, n) for seed in range(8) for n in (1, 4, 17)]
    refs = [estimate_gradient(ref_net, x, t, "forward") for ref_net, _, x, t in cases]
    corners_crossed = central_caught = 0
    for (ref_net, _, x, t), ref_g in zip(cases, refs, strict=True):
        central = estimate_gradient(ref_net, x, t, "numerical")
        corners_crossed += _max_diff(ref_g, central) > 1e-3
        central_caught += _max_diff(ref_g, central) > 1e-9
    # The loop differences two rounded batch losses, so its own error is about eps * |L| / h:
    # negligible for the data term, but a strong decay on large weights makes L reach the
    # thousands (seed 3: lambda 1, std 4), where the kernels' per-weight decay difference is
    # the exact one and the loop's is off by ~1e-9.  Tolerance: 1e-9 plus that rounding.
    tolerances = [
        1e-9 + 8 * np.finfo(float).eps * abs(ref_net.loss(x, t)) / H for ref_net, _, x, t in cases
    ]
    _must_not_loop(monkeypatch)
    excess = [
        _max_diff(ref_g, estimate_gradient(comp_net, x, t, "forward")) / tol
        for (_, comp_net, x, t), ref_g, tol in zip(cases, refs, tolerances, strict=True)
    ]
    worst = int(np.argmax(excess))
    assert excess[worst] < 1.0, f"case {worst} (seed {worst // 3}) at {excess[worst]:.3g} x tol"
    assert sum(tol > 2e-9 for tol in tolerances) <= len(cases) // 4  # mostly 1e-9 itself
    # A subtly wrong kernel, one that took central steps, would fail most cases (all but
    # those whose curvature is too small to show at the book's tiny weights).
    assert central_caught > len(cases) // 2, f"{central_caught} of {len(cases)}"
    if "relu" in kind or kind == "conv":
        assert corners_crossed > 0  # the corpus does reach the corners it means to


@pytest.mark.threads
def test_conv_forward_differences_do_not_depend_on_the_thread_count():
    from fastnum import SimpleConvNet
    from fastnum._jit import get_num_threads, set_num_threads

    rng = np.random.default_rng(1)
    x, t = rng.random((6, 1, 8, 8)), rng.integers(0, 3, 6)
    conv = {"filter_num": 3, "filter_size": 3, "pad": 1, "stride": 1}
    net = SimpleConvNet((1, 8, 8), conv, 5, 3, weight_init_std=0.5, seed=2)
    on_kernels(net)
    before = get_num_threads()
    try:
        set_num_threads(1)
        comp_one = estimate_gradient(net, x, t, "forward")
        set_num_threads(2)
        comp_two = estimate_gradient(net, x, t, "forward")
    finally:
        set_num_threads(before)
    assert all(np.array_equal(comp_one[k], comp_two[k]) for k in comp_one)


# --- training ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blobs():
    return blob_data(42, np.float32, np.uint8)


@pytest.mark.parametrize(
    "grad, extra", [("forward", {}), ("spsa", {"directions": 4}), ("numerical", {})]
)
def test_training_with_each_estimator_learns_and_counts_evaluations(blobs, grad, extra):
    config = small(grad=grad, iters=30, lr=1.0, **extra)
    result = quiet_train(config, blobs)
    n_params = sum(p.size for p in result.params.values())
    assert result.timings["loss_evaluations_per_step"] == loss_evaluations(
        grad, n_params, config.directions
    )
    first, last = np.mean(result.history["loss"][:5]), np.mean(result.history["loss"][-5:])
    assert last < first


@pytest.mark.parametrize(
    "grad, extra",
    [("forward", {}), ("spsa", {"directions": 3, "spsa_distribution": "gaussian"})],
)
def test_resume_is_bit_identical_for_the_estimators(blobs, tmp_path, grad, extra):
    config = small(grad=grad, iters=45, batch_size=20, **extra)  # 15 iterations per epoch
    full = quiet_train(config, blobs, tmp_path / "full")
    with pytest.raises(SimulatedInterruptError):
        quiet_train(config, blobs, tmp_path / "cut", callback=stop_at_epoch(2))
    resumed = quiet_train(config, blobs, tmp_path / "cut", resume=True)
    for k in full.params:
        assert np.array_equal(full.params[k], resumed.params[k]), k
    assert full.history == resumed.history
    doc = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert doc["config"]["grad"] == grad
    assert doc["timings"]["loss_evaluations_per_step"] == full.timings["loss_evaluations_per_step"]


@pytest.mark.numba
def test_spsa_training_is_the_same_on_both_backends(blobs):
    # Same seed => same directions; the two losses differ by rounding only.
    ref_run = quiet_train(small(grad="spsa", directions=2, iters=10), blobs)
    comp_run = quiet_train(small(grad="spsa", directions=2, iters=10, backend="numba"), blobs)
    for k in ref_run.params:
        assert np.allclose(ref_run.params[k], comp_run.params[k], rtol=0, atol=1e-9), k


def test_config_validates_the_estimator_options():
    with pytest.raises(ValueError, match="directions=0"):
        TrainConfig(grad="spsa", directions=0)
    with pytest.raises(ValueError, match="spsa_distribution"):
        TrainConfig(grad="spsa", spsa_distribution="cauchy")
    with pytest.raises(ValueError, match="grad='spsa'"):
        TrainConfig(grad="forward", directions=10)
    assert TrainConfig(grad="spsa", directions=10).to_dict()["directions"] == 10


def test_cli_parses_the_estimator_options():
    from fastnum.cli import build_parser

    args = build_parser().parse_args(
        ["train", "--grad", "spsa", "--directions", "10", "--spsa-dist", "gaussian"]
    )
    assert (args.grad, args.directions, args.spsa_distribution) == ("spsa", 10, "gaussian")


def test_quick_experiment_runs(tmp_path, mnist_source_dir, capsys):
    from fastnum.experiments import estimators as experiment

    out = tmp_path / "est"
    assert experiment.main(["--quick", "--out", str(out), "--data-dir", str(mnist_source_dir)]) == 0
    summary = (out / "summary.md").read_text()
    assert "`python -m fastnum.experiments.estimators --quick`" in summary
    for name in ("central differences", "forward differences", "SPSA K=100", "backprop"):
        assert name in summary
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("label,net,grad,directions,iteration,loss_evaluations")
    # 6 runs, each with points at 0, 5 and 10 steps.
    assert len(rows) == 1 + 6 * 3
    assert (out / "estimators.png").stat().st_size > 1000
    assert "SimpleConvNet" not in summary  # full mode only


def test_full_experiment_trains_simpleconv_like_the_dense_net():
    from fastnum.experiments import estimators as experiment

    specs = experiment.specs(experiment.FULL)
    dense = [s for s in specs if s["net"] == "dense"]
    conv = [s for s in specs if s["net"] == "simpleconv"]
    shared = ("batch_size", "lr", "seed", "train_size", "test_size", "threads")
    for spec in conv:
        assert all(spec["config"][k] == dense[0]["config"][k] for k in shared)
        assert spec["config"]["net"] == "simpleconv" and spec["config"]["hidden_size"] == 100
    # The conv net has a step budget of its own, the same for each of its estimators.
    assert {s["config"]["iters"] for s in conv} == {experiment.FULL["conv"]["iters"]}
    assert {s["config"]["iters"] for s in dense} == {experiment.FULL["iters"]}
    assert {(s["config"]["grad"], s["config"].get("directions")) for s in conv} == {
        ("numerical", None),
        ("forward", None),
        ("spsa", 1),
        ("spsa", 10),
        ("spsa", 100),
        ("backprop", None),
    }


@pytest.mark.numba
def test_experiment_with_simpleconv_writes_its_section(tmp_path, mnist_source_dir):
    from fastnum.experiments import estimators as experiment

    conv = {
        "methods": [["numerical", 1], ["spsa", 2], ["backprop", 1]],
        "hidden_size": 3,
        "iters": 4,
        "eval_every": 2,
    }
    settings = {**experiment.QUICK, "methods": [["backprop", 1]], "conv": conv}
    files, summary = experiment.run(settings, tmp_path, data_dir=str(mnist_source_dir))
    assert files == ["results.csv", "estimators.png", "estimators-simpleconv.png"]
    rows = (tmp_path / "results.csv").read_text().splitlines()[1:]
    # 1 dense run (points at 0, 5, 10) and 3 SimpleConvNet runs (points at 0, 2, 4).
    assert [row.split(",")[1] for row in rows] == ["dense"] * 3 + ["simpleconv"] * 9
    assert (tmp_path / "estimators-simpleconv.png").stat().st_size > 1000
    section = summary[summary.index("## SimpleConvNet (30 filters 5x5, hidden 3)") :]
    assert "| central differences | 27,566 |" in section  # 2 x its 13,783 parameters
    assert "| SPSA K=2 | 4 |" in section
    assert "Forward differences were not among this run's estimators." in section
