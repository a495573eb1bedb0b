"""The benchmark report as markdown: machine legend, headline, tables and the training run.

Everything here reads the data model of :mod:`benchmarks.report_data`; :func:`markdown`
assembles the whole ``report.md``.
"""

from __future__ import annotations

import math

from benchmarks.report_data import (
    BOOK,
    BOOK_ITERS,
    PNG_NAME,
    catalog,
    cost_vs_yardstick,
    evaluations,
    extrapolate,
    lookup,
    max_threads,
    reference_of,
    rows_from,
    speedup_vs_reference,
    with_role,
)
from fastnum._format import format_duration

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


def fmt_seconds(s):
    """A duration with a readable unit and 3 significant digits, e.g. ``4.21 ms``."""
    if s is None or not math.isfinite(s):
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def fmt_ratio(x):
    """A ratio such as ``1,234×`` or ``0.52×``; ``—`` when unknown."""
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:,.0f}×"
    return f"{x:.3g}×"


def _than(a, b):
    """How ``a`` compares with ``b``: ``"12× faster"`` or ``"3× slower"``."""
    if a.median <= b.median:
        return f"{fmt_ratio(b.median / a.median)} faster"
    return f"{fmt_ratio(a.median / b.median)} slower"


def blas_threads(results):
    """How many threads NumPy's BLAS ran with, and whether ``--blas-threads`` set it."""
    m = results.get("machine", {})
    if "blas_threads" in m:  # recorded by threadpoolctl
        limit = m.get("blas_threads_limit")
        how = f"limited to {limit} by --blas-threads" if limit else "the library's default"
        return f"{m['blas_threads'] if m['blas_threads'] is not None else '?'} ({how})"
    env = m.get("blas_threads_env") or {}  # results written before threadpoolctl
    return ", ".join(f"{k}={v}" for k, v in env.items()) or "the library's default"


def _threads_label(row):
    return "—" if row.threads is None else str(row.threads)


def _label(impls, name):
    return next((i.label for i in impls if i.name == name), name)


def legend_lines(results):
    """Bullet lines naming the machine, versions, thread count, date and run profile."""
    m = results.get("machine", {})
    fn = results.get("fastnum", {})
    load = m.get("loadavg_end")
    cat = catalog(results)
    slow = {(r.op, r.impl) for r in rows_from(results) if r.slow}
    slow_labels = list(
        dict.fromkeys(i.label for op, impls in cat.items() for i in impls if (op, i.name) in slow)
    )
    lines = [
        f"- **CPU**: {m.get('cpu_model', 'unknown')}, {m.get('logical_cpus', '?')} logical CPUs "
        f"({m.get('usable_cpus', '?')} usable by this process)",
        f'- **numba threads** (the "all" setting): {m.get("numba_threads", "?")}; '
        f"JIT enabled: {m.get('jit_enabled', '?')}",
        f"- **Versions**: Python {m.get('python', '?')}, numpy {m.get('numpy', '?')}, "
        f"numba {m.get('numba', '?')}",
        f"- **NumPy's BLAS**: {m.get('blas', '?')}, threads: {blas_threads(results)}",
        f"- **Platform**: {m.get('platform', '?')}",
        f"- **Date**: {m.get('date', results.get('datetime', '?'))}",
        f"- **Profile**: {fn.get('profile', '?')}; slow cases "
        f"({', '.join(slow_labels) or 'none'}) timed with {fn.get('slow_rounds', '?')} "
        f"round(s), the others calibrated to about {fn.get('target_seconds', '?')} s (at least "
        f"{fn.get('min_rounds', '?')} rounds)",
    ]
    if results.get("report_seconds"):
        lines.append(
            f"- **Report run time**: {format_duration(results['report_seconds'])} "
            "(benchmarks, compile time and training run together)"
        )
    if load:
        lines.append(
            f"- **Load average** at the end of the run (1/5/15 min): "
            f"{', '.join(f'{x:.2f}' for x in load)}"
        )
    return lines


def busy_warning(results):
    """A warning when other processes competed for the CPUs, else an empty string."""
    m = results.get("machine", {})
    load, cpus = m.get("loadavg_end"), m.get("usable_cpus") or m.get("logical_cpus")
    if not load or not cpus or max(load[1:]) <= cpus:
        return ""
    return (
        f"> **Busy machine**: the load average ({load[1]:.1f} over 5 min) exceeded the "
        f"{cpus} CPUs, so other processes competed with the benchmarks. Timings are "
        "inflated, the multi-threaded ones most (a parallel kernel waits for its slowest "
        "thread); compare ratios rather than absolute times, and rerun on a quiet machine "
        "(`--blas-threads 1` keeps NumPy's figures steadier meanwhile)."
    )


def headline(rows, impls, op="numerical_gradient", book=BOOK):
    """Sentences for the book's case of ``op``: the reference against everything else.

    The fastest implementation that must match the reference leads; the others
    and the yardsticks follow, each compared with it and with the reference.

    Returns
    -------
    list of str
        Empty when the book's case was not timed.
    """
    ref = lookup(rows, op, reference_of(impls), book)
    timed = [(i, lookup(rows, op, i.name, book)) for i in with_role(impls, "compared")]
    timed = [(i, r) for i, r in timed if r is not None]
    if ref is None or not timed:
        return []
    best_impl, best = min(timed, key=lambda pair: pair[1].median)
    how = (
        f"**extrapolated** from a sample of parameters (×{ref.factor:,.0f}), "
        if ref.factor != 1.0
        else ""
    )
    out = [
        f"- `{op}` at the book's batch {book[0]}, hidden {book[1]}: NumPy reference "
        f"{fmt_seconds(ref.median)} ({how}median of {ref.rounds} round(s)), {best_impl.label} "
        f"{fmt_seconds(best.median)} on {best.threads} thread(s): "
        f"**{fmt_ratio(ref.median / best.median)} faster**, measured side by side."
    ]
    one = lookup(rows, op, best.impl, book, threads=1)
    if one is not None and one is not best:
        out.append(
            f"  On 1 thread {best_impl.label} takes {fmt_seconds(one.median)}: "
            f"{fmt_ratio(ref.median / one.median)} faster."
        )
    for impl, row in timed:
        if row is not best:
            extrapolated = " extrapolated" if row.factor != 1.0 else ""
            out.append(
                f"  {impl.label} {fmt_seconds(row.median)}{extrapolated} "
                f"({fmt_ratio(ref.median / row.median)} faster than NumPy)."
            )
    for impl in with_role(impls, "yardstick"):
        row = lookup(rows, op, impl.name, book)
        if row is not None:
            out.append(
                f"  {impl.label}: {fmt_seconds(row.median)}; {best_impl.label} is "
                f"{_than(best, row)} and the NumPy reference {_than(ref, row)}."
            )
    return out


def op_table(rows, impls, op):
    """The markdown table of one operation: medians and ratios to reference and yardstick."""
    op_rows = [r for r in rows if r.op == op]
    timed = {r.impl for r in op_rows}
    yardstick = next((i.name for i in with_role(impls, "yardstick") if i.name in timed), None)
    head = [
        "batch",
        "hidden",
        "implementation",
        "threads",
        "rounds",
        "median",
        "speed-up vs NumPy",
    ] + ([f"time / {yardstick}"] if yardstick else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in op_rows:
        rounds = f"{r.rounds}" + (f" × {r.iterations}" if r.iterations > 1 else "")
        label = _label(impls, r.impl)
        if r.factor != 1.0:
            label += f" (extrapolated ×{r.factor:,.0f} from a sample)"
        cells = [
            str(r.batch),
            r.arch,
            label,
            _threads_label(r),
            rounds,
            fmt_seconds(r.median),
            fmt_ratio(speedup_vs_reference(rows, impls, r)),
        ]
        if yardstick:
            cells.append(fmt_ratio(cost_vs_yardstick(rows, yardstick, r)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def skipped_lines(results, impls, op):
    """Bullets naming the cases of ``op`` that this run did not time, with the reason.

    Cases of one size skipped for one reason share a bullet.
    """
    groups = {}  # (batch, hidden, reason) -> {impl: thread settings skipped}
    for s in results.get("fastnum", {}).get("skipped", []):
        if s["op"] == op:
            found = groups.setdefault((s["batch"], s["hidden"], s["reason"]), {})
            found.setdefault(s["impl"], set()).add(s.get("threads"))
    out = []
    for (batch, hidden, reason), found in groups.items():
        names = [_label(impls, impl) + _skipped_threads(th) for impl, th in found.items()]
        out.append(f"- not timed at batch {batch}, hidden {hidden}: {', '.join(names)}; {reason}")
    return out


def _skipped_threads(settings):
    if len(settings) != 1 or None in settings:
        return ""  # NumPy code, or every thread setting
    return " (1 thread)" if settings == {"1"} else " (all threads)"


def thread_table(rows, cat):
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
    lines = [
        f"| operation | batch | hidden | implementation | 1 thread | {n} threads | "
        f"speed-up from threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for one, many in pairs:
        lines.append(
            f"| {one.op} | {one.batch} | {one.arch} | "
            f"{_label(cat.get(one.op, []), one.impl)} | {fmt_seconds(one.median)} | "
            f"{fmt_seconds(many.median)} | {fmt_ratio(one.median / many.median)} |"
        )
    return lines


def network_compile_lines(info):
    """Markdown table of :func:`benchmarks.compile_time.measure`: cold and warm per network."""
    if not info.get("jit_enabled", True):
        return ["numba's JIT was disabled (NUMBA_DISABLE_JIT=1): nothing was compiled."]
    lines = [
        "| network | strategies | cold: import + first call | of which CPU "
        "| warm: import + first call | slowest compiles (self time) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in info["networks"].items():
        cold, warm = r["cold"], r["warm"]
        slowest = ", ".join(
            f"`{f.rsplit('.', 1)[-1]}` {fmt_seconds(s)}" for f, s in cold["slowest"][:3]
        )
        # Reports written before the per-network rows took the default strategy ran all.
        strategies = ", ".join(r.get("strategies", ["every"]))
        lines.append(
            f"| {name}: {r['description']} | {strategies} | {fmt_seconds(cold['total_seconds'])} | "
            f"{fmt_seconds(cold['cpu_seconds'])} | {fmt_seconds(warm['total_seconds'])} | "
            f"{slowest} |"
        )
    load = info.get("loadavg_start"), info.get("loadavg_end")
    lines += [
        "",
        f"Reproduce with `{info['command']}` (median of {info['repeat']} run(s)). Each cell is a "
        "fresh process: *cold* on an empty `NUMBA_CACHE_DIR` (compiles, then writes the "
        "cache), *warm* on the cache the cold run wrote; both time `import fastnum` plus the "
        "network's first `predict`, `loss` and numerical gradient on a tiny problem "
        "(`fastnum.warmup`), with the strategies of the row: a network's own row runs the "
        "default strategy, which is what a user's first call compiles, and the `all` row "
        "every strategy of every network, which is every kernel. The CPU column moves less "
        "with the machine's load than the wall time"
        + (
            f"; load average {load[0][0]:.1f} at start, {load[1][0]:.1f} at end."
            if all(load)
            else "."
        )
        + " `fastnum warmup` fills the cache ahead of time.",
    ]
    return lines


def compile_lines(compile_info):
    """Markdown table of first-call times with a cold and a warm numba cache."""
    if not compile_info:
        return ["Not measured in this run."]
    if "networks" in compile_info:  # per network (benchmarks/compile_time.py since issue 18)
        return network_compile_lines(compile_info)
    cold, warm = compile_info["cold"], compile_info["warm"]
    if not cold.get("jit_enabled", True):
        return ["numba's JIT was disabled (NUMBA_DISABLE_JIT=1): nothing was compiled."]
    lines = [
        "| first call in a fresh process | cold cache (compile) | warm cache (load) |",
        "|---|---|---|",
        f"| `import fastnum.registry` | {fmt_seconds(cold['import_seconds'])} | "
        f"{fmt_seconds(warm['import_seconds'])} |",
    ]
    for c, w in zip(cold["calls"], warm["calls"], strict=True):
        lines.append(
            f"| {c['op']} / {c['impl']} | {fmt_seconds(c['first_call'])} | "
            f"{fmt_seconds(w['first_call'])} |"
        )
    lines.append(
        f"| **whole process** | {fmt_seconds(cold['total_seconds'])} | "
        f"{fmt_seconds(warm['total_seconds'])} |"
    )
    lines += [
        "",
        "Each first call is on a tiny problem, so it is almost all compile (or "
        "cache-load) time; operations listed later reuse kernels compiled by earlier "
        f"ones. The cold run wrote {compile_info.get('cache_files', '?')} files to a "
        "fresh `NUMBA_CACHE_DIR`; the warm run is a second process loading them.",
    ]
    return lines


def one_iteration(rows, impl, label, book=BOOK):
    """(seconds, source) of one SGD iteration of ``impl`` at the book's size, or None.

    An SGD step's median when timed (it is the whole iteration), else the numerical
    gradient's (the update costs next to nothing).
    """
    for op in ("sgd_step", "numerical_gradient"):
        r = lookup(rows, op, impl, book)
        if r is not None:
            return r.median, f"median of {r.rounds} round(s) of `{op}` / {label}"
    return None


def training_lines(results, rows):
    """The end-to-end section: the book's 10,000 iterations, numba measured vs NumPy."""
    train = results.get("train") or {}
    lines = []
    numba_total = None
    if train.get("seconds"):
        it, secs = train["iters"], train["seconds"]
        numba_total = secs if it == BOOK_ITERS else extrapolate(train)
        how = (
            "measured"
            if it == BOOK_ITERS
            else f"**extrapolated** from {it:,} measured iterations "
            f"({format_duration(secs)}; steps and accuracy passes scaled separately, "
            "data loading counted once)"
        )
        lines.append(
            f"- numba ({train.get('backend', 'numba')}, strategy "
            f"{train.get('strategy', '?')}, {train.get('threads', '?')} threads), "
            f"`fastnum.train.train` with the book's settings: "
            f"**{format_duration(numba_total)}** for {BOOK_ITERS:,} iterations, {how}. "
            f"One accuracy pass over the 70,000 images takes "
            f"{fmt_seconds(train.get('eval_seconds'))}; the run makes "
            f"{evaluations(BOOK_ITERS)}."
        )
        if train.get("final_test_acc") is not None:
            lines.append(
                f"  Test accuracy after {it:,} iterations: "
                f"{train['final_test_acc']:.4f} (train {train['final_train_acc']:.4f})."
            )
    elif train.get("error"):
        lines.append(f"- numba training run: not measured ({train['error']}).")
    cat = catalog(results).get("numerical_gradient", [])
    # The NumPy loops too slow to run 10,000 times (timed as slow cases): the reference
    # and the book's code as published.  Faster yardsticks (backprop) train another way.
    for impl in [reference_of(cat)] + [i.name for i in with_role(cat, "yardstick")]:
        timed = lookup(rows, "numerical_gradient", impl, BOOK)
        one = one_iteration(rows, impl, _label(cat, impl))
        if one is None or timed is None or not timed.slow:
            continue
        total = one[0] * BOOK_ITERS
        lines.append(
            f"- {_label(cat, impl)}: **{format_duration(total)}** for {BOOK_ITERS:,} "
            f"iterations, **extrapolated** from one iteration's {fmt_seconds(one[0])} "
            f"({one[1]}, same run; its {evaluations(BOOK_ITERS)} accuracy passes, "
            "well under a minute, are left out)."
        )
        if numba_total:
            lines.append(
                f"  End to end, numba is **{fmt_ratio(total / numba_total)} faster** "
                "on the book's whole run."
            )
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
    cat = catalog(results)
    ops = results.get("fastnum", {}).get("operations") or sorted({r.op for r in rows})
    out = ["# fastnum benchmark report", ""]
    warning = busy_warning(results)
    out += [warning, ""] if warning else []
    out += ["## Machine", ""] + legend_lines(results) + [""]
    out += ["## Headline", ""]
    out += headline(rows, cat.get("numerical_gradient", [])) + headline(
        rows, cat.get("sgd_step", []), "sgd_step"
    ) + headline(rows, cat.get("convolution", []), "convolution", book=(100, 100)) or [
        "The book's case was not timed."
    ]
    out += ["", "## The book's 10,000-iteration training run", ""] + training_lines(results, rows)
    out += [
        "",
        "## Steady-state medians",
        "",
        "Median wall time per call (kernels compiled before timing; arguments prepared "
        "outside the timed call). *speed-up vs NumPy* = NumPy reference median / this "
        "median at the same size; *time / backprop* = this median / the analytic "
        "backprop gradient's. Yardsticks are timed beside the others but are not "
        "fastnum's: backprop computes another (analytic) gradient, and the book's code as "
        "published multiplies the float32 images of the book's loader by float64 "
        "weights. Threads are numba's; NumPy code (threads —) runs with its BLAS's "
        "threads, as in the legend.",
        "",
    ]
    for op in ops:
        if any(r.op == op for r in rows):
            impls = cat.get(op, [])
            note = [OP_NOTES[op], ""] if op in OP_NOTES else []
            out += [f"### {op}", ""] + note + op_table(rows, impls, op) + [""]
            skipped = skipped_lines(results, impls, op)
            out += (skipped + [""]) if skipped else []
    threads = thread_table(rows, cat)
    if threads:
        out += ["## Thread scaling", ""] + threads + [""]
    out += ["## Compile time", ""] + compile_lines(results.get("compile")) + [""]
    out += [f"![speed-ups and time versus batch size]({PNG_NAME})", ""]
    return "\n".join(out)
