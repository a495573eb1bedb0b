"""Weight initialisation: std 0.01, Xavier and He on the same relu network (the book's 6.2.4).

The network of the optimizer experiment (784-100-100-100-100-10, relu) starts from three
seeded initialisations: a Gaussian of std 0.01, Xavier (std sqrt(1 / n_in)) and He
(std sqrt(2 / n_in)), n_in the width of the layer before, and trains with plain SGD
(lr 0.01) for 2,000 updates of batch 128 drawn from the same seeded stream.  The figure
shows the batch loss after each update, smoothed, one curve per initialisation.

Usage::

    python -m fastnum.experiments.weight_init            # full, backprop
    python -m fastnum.experiments.weight_init --quick    # seconds
    python -m fastnum.experiments.weight_init --grad numerical --scheduler tcp://host:8786
"""

from __future__ import annotations

import sys

from fastnum.experiments import _chapter6, command

#: Label -> weight_init_std of fastnum.MultiLayerNet.
INITS = {"std=0.01": 0.01, "Xavier": "xavier", "He": "he"}

#: What ``--grad numerical`` costs in full mode, measured (see the summary).
NUMERICAL_COST = """\
One update of the full network with numerical gradients (batch 128, numba `delta`
kernels, 1 thread) took 0.21 s (std 0.01), 0.13 s (Xavier) and 0.11 s (He) on the 2-core
machine with the corner-aware dense ReLU kernel (3.82 s before it;
`fastnum.experiments._chapter6.time_numerical_iteration`, load average 1.6).  The full
mode with `--grad numerical` (3 × 2,000 updates) took 13.9 min on one core, with another
job on the other (2026-12-04 22:35 UTC, `--out docs/experiments/weight_init-numerical`):
final losses 2.3014, 0.2932 and 0.2016 against backprop's 2.3014, 0.2933 and 0.2018,
test accuracy the same to 0.001.  `--quick --grad numerical` runs in seconds and gives
the quick backprop losses to 4 digits."""

FULL = {
    "inits": list(INITS),
    "hidden_sizes": [100, 100, 100, 100],
    "optimizer": "sgd",
    "lr": 0.01,
    "iters": 2000,
    "batch_size": 128,
    "train_size": 60000,
    "test_size": 10000,
    "seed": 0,
    "threads": 1,
}
QUICK = {
    **FULL,
    "hidden_sizes": [10, 10],
    "lr": 0.1,
    "iters": 30,
    "batch_size": 16,
    "train_size": 200,
    "test_size": 100,
}


def specs(settings, data_dir=None):
    """One run per initialisation: same seed, same batches, same optimizer."""
    for label in settings["inits"]:
        if label not in INITS:
            raise ValueError(f"init {label!r} is unknown; use one of: {', '.join(INITS)}.")
    common = {key: settings[key] for key in _chapter6.RUN_KEYS}
    return [
        {
            "name": label,
            "tags": {"init": label},
            "net": {
                "hidden_sizes": settings["hidden_sizes"],
                "activation": "relu",
                "weight_init_std": INITS[label],
            },
            "optimizer": settings["optimizer"],
            "hyper": {"lr": settings["lr"]},
            "grad": settings.get("grad", "backprop"),
            "record_loss": True,
            "data_dir": data_dir,
            **common,
        }
        for label in settings["inits"]
    ]


def summary(rows, results, settings):
    """The body of summary.md: settings, table, findings."""
    grad = settings.get("grad", "backprop")
    table = ["| init | loss (last tenth) | test acc | seconds |", "|---|---:|---:|---:|"]
    table += [
        f"| {r['init']} | {r['final_loss']:.4f} | {r['test_acc']:.3f} | {r['seconds']:.3g} |"
        for r in rows
    ]
    ranked = sorted(rows, key=lambda r: r["final_loss"])
    first = {r["tags"]["init"]: r["losses"][0] for r in results if r["losses"]}
    order = ", ".join(f"{r['init']} ({r['final_loss']:.3f})" for r in ranked)
    start = "; ".join(f"{k} {v:.3f}" for k, v in first.items())
    return f"""Gradients: {_chapter6.grad_note(grad)} (`--grad {grad}`).  Settings: `{settings}`.
784-{"-".join(map(str, settings["hidden_sizes"]))}-10 relu network, {settings["optimizer"]}
with lr {settings["lr"]:g}, batches drawn with replacement from the first
{settings["train_size"]} training images, the same seed for every run.  Loss: the
batch loss after each update, averaged over the last tenth of the updates; test
accuracy on the first {settings["test_size"]} test images after the last update.

{chr(10).join(table)}

Cost with numerical gradients: {NUMERICAL_COST}

## What the numbers show

- From lowest to highest final loss: {order}.
- Loss after the first update: {start} (ln 10 = 2.303 is guessing).

Files: `runs.csv`, `curves.csv` (every update's loss and the smoothed curve), `weight_init.png`.
"""


def run(settings, out, scheduler=None, data_dir=None):
    """Run the grid; write runs.csv, curves.csv and weight_init.png; return (files, summary)."""
    results, rows = _chapter6.run_loss_curves(
        specs(settings, data_dir),
        settings,
        out,
        scheduler,
        "init",
        "Weight initialisation on MNIST",
        "weight_init.png",
    )
    return ["runs.csv", "curves.csv", "weight_init.png"], summary(rows, results, settings)


EXPERIMENT = command.Experiment(
    name="weight_init",
    title="Weight initialisation (the book's chapter 6)",
    description="Initial weights std 0.01, Xavier and He: loss per iteration on MNIST.",
    full=FULL,
    quick=QUICK,
    run=run,
)


def main(argv=None):
    """Run the experiment from the command line; return the exit code (2: bad input)."""
    return _chapter6.main(EXPERIMENT, argv)


if __name__ == "__main__":
    sys.exit(main())
