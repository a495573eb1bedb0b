"""The benchmark report's figure: speed-ups over the NumPy reference and time per call.

Reads the data model of :mod:`benchmarks.report_data`; :func:`plot` writes the PNG.
"""

from __future__ import annotations

from benchmarks.report_data import (
    arch_key,
    catalog,
    lookup,
    max_threads,
    reference_of,
    rows_from,
    speedup_vs_reference,
)
from fastnum._io import save_png
from fastnum.plots import new_figure

# Plot colours by role, handed out in the order implementations first appear.
ROLE_COLORS = {
    "reference": ("tab:gray",),
    "compared": ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:olive"),
    "yardstick": ("tab:purple", "tab:brown", "tab:pink", "tab:cyan"),
}


def colors(cat):
    """A colour per implementation name, by role, stable across operations."""
    out, used = {}, {role: 0 for role in ROLE_COLORS}
    for impls in cat.values():
        for i in impls:
            if i.name not in out:
                palette = ROLE_COLORS.get(i.role, ROLE_COLORS["compared"])
                out[i.name] = palette[used.get(i.role, 0) % len(palette)]
                used[i.role] = used.get(i.role, 0) + 1
    return out


def _bar_series(rows, impls, op):
    """(impl, threads) pairs of the speed-up bars: every non-reference variant."""
    n = max_threads(rows)
    series = []
    for impl in impls:
        if impl.role == "reference" or not any(r.op == op and r.impl == impl.name for r in rows):
            continue
        threads = sorted(
            {r.threads for r in rows if r.op == op and r.impl == impl.name}, key=lambda t: t or n
        )
        series += [(impl, t) for t in threads]
    return series


def speedup_axis(ax, rows, impls, op, color):
    """Bars: each implementation's speed-up over the reference, per size."""
    ref = reference_of(impls)
    sizes = sorted(
        {r.size for r in rows if r.op == op and r.impl == ref}, key=lambda s: (arch_key(s[1]), s[0])
    )
    series = _bar_series(rows, impls, op)
    width = 0.8 / max(len(series), 1)
    for k, (impl, threads) in enumerate(series):
        xs, ys = [], []
        for j, size in enumerate(sizes):
            r = lookup(rows, op, impl.name, size, threads=threads)
            if r is not None:
                xs.append(j + (k - (len(series) - 1) / 2) * width)
                ys.append(speedup_vs_reference(rows, impls, r))
        label = impl.label + (f", {threads} thr" if threads else "")
        # 1-thread bars are hatched so that the thread settings stay apart in grey print.
        ax.bar(
            xs,
            ys,
            width,
            color=color.get(impl.name),
            label=label,
            hatch="//" if threads == 1 and max_threads(rows) > 1 else None,
            edgecolor="white",
        )
    ax.set_xticks(range(len(sizes)), [f"b{b}\nh{h}" for b, h in sizes])
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_title(f"{op}: speed-up vs NumPy")
    ax.set_ylabel("× faster than NumPy reference")
    ax.legend(fontsize="x-small")


def _arch_time_axis(ax, rows, impls, op, color):
    """Time per call against the network, for an operation timed at one batch size."""
    archs = sorted({r.arch for r in rows if r.op == op}, key=arch_key)
    for impl in impls:
        pts = [
            (archs.index(r.arch), r.median)
            for r in rows
            if r.op == op and r.impl == impl.name and r.threads in (None, max_threads(rows))
        ]
        if pts:
            ax.plot(
                *zip(*sorted(pts), strict=True),
                "-",
                marker="o",
                color=color.get(impl.name),
                label=impl.label,
            )
    ax.set_xticks(range(len(archs)), [f"h{a}" for a in archs])
    ax.set_yscale("log")
    ax.set_xlabel("hidden layers (width per layer)")
    ax.set_ylabel("median seconds per call")
    batches = sorted({r.batch for r in rows if r.op == op})
    ax.set_title(
        f"{op}: time vs network\n(batch {batches[0]}, numba on {max_threads(rows)} threads)"
    )
    ax.legend(fontsize="x-small")


def time_axis(ax, rows, impls, op, color):
    """Lines: time per call against the batch size (or the network, at one batch size)."""
    if len({r.batch for r in rows if r.op == op}) == 1:  # sized by network, not by batch
        _arch_time_axis(ax, rows, impls, op, color)
        return
    archs = sorted({r.arch for r in rows if r.op == op}, key=arch_key)
    for impl in impls:
        for style, arch in zip(("-", "--", ":", "-."), archs, strict=False):
            pts = sorted(
                (r.batch, r.median)
                for r in rows
                if r.op == op
                and r.impl == impl.name
                and r.arch == arch
                and r.threads in (None, max_threads(rows))
            )
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    style,
                    marker="o",
                    color=color.get(impl.name),
                    label=f"{impl.label}, hidden {arch}",
                )
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
    rows = rows_from(results)
    cat = catalog(results)
    color = colors(cat)
    ops = [
        op
        for op in results.get("fastnum", {}).get("operations", [])
        if any(r.op == op for r in rows)
    ] or sorted({r.op for r in rows})
    ncols = max(len(ops), 1)
    fig, axes = new_figure(ncols, 2, panel_size=(5.5, 4.5))
    for col, op in enumerate(ops):
        impls = cat.get(op, [])
        speedup_axis(axes[col], rows, impls, op, color)
        time_axis(axes[ncols + col], rows, impls, op, color)
    m = results.get("machine", {})
    fig.suptitle(
        f"fastnum benchmarks — {m.get('cpu_model', '?')}, {m.get('numba_threads', '?')} "
        f"numba threads, numpy {m.get('numpy', '?')}, numba {m.get('numba', '?')}, "
        f"Python {m.get('python', '?')}, {m.get('date', '?')[:10]}"
    )
    fig.tight_layout()
    save_png(fig, path, dpi=90)
