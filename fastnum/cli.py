"""The ``fastnum`` command: ``fastnum train`` and ``fastnum gradcheck``.

Run it as ``fastnum ...`` once installed, or as ``python -m fastnum.cli ...``.
Bad input and training failures end with one line on stderr, never a traceback
(``--verbose`` adds the traceback for debugging).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
import traceback
from pathlib import Path

from fastnum._validate import check_int, check_positive
from fastnum.backend import BACKEND_ENV, BACKENDS, STRATEGIES, describe_backend, resolve_backend
from fastnum.convnet import CONV_CHECK
from fastnum.gradcheck import DEFAULT_ATOL, DEFAULT_RTOL, METHODS
from fastnum.rundir import CHECKPOINT
from fastnum.train import (
    ACTIVATIONS,
    GRADS,
    NETS,
    OPTIMIZER_NAMES,
    SGD_LR,
    WEIGHT_INIT_NAMES,
    TrainConfig,
    TrainingDivergedError,
    run_backend,
)

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
removes it.  Exit code 0 pass, 1 fail, 2 bad option or input.

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
    # gradcheck()'s arguments
    "rtol": "--tol",
    "atol": "--atol",
    "workers": "--workers",
    "directions": "--directions",
    "worst": "--worst",
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
        help="numerical: central differences as in chapter 4 (slow); backprop: "
        "chapter 5's analytic gradient (fast) (default: %(default)s)",
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
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # pickling for worker processes finds it here
    sys.path.insert(0, str(file.resolve().parent))  # the file's own imports (e.g. common/)
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(file.resolve().parent))
    try:
        import cloudpickle

        cloudpickle.register_pickle_by_value(module)  # Dask workers cannot import it
    except ImportError:  # pragma: no cover - cloudpickle comes with dask
        pass
    if not isinstance(getattr(module, name, None), type):
        raise ValueError(f"--model: {path} defines no class {name!r}.")
    return getattr(module, name)


def _gradcheck_net(args, input_size):
    """The network to check: --model's class or one of fastnum's (--net)."""
    import json

    import numpy as np

    if args.model:
        try:
            kwargs = json.loads(args.model_args)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"--model-args is not valid JSON ({exc}); write e.g. "
                '\'{"input_size": 784, "hidden_size": 50}\''
            ) from None
        if not isinstance(kwargs, dict):
            raise ValueError("--model-args must be a JSON object of keyword arguments.")
        cls = _load_model_class(args.model)
        np.random.seed(args.seed)  # noqa: NPY002 - the book's classes draw from it
        return cls(**kwargs)
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


def _load_params_into(net, path):
    """Copy FILE.npz's arrays into net.params in place (layers keep pointing at them)."""
    import numpy as np

    from fastnum._validate import as_shaped_params

    with np.load(path) as data:
        stored = {name: data[name] for name in data.files}
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
    net = _gradcheck_net(args, x_train.shape[1])
    if args.params:
        _load_params_into(net, args.params)
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
    )
    print(result.report(worst=args.worst))
    if conv:
        print(CONV_CHECK.why)
    return EXIT_OK if result.passed else EXIT_FAILED


def _resume_hint(args):
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
        if hasattr(args, "backend"):  # --backend, else $FASTNUM_BACKEND: refused before any work
            resolve_backend(args.backend)
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
