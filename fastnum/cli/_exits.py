"""Exit codes of the ``fastnum`` command, and the SIGTERM that ``fastnum train`` turns into one."""

from __future__ import annotations

import contextlib
import signal
import threading

# 1 is a verdict ("the check failed"), never an error; 3 says no verdict was possible.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, as a shell reports a process SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a job scheduler) arrived during ``fastnum train``."""


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends us at once
    raise Terminated


@contextlib.contextmanager
def sigterm_unwinds():
    """SIGTERM raises :class:`Terminated`: the run unwinds and releases run.lock.

    Python's default for SIGTERM ends the process on the spot, leaving run.lock behind, and
    the next run in the folder is refused for a stale lock that the user must delete.
    """
    if threading.current_thread() is not threading.main_thread():  # signals need it
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
