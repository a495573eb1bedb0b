"""Learning rate: the book's gradient descent on function_2, then MNIST across learning rates.

Part 1 runs ``fastnum.reference.gradient_descent`` on ``function_2`` (x0^2 + x1^2)
from (-3, 4) for 100 steps with the book's learning rates: 10 diverges, 1e-10
stalls, 0.1 converges.  Part 2 trains the book's network (784-50-10, sigmoid,
numerical gradients) with learning rates from tiny to huge.

A run whose loss blows up is stopped at the first evaluation (every epoch of
``train_size`` images) whose batch loss exceeds ``stop_loss`` (2 ln 10, twice
the loss of guessing), through the trainer's epoch callback.  The trainer's own
check (a NaN or infinite loss raises ``TrainingDivergedError``) is recorded too,
but the book's loss cannot reach it: the 1e-7 guard in the cross-entropy caps
it at -ln(1e-7) = 16.1 and the numerical gradient of a saturated network is
zero, so too large a learning rate leaves the loss high but finite.

Usage::

    python -m fastnum.experiments.learning_rate          # full -> docs/experiments/learning_rate/
    python -m fastnum.experiments.learning_rate --quick  # seconds -> runs/experiments/...-quick/
    python -m fastnum.experiments.learning_rate --scheduler tcp://host:8786
"""

from __future__ import annotations

import math
import sys

import numpy as np

from fastnum import reference
from fastnum.experiments import command, grid, output
from fastnum.plots import plain_ticks

GD = {"init": [-3.0, 4.0], "step_num": 100, "lrs": [10.0, 1e-10, 0.1]}  # the book's 4.4.1
STOP_LOSS = 2 * math.log(10)

FULL = {
    "lrs": [0.001, 0.01, 0.1, 1.0, 10.0, 100.0],
    "hidden_size": 50,
    "iters": 2000,
    "batch_size": 100,
    "train_size": 10000,
    "test_size": 10000,
    "stop_loss": STOP_LOSS,
    "seed": 0,
    "threads": 1,
}
QUICK = {
    "lrs": [0.1, 10.0, 100.0],
    "hidden_size": 2,
    "iters": 10,
    "batch_size": 10,
    "train_size": 50,
    "test_size": 50,
    "stop_loss": STOP_LOSS,
    "seed": 0,
    "threads": 1,
}

GD_COLUMNS = ["lr", "step", "x0", "x1", "f", "distance"]
RUN_COLUMNS = [
    "lr",
    "status",
    "stopped_at",
    "iterations",
    "final_loss",
    "final_train_acc",
    "final_test_acc",
    "train_seconds",
    "backend",
    "host",
]
CURVE_COLUMNS = ["lr", "iteration", "loss", "train_acc", "test_acc"]


def gradient_descent_paths():
    """The book's gradient descent for each learning rate of GD; one row per visited point."""
    rows = []
    for lr in GD["lrs"]:
        _, path = reference.gradient_descent(
            reference.function_2,
            np.array(GD["init"]),
            lr=lr,
            step_num=GD["step_num"],
            return_path=True,
        )
        for step, (x0, x1) in enumerate(path):
            rows.append(
                {
                    "lr": lr,
                    "step": step,
                    "x0": x0,
                    "x1": x1,
                    "f": float(reference.function_2(np.array([x0, x1]))),
                    "distance": math.hypot(x0, x1),
                }
            )
    return rows


def specs(settings, data_dir=None):
    """One MNIST run per learning rate."""
    config = {
        key: settings[key]
        for key in (
            "hidden_size",
            "iters",
            "batch_size",
            "train_size",
            "test_size",
            "seed",
            "threads",
        )
    }
    return [
        {
            "name": f"lr {lr:g}",
            "tags": {"lr": lr},
            "config": {**config, "lr": lr},
            "stop_loss": settings["stop_loss"],
            "data_dir": data_dir,
        }
        for lr in settings["lrs"]
    ]


def rows_of(results):
    """(one row per learning rate, one row per evaluation of every run)."""
    runs, curves = [], []
    for r in results:
        lr = r["config"]["lr"]
        runs.append({**r, "lr": lr})
        e = r["epochs"]
        curves += [
            {
                "lr": lr,
                "iteration": it,
                "loss": e["loss"][i],
                "train_acc": e["train_acc"][i],
                "test_acc": e["test_acc"][i],
            }
            for i, it in enumerate(e["iteration"])
        ]
    return runs, curves


def plot_paths(rows, path):
    """The paths in the plane (left) and the distance to the minimum per step (right)."""
    fig, (a, b) = output.figure(2, panel_size=(5.0, 4.4))
    grid = np.linspace(-4.5, 4.5, 181)
    gx, gy = np.meshgrid(grid, grid)
    a.contour(gx, gy, gx**2 + gy**2, levels=[0.25, 1, 2, 4, 8, 12, 16, 20], colors="0.8")
    for i, lr in enumerate(GD["lrs"]):
        mine = [r for r in rows if r["lr"] == lr]
        kw = {"color": f"C{i}", "label": f"lr {lr:g}"}
        # A diverging path jumps out of the frame; its first step shows the direction.
        shown = mine if mine[-1]["distance"] <= mine[0]["distance"] else mine[:2]
        if len(shown) < len(mine):
            kw["label"] += f" (step 1 at ({shown[1]['x0']:.3g}, {shown[1]['x1']:.3g}))"
        stalled = abs(mine[-1]["distance"] - mine[0]["distance"]) < 0.01 * mine[0]["distance"]
        a.plot(
            [r["x0"] for r in shown],
            [r["x1"] for r in shown],
            "o-",
            markersize=9 if stalled else 3,
            zorder=3 if stalled else 2,
            **kw,
        )
        b.semilogy([r["step"] for r in mine], [max(r["distance"], 1e-300) for r in mine], **kw)
    a.plot([0], [0], "k+", markersize=10)
    a.set(
        xlim=(-4.5, 4.5),
        ylim=(-4.5, 4.5),
        aspect="equal",
        xlabel="x0",
        ylabel="x1",
        title="Paths from (-3, 4)",
    )
    a.legend(loc="lower right", fontsize="small")
    b.set(
        xlabel="step", ylabel="distance to the minimum (0, 0)", title="Diverges, stalls, converges"
    )
    b.legend(fontsize="small")
    fig.suptitle("Gradient descent on function_2 = x0² + x1² (the book's 4.4.1)")
    return output.save_png(fig, path)


def plot_mnist(results, settings, path):
    """Loss and test accuracy per evaluation for each learning rate, final accuracy vs lr."""
    fig, (a, b, c) = output.figure(3)
    for i, r in enumerate(results):
        e, kw = r["epochs"], {"color": f"C{i}", "label": r["name"]}
        if r["status"] != "completed":
            kw["label"] += f" ({r['status']} at {r['stopped_at']})"
        style = "o-" if len(e["iteration"]) < 3 else "-"
        a.plot(e["iteration"], e["loss"], style, **kw)
        b.plot(*grid.accuracy_curve(r), style, **kw)
        if r["status"] != "completed":
            a.plot(
                e["iteration"][-1:],
                e["loss"][-1:],
                "x",
                color="red",
                markersize=10,
                markeredgewidth=2,
            )
    a.axhline(settings["stop_loss"], color="red", linewidth=0.8, linestyle=":", label="stop_loss")
    a.set(
        xlabel="iteration",
        ylabel="batch loss (at each evaluation)",
        yscale="log",
        title="Loss (x: run stopped)",
    )
    plain_ticks(a.yaxis)
    a.legend(fontsize="x-small")
    b.set(xlabel="iteration", ylabel="test accuracy", ylim=(0, 1), title="Test accuracy")
    lrs = [r["config"]["lr"] for r in results]
    c.semilogx(lrs, [r["final_test_acc"] for r in results], "o-", color="0.3")
    for r, lr in zip(results, lrs, strict=True):
        if r["status"] != "completed":
            c.semilogx(
                [lr], [r["final_test_acc"]], "x", color="red", markersize=10, markeredgewidth=2
            )
    c.set(
        xlabel="learning rate",
        ylabel="final test accuracy",
        ylim=(0, 1),
        title="Final test accuracy (x: stopped)",
    )
    plain_ticks(c.xaxis, lrs)
    fig.suptitle(
        f"MNIST 784-{settings['hidden_size']}-10, numerical gradients, batch "
        f"{settings['batch_size']}, {settings['iters']} iterations"
    )
    return output.save_png(fig, path)


def _table(runs):
    lines = [
        "| lr | status | iterations | test acc | train acc | loss |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['lr']:g} | {r['status']} | {r['iterations']} | "
            f"{r['final_test_acc']:.3f} | {r['final_train_acc']:.3f} | "
            f"{r['final_loss']:.3f} |"
        )
    return "\n".join(lines)


def _gd_findings(rows):
    out = []
    for lr in GD["lrs"]:
        last = [r for r in rows if r["lr"] == lr][-1]
        out.append(
            f"lr {lr:g} ends at ({last['x0']:.4g}, {last['x1']:.4g}), distance "
            f"{last['distance']:.3g} from the minimum"
        )
    return (
        f"- Gradient descent from {tuple(GD['init'])} for {GD['step_num']} steps: "
        + "; ".join(out)
        + ".  A too large step overshoots by more than it corrects "
        "(x -> x - 10 * 2x = -19x); the diverging path freezes once x0^2 is so large "
        "that h = 1e-4 no longer changes it in float64 and the numerical gradient is 0."
    )


def _mnist_findings(runs, settings):
    best = max(runs, key=lambda r: r["final_test_acc"])
    stopped = [
        f"lr {r['lr']:g} at iteration {r['stopped_at']} ({r['status']})"
        for r in runs
        if r["status"] != "completed"
    ]
    chance = [
        f"{r['lr']:g}" for r in runs if r["status"] == "completed" and r["final_test_acc"] < 0.2
    ]
    lines = [
        f"- MNIST: the best test accuracy after {settings['iters']} iterations is "
        f"{best['final_test_acc']:.3f} at lr {best['lr']:g}."
    ]
    if chance:
        lines.append(
            f"- Ran to the end without learning (test accuracy below 0.2) at lr "
            f"{', '.join(chance)}."
        )
    lines.append("- Stopped runs: " + ("; ".join(stopped) if stopped else "none") + ".")
    return "\n".join(lines)


def summary(gd_rows, runs, settings):
    """The body of summary.md: settings, the table and what it shows."""
    return f"""Gradient descent: `{GD}`.  MNIST: `{settings}`; book's sigmoid network, numerical
gradients, accuracies of the final parameters on the first {settings["train_size"]}
training and {settings["test_size"]} test images (of the last evaluation for a
stopped run).  A run stops at the first evaluation whose batch loss exceeds
stop_loss = 2 ln 10 = {STOP_LOSS:.2f}; the trainer's NaN/inf check would report
"diverged", but the book's guarded loss stays finite (at most 16.1).

{_table(runs)}

## What the numbers show

{_gd_findings(gd_rows)}
{_mnist_findings(runs, settings)}

Files: `gd_paths.csv`, `gd_paths.png`, `mnist_runs.csv`, `mnist_curves.csv`,
`mnist_lr.png`.
"""


def run(settings, out, scheduler=None, data_dir=None):
    """Run both parts; write their CSVs and figures; return (files, summary)."""
    gd_rows = gradient_descent_paths()
    output.write_csv(out / "gd_paths.csv", gd_rows, GD_COLUMNS)
    plot_paths(gd_rows, out / "gd_paths.png")
    results = grid.run_grid(specs(settings, data_dir), scheduler)
    runs, curves = rows_of(results)
    output.write_csv(out / "mnist_runs.csv", runs, RUN_COLUMNS)
    output.write_csv(out / "mnist_curves.csv", curves, CURVE_COLUMNS)
    plot_mnist(results, settings, out / "mnist_lr.png")
    files = ["gd_paths.csv", "gd_paths.png", "mnist_runs.csv", "mnist_curves.csv", "mnist_lr.png"]
    return files, summary(gd_rows, runs, settings)


EXPERIMENT = command.Experiment(
    name="learning_rate",
    title="Learning rate",
    description="Learning rate: function_2 paths and MNIST runs.",
    full=FULL,
    quick=QUICK,
    run=run,
)


def main(argv=None):
    """Run the experiment from the command line; return the exit code (2: bad input)."""
    return command.main(EXPERIMENT, argv)


if __name__ == "__main__":
    sys.exit(main())
