"""What every experiment writes: CSV tables, figures and the ``summary.md`` around its findings."""

from __future__ import annotations

import csv
import math
import os
import platform
from pathlib import Path

from fastnum._format import format_duration
from fastnum._io import atomic_open, save_png, write_text
from fastnum.plots import new_figure

__all__ = ["figure", "machine_info", "save_png", "write_csv", "write_summary"]

#: Inches of one panel of an experiment's figure (the panels sit side by side).
PANEL_SIZE = (5.0, 3.8)


def _cell(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else format(value, ".6g")
    if isinstance(value, list | tuple):
        return "-".join(str(v) for v in value)
    return "" if value is None else value


def write_csv(path, rows, columns):
    """Write ``rows`` (dicts) to ``path`` as CSV, atomically.

    Parameters
    ----------
    path : str or Path
    rows : iterable of dict
        Keys not in ``columns`` are ignored; missing ones are left empty.
    columns : sequence of str
        Header, in order.

    Returns
    -------
    Path
        ``path``.  Floats are written with 6 significant digits, NaN and None
        as empty cells, sequences joined with ``-`` (hidden sizes ``100-50``).
    """
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
    return path


def figure(ncols, panel_size=PANEL_SIZE):
    """An experiment's figure: ``ncols`` panels side by side, constrained layout.

    Returns
    -------
    (Figure, list of Axes)
    """
    return new_figure(ncols, panel_size=panel_size, layout="constrained")


def machine_info():
    """One line describing where the experiment ran: CPUs, backend, numba threads.

    Returns
    -------
    str
    """
    from fastnum.backend import describe_backend, resolve_backend

    return (
        f"{platform.machine()} with {os.cpu_count()} logical CPUs, "
        f"Python {platform.python_version()}, {describe_backend(resolve_backend(None))}"
    )


def write_summary(path, title, command, seconds, body):
    """Write an experiment's ``summary.md``: title, how it ran, then ``body`` (its findings).

    Parameters
    ----------
    path : str or Path
    title : str
        The heading.
    command : str
        The command line that made the files.
    seconds : float
        Its wall time.
    body : str
        Markdown: settings, table and what the numbers show.

    Returns
    -------
    Path
        ``path``.
    """
    text = (
        f"# {title}\n\nCommand: `{command}` — took {format_duration(seconds)} on "
        f"{machine_info()}.\n\n{body.strip()}\n"
    )
    write_text(path, text)
    return Path(path)
