"""The run folder of :func:`fastnum.train.train`: one run per folder, atomic outputs, exact resume.

A run folder holds ``history.json``, ``checkpoint.npz``, ``params.npz``, ``loss.png`` and
``accuracy.png``, all written atomically (fastnum/_io.py), and, while a run is active,
``run.lock``.  The lock records the owner's PID, host and start time; a second run in the same
folder is refused, and a lock whose process is gone (kill -9, power loss) is reported with how to
clear it, never taken over silently.

What a checkpoint holds, and how it is checked when read, is :mod:`fastnum.checkpoint`; the
folder decides where it lives and reports a failed write with what to do.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import time
from pathlib import Path

import numpy as np

from fastnum import checkpoint
from fastnum._io import atomic_open, write_text
from fastnum._validate import Message, ParameterError, ParameterTypeError

# The checkpoint's format lives in fastnum.checkpoint; these names stay importable here.
from fastnum.checkpoint import FORMAT, CheckpointError, check_resumable, checkpoint_refused

__all__ = [
    "CHECKPOINT",
    "FORMAT",
    "HISTORY",
    "LOCK",
    "OUTPUTS",
    "PARAMS",
    "CheckpointError",
    "RunFolder",
    "RunFolderError",
    "check_out_dir",
    "check_resumable",
    "checkpoint_refused",
]

HISTORY, PARAMS, CHECKPOINT = "history.json", "params.npz", "checkpoint.npz"
LOSS_PNG, ACCURACY_PNG = "loss.png", "accuracy.png"
OUTPUTS = (HISTORY, PARAMS, CHECKPOINT, LOSS_PNG, ACCURACY_PNG)
LOCK = "run.lock"
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# What os.link raises where a file system has no hard links.
_NO_HARD_LINKS = {errno.EPERM, errno.ENOSYS, errno.EXDEV, errno.EMLINK} | {
    getattr(errno, name) for name in ("ENOTSUP", "EOPNOTSUPP") if hasattr(errno, name)
}


class RunFolderError(OSError):
    """The run folder cannot be used: taken by another run, not a folder, or not writable."""


def check_out_dir(out_dir):
    """Return ``out_dir`` as a Path (None stays None), refusing an empty or non-path value."""
    if out_dir is None:
        return None
    if not isinstance(out_dir, str | os.PathLike):
        raise ParameterTypeError(
            "out_dir",
            "{name}={value!r} must be a folder path (str or Path) or None.",
            value=out_dir,
        )
    if not str(out_dir).strip():
        raise ParameterError(
            "out_dir",
            "{name}={value!r} is empty; pass the folder for the run's outputs, or None to "
            "write nothing.",
            value=str(out_dir),
        )
    return Path(out_dir)


def _now():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, owned by another user
        return True
    return True


class RunFolder:
    """One run's output folder, locked for the lifetime of the run.

    Use :meth:`open` to check and lock it and :meth:`close` (or ``with``) to release it.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.lock = self.path / LOCK
        self.checkpoint = self.path / CHECKPOINT
        self._locked = False

    # --- opening: state checks, lock, leftovers ---------------------------------------------

    def _check_state(self, resume, overwrite):
        out = self.path
        if out.exists() and not out.is_dir():
            raise RunFolderError(
                Message(
                    "{name} {out} is a file, not a folder; pass a folder: a new one for a new "
                    "run, or an earlier run's folder with resume=True (--resume).",
                    "out_dir",
                    out=out,
                )
            )
        if resume:
            if not self.checkpoint.is_file():
                raise FileNotFoundError(
                    Message(
                        "cannot resume: {checkpoint} does not exist. Point {out_dir} at an "
                        "earlier run's directory, or start without resume.",
                        checkpoint=self.checkpoint,
                    )
                )
            return []
        existing = [name for name in OUTPUTS if (out / name).exists()]
        if existing and not overwrite:
            raise FileExistsError(
                Message(
                    "{out} already holds a run ({existing}); continue it (resume=True, "
                    "--resume), use another {out_dir}, or start afresh (overwrite=True, "
                    "--overwrite).",
                    out=out,
                    existing=", ".join(existing),
                )
            )
        return existing

    def open(self, resume=False, overwrite=False):
        """Check the folder's state, create and lock it, and remove leftovers of killed writes.

        A folder locked by a running (or killed) run is refused before anything else: the
        other run's files would otherwise be reported as "already holds a run" or "cannot
        resume", sending the user to --resume or --overwrite on a folder in use.  With
        ``overwrite`` the earlier run's outputs are deleted (only those, never other files).
        Returns ``self``.
        """
        held = self._lock_held_message() if self.path.is_dir() else None
        if held is not None:
            raise RunFolderError(held)
        self._check_state(resume, overwrite)  # before creating anything
        with self._writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            existing = self._check_state(resume, overwrite)  # again: now under the lock
            self._remove_partial_writes()
            for name in existing:  # a fresh run must never mix with the old one's files
                (self.path / name).unlink()
        except BaseException:
            self.close()
            raise
        return self

    def _acquire_lock(self):
        # The owner is written to a private file first and hard-linked to run.lock, which
        # fails if run.lock exists: the lock appears with its contents already in it, so a
        # second run never reads an empty lock (as it could between O_EXCL and the write).
        host = socket.gethostname()
        owner = json.dumps({"pid": os.getpid(), "host": host, "started": _now()}) + "\n"
        draft = self.path / f".{LOCK}.{os.getpid()}@{host}.tmp"
        with self._writing(self.lock):
            try:
                with open(draft, "w", encoding="utf-8") as f:
                    f.write(owner)
                    f.flush()
                    os.fsync(f.fileno())
                for _ in range(3):  # a lock released while we read it is taken on the next try
                    try:
                        self._publish(draft, owner)
                    except FileExistsError:
                        held = self._lock_held_message()
                        if held is not None:
                            raise RunFolderError(held) from None
                        continue
                    self._locked = True
                    return
                raise RunFolderError(
                    Message(
                        "{path} is taken and released by other runs again and again; use "
                        "another {out_dir}.",
                        path=self.path,
                    )
                )
            finally:
                draft.unlink(missing_ok=True)

    def _publish(self, draft, owner):
        """Create run.lock holding ``owner``; FileExistsError if it exists."""
        try:
            os.link(draft, self.lock)
            return
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
        # A file system without hard links (FAT, some network shares): create exclusively and
        # write; _read_owner retries the short moment when the lock is still empty.
        fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(owner)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            self.lock.unlink(missing_ok=True)
            raise

    def _read_owner(self):
        """The lock's ``(pid, host, started)``; None without a lock; ValueError if unreadable."""
        for attempt in range(6):
            if attempt:
                time.sleep(0.1)  # a lock being written where hard links are unavailable
            try:
                owner = json.loads(self.lock.read_text(encoding="utf-8"))
                return int(owner["pid"]), str(owner["host"]), str(owner["started"])
            except FileNotFoundError:
                return None
            except (OSError, ValueError, KeyError, TypeError) as exc:
                error = exc
        raise ValueError(str(error))

    def _lock_held_message(self):
        """Why the folder is locked, or None when it is not."""
        lock, out = self.lock, self.path
        try:
            owner = self._read_owner()
        except ValueError:
            return (
                f"{out} is locked by {lock}, which cannot be read (a run killed while "
                f"starting?). If no fastnum run is using {out}, delete {lock} and try again."
            )
        if owner is None:
            return None
        pid, host, started = owner
        then = (
            "continue with resume=True (--resume)"
            if self.checkpoint.is_file()
            else "start the run again"
        )
        if host == socket.gethostname() and not _pid_alive(pid):
            return (
                f"{out} has a stale lock: {lock} was left by process {pid} (started "
                f"{started}), which no longer runs; it was stopped before it could clean "
                f"up (kill -9, crash, power loss). No run is using {out} now: delete {lock}, "
                f"then {then}."
            )
        return Message(
            "{out} is in use by PID {pid} ({host}, started {started}): another fastnum run "
            "holds {lock}. Wait for it to finish or use another {out_dir}; if PID {pid} is "
            "not a fastnum run (reused after a reboot), delete {lock}.",
            out=out,
            pid=pid,
            host=host,
            started=started,
            lock=lock,
        )

    def _remove_partial_writes(self):
        # Temporary files of atomic writes interrupted by kill -9 (see fastnum/_io.py): only
        # ever half-written copies, safe to delete once the lock says no run is writing here.
        for name in OUTPUTS:
            for part in self.path.glob(f".{name}.*.part{Path(name).suffix}"):
                part.unlink(missing_ok=True)
        # Drafts of run.lock (see _acquire_lock) whose process is gone; a live one belongs to
        # a run about to find the folder locked, and vanishes by itself.
        here = socket.gethostname()
        for draft in self.path.glob(f".{LOCK}.*@*.tmp"):
            pid, _, host = draft.name[len(LOCK) + 2 : -len(".tmp")].partition("@")
            if host == here and pid.isdigit() and not _pid_alive(int(pid)):
                draft.unlink(missing_ok=True)

    def close(self):
        """Release the lock (if held)."""
        if self._locked:
            self._locked = False
            with contextlib.suppress(FileNotFoundError):
                self.lock.unlink()

    # --- writing ------------------------------------------------------------------------------

    def _write_failure(self, path, exc):
        if exc.errno in _DISK_FULL:
            reason, fix = "the disk is full", "free some space"
        else:
            reason = f"{exc.strerror or type(exc).__name__}".lower()
            fix = "fix the folder's permissions or space"
        if self.checkpoint.is_file():
            then = (
                f"The last checkpoint {self.checkpoint} is intact: {fix}, then continue "
                f"with resume=True (--resume --out {self.path})."
            )
        else:
            then = f"Nothing was saved yet: {fix}, then start the run again."
        return f"could not write {path}: {reason}. {then}"

    @contextlib.contextmanager
    def _writing(self, path):
        try:
            yield
        except RunFolderError:
            raise
        except OSError as exc:
            raise RunFolderError(self._write_failure(path, exc)) from exc

    def write_history(self, document):
        """Write ``history.json`` (strict JSON: a NaN inside is a bug and raises)."""
        path = self.path / HISTORY
        with self._writing(path):
            write_text(path, json.dumps(document, indent=1, allow_nan=False) + "\n")

    def write_params(self, params):
        """Write ``params.npz``."""
        path = self.path / PARAMS
        with self._writing(path), atomic_open(path, "wb") as f:
            np.savez(f, **params)

    def write_plots(self, history):
        """Write ``loss.png`` and ``accuracy.png``."""
        from fastnum.plots import plot_accuracy, plot_loss

        for plot, name in ((plot_loss, LOSS_PNG), (plot_accuracy, ACCURACY_PNG)):
            with self._writing(self.path / name):
                plot(history, self.path / name)

    def write_checkpoint(self, meta, loss, params):
        """Write ``checkpoint.npz`` (:func:`fastnum.checkpoint.write`): ``meta``, the loss list
        and the parameters and state arrays, signed."""
        with self._writing(self.checkpoint):
            checkpoint.write(self.checkpoint, meta, loss, params)

    # --- reading ------------------------------------------------------------------------------

    def read_checkpoint(self, param_names):
        """Return ``(meta, arrays)`` of the checkpoint (:func:`fastnum.checkpoint.read`), or
        raise :class:`CheckpointError`."""
        return checkpoint.read(self.checkpoint, param_names)
