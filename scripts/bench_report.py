"""Run fastnum's benchmarks and write a report: markdown table, PNG plot and legend.

Usage::

    python scripts/bench_report.py --out bench-results           # full report, ~8 min
    python scripts/bench_report.py --out bench-results --quick   # fewer sizes, ~2.5 min
    python scripts/bench_report.py --from-json bench-results/results.json --out elsewhere

A run does three things, each in its own process or phase so that none disturbs
the others' figures:

1. the pytest-benchmark suite in ``benchmarks/`` (``--benchmark-enable``), whose
   JSON holds the steady-state medians (kernels compiled before timing);
2. ``scripts/compile_time.py``: the first call in a fresh process with a cold and
   a warm numba cache;
3. the book's training loop (``fastnum.train.train``, numerical gradient, numba)
   for ``--train-iters`` iterations, extrapolated to 10,000 (or all 10,000 with
   ``--full-run``); the NumPy reference's 10,000 iterations are extrapolated from
   its ``sgd_step`` median of the same run.

Everything lands in ``--out``: ``report.md``, ``speedups.png``, ``results.json``
(what ``--from-json`` reads), the raw ``benchmarks-raw.json`` and ``pytest.log``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fastnum._io import save_png, write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS_FORMAT = 1
BOOK_ITERS = 10_000
DEFAULT_TRAIN_ITERS = 600  # one of the book's epochs (60000 / 100), incl. one accuracy pass
IMPL_ORDER = ("numpy", "numba", "numba-full", "numba-delta", "backprop")
IMPL_LABEL = {"numpy": "NumPy reference", "numba": "numba", "numba-full": "numba full",
              "numba-delta": "numba delta", "backprop": "backprop (yardstick)"}
IMPL_COLOR = {"numpy": "tab:gray", "numba": "tab:blue", "numba-full": "tab:orange",
              "numba-delta": "tab:green", "backprop": "tab:purple"}
STAT_KEYS = ("median", "min", "max", "iqr", "rounds", "iterations")
GRADIENT_OPS = ("numerical_gradient", "sgd_step")
PNG_NAME, MD_NAME, RESULTS_NAME = "speedups.png", "report.md", "results.json"
# What each operation's table measures, where its name does not say it all.
OP_NOTES = {
    "convolution": "The numerical gradient of the book's chapter 7 `SimpleConvNet` (433,890 "
                   "parameters at hidden 100) on real MNIST. The NumPy reference and numba full "
                   "are timed on a random sample of parameters and their medians "
                   "**extrapolated** to all parameters (marked *extrapolated*); numba delta and "
                   "backprop compute every parameter.",
    "multilayer_gradient": "The numerical gradient of a sigmoid `MultiLayerNet` on real MNIST "
                           "as the network grows: one hidden layer of 25, 50 and 100 units, then "
                           "two and three layers of 50 (column *hidden*: the widths). Batch 10, "
                           "so that the NumPy reference stays within seconds.",
}


# ------------------------------------------------------------------ data model


@dataclass(frozen=True)
class Row:
    """One timed case of the benchmark JSON."""

    op: str
    impl: str
    batch: int
    hidden: int  # width of the first hidden layer
    threads: int | None
    median: float
    rounds: int
    iterations: int
    iqr: float
    arch: str = ""  # all hidden widths, e.g. "50" or "50x50"
    factor: float = 1.0  # > 1: timed on a sample of parameters, median scaled up by this

    def __post_init__(self):
        if not self.arch:
            object.__setattr__(self, "arch", str(self.hidden))

    @property
    def size(self):
        """(batch, arch), e.g. ``(100, "50")``."""
        return self.batch, self.arch


def arch_label(hidden):
    """``"50"`` for a width, ``"50x50"`` for a tuple of widths; strings pass through."""
    if isinstance(hidden, tuple | list):
        return "x".join(map(str, hidden))
    return str(hidden)


def arch_key(arch):
    """Sort key of an architecture label: by depth, then by the widths."""
    widths = tuple(int(w) for w in str(arch).split("x"))
    return len(widths), widths


def rows_from(results):
    """The timed cases of a results dict, sorted for display.

    Parameters
    ----------
    results : dict
        As returned by :func:`trim` (or a raw pytest-benchmark JSON).

    Returns
    -------
    list of Row
        Smoke-mode entries (benchmarks disabled) are left out.
    """
    rows = []
    for bench in results.get("benchmarks", []):
        info, stats = bench.get("extra_info", {}), bench.get("stats", {})
        if "op" not in info or info.get("smoke") or "median" not in stats:
            continue
        # A case timed on a sample of the parameters is extrapolated to the whole gradient.
        factor = float(info.get("extrapolate_factor", 1.0))
        rows.append(Row(info["op"], info["impl"], int(info["batch"]), int(info["hidden"]),
                        info.get("threads"), factor * float(stats["median"]),
                        int(stats["rounds"]), int(stats.get("iterations", 1)),
                        factor * float(stats.get("iqr", 0.0)),
                        arch_label(info.get("arch", info["hidden"])), factor))
    return sorted(rows, key=_row_order)


def _row_order(row):
    impl = IMPL_ORDER.index(row.impl) if row.impl in IMPL_ORDER else len(IMPL_ORDER)
    return row.op, arch_key(row.arch), row.batch, impl, row.threads or 0


def max_threads(rows):
    """The largest numba thread count in ``rows`` (the "all threads" setting)."""
    return max((r.threads for r in rows if r.threads), default=1)


def lookup(rows, op, impl, size, threads=None):
    """The row of ``impl`` at ``size``; numba rows at ``threads`` (default: all threads).

    ``size`` is (batch, hidden) with hidden a width, a tuple of widths or a label.
    """
    if threads is None:
        threads = max_threads(rows)
    size = (size[0], arch_label(size[1]))
    for r in rows:
        if r.op == op and r.impl == impl and r.size == size:
            if r.threads is None or r.threads == threads:
                return r
    return None


def speedup_vs_numpy(rows, row):
    """NumPy reference median / ``row``'s median at the same size, or None."""
    ref = lookup(rows, row.op, "numpy", row.size)
    return ref.median / row.median if ref else None


def cost_vs_backprop(rows, row):
    """``row``'s median / the backprop yardstick's median at the same size, or None."""
    ref = lookup(rows, row.op, "backprop", row.size)
    return row.median / ref.median if ref else None


# -------------------------------------------------------------------- formatting


def fmt_seconds(s):
    """A duration with a readable unit and 3 significant digits, e.g. ``4.21 ms``."""
    if s is None or not math.isfinite(s):
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def fmt_duration(s):
    """A long duration as hours/minutes, e.g. ``30.6 h`` or ``1.9 min``."""
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def fmt_ratio(x):
    """A ratio such as ``1,234×`` or ``0.52×``; ``—`` when unknown."""
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:,.0f}×"
    return f"{x:.3g}×"


def blas_threads(results):
    """How NumPy's BLAS threads were set: the environment variables, or its default."""
    env = results.get("machine", {}).get("blas_threads_env") or {}
    return ", ".join(f"{k}={v}" for k, v in env.items()) or "the library's default"


def _threads_label(row):
    return "—" if row.threads is None else str(row.threads)


# ------------------------------------------------------------------ the report


def legend_lines(results):
    """Bullet lines naming the machine, versions, thread count, date and run profile."""
    m = results.get("machine", {})
    fn = results.get("fastnum", {})
    load = m.get("loadavg_end")
    lines = [
        f"- **CPU**: {m.get('cpu_model', 'unknown')}, {m.get('logical_cpus', '?')} logical CPUs "
        f"({m.get('usable_cpus', '?')} usable by this process)",
        f"- **numba threads** (the \"all\" setting): {m.get('numba_threads', '?')}; "
        f"JIT enabled: {m.get('jit_enabled', '?')}",
        f"- **Versions**: Python {m.get('python', '?')}, numpy {m.get('numpy', '?')}, "
        f"numba {m.get('numba', '?')}",
        f"- **NumPy's BLAS**: {m.get('blas', '?')}, threads: {blas_threads(results)}",
        f"- **Platform**: {m.get('platform', '?')}",
        f"- **Date**: {m.get('date', results.get('datetime', '?'))}",
        f"- **Profile**: {fn.get('profile', '?')}; slow cases (NumPy reference and numba full "
        f"of the gradient operations) timed with {fn.get('slow_rounds', '?')} round(s), the "
        f"others calibrated to about {fn.get('target_seconds', '?')} s (at least "
        f"{fn.get('min_rounds', '?')} rounds)",
    ]
    if results.get("report_seconds"):
        lines.append(f"- **Report run time**: {fmt_duration(results['report_seconds'])} "
                     "(benchmarks, compile time and training run together)")
    if load:
        lines.append(f"- **Load average** at the end of the run (1/5/15 min): "
                     f"{', '.join(f'{x:.2f}' for x in load)}")
    return lines


def busy_warning(results):
    """A warning when other processes competed for the CPUs, else an empty string."""
    m = results.get("machine", {})
    load, cpus = m.get("loadavg_end"), m.get("usable_cpus") or m.get("logical_cpus")
    if not load or not cpus or max(load[1:]) <= cpus:
        return ""
    return (f"> **Busy machine**: the load average ({load[1]:.1f} over 5 min) exceeded the "
            f"{cpus} CPUs, so other processes competed with the benchmarks. Timings are "
            "inflated, the multi-threaded ones most (a parallel kernel waits for its slowest "
            "thread); compare ratios rather than absolute times, and rerun on a quiet machine "
            "(`--blas-threads 1` keeps NumPy's figures steadier meanwhile).")


def headline(rows, op="numerical_gradient", book=(100, 50)):
    """Sentences for the book's case of ``op``: NumPy vs numba and backprop.

    Returns
    -------
    list of str
        Empty when the book's case was not timed.
    """
    numpy = lookup(rows, op, "numpy", book)
    delta = lookup(rows, op, "numba-delta", book)
    if numpy is None or delta is None:
        return []
    how = (f"**extrapolated** from a sample of parameters (×{numpy.factor:,.0f}), "
           if numpy.factor != 1.0 else "")
    out = [f"- `{op}` at the book's batch {book[0]}, hidden {book[1]}: NumPy reference "
           f"{fmt_seconds(numpy.median)} ({how}median of {numpy.rounds} round(s)), numba delta "
           f"{fmt_seconds(delta.median)} on {delta.threads} thread(s): "
           f"**{fmt_ratio(numpy.median / delta.median)} faster**, measured side by side."]
    one = lookup(rows, op, "numba-delta", book, threads=1)
    if one is not None and one is not delta:
        out.append(f"  On 1 thread numba delta takes {fmt_seconds(one.median)}: "
                   f"{fmt_ratio(numpy.median / one.median)} faster.")
    full = lookup(rows, op, "numba-full", book)
    if full is not None:
        extrapolated = " extrapolated" if full.factor != 1.0 else ""
        out.append(f"  numba full {fmt_seconds(full.median)}{extrapolated} "
                   f"({fmt_ratio(numpy.median / full.median)} faster than NumPy).")
    back = lookup(rows, op, "backprop", book)
    if back is not None:
        out.append(f"  The analytic backprop gradient takes {fmt_seconds(back.median)}: numba "
                   f"delta costs {fmt_ratio(delta.median / back.median)} as much.")
    return out


def op_table(rows, op):
    """The markdown table of one operation: medians and speed-up ratios."""
    op_rows = [r for r in rows if r.op == op]
    has_backprop = any(r.impl == "backprop" for r in op_rows)
    head = ["batch", "hidden", "implementation", "threads", "rounds", "median",
            "speed-up vs NumPy"] + (["time / backprop"] if has_backprop else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in op_rows:
        rounds = f"{r.rounds}" + (f" × {r.iterations}" if r.iterations > 1 else "")
        label = IMPL_LABEL.get(r.impl, r.impl)
        if r.factor != 1.0:
            label += f" (extrapolated ×{r.factor:,.0f} from a sample)"
        cells = [str(r.batch), r.arch, label,
                 _threads_label(r), rounds, fmt_seconds(r.median),
                 fmt_ratio(speedup_vs_numpy(rows, r))]
        if has_backprop:
            cells.append(fmt_ratio(cost_vs_backprop(rows, r)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def skipped_lines(results, op):
    """Bullets naming the cases of ``op`` that this run did not time, with the reason.

    Cases of one size skipped for one reason share a bullet.
    """
    groups = {}  # (batch, hidden, reason) -> {impl: thread settings skipped}
    for s in results.get("fastnum", {}).get("skipped", []):
        if s["op"] == op:
            impls = groups.setdefault((s["batch"], s["hidden"], s["reason"]), {})
            impls.setdefault(s["impl"], set()).add(s.get("threads"))
    out = []
    for (batch, hidden, reason), impls in groups.items():
        names = [IMPL_LABEL.get(impl, impl) + _skipped_threads(th) for impl, th in impls.items()]
        out.append(f"- not timed at batch {batch}, hidden {hidden}: {', '.join(names)}; "
                   f"{reason}")
    return out


def _skipped_threads(settings):
    if len(settings) != 1 or None in settings:
        return ""  # NumPy code, or every thread setting
    return " (1 thread)" if settings == {"1"} else " (all threads)"


def thread_table(rows):
    """Markdown table of 1-thread vs all-threads medians of every numba case."""
    n = max_threads(rows)
    pairs = []
    for r in rows:
        if r.threads == 1 and n > 1:
            other = lookup(rows, r.op, r.impl, r.size, threads=n)
            if other is not None:
                pairs.append((r, other))
    if not pairs:
        return []
    lines = [f"| operation | batch | hidden | implementation | 1 thread | {n} threads | "
             f"speed-up from threads |", "|---|---|---|---|---|---|---|"]
    for one, many in pairs:
        lines.append(f"| {one.op} | {one.batch} | {one.arch} | "
                     f"{IMPL_LABEL.get(one.impl, one.impl)} | {fmt_seconds(one.median)} | "
                     f"{fmt_seconds(many.median)} | {fmt_ratio(one.median / many.median)} |")
    return lines


def compile_lines(compile_info):
    """Markdown table of first-call times with a cold and a warm numba cache."""
    if not compile_info:
        return ["Not measured in this run."]
    cold, warm = compile_info["cold"], compile_info["warm"]
    if not cold.get("jit_enabled", True):
        return ["numba's JIT was disabled (NUMBA_DISABLE_JIT=1): nothing was compiled."]
    lines = ["| first call in a fresh process | cold cache (compile) | warm cache (load) |",
             "|---|---|---|",
             f"| `import fastnum.registry` | {fmt_seconds(cold['import_seconds'])} | "
             f"{fmt_seconds(warm['import_seconds'])} |"]
    for c, w in zip(cold["calls"], warm["calls"], strict=True):
        lines.append(f"| {c['op']} / {c['impl']} | {fmt_seconds(c['first_call'])} | "
                     f"{fmt_seconds(w['first_call'])} |")
    lines.append(f"| **whole process** | {fmt_seconds(cold['total_seconds'])} | "
                 f"{fmt_seconds(warm['total_seconds'])} |")
    lines += ["", "Each first call is on a tiny problem, so it is almost all compile (or "
              "cache-load) time; operations listed later reuse kernels compiled by earlier "
              f"ones. The cold run wrote {compile_info.get('cache_files', '?')} files to a "
              "fresh `NUMBA_CACHE_DIR`; the warm run is a second process loading them."]
    return lines


def numpy_iteration(rows, book=(100, 50)):
    """(seconds, source) of one NumPy-reference SGD iteration at the book's size, or None."""
    for op in GRADIENT_OPS[::-1]:  # sgd_step first: it is the whole iteration
        r = lookup(rows, op, "numpy", book)
        if r is not None:
            return r.median, f"median of {r.rounds} round(s) of `{op}` / NumPy reference"
    return None


def training_lines(results, rows):
    """The end-to-end section: the book's 10,000 iterations, numba measured vs NumPy."""
    train = results.get("train") or {}
    lines = []
    numba_total = None
    if train.get("seconds"):
        it, secs = train["iters"], train["seconds"]
        numba_total = secs if it == BOOK_ITERS else extrapolate(train)
        how = ("measured" if it == BOOK_ITERS
               else f"**extrapolated** from {it:,} measured iterations ({fmt_duration(secs)}; "
                    f"steps and accuracy passes scaled separately, data loading counted once)")
        lines.append(f"- numba ({train.get('backend', 'numba')}, strategy "
                     f"{train.get('strategy', 'delta')}, {train.get('threads', '?')} threads), "
                     f"`fastnum.train.train` with the book's settings: "
                     f"**{fmt_duration(numba_total)}** for {BOOK_ITERS:,} iterations, {how}. "
                     f"One accuracy pass over the 70,000 images takes "
                     f"{fmt_seconds(train.get('eval_seconds'))}; the run makes "
                     f"{evaluations(BOOK_ITERS)}.")
        if train.get("final_test_acc") is not None:
            lines.append(f"  Test accuracy after {it:,} iterations: "
                         f"{train['final_test_acc']:.4f} (train {train['final_train_acc']:.4f}).")
    elif train.get("error"):
        lines.append(f"- numba training run: not measured ({train['error']}).")
    ref = numpy_iteration(rows)
    if ref is not None:
        numpy_total = ref[0] * BOOK_ITERS
        lines.append(f"- NumPy reference: **{fmt_duration(numpy_total)}** for {BOOK_ITERS:,} "
                     f"iterations, **extrapolated** from one iteration's {fmt_seconds(ref[0])} "
                     f"({ref[1]}, same run; its {evaluations(BOOK_ITERS)} accuracy passes, "
                     "well under a minute, are left out).")
        if numba_total:
            lines.append(f"- End to end: numba is **{fmt_ratio(numpy_total / numba_total)} "
                         "faster** on the book's whole run.")
    return lines or ["Not measured in this run."]


def markdown(results):
    """The whole report as markdown text.

    Parameters
    ----------
    results : dict
        As returned by :func:`trim`.

    Returns
    -------
    str
    """
    rows = rows_from(results)
    ops = results.get("fastnum", {}).get("operations") or sorted({r.op for r in rows})
    out = ["# fastnum benchmark report", ""]
    warning = busy_warning(results)
    out += ([warning, ""] if warning else [])
    out += ["## Machine", ""] + legend_lines(results) + [""]
    out += ["## Headline", ""]
    out += (headline(rows) + headline(rows, "sgd_step")
            + headline(rows, "convolution", book=(100, 100))) or ["The book's case was not timed."]
    out += ["", "## The book's 10,000-iteration training run", ""] + training_lines(results, rows)
    out += ["", "## Steady-state medians", "",
            "Median wall time per call (kernels compiled before timing; arguments prepared "
            "outside the timed call). *speed-up vs NumPy* = NumPy reference median / this "
            "median at the same size; *time / backprop* = this median / the analytic "
            "backprop gradient's. Threads are numba's; NumPy code (threads —) runs with its "
            "BLAS's threads, as in the legend.", ""]
    for op in ops:
        if any(r.op == op for r in rows):
            note = [OP_NOTES[op], ""] if op in OP_NOTES else []
            out += [f"### {op}", ""] + note + op_table(rows, op) + [""]
            skipped = skipped_lines(results, op)
            out += (skipped + [""]) if skipped else []
    threads = thread_table(rows)
    if threads:
        out += ["## Thread scaling", ""] + threads + [""]
    out += ["## Compile time", ""] + compile_lines(results.get("compile")) + [""]
    out += [f"![speed-ups and time versus batch size]({PNG_NAME})", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------- plot


def _bar_series(rows, op):
    """(impl, threads) pairs of the speed-up bars: every non-reference variant."""
    n = max_threads(rows)
    series = []
    for impl in IMPL_ORDER:
        if impl == "numpy" or not any(r.op == op and r.impl == impl for r in rows):
            continue
        threads = sorted({r.threads for r in rows if r.op == op and r.impl == impl},
                         key=lambda t: t or n)
        series += [(impl, t) for t in threads]
    return series


def _speedup_axis(ax, rows, op):
    sizes = sorted({r.size for r in rows if r.op == op and r.impl == "numpy"},
                   key=lambda s: (arch_key(s[1]), s[0]))
    series = _bar_series(rows, op)
    width = 0.8 / max(len(series), 1)
    for k, (impl, threads) in enumerate(series):
        xs, ys = [], []
        for j, size in enumerate(sizes):
            r = lookup(rows, op, impl, size, threads=threads)
            if r is not None:
                xs.append(j + (k - (len(series) - 1) / 2) * width)
                ys.append(speedup_vs_numpy(rows, r))
        label = IMPL_LABEL.get(impl, impl) + (f", {threads} thr" if threads else "")
        # 1-thread bars are hatched so that the thread settings stay apart in grey print.
        ax.bar(xs, ys, width, color=IMPL_COLOR.get(impl), label=label,
               hatch="//" if threads == 1 and max_threads(rows) > 1 else None,
               edgecolor="white")
    ax.set_xticks(range(len(sizes)), [f"b{b}\nh{h}" for b, h in sizes])
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_title(f"{op}: speed-up vs NumPy")
    ax.set_ylabel("× faster than NumPy reference")
    ax.legend(fontsize="x-small")


def _arch_time_axis(ax, rows, op):
    """Time per call against the network, for an operation timed at one batch size."""
    archs = sorted({r.arch for r in rows if r.op == op}, key=arch_key)
    for impl in IMPL_ORDER:
        pts = [(archs.index(r.arch), r.median) for r in rows if r.op == op and r.impl == impl
               and r.threads in (None, max_threads(rows))]
        if pts:
            ax.plot(*zip(*sorted(pts), strict=True), "-", marker="o", color=IMPL_COLOR.get(impl),
                    label=IMPL_LABEL.get(impl, impl))
    ax.set_xticks(range(len(archs)), [f"h{a}" for a in archs])
    ax.set_yscale("log")
    ax.set_xlabel("hidden layers (width per layer)")
    ax.set_ylabel("median seconds per call")
    batches = sorted({r.batch for r in rows if r.op == op})
    ax.set_title(f"{op}: time vs network\n(batch {batches[0]}, numba on {max_threads(rows)} "
                 "threads)")
    ax.legend(fontsize="x-small")


def _time_axis(ax, rows, op):
    if len({r.batch for r in rows if r.op == op}) == 1:  # sized by network, not by batch
        _arch_time_axis(ax, rows, op)
        return
    archs = sorted({r.arch for r in rows if r.op == op}, key=arch_key)
    for impl in IMPL_ORDER:
        for style, arch in zip(("-", "--", ":", "-."), archs, strict=False):
            pts = sorted((r.batch, r.median) for r in rows if r.op == op and r.impl == impl
                         and r.arch == arch and r.threads in (None, max_threads(rows)))
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o",
                        color=IMPL_COLOR.get(impl),
                        label=f"{IMPL_LABEL.get(impl, impl)}, hidden {arch}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("median seconds per call")
    ax.set_title(f"{op}: time vs batch size (numba on {max_threads(rows)} threads)")
    ax.legend(fontsize="x-small")


def plot(results, path):
    """Write the PNG: speed-ups vs NumPy (top) and time vs batch size (bottom), per operation.

    Parameters
    ----------
    results : dict
        As returned by :func:`trim`.
    path : str or Path
        Where to write the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows = rows_from(results)
    ops = [op for op in results.get("fastnum", {}).get("operations", []) if
           any(r.op == op for r in rows)] or sorted({r.op for r in rows})
    fig, axes = plt.subplots(2, max(len(ops), 1), figsize=(5.5 * max(len(ops), 1), 9),
                             squeeze=False)
    for col, op in enumerate(ops):
        _speedup_axis(axes[0][col], rows, op)
        _time_axis(axes[1][col], rows, op)
    m = results.get("machine", {})
    fig.suptitle(f"fastnum benchmarks — {m.get('cpu_model', '?')}, {m.get('numba_threads', '?')} "
                 f"numba threads, numpy {m.get('numpy', '?')}, numba {m.get('numba', '?')}, "
                 f"Python {m.get('python', '?')}, {m.get('date', '?')[:10]}")
    fig.tight_layout()
    save_png(fig, path, dpi=90)
    plt.close(fig)


# -------------------------------------------------------------------- results


def trim(raw, compile_info=None, train=None):
    """Reduce a pytest-benchmark JSON to what the report needs (idempotent).

    Parameters
    ----------
    raw : dict
        The ``--benchmark-json`` output, or an earlier result of ``trim``.
    compile_info, train : dict, optional
        Results of the compile-time and training measurements; default: keep
        those already in ``raw``.

    Returns
    -------
    dict
        ``format``, ``datetime``, ``machine``, ``fastnum``, ``benchmarks`` (name,
        group, extra_info and the median-related stats), ``compile``, ``train``.
    """
    machine = raw.get("machine") or raw.get("machine_info", {}).get("fastnum", {})
    benches = [{"name": b.get("name"), "group": b.get("group"),
                "extra_info": b.get("extra_info", {}),
                "stats": {k: b["stats"][k] for k in STAT_KEYS if k in b.get("stats", {})}}
               for b in raw.get("benchmarks", [])]
    return {"format": RESULTS_FORMAT, "datetime": raw.get("datetime"), "machine": machine,
            "fastnum": raw.get("fastnum", {}), "benchmarks": benches,
            "compile": compile_info if compile_info is not None else raw.get("compile"),
            "train": train if train is not None else raw.get("train")}


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


# ---------------------------------------------------------------- measurement


def run_benchmarks(out, profile, slow_rounds=None, extra_args=()):
    """Run the benchmark suite with timing enabled; return (exit code, raw JSON dict or None)."""
    raw_json = out / "benchmarks-raw.json"
    env = {**os.environ, "FASTNUM_BENCH_PROFILE": profile}
    if slow_rounds:
        env["FASTNUM_BENCH_SLOW_ROUNDS"] = str(slow_rounds)
    with tempfile.TemporaryDirectory(prefix="fastnum-bench-storage-") as storage:
        # The storage dir and no cache provider: nothing is written into the checkout.
        cmd = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider",
               "--benchmark-enable", f"--benchmark-json={raw_json}",
               f"--benchmark-storage=file://{storage}",
               "--benchmark-columns=median,iqr,rounds,iterations", "--benchmark-sort=name",
               "-v", "-rs", *extra_args]
        print("$", shlex.join(cmd), flush=True)
        code = _tee(cmd, env, out / "pytest.log")
    if not raw_json.is_file():
        return code, None
    return code, json.loads(raw_json.read_text(encoding="utf-8"))


def _tee(cmd, env, log_path):
    # Stream the suite's output to the console as it comes (it runs for minutes and
    # pytest -v writes a test's name before running it) and into a log file.
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            log.write(chunk)
        return proc.wait()


def measure_compile():
    """Run ``scripts/compile_time.py``'s measurement; a dict, or None if it failed."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import compile_time

    try:
        return compile_time.measure()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"compile-time measurement failed: {e}", file=sys.stderr)
        return None


def evaluations(iters, per_epoch=600):
    """Accuracy passes of a ``train`` run: at iterations 1, 1 + per_epoch, ... and the end."""
    at_epochs = (iters - 1) // per_epoch + 1
    return at_epochs + (0 if (iters - 1) % per_epoch == 0 else 1)


def _accuracy_seconds(net, repeats=3):
    """Median time of one accuracy pass over the full training and test sets."""
    from fastnum.data import load_mnist

    (x, t), (xt, tt) = load_mnist()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net.accuracy(x, t)
        net.accuracy(xt, tt)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure_training(iters):
    """Time ``iters`` iterations of the book's numerical-gradient training with numba.

    Returns
    -------
    dict
        ``iters``, ``seconds`` (wall time of the timed run, kernels already
        compiled), ``loop_seconds`` (the part after loading and preparing the
        data: the training loop), ``eval_seconds`` (one accuracy pass on the full
        sets; the run makes :func:`evaluations` of them), ``threads``, ``backend``,
        ``strategy``, the final accuracies; or ``error`` if the run failed.
    """
    try:
        from fastnum._jit import get_num_threads
        from fastnum.train import TrainConfig, train
    except ImportError as e:
        return {"error": f"fastnum.train is not importable: {e}"}
    try:
        # A 2-iteration run on a small subset compiles every kernel the loop uses.
        train(TrainConfig(iters=2, train_size=200, test_size=100), progress=False, log=None)
        start = time.perf_counter()
        result = train(TrainConfig(iters=iters), progress=False, log=None)
        seconds = time.perf_counter() - start
        eval_seconds = _accuracy_seconds(result.net)
    # Broad on purpose: a failed side measurement must not lose the benchmark run.
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {"iters": iters, "seconds": seconds,
            "loop_seconds": result.timings["total_seconds"], "eval_seconds": eval_seconds,
            "threads": get_num_threads(), "backend": result.backend,
            "strategy": result.config.strategy, "final_train_acc": result.final_train_acc,
            "final_test_acc": result.final_test_acc}


def extrapolate(train, iters=BOOK_ITERS):
    """Seconds of an ``iters``-iteration run predicted from a shorter measured one.

    The gradient steps scale with the iteration count and the accuracy passes with
    :func:`evaluations`, so each part is scaled by its own count; loading the data
    (``seconds - loop_seconds``) is paid once whatever the length.
    """
    n, evals = train["iters"], evaluations(train["iters"])
    eval_s = train.get("eval_seconds") or 0.0
    loop = train.get("loop_seconds", train["seconds"])
    step = max(loop - evals * eval_s, 0.0) / n
    return (train["seconds"] - loop) + iters * step + evaluations(iters) * eval_s


# ------------------------------------------------------------------------ CLI


BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")


def _prepare_environment(blas_threads, cache_dir):
    """Environment of the measurements, inherited by every subprocess.

    Follows the tests' convention: a checkout next to ``shared/mnist`` reads MNIST
    from there and keeps the parsed-array cache in a temp dir.
    """
    shared = REPO.parent / "shared" / "mnist"
    if "FASTNUM_MNIST_DIR" not in os.environ and shared.is_dir():
        os.environ["FASTNUM_MNIST_DIR"] = str(shared)
        os.environ.setdefault("FASTNUM_CACHE_DIR", str(cache_dir))
    if blas_threads:
        # Must be set before numpy is first imported (here: only in the subprocesses
        # and in measure_training).
        for var in BLAS_THREAD_VARS:
            os.environ[var] = str(blas_threads)


def parse_args(argv=None):
    """The command line of the report script."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench-results", type=Path,
                   help="output folder (default: %(default)s)")
    p.add_argument("--from-json", type=Path, metavar="FILE",
                   help="only render the report from an earlier results.json (or a raw "
                        "pytest-benchmark JSON); measures nothing")
    p.add_argument("--quick", action="store_true",
                   help="fewer sizes, one round of the slow cases, a shorter training run")
    p.add_argument("--slow-rounds", type=int, metavar="N",
                   help="rounds of the slow cases (default: 3, or 1 with --quick)")
    p.add_argument("--full-run", action="store_true",
                   help=f"time the book's whole {BOOK_ITERS:,}-iteration run with numba "
                        "instead of extrapolating")
    p.add_argument("--train-iters", type=int, metavar="N",
                   help=f"iterations of the timed training run (default: "
                        f"{DEFAULT_TRAIN_ITERS}, 200 with --quick)")
    p.add_argument("--blas-threads", type=int, metavar="N",
                   help="threads of NumPy's BLAS (sets OPENBLAS_NUM_THREADS etc.); default: "
                        "the library's own. 1 is steadier on a busy machine")
    p.add_argument("--no-compile", action="store_true", help="skip the compile-time measurement")
    p.add_argument("--no-train", action="store_true", help="skip the training measurement")
    p.add_argument("--pytest-args", default="", metavar="ARGS",
                   help="extra pytest arguments, e.g. \"-k numerical_gradient\"")
    args = p.parse_args(argv)
    for name in ("slow_rounds", "train_iters", "blas_threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def _measure(args):
    """Run every measurement of a report; return (exit code, results dict or None)."""
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    code, raw = run_benchmarks(args.out, "quick" if args.quick else "default",
                               args.slow_rounds, shlex.split(args.pytest_args))
    if raw is None:
        print(f"the benchmark run wrote no JSON (pytest exit code {code})", file=sys.stderr)
        return code or 1, None
    compile_info = None if args.no_compile else measure_compile()
    train = None
    if not args.no_train:
        iters = BOOK_ITERS if args.full_run else (
            args.train_iters or (200 if args.quick else DEFAULT_TRAIN_ITERS))
        print(f"timing {iters} iterations of the book's training loop with numba ...", flush=True)
        train = measure_training(iters)
    results = trim(raw, compile_info, train)
    results["report_seconds"] = time.perf_counter() - started
    results["generated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    return code, results


def main(argv=None):
    """Entry point: measure (unless ``--from-json``) and render.

    Returns
    -------
    int
        0 on success; the benchmark suite's exit code when some benchmark failed
        (the report is still written from what was measured).
    """
    args = parse_args(argv)
    if args.from_json:
        results = trim(json.loads(args.from_json.read_text(encoding="utf-8")))
        code = 0
    else:
        with tempfile.TemporaryDirectory(prefix="fastnum-bench-mnist-") as cache_dir:
            _prepare_environment(args.blas_threads, cache_dir)
            code, results = _measure(args)
        if results is None:
            return code
    md = render(results, args.out)
    print(f"\nwrote {md}, {args.out / PNG_NAME} and {args.out / RESULTS_NAME}")
    if code:
        print(f"warning: some benchmarks failed (pytest exit code {code}); see "
              f"{args.out / 'pytest.log'}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
