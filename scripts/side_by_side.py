"""Time the book's numerical gradient in two source trees of fastnum, side by side.

Usage (from the repository's root; a tree is a checkout, e.g. ``git worktree add``)::

    python scripts/side_by_side.py before=../old-checkout after=. --rounds 12

Rounds alternate between the trees, each a fresh process (its own numba cache folder,
warmed before timing), so that the machine's load hits both alike.  A round times the
``delta`` gradient of ``TwoLayerNet(784, 50, 10)`` and of the ReLU ``MultiLayerNet(784,
[50], 10)`` (where the checkout has it) on the first 100 MNIST training images, 2 threads
(where numba may use 2): the best of 5 blocks of calls.  The medians over the rounds are
printed per tree.  Needs MNIST (see ``fastnum.data.load_mnist``; ``FASTNUM_MNIST_DIR`` is
passed on).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Run in each fresh process with the tree's folder first on sys.path.
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numba
import numpy as np
import fastnum
from fastnum import TwoLayerNet
from fastnum._jit import set_num_threads
from fastnum.data import load_mnist

(x, t), _ = load_mnist(normalize=True, flatten=True)
x, t = np.ascontiguousarray(x[:100]), t[:100]
set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
nets = {"TwoLayerNet sigmoid": TwoLayerNet(784, 50, 10, seed=0)}
try:  # older checkouts have no MultiLayerNet at the top level: TwoLayerNet only
    from fastnum import MultiLayerNet

    nets["MultiLayerNet relu [50]"] = MultiLayerNet(784, [50], 10, activation="relu", seed=0)
except ImportError:
    pass
best = {}
for name, net in nets.items():
    net.numerical_gradient(x, t)  # compiles, or loads from the cache
    blocks = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(20):
            net.numerical_gradient(x, t)
        blocks.append(1e3 * (time.perf_counter() - start) / 20)
    best[name] = min(blocks)
print(json.dumps({"file": fastnum.__file__, "ms": best}))
"""


def parse_args(argv=None):
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="+", metavar="NAME=PATH", help="source trees to compare")
    p.add_argument("--rounds", type=int, default=12, help="alternating rounds (default: 12)")
    args = p.parse_args(argv)
    trees = {}
    for item in args.trees:
        name, sep, path = item.partition("=")
        if not sep or not (Path(path) / "fastnum" / "__init__.py").is_file():
            p.error(f"{item!r} is not NAME=PATH with PATH a checkout of fastnum")
        trees[name] = str(Path(path).resolve())
    if args.rounds < 1:
        p.error(f"--rounds={args.rounds} must be at least 1")
    return trees, args.rounds


def main(argv=None):
    """Run the rounds and print the medians; 1 if a child process fails."""
    trees, rounds = parse_args(argv)
    times = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="fastnum-side-by-side-") as caches:
        for _ in range(rounds):
            for name, path in trees.items():
                env = {**os.environ, "NUMBA_CACHE_DIR": str(Path(caches) / name)}
                env.pop("PYTHONPATH", None)  # the tree alone decides which fastnum runs
                done = subprocess.run(
                    [sys.executable, "-c", CHILD, path], capture_output=True, text=True, env=env
                )
                if done.returncode:
                    print(f"{name}: the timing process failed:\n{done.stderr}", file=sys.stderr)
                    return 1
                result = json.loads(done.stdout.splitlines()[-1])
                if not Path(result["file"]).resolve().is_relative_to(path):
                    print(f"{name}: imported {result['file']}, not {path}", file=sys.stderr)
                    return 1
                times[name].append(result["ms"])
    for name, runs in times.items():
        medians = {net: statistics.median(run[net] for run in runs) for net in runs[0]}
        print(name, ", ".join(f"{net}: {ms:.3f} ms" for net, ms in medians.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
