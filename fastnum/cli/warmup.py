"""``fastnum warmup``: compile every numba kernel once, so later processes start fast."""

from __future__ import annotations

import argparse
import os
import time

from fastnum.cli._exits import EXIT_OK

_EPILOG = """\
numba compiles a kernel on its first call in a process (seconds to tens of seconds
on a busy 2-core machine) and keeps it in its on-disk cache; every later process
loads it in milliseconds.  Run this once where the cache should be filled: in a
container image's build, or before starting Dask or process-pool workers, which
would otherwise each compile on their first task.  The cache is $NUMBA_CACHE_DIR
when set, else numba's default (__pycache__ next to fastnum's sources).

examples:
  fastnum warmup                        every network (about 40 s on 2 cores)
  fastnum warmup --net two_layer,conv   only the book's chapter 4 and 7 networks
"""


def _networks(text):
    """Parse ``--net``: a comma-separated list; the names are checked by warm()."""
    return [name.strip() for name in text.split(",") if name.strip()]


def add_parser(sub):
    """Add ``warmup`` and its options to the subcommands ``sub``; return its parser."""
    from fastnum.warmup import NETWORKS

    p = sub.add_parser(
        "warmup",
        help="compile the numba kernels once (fills the on-disk cache)",
        description="Compile (or load from numba's cache) every kernel the chosen "
        "networks use: predict, loss and the numerical gradient with every strategy, "
        "on a tiny problem.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--net",
        type=_networks,
        metavar="LIST",
        help="comma-separated networks, default all: "
        + ", ".join(f"{name} ({n.description})" for name, n in NETWORKS.items()),
    )
    p.add_argument(
        "--verbose", action="store_true", help="print the traceback of an unexpected error"
    )
    return p


def run(args):
    """Compile the kernels of ``args.net`` (default all); print what took how long."""
    from fastnum._jit import HAVE_NUMBA, JIT_ENABLED, JIT_OPTIONS
    from fastnum.warmup import NETWORKS, check_names, warm

    names = check_names(args.net or None)
    if not JIT_ENABLED:
        why = "numba is not installed" if not HAVE_NUMBA else "NUMBA_DISABLE_JIT is set"
        print(f"fastnum warmup: nothing to compile ({why}: the kernels run as Python).")
        return EXIT_OK
    where = os.environ.get("NUMBA_CACHE_DIR") or "numba's default (__pycache__ by the sources)"
    if not JIT_OPTIONS["cache"]:
        where = "none: FASTNUM_JIT_CACHE=0, so only this process gains"
    print(f"fastnum warmup: compiling the kernels of {', '.join(names)}; cache: {where}")
    start = time.perf_counter()
    warm(
        names,
        report=lambda name, seconds: print(
            f"  {name:<11} {seconds:7.2f} s  {NETWORKS[name].description}", flush=True
        ),
    )
    print(f"  {'total':<11} {time.perf_counter() - start:7.2f} s")
    return EXIT_OK
