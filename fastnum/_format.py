"""Human-readable durations, shared by the experiment summaries and the benchmark report."""

from __future__ import annotations

import math


def format_duration(seconds):
    """A long duration in a readable unit: ``"42.0 s"``, ``"3.5 min"``, ``"36.4 h"``.

    Seconds below two minutes, minutes below two hours, hours above; ``"—"`` when
    the duration is unknown (None or not finite).

    Parameters
    ----------
    seconds : float or None

    Returns
    -------
    str
    """
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
