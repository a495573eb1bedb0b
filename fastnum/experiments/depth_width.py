"""Depth versus width: networks of about the same size, shallow-wide against deep-narrow.

The networks have 1, 2, ... hidden layers of equal width, the width chosen per
depth so that the parameter count is as close as possible to that of the
one-hidden-layer network of ``base_width``.  Each is trained with numerical
gradients (numba, one thread) twice: with the book's sigmoid and
``weight_init_std=0.01``, and with relu and ``weight_init_std=0.1``.  The
outputs are accuracy curves (per epoch of ``train_size`` images) and the time
per iteration (median of timed SGD iterations, as in :mod:`~fastnum.experiments.batch_size`).

Usage::

    python -m fastnum.experiments.depth_width          # full -> docs/experiments/depth_width/
    python -m fastnum.experiments.depth_width --quick  # seconds -> runs/experiments/...-quick/
    python -m fastnum.experiments.depth_width --scheduler tcp://host:8786
"""

from __future__ import annotations

import sys

from fastnum.experiments import command, grid, output

FULL = {
    "depths": [1, 2, 3, 4, 5],
    "base_width": 20,
    "activations": [["sigmoid", 0.01], ["relu", 0.1]],
    "iters": 2000,
    "batch_size": 20,
    "lr": 0.1,
    "train_size": 5000,
    "test_size": 10000,
    "timing_seconds": 1.0,
    "seed": 0,
    "threads": 1,
}
QUICK = {
    "depths": [1, 2, 3],
    "base_width": 2,
    "activations": [["sigmoid", 0.01], ["relu", 0.1]],
    "iters": 6,
    "batch_size": 10,
    "lr": 0.1,
    "train_size": 30,
    "test_size": 50,
    "timing_seconds": 0.02,
    "seed": 0,
    "threads": 1,
}

RUN_COLUMNS = [
    "network",
    "activation",
    "weight_init_std",
    "depth",
    "hidden_sizes",
    "n_params",
    "sec_per_iter",
    "iterations",
    "final_train_acc",
    "final_test_acc",
    "final_loss",
    "train_seconds",
    "backend",
    "host",
]
CURVE_COLUMNS = [
    "network",
    "activation",
    "depth",
    "iteration",
    "est_train_seconds",
    "loss",
    "train_acc",
    "test_acc",
]


def count_params(hidden_sizes, input_size=784, output_size=10):
    """Number of weights and biases of a fully connected network.

    Parameters
    ----------
    hidden_sizes : sequence of int
        Widths of the hidden layers.
    input_size, output_size : int
        Widths of the input and the output layer.

    Returns
    -------
    int
    """
    sizes = [input_size, *hidden_sizes, output_size]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def equal_param_widths(depths, base_width, input_size=784, output_size=10):
    """For each depth, the uniform width whose parameter count is nearest the base network's.

    Parameters
    ----------
    depths : sequence of int
        Numbers of hidden layers.
    base_width : int
        Width of the one-hidden-layer network that sets the parameter budget.
    input_size, output_size : int

    Returns
    -------
    list of tuple of int
        Hidden sizes, one tuple per depth.
    """
    target = count_params([base_width], input_size, output_size)

    def miss(depth, width):
        return abs(count_params([width] * depth, input_size, output_size) - target)

    return [(min(range(1, 2 * base_width + 1), key=lambda w: miss(d, w)),) * d for d in depths]


def specs(settings, data_dir=None):
    """One spec per (activation, depth)."""
    config = {
        key: settings[key]
        for key in ("iters", "batch_size", "lr", "train_size", "test_size", "seed", "threads")
    }
    out = []
    for activation, std in settings["activations"]:
        for hidden in equal_param_widths(settings["depths"], settings["base_width"]):
            name = f"{activation} {'-'.join(map(str, hidden))}"
            out.append(
                {
                    "name": name,
                    "tags": {"activation": activation, "depth": len(hidden)},
                    "config": {
                        **config,
                        "hidden_sizes": list(hidden),
                        "activation": activation,
                        "weight_init_std": std,
                    },
                    "timing_seconds": settings["timing_seconds"],
                    "data_dir": data_dir,
                }
            )
    return out


def rows_of(results):
    """(one row per network, one row per evaluation of every network)."""
    runs, curves = [], []
    for r in results:
        c = r["config"]
        base = {
            "network": r["name"],
            "activation": c["activation"],
            "depth": len(c["hidden_sizes"]),
        }
        runs.append(
            {
                **base,
                **r,
                "weight_init_std": c["weight_init_std"],
                "hidden_sizes": c["hidden_sizes"],
                "n_params": count_params(c["hidden_sizes"]),
            }
        )
        e = r["epochs"]
        for i, it in enumerate(e["iteration"]):
            curves.append(
                {
                    **base,
                    "iteration": it,
                    "est_train_seconds": it * r["sec_per_iter"],
                    "loss": e["loss"][i],
                    "train_acc": e["train_acc"][i],
                    "test_acc": e["test_acc"][i],
                }
            )
    return runs, curves


def plot(results, settings, path):
    """Test accuracy per iteration and per (estimated) second, and time per iteration."""
    fig, (a, b, c) = output.figure(3)
    styles = {"sigmoid": "-", "relu": "--"}
    for r in results:
        depth, act = r["tags"]["depth"], r["tags"]["activation"]
        its, acc = grid.accuracy_curve(r)
        kw = {"color": f"C{depth - 1}", "linestyle": styles.get(act, ":"), "label": r["name"]}
        a.plot(its, acc, **kw)
        b.plot([i * r["sec_per_iter"] for i in its], acc, **kw)
    a.set(xlabel="iteration", ylabel="test accuracy", ylim=(0, 1), title="Accuracy per iteration")
    b.set(
        xlabel="training seconds (iterations x time per iteration)",
        ylabel="test accuracy",
        ylim=(0, 1),
        title="Accuracy per second",
    )
    a.legend(fontsize="x-small", ncols=2, loc="lower right", bbox_to_anchor=(1, 0.15))
    for act in styles:
        mine = [r for r in results if r["tags"]["activation"] == act]
        c.plot(
            [r["tags"]["depth"] for r in mine],
            [1000 * r["sec_per_iter"] for r in mine],
            "o" + styles[act],
            label=act,
        )
    c.set(
        xlabel="hidden layers",
        ylabel="ms per iteration",
        ylim=(0, None),
        title=f"Time per iteration (batch {settings['batch_size']})",
    )
    c.xaxis.get_major_locator().set_params(integer=True)
    c.legend()
    n = count_params([settings["base_width"]])
    fig.suptitle(
        f"Depth vs width at about {n} parameters, numerical gradients "
        f"(lr {settings['lr']:g}, 1 numba thread)"
    )
    return output.save_png(fig, path)


def _table(runs):
    lines = [
        "| network | params | ms/iter | test acc | train acc | loss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['network']} (std {r['weight_init_std']:g}) | {r['n_params']} | "
            f"{1000 * r['sec_per_iter']:.3g} | {r['final_test_acc']:.3f} | "
            f"{r['final_train_acc']:.3f} | {r['final_loss']:.3f} |"
        )
    return "\n".join(lines)


def _layers(n):
    return f"{n} hidden layer{'s' if n != 1 else ''}"


def _findings(runs, settings):
    lines = []
    counts = [r["n_params"] for r in runs]
    lines.append(
        f"- Parameter counts range {min(counts)}–{max(counts)}: with 784 inputs the "
        "first layer holds most weights, so equal budgets give almost equal widths."
    )
    for act, _ in settings["activations"]:
        mine = sorted((r for r in runs if r["activation"] == act), key=lambda r: r["depth"])
        shallow, deep = mine[0], mine[-1]
        times = ", ".join(f"{1000 * r['sec_per_iter']:.3g}" for r in mine)
        stuck = [r["network"] for r in mine if r["final_test_acc"] < 0.2]
        ratio = deep["sec_per_iter"] / shallow["sec_per_iter"]
        lines.append(
            f"- {act}: {1000 * shallow['sec_per_iter']:.3g} ms per iteration with "
            f"{_layers(shallow['depth'])}, {1000 * deep['sec_per_iter']:.3g} ms with "
            f"{_layers(deep['depth'])} (x{ratio:.1f}; by depth: {times} ms); test "
            f"accuracy {shallow['final_test_acc']:.3f} against {deep['final_test_acc']:.3f}."
            + (f" Not learning (below 0.2, chance is 0.1): {', '.join(stuck)}." if stuck else "")
        )
    accs = [r["final_test_acc"] for r in runs]
    if min(accs) < 0.2 and max(accs) > 0.5:  # some learned, others did not
        lines.append(
            "- A network that does not learn is consistent with vanishing gradients: "
            "small initial weights shrink the signal and its gradient at every layer "
            "(by much more for the sigmoid, whose slope is at most 1/4)."
        )
    best = max(runs, key=lambda r: r["final_test_acc"])
    lines.append(
        f"- Best after {settings['iters']} iterations: {best['network']} "
        f"({best['final_test_acc']:.3f} test accuracy).  One seed per network: "
        "differences of a point or so are within seed-to-seed noise."
    )
    return "\n".join(lines)


def summary(runs, settings):
    """The body of summary.md: settings, the table and what it shows."""
    return f"""Settings: `{settings}`.  Widths are chosen per depth so that the parameter count
is nearest to that of 784-{settings["base_width"]}-10.  Time per iteration is the
median of timed SGD iterations (numerical gradient, update, batch loss).
Accuracies are of the final parameters, on the first {settings["train_size"]}
training and {settings["test_size"]} test images; the loss is the mean batch loss
of the last tenth of the iterations.

{_table(runs)}

## What the numbers show

{_findings(runs, settings)}

Files: `runs.csv` (one row per network), `curves.csv` (one row per evaluation),
`depth_width.png`.
"""


def run(settings, out, scheduler=None, data_dir=None):
    """Run the experiment; write its CSVs and figure; return (files, summary)."""
    results = grid.run_grid(specs(settings, data_dir), scheduler)
    runs, curves = rows_of(results)
    output.write_csv(out / "runs.csv", runs, RUN_COLUMNS)
    output.write_csv(out / "curves.csv", curves, CURVE_COLUMNS)
    plot(results, settings, out / "depth_width.png")
    return ["runs.csv", "curves.csv", "depth_width.png"], summary(runs, settings)


EXPERIMENT = command.Experiment(
    name="depth_width",
    title="Depth versus width with numerical gradients",
    description="Depth versus width at equal parameter count.",
    full=FULL,
    quick=QUICK,
    run=run,
)


def main(argv=None):
    """Run the experiment from the command line; return the exit code (2: bad input)."""
    return command.main(EXPERIMENT, argv)


if __name__ == "__main__":
    sys.exit(main())
