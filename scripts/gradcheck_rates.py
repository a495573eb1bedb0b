"""Measure the gradient check's false-failure and false-pass rates over the test corpus.

Usage::

    python scripts/gradcheck_rates.py                   # 20 seeds, batch 1, 3, 10, 100
    python scripts/gradcheck_rates.py --quick           # 3 seeds, small networks only
    python scripts/gradcheck_rates.py --seeds 200 --book-seeds 20
    python scripts/gradcheck_rates.py --method generic  # the network's own loss, serially

Every correct network of ``tests/gradcheck_corpus.py`` is checked for each seed and batch
size on MNIST-like images, and on real MNIST crops when ``$FASTNUM_MNIST_DIR`` holds the
four files; a correct network that does not pass is a false failure.  Every planted bug is
checked on the same grid (synthetic images); one that is not caught (FAIL naming exactly
its parameters; for a loss that is not a function of the parameters, refused, or FAIL when
chance hid the non-determinism) is a false verdict, and a PASS a false pass.  Prints
markdown tables, then each false verdict with its worst elements; exits 1 if there was any.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The corpus lives in the checkout's tests package, not in the installed fastnum.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import gradcheck_corpus as corpus  # noqa: E402


def _ints(text):
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,3,10,100")
    return values


def parse_args(argv=None):
    """The options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=20, help="seeds per network and batch (20)")
    p.add_argument(
        "--book-seeds",
        type=int,
        default=None,
        help="seeds for the networks at the book's MNIST sizes (default: min(seeds, 3))",
    )
    p.add_argument("--batch-sizes", type=_ints, default=list(corpus.BATCH_SIZES))
    p.add_argument(
        "--quick", action="store_true", help="3 seeds, small networks only (about a minute)"
    )
    p.add_argument("--method", choices=("auto", "generic"), default="auto")
    p.add_argument("--workers", type=int, default=1, help="processes for the generic path (1)")
    p.add_argument(
        "--data",
        choices=("synthetic", "mnist", "both"),
        default=None,
        help="images for the correct networks (default: both when $FASTNUM_MNIST_DIR is set)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.book_seeds = min(args.seeds, 3), 0
    if args.book_seeds is None:
        args.book_seeds = min(args.seeds, 3)
    if args.data is None:
        args.data = "both" if os.environ.get("FASTNUM_MNIST_DIR") else "synthetic"
    return args


def _mnist():
    from fastnum.data import load_mnist

    (images, labels), _ = load_mnist(data_dir=os.environ.get("FASTNUM_MNIST_DIR"))
    return images, labels


def run_grid(args, out=sys.stdout):
    """Run the grid, print the tables; the number of false verdicts."""
    sources = {"synthetic": None}
    if args.data in ("mnist", "both"):
        sources = {} if args.data == "mnist" else sources
        sources["MNIST"] = _mnist()
    common = {"method": args.method, "workers": args.workers}
    start = time.perf_counter()
    wrong = []  # (what, seed, batch, outcome)
    rows = {}  # (kind, name, images, batch) -> Counter of answers, "checks" and "seconds"
    for family in corpus.FAMILIES.values():
        seeds = args.book_seeds if family.book_size else args.seeds
        if seeds:
            print(f"{family.name} ...", file=sys.stderr, flush=True)
        for data, mnist in sources.items():
            for n in args.batch_sizes:
                row = rows.setdefault(("family", family.name, data, n), Counter())
                for seed in range(seeds):
                    o = corpus.check_family(family, seed, n, mnist=mnist, **common)
                    row.update({"checks": 1, "seconds": o.seconds, o.verdict: 1})
                    if o.verdict != "PASS":  # FAIL or INCONCLUSIVE
                        wrong.append((f"{family.name} ({data})", seed, n, o))
    for bug in corpus.BUGS.values():
        for n in args.batch_sizes:
            if n < bug.min_batch:
                continue
            print(f"{bug.name}, batch {n} ...", file=sys.stderr, flush=True)
            row = rows.setdefault(("bug", bug.name, "synthetic", n), Counter())
            for seed in range(args.seeds):
                o = corpus.check_bug(bug, seed, n, **common)
                answer = o.verdict
                if o.verdict == "FAIL" and bug.expect != corpus.REFUSED:
                    answer = "FAIL" if o.caught(bug.expect) else "FAIL, other names"
                row.update({"checks": 1, "seconds": o.seconds, answer: 1})
                if not o.caught(bug.expect):
                    wrong.append((bug.name, seed, n, o))
    total = time.perf_counter() - start

    print("### Correct networks: false failures\n", file=out)
    print(
        "| network | images | batch | checks | FAIL | INCONCLUSIVE | s/check |\n"
        "|---|---|---:|---:|---:|---:|---:|",
        file=out,
    )
    for (kind, name, data, n), r in rows.items():
        if kind == "family" and r["checks"]:
            print(
                f"| {name} | {data} | {n} | {r['checks']} | {r['FAIL']} | {r['INCONCLUSIVE']} "
                f"| {r['seconds'] / r['checks']:.3f} |",
                file=out,
            )
    print("\n### Planted bugs: false passes\n", file=out)
    print(
        "| bug | must be | batch | checks | refused | FAIL | FAIL, other names "
        "| INCONCLUSIVE | PASS | s/check |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        file=out,
    )
    for (kind, name, _, n), r in rows.items():
        if kind == "bug":
            expect = corpus.BUGS[name].expect
            expect = "refused" if expect == corpus.REFUSED else "FAIL " + ", ".join(expect)
            counts = " | ".join(
                str(r[k])
                for k in (corpus.REFUSED, "FAIL", "FAIL, other names", "INCONCLUSIVE", "PASS")
            )
            print(
                f"| {name} | {expect} | {n} | {r['checks']} | {counts} "
                f"| {r['seconds'] / r['checks']:.3f} |",
                file=out,
            )
    checks = sum(r["checks"] for r in rows.values())
    print(
        f"\n{checks} checks, {len(wrong)} false verdicts, {total:.0f} s "
        f"(method={args.method}, workers={args.workers}, seeds={args.seeds}, "
        f"book-size seeds={args.book_seeds}, batch sizes {args.batch_sizes})",
        file=out,
    )
    if wrong:
        print("\n### False verdicts\n", file=out)
        for what, seed, n, o in wrong:
            failed = ", ".join(o.failed) or "-"
            print(f"- {what}, seed {seed}, batch {n}: {o.verdict} ({failed})", file=out)
            for line in o.detail.splitlines()[:12]:
                print(f"    {line}", file=out)
    return len(wrong)


def main(argv=None):
    """Run the grid; exit code 1 when any verdict was false."""
    return 1 if run_grid(parse_args(argv)) else 0


if __name__ == "__main__":
    sys.exit(main())
