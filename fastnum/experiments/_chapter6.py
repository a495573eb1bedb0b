"""The training loop the chapter 6 experiments share: a MultiLayerNet, an optimizer, a spec.

The chapter 6 experiments need what :func:`fastnum.train.train` does not record: the
batch loss of every iteration, accuracies at every epoch of a tiny training set, a
validation split.  :func:`run` trains one seeded :class:`fastnum.MultiLayerNet` with one
of :mod:`fastnum.optimizers` from a plain dict (a *spec*), so the runs of a grid can go
through :func:`fastnum.experiments.grid.run_grid`, here or on a Dask cluster, and give the
same numbers wherever they run.

A spec has the keys:

``net`` (dict)
    Keyword arguments of :class:`fastnum.MultiLayerNet` besides the sizes and seed:
    ``hidden_sizes``, ``activation``, ``weight_init_std``, ``use_batchnorm``, ...
``optimizer`` (str), ``hyper`` (dict, optional)
    A name of :data:`fastnum.optimizers.OPTIMIZERS` and its hyperparameters.
``grad`` ("backprop" or "numerical"), ``iters``, ``batch_size``, ``seed``
    The gradient, the number of updates, the batch (drawn with replacement) and the
    seed of both the weights and the batches.
``train_size``, ``test_size``
    The first ``train_size`` training images train; accuracy is measured on them and
    on the first ``test_size`` test images.
``val_size``, ``split_seed`` (optional)
    With ``val_size`` > 0 the first ``train_size`` training images are shuffled with
    ``split_seed``; the first ``val_size`` of them are the held-out set instead of the
    test images and the rest train (the book's validation split).
``eval_every`` (int), ``record_loss`` (bool)
    Measure both accuracies before training and after every ``eval_every`` updates
    (0: only at the end); keep the batch loss after every update (the book's curves).
``name``, ``tags``, ``data_dir``, ``threads``, ``backend`` (optional)
"""

from __future__ import annotations

import platform
import time

import numpy as np

from fastnum._jit import num_threads, one_blas_thread
from fastnum.experiments.grid import _RUN_LOCK, _mnist

#: Keys of a :func:`run` result that are equal for equal specs, wherever they run.
DETERMINISTIC_KEYS = (
    "name",
    "tags",
    "status",
    "iterations",
    "losses",
    "eval_iters",
    "train_acc",
    "eval_acc",
)


def datasets(spec):
    """(x_train, t_train, x_eval, t_eval) of a spec, float64 images and integer labels."""
    (x, t), (x_test, t_test) = _mnist(spec.get("data_dir"))
    n = spec["train_size"]
    x, t = np.asarray(x[:n], dtype=np.float64), np.asarray(t[:n], dtype=np.int64)
    val = spec.get("val_size", 0)
    if val:
        order = np.random.default_rng(spec.get("split_seed", 0)).permutation(len(x))
        x, t = x[order], t[order]
        return x[val:], t[val:], x[:val], t[:val]
    m = spec["test_size"]
    return x, t, np.asarray(x_test[:m], dtype=np.float64), np.asarray(t_test[:m], dtype=np.int64)


def backend_of(spec):
    """The spec's backend; by default NumPy for backprop, the usual choice for numerical.

    Backprop is NumPy code whatever the backend; its loss and accuracies are matrix
    products that BLAS does faster than the numba kernels, which are built for the
    many small perturbed evaluations of the numerical gradient.
    """
    if spec.get("backend") is not None:
        return spec["backend"]
    return "numpy" if spec["grad"] == "backprop" else None


def _build(spec, n_features):
    from fastnum.multilayer import MultiLayerNet
    from fastnum.optimizers import make_optimizer

    net = MultiLayerNet(
        n_features, output_size=10, seed=spec["seed"], backend=backend_of(spec), **spec["net"]
    )
    return net, make_optimizer(spec["optimizer"], **spec.get("hyper", {}))


def run(spec):
    """Train one spec; the function a Dask worker calls.

    Returns
    -------
    dict
        ``status`` ("completed", or "diverged" when the parameters stopped being
        finite, which the network refuses), ``iterations`` done, ``losses`` (batch
        loss after each update, empty unless ``record_loss``), ``eval_iters`` with
        ``train_acc`` and ``eval_acc`` (accuracy on the training images and on the
        test or validation images at those iterations), ``seconds`` (wall time of
        the loop, evaluations included), ``backend``, ``host``, and the spec's
        ``name`` and ``tags``.
    """
    from fastnum.backend import resolve_backend

    x, t, x_eval, t_eval = datasets(spec)
    net, optimizer = _build(spec, x.shape[1])
    # The batches have their own stream, so the weights do not depend on the batch draws.
    rng = np.random.default_rng([spec["seed"], 1])
    every, record = spec.get("eval_every", 0), spec.get("record_loss", False)
    gradient = net.gradient if spec["grad"] == "backprop" else net.numerical_gradient
    out = {"losses": [], "eval_iters": [], "train_acc": [], "eval_acc": []}

    def evaluate(i):
        out["eval_iters"].append(i)
        out["train_acc"].append(net.accuracy(x, t))
        out["eval_acc"].append(net.accuracy(x_eval, t_eval))

    status, done = "completed", 0
    # One BLAS thread: its spinning workers would take the cores of the numba kernels (and
    # of the other runs or agents on a small machine); backprop's products are small anyway.
    with (
        _RUN_LOCK,
        one_blas_thread(),
        num_threads(spec.get("threads")),
        np.errstate(over="ignore", under="ignore", invalid="ignore"),
    ):
        start = time.perf_counter()
        try:
            if every:
                evaluate(0)
            for i in range(1, spec["iters"] + 1):
                idx = rng.choice(len(x), spec["batch_size"])
                optimizer.update(net.params, gradient(x[idx], t[idx]))
                if record:
                    out["losses"].append(float(net.loss(x[idx], t[idx])))
                done = i
                if every and i % every == 0:
                    evaluate(i)
            if not out["eval_iters"] or out["eval_iters"][-1] != done:
                evaluate(done)
        except ValueError as err:
            # Parameters that overflowed: the network validates them and refuses.
            if "finite" not in str(err) and "nan" not in str(err).lower():
                raise
            status = "diverged"
        seconds = time.perf_counter() - start
    return {
        "name": spec.get("name"),
        "tags": dict(spec.get("tags", {})),
        "status": status,
        "iterations": done,
        **out,
        "seconds": seconds,
        "backend": resolve_backend(backend_of(spec)),
        "host": platform.node(),
    }


def deterministic(result):
    """The part of a :func:`run` result that does not depend on timing."""
    return {key: result[key] for key in DETERMINISTIC_KEYS}


def smooth(values, window=21):
    """Centred moving average over ``window`` points (shrunk at the ends), for noisy losses."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return values
    half = min(window // 2, (len(values) - 1) // 2)
    kernel = np.ones(2 * half + 1)
    sums = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones_like(values), kernel, mode="same")
    return sums / counts


def epoch_iters(train_size, batch_size):
    """Updates per epoch as the book counts them (at least one)."""
    return max(train_size // batch_size, 1)


def grad_note(grad):
    """How the gradients were computed, for titles and summaries."""
    return "backprop" if grad == "backprop" else "numerical gradients (central differences)"


def loss_rows(results, key):
    """One CSV row per update of every run: ``key`` (its tag), iteration, loss, smoothed."""
    rows = []
    for r in results:
        smoothed = smooth(r["losses"])
        rows += [
            {key: r["tags"][key], "iteration": i + 1, "loss": loss, "smoothed": float(s)}
            for i, (loss, s) in enumerate(zip(r["losses"], smoothed, strict=True))
        ]
    return rows


def plot_losses(results, key, title, path):
    """The book's figure: one smoothed loss curve per run, over the iterations."""
    from fastnum.experiments import output

    fig, (ax,) = output.figure(1, panel_size=(6.4, 4.8))
    markers = "os^Dvx"
    for i, r in enumerate(results):
        its = np.arange(1, len(r["losses"]) + 1)
        ax.plot(
            its,
            smooth(r["losses"]),
            marker=markers[i % len(markers)],
            markevery=max(1, len(its) // 10),
            label=str(r["tags"][key]),
        )
    ax.set(xlabel="iteration", ylabel="batch loss (smoothed)", title=title)
    ax.set_ylim(0, min(3.0, ax.get_ylim()[1]))
    ax.legend()
    return output.save_png(fig, path)


#: The settings a loss-curve experiment passes to every run unchanged.
RUN_KEYS = ("iters", "batch_size", "train_size", "test_size", "seed", "threads")


def loss_run_rows(results, key):
    """One runs.csv row per run of a loss-curve experiment, ``key`` being its tag."""
    return [
        {
            key: r["tags"][key],
            "status": r["status"],
            "iterations": r["iterations"],
            "final_loss": final_loss(r),
            "test_acc": r["eval_acc"][-1] if r["eval_acc"] else float("nan"),
            "seconds": r["seconds"],
        }
        for r in results
    ]


def run_loss_curves(specs, settings, out, scheduler, key, title, png):
    """Run a loss-curve grid; write runs.csv, curves.csv and ``png``; return (results, rows)."""
    from fastnum.experiments import grid, output

    results = grid.run_grid(specs, scheduler, func=run)
    rows = loss_run_rows(results, key)
    columns = [key, "status", "iterations", "final_loss", "test_acc", "seconds"]
    output.write_csv(out / "runs.csv", rows, columns)
    output.write_csv(
        out / "curves.csv", loss_rows(results, key), [key, "iteration", "loss", "smoothed"]
    )
    plot_losses(results, key, f"{title}, {grad_note(settings.get('grad', 'backprop'))}", out / png)
    return results, rows


def final_loss(result):
    """Mean batch loss over the last tenth of the updates (nan without losses)."""
    losses = result["losses"]
    tail = losses[-max(1, len(losses) // 10) :]
    return float(np.mean(tail)) if tail else float("nan")


def add_grad_option(parser):
    """``--grad backprop|numerical`` for a chapter 6 experiment's command line."""
    parser.add_argument(
        "--grad",
        choices=("backprop", "numerical"),
        default="backprop",
        help="how gradients are computed (default: backprop; numerical is the book's "
        "central differences on fastnum's kernels, much slower)",
    )
    return parser


def main(experiment, argv=None):
    """:func:`fastnum.experiments.command.main` with ``--grad`` put into the settings.

    Returns
    -------
    int
        The exit code of :func:`fastnum.experiments.command.main`.
    """
    import argparse
    import dataclasses
    import sys

    from fastnum.experiments import command

    argv = list(sys.argv[1:] if argv is None else argv)
    add_grad_option(command.parser(experiment)).parse_args(argv)  # --help, bad options
    grad_only = add_grad_option(argparse.ArgumentParser(add_help=False))
    args, rest = grad_only.parse_known_args(argv)
    experiment = dataclasses.replace(
        experiment,
        full={**experiment.full, "grad": args.grad},
        quick={**experiment.quick, "grad": args.grad},
    )
    code = command.main(experiment, rest)
    if code == 0 and args.grad != "backprop":
        # The shared command line names no --grad: add it, so the summary reproduces the run.
        shown = command.parser(experiment).parse_args(rest)
        path = command.default_out(shown, experiment.name) / "summary.md"
        line = f"`python -m {experiment.module}" + (" --quick" if shown.quick else "")
        text = path.read_text(encoding="utf-8").replace(
            line + "`", f"{line} --grad {args.grad}`", 1
        )
        path.write_text(text, encoding="utf-8")
    return code


def time_numerical_iteration(spec, repeats=2, warmup=True):
    """Median seconds of one update of ``spec`` with numerical gradients.

    One update as :func:`run` does it: sample a batch, the numerical gradient, the
    optimizer step.  What a full run with ``--grad numerical`` costs is about this
    times its updates (plus the accuracy passes, small beside it).  The warm-up update
    (which compiles the kernels) is not timed; skip it when one update takes minutes.
    """
    spec = {**spec, "grad": "numerical"}
    x, t, _, _ = datasets(spec)
    net, optimizer = _build(spec, x.shape[1])
    rng = np.random.default_rng([spec["seed"], 1])
    times = []
    with (
        one_blas_thread(),
        num_threads(spec.get("threads")),
        np.errstate(over="ignore", under="ignore", invalid="ignore"),
    ):
        for _ in range(repeats + bool(warmup)):
            idx = rng.choice(len(x), spec["batch_size"])
            start = time.perf_counter()
            optimizer.update(net.params, net.numerical_gradient(x[idx], t[idx]))
            times.append(time.perf_counter() - start)
    return float(np.median(times[1:] if warmup else times))
