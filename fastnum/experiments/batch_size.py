"""Batch size: time per iteration and per epoch, and accuracy for a fixed budget.

For each batch size the book's network (784-50-10, sigmoid, lr 0.1, numerical
gradients, numba) is

1. timed: the median wall time of one SGD iteration (batch sampling, numerical
   gradient, update, batch loss; no accuracy evaluation), after a warm-up;
2. trained for a fixed number of epochs (``epochs * train_size // batch``
   iterations);
3. trained for a fixed wall-time budget, as ``budget_seconds / time per
   iteration`` iterations with the time measured in step 1.  Converting the
   budget to an iteration count keeps the run seeded and reproducible: given
   the measured time (in the CSV) anyone gets the same accuracies.

Time per epoch is ``iterations per epoch * time per iteration``.  Every run uses
one numba thread, so that runs on a busy or shared machine (or several Dask
workers on one machine) do not fight over cores.

Usage::

    python -m fastnum.experiments.batch_size           # full -> docs/experiments/batch_size/
    python -m fastnum.experiments.batch_size --quick   # seconds -> runs/experiments/...-quick/
    python -m fastnum.experiments.batch_size --scheduler tcp://host:8786   # on a Dask cluster
"""

from __future__ import annotations

import sys

from fastnum.experiments import command, grid, output
from fastnum.plots import plain_ticks

FULL = {
    "batch_sizes": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
    "train_size": 60000,
    "test_size": 10000,
    "hidden_size": 50,
    "lr": 0.1,
    "epochs": 1,
    "budget_seconds": 20.0,
    "timing_seconds": 1.0,
    "seed": 0,
    "threads": 1,
}
QUICK = {
    "batch_sizes": [1, 10, 100],
    "train_size": 100,
    "test_size": 50,
    "hidden_size": 2,
    "lr": 0.1,
    "epochs": 1,
    "budget_seconds": 0.2,
    "timing_seconds": 0.05,
    "seed": 0,
    "threads": 1,
}

COLUMNS = [
    "batch_size",
    "sec_per_iter",
    "iters_per_epoch",
    "sec_per_epoch",
    "epoch_iters",
    "epoch_train_acc",
    "epoch_test_acc",
    "epoch_loss",
    "epoch_run_seconds",
    "budget_iters",
    "budget_train_acc",
    "budget_test_acc",
    "budget_loss",
    "budget_run_seconds",
    "backend",
    "host",
]


def iters_per_epoch(settings, batch_size):
    """Iterations in one epoch, as train() counts them (at least one)."""
    return max(settings["train_size"] // batch_size, 1)


def _spec(settings, batch_size, iters, kind, data_dir, timing):
    config = {
        key: settings[key]
        for key in ("train_size", "test_size", "hidden_size", "lr", "seed", "threads")
    }
    return {
        "name": f"{kind} batch {batch_size}",
        "tags": {"batch_size": batch_size, "kind": kind},
        "config": {**config, "batch_size": batch_size, "iters": iters},
        "timing_seconds": settings["timing_seconds"] if timing else 0,
        "data_dir": data_dir,
    }


def epoch_specs(settings, data_dir=None):
    """The timed, fixed-epoch runs: one spec per batch size."""
    return [
        _spec(
            settings,
            b,
            settings["epochs"] * iters_per_epoch(settings, b),
            "epochs",
            data_dir,
            timing=True,
        )
        for b in settings["batch_sizes"]
    ]


def budget_specs(settings, sec_per_iter, data_dir=None):
    """The fixed-wall-time runs, given the measured seconds per iteration of each batch size."""
    return [
        _spec(
            settings,
            b,
            max(1, int(settings["budget_seconds"] / sec_per_iter[b])),
            "budget",
            data_dir,
            timing=False,
        )
        for b in settings["batch_sizes"]
    ]


def measure(settings, scheduler=None, data_dir=None):
    """Run both grids; return one row (dict of COLUMNS) per batch size."""
    epoch_runs = grid.run_grid(epoch_specs(settings, data_dir), scheduler)
    sec = {r["tags"]["batch_size"]: r["sec_per_iter"] for r in epoch_runs}
    budget_runs = grid.run_grid(budget_specs(settings, sec, data_dir), scheduler)
    rows = []
    for e, b in zip(epoch_runs, budget_runs, strict=True):
        size = e["tags"]["batch_size"]
        rows.append(
            {
                "batch_size": size,
                "sec_per_iter": sec[size],
                "iters_per_epoch": iters_per_epoch(settings, size),
                "sec_per_epoch": sec[size] * iters_per_epoch(settings, size),
                "backend": e["backend"],
                "host": e["host"],
                **_prefixed("epoch", e),
                **_prefixed("budget", b),
            }
        )
    return rows


def _prefixed(prefix, result):
    return {
        f"{prefix}_iters": result["iterations"],
        f"{prefix}_train_acc": result["final_train_acc"],
        f"{prefix}_test_acc": result["final_test_acc"],
        f"{prefix}_loss": result["final_loss"],
        f"{prefix}_run_seconds": result["train_seconds"],
    }


def plot(rows, settings, path):
    """Three panels: time per iteration, time per epoch, accuracy for both budgets."""
    sizes = [r["batch_size"] for r in rows]
    fig, (a, b, c) = output.figure(3)
    a.loglog(sizes, [1000 * r["sec_per_iter"] for r in rows], "o-")
    a.set(xlabel="batch size", ylabel="ms per iteration", title="Time per iteration")
    b.semilogx(sizes, [r["sec_per_epoch"] for r in rows], "o-")
    b.set(
        xlabel="batch size",
        ylabel="seconds per epoch",
        ylim=(0, None),
        title=f"Time per epoch ({settings['train_size']} images)",
    )
    for key, label, color in (
        ("epoch", _epochs(settings["epochs"]), "C0"),
        ("budget", f"{settings['budget_seconds']:g} s budget", "C1"),
    ):
        c.semilogx(
            sizes, [r[f"{key}_test_acc"] for r in rows], "o-", color=color, label=f"{label}, test"
        )
        c.semilogx(
            sizes,
            [r[f"{key}_train_acc"] for r in rows],
            "o:",
            color=color,
            alpha=0.5,
            label=f"{label}, train",
        )
    c.set(xlabel="batch size", ylabel="accuracy", ylim=(0, 1), title="Accuracy after the budget")
    c.legend(fontsize="small")
    for ax in (a, b, c):
        plain_ticks(ax.xaxis, sizes)
    plain_ticks(a.yaxis)
    fig.suptitle(
        "Batch size, numerical gradients (784-"
        f"{settings['hidden_size']}-10, lr {settings['lr']:g}, 1 numba thread)"
    )
    return output.save_png(fig, path)


def _epochs(n):
    return f"{n:g} epoch{'s' if n != 1 else ''}"


def _table(rows, settings):
    lines = [
        f"| batch | ms/iter | s/epoch | test acc after {_epochs(settings['epochs'])} "
        f"| iters in {settings['budget_seconds']:g} s | test acc after "
        f"{settings['budget_seconds']:g} s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch_size']} | {1000 * r['sec_per_iter']:.3g} | "
            f"{r['sec_per_epoch']:.3g} | {r['epoch_test_acc']:.3f} | "
            f"{r['budget_iters']} | {r['budget_test_acc']:.3f} |"
        )
    return "\n".join(lines)


def _findings(rows, settings):
    first, last = rows[0], rows[-1]
    per_sample = [r["sec_per_iter"] / r["batch_size"] for r in rows]
    best_epoch = max(rows, key=lambda r: r["epoch_test_acc"])
    best_budget = max(rows, key=lambda r: r["budget_test_acc"])
    fastest = min(rows, key=lambda r: r["sec_per_epoch"])
    epoch_seconds = [r["sec_per_epoch"] for r in rows]
    budget_wall = [r["budget_run_seconds"] for r in rows]
    overhead = (
        ", so small batches pay a fixed cost per iteration"
        if per_sample[0] > 2 * per_sample[-1]
        else ""
    )
    return (
        f"- One iteration takes {1000 * first['sec_per_iter']:.3g} ms at batch "
        f"{first['batch_size']} and {1000 * last['sec_per_iter']:.3g} ms at batch "
        f"{last['batch_size']}: per image that is {1e6 * per_sample[0]:.3g} µs against "
        f"{1e6 * per_sample[-1]:.3g} µs{overhead}.\n"
        f"- An epoch ({settings['train_size']} images) takes {min(epoch_seconds):.3g}"
        f"–{max(epoch_seconds):.3g} s; fastest at batch {fastest['batch_size']}.\n"
        f"- After {_epochs(settings['epochs'])} the best test accuracy is "
        f"{best_epoch['epoch_test_acc']:.3f} (batch {best_epoch['batch_size']}), against "
        f"{last['epoch_test_acc']:.3f} at batch {last['batch_size']} "
        f"({last['epoch_iters']} updates instead of {first['epoch_iters']}).\n"
        f"- With {settings['budget_seconds']:g} s of training the best test accuracy is "
        f"{best_budget['budget_test_acc']:.3f} (batch {best_budget['batch_size']}, "
        f"{best_budget['budget_iters']} updates).  Each budget run took "
        f"{min(budget_wall):.3g}–{max(budget_wall):.3g} s of wall time in all: the budget "
        "plus data preparation and the two accuracy evaluations (first and last iteration)."
    )


def summary(rows, settings):
    """The body of summary.md: settings, the table and what it shows."""
    return f"""Settings: `{settings}`.  Time per iteration is the median of timed SGD iterations
(numerical gradient, update, batch loss; no accuracy evaluation); time per epoch
is that times the iterations per epoch.  The wall-time budget is run as
`budget / (time per iteration)` iterations, so it is reproducible given the
measured times in `results.csv`.  Accuracies are on the first
{settings["train_size"]} training and {settings["test_size"]} test images.

{_table(rows, settings)}

## What the numbers show

{_findings(rows, settings)}

Files: `results.csv` (one row per batch size), `batch_size.png`.
"""


def run(settings, out, scheduler=None, data_dir=None):
    """Run the experiment; write results.csv and batch_size.png; return (files, summary)."""
    rows = measure(settings, scheduler, data_dir)
    output.write_csv(out / "results.csv", rows, COLUMNS)
    plot(rows, settings, out / "batch_size.png")
    return ["results.csv", "batch_size.png"], summary(rows, settings)


EXPERIMENT = command.Experiment(
    name="batch_size",
    title="Batch size with numerical gradients",
    description="Batch size vs time and accuracy with numerical gradients.",
    full=FULL,
    quick=QUICK,
    run=run,
)


def main(argv=None):
    """Run the experiment from the command line; return the exit code (2: bad input)."""
    return command.main(EXPERIMENT, argv)


if __name__ == "__main__":
    sys.exit(main())
