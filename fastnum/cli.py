"""The ``fastnum`` command: ``fastnum train`` and ``fastnum gradcheck``.

Run it as ``fastnum ...`` once installed, or as ``python -m fastnum.cli ...``.
Bad input, errors raised by a ``--model``'s own code and training failures end with
one line on stderr, never a traceback (``--verbose`` adds the traceback for debugging).
Exit codes: 0 success, 1 training diverged or gradient check failed, 2 bad option,
input or an error in the ``--model``'s code, 3 no verdict possible (the loss is not
deterministic or moved the parameters), 130 interrupted, 143 terminated (SIGTERM, which
``fastnum train`` turns into a clean stop: its run folder is unlocked, not left stale).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import re
import shlex
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from fastnum._validate import check_int, check_positive
from fastnum.backend import BACKEND_ENV, BACKENDS, STRATEGIES, describe_backend, resolve_backend
from fastnum.convnet import CONV_CHECK
from fastnum.gradcheck import DEFAULT_ATOL, DEFAULT_RTOL, METHODS
from fastnum.gradcheck._errors import GradcheckRefusedError, UserCodeError, describe_exception
from fastnum.rundir import CHECKPOINT
from fastnum.train import (
    ACTIVATIONS,
    GRADS,
    NETS,
    OPTIMIZER_NAMES,
    SGD_LR,
    SPSA_DISTRIBUTIONS,
    WEIGHT_INIT_NAMES,
    TrainConfig,
    TrainingDivergedError,
    run_backend,
)

__all__ = ["build_parser", "main"]

# 1 is a verdict ("the check failed"), never an error; 3 says no verdict was possible.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, as a shell reports a process SIGTERM ended

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
2 bad option or input, or an error raised by --model's own code,
3 no verdict possible (gradcheck: the loss is not deterministic or moved the
parameters), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM: train stops
cleanly, its --out folder unlocked and resumable).
Run `fastnum COMMAND --help` for the options of each command.
"""

_TRAIN_EPILOG = """\
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
  fastnum train --grad backprop --optimizer adam --hidden-sizes 100,100 --activation relu \
      --weight-init-std he --out runs/adam    chapter 6: Adam (lr 0.001) and He initialisation
  fastnum train --net simpleconv --hidden 100 --iters 600 --out runs/conv
                                           the book's chapter 7 CNN, one epoch
"""

_GRADCHECK_EPILOG = """\
Compares the numerical gradient (central differences) with backprop, element by
element, on MNIST training images: |num - bp| <= atol + rtol * |bp| passes.  It
prints per parameter the book's figure (mean |backprop - numerical|, as the book's
gradient_check.py prints), the max absolute and relative error, and the worst
elements of a failing parameter.  The book's 1e-7 guard inside log() shifts the
numerical gradient by ~1e-6 relative, hence the default --tol 1e-05 (plus a slack
for gradients that cancel over the batch, stated in the report); --no-log-guard
removes it.

exit codes: 0 pass; 1 fail; 2 bad option or input, or --model's own code raised
(on import, in its constructor, loss or gradient, or a worker process died);
3 no verdict possible: two evaluations of the loss at the same parameters
disagree (noise, dropout drawing from its own generator) or the loss moved the
parameters; 130 interrupted.

--model checks your own class: any object with params (a dict of arrays that
loss reads in place), loss(x, t) and gradient(x, t), as the book writes them.
Stacks of the book's layers (Affine, Relu, Sigmoid, ...) are computed by fastnum's
kernels; anything else through its own loss on all cores (or --scheduler).

examples:
  fastnum gradcheck
  fastnum gradcheck --first 3 --net multilayer --hidden-sizes 50,50 --activation relu
  fastnum gradcheck --model ch05/two_layer_net.py:TwoLayerNet \\
      --model-args '{"input_size": 784, "hidden_size": 50, "output_size": 10}' --first 3
  fastnum gradcheck --params runs/bp/params.npz --hidden 50 --no-log-guard
  fastnum gradcheck --model my_net.py:MultiLayerNetExtend --model-args '...' --fast
"""

# Library names in error messages -> the options a CLI user types.
_OPTION_NAMES = {
    "batch_size": "--batch-size",
    "hidden_size": "--hidden",
    "weight_init_std": "--weight-init-std",
    "train_size": "--train-size",
    "test_size": "--test-size",
    "out_dir": "--out",
    "data_dir": "--data-dir",
    "lr": "--lr",
    "optimizer": "--optimizer",
    "momentum": "--momentum",
    "decay_rate": "--decay-rate",
    "beta1": "--beta1",
    "beta2": "--beta2",
    "h": "--h",
    "iters": "--iters",
    "seed": "--seed",
    "threads": "--threads",
    "grad": "--grad",
    "strategy": "--strategy",
    "tol": "--tol",
    "hidden_sizes": "--hidden-sizes",
    "activation": "--activation",
    "spsa_distribution": "--spsa-dist",
    # gradcheck()'s arguments
    "rtol": "--tol",
    "atol": "--atol",
    "workers": "--workers",
    "directions": "--directions",
    "worst": "--worst",
    "probe_seconds": "--probe-seconds",
    "fallback_seconds": "--fallback-seconds",
}
# Phrases rewritten as they stand: "method" alone is too common a word to rewrite.
_OPTION_PHRASES = {"method='engine'": "--method engine"}
# Whole words only, and never inside a path such as runs/seed/history.json.
_OPTION_RE = re.compile(r"(?<![\w\-/.])(" + "|".join(_OPTION_NAMES) + r")(?![\w\-/])")
# A Python tuple of layer widths, ``hidden_sizes=(100, 50)``: the CLI spells it ``100,50``.
_WIDTHS_RE = re.compile(r"(?<![\w\-/.])hidden_sizes=\(\s*(\d+(?:\s*,\s*\d+)*)\s*,?\s*\)")


def _as_options(message):
    """Rewrite ``lr=0`` / ``batch_size 100`` in a message as ``--lr=0`` / ``--batch-size 100``.

    Library errors name the Python argument; a CLI user needs the option to change,
    written as the parser accepts it (``hidden_sizes=(50,)`` becomes ``--hidden-sizes 50``).
    """
    message = _WIDTHS_RE.sub(lambda m: "hidden_sizes " + re.sub(r"\s", "", m.group(1)), message)
    for phrase, option in _OPTION_PHRASES.items():
        message = message.replace(phrase, option)
    return _OPTION_RE.sub(lambda m: _OPTION_NAMES[m.group(1)], message)


def _layer_widths(text):
    """Parse ``--hidden-sizes 100,50`` into ``(100, 50)``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of layer widths; write e.g. 100,50"
        ) from None


def _init_std(text):
    """Parse ``--weight-init-std``: a number, or a name that TrainConfig checks."""
    try:
        return float(text)
    except ValueError:
        return text


def _add_optimizer_options(p):
    d = _DEFAULTS
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


def _add_backend_options(p):
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="where the network runs: numba kernels, the NumPy reference, or auto "
        f"(numba when it compiles) (default: ${BACKEND_ENV}, else auto)",
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=_DEFAULTS.strategy,
        help="numba numerical gradient: delta reuses cached activations, full reruns "
        "the forward pass per perturbation (default: %(default)s)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the four MNIST .gz files (default: $FASTNUM_MNIST_DIR, "
        "else the cache folder, downloading if needed)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the backend chosen and the settings; tracebacks on errors",
    )


def _add_train_parser(sub):
    d = _DEFAULTS
    p = sub.add_parser(
        "train",
        help="train the two-layer network on MNIST (the book's 4.5)",
        description="Train the book's TwoLayerNet on MNIST with minibatch SGD (or an "
        "--optimizer of chapter 6). Defaults are the book's: 10000 iterations, batch 100, "
        "lr 0.1, 50 hidden units, numerical gradients.",
        epilog=_TRAIN_EPILOG,
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
        help="dense: the book's TwoLayerNet (a MultiLayerNet with --hidden-sizes); "
        "simpleconv: the book's chapter 7 SimpleConvNet on 28x28 images "
        "(default: %(default)s)",
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
        type=_layer_widths,
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
        "--weight-init-std",
        type=_init_std,
        default=d.weight_init_std,
        metavar="STD",
        help="std of the Gaussian initial weights, or per layer by name: "
        f"{'/'.join(WEIGHT_INIT_NAMES[:2])} sqrt(2/n_in), "
        f"{'/'.join(WEIGHT_INIT_NAMES[2:])} sqrt(1/n_in) (default: %(default)s)",
    )
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
    _add_backend_options(p)
    p.set_defaults(func=_cmd_train)


#: Networks that ``fastnum gradcheck --net`` builds; simpleconv needs fastnum.convnet.
GRADCHECK_NETS = ("two-layer", "multilayer", "simpleconv")


def _add_gradcheck_parser(sub):
    p = sub.add_parser(
        "gradcheck",
        help="check backprop against the numerical gradient",
        description="Compare backprop with the numerical gradient, element by "
        "element, for fastnum's networks or your own class.",
        epilog=_GRADCHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    net = p.add_argument_group("network")
    net.add_argument(
        "--net",
        choices=GRADCHECK_NETS,
        default="two-layer",
        help="fastnum network to check (default: %(default)s)",
    )
    net.add_argument(
        "--model",
        metavar="FILE.py:CLASS",
        help="check your own class instead, e.g. two_layer_net.py:TwoLayerNet",
    )
    net.add_argument(
        "--model-args",
        metavar="JSON",
        default="{}",
        help="keyword arguments of --model's constructor, as a JSON object",
    )
    net.add_argument(
        "--params",
        metavar="FILE.npz",
        help="load the parameters (e.g. params.npz of `fastnum train`) into the "
        "network instead of its fresh initialisation",
    )
    net.add_argument(
        "--hidden",
        type=int,
        metavar="N",
        help="hidden units of --net two-layer (default: 10) or simpleconv (default: "
        "the book's 100)",
    )
    net.add_argument(
        "--hidden-sizes",
        type=_layer_widths,
        default=(10, 10),
        metavar="W1,W2,...",
        help="hidden layer widths of --net multilayer (default: 10,10)",
    )
    net.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default="sigmoid",
        help="activation of --net multilayer (default: %(default)s)",
    )
    net.add_argument(
        "--weight-init-std",
        type=float,
        metavar="STD",
        help=f"std of the Gaussian initial weights (default: "
        f"{_DEFAULTS.weight_init_std}; {CONV_CHECK.weight_init_std} for "
        "--net simpleconv, see below)",
    )
    net.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the weights (NumPy's global generator too, for book-style "
        "classes) and of the choice of images (default: %(default)s)",
    )
    data = p.add_argument_group("batch")
    data.add_argument(
        "--batch-size",
        type=int,
        default=3,
        metavar="N",
        help="random MNIST training images in the batch (default: %(default)s)",
    )
    data.add_argument(
        "--first",
        type=int,
        metavar="N",
        help="use the first N training images instead, as the book does (3)",
    )
    data.add_argument(
        "--image",
        action="store_true",
        help="pass images as (N, 1, 28, 28) rather than flat 784-vectors "
        "(convolutional models; implied by --net simpleconv)",
    )
    data.add_argument(
        "--one-hot", action="store_true", help="pass one-hot labels rather than integers"
    )
    check = p.add_argument_group("check")
    check.add_argument(
        "--h",
        type=float,
        help=f"central-difference step (default: {_DEFAULTS.h}; {CONV_CHECK.h} "
        "for --net simpleconv)",
    )
    check.add_argument(
        "--tol",
        type=float,
        default=DEFAULT_RTOL,
        metavar="RTOL",
        help="relative tolerance per element (default: %(default)s); the log "
        "guard's effect in cancelling gradients gets its own slack",
    )
    check.add_argument(
        "--atol",
        type=float,
        default=DEFAULT_ATOL,
        help="absolute tolerance per element (default: %(default)s)",
    )
    check.add_argument(
        "--no-log-guard",
        action="store_true",
        help="evaluate the loss without the book's 1e-7 guard on the numerical "
        "side, so a correct backprop agrees to ~1e-9",
    )
    check.add_argument(
        "--fast",
        action="store_true",
        help="check random directions first (2 loss evaluations each); every "
        "element only when one fails",
    )
    check.add_argument(
        "--directions",
        type=int,
        default=4,
        metavar="K",
        help="random directions of --fast (default: %(default)s)",
    )
    check.add_argument(
        "--fallback-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="--fast falls back to every element only when that takes at most S seconds "
        "(default: %(default)s)",
    )
    check.add_argument(
        "--probe-seconds",
        type=float,
        default=120.0,
        metavar="S",
        help="time for resolving the elements that fail at h (smaller steps, one-sided "
        "slopes); elements left unprobed make the verdict INCONCLUSIVE, exit 3 "
        "(default: %(default)s)",
    )
    check.add_argument(
        "--richardson",
        action="store_true",
        help="also take step h/2, extrapolate, and estimate the truncation error",
    )
    check.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="engine: fastnum's kernels on a stack of the book's layers; "
        "generic: the network's own loss; auto picks (default: %(default)s)",
    )
    check.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes for the generic path (default: all cores)",
    )
    check.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the generic path on a Dask cluster, e.g. tcp://host:8786 "
        "('local' starts one in this process)",
    )
    check.add_argument(
        "--worst",
        type=int,
        default=3,
        metavar="K",
        help="worst elements shown per failing parameter (default: %(default)s)",
    )
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
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        _say_backend(args, run_backend(config))
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
    )
    if not args.quiet:
        seconds = result.timings["total_seconds"]
        print(
            f"done: {config.iters} iterations in {seconds:.1f} s; final train acc "
            f"{result.final_train_acc:.4f}, test acc {result.final_test_acc:.4f}; "
            f"outputs in {out}"
        )
    return EXIT_OK


class _VerbatimError(ValueError):
    """Bad input whose message quotes the user's own names: printed as it is, exit 2.

    ``_as_options`` would turn a ``hidden_size`` key of a --model-args example into
    ``--hidden``, which the reader's class does not take.
    """


def _where_in(file, exc):
    """`` (FILE, line N)`` of the deepest frame of ``exc`` inside ``file``, else ``""``."""
    import traceback as tb

    if isinstance(exc, SyntaxError):  # its message already names the file and line
        return ""
    target = file.resolve()
    lines = [f.lineno for f in tb.extract_tb(exc.__traceback__) if Path(f.filename) == target]
    return f" ({file.name}, line {lines[-1]})" if lines else ""


def _load_model_class(spec):
    """``path/to/file.py:ClassName`` -> the class, importing the file as a module."""
    import importlib.util

    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"--model {spec!r} must be FILE.py:CLASS, e.g. my_net.py:TwoLayerNet.")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--model file {path} does not exist.")
    module_name = f"fastnum_model_{file.stem}"
    # An absolute path, so that tracebacks (and _where_in) name the file wherever we run.
    module_spec = importlib.util.spec_from_file_location(module_name, file.resolve())
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # pickling for worker processes finds it here
    sys.path.insert(0, str(file.resolve().parent))  # the file's own imports (e.g. common/)
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # whatever the reader's file raises: one line
        del sys.modules[module_name]
        hint = ""
        if isinstance(exc, ModuleNotFoundError):
            hint = "; run fastnum from the folder the file's imports expect"
        raise _VerbatimError(
            f"--model {path} could not be imported: {describe_exception(exc)}"
            f"{_where_in(file, exc)}{hint}."
        ) from exc
    finally:
        sys.path.remove(str(file.resolve().parent))
    try:
        import cloudpickle

        cloudpickle.register_pickle_by_value(module)  # Dask workers cannot import it
    except ImportError:  # pragma: no cover - cloudpickle comes with dask
        pass
    if not isinstance(getattr(module, name, None), type):
        classes = sorted(
            k
            for k, v in vars(module).items()
            if isinstance(v, type) and v.__module__ == module_name
        )
        defined = f"; it defines {', '.join(classes)}" if classes else ""
        raise _VerbatimError(f"--model: {path} defines no class {name!r}{defined}.")
    return getattr(module, name)


# Values for the constructor arguments of the book's networks (and ones named like them),
# for a --model-args example when the argument has no default.
_BOOK_ARGS = {
    "input_size": 784,
    "hidden_size": 50,
    "output_size": 10,
    "hidden_size_list": [100, 100],
    "input_dim": [1, 28, 28],
    "weight_init_std": 0.01,
}


def _as_json(value):
    """``value`` as JSON text if JSON gives it back (tuples as arrays), else None."""

    def lists(v):
        if isinstance(v, tuple | list):
            return [lists(x) for x in v]
        if isinstance(v, dict):
            return {k: lists(x) for k, x in v.items()}
        return v

    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return text if json.loads(text) == lists(value) else None  # e.g. int dict keys


def _constructor(cls):
    """The keyword parameters of ``cls(...)`` and whether it takes ``**kwargs``, or None."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a class built in C)
        return None
    keywords = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return keywords, any(p.kind == p.VAR_KEYWORD for p in params)


def _model_args_example(cls):
    """``--model-args '{...}'`` for ``cls`` as valid JSON, and a note on placeholders."""
    ctor = _constructor(cls)
    if ctor is None or (not ctor[0] and ctor[1]):  # nothing to read: the book's names
        return f"--model-args {shlex.quote(json.dumps(_BOOK_ARGS))}", ""
    fields, placeholders = [], []
    for p in ctor[0]:
        if p.default is p.empty:
            if p.name in _BOOK_ARGS:
                fields.append(f"{json.dumps(p.name)}: {json.dumps(_BOOK_ARGS[p.name])}")
            else:
                fields.append(f"{json.dumps(p.name)}: 0")
                placeholders.append(p.name)
        elif (default := _as_json(p.default)) is not None:
            fields.append(f"{json.dumps(p.name)}: {default}")
        # A default JSON cannot hold (an object, NaN) is left out: the class keeps it.
    example = f"--model-args {shlex.quote('{' + ', '.join(fields) + '}')}"
    note = f" (0 stands for your value of {', '.join(placeholders)})" if placeholders else ""
    return example, note


def _model_kwargs(cls, text):
    """--model-args parsed and checked against ``cls``'s constructor."""
    example, note = _model_args_example(cls)
    write = f"write e.g. {example}{note}"
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _VerbatimError(f"--model-args {text!r} is not valid JSON ({exc}); {write}.") from None
    if not isinstance(kwargs, dict):
        raise _VerbatimError(
            f"--model-args must be a JSON object of {cls.__name__}'s keyword arguments, "
            f"not {type(kwargs).__name__} {text!r}; {write}."
        )
    ctor = _constructor(cls)
    if ctor is None:
        return kwargs
    names = [p.name for p in ctor[0]]
    unknown = [k for k in kwargs if k not in names]
    if unknown and not ctor[1]:
        accepted = ", ".join(names) if names else "no arguments"
        raise _VerbatimError(
            f"--model-args: {cls.__name__} takes no argument {', '.join(map(repr, unknown))}; "
            f"it accepts {accepted}; {write}."
        )
    missing = [p.name for p in ctor[0] if p.default is p.empty and p.name not in kwargs]
    if missing:
        raise _VerbatimError(
            f"--model-args lacks {', '.join(map(repr, missing))}, which {cls.__name__} needs "
            f"(no default); {write}."
        )
    return kwargs


def _build_model(args):
    """--model's class built with --model-args, NumPy's global generator seeded as the book's."""
    import numpy as np

    cls = _load_model_class(args.model)  # first: the --model-args example uses its names
    kwargs = _model_kwargs(cls, args.model_args)
    np.random.seed(args.seed)  # noqa: NPY002 - the book's classes draw from it
    try:
        return cls(**kwargs)
    except Exception as exc:  # the reader's constructor: one line, exit 2
        call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        if len(call) > 120:
            call = call[:117] + "..."
        file = Path(args.model.rpartition(":")[0])
        raise _VerbatimError(
            f"--model: {cls.__name__}({call}) raised {describe_exception(exc)}"
            f"{_where_in(file, exc)}."
        ) from exc


def _gradcheck_net(args, input_size):
    """The network of --net to check (fastnum's own)."""
    if args.net == "two-layer":
        from fastnum.network import TwoLayerNet

        return TwoLayerNet(
            input_size,
            args.hidden or 10,
            10,
            args.weight_init_std,
            seed=args.seed,
            backend=args.backend,
            strategy=args.strategy,
        )
    if args.net == "multilayer":
        from fastnum.multilayer import MultiLayerNet

        return MultiLayerNet(
            input_size,
            args.hidden_sizes,
            10,
            args.activation,
            args.weight_init_std,
            seed=args.seed,
            backend=args.backend,
            strategy=args.strategy,
        )
    from fastnum.convnet import SimpleConvNet, off_the_kinks

    return off_the_kinks(
        SimpleConvNet(
            hidden_size=args.hidden or 100,
            weight_init_std=args.weight_init_std,
            seed=args.seed,
            backend=args.backend,
            strategy=args.strategy,
        ),
        seed=args.seed,
    )


def _read_npz(path):
    """The named arrays of an .npz archive; one line saying what the file is otherwise."""
    import zipfile
    import zlib

    import numpy as np

    npz = str(Path(path).with_suffix(".npz"))  # np.savez adds .npz to any other name
    how = f"write one with np.savez({npz!r}, **net.params) (fastnum train writes params.npz)"
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except FileNotFoundError:
        raise _VerbatimError(f"--params {path} does not exist; {how}.") from None
    except OSError as exc:
        raise _VerbatimError(
            f"--params {path} cannot be read ({describe_exception(exc)})."
        ) from None
    if not head:
        what = "is empty"
    elif head == b"\x93NUMPY":
        what = "is a .npy file (one unnamed array)"
    elif not head.startswith(b"PK"):  # every zip archive, hence every .npz, starts so
        what = "is not a zip archive"
    else:
        what = None
    if what:
        raise _VerbatimError(f"--params {path} {what}: not an .npz archive of named arrays; {how}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise _VerbatimError(
            f"--params {path} is a damaged .npz archive ({describe_exception(exc)}); {how}."
        ) from exc


def _load_params_into(net, stored, path):
    """Copy FILE.npz's arrays ``stored`` into net.params in place (layers keep them)."""
    from fastnum._validate import as_shaped_params

    try:
        checked = as_shaped_params(stored, {name: v.shape for name, v in net.params.items()})
    except (KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        raise ValueError(
            f"--params {path}: {message} Build the same network (e.g. --hidden N)."
        ) from None
    for name, value in net.params.items():
        value[...] = checked[name]


def _cmd_gradcheck(args):
    import numpy as np

    from fastnum.data import load_mnist
    from fastnum.gradcheck import gradcheck

    # Checked before the slow MNIST load, as gradcheck() checks them.
    defaults = f"defaults: --tol {DEFAULT_RTOL:g}, --atol {DEFAULT_ATOL:g}"
    check_positive("--tol", args.tol, defaults, allow_zero=True)
    check_positive("--atol", args.atol, defaults, allow_zero=True)
    check_int("--seed", args.seed, 0, "a non-negative integer such as 0.")
    conv = args.net == "simpleconv" and not args.model  # fastnum's own CNN
    if conv:
        from fastnum._jit import JIT_ENABLED

        if not JIT_ENABLED:  # before the slow MNIST load
            raise ValueError(
                "--net simpleconv needs numba's compiled engine: without it each of "
                "the 433,890 parameters costs two NumPy loss evaluations, hours "
                "per check. Install numba (and unset NUMBA_DISABLE_JIT)."
            )
    if args.verbose:
        _say_backend(args)
    # The reader's files first: their errors should not wait for the MNIST load.
    model = _build_model(args) if args.model else None
    stored = _read_npz(args.params) if args.params else None
    (x_train, t_train), _ = load_mnist(data_dir=args.data_dir, one_hot_label=args.one_hot)
    if args.first is not None:
        if not 1 <= args.first <= len(x_train):
            raise ValueError(f"--first={args.first} must be between 1 and {len(x_train)}.")
        idx = np.arange(args.first)
    else:
        if not 1 <= args.batch_size <= len(x_train):
            raise ValueError(
                f"--batch-size={args.batch_size} must be between 1 and {len(x_train)}."
            )
        idx = np.random.default_rng(args.seed).choice(len(x_train), args.batch_size, replace=False)
    x, t = x_train[idx], t_train[idx]
    if args.image or conv:
        x = x.reshape(len(x), 1, 28, 28)
    # Per-network defaults: SimpleConvNet is checked off the kinks of relu and pooling.
    defaults = CONV_CHECK if conv else _DEFAULTS
    if args.weight_init_std is None:
        args.weight_init_std = defaults.weight_init_std
    if args.h is None:
        args.h = defaults.h
    net = model if model is not None else _gradcheck_net(args, x_train.shape[1])
    if stored is not None:
        _load_params_into(net, stored, args.params)
    what = args.model or f"--net {args.net}"
    print(f"checking {what} on {len(x)} MNIST training images")
    result = gradcheck(  # errors name gradcheck's arguments; _fail spells them as options
        net,
        x,
        t,
        h=args.h,
        rtol=args.tol,
        atol=args.atol,
        log_guard=not args.no_log_guard,
        fast=args.fast,
        directions=args.directions,
        seed=args.seed,
        method=args.method,
        workers=args.workers,
        scheduler=args.scheduler,
        richardson=args.richardson,
        worst=args.worst,
        probe_seconds=args.probe_seconds,
        fallback_seconds=args.fallback_seconds,
    )
    print(result.report(worst=args.worst))
    if conv:
        print(CONV_CHECK.why)
    return {"PASS": EXIT_OK, "FAIL": EXIT_FAILED}.get(result.verdict, EXIT_REFUSED)


def _resume_hint(args):
    out = getattr(args, "out", None)
    if out and (Path(out) / CHECKPOINT).is_file():
        return f"; continue with the same options plus --resume --out {out}"
    return ""


def _fail(args, exc, prefix="error"):
    if getattr(args, "verbose", False):
        traceback.print_exc()
    message = str(exc)
    if not isinstance(exc, _VerbatimError | UserCodeError):  # those quote the reader's names
        message = _as_options(message)
    message = " ".join(message.split())  # always one line
    print(f"fastnum {getattr(args, 'command', '')}: {prefix}: {message}", file=sys.stderr)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a job scheduler) arrived during ``fastnum train``."""


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends us at once
    raise _Terminated


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM raises :class:`_Terminated`: the run unwinds and releases run.lock.

    Python's default for SIGTERM ends the process on the spot, leaving run.lock behind, and
    the next run in the folder is refused for a stale lock that the user must delete.
    """
    if threading.current_thread() is not threading.main_thread():  # signals need it
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None):
    """Run the ``fastnum`` command line and return its exit code.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 success; 1 training diverged or the gradient check failed; 2 bad option or
        input, or the ``--model``'s own code raised (on import, in its constructor, loss
        or gradient, or a worker running it died); 3 no verdict possible
        (:class:`~fastnum.gradcheck._errors.GradcheckRefusedError`: the loss is not
        deterministic or moved the parameters); 130 interrupted; 143 terminated
        (SIGTERM during ``train``, which stops cleanly and unlocks its folder).  Every
        error is one line on stderr (``--verbose`` adds the traceback).
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help and usage errors: return the code instead of exiting
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if hasattr(args, "backend"):  # --backend, else $FASTNUM_BACKEND: refused before any work
            resolve_backend(args.backend)
        with _sigterm_unwinds() if args.command == "train" else contextlib.nullcontext():
            return args.func(args)
    except TrainingDivergedError as exc:
        _fail(args, exc, "diverged")
        return EXIT_FAILED
    except GradcheckRefusedError as exc:
        _fail(args, exc, "no verdict")
        return EXIT_REFUSED
    except UserCodeError as exc:
        _fail(args, exc)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
        print(f"\nfastnum {args.command}: {what}{_resume_hint(args)}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_INTERRUPTED
    except (ValueError, TypeError, OSError, ImportError) as exc:
        _fail(args, exc)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
