"""The problem's constants, in one place that the reference and the kernels both import.

"Kernels never import the reference" keeps the algorithms independent; the numbers
that define the problem (the book's step and log guard) are shared, so they cannot
drift apart.  numba freezes them into compiled code, so a change here needs a fresh
compile (``FASTNUM_JIT_CACHE=0`` or clearing ``__pycache__``).
"""

from __future__ import annotations

#: The book's central-difference step h.
H = 1e-4
#: The book's guard inside log() in the cross-entropy: -log(y + LOG_GUARD).
LOG_GUARD = 1e-7
#: The book's batch-norm epsilon inside the square root, sqrt(var + BN_EPSILON).  The book
#: writes it 10e-7, which is 1e-6; readers' classes copied from it use this value.
BN_EPSILON = 10e-7
#: Relative tolerance within which a reader's loss must match the engine's for the engine
#: (or the unguarded loss) to stand in for it: rounding of the same sums, nothing more.
LOSS_MATCH_RTOL = 1e-9
