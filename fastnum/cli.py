"""The ``fastnum`` command: ``fastnum train`` and ``fastnum gradcheck``.

Run it as ``fastnum ...`` once installed, or as ``python -m fastnum.cli ...``.
Bad input and training failures end with one line on stderr, never a traceback
(``--verbose`` adds the traceback for debugging).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
import traceback
from pathlib import Path

from fastnum.backend import BACKENDS, STRATEGIES, describe_backend, resolve_backend
from fastnum.convnet import CONV_CHECK
from fastnum.gradcheck import DEFAULT_TOL
from fastnum.train import ACTIVATIONS, GRADS, NETS, TrainConfig, TrainingDivergedError, run_backend

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_DEFAULTS = TrainConfig()

_MAIN_EPILOG = """\
examples:
  fastnum train --grad backprop            the book's run with backprop (seconds)
  fastnum train --out runs/numerical       the book's run with numerical gradients: minutes
                                           with numba, days with --backend numpy
  fastnum train --iters 200 --train-size 1000 --test-size 1000 --out runs/try
                                           a quick try on a subset of MNIST
  fastnum train --resume --out runs/numerical
                                           continue an interrupted run where it stopped
  fastnum gradcheck                        numerical vs backprop gradient on 3 MNIST images

exit codes: 0 success, 1 training diverged or gradient check failed,
2 bad option or input, 130 interrupted (Ctrl-C).
Run `fastnum COMMAND --help` for the options of each command.
"""

_TRAIN_EPILOG = """\
Every epoch (as in the book: after iteration 1, then every train_size/batch_size
iterations) prints `train acc, test acc | ...` and writes, atomically, into --out:
  history.json    config, backend, loss per iteration, accuracy and time per epoch
  checkpoint.npz  everything needed by --resume (which gives bit-identical results)
At the end it also writes params.npz (W1, b1, W2, b2), loss.png and accuracy.png.

examples:
  fastnum train --grad backprop --out runs/bp
  fastnum train --iters 1000 --threads 2 --out runs/num1000
  fastnum train --resume --out runs/num1000
  fastnum train --resume --iters 5000 --out runs/num1000     (extend a finished run)
  fastnum train --hidden-sizes 40,30 --activation relu --weight-init-std 0.1 --out runs/deep
  fastnum train --net simpleconv --hidden 100 --iters 600 --out runs/conv
                                           the book's chapter 7 CNN, one epoch
"""

_GRADCHECK_EPILOG = """\
Compares the numerical gradient (central differences) with backprop on a small
random batch of MNIST training images, for a freshly initialised network, and
prints the max absolute and relative error of W1, b1, W2 and b2.  The book's
1e-7 guard inside log() shifts the numerical gradient by ~1e-6 relative, hence
the default --tol 1e-5.  Exit code 1 when the worst relative error exceeds --tol.
--net simpleconv checks the chapter 7 CNN with random biases, weight std 0.05
and h 1e-8, which keep its relu and pooling off their kinks (see the report).

examples:
  fastnum gradcheck
  fastnum gradcheck --batch-size 10 --hidden 50 --backend numba --strategy full
  fastnum gradcheck --net simpleconv --batch-size 100     the book's chapter 7 CNN
"""

# Library names in error messages -> the options a CLI user types.
_OPTION_NAMES = {
    "batch_size": "--batch-size", "hidden_size": "--hidden", "weight_init_std": "--weight-init-std",
    "train_size": "--train-size", "test_size": "--test-size", "out_dir": "--out",
    "data_dir": "--data-dir", "lr": "--lr", "h": "--h", "iters": "--iters", "seed": "--seed",
    "threads": "--threads", "grad": "--grad", "strategy": "--strategy", "tol": "--tol",
    "hidden_sizes": "--hidden-sizes", "activation": "--activation",
}
# Whole words only, and never inside a path such as runs/seed/history.json.
_OPTION_RE = re.compile(r"(?<![\w\-/.])(" + "|".join(_OPTION_NAMES) + r")(?![\w\-/])")


def _as_options(message):
    """Rewrite ``lr=0`` / ``batch_size 100`` in a message as ``--lr=0`` / ``--batch-size 100``.

    Library errors name the Python argument; a CLI user needs the option to change.
    """
    return _OPTION_RE.sub(lambda m: _OPTION_NAMES[m.group(1)], message)


def _layer_widths(text):
    """Parse ``--hidden-sizes 100,50`` into ``(100, 50)``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of layer widths; write e.g. 100,50"
        ) from None


def _add_backend_options(p):
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="where the network runs: numba kernels, the NumPy reference, or auto "
                        "(numba when it compiles); --grad backprop always runs in NumPy "
                        "(default: %(default)s)")
    p.add_argument("--strategy", choices=STRATEGIES, default="delta",
                   help="numba numerical gradient: delta reuses cached activations, full reruns "
                        "the forward pass per perturbation (default: %(default)s)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder with the four MNIST .gz files (default: $FASTNUM_MNIST_DIR, "
                        "else the cache folder, downloading if needed)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print the backend chosen and the settings; tracebacks on errors")


def _add_train_parser(sub):
    d = _DEFAULTS
    p = sub.add_parser("train", help="train the two-layer network on MNIST (the book's 4.5)",
                       description="Train the book's TwoLayerNet on MNIST with minibatch SGD. "
                                   "Defaults are the book's: 10000 iterations, batch 100, "
                                   "lr 0.1, 50 hidden units, numerical gradients.",
                       epilog=_TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grad", choices=GRADS, default=d.grad,
                   help="numerical: central differences as in chapter 4 (slow); backprop: "
                        "chapter 5's analytic gradient (fast) (default: %(default)s)")
    p.add_argument("--iters", type=int, metavar="N", default=d.iters,
                   help="SGD updates (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N",
                   help="images per update, drawn with replacement (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate (default: %(default)s)")
    p.add_argument("--net", choices=NETS, default=d.net,
                   help="dense: the book's TwoLayerNet (a MultiLayerNet with --hidden-sizes); "
                        "simpleconv: the book's chapter 7 SimpleConvNet on 28x28 images "
                        "(default: %(default)s)")
    p.add_argument("--hidden", dest="hidden_size", type=int, default=d.hidden_size, metavar="N",
                   help="hidden units; the book's SimpleConvNet uses 100 (default: %(default)s)")
    p.add_argument("--hidden-sizes", type=_layer_widths, metavar="W1,W2,...",
                   help="several hidden layers, e.g. 100,50: trains a MultiLayerNet instead of "
                        "the book's TwoLayerNet (overrides --hidden)")
    p.add_argument("--activation", choices=ACTIVATIONS, default=d.activation,
                   help="activation of the hidden layers; relu needs --hidden-sizes "
                        "(default: %(default)s)")
    p.add_argument("--weight-init-std", type=float, default=d.weight_init_std, metavar="STD",
                   help="std of the Gaussian initial weights (default: %(default)s)")
    p.add_argument("--h", type=float, default=d.h,
                   help="central-difference step of the numerical gradient (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, metavar="N",
                   help="seed of the initial weights and the batch sampling; equal seeds give "
                        "identical runs (default: %(default)s)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads for the numba kernels (default: numba's, usually all cores)")
    p.add_argument("--train-size", type=int, metavar="N",
                   help="use only the first N training images (quick runs; default: all 60000)")
    p.add_argument("--test-size", type=int, metavar="N",
                   help="use only the first N test images (default: all 10000)")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: runs/<date-time>-<grad>; required by --resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint; give the same "
                        "options (only --iters, --threads may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out folder that already holds a run")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing but errors (no progress bar, no epoch lines)")
    _add_backend_options(p)
    p.set_defaults(func=_cmd_train)


def _add_gradcheck_parser(sub):
    p = sub.add_parser("gradcheck", help="check the numerical gradient against backprop",
                       description="Compare the numerical gradient with backprop on MNIST images.",
                       epilog=_GRADCHECK_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=3, metavar="N",
                   help="MNIST training images in the batch (default: %(default)s)")
    p.add_argument("--net", choices=NETS, default="dense",
                   help="dense: the book's TwoLayerNet; simpleconv: the book's chapter 7 "
                        "SimpleConvNet (default: %(default)s)")
    p.add_argument("--hidden", type=int, metavar="N",
                   help="hidden units; small keeps the NumPy backend quick (default: 10, "
                        "the book's 100 for --net simpleconv)")
    p.add_argument("--weight-init-std", type=float, metavar="STD",
                   help=f"std of the Gaussian initial weights (default: "
                        f"{_DEFAULTS.weight_init_std}; {CONV_CHECK.weight_init_std} for "
                        f"--net simpleconv, see below)")
    p.add_argument("--h", type=float,
                   help=f"central-difference step (default: {_DEFAULTS.h}; {CONV_CHECK.h} for "
                        f"--net simpleconv)")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL,
                   help="fail when the worst relative error exceeds this (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the weights and of the choice of images (default: %(default)s)")
    _add_backend_options(p)
    p.set_defaults(func=_cmd_gradcheck)


def build_parser():
    """Build the ``fastnum`` argument parser.

    Returns
    -------
    argparse.ArgumentParser
        With subcommands ``train`` and ``gradcheck``; each sets ``func``.
    """
    parser = argparse.ArgumentParser(
        prog="fastnum",
        description="The numerical-gradient MNIST training of 'Deep Learning from Scratch' "
                    "chapter 4, at practical speed with numba kernels.",
        epilog=_MAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train_parser(sub)
    _add_gradcheck_parser(sub)
    return parser


def _say_backend(args, backend=None):
    backend = backend or resolve_backend(args.backend)
    print(describe_backend(backend))
    if backend == "numba":
        from fastnum._jit import get_num_threads

        print(f"threads: {getattr(args, 'threads', None) or get_num_threads()}")


def _cmd_train(args):
    from fastnum.train import train  # looked up per call, so tests can stand in for it

    # Fields without an option keep TrainConfig's defaults.
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                            if hasattr(args, f.name)})
    if args.resume and not args.out:
        raise ValueError("--resume needs --out DIR: the folder of the run to continue.")
    out = args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.grad}"
    args.out = out  # so that the Ctrl-C hint can name it
    if args.verbose:
        _say_backend(args, run_backend(config))
        if config.grad == "backprop":
            print("(--grad backprop always runs in NumPy: see `fastnum train --help`)")
        print(f"config: {config.to_dict()}")
        print(f"output: {out}")
    result = train(config, out_dir=out, resume=args.resume, overwrite=args.overwrite,
                   data_dir=args.data_dir, progress=not args.quiet,
                   log=None if args.quiet else print)
    if not args.quiet:
        seconds = result.timings["total_seconds"]
        print(f"done: {config.iters} iterations in {seconds:.1f} s; final train acc "
              f"{result.final_train_acc:.4f}, test acc {result.final_test_acc:.4f}; "
              f"outputs in {out}")
    return EXIT_OK


def _cmd_gradcheck(args):
    import numpy as np

    from fastnum.data import load_mnist
    from fastnum.gradcheck import gradcheck
    from fastnum.network import TwoLayerNet

    if not (math.isfinite(args.tol) and args.tol > 0):  # before the slow MNIST load
        raise ValueError(f"--tol={args.tol!r} must be a finite number > 0 "
                         f"(default {DEFAULT_TOL:g}).")
    if args.verbose:
        _say_backend(args)
    conv = args.net == "simpleconv"
    hidden = args.hidden if args.hidden is not None else (100 if conv else 10)
    if conv and resolve_backend(args.backend) == "numpy":  # before the slow MNIST load
        raise ValueError("--net simpleconv needs the numba backend: the NumPy reference "
                         "evaluates the loss twice per parameter (433,890 at --hidden 100), "
                         "hours per check. Install numba and use --backend numba or auto.")
    (x_train, t_train), _ = load_mnist(flatten=not conv, data_dir=args.data_dir)
    if not 1 <= args.batch_size <= len(x_train):
        raise ValueError(f"--batch-size={args.batch_size} must be between 1 and {len(x_train)}.")
    idx = np.random.default_rng(args.seed).choice(len(x_train), args.batch_size, replace=False)
    defaults = CONV_CHECK if conv else _DEFAULTS
    std = args.weight_init_std if args.weight_init_std is not None else defaults.weight_init_std
    h = args.h if args.h is not None else defaults.h
    if conv:
        from fastnum.convnet import SimpleConvNet, off_the_kinks

        net = off_the_kinks(SimpleConvNet(x_train.shape[1:], hidden_size=hidden,
                                          weight_init_std=std, seed=args.seed,
                                          backend=args.backend, strategy=args.strategy),
                            seed=args.seed)
    else:
        net = TwoLayerNet(x_train.shape[1], hidden, 10, std,
                          seed=args.seed, backend=args.backend, strategy=args.strategy)
    result = gradcheck(net, x_train[idx], t_train[idx], h=h, tol=args.tol)
    print(result.report())
    if conv:
        print(CONV_CHECK.why)
    return EXIT_OK if result.passed else EXIT_FAILED


def _resume_hint(args):
    from fastnum.train import CHECKPOINT

    out = getattr(args, "out", None)
    if out and (Path(out) / CHECKPOINT).is_file():
        return f"; continue with the same options plus --resume --out {out}"
    return ""


def _fail(args, exc, prefix="error"):
    if getattr(args, "verbose", False):
        traceback.print_exc()
    message = " ".join(_as_options(str(exc)).split())  # always one line
    print(f"fastnum {getattr(args, 'command', '')}: {prefix}: {message}", file=sys.stderr)


def main(argv=None):
    """Run the ``fastnum`` command line and return its exit code.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 success, 1 diverged or gradient check failed, 2 bad input,
        130 interrupted.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help and usage errors: return the code instead of exiting
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except TrainingDivergedError as exc:
        _fail(args, exc, "diverged")
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\nfastnum {args.command}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, OSError, ImportError) as exc:
        _fail(args, exc)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
