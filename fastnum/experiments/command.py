"""The command line every experiment shares, written once: options, output folder, errors.

An experiment module describes itself with an :class:`Experiment` and ends with::

    def main(argv=None):
        return command.main(EXPERIMENT, argv)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastnum.experiments.output import write_summary


@dataclass(frozen=True)
class Experiment:
    """One experiment: its names, its two settings and the function that runs it.

    ``run(settings, out, scheduler, data_dir)`` runs the grid, writes its CSV and
    PNG files into ``out`` and returns ``(file names, summary body)``; the body is
    the markdown of ``summary.md`` below its title and command line.
    """

    name: str  # module name and output folder, e.g. "batch_size"
    title: str  # heading of summary.md
    description: str  # first line of --help
    full: dict
    quick: dict
    run: Callable[[dict, Path, object, str | None], tuple[list[str], str]]

    @property
    def module(self):
        """``fastnum.experiments.<name>``: what ``python -m`` runs."""
        return f"fastnum.experiments.{self.name}"


def parser(experiment):
    """The command-line options every experiment shares.

    Returns
    -------
    argparse.ArgumentParser
        With ``--quick``, ``--out``, ``--scheduler``, ``--data-dir``.
    """
    name = experiment.name
    p = argparse.ArgumentParser(
        prog=f"python -m {experiment.module}", description=experiment.description
    )
    p.add_argument(
        "--quick", action="store_true", help="small settings that finish in seconds (what CI runs)"
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help=f"output folder (default: docs/experiments/{name}, or "
        f"runs/experiments/{name}-quick with --quick; both relative to the "
        "current folder)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the grid on this Dask scheduler (tcp://host:8786), or 'local' for "
        "an in-process one; needs pip install 'fastnum[distributed]' "
        "(default: run here, one run after the other)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the four MNIST .gz files on every machine that runs "
        "(default: $FASTNUM_MNIST_DIR, else fastnum's cache)",
    )
    return p


def default_out(args, name):
    """``--out``, else ``runs/experiments/<name>-quick`` or ``docs/experiments/<name>``."""
    if args.out is not None:
        return args.out
    return (
        Path("runs/experiments") / f"{name}-quick"
        if args.quick
        else Path("docs/experiments") / name
    )


def main(experiment, argv=None):
    """Parse ``argv``, run ``experiment`` and write its files and ``summary.md``.

    Returns
    -------
    int
        0, or 2 after a ValueError (bad settings, missing MNIST), ImportError (no
        Dask) or OSError (files, the Dask connection), reported as one line on
        stderr instead of a traceback.
    """
    args = parser(experiment).parse_args(argv)
    settings = experiment.quick if args.quick else experiment.full
    out = default_out(args, experiment.name)
    command = f"python -m {experiment.module}" + (" --quick" if args.quick else "")
    start = time.perf_counter()
    try:
        files, body = experiment.run(settings, out, args.scheduler, args.data_dir)
        write_summary(
            out / "summary.md", experiment.title, command, time.perf_counter() - start, body
        )
    except (ValueError, ImportError, OSError) as err:
        print(f"{experiment.module}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}/{', '.join([*files, 'summary.md'])}")
    return 0
