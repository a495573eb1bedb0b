"""What the benchmarks time: sizes, implementations, thread counts, rounds and skips.

Kept apart from the test module so that the plan can be read (and reported) without
running anything.  Two profiles: ``default`` (the full report, ~8 min on 2 cores) and
``quick`` (a few sizes, one round of the slow cases), chosen with the environment
variable ``FASTNUM_BENCH_PROFILE``.  ``FASTNUM_BENCH_BLAS_THREADS`` limits NumPy's
BLAS threads (through threadpoolctl) for the whole run.

The implementations, their order and their labels come from the registry
(:data:`fastnum.registry.COMPARISONS`): :func:`implementations`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from fastnum._jit import get_num_threads
from fastnum.registry import BOOK_AS_PUBLISHED, COMPARISONS, hidden_label, numba_impl

#: numba's thread count at start-up: the "all threads" setting of the numba cases.
ALL_THREADS = get_num_threads()

PROFILE_ENV = "FASTNUM_BENCH_PROFILE"
SLOW_ROUNDS_ENV = "FASTNUM_BENCH_SLOW_ROUNDS"
BLAS_THREADS_ENV = "FASTNUM_BENCH_BLAS_THREADS"

BOOK_BATCH, BOOK_HIDDEN = 100, 50
# The NumPy reference gradient costs ~11 s at the book's size and grows with
# batch x hidden^2 once the per-call overhead is paid, so it gets few rounds.
BOOK_NUMPY_SECONDS = 11.0

# Operations whose cost is dominated by one loss evaluation per parameter.
GRADIENT_OPS = ("numerical_gradient", "sgd_step", "multilayer_gradient")
# Operations sized by architecture (a tuple of hidden widths) instead of one width.
ARCH_OPS = ("multilayer_gradient",)
# The book's SimpleConvNet (hidden 100) at batch 10 and the book's 100; its NumPy
# reference and numba full are timed on a sample of parameters and extrapolated.
CONV_OPS = ("convolution",)
CONV_SIZES = ((10, 100), (BOOK_BATCH, 100))
# Depth and width grow from the book's 50 units, at batch 10 so that the NumPy
# reference stays within seconds (~3 s for one hidden layer of 50, ~10 s for 100).
ARCH_BATCH = 10
WIDTH_SERIES = ((25,), (50,), (100,))
DEPTH_SERIES = ((50, 50), (50, 50, 50))
# The implementations that cost seconds per gradient at the book's size, timed with a
# few fixed rounds: the NumPy reference, the book's algorithm compiled ("full") and
# the book's code as published.  The last is timed at the book's size only.
FULL_IMPL = numba_impl("full")
SLOW_IMPLS = ("numpy", FULL_IMPL, BOOK_AS_PUBLISHED)


@dataclass(frozen=True)
class Profile:
    """Sizes and round counts of one benchmark run."""

    name: str
    sizes: tuple[tuple[int, int], ...]  # (batch, hidden)
    arch_sizes: tuple[tuple[int, tuple], ...]  # (batch, hidden widths) of the ARCH_OPS
    slow_sizes: dict[str, frozenset]  # gradient op -> sizes where numpy / numba-full run
    slow_rounds: int  # fixed rounds of the slow cases
    target_seconds: float  # time budget of one calibrated (fast) case
    min_rounds: int


PROFILES = {
    "default": Profile(
        name="default",
        sizes=(
            (1, 50),
            (10, 50),
            (100, 50),
            (1000, 50),
            (1, 100),
            (10, 100),
            (100, 100),
            (1000, 100),
        ),
        arch_sizes=tuple((ARCH_BATCH, a) for a in WIDTH_SERIES + DEPTH_SERIES),
        slow_sizes={
            "numerical_gradient": frozenset({(1, 50), (10, 50), (100, 50), (1, 100), (10, 100)}),
            "sgd_step": frozenset({(BOOK_BATCH, BOOK_HIDDEN)}),
            "multilayer_gradient": frozenset((ARCH_BATCH, a) for a in WIDTH_SERIES + DEPTH_SERIES),
        },
        slow_rounds=3,
        target_seconds=1.0,
        min_rounds=5,
    ),
    "quick": Profile(
        name="quick",
        sizes=((1, 50), (100, 50), (1000, 50), (10, 100), (1000, 100)),
        arch_sizes=((ARCH_BATCH, (50,)), (ARCH_BATCH, (50, 50))),
        slow_sizes={
            "numerical_gradient": frozenset({(1, 50), (100, 50), (10, 100)}),
            "sgd_step": frozenset({(BOOK_BATCH, BOOK_HIDDEN)}),
            "multilayer_gradient": frozenset({(ARCH_BATCH, (50,)), (ARCH_BATCH, (50, 50))}),
        },
        slow_rounds=1,
        target_seconds=0.25,
        min_rounds=3,
    ),
}


@dataclass(frozen=True)
class Case:
    """One timed cell: an implementation of an operation at one size and thread count."""

    op: str
    impl: str
    batch: int
    hidden: int | tuple  # one width, or the hidden widths of an ARCH_OPS network
    threads: str | None  # "1" or "all" for numba kernels, None for NumPy code

    @property
    def id(self):
        """pytest id, e.g. ``numba-delta-b100-h50-t1`` or ``numpy-b10-h50x50``."""
        suffix = f"-t{self.threads}" if self.threads else ""
        return f"{self.impl}-b{self.batch}-h{hidden_label(self.hidden)}{suffix}"

    @property
    def slow(self):
        """True for the cases timed with a fixed, small number of rounds."""
        return self.op in GRADIENT_OPS and self.impl in SLOW_IMPLS

    @property
    def is_book_case(self):
        """True at the book's batch 100, hidden 50."""
        return (self.batch, self.hidden) == (BOOK_BATCH, BOOK_HIDDEN)


def active_profile():
    """The :class:`Profile` named by ``$FASTNUM_BENCH_PROFILE`` (default ``default``).

    Returns
    -------
    Profile
        The selected profile, with ``slow_rounds`` overridden by
        ``$FASTNUM_BENCH_SLOW_ROUNDS`` when set.

    Raises
    ------
    ValueError
        The profile name or the round count is invalid.
    """
    name = os.environ.get(PROFILE_ENV, "default") or "default"
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r} is unknown; use one of {', '.join(PROFILES)}.")
    profile = PROFILES[name]
    rounds = _positive_int_env(SLOW_ROUNDS_ENV)
    return profile if rounds is None else dataclasses.replace(profile, slow_rounds=rounds)


def _positive_int_env(name):
    """The positive integer in ``$name``, None when unset or empty, or raise naming it."""
    value = os.environ.get(name)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer.")
    return int(value)


def blas_threads_limit():
    """The BLAS thread limit of the run from ``$FASTNUM_BENCH_BLAS_THREADS``, or None.

    Raises
    ------
    ValueError
        The value is not a positive integer.
    """
    return _positive_int_env(BLAS_THREADS_ENV)


def implementations(op_name):
    """The implementations of ``op_name`` in display order, from the registry.

    Returns
    -------
    list of dict
        ``name``, ``label`` and ``role`` ("reference", "compared" or "yardstick"):
        the reference first, the implementations that must match it in registry
        order, the yardsticks last.
    """
    op = COMPARISONS[op_name]

    def role(name):
        if name == op.reference:
            return "reference"
        return "yardstick" if name in op.yardsticks else "compared"

    def label(name):
        if name == op.reference:
            return op.labels.get(name, "NumPy reference")
        text = op.labels.get(name, name.replace("-", " "))
        return text + (" (yardstick)" if name in op.yardsticks else "")

    rank = {"reference": 0, "compared": 1, "yardstick": 2}
    names = sorted(op.implementations, key=lambda name: rank[role(name)])  # stable
    return [{"name": n, "label": label(n), "role": role(n)} for n in names]


def thread_settings(all_threads):
    """Thread settings of the numba cases: 1 and all, or just all on a 1-core machine."""
    return ("1", "all") if all_threads > 1 else ("all",)


def cases(op, profile, all_threads):
    """Every case of ``op`` in ``profile``, the skipped ones included.

    Parameters
    ----------
    op : str
        A key of ``fastnum.registry.COMPARISONS``.
    profile : Profile
        Sizes to run.
    all_threads : int
        numba's thread count; 1 drops the separate 1-thread cases.

    Returns
    -------
    list of Case
        Ordered size by size with the NumPy reference first, so that the other
        implementations can be checked against its (already computed) result.
    """
    out = []
    sizes = CONV_SIZES if op in CONV_OPS else profile.sizes
    for batch, hidden in profile.arch_sizes if op in ARCH_OPS else sizes:
        for impl in (i["name"] for i in implementations(op)):
            if impl == BOOK_AS_PUBLISHED and (batch, hidden) != (BOOK_BATCH, BOOK_HIDDEN):
                continue  # a yardstick of the book's case only: it costs more than NumPy
            threads = thread_settings(all_threads) if impl.startswith("numba") else (None,)
            out.extend(Case(op, impl, batch, hidden, th) for th in threads)
    return out


def estimated_numpy_seconds(batch, hidden):
    """Rough cost of one NumPy reference gradient, scaled from the book's case."""
    params_ratio = hidden / BOOK_HIDDEN
    # ~10 us of fixed overhead per loss evaluation plus work growing as batch x hidden.
    per_eval = 10e-6 + 0.6e-6 * batch * params_ratio
    per_eval_book = 10e-6 + 0.6e-6 * BOOK_BATCH
    return BOOK_NUMPY_SECONDS * params_ratio * per_eval / per_eval_book


def skip_reason(case, profile):
    """Why ``case`` is not timed in ``profile``, or None when it is.

    Returns
    -------
    str or None
        The reason alone (the report and pytest add which case it is).
    """
    size = (case.batch, case.hidden)
    if case.op in ARCH_OPS and case.impl == FULL_IMPL:
        return (
            "numba full is compared with NumPy in the numerical_gradient group; here it "
            "would add minutes (its equivalence is tested at every depth)"
        )
    if case.slow and size not in profile.slow_sizes[case.op]:
        if size in profile.slow_sizes["numerical_gradient"]:
            # An SGD step is that gradient plus an update of negligible cost.
            return (
                "the step costs its numerical gradient plus a negligible update: see the "
                "numerical_gradient group (only the book's case is timed here)"
            )
        est = estimated_numpy_seconds(case.batch, case.hidden)
        return (
            f"too slow for the {profile.name} profile: the NumPy reference needs about "
            f"{est:.0f} s per gradient at this size, and numba full is of the same order"
        )
    if case.op == "sgd_step" and case.impl == FULL_IMPL and case.threads == "1":
        return "its thread scaling is already shown in the numerical_gradient group"
    return None


def skipped_cases(profile, all_threads):
    """All skipped cases of the profile, as dicts for the benchmark JSON.

    Returns
    -------
    list of dict
        ``op``, ``impl``, ``batch``, ``hidden``, ``threads`` and ``reason``.
    """
    out = []
    for op in COMPARISONS:
        for case in cases(op, profile, all_threads):
            reason = skip_reason(case, profile)
            if reason:
                hidden = hidden_label(case.hidden) if op in ARCH_OPS else case.hidden
                out.append(
                    {
                        "op": op,
                        "impl": case.impl,
                        "batch": case.batch,
                        "hidden": hidden,
                        "threads": case.threads,
                        "reason": reason,
                    }
                )
    return out
