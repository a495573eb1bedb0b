"""Fresh interpreters for the tests that need one (thread layers, caches, forks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_python(*argv, env=None, timeout=600):
    """``python *argv`` from the repository's root; the finished process, output as text.

    ``env``: changes to this process's environment (a value of None removes the name).
    """
    child_env = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            child_env.pop(name, None)
        else:
            child_env[name] = value
    return subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
