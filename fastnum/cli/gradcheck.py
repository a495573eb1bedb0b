"""``fastnum gradcheck``: backprop against the numerical gradient, for fastnum's nets or yours."""

from __future__ import annotations

import argparse

from fastnum._validate import check_int, check_positive
from fastnum.cli._exits import EXIT_FAILED, EXIT_OK, EXIT_REFUSED
from fastnum.cli._model import build_model, load_params_into, read_npz
from fastnum.cli._options import DEFAULTS, add_backend_options, layer_widths, say_backend
from fastnum.convnet import CONV_CHECK
from fastnum.gradcheck import DEFAULT_ATOL, DEFAULT_RTOL, METHODS
from fastnum.train import ACTIVATIONS

#: Library names whose option stores under another name: gradcheck(rtol=...) is --tol,
#: the networks' hidden_size is --hidden.
ALIASES = {"rtol": "tol", "hidden_size": "hidden"}

#: Networks that ``fastnum gradcheck --net`` builds; the last two are convolutional.
NETS = ("two-layer", "multilayer", "simpleconv", "deepconv")
CONV_NETS = ("simpleconv", "deepconv")

_EPILOG = """\
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
  fastnum gradcheck --net deepconv --batch-size 2     # chapter 8's network (seconds)
  fastnum gradcheck --model ch05/two_layer_net.py:TwoLayerNet \\
      --model-args '{"input_size": 784, "hidden_size": 50, "output_size": 10}' --first 3
  fastnum gradcheck --params runs/bp/params.npz --hidden 50 --no-log-guard
  fastnum gradcheck --model my_net.py:MultiLayerNetExtend --model-args '...' --fast
"""


def add_parser(sub):
    """Add ``gradcheck`` and its options to the subcommands ``sub``; return its parser."""
    p = sub.add_parser(
        "gradcheck",
        help="check backprop against the numerical gradient",
        description="Compare backprop with the numerical gradient, element by "
        "element, for fastnum's networks or your own class.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    net = p.add_argument_group("network")
    net.add_argument(
        "--net",
        choices=NETS,
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
        help="hidden units of --net two-layer (default: 10), simpleconv (default: "
        "the book's 100) or deepconv (default: the book's 50)",
    )
    net.add_argument(
        "--hidden-sizes",
        type=layer_widths,
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
        f"{DEFAULTS.weight_init_std}; {CONV_CHECK.weight_init_std} for "
        "--net simpleconv, see below; --net deepconv takes He's, as the book)",
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
        "(convolutional models; implied by --net simpleconv and deepconv)",
    )
    data.add_argument(
        "--one-hot", action="store_true", help="pass one-hot labels rather than integers"
    )
    check = p.add_argument_group("check")
    check.add_argument(
        "--h",
        type=float,
        help=f"central-difference step (default: {DEFAULTS.h}; {CONV_CHECK.h} "
        "for --net simpleconv and deepconv)",
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
    add_backend_options(p)
    return p


def run(args):
    """Check the network of the options on MNIST images; the exit code is the verdict."""
    import numpy as np

    from fastnum.data import load_mnist
    from fastnum.gradcheck import gradcheck

    # Checked before the slow MNIST load, as gradcheck() checks them.
    defaults = f"defaults: --tol {DEFAULT_RTOL:g}, --atol {DEFAULT_ATOL:g}"
    check_positive("--tol", args.tol, defaults, allow_zero=True)
    check_positive("--atol", args.atol, defaults, allow_zero=True)
    check_int("--seed", args.seed, 0, "a non-negative integer such as 0.")
    conv = args.net in CONV_NETS and not args.model  # fastnum's own CNNs
    if conv and args.net == "deepconv" and args.weight_init_std is not None:
        raise ValueError(
            f"--weight-init-std {args.weight_init_std:g} does not apply to --net deepconv: "
            "its weights take He's std sqrt(2 / fan_in), as the book's DeepConvNet; "
            "leave the option out."
        )
    if conv:
        from fastnum._jit import JIT_ENABLED

        if not JIT_ENABLED:  # before the slow MNIST load
            n_params = {"simpleconv": "433,890", "deepconv": "123,552"}[args.net]
            raise ValueError(
                f"--net {args.net} needs numba's compiled engine: without it each of "
                f"the {n_params} parameters costs two NumPy loss evaluations, hours "
                "per check. Install numba (and unset NUMBA_DISABLE_JIT)."
            )
    if args.verbose:
        say_backend(args)
    # The reader's files first: their errors should not wait for the MNIST load.
    model = build_model(args) if args.model else None
    stored = read_npz(args.params) if args.params else None
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
    # Per-network defaults: the conv nets are checked off the kinks of relu and pooling.
    defaults = CONV_CHECK if conv else DEFAULTS
    if args.weight_init_std is None:
        args.weight_init_std = defaults.weight_init_std
    if args.h is None:
        args.h = defaults.h
    net = model if model is not None else _network(args, x_train.shape[1])
    if stored is not None:
        load_params_into(net, stored, args.params)
    what = args.model or f"--net {args.net}"
    print(f"checking {what} on {len(x)} MNIST training images")
    result = gradcheck(  # its errors name its parameters: main() spells them as options
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
        print(CONV_CHECK.why if args.net == "simpleconv" else DEEPCONV_WHY)
    return {"PASS": EXIT_OK, "FAIL": EXIT_FAILED}.get(result.verdict, EXIT_REFUSED)


#: Why --net deepconv is checked with random biases and a small step (printed after its report).
DEEPCONV_WHY = (
    f"DeepConvNet is checked with its He-initialised weights, biases drawn N(0, "
    f"{CONV_CHECK.bias_std}) and h={CONV_CHECK.h:g}: at the book's zero biases and "
    "h=1e-4, relu units and\npooling windows sit on or within h of their kinks, where "
    "the central difference and backprop\nlegitimately differ."
)


def _network(args, input_size):
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

    if args.net == "deepconv":
        from fastnum.deepconv import DeepConvNet

        return off_the_kinks(
            DeepConvNet(
                hidden_size=args.hidden or 50,
                seed=args.seed,
                backend=args.backend,
                strategy=args.strategy,
            ),
            seed=args.seed,
        )
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
