"""``fastnum train``: the book's MNIST training run, resumable, from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import time

from fastnum.cli._exits import EXIT_OK, sigterm_unwinds
from fastnum.cli._options import DEFAULTS, add_backend_options, layer_widths, say_backend
from fastnum.train import (
    ACTIVATIONS,
    GRADS,
    NETS,
    OPTIMIZER_NAMES,
    SGD_LR,
    SPSA_DISTRIBUTIONS,
    WEIGHT_INIT_NAMES,
    TrainConfig,
    run_backend,
)
from fastnum.train_nets import NETS as NET_KINDS

#: Library names whose option stores under another name: ``train(out_dir=...)`` is ``--out``.
ALIASES = {"out_dir": "out"}

_EPILOG = """\
Every epoch (as in the book: after iteration 1, then every train_size/batch_size
iterations) prints `train acc, test acc | ...` and writes, atomically, into --out:
  history.json    config, backend, loss per iteration, accuracy and time per epoch
  checkpoint.npz  everything needed by --resume (which gives bit-identical results)
At the end it also writes params.npz (W1, b1, W2, b2), loss.png and accuracy.png.
While it runs, run.lock (PID, host, start time) keeps a second run out of the folder.

examples:
  fastnum train --grad backprop --out runs/bp
  fastnum train --iters 1000 --threads 2 --out runs/num1000
  fastnum train --resume --out runs/num1000
  fastnum train --resume --iters 5000 --out runs/num1000     (extend a finished run)
  fastnum train --hidden-sizes 40,30 --activation relu --weight-init-std 0.1 --out runs/deep
  fastnum train --grad backprop --optimizer adam --hidden-sizes 100,100 --activation relu \\
      --weight-init-std he --out runs/adam    chapter 6: Adam (lr 0.001) and He initialisation
  fastnum train --net simpleconv --hidden 100 --iters 600 --out runs/conv
                                           the book's chapter 7 CNN, one epoch
  fastnum train --hidden-sizes 100,100 --activation relu --weight-init he --batchnorm \\
      --dropout 0.2 --weight-decay 0.1 --out runs/ch6    chapter 6: batch norm, dropout,
                                           weight decay (any --grad; --resume stays exact)
"""


def _init_std(text):
    """Parse ``--weight-init-std``: a number, or a name that TrainConfig checks."""
    try:
        return float(text)
    except ValueError:
        return text


def _add_optimizer_options(p):
    """--optimizer and its hyperparameters (the book's chapter 6)."""
    d = DEFAULTS
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZER_NAMES,
        default=d.optimizer,
        help="update rule of the book's chapter 6 (default: %(default)s)",
    )
    p.add_argument(
        "--lr",
        type=float,
        help=f"learning rate (default: {SGD_LR} for sgd, as the book's train_neuralnet.py; "
        "the book's 0.01 for momentum, nesterov, adagrad, rmsprop; 0.001 for adam)",
    )
    p.add_argument(
        "--momentum",
        type=float,
        metavar="M",
        help="momentum and nesterov: velocity kept per step (default: 0.9)",
    )
    p.add_argument(
        "--decay-rate",
        type=float,
        metavar="D",
        help="rmsprop: fraction of the squared gradients kept per step (default: 0.99)",
    )
    p.add_argument(
        "--beta1", type=float, help="adam: decay of the gradient's average (default: 0.9)"
    )
    p.add_argument(
        "--beta2", type=float, help="adam: decay of the squared gradient's average (default: 0.999)"
    )


def _add_chapter6_options(p):
    """--batchnorm, --dropout and --weight-decay (the book's chapter 6; a MultiLayerNet)."""
    d = DEFAULTS
    p.add_argument(
        "--batchnorm",
        dest="use_batchnorm",
        action="store_true",
        help="batch normalisation before every hidden activation (needs --hidden-sizes)",
    )
    p.add_argument(
        "--dropout",
        dest="dropout_ratio",
        type=float,
        metavar="R",
        help="dropout after every hidden activation, dropping each unit with probability "
        "R in [0, 1), one mask per step (the book uses 0.5; needs --hidden-sizes) "
        "(default: no dropout)",
    )
    p.add_argument(
        "--weight-decay",
        dest="weight_decay_lambda",
        type=float,
        metavar="L",
        default=d.weight_decay_lambda,
        help="weight decay lambda: adds 0.5*L*sum(W**2) over the weight matrices to the "
        "loss (the book uses 0.1; needs --hidden-sizes) (default: %(default)s)",
    )


def add_parser(sub):
    """Add ``train`` and its options to the subcommands ``sub``; return its parser."""
    d = DEFAULTS
    p = sub.add_parser(
        "train",
        help="train the two-layer network on MNIST (the book's 4.5)",
        description="Train the book's TwoLayerNet on MNIST with minibatch SGD (or an "
        "--optimizer of chapter 6). Defaults are the book's: 10000 iterations, batch 100, "
        "lr 0.1, 50 hidden units, numerical gradients.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--grad",
        choices=GRADS,
        default=d.grad,
        help="numerical: central differences as in chapter 4 (slow); forward: one-sided "
        "differences; spsa: central differences along --directions random directions; "
        "backprop: chapter 5's analytic gradient (fast) (default: %(default)s)",
    )
    p.add_argument(
        "--directions",
        type=int,
        metavar="K",
        default=d.directions,
        help="--grad spsa: random directions per step (default: %(default)s)",
    )
    p.add_argument(
        "--spsa-dist",
        dest="spsa_distribution",
        choices=SPSA_DISTRIBUTIONS,
        default=d.spsa_distribution,
        help="--grad spsa: entries of the directions, +-1 or N(0, 1) (default: %(default)s)",
    )
    p.add_argument(
        "--iters", type=int, metavar="N", default=d.iters, help="SGD updates (default: %(default)s)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        metavar="N",
        help="images per update, drawn with replacement (default: %(default)s)",
    )
    _add_optimizer_options(p)
    p.add_argument(
        "--net",
        choices=NETS,
        default=d.net,
        help="; ".join(f"{name}: {kind.description}" for name, kind in NET_KINDS.items())
        + " (default: %(default)s)",
    )
    p.add_argument(
        "--hidden",
        dest="hidden_size",
        type=int,
        default=d.hidden_size,
        metavar="N",
        help="hidden units; the book's SimpleConvNet uses 100 (default: %(default)s)",
    )
    p.add_argument(
        "--hidden-sizes",
        type=layer_widths,
        metavar="W1,W2,...",
        help="several hidden layers, e.g. 100,50: trains a MultiLayerNet instead of "
        "the book's TwoLayerNet (overrides --hidden)",
    )
    p.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default=d.activation,
        help="activation of the hidden layers; relu needs --hidden-sizes (default: %(default)s)",
    )
    p.add_argument(
        "--weight-init",
        "--weight-init-std",
        dest="weight_init_std",
        type=_init_std,
        default=d.weight_init_std,
        metavar="STD",
        help="std of the Gaussian initial weights, or per layer by name: "
        f"{'/'.join(WEIGHT_INIT_NAMES[:2])} sqrt(2/n_in), "
        f"{'/'.join(WEIGHT_INIT_NAMES[2:])} sqrt(1/n_in) (default: %(default)s)",
    )
    _add_chapter6_options(p)
    p.add_argument(
        "--h",
        type=float,
        default=d.h,
        help="central-difference step of the numerical gradient (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        metavar="N",
        help="seed of the initial weights and the batch sampling; equal seeds give "
        "identical runs (default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads for the numba kernels (default: numba's, usually all cores)",
    )
    p.add_argument(
        "--train-size",
        type=int,
        metavar="N",
        help="use only the first N training images (quick runs; default: all 60000)",
    )
    p.add_argument(
        "--test-size",
        type=int,
        metavar="N",
        help="use only the first N test images (default: all 10000)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: runs/<date-time>-<grad>; required by --resume)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (optimizer state "
        "included); give the same options (only --iters, --threads may change)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an --out folder that already holds a run",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print nothing but errors (no progress bar, no epoch lines)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="compute each step's numerical gradient in parameter blocks on this Dask "
        "scheduler (tcp://host:8786, or 'local' for an in-process cluster); results are "
        "those of one process. Needs --grad numerical and pip install 'fastnum[distributed]'",
    )
    add_backend_options(p)
    return p


def run(args):
    """Train as ``args`` say; SIGTERM stops the run cleanly (its folder unlocked)."""
    with sigterm_unwinds():
        return _train(args)


def _train(args):
    """Build the TrainConfig of the options and run it."""
    from fastnum.train import train  # looked up per call, so tests can stand in for it

    # Fields without an option keep TrainConfig's defaults.
    config = TrainConfig(
        **{
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(TrainConfig)
            if hasattr(args, f.name)
        }
    )
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out DIR: the folder of the run to continue.")
    # An empty --out is not "no --out": train() refuses it.
    out = (
        args.out if args.out is not None else f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.grad}"
    )
    args.out = out  # so that the Ctrl-C hint can name it
    if args.verbose:
        say_backend(args, run_backend(config))
        print(f"config: {config.to_dict()}")
        print(f"output: {out}")
    result = train(
        config,
        out_dir=out,
        resume=args.resume,
        overwrite=args.overwrite,
        data_dir=args.data_dir,
        progress=not args.quiet,
        log=None if args.quiet else print,
        scheduler=args.scheduler,
    )
    if not args.quiet:
        seconds = result.timings["total_seconds"]
        print(
            f"done: {config.iters} iterations in {seconds:.1f} s; final train acc "
            f"{result.final_train_acc:.4f}, test acc {result.final_test_acc:.4f}; "
            f"outputs in {out}"
        )
    return EXIT_OK
