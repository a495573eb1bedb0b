"""The benchmark report's data model: the results file, its timed rows and what they compare.

:func:`trim` reduces what the suite writes (a pytest-benchmark JSON, whose
``machine_info`` and ``fastnum`` sections come from ``benchmarks/conftest.py``) to the
report's ``results.json``; :func:`rows_from` turns it into :class:`Row` objects;
:func:`catalog` names the implementations of each operation with their roles.  The
markdown (:mod:`benchmarks.report_markdown`) and the plot (:mod:`benchmarks.report_plot`)
read only these.

The implementations of each operation, their order and labels are those the run
recorded (from the registry, see :func:`benchmarks.bench_plan.implementations`);
results written before they were recorded fall back to the registry of today.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fastnum.registry import hidden_label

RESULTS_FORMAT = 1
BOOK_ITERS = 10_000
BOOK = (100, 50)  # the book's batch and hidden width
STAT_KEYS = ("median", "min", "max", "iqr", "rounds", "iterations")
PNG_NAME, MD_NAME, RESULTS_NAME = "speedups.png", "report.md", "results.json"


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
    slow: bool = False  # timed with the profile's few fixed rounds
    factor: float = 1.0  # > 1: timed on a sample of parameters, median scaled up by this

    def __post_init__(self):
        if not self.arch:
            object.__setattr__(self, "arch", str(self.hidden))

    @property
    def size(self):
        """(batch, arch), e.g. ``(100, "50")``."""
        return self.batch, self.arch


@dataclass(frozen=True)
class Impl:
    """One implementation of an operation, as the report names and orders it."""

    name: str
    label: str
    role: str  # "reference", "compared" or "yardstick"


def catalog(results):
    """The implementations of every operation in display order: ``{op: [Impl, ...]}``.

    From the run's ``fastnum.implementations``; for results written before the
    run recorded them, from today's registry.
    """
    stored = results.get("fastnum", {}).get("implementations")
    if stored is None:
        from benchmarks.bench_plan import implementations
        from fastnum.registry import COMPARISONS

        stored = {op: implementations(op) for op in COMPARISONS}
    return {
        op: [Impl(i["name"], i["label"], i["role"]) for i in impls] for op, impls in stored.items()
    }


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
        rows.append(
            Row(
                info["op"],
                info["impl"],
                int(info["batch"]),
                int(info["hidden"]),
                info.get("threads"),
                factor * float(stats["median"]),
                int(stats["rounds"]),
                int(stats.get("iterations", 1)),
                factor * float(stats.get("iqr", 0.0)),
                hidden_label(info.get("arch", info["hidden"])),
                bool(info.get("slow", False)),
                factor,
            )
        )
    order = {op: [i.name for i in impls] for op, impls in catalog(results).items()}

    def key(row):
        names = order.get(row.op, [])
        impl = names.index(row.impl) if row.impl in names else len(names)
        return row.op, arch_key(row.arch), row.batch, impl, row.threads or 0

    return sorted(rows, key=key)


def max_threads(rows):
    """The largest numba thread count in ``rows`` (the "all threads" setting)."""
    return max((r.threads for r in rows if r.threads), default=1)


def lookup(rows, op, impl, size, threads=None):
    """The row of ``impl`` at ``size``; numba rows at ``threads`` (default: all threads).

    ``size`` is (batch, hidden) with hidden a width, a tuple of widths or a label.
    """
    if threads is None:
        threads = max_threads(rows)
    size = (size[0], hidden_label(size[1]))
    for r in rows:
        if r.op == op and r.impl == impl and r.size == size:
            if r.threads is None or r.threads == threads:
                return r
    return None


def with_role(impls, role):
    """The implementations of ``impls`` that play ``role``."""
    return [i for i in impls if i.role == role]


def reference_of(impls):
    """The reference's name (``"numpy"`` when the catalog names none)."""
    refs = with_role(impls, "reference")
    return refs[0].name if refs else "numpy"


def speedup_vs_reference(rows, impls, row):
    """Reference median / ``row``'s median at the same size, or None."""
    ref = lookup(rows, row.op, reference_of(impls), row.size)
    return ref.median / row.median if ref else None


def cost_vs_yardstick(rows, yardstick, row):
    """``row``'s median / the ``yardstick`` implementation's median at the same size, or None."""
    ref = lookup(rows, row.op, yardstick, row.size)
    return row.median / ref.median if ref else None


def evaluations(iters, per_epoch=600):
    """Accuracy passes of a ``train`` run: at iterations 1, 1 + per_epoch, ... and the end."""
    at_epochs = (iters - 1) // per_epoch + 1
    return at_epochs + (0 if (iters - 1) % per_epoch == 0 else 1)


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
        group, extra_info and the median-related stats), ``compile``, ``train``,
        and ``report_seconds`` / ``generated`` when ``raw`` has them.
    """
    machine = raw.get("machine") or raw.get("machine_info", {}).get("fastnum", {})
    benches = [
        {
            "name": b.get("name"),
            "group": b.get("group"),
            "extra_info": b.get("extra_info", {}),
            "stats": {k: b["stats"][k] for k in STAT_KEYS if k in b.get("stats", {})},
        }
        for b in raw.get("benchmarks", [])
    ]
    out = {
        "format": RESULTS_FORMAT,
        "datetime": raw.get("datetime"),
        "machine": machine,
        "fastnum": raw.get("fastnum", {}),
        "benchmarks": benches,
        "compile": compile_info if compile_info is not None else raw.get("compile"),
        "train": train if train is not None else raw.get("train"),
    }
    out.update({k: raw[k] for k in ("report_seconds", "generated") if k in raw})
    return out


def load(path):
    """The results in ``path`` (a report's ``results.json`` or a raw benchmark JSON), trimmed."""
    return trim(json.loads(Path(path).read_text(encoding="utf-8")))
