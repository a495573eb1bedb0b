"""Overfitting and two remedies: weight decay and dropout (the book's 6.4).

A deep network (784, six hidden layers of 100, relu, He initialisation as the book's
multi-layer net has by default) trains on only 300 images for 200 epochs with plain SGD
(lr 0.01, batch 100), three times from the same seed: plain, with weight decay (lambda
0.1) and with dropout (ratio 0.2).  Training and test accuracy are measured before
training and after every epoch; the figure shows both for each run, as the book's three
figures side by side.

Usage::

    python -m fastnum.experiments.overfitting            # full, backprop
    python -m fastnum.experiments.overfitting --quick    # seconds
    python -m fastnum.experiments.overfitting --grad numerical --scheduler tcp://host:8786
"""

from __future__ import annotations

import math
import sys

from fastnum.experiments import _chapter6, command, grid, output

#: What ``--grad numerical`` costs in full mode, measured (see the summary).
NUMERICAL_COST = """\
One update with numerical gradients (batch 100, numba, 1 thread) took 0.18 s plain and
0.16 s with weight decay (the corner-aware dense ReLU kernel; 6.5 s and 5.7 s before it)
and 29 s with dropout (the chapter 6 kernel; 53 s before it), the dropout figure measured
2026-12-04 22:25 UTC on the 2-core machine with another job on the other core
(`fastnum.experiments._chapter6.time_numerical_iteration`).  The full mode with
`--grad numerical` (3 × 600 updates) would take about 5 h, all but 4 min of it the
dropout run (a dropout mask keeps that net off the corner-aware kernel): not run."""

FULL = {
    "hidden_sizes": [100, 100, 100, 100, 100, 100],
    "weight_init_std": "relu",
    "weight_decay_lambda": 0.1,
    "dropout_ratio": 0.2,
    "lr": 0.01,
    "epochs": 200,
    "batch_size": 100,
    "train_size": 300,
    "test_size": 10000,
    "seed": 0,
    "threads": 1,
}
QUICK = {
    **FULL,
    "hidden_sizes": [10, 10],
    "lr": 0.1,
    "epochs": 5,
    "batch_size": 20,
    "train_size": 60,
    "test_size": 50,
}

RUN_COLUMNS = [
    "variant",
    "status",
    "iterations",
    "final_train_acc",
    "final_test_acc",
    "gap",
    "best_test_acc",
    "late_train_rise",
    "seconds",
]
CURVE_COLUMNS = ["variant", "epoch", "iteration", "train_acc", "test_acc"]


def variants(settings):
    """Variant name -> the MultiLayerNet options it adds."""
    return {
        "plain": {},
        f"weight decay {settings['weight_decay_lambda']:g}": {
            "weight_decay_lambda": settings["weight_decay_lambda"]
        },
        f"dropout {settings['dropout_ratio']:g}": {
            "use_dropout": True,
            "dropout_ratio": settings["dropout_ratio"],
        },
    }


def specs(settings, data_dir=None):
    """Three runs from the same seed: plain, weight decay, dropout."""
    per_epoch = _chapter6.epoch_iters(settings["train_size"], settings["batch_size"])
    common = {
        key: settings[key] for key in ("batch_size", "train_size", "test_size", "seed", "threads")
    }
    return [
        {
            "name": name,
            "tags": {"variant": name},
            "net": {
                "hidden_sizes": settings["hidden_sizes"],
                "activation": "relu",
                "weight_init_std": settings["weight_init_std"],
                **extra,
            },
            "optimizer": "sgd",
            "hyper": {"lr": settings["lr"]},
            "grad": settings.get("grad", "backprop"),
            "iters": settings["epochs"] * per_epoch,
            "eval_every": per_epoch,
            "data_dir": data_dir,
            **common,
        }
        for name, extra in variants(settings).items()
    ]


def _late_rise(values):
    """How much ``values`` rose over the last tenth of the evaluations: still learning?"""
    if len(values) < 2:
        return math.nan
    return values[-1] - values[-1 - max(1, (len(values) - 1) // 10)]


def tables(results, settings):
    """(one row per run, one row per evaluation of every run)."""
    per_epoch = _chapter6.epoch_iters(settings["train_size"], settings["batch_size"])
    runs, curves = [], []
    for r in results:
        train = r["train_acc"][-1] if r["train_acc"] else math.nan
        test = r["eval_acc"][-1] if r["eval_acc"] else math.nan
        runs.append(
            {
                "variant": r["tags"]["variant"],
                "status": r["status"],
                "iterations": r["iterations"],
                "final_train_acc": train,
                "final_test_acc": test,
                "gap": train - test,
                "best_test_acc": max(r["eval_acc"], default=math.nan),
                "late_train_rise": _late_rise(r["train_acc"]),
                "seconds": r["seconds"],
            }
        )
        curves += [
            {
                "variant": r["tags"]["variant"],
                "epoch": it / per_epoch,
                "iteration": it,
                "train_acc": a,
                "test_acc": b,
            }
            for it, a, b in zip(r["eval_iters"], r["train_acc"], r["eval_acc"], strict=True)
        ]
    return runs, curves


def plot(results, settings, path):
    """One panel per variant: training and test accuracy per epoch."""
    per_epoch = _chapter6.epoch_iters(settings["train_size"], settings["batch_size"])
    fig, axes = output.figure(len(results))
    for ax, r in zip(axes, results, strict=True):
        epochs = [i / per_epoch for i in r["eval_iters"]]
        ax.plot(epochs, r["train_acc"], "-", label="train")
        ax.plot(epochs, r["eval_acc"], "--", label="test")
        ax.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title=r["tags"]["variant"])
        ax.legend(loc="lower right")
    fig.suptitle(
        f"Overfitting: {settings['train_size']} training images, "
        f"784-{'-'.join(map(str, settings['hidden_sizes']))}-10, "
        f"{_chapter6.grad_note(settings.get('grad', 'backprop'))}"
    )
    return output.save_png(fig, path)


def summary(runs, settings):
    """The body of summary.md: settings, table, findings."""
    grad = settings.get("grad", "backprop")
    table = [
        "| variant | train acc | test acc | gap | best test acc |",
        "|---|---:|---:|---:|---:|",
    ]
    table += [
        f"| {r['variant']} | {r['final_train_acc']:.3f} | {r['final_test_acc']:.3f} | "
        f"{r['gap']:.3f} | {r['best_test_acc']:.3f} |"
        for r in runs
    ]
    plain = runs[0]
    lines = [
        f"- Plain: training accuracy {plain['final_train_acc']:.3f} against test "
        f"{plain['final_test_acc']:.3f} after {settings['epochs']} epochs (gap {plain['gap']:.3f})."
    ]
    for r in runs[1:]:
        lines.append(
            f"- {r['variant']}: gap {r['gap']:.3f} "
            f"({'smaller' if r['gap'] < plain['gap'] else 'not smaller'} than plain), "
            f"test accuracy {r['final_test_acc']:.3f}."
        )
    rising = [r for r in runs if r["late_train_rise"] > 0.02]
    lines += [
        f"- {r['variant']} is still learning: its training accuracy rose by "
        f"{r['late_train_rise']:.3f} over the last tenth of the epochs, so its gap is that of "
        "an unfinished run."
        for r in rising
    ]
    return f"""Gradients: {_chapter6.grad_note(grad)} (`--grad {grad}`).  Settings: `{settings}`.
784-{"-".join(map(str, settings["hidden_sizes"]))}-10 relu network, initial weights
`{settings["weight_init_std"]}`, SGD lr {settings["lr"]:g}, batch {settings["batch_size"]} drawn
with replacement from the first {settings["train_size"]} training images; the same seed
(weights and batches) for the three runs.  Test accuracy on the first
{settings["test_size"]} test images (dropout in test mode: outputs scaled by 1 - ratio).
The three runs get the same number of epochs; the book trains its dropout example longer
(300 epochs).

{chr(10).join(table)}

Cost with numerical gradients: {NUMERICAL_COST}

## What the numbers show

{chr(10).join(lines)}

Files: `runs.csv`, `curves.csv` (accuracies per epoch), `overfitting.png`.
"""


def run(settings, out, scheduler=None, data_dir=None):
    """Run the three variants; write their CSVs and overfitting.png; return (files, summary)."""
    results = grid.run_grid(specs(settings, data_dir), scheduler, func=_chapter6.run)
    runs, curves = tables(results, settings)
    output.write_csv(out / "runs.csv", runs, RUN_COLUMNS)
    output.write_csv(out / "curves.csv", curves, CURVE_COLUMNS)
    plot(results, settings, out / "overfitting.png")
    return ["runs.csv", "curves.csv", "overfitting.png"], summary(runs, settings)


EXPERIMENT = command.Experiment(
    name="overfitting",
    title="Overfitting, weight decay and dropout (the book's chapter 6)",
    description="Train and test accuracy on 300 images: plain, weight decay 0.1, dropout 0.2.",
    full=FULL,
    quick=QUICK,
    run=run,
)


def main(argv=None):
    """Run the experiment from the command line; return the exit code (2: bad input)."""
    return _chapter6.main(EXPERIMENT, argv)


if __name__ == "__main__":
    sys.exit(main())
