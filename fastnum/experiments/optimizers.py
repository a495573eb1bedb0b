"""Optimizers: SGD, Momentum, Nesterov, AdaGrad, RMSprop and Adam on MNIST (the book's 6.1.8).

Each optimizer, with the book's default hyperparameters, trains the same seeded network
(784-100-100-100-100-10, relu, He initialisation) for 2,000 updates of batch 128 drawn
from the same seeded stream; the figure shows the batch loss after each update, smoothed,
one curve per optimizer.

Usage::

    python -m fastnum.experiments.optimizers                  # full, backprop
    python -m fastnum.experiments.optimizers --quick          # seconds
    python -m fastnum.experiments.optimizers --grad numerical --scheduler tcp://host:8786
"""

from __future__ import annotations

import sys

from fastnum.experiments import _chapter6, command

#: What ``--grad numerical`` costs in full mode, measured (see the summary).
NUMERICAL_COST = """\
One update of the full network with numerical gradients (batch 128, numba `delta`
kernels, 1 thread) took 0.12 s on the 2-core machine with the corner-aware dense ReLU
kernel (3.96 s before it; `fastnum.experiments._chapter6.time_numerical_iteration`, load
average 1.6), so the full mode with `--grad numerical` (6 × 2,000 updates) takes about
25 min: not run yet.  `--quick --grad numerical` runs in seconds."""

FULL = {
    "optimizers": ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"],
    "hidden_sizes": [100, 100, 100, 100],
    "weight_init_std": "relu",
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
    "iters": 30,
    "batch_size": 16,
    "train_size": 200,
    "test_size": 100,
}


def specs(settings, data_dir=None):
    """One run per optimizer: same network, same seed, same batches."""
    net = {
        "hidden_sizes": settings["hidden_sizes"],
        "activation": "relu",
        "weight_init_std": settings["weight_init_std"],
    }
    common = {key: settings[key] for key in _chapter6.RUN_KEYS}
    return [
        {
            "name": name,
            "tags": {"optimizer": name},
            "net": net,
            "optimizer": name,
            "grad": settings.get("grad", "backprop"),
            "record_loss": True,
            "data_dir": data_dir,
            **common,
        }
        for name in settings["optimizers"]
    ]


def summary(rows, settings):
    """The body of summary.md: settings, table, findings."""
    grad = settings.get("grad", "backprop")
    table = ["| optimizer | loss (last tenth) | test acc | seconds |", "|---|---:|---:|---:|"]
    table += [
        f"| {r['optimizer']} | {r['final_loss']:.4f} | {r['test_acc']:.3f} | {r['seconds']:.3g} |"
        for r in rows
    ]
    ranked = sorted(rows, key=lambda r: r["final_loss"])
    order = ", ".join(f"{r['optimizer']} ({r['final_loss']:.3f})" for r in ranked)
    worst = ranked[-1]
    ratio = worst["final_loss"] / max(ranked[0]["final_loss"], 1e-12)
    return f"""Gradients: {_chapter6.grad_note(grad)} (`--grad {grad}`).  Settings: `{settings}`.
784-{"-".join(map(str, settings["hidden_sizes"]))}-10 relu network, initial weights
`{settings["weight_init_std"]}`, the book's default hyperparameters for each optimizer
(lr 0.01; Adam 0.001), batches drawn with replacement from the first
{settings["train_size"]} training images, the same seed for every run.  Loss: the
batch loss after each update, averaged over the last tenth of the updates; test
accuracy on the first {settings["test_size"]} test images after the last update.

{chr(10).join(table)}

Cost with numerical gradients: {NUMERICAL_COST}

## What the numbers show

- From lowest to highest final loss: {order}.
- The slowest to learn is {worst["optimizer"]}: its loss after {worst["iterations"]} updates is
  {ratio:.3g} times that of {ranked[0]["optimizer"]}.

Files: `runs.csv`, `curves.csv` (every update's loss and the smoothed curve), `optimizers.png`.
"""


def run(settings, out, scheduler=None, data_dir=None):
    """Run the grid; write runs.csv, curves.csv and optimizers.png; return (files, summary)."""
    results, rows = _chapter6.run_loss_curves(
        specs(settings, data_dir),
        settings,
        out,
        scheduler,
        "optimizer",
        "Optimizers on MNIST",
        "optimizers.png",
    )
    return ["runs.csv", "curves.csv", "optimizers.png"], summary(rows, settings)


EXPERIMENT = command.Experiment(
    name="optimizers",
    title="Optimizers (the book's chapter 6)",
    description="SGD, Momentum, Nesterov, AdaGrad, RMSprop and Adam: loss per iteration on MNIST.",
    full=FULL,
    quick=QUICK,
    run=run,
)


def main(argv=None):
    """Run the experiment from the command line; return the exit code (2: bad input)."""
    return _chapter6.main(EXPERIMENT, argv)


if __name__ == "__main__":
    sys.exit(main())
