"""Verdict and report of a gradient check: per element, per parameter, for people."""

from __future__ import annotations

import dataclasses

import numpy as np

from fastnum.constants import LOG_GUARD

#: Per-element tolerances, ``|num - bp| <= atol + rtol * |bp|``.  rtol: the book's 1e-7 inside
#: log() moves the numerical gradient by about 1e-7 / p(true class) relative (~1e-6 at p ~ 0.1)
#: while backprop ignores it; 1e-5 leaves a factor 10 of room.  atol: elements whose true
#: gradient is ~0 carry only absolute errors -- truncation ~h^2 * L''' / 6 (~1e-9 at h = 1e-4),
#: rounding ~eps * L / h (~1e-11) and the guard's share of gradients that cancel over the batch.
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-6

GUARD_EXPLANATION = (
    f"The book's loss is -log(y + {LOG_GUARD:g}): that guard moves the numerical gradient by about "
    f"{LOG_GUARD:g} / y relative\n(~1e-6 for y ~ 0.1) while backprop ignores it, so even a correct "
    "network differs by ~1e-6 relative;\nlog_guard=False (--no-log-guard) evaluates the loss "
    "without the guard and a correct network agrees to ~1e-9."
)


@dataclasses.dataclass(frozen=True)
class ParamCheck:
    """Comparison of the numerical and backprop gradient of one parameter.

    Attributes
    ----------
    name : str
    shape : tuple
        Shape of the parameter.
    book_error : float
        ``mean |bp - num|``: the figure the book's ``gradient_check.py`` prints.
    max_abs : float
        ``max |num - bp|``.
    rel : float
        Normwise ``max |num - bp| / max(max |num|, max |bp|)``; 0 when both
        gradients are zero to within ``atol`` (a bias before batch norm).
    n_fail : int
        Confirmed failures: elements outside ``atol + rtol * |bp|`` that no
        smaller step and no corner of the loss explains, and every non-finite one.
    worst : tuple of (index, numerical, backprop, tag)
        The worst elements, by how far they exceed their tolerance; ``tag`` is
        ``""`` (a failure), ``"kink"`` or ``"unresolved"``.
    n_kinks : int
        Elements outside tolerance at h that a smaller step or a corner of the
        loss explains (see :mod:`fastnum.gradcheck._kinks`): reported, not failed.
    n_unresolved : int
        Elements outside tolerance that the probing budget left unexamined: the
        parameter neither passes nor is counted as failing because of them.
    truncation : float or None
        Largest Richardson estimate of the truncation error (when requested).
    problem : str
        Why the comparison was impossible (a missing or misshaped gradient).
    """

    name: str
    shape: tuple
    book_error: float
    max_abs: float
    rel: float
    n_fail: int
    worst: tuple
    n_kinks: int = 0
    n_unresolved: int = 0
    truncation: float | None = None
    problem: str = ""

    @property
    def passed(self):
        """True when every element is within tolerance or explained by a kink."""
        return not self.problem and self.n_fail == 0 and self.n_unresolved == 0

    @property
    def verdict(self):
        """``"pass"``, ``"fail"`` or ``"unresolved"`` (unprobed elements, no failure)."""
        if self.problem or self.n_fail:
            return "fail"
        return "unresolved" if self.n_unresolved else "pass"


def failing_elements(num, bp, rtol, atol, guard_slack):
    """(excess, tol, failing, finite) of one parameter, every element.

    ``excess`` is ``|num - bp|`` over its tolerance ``tol = floor + rtol * |bp|`` (inf where
    either value is not finite: a NaN must never compare as small), ``failing`` the flat
    indices above 1, worst first, and ``finite`` whether both values of each are finite.
    """
    bp = np.asarray(bp, dtype=np.float64).reshape(-1)
    num = np.asarray(num, dtype=np.float64).reshape(-1)
    finite = np.isfinite(num) & np.isfinite(bp)
    floor = atol + guard_slack * float(np.max(np.abs(np.where(finite, bp, 0)), initial=0))
    tol = floor + rtol * np.abs(np.where(finite, bp, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        excess = np.where(finite, np.abs(num - bp) / tol, np.inf)
    failing = np.flatnonzero(excess > 1)
    failing = failing[np.argsort(-excess[failing], kind="stable")]
    return excess, tol, failing, finite


def _largest(values, k):
    """Flat indices of the k largest values, largest first, ties in index order.

    The same as ``np.argsort(-values, kind="stable")[:k]`` (NaN last) without sorting
    every element: a partition finds the k-th largest, only those at or above it are
    sorted (~10x faster for the 39,200 weights of the book's W1).
    """
    flat = np.where(np.isnan(values), -np.inf, values).reshape(-1)
    if k < flat.size:
        kth = np.partition(flat, flat.size - k)[flat.size - k]
        candidates = np.flatnonzero(flat >= kth)
    else:
        candidates = np.arange(flat.size)
    # NaN became -inf: after every number, in index order, as argsort puts NaN.
    return candidates[np.argsort(-flat[candidates], kind="stable")][:k]


def _failures_first(excess, failing, states):
    """``excess`` with the kinks' ranks pushed below every failure (they are explained)."""
    from fastnum.gradcheck import _kinks

    key = excess.copy()
    kinks = failing[states == _kinks.KINK]
    key[kinks] = key[kinks] * 1e-12  # still above the elements within tolerance at 0
    return key


def compare(name, shape, num, bp, elements, atol, k, truncation=None):
    """Per-element verdict for one parameter (``bp`` may be missing or misshaped).

    ``elements`` is ``(excess, failing, states)``: :func:`failing_elements`' excess and
    failing indices, and what :mod:`fastnum.gradcheck._kinks` made of each failing one;
    None where ``bp`` is missing or misshaped.  ``atol`` decides when both gradients
    count as zero (relative error 0).
    """
    from fastnum.gradcheck import _kinks

    problem = ""
    if bp is None:
        problem = f"gradient(x, t) returned no entry {name!r}"
    elif np.shape(bp) != tuple(shape):
        problem = (
            f"backprop gradient has shape {np.shape(bp)}, the parameter {tuple(shape)} "
            "(a transposed gradient?)"
        )
    if problem:  # nothing to compare: every element counts as failing
        return ParamCheck(
            name, shape, np.nan, np.nan, np.nan, int(np.prod(shape)), (), problem=problem
        )
    bp = np.asarray(bp, dtype=np.float64)
    excess, failing, states = elements
    tags = {
        int(q): {_kinks.KINK: "kink", _kinks.UNRESOLVED: "unresolved"}.get(int(state), "")
        for q, state in zip(failing, states, strict=True)
    }
    with np.errstate(invalid="ignore"):
        diff = np.abs(num - bp)
    diff[~np.isfinite(diff)] = np.inf
    finite = np.isfinite(num) & np.isfinite(bp)
    scale = max(
        float(np.max(np.abs(num[finite]), initial=0)), float(np.max(np.abs(bp[finite]), initial=0))
    )
    max_abs = float(np.max(diff, initial=0))
    rel = 0.0 if scale <= atol and max_abs <= atol else max_abs / max(scale, atol)
    worst = tuple(
        (
            tuple(int(i) for i in np.unravel_index(q, bp.shape)),
            float(num.flat[q]),
            float(bp.flat[q]),
            tags.get(int(q), ""),
        )
        for q in _largest(_failures_first(excess, failing, states), k)
    )
    return ParamCheck(
        name,
        tuple(shape),
        float(np.mean(diff)) if diff.size else 0.0,
        max_abs,
        rel,
        int(np.count_nonzero(states == _kinks.FAILED)),
        worst,
        int(np.count_nonzero(states == _kinks.KINK)),
        int(np.count_nonzero(states == _kinks.UNRESOLVED)),
        truncation,
    )


@dataclasses.dataclass(frozen=True)
class GradcheckResult:
    """The outcome of :func:`fastnum.gradcheck`: per-parameter checks and how they were made.

    Attributes
    ----------
    params : dict of str to ParamCheck
    h, rtol, atol : float
    method : str
        How the numerical gradient was computed (engine fast path, or the
        network's own loss serially, on N processes or on a Dask cluster).
    notes : tuple of str
        Why a faster path was not taken, the guard's status, and similar.
    log_guard : bool
        Whether the numerical side kept the book's 1e-7 guard.
    guard_effect : float or None
        ``1e-7 / min p(true class)`` over the batch, the expected relative
        shift caused by the guard (None when the probabilities are unknown).
    guard_slack : float
        Tolerance added per parameter in units of its max |bp|, for the
        guard's error in gradients that cancel over the batch (5 x
        ``guard_effect``; 0 without the guard).
    directions : tuple of (numerical, backprop, passed)
        Fast mode's directional derivatives (empty in a full check).
    unchecked : tuple of str
        Parameters the loss does not depend on at this batch (every central
        difference 0, backprop ~0): they pass, but nothing in them was checked.
    """

    params: dict
    h: float
    rtol: float
    atol: float
    method: str
    notes: tuple = ()
    log_guard: bool = True
    guard_effect: float | None = None
    guard_slack: float = 0.0
    directions: tuple = ()
    unchecked: tuple = ()

    @property
    def passed(self):
        """True when every element of every parameter (or every direction) is within tolerance."""
        if not self.params:
            return bool(self.directions) and all(ok for *_, ok in self.directions)
        return all(check.passed for check in self.params.values())

    @property
    def failed(self):
        """Names of the parameters with a confirmed failure (or nothing comparable)."""
        return [name for name, check in self.params.items() if check.verdict == "fail"]

    @property
    def unresolved(self):
        """Names of the parameters whose only doubtful elements were left unprobed."""
        return [name for name, check in self.params.items() if check.verdict == "unresolved"]

    @property
    def verdict(self):
        """``"PASS"``, ``"FAIL"`` or ``"INCONCLUSIVE"`` (unresolved elements, no failure)."""
        if self.passed:
            return "PASS"
        return "FAIL" if self.failed or not self.params else "INCONCLUSIVE"

    @property
    def abs_err(self):
        """``max |num - bp|`` per parameter."""
        return {name: check.max_abs for name, check in self.params.items()}

    @property
    def rel_err(self):
        """Normwise relative error per parameter."""
        return {name: check.rel for name, check in self.params.items()}

    @property
    def max_rel_err(self):
        """The worst normwise relative error."""
        return max(self.rel_err.values())

    def report(self, worst=3):
        """Describe the check: a table per parameter, the verdict, the worst elements, why.

        Parameters
        ----------
        worst : int, default 3
            Worst elements listed for each failing parameter.

        Returns
        -------
        str
        """
        lines = [
            f"gradient check: numerical (central differences, h={self.h:g}) vs backprop; "
            f"{self.method}"
        ]
        lines += [f"note: {note}" for note in self.notes]
        if self.directions:
            lines.append(
                f"fast mode: {len(self.directions)} random directions v, "
                "(L(theta + h v) - L(theta - h v)) / 2h against v . backprop"
            )
            for i, (num, bp, ok) in enumerate(self.directions):
                lines.append(f"  v{i}: {num: .9e} {bp: .9e}  {'ok' if ok else 'MISMATCH'}")
        if self.params:
            lines += self._table(worst)
        tol = f"|num - bp| <= {self.atol:g} + {self.rtol:g} * |bp|"
        if self.guard_slack:
            tol += f" + {self.guard_slack:.1e} * max|bp| (the guard's slack)"
        if self.passed:
            what = "element" if self.params else "direction"
            lines.append(f"PASS: every {what} within {tol} or explained by a kink")
            if self.unchecked:
                lines.append(
                    f"(not checked: the loss does not depend on {', '.join(self.unchecked)} "
                    "at this batch; see the note above)"
                )
        elif not self.params:
            lines.append(f"FAIL: a directional derivative is outside {tol}")
        else:
            lines.append(f"{self.verdict}: " + "; ".join(self._verdicts()) + f" outside {tol}")
            if self.verdict == "INCONCLUSIVE":
                lines.append(
                    "No element was confirmed wrong, but the probing budget left some "
                    "unexamined: they are neither passes nor failures. Check again with a "
                    "larger budget (probe_seconds=, --probe-seconds) or a smaller batch."
                )
        lines.append(
            "book's error = mean |backprop - numerical|, the figure the book's "
            "gradient_check.py prints."
        )
        if self.log_guard:
            lines.append(GUARD_EXPLANATION)
            if self.guard_effect is not None:
                lines.append(
                    f"In this batch the smallest true-class probability gives an "
                    f"expected guard effect of {self.guard_effect:.1e} relative to each "
                    "sample's share of a gradient; shares cancel in the sum but their\n"
                    "errors need not, hence the slack of 5x that effect times the "
                    "parameter's max |bp|."
                )
        else:
            lines.append(
                "log guard off: the numerical side evaluates -log(y) without the "
                f"book's {LOG_GUARD:g}."
            )
        return "\n".join(lines)

    def _verdicts(self):
        """One phrase per parameter that did not pass."""
        out = []
        for c in self.params.values():
            if c.passed:
                continue
            if c.problem:
                out.append(f"{c.name} ({c.problem})")
                continue
            parts = [f"{c.n_fail} failing"] if c.n_fail else []
            if c.n_unresolved:
                parts.append(f"{c.n_unresolved} unresolved")
            out.append(f"{c.name} ({', '.join(parts)} of {np.prod(c.shape):.0f})")
        return out

    def _table(self, worst):
        richardson = any(c.truncation is not None for c in self.params.values())
        head = (
            f"{'param':<8} {'shape':<14} {'book error':>11} {'max abs err':>12} "
            f"{'max rel err':>12} {'fails':>7}"
        )
        lines = [head + (f" {'trunc. est':>11}" if richardson else "")]
        for c in self.params.values():
            shape = "x".join(map(str, c.shape))
            row = (
                f"{c.name:<8} {shape:<14} {c.book_error:11.3e} {c.max_abs:12.3e} "
                f"{c.rel:12.3e} {c.n_fail:7d}"
            )
            if richardson:
                row += f" {c.truncation:11.3e}" if c.truncation is not None else f" {'':>11}"
            lines.append(row)
        kinks = sum(c.n_kinks for c in self.params.values())
        if kinks:
            lines.append(
                f"{kinks} element(s) disagree at h but are explained by a kink of the loss "
                "(a ReLU or max-pooling input within h of its corner): a central difference "
                "at h/10, h/100 or h/1000 agrees with backprop, or backprop lies between the "
                "one-sided slopes at h/100 or h/1000; they are not counted as failures."
            )
        for c in self.params.values():
            if c.passed:
                continue
            if c.problem:
                lines.append(f"{c.name}: {c.problem}")
                continue
            lines.append(f"worst elements of {c.name}:  index, numerical, backprop")
            for index, num, bp, tag in c.worst[:worst]:
                lines.append(
                    f"  {c.name}{list(index)}  {num: .9e}  {bp: .9e}"
                    + (f"  ({tag})" if tag else "")
                )
        return lines
