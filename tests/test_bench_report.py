"""The benchmark report's rendering, on a stored result of a real (small) benchmark run.

``tests/fixtures/bench_results.json`` is the ``results.json`` that
``scripts/bench_report.py --quick`` wrote for a subset of the suite (see the
fixture's ``fastnum.note``); these tests only render it, they time nothing.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "bench_results.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _load_script():
    # scripts/ is not a package: import the file under a name no other module uses.
    name = "fastnum_scripts_bench_report"
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "bench_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while building Row
    spec.loader.exec_module(module)
    return module


br = _load_script()


@pytest.fixture
def results():
    """A fresh copy of the stored results (tests may modify it)."""
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture
def rows(results):
    return br.rows_from(results)


def _table_row(markdown, op, batch, hidden, label, threads):
    """The cells of one row of ``op``'s table in the rendered markdown."""
    section = markdown.split(f"### {op}\n", 1)[1].split("\n### ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:4] == [str(batch), str(hidden), label, threads]:
            return cells
    raise AssertionError(f"no row {batch}/{hidden}/{label}/{threads} in the {op} table")


def test_fixture_comes_from_the_suite(results):
    infos = [b["extra_info"] for b in results["benchmarks"]]
    assert infos and all({"op", "impl", "batch", "hidden", "threads"} <= set(i) for i in infos)
    assert {i["op"] for i in infos} == set(results["fastnum"]["operations"])


def test_rows_carry_the_stored_medians(results, rows):
    stored = {(i["op"], i["impl"], i["batch"], i["arch"], i["threads"]): b["stats"]["median"]
              for b in results["benchmarks"] for i in [b["extra_info"]]}
    assert len(rows) == len(stored)
    for r in rows:
        assert r.median == stored[(r.op, r.impl, r.batch, r.arch, r.threads)]


def test_rows_without_arch_fall_back_to_the_width(results):
    """Results written before ``arch`` existed still render."""
    for b in results["benchmarks"]:
        b["extra_info"].pop("arch")
    rows = [r for r in br.rows_from(results) if r.op == "numerical_gradient"]
    assert rows and all(r.arch == str(r.hidden) for r in rows)


def test_multilayer_table_rows_are_keyed_by_architecture(results, rows):
    md = br.markdown(results)
    assert br.OP_NOTES["multilayer_gradient"] in md
    for arch in ("50", "50x50"):
        numpy = br.lookup(rows, "multilayer_gradient", "numpy", (10, arch))
        delta = br.lookup(rows, "multilayer_gradient", "numba-delta", (10, arch), threads=1)
        cells = _table_row(md, "multilayer_gradient", 10, arch, "numba delta", "1")
        assert cells[5] == br.fmt_seconds(delta.median)
        assert cells[6] == br.fmt_ratio(numpy.median / delta.median)
    # A tuple of widths finds the same row as its label.
    assert br.lookup(rows, "multilayer_gradient", "numpy", (10, (50, 50))).arch == "50x50"
    assert "not timed at batch 10, hidden 50x50: numba full; numba full is compared" in md


def test_multilayer_time_is_plotted_against_the_architecture(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    br._time_axis(ax, rows, "multilayer_gradient")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["h50", "h50x50"]
    assert "batch 10" in ax.get_title()
    plt.close(fig)


def test_speedup_and_backprop_ratios(rows):
    numpy = br.lookup(rows, "numerical_gradient", "numpy", (1, 50))
    delta = br.lookup(rows, "numerical_gradient", "numba-delta", (1, 50))
    back = br.lookup(rows, "numerical_gradient", "backprop", (1, 50))
    assert br.speedup_vs_numpy(rows, delta) == pytest.approx(numpy.median / delta.median)
    assert br.cost_vs_backprop(rows, delta) == pytest.approx(delta.median / back.median)
    assert br.speedup_vs_numpy(rows, numpy) == pytest.approx(1.0)


def test_table_shows_medians_and_ratios(results, rows):
    md = br.markdown(results)
    n = br.max_threads(rows)
    delta = br.lookup(rows, "numerical_gradient", "numba-delta", (1, 50))
    numpy = br.lookup(rows, "numerical_gradient", "numpy", (1, 50))
    back = br.lookup(rows, "numerical_gradient", "backprop", (1, 50))
    cells = _table_row(md, "numerical_gradient", 1, 50, "numba delta", str(n))
    assert cells[5] == br.fmt_seconds(delta.median)
    assert cells[6] == br.fmt_ratio(numpy.median / delta.median)
    assert cells[7] == br.fmt_ratio(delta.median / back.median)
    assert _table_row(md, "numerical_gradient", 1, 50, "NumPy reference", "—")[6] == "1×"


def test_every_timed_case_has_a_table_row(results, rows):
    md = br.markdown(results)
    for op in results["fastnum"]["operations"]:
        section = md.split(f"### {op}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        table = [line for line in section.splitlines() if re.match(r"\| \d", line)]
        assert len(table) == sum(r.op == op for r in rows)


def test_missing_reference_shows_a_dash_and_the_skip_reason(results):
    md = br.markdown(results)
    cells = _table_row(md, "numerical_gradient", 1000, 50, "numba delta", "1")
    assert cells[6] == "—"
    assert "not timed at batch 1000, hidden 50: NumPy reference, numba full; too slow" in md
    assert "batch 100, hidden 50: numba full (1 thread); its thread scaling" in md


def test_headline_is_the_book_case(results, rows):
    numpy = br.lookup(rows, "numerical_gradient", "numpy", (100, 50))
    delta = br.lookup(rows, "numerical_gradient", "numba-delta", (100, 50))
    text = "\n".join(br.headline(rows))
    assert br.fmt_ratio(numpy.median / delta.median) in text
    assert f"median of {numpy.rounds} round" in text


def test_legend_names_machine_versions_and_date(results):
    md = br.markdown(results)
    m = results["machine"]
    for value in (m["cpu_model"], f"Python {m['python']}", f"numpy {m['numpy']}",
                  f"numba {m['numba']}", f"{m['logical_cpus']} logical CPUs",
                  f"numba threads** (the \"all\" setting): {m['numba_threads']}", m["date"]):
        assert value in md


def test_rounds_of_the_slow_cases_are_stated(results):
    md = br.markdown(results)
    assert f"timed with {results['fastnum']['slow_rounds']} round(s)" in md


def _training_section(results):
    md = br.markdown(results)
    return md.split("## The book's 10,000-iteration training run", 1)[1].split("\n## ", 1)[0]


def test_training_figures_are_labelled(results):
    section = _training_section(results)
    numba_line, numpy_line = (line for line in section.splitlines()
                              if line.startswith(("- numba", "- NumPy")))
    assert "**extrapolated** from 30 measured iterations" in numba_line
    assert "**extrapolated** from one iteration" in numpy_line
    results["train"]["iters"] = br.BOOK_ITERS
    full = _training_section(results)
    assert "iterations, measured." in full and "from 30 measured" not in full


def test_extrapolation_scales_steps_and_accuracy_passes_apart():
    # 600 iterations make 2 accuracy passes (iterations 1 and the final one);
    # 10,000 make 18 (1, 601, ..., 9601 and the final one).
    assert (br.evaluations(600), br.evaluations(601), br.evaluations(10_000)) == (2, 2, 18)
    run = {"iters": 600, "seconds": 10.0, "eval_seconds": 1.0}
    assert br.extrapolate(run) == pytest.approx(10_000 * 8.0 / 600 + 18 * 1.0)
    # Loading the data (seconds - loop_seconds) is paid once, not scaled.
    run = {"iters": 600, "seconds": 13.0, "loop_seconds": 10.0, "eval_seconds": 1.0}
    assert br.extrapolate(run) == pytest.approx(3.0 + 10_000 * 8.0 / 600 + 18 * 1.0)


def test_compile_section_lists_cold_and_warm(results):
    lines = "\n".join(br.compile_lines(results["compile"]))
    assert "cold cache" in lines and "warm cache" in lines
    assert br.fmt_seconds(results["compile"]["cold"]["total_seconds"]) in lines


def test_smoke_entries_are_ignored(results):
    fake = copy.deepcopy(results["benchmarks"][0])
    fake["extra_info"]["smoke"] = True
    results["benchmarks"].append(fake)
    assert len(br.rows_from(results)) == len(results["benchmarks"]) - 1


def test_busy_warning_follows_the_load(results):
    results["machine"]["loadavg_end"] = [9.0, 9.0, 9.0]
    assert "Busy machine" in br.markdown(results)
    results["machine"]["loadavg_end"] = [0.1, 0.1, 0.1]
    assert "Busy machine" not in br.markdown(results)


def test_render_writes_png_markdown_and_reloadable_json(results, tmp_path):
    md = br.render(results, tmp_path)
    png = tmp_path / br.PNG_NAME
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 10_000
    assert md.read_text(encoding="utf-8").startswith("# fastnum benchmark report")
    reloaded = json.loads((tmp_path / br.RESULTS_NAME).read_text(encoding="utf-8"))
    assert br.trim(reloaded) == br.trim(results)


def test_command_line_renders_from_json(tmp_path, capsys):
    assert br.main(["--from-json", str(FIXTURE), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / br.MD_NAME).is_file()
    assert (tmp_path / "out" / br.PNG_NAME).is_file()
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(("seconds", "text"), [(4.213e-3, "4.21 ms"), (12.5, "12.5 s"),
                                               (3.2e-6, "3.2 µs"), (None, "—")])
def test_fmt_seconds(seconds, text):
    assert br.fmt_seconds(seconds) == text


@pytest.mark.parametrize(("ratio", "text"), [(12655.2, "12,655×"), (1.0, "1×"),
                                             (0.52, "0.52×"), (None, "—")])
def test_fmt_ratio(ratio, text):
    assert br.fmt_ratio(ratio) == text
