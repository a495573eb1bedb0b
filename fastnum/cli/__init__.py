"""The ``fastnum`` command: ``fastnum train``, ``fastnum gradcheck`` and ``fastnum warmup``.

Run it as ``fastnum ...`` once installed, or as ``python -m fastnum ...``.
Bad input, errors raised by a ``--model``'s own code and training failures end with
one line on stderr, never a traceback (``--verbose`` adds the traceback for debugging).
Exit codes: 0 success, 1 training diverged or gradient check failed, 2 bad option,
input or an error in the ``--model``'s code, 3 no verdict possible (the loss is not
deterministic or moved the parameters), 130 interrupted, 143 terminated (SIGTERM, which
``fastnum train`` turns into a clean stop: its run folder is unlocked, not left stale).

Each subcommand is one module of this package, listed in :data:`COMMANDS`, with
``add_parser(subparsers)`` (returns its parser), ``run(args)`` (returns the exit code)
and, optionally, ``ALIASES``: library parameter names whose option is spelled
otherwise (``{"rtol": "tol"}``), so that errors name the option the user typed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

from fastnum._validate import spelled
from fastnum.backend import resolve_backend
from fastnum.cli._exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    Terminated,
)
from fastnum.cli._options import OptionSpelling
from fastnum.gradcheck._errors import GradcheckRefusedError, UserCodeError
from fastnum.rundir import CHECKPOINT
from fastnum.train import TrainingDivergedError

__all__ = [
    "COMMANDS",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

#: The subcommands, in the order ``fastnum --help`` lists them: modules of this package.
COMMANDS = ("train", "gradcheck", "warmup")

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
  fastnum warmup                           compile every kernel once (images, clusters)

exit codes: 0 success, 1 training diverged or gradient check failed,
2 bad option or input, or an error raised by --model's own code,
3 no verdict possible (gradcheck: the loss is not deterministic or moved the
parameters), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM: train stops
cleanly, its --out folder unlocked and resumable).
Run `fastnum COMMAND --help` for the options of each command.
"""


def build_parser():
    """Build the ``fastnum`` argument parser.

    Returns
    -------
    argparse.ArgumentParser
        With the subcommands of :data:`COMMANDS`; each sets ``func`` (its ``run``)
        and ``spelling`` (its options, for error messages).
    """
    parser = argparse.ArgumentParser(
        prog="fastnum",
        description="The numerical-gradient MNIST training of 'Deep Learning from Scratch' "
        "chapter 4, at practical speed with numba kernels.",
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        command = importlib.import_module(f"{__name__}.{name}")
        p = command.add_parser(sub)
        aliases = getattr(command, "ALIASES", None)
        p.set_defaults(func=command.run, spelling=OptionSpelling(p, aliases))
    return parser


def _resume_hint(args):
    """How to continue an interrupted ``train`` whose --out holds a checkpoint, else ""."""
    out = getattr(args, "out", None)
    if out and (Path(out) / CHECKPOINT).is_file():
        return f"; continue with the same options plus --resume --out {out}"
    return ""


def _fail(args, exc, prefix="error"):
    """Print ``exc`` as one line on stderr, the traceback too with --verbose."""
    if getattr(args, "verbose", False):
        traceback.print_exc()
    # A library message names Python parameters: spelled as this subcommand's options.
    message = spelled(exc, args.spelling)
    message = " ".join(message.split())  # always one line
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
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"\nfastnum {args.command}: {what}{_resume_hint(args)}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except (ValueError, TypeError, OSError, ImportError) as exc:
        _fail(args, exc)
        return EXIT_USAGE
