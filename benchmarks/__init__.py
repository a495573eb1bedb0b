"""fastnum's benchmarks: the plan, the pytest-benchmark suite and the report renderer.

A package so that the report (:mod:`benchmarks.report`) and the plan
(:mod:`benchmarks.bench_plan`) are imported by name from a checkout, by the suite,
its tests and ``scripts/bench_report.py`` alike.
"""
