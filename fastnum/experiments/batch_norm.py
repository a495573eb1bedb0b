"""Batch normalisation over a sweep of initial weight scales (the book's 6.3.2).

For each of 16 initial weight stds, logspace(0, -4, 16) from 1 down to 1e-4, the same
seeded network (784-100-100-100-100-100-10, relu) trains twice on a small training set
(the first 1,000 images), with and without batch norm, with plain SGD (lr 0.01) and
batch 100 for 20 epochs; the training accuracy is measured before training and after
every epoch.  The figure is the book's grid of small plots, one per weight scale.

Usage::

    python -m fastnum.experiments.batch_norm            # full, backprop
    python -m fastnum.experiments.batch_norm --quick    # seconds
    python -m fastnum.experiments.batch_norm --grad numerical --scheduler tcp://host:8786
"""

from __future__ import annotations

import math
import sys

import numpy as np

from fastnum.experiments import _chapter6, command, grid, output
from fastnum.plots import new_figure

#: What ``--grad numerical`` costs in full mode, measured (see the summary).
NUMERICAL_COST = """\
One update with numerical gradients (batch 100, numba, 1 thread) took 0.21 s for the
plain network (the corner-aware dense ReLU kernel) and 88 s with batch norm (the
chapter 6 kernel), measured 2026-12-04 22:25 UTC on the 2-core machine with another
job on the other core (`fastnum.experiments._chapter6.time_numerical_iteration`; 139 s
with batch norm before the chapter 6 kernel).  Batch norm makes every image's
activations depend on the whole batch: a perturbed weight moves every sample of the
batch through every later layer, about 400 times the work of the plain network's
perturbation.  The full mode with `--grad numerical` (16 × 200 updates each) would take
about 11 min without batch norm and about 78 h with it: not run.  Its 16 runs with batch
norm are independent, so `--scheduler` on a Dask cluster of 16 one-thread workers would
take about 5 h; `--quick --grad numerical` runs in seconds."""

FULL = {
    "scales": 16,  # np.logspace(0, -4, scales)
    "hidden_sizes": [100, 100, 100, 100, 100],
    "lr": 0.01,
    "epochs": 20,
    "batch_size": 100,
    "train_size": 1000,
    # The book's figure is training accuracy; the test accuracy beside it needs no more.
    "test_size": 1000,
    "seed": 0,
    "threads": 1,
}
QUICK = {
    **FULL,
    "scales": 4,
    "hidden_sizes": [10, 10],
    "lr": 0.1,
    "epochs": 3,
    "batch_size": 20,
    "train_size": 100,
    "test_size": 50,
}

RUN_COLUMNS = [
    "weight_init_std",
    "batchnorm",
    "status",
    "iterations",
    "final_train_acc",
    "final_test_acc",
    "best_train_acc",
    "seconds",
]
CURVE_COLUMNS = ["weight_init_std", "batchnorm", "epoch", "iteration", "train_acc", "test_acc"]


def weight_scales(settings):
    """The initial weight stds of the sweep, from 1 down to 1e-4."""
    return [float(w) for w in np.logspace(0, -4, settings["scales"])]


def specs(settings, data_dir=None):
    """Two runs per weight scale, with and without batch norm, same seed and batches."""
    per_epoch = _chapter6.epoch_iters(settings["train_size"], settings["batch_size"])
    common = {
        key: settings[key] for key in ("batch_size", "train_size", "test_size", "seed", "threads")
    }
    return [
        {
            "name": f"std {w:.3g} {'with' if bn else 'without'} batch norm",
            "tags": {"weight_init_std": w, "batchnorm": bn},
            "net": {
                "hidden_sizes": settings["hidden_sizes"],
                "activation": "relu",
                "weight_init_std": w,
                "use_batchnorm": bn,
            },
            "optimizer": "sgd",
            "hyper": {"lr": settings["lr"]},
            "grad": settings.get("grad", "backprop"),
            "iters": settings["epochs"] * per_epoch,
            "eval_every": per_epoch,
            "data_dir": data_dir,
            **common,
        }
        for w in weight_scales(settings)
        for bn in (True, False)
    ]


def tables(results, settings):
    """(one row per run, one row per evaluation of every run)."""
    per_epoch = _chapter6.epoch_iters(settings["train_size"], settings["batch_size"])
    runs, curves = [], []
    for r in results:
        tags = r["tags"]
        runs.append(
            {
                **tags,
                "status": r["status"],
                "iterations": r["iterations"],
                "final_train_acc": r["train_acc"][-1] if r["train_acc"] else math.nan,
                "final_test_acc": r["eval_acc"][-1] if r["eval_acc"] else math.nan,
                "best_train_acc": max(r["train_acc"], default=math.nan),
                "seconds": r["seconds"],
            }
        )
        curves += [
            {**tags, "epoch": it / per_epoch, "iteration": it, "train_acc": a, "test_acc": b}
            for it, a, b in zip(r["eval_iters"], r["train_acc"], r["eval_acc"], strict=True)
        ]
    return runs, curves


def plot(results, settings, path):
    """The book's grid: training accuracy per epoch for each weight scale, with and without."""
    per_epoch = _chapter6.epoch_iters(settings["train_size"], settings["batch_size"])
    n = len(results) // 2
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    fig, axes = new_figure(ncols, nrows, panel_size=(2.6, 2.1), layout="constrained")
    for k, ax in enumerate(axes):
        if k >= n:
            ax.set_axis_off()
            continue
        with_bn, without = results[2 * k], results[2 * k + 1]
        for r, style, label in ((with_bn, "-", "batch norm"), (without, "--", "plain")):
            epochs = [i / per_epoch for i in r["eval_iters"]]
            ax.plot(epochs, r["train_acc"], style, label=label)
            if r["status"] != "completed":
                # Its parameters overflowed; mark where its curve ends and say so.
                ax.plot(epochs[-1:], r["train_acc"][-1:], "x", color="red", markersize=8)
                ax.text(
                    0.5,
                    0.04 if r is without else 0.14,
                    f"{label}: overflowed by update {r['iterations'] + 1}",
                    transform=ax.transAxes,
                    ha="center",
                    fontsize="x-small",
                    color="red",
                )
        ax.set_title(f"W std {with_bn['tags']['weight_init_std']:.3g}", fontsize="small")
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize="x-small")
        if k % ncols == 0:
            ax.set_ylabel("train accuracy", fontsize="small")
        if k >= n - ncols:
            ax.set_xlabel("epoch", fontsize="small")
        if k == 0:
            ax.legend(fontsize="x-small")
    fig.suptitle(
        "Training accuracy, batch norm (solid) vs plain (dashed)\n"
        f"{settings['train_size']} images, {_chapter6.grad_note(settings.get('grad', 'backprop'))}",
        fontsize="medium",
    )
    return output.save_png(fig, path)


def summary(runs, settings):
    """The body of summary.md: settings, table, findings."""
    grad = settings.get("grad", "backprop")
    by = {(r["weight_init_std"], r["batchnorm"]): r for r in runs}
    scales = weight_scales(settings)
    table = [
        "| W std | train acc with BN | train acc plain | test acc with BN | test acc plain |",
        "|---:|---:|---:|---:|---:|",
    ]
    for w in scales:
        a, b = by[(w, True)], by[(w, False)]
        table.append(
            f"| {w:.3g} | {a['final_train_acc']:.3f} | {b['final_train_acc']:.3f} | "
            f"{a['final_test_acc']:.3f} | {b['final_test_acc']:.3f} |"
        )
    wins = sum(by[(w, True)]["final_train_acc"] > by[(w, False)]["final_train_acc"] for w in scales)
    ties = sum(
        by[(w, True)]["final_train_acc"] == by[(w, False)]["final_train_acc"] for w in scales
    )
    stuck = [f"{w:.3g}" for w in scales if by[(w, False)]["final_train_acc"] < 0.2]
    stuck_bn = [f"{w:.3g}" for w in scales if by[(w, True)]["final_train_acc"] < 0.2]
    diverged = [
        f"{r['weight_init_std']:.3g} ({'BN' if r['batchnorm'] else 'plain'})"
        for r in runs
        if r["status"] != "completed"
    ]
    return f"""Gradients: {_chapter6.grad_note(grad)} (`--grad {grad}`).  Settings: `{settings}`.
784-{"-".join(map(str, settings["hidden_sizes"]))}-10 relu network, SGD lr {settings["lr"]:g},
batch {settings["batch_size"]} drawn with replacement from the first {settings["train_size"]}
training images, {settings["epochs"]} epochs; the same seed (weights and batches) for the
two runs of each scale.  Accuracies after the last epoch; test on the first
{settings["test_size"]} test images (batch norm in test mode, running statistics).

{chr(10).join(table)}

Cost with numerical gradients: {NUMERICAL_COST}

## What the numbers show

- Batch norm ends with the higher training accuracy at {wins} of {len(scales)} weight scales
  (equal at {ties}).
- Without batch norm, training stays below 0.2 at W std {", ".join(stuck) or "none"}; with batch
  norm at {", ".join(stuck_bn) or "none"}.
- Runs stopped because the parameters overflowed (float64 inf, which the network refuses;
  their accuracy is the last one measured): {", ".join(diverged) or "none"}.

Files: `runs.csv`, `curves.csv` (accuracy per epoch), `batch_norm.png`.
"""


def run(settings, out, scheduler=None, data_dir=None):
    """Run the sweep; write runs.csv, curves.csv and batch_norm.png; return (files, summary)."""
    results = grid.run_grid(specs(settings, data_dir), scheduler, func=_chapter6.run)
    runs, curves = tables(results, settings)
    output.write_csv(out / "runs.csv", runs, RUN_COLUMNS)
    output.write_csv(out / "curves.csv", curves, CURVE_COLUMNS)
    plot(results, settings, out / "batch_norm.png")
    return ["runs.csv", "curves.csv", "batch_norm.png"], summary(runs, settings)


EXPERIMENT = command.Experiment(
    name="batch_norm",
    title="Batch normalisation (the book's chapter 6)",
    description="Training accuracy with and without batch norm over 16 initial weight scales.",
    full=FULL,
    quick=QUICK,
    run=run,
)


def main(argv=None):
    """Run the experiment from the command line; return the exit code (2: bad input)."""
    return _chapter6.main(EXPERIMENT, argv)


if __name__ == "__main__":
    sys.exit(main())
