"""The benchmark report (``benchmarks/report*.py``) and the plan it reads (``bench_plan``).

The results are built here, case by case with round medians, so that every
expected figure in the rendered report can be worked out by hand.  The committed
``docs/benchmarks/results.json`` is only rendered, to keep older results readable.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from benchmarks import bench_plan, report
from benchmarks.machine import fastnum_machine_info
from fastnum.plots import new_figure
from fastnum.registry import COMPARISONS

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "docs" / "benchmarks" / "results.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (op, impl, batch, hidden, threads, median seconds, rounds)
CASES = [
    ("numerical_gradient", "numpy", 1, 50, None, 2.0, 3),
    ("numerical_gradient", "numba-delta", 1, 50, 2, 0.0001, 5000),
    ("numerical_gradient", "backprop", 1, 50, None, 0.00004, 5000),
    ("numerical_gradient", "numpy", 100, 50, None, 10.0, 3),
    ("numerical_gradient", "numba-full", 100, 50, 1, 20.0, 3),
    ("numerical_gradient", "numba-full", 100, 50, 2, 8.0, 3),
    ("numerical_gradient", "numba-delta", 100, 50, 1, 0.01, 100),
    ("numerical_gradient", "numba-delta", 100, 50, 2, 0.005, 200),
    ("numerical_gradient", "backprop", 100, 50, None, 0.0005, 2000),
    ("numerical_gradient", "book-float32", 100, 50, None, 30.0, 3),
    ("numerical_gradient", "numba-delta", 1000, 50, 1, 0.08, 10),
    ("numerical_gradient", "numba-delta", 1000, 50, 2, 0.04, 20),
    ("sgd_step", "numpy", 100, 50, None, 11.0, 3),
    ("sgd_step", "numba-delta", 100, 50, 2, 0.0055, 200),
    ("forward", "numpy", 100, 50, None, 0.0002, 5000),
    ("forward", "numba", 100, 50, 2, 0.0001, 9000),
    ("multilayer_gradient", "numpy", 10, (50,), None, 3.0, 3),
    ("multilayer_gradient", "numba-delta", 10, (50,), 2, 0.004, 300),
    ("multilayer_gradient", "backprop", 10, (50,), None, 0.0001, 9000),
    ("multilayer_gradient", "numpy", 10, (50, 50), None, 4.0, 3),
    ("multilayer_gradient", "numba-delta", 10, (50, 50), 2, 0.02, 60),
]
OPS = ["numerical_gradient", "sgd_step", "forward", "multilayer_gradient"]


def _bench(op, impl, batch, hidden, threads, median, rounds):
    widths = hidden if isinstance(hidden, tuple) else (hidden,)
    return {
        "name": f"test_operation[{op}-{impl}]",
        "group": op,
        "extra_info": {
            "op": op,
            "impl": impl,
            "batch": batch,
            "hidden": widths[0],
            "arch": "x".join(map(str, widths)),
            "threads": threads,
            "slow": impl in bench_plan.SLOW_IMPLS,
            "smoke": False,
        },
        "stats": {"median": median, "rounds": rounds, "iterations": 1, "iqr": 0.0},
    }


def make_results():
    """Results as a real run writes them, with the medians of :data:`CASES`."""
    return {
        "datetime": "2026-01-01T00:00:00",
        "machine": {
            "cpu_model": "Test CPU",
            "logical_cpus": 2,
            "usable_cpus": 2,
            "numba_threads": 2,
            "jit_enabled": True,
            "python": "3.11.7",
            "numpy": "2.4.6",
            "numba": "0.68.1",
            "blas": "openblas 0.3.31",
            "blas_threads": 1,
            "blas_threads_limit": 1,
            "platform": "Linux",
            "date": "2026-01-01T00:00:00+00:00",
            "loadavg_end": [0.5, 0.5, 0.5],
        },
        "fastnum": {
            "profile": "quick",
            "slow_rounds": 3,
            "target_seconds": 0.25,
            "min_rounds": 3,
            "operations": OPS,
            "implementations": {op: bench_plan.implementations(op) for op in OPS},
            "skipped": [
                {
                    "op": "numerical_gradient",
                    "impl": "numpy",
                    "batch": 1000,
                    "hidden": 50,
                    "threads": None,
                    "reason": "too slow",
                },
                {
                    "op": "numerical_gradient",
                    "impl": "numba-full",
                    "batch": 1000,
                    "hidden": 50,
                    "threads": "1",
                    "reason": "too slow",
                },
                {
                    "op": "numerical_gradient",
                    "impl": "numba-full",
                    "batch": 1000,
                    "hidden": 50,
                    "threads": "all",
                    "reason": "too slow",
                },
            ],
        },
        "benchmarks": [_bench(*case) for case in CASES],
        "compile": {
            "cache_files": 7,
            "cold": {
                "import_seconds": 0.5,
                "total_seconds": 25.0,
                "calls": [{"op": "forward", "impl": "numba", "first_call": 3.0}],
            },
            "warm": {
                "import_seconds": 0.4,
                "total_seconds": 0.9,
                "calls": [{"op": "forward", "impl": "numba", "first_call": 0.02}],
            },
        },
        # 30 iterations: 2 accuracy passes of 0.2 s, 0.5 s of data preparation.
        "train": {
            "iters": 30,
            "seconds": 3.0,
            "loop_seconds": 2.5,
            "eval_seconds": 0.2,
            "threads": 2,
            "backend": "numba",
            "strategy": "delta",
            "final_train_acc": 0.5,
            "final_test_acc": 0.25,
        },
    }


@pytest.fixture
def results():
    return make_results()


@pytest.fixture
def rows(results):
    return report.rows_from(results)


def _table_row(markdown, op, batch, hidden, label, threads):
    """The cells of one row of ``op``'s table in the rendered markdown."""
    section = markdown.split(f"### {op}\n", 1)[1].split("\n### ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:4] == [str(batch), str(hidden), label, threads]:
            return cells
    raise AssertionError(f"no row {batch}/{hidden}/{label}/{threads} in the {op} table")


def _section(markdown, title):
    return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


# ------------------------------------------------------------------- the plan


def test_implementations_follow_the_registry_reference_first_yardsticks_last():
    for op_name, op in COMPARISONS.items():
        impls = bench_plan.implementations(op_name)
        assert sorted(i["name"] for i in impls) == sorted(op.implementations)
        roles = [i["role"] for i in impls]
        assert roles == sorted(roles, key=["reference", "compared", "yardstick"].index)
        assert impls[0]["name"] == op.reference
        assert {i["name"] for i in impls if i["role"] == "yardstick"} == set(op.yardsticks)
    labels = {i["name"]: i["label"] for i in bench_plan.implementations("numerical_gradient")}
    assert labels["numpy"] == "NumPy reference" and labels["numba-delta"] == "numba delta"
    assert labels["backprop"] == "backprop (yardstick)"
    assert labels["book-float32"] == ("the book's code as published, float32 images (yardstick)")


def test_the_book_as_published_is_timed_at_the_books_size_only():
    for profile in bench_plan.PROFILES.values():
        book = [
            c
            for c in bench_plan.cases("numerical_gradient", profile, 2)
            if c.impl == bench_plan.BOOK_AS_PUBLISHED
        ]
        assert [(c.batch, c.hidden, c.threads) for c in book] == [(100, 50, None)]
        assert book[0].slow and bench_plan.skip_reason(book[0], profile) is None


def test_blas_threads_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(bench_plan.BLAS_THREADS_ENV, raising=False)
    assert bench_plan.blas_threads_limit() is None
    monkeypatch.setenv(bench_plan.BLAS_THREADS_ENV, "3")
    assert bench_plan.blas_threads_limit() == 3
    monkeypatch.setenv(bench_plan.BLAS_THREADS_ENV, "0")
    with pytest.raises(ValueError, match="FASTNUM_BENCH_BLAS_THREADS='0'"):
        bench_plan.blas_threads_limit()


def test_the_legend_records_the_blas_threads_threadpoolctl_reports(monkeypatch):
    monkeypatch.setenv(bench_plan.BLAS_THREADS_ENV, "1")
    with threadpool_limits(limits=1, user_api="blas"):
        info = fastnum_machine_info()
    assert info["blas_threads"] == 1 and info["blas_threads_limit"] == 1
    assert info["blas"] != "unknown" and "blas_threads_env" not in info


# ------------------------------------------------------------------- the rows


def test_rows_are_sorted_reference_first_and_yardsticks_last(rows):
    book = [r.impl for r in rows if r.op == "numerical_gradient" and r.size == (100, "50")]
    assert book == [
        "numpy",
        "numba-full",
        "numba-full",
        "numba-delta",
        "numba-delta",
        "backprop",
        "book-float32",
    ]
    assert [r.arch for r in rows if r.op == "multilayer_gradient" and r.impl == "numpy"] == [
        "50",
        "50x50",
    ]


def test_smoke_entries_and_entries_without_arch(results):
    results["benchmarks"][0]["extra_info"]["smoke"] = True
    for b in results["benchmarks"]:
        b["extra_info"].pop("arch")
    rows = report.rows_from(results)
    assert len(rows) == len(CASES) - 1
    assert {r.arch for r in rows if r.op == "multilayer_gradient"} == {"50"}  # the first width


def test_lookup_takes_all_threads_unless_told(rows):
    assert report.lookup(rows, "numerical_gradient", "numba-delta", (100, 50)).median == 0.005
    assert (
        report.lookup(rows, "numerical_gradient", "numba-delta", (100, 50), threads=1).median
        == 0.01
    )
    assert report.lookup(rows, "multilayer_gradient", "numpy", (10, (50, 50))).median == 4.0
    assert report.lookup(rows, "numerical_gradient", "numpy", (1000, 50)) is None


# ------------------------------------------------------------------- the markdown


def test_table_shows_medians_and_both_ratios(results):
    md = report.markdown(results)
    assert _table_row(md, "numerical_gradient", 100, 50, "numba delta", "2")[5:] == [
        "5 ms",
        "2,000×",
        "10×",
    ]
    assert _table_row(md, "numerical_gradient", 100, 50, "NumPy reference", "—")[4:] == [
        "3",
        "10 s",
        "1×",
        "20,000×",
    ]
    book = "the book's code as published, float32 images (yardstick)"
    assert _table_row(md, "numerical_gradient", 100, 50, book, "—")[5:] == [
        "30 s",
        "0.333×",
        "60,000×",
    ]
    # No reference at batch 1000: a dash, and the reason it was not timed.
    assert _table_row(md, "numerical_gradient", 1000, 50, "numba delta", "1")[6] == "—"
    assert "- not timed at batch 1000, hidden 50: NumPy reference, numba full; too slow" in md


def test_an_operation_without_yardstick_has_no_yardstick_column(results):
    md = report.markdown(results)
    section = md.split("### forward\n", 1)[1].split("\n### ", 1)[0]
    assert "time / backprop" not in section
    assert _table_row(md, "forward", 100, 50, "numba", "2")[5:] == ["100 µs", "2×"]


def test_every_timed_case_has_a_table_row(results, rows):
    md = report.markdown(results)
    for op in OPS:
        section = md.split(f"### {op}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        table = [line for line in section.splitlines() if re.match(r"\| \d", line)]
        assert len(table) == sum(r.op == op for r in rows)


def test_multilayer_rows_are_keyed_by_architecture(results):
    md = report.markdown(results)
    assert report.OP_NOTES["multilayer_gradient"] in md
    assert _table_row(md, "multilayer_gradient", 10, "50x50", "numba delta", "2")[5:7] == [
        "20 ms",
        "200×",
    ]


def test_headline_quotes_the_reference_the_fastest_kernel_and_both_yardsticks(results):
    headline = _section(report.markdown(results), "Headline")
    assert (
        "`numerical_gradient` at the book's batch 100, hidden 50: NumPy reference 10 s "
        "(median of 3 round(s)), numba delta 5 ms on 2 thread(s): **2,000× faster**" in headline
    )
    assert "On 1 thread numba delta takes 10 ms: 1,000× faster." in headline
    assert "numba full 8 s (1.25× faster than NumPy)." in headline
    assert (
        "backprop (yardstick): 500 µs; numba delta is 10× slower and the NumPy reference "
        "20,000× slower." in headline
    )
    assert (
        "the book's code as published, float32 images (yardstick): 30 s; numba delta is "
        "6,000× faster and the NumPy reference 3× faster." in headline
    )
    assert "`sgd_step` at the book's batch 100" in headline and "**2,000× faster**" in headline


def test_training_section_extrapolates_numba_and_both_numpy_loops(results):
    section = _section(report.markdown(results), "The book's 10,000-iteration training run")
    # (3.0 - 2.5) s of data + 10,000 x (2.5 - 2 x 0.2) / 30 s + 18 passes x 0.2 s = 704.1 s
    assert "**11.7 min** for 10,000 iterations, **extrapolated** from 30 measured" in section
    # 10,000 x the sgd_step's 11 s; 10,000 x the book-as-published gradient's 30 s.
    assert "- NumPy reference: **30.6 h** for 10,000 iterations" in section
    assert "- the book's code as published, float32 images (yardstick): **83.3 h**" in section
    assert "numba is **156× faster**" in section and "numba is **426× faster**" in section
    assert "backprop" not in section
    results["train"].update(iters=report.BOOK_ITERS, seconds=50.0)
    measured = _section(report.markdown(results), "The book's 10,000-iteration training run")
    assert "**50.0 s** for 10,000 iterations, measured." in measured


def test_extrapolation_scales_steps_and_accuracy_passes_apart():
    # 600 iterations make 2 accuracy passes (iterations 1 and the final one);
    # 10,000 make 18 (1, 601, ..., 9601 and the final one).
    assert (report.evaluations(600), report.evaluations(601), report.evaluations(10_000)) == (
        2,
        2,
        18,
    )
    run = {"iters": 600, "seconds": 10.0, "eval_seconds": 1.0}
    assert report.extrapolate(run) == pytest.approx(10_000 * 8.0 / 600 + 18 * 1.0)
    run = {"iters": 600, "seconds": 13.0, "loop_seconds": 10.0, "eval_seconds": 1.0}
    assert report.extrapolate(run) == pytest.approx(3.0 + 10_000 * 8.0 / 600 + 18 * 1.0)


def test_legend_names_machine_blas_threads_and_the_slow_cases(results):
    machine = _section(report.markdown(results), "Machine")
    assert "- **CPU**: Test CPU, 2 logical CPUs (2 usable by this process)" in machine
    assert (
        "- **NumPy's BLAS**: openblas 0.3.31, threads: 1 (limited to 1 by --blas-threads)"
        in machine
    )
    assert (
        "slow cases (NumPy reference, numba full, the book's code as published, float32 "
        "images (yardstick)) timed with 3 round(s)" in machine
    )
    results["machine"].update(blas_threads=2, blas_threads_limit=None)
    assert "threads: 2 (the library's default)" in report.markdown(results)
    # Results written before threadpoolctl named the environment variables instead.
    for key in ("blas_threads", "blas_threads_limit"):
        del results["machine"][key]
    results["machine"]["blas_threads_env"] = {"OPENBLAS_NUM_THREADS": "1"}
    assert "threads: OPENBLAS_NUM_THREADS=1" in report.markdown(results)


def test_thread_scaling_pairs_one_and_all_threads(results):
    scaling = _section(report.markdown(results), "Thread scaling")
    assert "| numerical_gradient | 100 | 50 | numba full | 20 s | 8 s | 2.5× |" in scaling
    assert "| numerical_gradient | 1000 | 50 | numba delta | 80 ms | 40 ms | 2× |" in scaling


def test_compile_section_lists_cold_and_warm(results):
    lines = report.compile_lines(results["compile"])
    assert "| forward / numba | 3 s | 20 ms |" in lines
    assert "| **whole process** | 25 s | 900 ms |" in lines
    assert report.compile_lines(None) == ["Not measured in this run."]


def test_busy_warning_follows_the_load(results):
    results["machine"]["loadavg_end"] = [9.0, 9.0, 9.0]
    assert "Busy machine" in report.markdown(results)
    results["machine"]["loadavg_end"] = [0.1, 0.1, 0.1]
    assert "Busy machine" not in report.markdown(results)


@pytest.mark.parametrize(
    ("seconds", "text"), [(4.213e-3, "4.21 ms"), (12.5, "12.5 s"), (3.2e-6, "3.2 µs"), (None, "—")]
)
def test_fmt_seconds(seconds, text):
    assert report.fmt_seconds(seconds) == text


@pytest.mark.parametrize(
    ("ratio", "text"), [(12655.2, "12,655×"), (1.0, "1×"), (0.52, "0.52×"), (None, "—")]
)
def test_fmt_ratio(ratio, text):
    assert report.fmt_ratio(ratio) == text


# ------------------------------------------------------------------- the plot and files


def test_multilayer_time_is_plotted_against_the_architecture(results, rows):
    cat = report.catalog(results)
    fig, (ax,) = new_figure()
    report.time_axis(
        ax, rows, cat["multilayer_gradient"], "multilayer_gradient", report.colors(cat)
    )
    assert [t.get_text() for t in ax.get_xticklabels()] == ["h50", "h50x50"]
    assert "batch 10" in ax.get_title()


def test_speedup_bars_have_one_series_per_implementation_and_thread_count(results, rows):
    cat = report.catalog(results)
    fig, (ax,) = new_figure()
    report.speedup_axis(
        ax, rows, cat["numerical_gradient"], "numerical_gradient", report.colors(cat)
    )
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "numba full, 1 thr",
        "numba full, 2 thr",
        "numba delta, 1 thr",
        "numba delta, 2 thr",
        "backprop (yardstick)",
        "the book's code as published, float32 images (yardstick)",
    ]


def test_colours_are_per_implementation_and_stable_across_operations(results):
    color = report.colors(report.catalog(results))
    assert color["numpy"] == "tab:gray"
    assert (
        len({color[n] for n in ("numba-full", "numba-delta", "numba", "backprop", "book-float32")})
        == 5
    )


def test_render_writes_png_markdown_and_reloadable_json(results, tmp_path):
    md = report.render(report.trim(results), tmp_path)
    png = tmp_path / report.PNG_NAME
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 10_000
    assert md.read_text(encoding="utf-8") == report.markdown(report.trim(results))
    assert report.load(tmp_path / report.RESULTS_NAME) == report.trim(results)


def test_the_committed_results_still_render(tmp_path):
    results = report.load(COMMITTED)
    rows = report.rows_from(results)
    md = report.markdown(results)
    assert rows and "The book's case was not timed." not in md
    for op in {r.op for r in rows}:
        section = md.split(f"### {op}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        assert len([line for line in section.splitlines() if re.match(r"\| \d", line)]) == sum(
            r.op == op for r in rows
        )


def test_command_line_renders_from_json(tmp_path, results):
    source = tmp_path / "results.json"
    source.write_text(json.dumps(results), encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_report.py"),
            "--from-json",
            str(source),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    assert (tmp_path / "out" / report.MD_NAME).read_text(encoding="utf-8") == report.markdown(
        report.trim(results)
    )
