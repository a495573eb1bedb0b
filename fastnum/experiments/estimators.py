"""Gradient estimators: test accuracy against wall time and against loss evaluations.

The book's network (784-50-10, sigmoid, plain SGD, batch 100) is trained from
the same seed, on the same batches, for the same number of steps with each
estimator of :mod:`fastnum.estimators`: central differences and forward
differences (both with delta evaluation, numba), SPSA with K random directions
for each K of the settings, and backprop.  Every run uses one numba thread.

The settings' ``conv`` entry (full mode; the quick mode has none) adds the book's
chapter 7 ``SimpleConvNet`` (30 filters of 5x5, ``hidden_size`` relu units),
trained with the same seed, batches and learning rate (and one step budget of
its own, shared by its estimators) by the estimators of its own ``methods``.
Central and forward differences run on its delta kernels (forward differences:
the conv block + dense kernel with one-sided steps,
:func:`fastnum.engine.forward_gradient`).

Each step is exactly :func:`fastnum.train.sgd_step`, the step ``fastnum train``
takes (SPSA's directions seeded from (seed, iteration)); the batches are drawn
as ``train`` draws them.  Only the steps are timed: the test accuracy,
evaluated every ``eval_every`` steps on the test images, is not counted in the
wall time.  Loss evaluations are counted as :func:`fastnum.estimators.loss_evaluations`
does: one per perturbed coordinate (or two per direction, or one per backprop
pass), whatever a kernel saves by computing a perturbed loss incrementally.

Usage::

    python -m fastnum.experiments.estimators           # full -> docs/experiments/estimators/
    python -m fastnum.experiments.estimators --quick   # seconds -> runs/experiments/...-quick/

The full mode takes about 4 minutes for the dense network and about 50 minutes
for SimpleConvNet's 500 steps (SPSA with K = 100 alone: 200 forward passes of
100 images per step); on a Dask cluster (``--scheduler``) the runs go side by side.
"""

from __future__ import annotations

import math
import platform
import sys
import time

import numpy as np

from fastnum.experiments import command, grid, output

FULL = {
    "methods": [
        ["numerical", 1],
        ["forward", 1],
        ["spsa", 1],
        ["spsa", 10],
        ["spsa", 100],
        ["backprop", 1],
    ],
    "iters": 2000,
    "eval_every": 100,
    "batch_size": 100,
    "train_size": 60000,
    "test_size": 10000,
    "hidden_size": 50,
    "lr": 0.1,
    "seed": 0,
    "threads": 1,
    "thresholds": [0.5, 0.7, 0.8, 0.85],
    # SimpleConvNet with the book's chapter 7 sizes; the rest of the settings are shared.
    # 500 steps, not 2,000: SPSA with K = 100 takes about 3.9 s a step on the conv net, so
    # 2,000 steps of every estimator would take over 3 h on one core; 500 take about 50 min.
    # Its estimators are the dense net's ("methods" above).
    "conv": {
        "hidden_size": 100,
        "iters": 500,
        "eval_every": 50,
    },
}
QUICK = {
    **FULL,
    "iters": 10,
    "eval_every": 5,
    "batch_size": 10,
    "train_size": 200,
    "test_size": 100,
    "hidden_size": 3,
    "thresholds": [0.2, 0.3],
    # Seconds on every CI leg: SimpleConvNet's numerical gradient in NumPy (no numba) takes
    # minutes per step, so the conv net is full mode only.
    "conv": None,
}

#: The networks of the experiment: "dense" (the book's chapter 4 net) and "simpleconv".
NETS = {"dense": "784-{hidden_size}-10 sigmoid", "simpleconv": "SimpleConvNet"}

IMAGE = (1, 28, 28)  # MNIST images as SimpleConvNet takes them

COLUMNS = [
    "label",
    "net",
    "grad",
    "directions",
    "iteration",
    "loss_evaluations",
    "step_seconds",
    "test_acc",
    "batch_loss",
    "status",
    "backend",
    "host",
]


def label(grad, directions):
    """The run's name in the table and the legend."""
    return {
        "numerical": "central differences",
        "forward": "forward differences",
        "backprop": "backprop",
    }.get(grad, f"SPSA K={directions}")


def networks(settings):
    """(net, its settings) for each network of the experiment: dense first, then the conv net."""
    nets = [("dense", settings)]
    if settings.get("conv"):
        nets.append(("simpleconv", {**settings, **settings["conv"]}))
    return nets


def specs(settings, data_dir=None):
    """One spec per network and estimator; same seed, batches and step budget for all."""
    out = []
    for net, net_settings in networks(settings):
        config = {
            key: net_settings[key]
            for key in (
                "iters",
                "batch_size",
                "train_size",
                "test_size",
                "hidden_size",
                "lr",
                "seed",
            )
        }
        out += [
            {
                "name": label(grad, k),
                "net": net,
                "config": {
                    **config,
                    "net": net,
                    "grad": grad,
                    "threads": settings["threads"],
                    **({"directions": k} if grad == "spsa" else {}),
                },
                "eval_every": net_settings["eval_every"],
                "data_dir": data_dir,
            }
            for grad, k in net_settings["methods"]
        ]
    return out


def run_estimator(spec):
    """Train one estimator, timing the steps only; the function a Dask worker calls.

    Returns
    -------
    dict
        ``name``, ``config``, ``status`` ("completed" or "diverged"), ``points``
        (dicts of iteration, loss_evaluations, step_seconds, test_acc and
        batch_loss, mean of the batch losses since the previous point),
        ``evaluations_per_step``, ``backend`` and ``host``.
    """
    from fastnum._jit import num_threads
    from fastnum._validate import as_float_batch, as_image_batch, as_labels
    from fastnum.estimators import loss_evaluations
    from fastnum.train import TrainConfig, build_net, run_backend, sgd_step

    config = TrainConfig(**spec["config"])
    (x_train, t_train), (x_test, t_test) = grid._mnist(spec.get("data_dir"))
    images = config.net == "simpleconv"  # (N, 1, 28, 28), as the conv net takes them
    as_batch = (
        (lambda x: as_image_batch(x.reshape(-1, *IMAGE), IMAGE)) if images else as_float_batch
    )
    x_train = as_batch(x_train[: config.train_size])
    t_train = as_labels(t_train[: config.train_size], len(x_train), 10)
    x_test = as_batch(x_test[: config.test_size])
    t_test = as_labels(t_test[: config.test_size], len(x_test), 10)
    backend = run_backend(config)
    n_features = int(np.prod(x_train.shape[1:]))
    net = build_net(config, n_features, 10, input_dim=IMAGE if images else None)
    optimizer = config.make_optimizer()
    per_step = loss_evaluations(
        config.grad, sum(p.size for p in net.params.values()), config.directions
    )
    # As train() draws its batches: a child stream of the seed.
    rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(1)[0])
    threads = config.threads if backend == "numba" else None
    with num_threads(threads), np.errstate(over="ignore", under="ignore", invalid="ignore"):
        # Warm-up on a throwaway copy, so that compiling is not timed.
        warm = build_net(config, n_features, 10, input_dim=IMAGE if images else None)
        sgd_step(warm, x_train[:2], t_train[:2], config, config.make_optimizer())
        points, losses, seconds, status = [], [], 0.0, "completed"

        def record(it):
            points.append(
                {
                    "iteration": it,
                    "loss_evaluations": it * per_step,
                    "step_seconds": seconds,
                    "test_acc": net.accuracy_trusted(x_test, t_test),
                    "batch_loss": float(np.mean(losses)) if losses else math.nan,
                }
            )
            losses.clear()

        record(0)
        for it in range(config.iters):
            idx = rng.choice(len(x_train), config.batch_size)
            t0 = time.perf_counter()
            loss = sgd_step(net, x_train[idx], t_train[idx], config, optimizer, it)
            seconds += time.perf_counter() - t0
            if not math.isfinite(loss):
                status = "diverged"
                break
            losses.append(loss)
            if (it + 1) % spec["eval_every"] == 0 or it + 1 == config.iters:
                record(it + 1)
    return {
        "name": spec.get("name"),
        "net": config.net,
        "config": config.to_dict(),
        "status": status,
        "points": points,
        "evaluations_per_step": per_step,
        "n_params": int(sum(p.size for p in net.params.values())),
        "backend": backend,
        "host": platform.node(),
    }


def rows_of(results):
    """One CSV row per evaluation point of every run."""
    rows = []
    for r in results:
        c = r["config"]
        for p in r["points"]:
            rows.append(
                {
                    "label": r["name"],
                    "net": r["net"],
                    "grad": c["grad"],
                    "directions": c["directions"] if c["grad"] == "spsa" else "",
                    **p,
                    "status": r["status"],
                    "backend": r["backend"],
                    "host": r["host"],
                }
            )
    return rows


def describe(net, settings):
    """The network in words, e.g. "784-50-10 sigmoid" or "SimpleConvNet (30 filters 5x5, 100)"."""
    if net == "simpleconv":
        return f"SimpleConvNet (30 filters 5x5, hidden {settings['hidden_size']})"
    return f"784-{settings['hidden_size']}-10 sigmoid"


def figure_name(net):
    """The figure of one network's runs: estimators.png (dense), estimators-simpleconv.png."""
    return "estimators.png" if net == "dense" else f"estimators-{net}.png"


def plot(results, settings, path, net="dense"):
    """Two panels: test accuracy against step wall time and against loss evaluations."""
    fig, (a, b) = output.figure(2)
    for i, r in enumerate(results):
        pts = r["points"][1:]  # time 0 and 0 evaluations have no place on a log axis
        acc = [p["test_acc"] for p in pts]
        style = {"color": f"C{i}", "marker": ".", "label": r["name"]}
        a.semilogx([p["step_seconds"] for p in pts], acc, **style)
        b.semilogx([p["loss_evaluations"] for p in pts], acc, **style)
    a.set(xlabel="wall time of the steps (s)", ylabel="test accuracy", ylim=(0, 1))
    a.set_title("Accuracy against wall time")
    b.set(xlabel="loss evaluations", ylabel="test accuracy", ylim=(0, 1))
    b.set_title("Accuracy against loss evaluations")
    a.legend(fontsize="small")
    fig.suptitle(
        f"Gradient estimators, {describe(net, settings)}, SGD lr "
        f"{settings['lr']:g}, batch {settings['batch_size']}, {settings['iters']} steps, "
        "1 numba thread"
    )
    return output.save_png(fig, path)


def first_reaching(result, threshold):
    """The first point whose test accuracy is at least ``threshold``, or None."""
    return next((p for p in result["points"] if p["test_acc"] >= threshold), None)


def _per_step(r):
    last = r["points"][-1]
    return last["step_seconds"] / max(last["iteration"], 1)


def _table(results, settings):
    thresholds = settings["thresholds"]
    head = " | ".join(f"s to {th:g}" for th in thresholds)
    lines = [
        f"| estimator | evaluations/step | ms/step | µs/evaluation | test acc after "
        f"{settings['iters']} steps | {head} |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(thresholds),
    ]
    for r in results:
        cells = []
        for th in thresholds:
            p = first_reaching(r, th)
            cells.append("—" if p is None else f"{p['step_seconds']:.3g}")
        status = "" if r["status"] == "completed" else f" ({r['status']})"
        lines.append(
            f"| {r['name']}{status} | {r['evaluations_per_step']:,} | {1000 * _per_step(r):.3g} | "
            f"{1e6 * _per_step(r) / r['evaluations_per_step']:.3g} | "
            f"{r['points'][-1]['test_acc']:.3f} | {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def _fastest(runs, threshold, key):
    """(run, point) of the run that first reaches ``threshold`` by ``key``, or None."""
    reached = [(r, first_reaching(r, threshold)) for r in runs]
    reached = [(r, p) for r, p in reached if p is not None]
    return min(reached, key=lambda rp: rp[1][key]) if reached else None


#: What one coordinate-wise evaluation with delta recomputes, per network.
DELTA_WORK = {
    "dense": "one hidden unit of the samples a perturbation reaches",
    "simpleconv": "one filter's channel (or one hidden unit) of the samples a perturbation "
    "reaches, then the layers after it",
}


def _findings(results, settings, net="dense"):
    exact = [r for r in results if r["config"]["grad"] in ("numerical", "forward")]
    spsa = [r for r in results if r["config"]["grad"] == "spsa"]
    bp = [r for r in results if r["config"]["grad"] == "backprop"]
    lines = []

    def acc(r):
        return r["points"][-1]["test_acc"]

    ends = ", ".join(f"{r['name']} {acc(r):.3f}" for r in results)
    lines.append(f"- Test accuracy after the same {settings['iters']} steps: {ends}.")
    early = ", ".join(
        f"{r['name']} {r['points'][1]['test_acc']:.3f}" for r in results if len(r["points"]) > 1
    )
    lines.append(f"- After the first {settings['eval_every']} steps: {early}.")
    if exact and spsa:
        cost = ", ".join(
            f"{r['name']} {1e6 * _per_step(r) / r['evaluations_per_step']:.3g} µs"
            for r in exact + spsa
        )
        lines.append(
            "- Wall time per loss evaluation: "
            f"{cost}.  A coordinate-wise evaluation with delta recomputes {DELTA_WORK[net]}; "
            "an SPSA evaluation moves every parameter and so runs the whole batch."
        )
        for th in settings["thresholds"]:
            by_time = _fastest(exact, th, "step_seconds")
            if by_time is None:
                continue
            er, ep = by_time
            sp = _fastest(spsa, th, "step_seconds")
            if sp is None:
                lines.append(
                    f"- Test accuracy {th:g}: {er['name']} reach it after "
                    f"{ep['step_seconds']:.3g} s ({ep['loss_evaluations']:,} evaluations); "
                    f"no SPSA run reaches it within {settings['iters']} steps."
                )
                continue
            sr, spt = sp
            se = _fastest(spsa, th, "loss_evaluations")
            ee = _fastest(exact, th, "loss_evaluations")
            lines.append(
                f"- Test accuracy {th:g}: the exact coordinate-wise gradient ({er['name']}) "
                f"reaches it after {ep['step_seconds']:.3g} s, the fastest SPSA run "
                f"({sr['name']}) after {spt['step_seconds']:.3g} s "
                f"({spt['step_seconds'] / ep['step_seconds']:.2g}x the time).  In loss "
                f"evaluations: {ee[1]['loss_evaluations']:,} ({ee[0]['name']}) against "
                f"{se[1]['loss_evaluations']:,} ({se[0]['name']}), "
                f"{ee[1]['loss_evaluations'] / se[1]['loss_evaluations']:.3g}x as many."
            )
    if bp:
        b = bp[0]
        lines.append(
            f"- Backprop: {acc(b):.3f} after {b['points'][-1]['step_seconds']:.3g} s of "
            "steps, the yardstick every estimator is measured against."
        )
    return "\n".join(lines)


def _forward_note(results):
    """A line saying forward differences were left out of the run, or ""."""
    if any(r["config"]["grad"] == "forward" for r in results):
        return ""
    return "- Forward differences were not among this run's estimators."


def _section(results, settings, net):
    """One network's table and findings."""
    forward = _forward_note(results)
    return f"""{_table(results, settings)}

## What the numbers show: {describe(net, settings)}

{_findings(results, settings, net)}
{forward}"""


def summary(results, settings):
    """The body of summary.md: settings, each network's table and what it shows."""
    sections = []
    for net, net_settings in networks(settings):
        runs = [r for r in results if r.get("net", "dense") == net]
        title = "" if net == "dense" else f"## {describe(net, net_settings)}\n\n"
        if net != "dense":
            same = (
                "seed, batches, learning rate and number of steps as above"
                if net_settings["iters"] == settings["iters"]
                else f"seed, batches and learning rate as above, {net_settings['iters']} steps"
            )
            title += (
                f"The same {same}, with the estimators {', '.join(r['name'] for r in runs)}.\n\n"
            )
        sections.append(title + _section(runs, net_settings, net))
    files = ", ".join(f"`{figure_name(net)}`" for net, _ in networks(settings))
    return f"""Settings: `{settings}`.  Same seed, same batches, same number of SGD steps for
every estimator; only the steps are timed (the test accuracy, evaluated every
{settings["eval_every"]} steps on the first {settings["test_size"]} test images, is
not).  Loss evaluations count one per perturbed coordinate for the
coordinate-wise estimators (the delta kernels compute each incrementally, but each
is a real evaluation of the perturbed loss), two per direction for SPSA and one
per backprop step.  "µs/evaluation" is the step time divided by the evaluations
of the step's estimate (the update and the batch loss after it included).  "s to
X" is the step time until the test accuracy first reached X (— when it never did).

{(chr(10) * 2).join(sections)}

Files: `results.csv` (one row per evaluation), {files}.
"""


def run(settings, out, scheduler=None, data_dir=None):
    """Run the experiment; write results.csv and one figure per network; return (files, summary)."""
    results = grid.run_grid(specs(settings, data_dir), scheduler, func=run_estimator)
    output.write_csv(out / "results.csv", rows_of(results), COLUMNS)
    figures = []
    for net, net_settings in networks(settings):
        runs = [r for r in results if r["net"] == net]
        plot(runs, net_settings, out / figure_name(net), net)
        figures.append(figure_name(net))
    return ["results.csv", *figures], summary(results, settings)


EXPERIMENT = command.Experiment(
    name="estimators",
    title="Gradient estimators: coordinate-wise differences against random directions",
    description="Test accuracy against wall time and loss evaluations for each gradient "
    "estimator (central, forward, SPSA, backprop).",
    full=FULL,
    quick=QUICK,
    run=run,
)


def main(argv=None):
    """Run the experiment from the command line; return the exit code (2: bad input)."""
    return command.main(EXPERIMENT, argv)


if __name__ == "__main__":
    sys.exit(main())
