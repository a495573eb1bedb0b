"""Resolve every element that fails at h: a smaller step, a corner of the loss, or a bug.

ReLU and max pooling make the loss piecewise smooth.  A central difference at h whose
two points straddle a corner averages two slopes and legitimately disagrees with
backprop, which takes the slope on θ's side.  Each failing element is therefore taken
down a ladder of steps s = h/10, h/100, ... h/10^6, evaluating L(θ + s·e), L(θ - s·e) and
L(θ) of the reader's loss (or, for central differences alone, fastnum's kernels):

- *agrees at a smaller step*: ``|D(s) - bp| <= tol + rounding(s)``, D the central
  difference at s.  A corner between s and h from θ (or curvature) made D(h) wrong;
- *corner at θ* (only at s <= h/100, where curvature moves a one-sided slope by less
  than the tolerance): backprop lies between the forward slope (L(θ+s) - L(θ)) / s and
  the backward slope (L(θ) - L(θ-s)) / s.  A ReLU input exactly at 0 (a blank image patch
  with zero biases) gives every step the same average, so only the one-sided slopes see it;
- *confirmed failure*: the two one-sided slopes agree with each other (no corner within
  s, the loss is smooth there) and backprop is not within tolerance of them, or no step
  of the ladder explains the element.  This is what a bug looks like: the estimates agree
  with each other and not with backprop.

A smaller step explains an element only when its rounding error is at most half the
element's disagreement at h: otherwise it could not have seen the disagreement at all,
and a tolerance tighter than rounding would pass everything at h/1000.  An element that
no step left on the ladder can see is a confirmed failure.

Elements the budget (a deadline, or enough confirmed failures of one parameter) leaves
unprobed are *unresolved*: never passes, never confident failures.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

#: Divisors of h, in the order the steps are tried.  Below h/1000 only elements whose
#: disagreement at h is far above the rounding error there can still be explained (a corner
#: exactly at theta with another within 1e-7 of it: rare, but seen on the book's CNN).
LADDER = (10, 100, 1000, 10**4, 10**5, 10**6)
#: The steps whose central differences fastnum's kernels give for every pending element.
CENTRAL_LADDER = LADDER[:3]
#: One-sided brackets from this divisor on: truncation s·L''/2 is then far below tol.
BRACKET_FROM = 100
#: Confirmed failures of one parameter after which its other elements are left unprobed.
ENOUGH_FAILURES = 16

PENDING, KINK, FAILED, UNRESOLVED = 0, 1, 2, 3


def rounding(step, loss):
    """Rounding error of a slope at ``step``: a factor 10 for the loss's sums."""
    return 10 * np.finfo(np.float64).eps * max(1.0, abs(loss)) / step


class Elements(NamedTuple):
    """The failing elements of one parameter and what became of each (``state``)."""

    indices: np.ndarray  # flat, worst first
    bp: np.ndarray
    tol: np.ndarray
    gap: np.ndarray  # |D(h) - bp|
    state: np.ndarray  # PENDING, KINK, FAILED or UNRESOLVED

    def pending(self):
        """Positions (into ``indices``) still pending."""
        return np.flatnonzero(self.state == PENDING)


def start(indices, num, bp, tol, finite):
    """Elements to resolve; non-finite ones fail at once (a finite loss has finite slopes)."""
    state = np.where(finite, PENDING, FAILED).astype(np.int8)
    with np.errstate(invalid="ignore"):
        gap = np.abs(num - bp)
    return Elements(np.asarray(indices, np.int64), bp, tol, gap, state)


def _sharp(elements, positions, r):
    """Where a step with rounding error ``r`` could have seen the disagreement at h."""
    return r <= elements.gap[positions] / 2


def agree_at(elements, positions, central, step, loss):
    """Mark KINK where the central difference at a smaller step agrees with backprop."""
    r = rounding(step, loss)
    ok = np.abs(central - elements.bp[positions]) <= elements.tol[positions] + r
    elements.state[positions[ok & _sharp(elements, positions, r)]] = KINK


def judge_one_sided(elements, positions, forward, backward, divisor, step, loss):
    """Apply the ladder's rule at one step to ``positions`` given their one-sided slopes."""
    r = rounding(step, loss)
    bp, tol = elements.bp[positions], elements.tol[positions]
    central = (forward + backward) / 2
    agrees = np.abs(central - bp) <= tol + r
    low, high = np.minimum(forward, backward), np.maximum(forward, backward)
    bracket = (low - tol - r <= bp) & (bp <= high + tol + r) & (divisor >= BRACKET_FROM)
    smooth = np.abs(forward - backward) <= tol + 2 * r
    finite = np.isfinite(forward) & np.isfinite(backward)
    sharp = _sharp(elements, positions, r)
    elements.state[positions[finite & sharp & (agrees | bracket)]] = KINK
    still = elements.state[positions] == PENDING
    elements.state[positions[still & (smooth | ~finite)]] = FAILED


def resolve(found, probe, h, loss, deadline, chunk, ladder=LADDER):
    """Take every pending element down the ladder with one-sided slopes, worst first.

    ``probe(requests, step, deadline)`` maps ``{name: flat indices}`` to
    ``{name: (forward, backward, ran)}``, ``ran`` False where the deadline came first.
    ``ladder`` may skip steps whose central differences were already tried (the engine's).
    Elements still pending after the last step fail; those not reached by ``deadline``
    (``time.monotonic()``) or after ``ENOUGH_FAILURES`` in their parameter are unresolved.
    """
    queue = {name: list(e.pending()) for name, e in found.items()}
    while any(queue.values()) and time.monotonic() < deadline:
        batch = {}
        for name, positions in queue.items():
            if np.count_nonzero(found[name].state == FAILED) >= ENOUGH_FAILURES:
                positions.clear()
            batch[name] = np.array(positions[:chunk], dtype=np.int64)
            del positions[:chunk]
        for divisor in ladder:
            step = h / divisor
            batch = {n: p[found[n].state[p] == PENDING] for n, p in batch.items()}
            for name, positions in batch.items():  # no smaller step can see their gap
                blind = positions[~_sharp(found[name], positions, rounding(step, loss))]
                found[name].state[blind] = FAILED
            batch = {n: p[found[n].state[p] == PENDING] for n, p in batch.items()}
            batch = {n: p for n, p in batch.items() if len(p)}
            if not batch:
                break
            slopes = probe({n: found[n].indices[p] for n, p in batch.items()}, step, deadline)
            for name, positions in batch.items():
                forward, backward, ran = slopes[name]
                judge_one_sided(
                    found[name], positions[ran], forward[ran], backward[ran], divisor, step, loss
                )
                batch[name] = positions[ran]  # the others stay pending: unresolved
        for name, positions in batch.items():  # no step explained them
            still = positions[found[name].state[positions] == PENDING]
            found[name].state[still] = FAILED
    for e in found.values():
        e.state[e.state == PENDING] = UNRESOLVED
