"""The benchmark report: ``report.md``, ``speedups.png`` and ``results.json`` from one run.

Reads what the suite writes (a pytest-benchmark JSON, whose ``machine_info`` and
``fastnum`` sections come from ``benchmarks/conftest.py``) or an earlier
``results.json`` of the report.  Measures nothing: ``scripts/bench_report.py`` runs the
measurements and calls :func:`trim` and :func:`render`.

One job per module, all reachable from here under their old names:

- :mod:`benchmarks.report_data`: the data model (results file, timed rows,
  implementations and their roles, the training-run extrapolation);
- :mod:`benchmarks.report_markdown`: the markdown text;
- :mod:`benchmarks.report_plot`: the PNG figure.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.report_data import (
    BOOK,
    BOOK_ITERS,
    MD_NAME,
    PNG_NAME,
    RESULTS_FORMAT,
    RESULTS_NAME,
    STAT_KEYS,
    Impl,
    Row,
    arch_key,
    catalog,
    cost_vs_yardstick,
    evaluations,
    extrapolate,
    load,
    lookup,
    max_threads,
    reference_of,
    rows_from,
    speedup_vs_reference,
    trim,
    with_role,
)
from benchmarks.report_markdown import (
    OP_NOTES,
    blas_threads,
    busy_warning,
    compile_lines,
    fmt_ratio,
    fmt_seconds,
    headline,
    legend_lines,
    markdown,
    network_compile_lines,
    one_iteration,
    op_table,
    skipped_lines,
    thread_table,
    training_lines,
)
from benchmarks.report_plot import ROLE_COLORS, colors, plot, speedup_axis, time_axis
from fastnum._io import write_text

__all__ = [
    "BOOK",
    "BOOK_ITERS",
    "MD_NAME",
    "OP_NOTES",
    "PNG_NAME",
    "RESULTS_FORMAT",
    "RESULTS_NAME",
    "ROLE_COLORS",
    "STAT_KEYS",
    "Impl",
    "Row",
    "arch_key",
    "blas_threads",
    "busy_warning",
    "catalog",
    "colors",
    "compile_lines",
    "network_compile_lines",
    "cost_vs_yardstick",
    "evaluations",
    "extrapolate",
    "fmt_ratio",
    "fmt_seconds",
    "headline",
    "legend_lines",
    "load",
    "lookup",
    "markdown",
    "max_threads",
    "one_iteration",
    "op_table",
    "plot",
    "reference_of",
    "render",
    "rows_from",
    "skipped_lines",
    "speedup_axis",
    "speedup_vs_reference",
    "thread_table",
    "time_axis",
    "training_lines",
    "trim",
    "with_role",
]


def render(results, out_dir):
    """Write ``report.md``, ``speedups.png`` and ``results.json`` into ``out_dir`` (atomically).

    Returns
    -------
    pathlib.Path
        The markdown report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / RESULTS_NAME, json.dumps(results, indent=1) + "\n")
    plot(results, out / PNG_NAME)
    md = out / MD_NAME
    write_text(md, markdown(results))
    return md
