"""Random search of the learning rate and the weight decay (the book's 6.5).

Each trial draws a weight decay lambda = 10^U(-8, -4) and a learning rate 10^U(-6, -2)
from one seeded generator and trains a seeded network (784, six hidden layers of 100,
relu, He initialisation) with plain SGD (batch 100) for 50 epochs on 400 images; the
accuracy is measured on 100 held-out images.  Those 500 are the first 500 training
images shuffled with a seed and split 80/20, as the book does: the test set is not
touched while searching.  The figure shows the best trials' validation (solid) and
training (dashed) accuracy per epoch in a grid, as the book's, and every trial in the
(learning rate, weight decay) plane.

Usage::

    python -m fastnum.experiments.hyperparameters            # full, backprop
    python -m fastnum.experiments.hyperparameters --quick    # seconds
    python -m fastnum.experiments.hyperparameters --scheduler tcp://host:8786
"""

from __future__ import annotations

import math
import sys

import numpy as np

from fastnum.experiments import _chapter6, command, grid, output
from fastnum.plots import new_figure

#: What ``--grad numerical`` costs in full mode, measured (see the summary).
NUMERICAL_COST = """\
One update with numerical gradients (batch 100, numba, 1 thread) took 0.16 s on the
2-core machine with the corner-aware dense ReLU kernel (5.7 s before it;
`fastnum.experiments._chapter6.time_numerical_iteration`, load average 1.6), so the full
search with `--grad numerical` (100 trials × 200 updates) takes about 55 min on one core:
not run yet.  The trials are independent, so `--scheduler` spreads them over a Dask
cluster's workers."""

FULL = {
    "trials": 100,
    "lr_exponents": [-6, -2],
    "weight_decay_exponents": [-8, -4],
    "hidden_sizes": [100, 100, 100, 100, 100, 100],
    "epochs": 50,
    "batch_size": 100,
    "train_size": 500,  # the first 500 training images, shuffled, then split
    "val_size": 100,  # 20 % held out
    "best": 20,
    "seed": 0,
    "threads": 1,
}
QUICK = {
    **FULL,
    "trials": 6,
    "hidden_sizes": [10, 10],
    "epochs": 3,
    "batch_size": 20,
    "train_size": 100,
    "val_size": 20,
    "best": 4,
}

RUN_COLUMNS = [
    "trial",
    "lr",
    "weight_decay",
    "status",
    "final_val_acc",
    "final_train_acc",
    "best_val_acc",
    "rank",
    "seconds",
]
CURVE_COLUMNS = ["trial", "epoch", "iteration", "train_acc", "val_acc"]


def draws(settings):
    """(learning rate, weight decay) of every trial, log-uniform, from the seed."""
    rng = np.random.default_rng(settings["seed"])
    out = []
    for _ in range(settings["trials"]):
        # Weight decay first, then the learning rate, one pair per trial.
        wd = 10 ** rng.uniform(*settings["weight_decay_exponents"])
        lr = 10 ** rng.uniform(*settings["lr_exponents"])
        out.append((float(lr), float(wd)))
    return out


def specs(settings, data_dir=None):
    """One run per trial; every trial sees the same split and its own seeded weights."""
    if not 0 < settings["val_size"] < settings["train_size"]:
        raise ValueError(
            f"val_size={settings['val_size']} must be between 0 and "
            f"train_size={settings['train_size']}; the book holds out 20 %."
        )
    n_train = settings["train_size"] - settings["val_size"]
    per_epoch = _chapter6.epoch_iters(n_train, settings["batch_size"])
    return [
        {
            "name": f"trial {k}",
            "tags": {"trial": k, "lr": lr, "weight_decay": wd},
            "net": {
                "hidden_sizes": settings["hidden_sizes"],
                "activation": "relu",
                "weight_init_std": "relu",
                "weight_decay_lambda": wd,
            },
            "optimizer": "sgd",
            "hyper": {"lr": lr},
            "grad": settings.get("grad", "backprop"),
            "iters": settings["epochs"] * per_epoch,
            "eval_every": per_epoch,
            "batch_size": settings["batch_size"],
            "train_size": settings["train_size"],
            "val_size": settings["val_size"],
            "split_seed": settings["seed"],
            "seed": settings["seed"] + 1 + k,
            "threads": settings["threads"],
            "data_dir": data_dir,
        }
        for k, (lr, wd) in enumerate(draws(settings))
    ]


def _final(values):
    return values[-1] if values else math.nan


def tables(results, settings):
    """(one row per trial with its rank by final validation accuracy, one row per evaluation)."""
    n_train = settings["train_size"] - settings["val_size"]
    per_epoch = _chapter6.epoch_iters(n_train, settings["batch_size"])
    order = sorted(
        range(len(results)), key=lambda i: -np.nan_to_num(_final(results[i]["eval_acc"]))
    )
    rank = {i: k + 1 for k, i in enumerate(order)}
    runs, curves = [], []
    for i, r in enumerate(results):
        runs.append(
            {
                **r["tags"],
                "status": r["status"],
                "final_val_acc": _final(r["eval_acc"]),
                "final_train_acc": _final(r["train_acc"]),
                "best_val_acc": max(r["eval_acc"], default=math.nan),
                "rank": rank[i],
                "seconds": r["seconds"],
            }
        )
        curves += [
            {
                "trial": r["tags"]["trial"],
                "epoch": it / per_epoch,
                "iteration": it,
                "train_acc": a,
                "val_acc": b,
            }
            for it, a, b in zip(r["eval_iters"], r["train_acc"], r["eval_acc"], strict=True)
        ]
    return runs, curves


def plot(results, runs, settings, path):
    """The best trials in a grid (validation solid, training dashed) and all trials in a plane."""
    n_train = settings["train_size"] - settings["val_size"]
    per_epoch = _chapter6.epoch_iters(n_train, settings["batch_size"])
    best = sorted(runs, key=lambda r: r["rank"])[: settings["best"]]
    ncols = min(5, len(best))
    nrows = math.ceil(len(best) / ncols)
    fig, axes = new_figure(ncols, nrows, panel_size=(2.6, 2.1), layout="constrained")
    for ax, row in zip(axes, best, strict=False):
        r = results[row["trial"]]
        epochs = [i / per_epoch for i in r["eval_iters"]]
        ax.plot(epochs, r["eval_acc"], "-")
        ax.plot(epochs, r["train_acc"], "--", color="0.5")
        ax.set_title(
            f"#{row['rank']}: lr {row['lr']:.2g}, wd {row['weight_decay']:.2g}", fontsize="small"
        )
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize="x-small")
    for ax in axes[len(best) :]:
        ax.set_axis_off()
    fig.suptitle(
        f"Best {len(best)} of {len(runs)} trials: validation (solid) and training (dashed) "
        "accuracy per epoch"
    )
    output.save_png(fig, path)

    fig2, (ax,) = output.figure(1, panel_size=(6.4, 4.8))
    points = ax.scatter(
        [r["lr"] for r in runs],
        [r["weight_decay"] for r in runs],
        c=[np.nan_to_num(r["final_val_acc"]) for r in runs],
        cmap="viridis",
        vmin=0,
        vmax=1,
    )
    ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="weight decay lambda")
    ax.set_title("Every trial, coloured by final validation accuracy")
    fig2.colorbar(points, ax=ax, label="validation accuracy")
    scatter = path.with_name(path.stem + "_plane.png")
    output.save_png(fig2, scatter)
    return path, scatter


def summary(runs, settings):
    """The body of summary.md: settings, the best trials, findings."""
    grad = settings.get("grad", "backprop")
    ranked = sorted(runs, key=lambda r: r["rank"])
    top = ranked[: min(10, len(ranked))]
    table = [
        "| rank | trial | lr | weight decay | val acc | train acc |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    table += [
        f"| {r['rank']} | {r['trial']} | {r['lr']:.3g} | {r['weight_decay']:.3g} | "
        f"{r['final_val_acc']:.3f} | {r['final_train_acc']:.3f} |"
        for r in top
    ]
    best = ranked[: settings["best"]]
    lrs = [r["lr"] for r in best]
    wds = [r["weight_decay"] for r in best]
    learned = sum(r["final_val_acc"] >= 0.5 for r in runs)
    return f"""Gradients: {_chapter6.grad_note(grad)} (`--grad {grad}`).  Settings: `{settings}`.
Each trial: SGD on {settings["train_size"] - settings["val_size"]} images, validated on
{settings["val_size"]} held-out images (the first {settings["train_size"]} training images
shuffled with seed {settings["seed"]}), {settings["epochs"]} epochs of batch
{settings["batch_size"]}; trial k's weights and batches are seeded with seed + 1 + k.
Ranked by the validation accuracy after the last epoch.

{chr(10).join(table)}

Cost with numerical gradients: {NUMERICAL_COST}

## What the numbers show

- {learned} of {len(runs)} trials reach a validation accuracy of 0.5.
- The best {len(best)} trials have learning rates {min(lrs):.2g}–{max(lrs):.2g} and weight decays
  {min(wds):.2g}–{max(wds):.2g}; the best is lr {ranked[0]["lr"]:.3g}, weight decay
  {ranked[0]["weight_decay"]:.3g} (validation accuracy {ranked[0]["final_val_acc"]:.3f}).

Files: `runs.csv`, `curves.csv` (accuracies per epoch), `hyperparameters.png` (the best
trials), `hyperparameters_plane.png` (all trials).
"""


def run(settings, out, scheduler=None, data_dir=None):
    """Run the search; write its CSVs and figures; return (files, summary)."""
    results = grid.run_grid(specs(settings, data_dir), scheduler, func=_chapter6.run)
    runs, curves = tables(results, settings)
    output.write_csv(out / "runs.csv", runs, RUN_COLUMNS)
    output.write_csv(out / "curves.csv", curves, CURVE_COLUMNS)
    plot(results, runs, settings, out / "hyperparameters.png")
    files = ["runs.csv", "curves.csv", "hyperparameters.png", "hyperparameters_plane.png"]
    return files, summary(runs, settings)


EXPERIMENT = command.Experiment(
    name="hyperparameters",
    title="Hyperparameter search (the book's chapter 6)",
    description="Random search of learning rate and weight decay on a validation split.",
    full=FULL,
    quick=QUICK,
    run=run,
)


def main(argv=None):
    """Run the experiment from the command line; return the exit code (2: bad input)."""
    return _chapter6.main(EXPERIMENT, argv)


if __name__ == "__main__":
    sys.exit(main())
